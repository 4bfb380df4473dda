"""ReActNet-A and BNext: parameter counts against the official PyTorch definitions, BOPs and
FLOPs against the papers, the two ReActNet steps, and a real forward/backward pass.

Counting: params = Flax ``params`` (BN scale and bias in, running statistics out); binary
params = latent kernels marked by ``inspect.binary_kernel_mask``; model size (larq) = binary
kernels at 1 bit, every other entry of ``params`` and ``batch_stats`` at 32 bits; BOPs =
MACs of layers whose input and kernel are both 1-bit, FLOPs = MACs of the other conv/dense
layers, MACs = output elements x (Cin / groups) x kh x kw (ReActNet's OPs = BOPs/64 + FLOPs).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj.core import config as config_lib
from mcj.core import tree as tree_lib
from mcj.nn import inspect
from mcj.quant import quantizers
from mcj.core import registry
from mcj.models import get_model
from mcj.models.bnn import bnext, reactnet
from mcj.core.config import ConfigError
from mcj.train import merge_config

IMAGENET = (224, 224, 3)


@functools.lru_cache(maxsize=None)
def _profile(name, **options):
  """Counts of the registered model ``name`` at 224x224, 1000 classes (shapes only)."""
  model = get_model(name, 1000, **dict(options))
  variables, calls = inspect.trace_layers(model, IMAGENET)
  params = variables['params']
  binary_paths = {m.path for m, _, _ in calls if inspect.is_quant_layer(m)
                  and quantizers.precision_of(m.kernel_q()) == 1}
  bops = flops = 0
  for module, _, out in calls:
    kernel = tree_lib.own_params(params, module.path).get('kernel')
    if kernel is None:
      continue
    macs = math.prod(out.shape[1:]) * math.prod(kernel.shape[:-1])
    one_bit = (inspect.is_quant_layer(module)
               and quantizers.precision_of(module.input_q()) == 1
               and quantizers.precision_of(module.kernel_q()) == 1)
    if one_bit:
      bops += macs
    else:
      flops += macs
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  binary = sum(v.size for path, v in flat
               if path[-1].key == 'kernel' and tuple(k.key for k in path[:-1]) in binary_paths)
  total = sum(v.size for v in jax.tree.leaves(params))
  stats = sum(v.size for v in jax.tree.leaves(variables['batch_stats']))
  size_bytes = (binary + 32 * (total - binary + stats)) / 8
  return {'params': total, 'binary': binary, 'size_bytes': size_bytes, 'bops': bops,
          'flops': flops, 'tree': jax.tree.map(lambda v: v.shape, params)}


# ----------------------------------------------------------------------------- ReActNet-A
def _reactnet_a_official_counts(num_classes=1000):
  """(params, binary kernel params) of liuzechun/ReActNet mobilenet/2_step2/reactnet.py,
  summed module by module as torch's ``numel`` does."""
  ch = reactnet.REACTNET_A_CHANNELS
  params = 3 * 9 * ch[0] + 2 * ch[0]                # firstconv3x3: conv, bn1
  binary = 0
  for cin, cout in zip(ch[:-1], ch[1:]):
    params += cin + 9 * cin * cin + 2 * cin         # move11, binary_3x3, bn1
    params += 3 * cin + cin                         # move12, prelu1, move13, move21
    pw = cin * cout if cout == cin else 2 * cin * cin   # binary_pw or binary_pw_down1/2
    params += pw + 2 * cout + 3 * cout              # bn2 (or bn2_1 + bn2_2), move22, prelu2, move23
    binary += 9 * cin * cin + pw
  params += ch[-1] * num_classes + num_classes      # fc
  return params, binary


def test_reactnet_a_counts_match_the_official_model():
  p = _profile('reactnet_a')
  assert (p['params'], p['binary']) == _reactnet_a_official_counts() == (29_343_592, 28_253_184)
  # Model size: 7,980,832 bytes = 7.98 MB = 7.61 MiB (no published figure).
  assert p['size_bytes'] == 7_980_832


def test_reactnet_a_ops_match_the_paper():
  # ReActNet paper, Table (ReActNet-A): BOPs 4.82e9, FLOPs 0.12e8, OPs 0.87e8. The FLOPs are
  # the float first conv and classifier only: 10,838,016 + 1,024,000.
  p = _profile('reactnet_a')
  assert p['bops'] == 4_816_896_000 and abs(p['bops'] / 4.82e9 - 1) < 0.01
  assert p['flops'] == 11_862_016 and round(p['flops'] / 1e8, 2) == 0.12
  assert round((p['bops'] / 64 + p['flops']) / 1e8, 2) == 0.87


