"""Pretrained weights in (mcj.weights): torch / safetensors files read without torch, and
torchvision's models giving the same logits in mcj once converted.

The fixtures (tests/fixtures/torchvision/, made by make_torchvision_weights.py with
torchvision's own classes) are narrow versions of the published architectures with random
weights and BatchNorm statistics; MCJ_TORCHVISION_FULL=DIR (the script's --full output)
runs the same check on the full-size architectures.
"""
import json
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

from mcj import summary
from mcj.core import checkpoint
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.weights import SOURCES, formats
from mcj.weights.__main__ import convert_file, main

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'torchvision')
INDEX = json.load(open(os.path.join(FIXTURES, 'index.json')))
ARCHS = sorted(n for n in INDEX if not n.startswith('_'))
quiet = lambda *a: None


def _logits(workdir, config, images):
  block = dict(config['model'])
  model = get_model(block.pop('name'), num_classes=10 if config['data']['name'] == 'cifar10'
                    else 1000, **block)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return np.asarray(forward(checkpoint.load_variables(workdir), images))


@pytest.mark.parametrize('arch', ARCHS)
def test_torchvision_logits_equal(arch, tmp_path):
  config = convert_file(f'torchvision:{arch}', os.path.join(FIXTURES, f'{arch}.pth'),
                        str(tmp_path / 'run'), data='cifar10',
                        options=INDEX[arch]['options'], say=quiet)
  images = np.load(os.path.join(FIXTURES, 'images.npy'))
  reference = np.load(os.path.join(FIXTURES, f'{arch}_logits.npy'))
  out = _logits(str(tmp_path / 'run'), config, images)
  assert np.max(np.abs(out - reference)) / np.max(np.abs(reference)) < 1e-4


def test_converted_workdir_is_a_run(tmp_path, capsys):
  convert_file('torchvision:resnet18', os.path.join(FIXTURES, 'resnet18.pth'),
               str(tmp_path / 'run'), data='cifar10', options=INDEX['resnet18']['options'],
               say=quiet)
  assert summary.main(['--workdir', str(tmp_path / 'run'), '--json']) == 0
  assert json.loads(capsys.readouterr().out)['params'] == INDEX['resnet18']['params']


def test_every_listed_torchvision_architecture_has_a_fixture():
  assert {n.split(':')[1] for n in SOURCES if n.startswith('torchvision:')} == set(ARCHS)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get('MCJ_TORCHVISION_FULL'),
                    reason='set MCJ_TORCHVISION_FULL to the --full output of the fixture script')
@pytest.mark.parametrize('arch', sorted(SOURCES))
def test_torchvision_full_size(arch, tmp_path):
  folder, name = os.environ['MCJ_TORCHVISION_FULL'], arch.split(':')[1]
  config = convert_file(arch, os.path.join(folder, f'{name}.pth'), str(tmp_path / 'run'),
                        say=quiet)
  reference = np.load(os.path.join(folder, f'{name}_logits.npy'))
  out = _logits(str(tmp_path / 'run'), config, np.load(os.path.join(folder, 'images.npy')))
  assert np.max(np.abs(out - reference)) / np.max(np.abs(reference)) < 1e-4


def test_mismatched_file_lists_missing_unexpected_and_reshaped(tmp_path):
  with pytest.raises(ConfigError) as e:
    convert_file('torchvision:resnet34', os.path.join(FIXTURES, 'resnet18.pth'),
                 str(tmp_path / 'run'), data='cifar10', options={'widths': [8, 16, 32, 32]},
                 say=quiet)
  message = str(e.value)
  assert '\n' not in message
  assert 'missing 80: layer1.2.bn1.bias, layer1.2.bn1.running_mean' in message
  assert 'shape differs for layer3.0.bn1.bias (24,) vs model (32,)' in message
  assert not os.path.exists(tmp_path / 'run' / 'config.json')


