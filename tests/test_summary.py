"""Per-layer params / MACs and the ``python -m mcj.summary`` command line."""
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import pytest

from mcj import summary as summary_cli
from mcj.analysis import summary
from mcj.nn import inspect, layers
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
                   'params': 432, 'macs': 32 * 32 * 16 * 27, 'input_precision': 32,
                   'params_by_bits': {32: 432}, 'memory_bytes': 432 * 4, 'mac_precision': 32}
  assert last == {'name': 'fc', 'type': 'Dense', 'output_shape': (10,), 'params': 650,
                  'macs': 640, 'input_precision': 32, 'params_by_bits': {32: 650},
                  'memory_bytes': 650 * 4, 'mac_precision': 32}
  assert all(l['macs'] == 0 for l in s['layers'] if l['type'] == 'BatchNorm')
  table = summary.format_table(s)
  assert 'Total params:                269,722' in table and 'layer3_2/conv2' in table


class _TinyBNN(nn.Module):
  """Float conv, BN, binary conv (1-bit x 1-bit), 1-bit input x float kernel, float dense."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = layers.QuantConv(8, 3, padding=1, input_quantizer='approx_sign',
                         kernel_quantizer='ste_sign', kernel_scale='xnor')(x)
    x = layers.QuantConv(8, 1, input_quantizer='ste_sign')(x)
    return layers.QuantDense(10)(x.mean(axis=(1, 2)))


def test_binary_totals_by_hand():
  s = summary.summarize(_TinyBNN(), (8, 8, 3))
  float_params = 108 + 8 + 64 + 90  # conv0, BN scale+bias, 1x1 kernel, dense kernel+bias
  assert s['params'] == float_params + 288 and s['binary_params'] == 288
  assert s['params_by_bits'] == {1: 288, 32: float_params} and s['batch_stats'] == 8
  size_bits = 288 + 32 * (float_params + 8)
  assert s['model_size_bytes'] == size_bits / 8
  assert s['float32_size_bytes'] == 32 * (s['params'] + 8) / 8
  assert s['compression_ratio'] == pytest.approx(32 * (s['params'] + 8) / size_bits)
  binary_macs, float_macs = 64 * 8 * 36, 64 * 4 * 27 + 64 * 8 * 8 + 80
  assert s['macs_by_precision'] == {1: binary_macs, 32: float_macs}
  assert (s['bops'], s['flops']) == (binary_macs, float_macs)
  assert s['ops'] == binary_macs / 64 + float_macs
  assert s['binarized_macs_ratio'] == pytest.approx(binary_macs / (binary_macs + float_macs))
  q1 = s['layers'][2]
  assert (q1['type'], q1['input_precision'], q1['mac_precision']) == ('QuantConv', 1, 1)
  assert q1['params_by_bits'] == {1: 288} and q1['memory_bytes'] == 36
  assert s['layers'][3]['mac_precision'] == 32  # 1-bit input x 32-bit kernel
  table = summary.format_table(s)
  assert '1-bit params' in table and '1-bit MACs' in table and 'Compression ratio' in table


def test_k_bit_macs_count_bits_in_bops():
  class TwoBit(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      q = lambda v: v
      q.precision = 2
      return layers.QuantDense(3, use_bias=False, input_quantizer=q, kernel_quantizer=q)(x)

  s = summary.summarize(TwoBit(), (5,))
  assert s['bops'] == 15 * 2 * 2 and s['flops'] == 0 and s['macs_by_precision'] == {2: 15}
  assert s['model_size_bytes'] == 15 * 2 / 8


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
  assert summary_cli.main(['--config', f'{ROOT}/configs/cifar10/resnet.py:depth=56', '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert out['params'] == 853_018 and out['input_shape'] == [32, 32, 3]
  assert summary_cli.main(['--config', 'no/such/config.py']) == 2
  assert 'does not exist' in capsys.readouterr().err


def test_birealnet18_and_reactnet_a_match_their_papers():
  """Bi-Real Net (Liu et al. 2018, Table 4): 1.68e9 BOPs, 1.39e8 FLOPs, 1.63e8 OPs; larq-zoo:
  11,689,512 params, 10,985,472 binary, 4.03 MiB. ReActNet (Liu et al. 2020, Table 3):
  ReActNet-A 4.82e9 BOPs, 0.12e8 FLOPs, 0.87e8 OPs."""
  s = summary.summarize(get_model('birealnet18', 1000), (224, 224, 3))
  assert (s['params'], s['binary_params']) == (11_689_512, 10_985_472)
  assert round(s['model_size_bytes'] / 2**20, 2) == 4.03
  assert round(s['bops'] / 1e9, 2) == 1.68
  assert s['flops'] / 1e8 == pytest.approx(1.39, abs=0.015)  # 1.378e8: stem + fc + shortcuts
  assert s['ops'] / 1e8 == pytest.approx(1.63, abs=0.015)
  r = summary.summarize(get_model('reactnet_a', 1000), (224, 224, 3))
  assert round(r['bops'] / 1e9, 2) == 4.82
  assert round(r['flops'] / 1e8, 2) == 0.12
  assert round(r['ops'] / 1e8, 2) == 0.87
  assert r['compression_ratio'] > 14