def test_binary_kernel_mask_agrees_with_the_count():
  model = get_model('reactnet_a', 10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  mask = inspect.binary_kernel_mask(model, (32, 32, 3))
  marked = sum(v.size for v, m in zip(jax.tree.leaves(variables['params']),
                                      jax.tree.leaves(mask)) if m)
  assert marked == _reactnet_a_official_counts(10)[1]


def test_reactnet_step1_has_the_same_tree_and_no_binary_kernels():
  step2 = _profile('reactnet_a')
  step1 = _profile('reactnet_a', kernel_quantizer=None, kernel_scale='none')
  assert step1['tree'] == step2['tree']
  assert step1['binary'] == 0 and step1['bops'] == 0
  float_twin = _profile('reactnet_a', input_quantizer=None, kernel_quantizer=None)
  assert float_twin['tree'] == step2['tree'] and float_twin['binary'] == 0


# ----------------------------------------------------------------------------- BNext
def _bnext_official_counts(channels, num_classes=1000):
  """(params, unused params, binary kernel params) of hpi-xnor/BNext src/bnext.py
  (ELM-Attention and info-recoupling on), summed as torch's ``numel``. "Unused" are the
  PReLUs it builds but never calls: the stem's and ``activation1`` of FFN_3x3 / FFN_1x1."""

  def processor(c, k):  # move, binary_conv, norm1, norm2, activation1/2, se, scale
    se = (c * (c // 8) + c // 8) + (c // 8 * c + c)
    return c + k * k * c * c + 2 * c + 2 * c + 2 * c + se + c

  params = 3 * 9 * channels[0] + 2 * channels[0] + channels[0]  # conv1, bn1, prelu (unused)
  unused, binary = channels[0], 0
  for i in range(1, len(channels)):
    cin = channels[i - 1]
    n_1x1 = 1 if channels[i] == cin else 2
    elm = i % 2 == 0 and i > 1
    params += processor(cin, 3) + n_1x1 * processor(cin, 1)
    unused += cin * (n_1x1 + (not elm))
    binary += 9 * cin * cin + n_1x1 * cin * cin
  params += channels[-1] + channels[-1] * num_classes + num_classes  # prelu, fc
  return params, unused, binary


# name: (our params, binary params, BNext "BOPs" = 1-bit MACs / 64 in 1e9: README/paper)
BNEXT = {
    'bnext_tiny': (30_853_276, 28_253_184, 0.077),
    'bnext_small': (68_581_174, 63_569_664, 0.172),
    'bnext_middle': (134_479_894, 126_238_464, 0.317),
    'bnext_large': (326_504_912, 308_310_016, 0.819),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(BNEXT))
def test_bnext_counts_match_the_official_model(name):
  params, binary, published_bops = BNEXT[name]
  p = _profile(name)
  official, unused, official_binary = _bnext_official_counts(bnext.CHANNELS[name[6:]])
  assert p['params'] == official - unused == params
  assert p['binary'] == official_binary == binary
  # The published BOPs are 1-bit MACs / 64 (BNext-T has ReActNet-A's 4.82e9 1-bit MACs).
  assert abs(p['bops'] / 64 / 1e9 / published_bops - 1) < 0.03


def test_bnext_defaults_use_the_bnext_quantizers():
  model = get_model('bnext_tiny', 10)
  assert {'hard_sign', 'bnext_weight'} <= set(registry.names('quantizer'))
  assert (model.input_quantizer, model.kernel_quantizer) == ('hard_sign', 'bnext_weight')
  assert quantizers.resolve(model.input_quantizer).precision == 1
  assert quantizers.resolve(model.kernel_quantizer).precision == 1


@pytest.mark.slow
@pytest.mark.parametrize('options', [
    {'elm_attention': False}, {'infor_recoupling': False},
    {'elm_attention': False, 'infor_recoupling': False},
    {'input_quantizer': None, 'kernel_quantizer': None}])
def test_bnext_ablations_and_float_twin_build(options):
  model = get_model('bnext_tiny', 10, **options)
  x = jnp.zeros((2, 32, 32, 3))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  assert jax.eval_shape(model.apply, shapes, x).shape == (2, 10)
  binary = jax.tree.leaves(inspect.binary_kernel_mask(model, (32, 32, 3)))
  assert any(binary) == (options.get('kernel_quantizer', 'default') is not None)


# ----------------------------------------------------------------------------- real passes
def _run_fast(fn, *args):
  """jit with XLA's backend optimisation off: compiles several times faster on CPU."""
  compiled = jax.jit(fn).lower(*args).compile({'xla_backend_optimization_level': 0})
  return compiled(*args)


def _random_variables(model, x):
  """Variables drawn with numpy from the abstract init: no init to compile."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                        shapes['params'])
  stats = jax.tree_util.tree_map_with_path(
      lambda p, s: np.full(s.shape, p[-1].key == 'var', np.float32), shapes['batch_stats'])
  return {'params': params, 'batch_stats': stats}


def _forward_backward(model, x, progress=0.5):
  variables = _random_variables(model, x)

  def grad(params):
    def loss(params):
      with quantizers.training_progress(progress):
        logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                                mutable=['batch_stats'])
      return jnp.mean(logits ** 2), logits
    return jax.grad(loss, has_aux=True)(params)

  grads, logits = _run_fast(grad, variables['params'])
  return variables, logits, grads


# The first four blocks at a quarter of the width: every block kind (channels doubled at
# stride 1 and at stride 2, kept; BNext's plain and ELM-Attention 3x3 processors), fast on CPU.
NARROW = {'reactnet_a': tuple(c // 4 for c in reactnet.REACTNET_A_CHANNELS[:5]),
          'bnext_tiny': tuple(c // 4 for c in bnext.CHANNELS['tiny'][:5])}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(NARROW))
def test_forward_backward_is_finite(name):
  model = get_model(name, 10, channels=NARROW[name])
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables, logits, grads = _forward_backward(model, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  conv = grads['block2']['conv_3x3']
  kernel_grad = conv['kernel'] if 'kernel' in conv else conv['binary_conv']['kernel']
  assert np.abs(kernel_grad).sum() > 0  # the STE lets gradients reach binary latent weights

  # Stored for inference, every binary kernel is +-alpha per output channel (ReActNet,
  # XNOR scale) or exactly +-1 (BNext at the end of annealing).
  stored = _run_fast(lambda v: inspect.inference_params(model, v, (32, 32, 3)), variables)
  mask = inspect.binary_kernel_mask(model, (32, 32, 3))
  checked = 0
  for kernel, is_binary in zip(jax.tree.leaves(stored), jax.tree.leaves(mask)):
    if is_binary:
      per_channel = np.abs(np.asarray(kernel)).reshape(-1, kernel.shape[-1])
      assert np.allclose(per_channel, per_channel[:1])
      if name.startswith('bnext'):
        assert set(np.unique(kernel)) <= {-1.0, 1.0}
      checked += 1
  assert checked == 2 * 4 + 3  # a 3x3 and a 1x1 per block, two 1x1 in 3 channel doublings


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = get_model('bnext_tiny', 10, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert {v.dtype for v in jax.tree.leaves(shapes['params'])} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3))), shapes)
  assert out.dtype == jnp.float32 and out.shape == (2, 10)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize('arg', ['', 'model=reactnet_resnet18', 'runlocal', 'teacher=/t/r34',
                                 'step=2,teacher=/t/r34', 'step=1,runlocal'])
def test_reactnet_config(arg):
  """The pipeline (teacher, step 1, step 2) or one step; distribution loss, no labels."""
  from mcj.train import pipeline  # pylint: disable=g-import-not-at-top
  config = merge_config(config_lib.load_config(f'configs/imagenet/reactnet.py:{arg}'))
  if 'step=' in arg:
    steps = [(f'step{arg[5]}', '', config)]
  else:
    steps = pipeline.stage_configs(config, '/w')
    names = [name for name, _, _ in steps]
    assert names == (['step1', 'step2'] if 'teacher=' in arg else ['teacher', 'step1', 'step2'])
    if 'teacher=' not in arg:
      teacher = merge_config(steps[0][2])
      assert teacher.model.name == ('resnet20' if 'runlocal' in arg else 'resnet34')
      steps = steps[1:]
  for name, _, stage in steps:
    stage = merge_config(stage)
    step2 = name == 'step2'
    assert stage.model.kernel_quantizer == ('ste_sign' if step2 else None)
    assert stage.optimizer.name == 'adam' and stage.schedule.name == 'linear'
    assert stage.optimizer.weight_decay == (0.0 if step2 else 1e-5)
    assert stage.init_from == ('/w/step1' if step2 and 'step=' not in arg else '')
    assert stage.distill.logit_loss == 'distribution' and stage.distill.label_weight == 0.0
    want = '/t/r34' if 'teacher=' in arg else ('random' if 'step=' in arg else '/w/teacher')
    assert stage.distill.teachers[0]['init_from'] == want
    if 'runlocal' in arg:
      assert stage.data.name == 'synthetic' and stage.total_steps == 2
    else:
      assert stage.data.name == 'imagenet2012' and stage.total_epochs == 128
    assert stage.model.name == ('reactnet_resnet18' if 'model=' in arg else 'reactnet_a')
    assert stage.model.name in registry.names('model')
  with pytest.raises(ConfigError, match='needs teacher=DIR'):
    config_lib.load_config('configs/imagenet/reactnet.py:step=2')


@pytest.mark.parametrize('arg', ['', 'model=bnext_large', 'runlocal'])
def test_bnext_config(arg):
  config = merge_config(config_lib.load_config(f'configs/imagenet/bnext.py:{arg}'))
  assert config.model.name in registry.names('model')
  assert config.optimizer.name == 'adamw' and config.binary.latent_clip == 1.5
  if not arg:
    assert config.total_epochs == 512 and config.optimizer.lr == 1e-3
