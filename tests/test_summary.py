"""Per-layer params / MACs and the ``python -m mcj.summary`` command line."""
import functools
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj import summary as summary_cli
from mcj.analysis import counting, summary
from mcj.core import registry
from mcj.nn import layers
from mcj.models import get_model
from mcj.quant import quantizers

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name,params,macs', [
    ('resnet18', 11_689_512, 1_814_073_344),
    ('mobilenet_v2', 3_504_872, 300_774_272),
])
def test_imagenet_totals(name, params, macs):
  s = _summary(name, 224)
  assert s['params'] == params
  assert s['macs'] == macs
  assert sum(layer['macs'] for layer in s['layers']) == s['macs']
  assert sum(layer['params'] for layer in s['layers']) == s['params']


def test_layer_records():
  s = summary.summarize(get_model('resnet20', 10), (32, 32, 3))
  first, last = s['layers'][0], s['layers'][-1]
  assert first == {'name': 'conv1', 'type': 'Conv', 'output_shape': (32, 32, 16),
                   'params': 432, 'macs': 32 * 32 * 16 * 27, 'input_precision': 32,
                   'params_by_bits': {32: 432}, 'memory_bytes': 432 * 4, 'mac_precision': 32,
                   'macs_by_precision': {32: 32 * 32 * 16 * 27}}
  assert last == {'name': 'fc', 'type': 'Dense', 'output_shape': (10,), 'params': 650,
                  'macs': 640, 'input_precision': 32, 'params_by_bits': {32: 650},
                  'memory_bytes': 650 * 4, 'mac_precision': 32, 'macs_by_precision': {32: 640}}
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
  # Folded: BN keeps its two running statistics, its scale and bias (8 values) drop out.
  assert s['folded_model_size_bytes'] == (size_bits - 32 * 8) / 8 and s['frozen_weights'] == 0
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


def _two_bit(v):
  """A custom quantizer: declares its bits and computes inside the precision scope (what
  the op-level count reads; an identity would leave no op in the scope to read)."""
  with jax.named_scope(quantizers.PRECISION_SCOPE.format(bits=2)):
    return jnp.round(v)


_two_bit.precision = 2


