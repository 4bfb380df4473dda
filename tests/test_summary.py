"""Per-layer params / MACs and the ``python -m mcj.summary`` command line."""
import json
import pathlib
import subprocess
import sys

import pytest

from mcj import summary
from mcj.models import get_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name,params,macs', [
    ('resnet18', 11_689_512, 1_814_073_344),
    ('mobilenet_v2', 3_504_872, 300_774_272),
])
def test_imagenet_totals(name, params, macs):
  s = summary.summarize(get_model(name, 1000), (224, 224, 3))
  assert s['params'] == params
  assert s['macs'] == macs
  assert sum(layer['macs'] for layer in s['layers']) == s['macs']
  assert sum(layer['params'] for layer in s['layers']) == s['params']


def test_layer_records():
  s = summary.summarize(get_model('resnet20', 10), (32, 32, 3))
  first, last = s['layers'][0], s['layers'][-1]
  assert first == {'name': 'conv1', 'type': 'Conv', 'output_shape': (32, 32, 16),
                   'params': 432, 'macs': 32 * 32 * 16 * 27}
  assert last == {'name': 'fc', 'type': 'Dense', 'output_shape': (10,),
                  'params': 650, 'macs': 640}
  assert all(l['macs'] == 0 for l in s['layers'] if l['type'] == 'BatchNorm')
  table = summary.format_table(s)
  assert 'Total params: 269,722' in table and 'layer3_2/conv2' in table


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'mcj.summary', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_cli_json_matches_library():
  r = _cli('--model', 'resnet20', '--num_classes', '10', '--image_size', '32',
           '--json')
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  s = summary.summarize(get_model('resnet20', 10), (32, 32, 3))
  assert out['params'] == s['params'] and out['macs'] == s['macs']
  assert len(out['layers']) == len(s['layers'])


def test_cli_unknown_model_exits_2_with_one_line():
  r = _cli('--model', 'nope')
  assert r.returncode == 2
  assert r.stdout == ''
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and 'nope' in lines[0] and 'resnet18' in lines[0]


def test_config_of_unprepared_tfds_dataset_uses_its_known_input(capsys):
  from mcj import summary
  assert summary.main(['--config', f'{ROOT}/configs/cifar10/resnet.py:depth=56', '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert out['params'] == 853_018 and out['input_shape'] == [32, 32, 3]
  assert summary.main(['--config', 'no/such/config.py']) == 2
  assert 'does not exist' in capsys.readouterr().err