def test_unexpected_tensor_is_named(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  tensors = formats.read_checkpoint(os.path.join(FIXTURES, 'resnet18.pth'))
  tensors['extra.weight'] = np.zeros(3, np.float32)
  path = str(tmp_path / 'r18.safetensors')
  save_file(tensors, path)
  with pytest.raises(ConfigError, match=r'unexpected 1: extra\.weight'):
    convert_file('torchvision:resnet18', path, str(tmp_path / 'run'), data='cifar10',
                 options=INDEX['resnet18']['options'], say=quiet)


def test_safetensors_file_converts_like_the_pth(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  tensors = formats.read_checkpoint(os.path.join(FIXTURES, 'mobilenet_v3_small.pth'))
  path = str(tmp_path / 'm.safetensors')
  save_file(tensors, path)
  again = formats.read_checkpoint(path)
  assert sorted(again) == sorted(tensors)
  assert all(np.array_equal(again[k], tensors[k]) and again[k].dtype == tensors[k].dtype
             for k in tensors)


def test_safetensors_dtypes(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  values = {'a': np.arange(6, dtype=np.float16).reshape(2, 3), 'b': np.arange(4, dtype=np.int64),
            'c': np.array([[1.5, -2.0]], np.float64)}
  save_file(values, str(tmp_path / 'v.safetensors'))
  read = formats.read_safetensors(str(tmp_path / 'v.safetensors'))
  for k, v in values.items():
    assert read[k].dtype == v.dtype and np.array_equal(read[k], v)


def test_bfloat16_is_widened_exactly():
  bits = np.array([0x3F80, 0xC040, 0x0000], np.uint16)  # 1.0, -3.0, 0.0
  out = formats._array(bits.tobytes(), 'bfloat16', (3,))  # pylint: disable=protected-access
  assert out.dtype == np.float32 and out.tolist() == [1.0, -3.0, 0.0]


def test_strided_storage_is_read_with_its_strides():
  raw = np.arange(12, dtype=np.float32).tobytes()
  out = formats._array(raw, np.float32, (3, 2), offset=1, strides=(1, 4))  # pylint: disable=protected-access
  assert out.tolist() == [[1, 5], [2, 6], [3, 7]]


def _zip_with_pickle(path, obj):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(obj, protocol=2))


def test_pickle_with_other_classes_is_refused(tmp_path):
  import collections  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'evil.pth')
  _zip_with_pickle(path, {'w': collections.Counter('ab')})
  with pytest.raises(ConfigError, match='collections.Counter'):
    formats.read_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / 'x.pth'
  path.write_bytes(b'hello world, not a checkpoint')
  with pytest.raises(ConfigError, match='neither a PyTorch zip checkpoint nor a safetensors'):
    formats.read_checkpoint(str(path))
  with pytest.raises(ConfigError, match='does not exist'):
    formats.read_checkpoint(str(tmp_path / 'missing.pth'))


def test_wrapped_state_dicts_are_unwrapped():
  inner = {'conv.weight': np.ones(2)}
  assert formats.unwrap({f'module.{k}': v for k, v in inner.items()}) == inner
  assert list(formats.unwrap({'state_dict.module.a': 1, 'state_dict.module.b': 2})) == ['a', 'b']
  assert list(formats.unwrap({'model.a': 1, 'other': 2})) == ['model.a', 'other']


def test_reused_workdir_is_refused(tmp_path):
  args = dict(data='cifar10', options=INDEX['resnet18']['options'], say=quiet)
  source = os.path.join(FIXTURES, 'resnet18.pth')
  convert_file('torchvision:resnet18', source, str(tmp_path / 'run'), **args)
  with pytest.raises(ConfigError, match='already holds a run'):
    convert_file('torchvision:resnet18', source, str(tmp_path / 'run'), **args)


def test_wrong_class_count_says_which_data(tmp_path):
  with pytest.raises(ConfigError, match='classifies 10 classes but --data imagenet2012 has 1000'):
    convert_file('torchvision:resnet18', os.path.join(FIXTURES, 'resnet18.pth'),
                 str(tmp_path / 'run'), options=INDEX['resnet18']['options'], say=quiet)


def test_cli_errors_are_one_line(tmp_path, capsys):
  assert main(['--from', 'torchvision:resnet19', '--file', 'x', '--workdir',
               str(tmp_path / 'r')]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'torchvision:resnet18' in err
  assert main(['--from', 'torchvision:resnet18', '--file', os.path.join(FIXTURES, 'resnet18.pth'),
               '--workdir', str(tmp_path / 'r'), '--data', 'cifar10',
               '--model.widths=[8,16,24,32]']) == 0
  assert os.path.exists(tmp_path / 'r' / 'config.json')
  assert main(['--from', 'torchvision:resnet18', '--file', 'x', '--workdir', str(tmp_path / 's'),
               'widths=3']) == 2
  assert 'model options are --model.KEY=VALUE' in capsys.readouterr().err