def test_k_bit_macs_count_bits_in_bops():
  class TwoBit(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return layers.QuantDense(3, use_bias=False, input_quantizer=_two_bit,
                               kernel_quantizer=_two_bit)(x)

  s = summary.summarize(TwoBit(), (5,))
  assert s['bops'] == 15 * 2 * 2 and s['flops'] == 0 and s['macs_by_precision'] == {2: 15}
  assert s['model_size_bytes'] == 15 * 2 / 8


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'mcj.summary', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_json_matches_library():
  r = _cli('--model', 'resnet20', '--num_classes', '10', '--image_size', '32',
           '--json')
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  s = summary.summarize(get_model('resnet20', 10), (32, 32, 3))
  assert out['params'] == s['params'] and out['macs'] == s['macs']
  assert out['model_size_bytes'] == s['model_size_bytes']
  assert out['folded_model_size_bytes'] == s['folded_model_size_bytes']
  assert len(out['layers']) == len(s['layers'])


@pytest.mark.slow
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
  s = _summary('birealnet18', 224)
  assert (s['params'], s['binary_params']) == (11_689_512, 10_985_472)
  assert round(s['model_size_bytes'] / 2**20, 2) == 4.03
  assert round(s['bops'] / 1e9, 2) == 1.68
  assert s['flops'] / 1e8 == pytest.approx(1.39, abs=0.015)  # 1.378e8: stem + fc + shortcuts
  assert s['ops'] / 1e8 == pytest.approx(1.63, abs=0.015)
  r = _summary('reactnet_a', 224)
  assert round(r['bops'] / 1e9, 2) == 4.82
  assert round(r['flops'] / 1e8, 2) == 0.12
  assert round(r['ops'] / 1e8, 2) == 0.87
  assert r['compression_ratio'] > 14


# ----------------------------------------------------------------------------- op-level counting
class _Attention(nn.Module):
  """Token mixing with activation x activation products (no kernel of their own): Q.K^T and
  A.V, optionally with both operands of each product through ``quantizer``."""
  quantizer: object = None

  @nn.compact
  def __call__(self, x, train=False):
    q = nn.Dense(8, use_bias=False, name='query')(x)
    k = nn.Dense(8, use_bias=False, name='key')(x)
    qz = self.quantizer or (lambda v: v)
    scores = jnp.einsum('btf,bsf->bts', qz(q), qz(k))
    return jnp.einsum('bts,bsf->btf', qz(jax.nn.softmax(scores)), qz(x))


def test_activation_products_count_at_their_operands_precision():
  tokens, features = 6, 4
  projections = 2 * tokens * features * 8  # query and key
  products = tokens * tokens * 8 + tokens * features * tokens  # Q.K^T, A.V
  s = summary.summarize(_Attention(), (tokens, features))
  assert s['macs'] == projections + products and s['flops'] == s['macs'] and s['bops'] == 0
  own = {l['name']: l for l in s['layers']}
  assert own['']['macs'] == products and own['']['params'] == 0  # the module's own ops
  assert own['']['type'] == '_Attention' and own['query']['macs'] == tokens * features * 8

  b = summary.summarize(_Attention(quantizers.get('ste_sign')), (tokens, features))
  assert b['macs_by_precision'] == {1: products, 32: projections}
  assert (b['bops'], b['flops']) == (products, projections)
  assert b['layers'][-1]['mac_precision'] == 1 and b['layers'][-1]['input_precision'] == 1


class _FrozenAndNested(nn.Module):
  """A conv with a constant kernel, and a dense run under jit and remat."""

  @nn.compact
  def __call__(self, x, train=False):
    blur = jnp.asarray(np.full((3, 3, 1, 2), 1 / 9, np.float32))
    x = jax.lax.conv_general_dilated(x, blur, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     feature_group_count=2)
    dense = nn.Dense(3, name='fc')
    x = jax.checkpoint(jax.jit(lambda v: v.reshape(v.shape[0], -1)))(x)
    return jax.jit(lambda v: v * 1.0)(dense(x))


def test_frozen_conv_and_nested_jaxprs_are_counted():
  s = summary.summarize(_FrozenAndNested(), (4, 4, 2))
  blur_macs = 4 * 4 * 2 * 9
  assert s['frozen_weights'] == 18 and s['macs'] == blur_macs + 32 * 3
  assert s['folded_model_size_bytes'] == s['model_size_bytes'] + 18 * 4
  assert [(l['name'], l['macs']) for l in s['layers']] == [('fc', 96), ('', blur_macs)]


def test_ops_inside_jit_and_cond_keep_their_scope():
  def f(w, x):
    inner = jax.jit(lambda w: quantizers.get('ste_sign')(w))
    return jax.lax.cond(x.sum() > 0, lambda: x @ inner(w) + x @ inner(w), lambda: x @ w)

  ops = counting.count_ops(jax.make_jaxpr(f)(jnp.ones((4, 3)), jnp.ones((2, 4))))
  # Of cond's branches the one with the most MACs counts.
  assert [(o.macs, o.lhs_bits, o.rhs_bits) for o in ops] == [(24, 32, 1)] * 2
  assert counting.module_path('Net/block/block.method/quantized_1bit/conv', {
      ('block',), ('block', 'conv')}) == ('block', 'conv')


def test_quicknet_blur_pool_is_a_frozen_float_conv():
  """larq counts QuickNet's blur pool (3 depthwise 3x3/2 convs with a frozen kernel):
  790,272 MACs at 224x224 = 9 x (28^2 x 64 + 14^2 x 128 + 7^2 x 256)."""
  s = _summary('quicknet', 224)
  top = s['layers'][-1]
  assert (top['name'], top['type'], top['macs'], top['mac_precision']) == (
      '', 'QuickNet', 790_272, 32)
  assert s['frozen_weights'] == 9 * (64 + 128 + 256)
  assert round(s['folded_model_size_bytes'] / 2**20, 2) == 4.17
  assert '(top level)' in summary.format_table(s)


# ----------------------------------------------------------------------------- old counter
FIXTURE = json.loads((ROOT / 'tests' / 'fixtures' / 'summary_before.json').read_text())
# Differences from the module-level counter (commit b8ec7d3) that are fixes: QuickNet's blur
# pool, a depthwise 3x3/2 conv with a frozen float kernel (no params) before each width
# change, has MACs the old counter (one conv per module with a ``kernel``) never saw; larq
# counts them (790,272 at 224x224). Full precision, so they add to MACs, FLOPs and the
# 32-bit MACs and nothing else.
BLUR_POOL_MACS = {
    'quicknet@224': 790_272, 'quicknet@32': 16_128,              # 9 x (28^2 x 64 + 14^2 x 128 + 7^2 x 256)
    'quicknet_large@224': 790_272, 'quicknet_large@32': 16_128,  # same widths as quicknet
    'quicknet_small@224': 451_584, 'quicknet_small@32': 9_216,   # 9 x (28^2 x 32 + 14^2 x 64 + 7^2 x 256)
}
# Quick to count: the models other tests here use, the fixed ones, one of each family.
FAST = {'resnet18', 'resnet20', 'mobilenet_v2', 'birealnet18', 'reactnet_a', 'xnor_resnet18',
        'meliusnet22', 'binary_densenet28', 'quicknet', 'quicknet_small', 'quicknet_large'}


@functools.lru_cache(maxsize=None)
def _summary(name, size):
  classes = 1000 if size == 224 else 10
  return summary.summarize(get_model(name, classes), (size, size, 3))


def _fixture_cases():
  for key in sorted(FIXTURE):
    name = key.split('@')[0]
    yield pytest.param(key, id=key,
                       marks=() if name in FAST else pytest.mark.slow)


# Models registered after the fixture was made, and where their counts are tested instead.
NEWER = {'mobilenet_v3': 'tests/test_search_spaces.py (torchvision Large, OFA subnets)',
         'nb201': 'tests/test_search_spaces.py (NAS-Bench-201 TinyNetwork counts)',
         'binary_net': 'tests/test_search_spaces.py (binary space, counted by hand)',
         **{name: 'tests/test_transformers.py (HF / timm counts, attention MACs)'
            for name in registry.names('model') if name.startswith(('bert_', 'vit_'))}}


def test_fixture_covers_every_model():
  assert {k.split('@')[0] for k in FIXTURE} | set(NEWER) == set(registry.names('model'))


@pytest.mark.parametrize('key', list(_fixture_cases()))
def test_counts_match_the_module_level_counter(key):
  name, size = key.split('@')
  expected = dict(FIXTURE[key])
  try:
    s = _summary(name, int(size))
  except Exception as e:  # pylint: disable=broad-except
    assert expected == {'error': type(e).__name__}
    return
  got = {k: s[k] for k in expected if k != 'macs_by_precision'}
  got['macs_by_precision'] = {str(b): n for b, n in s['macs_by_precision'].items()}
  fix = BLUR_POOL_MACS.get(key, 0)
  if fix:
    expected['macs'] += fix
    expected['flops'] += fix
    expected['macs_by_precision'] = {**expected['macs_by_precision'],
                                     '32': expected['macs_by_precision']['32'] + fix}
  assert got == expected


def test_noop_declares_its_precision_for_op_counting():
  """larq's NoOp: an identity whose operand still counts at the declared bits."""
  class EightBit(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      q = 'noop(precision=8)'
      return layers.QuantDense(3, use_bias=False, input_quantizer=q, kernel_quantizer=q)(x)

  s = summary.summarize(EightBit(), (5,))
  assert s['macs_by_precision'] == {8: 15} and s['bops'] == 15 * 8 * 8
