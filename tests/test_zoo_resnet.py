"""Binary ResNets (mcj/models/binary_resnet.py): published counts, binary params, model size,
quantized layers where the papers put them, float twins, and a real training step.

Counting conventions: params = Flax ``params`` (BN scale and bias in, running statistics
out); binary params = entries of latent kernels that ``inspect.binary_kernel_mask`` marks;
model size (larq) = binary entries at 1 bit, every other entry of ``params`` and
``batch_stats`` at 32 bits, in bytes; larq-zoo's "MB" are MiB (2**20 bytes).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj.core import registry
from mcj.nn import inspect
from mcj.nn import layers
from mcj.quant import quantizers
from mcj.core.config import ConfigError, load_config
from mcj.models import get_model
from mcj.models.bnn import binary_resnet
from mcj.train import merge_config

IMAGENET = (224, 224, 3)
CIFAR = (32, 32, 3)
MIB = 2 ** 20


@functools.lru_cache(maxsize=None)
def _stats(name, input_shape, **options):
  """(params, batch_stats entries, binary params, model size in bytes) of a registered model."""
  model = get_model(name, 1000 if input_shape == IMAGENET else 10, **options)
  variables, _ = inspect.trace_layers(model, input_shape)
  mask = inspect.binary_kernel_mask(model, input_shape)
  params = sum(x.size for x in jax.tree.leaves(variables['params']))
  stats = sum(x.size for x in jax.tree.leaves(variables.get('batch_stats', {})))
  binary = sum(x.size for x, is_binary in zip(jax.tree.leaves(variables['params']),
                                               jax.tree.leaves(mask)) if is_binary)
  size = binary / 8 + (params - binary + stats) * 4
  return params, stats, binary, size


# ----------------------------------------------------------------------------- published counts
def test_birealnet18_matches_larq_zoo_exactly():
  # larq-zoo 2.4.0 BiRealNet (weights=None): 11,689,512 trainable, 10,985,472 in 1-bit
  # kernels; docstring memory 4.03 MB, which is MiB with BN statistics at 32 bits.
  params, _, binary, size = _stats('birealnet18', IMAGENET)
  assert params == 11_689_512
  assert binary == 10_985_472
  assert size == 4_227_744 and round(size / MIB, 2) == 4.03
  assert round(params / 1e6, 1) == 11.7


def test_binary_resnet_e18_matches_larq_zoo():
  # larq-zoo literature/resnet_e.py docstring: "Parameters: 11 699 368" (Keras total, i.e.
  # BN statistics included), "Memory: 4.03 MB"; 11.7M in larq-zoo's table.
  params, stats, binary, size = _stats('binary_resnet_e18', IMAGENET)
  assert params + stats == 11_699_368
  assert params == 11_689_640 and binary == 10_985_472
  assert round(size / MIB, 2) == 4.03
  assert round(params / 1e6, 1) == 11.7


def test_real_to_binary_matches_larq_zoo():
  # larq-zoo literature/real_to_bin_nets.py RealToBinaryNet docstring: "Parameters
  # 11 995 624" (Keras total, BN statistics included), "Memory 5.13 MB"; 12.0M in the table.
  # The 5.13 is MiB *without* BN statistics (5.16 with them), unlike the BiRealNet and
  # ResNetE18 rows, whose figures include them.
  params, stats, binary, size = _stats('real_to_binary', IMAGENET)
  assert params + stats == 11_995_624
  assert binary == 10_985_472
  assert round((size - 4 * stats) / MIB, 2) == 5.13
  assert round(size / MIB, 2) == 5.16
  assert round(params / 1e6, 1) == 12.0


@pytest.mark.parametrize('name, input_shape, params, binary', [
    # Same layout as Bi-Real 18 (larq-zoo has no 34): official [6, 8, 12, 6] blocks.
    ('birealnet34', IMAGENET, 21_797_672, 21_086_208),
    # Bi-Real 18 + per block: RSign shift (C_in) and RPReLU (3 x C_out): +14,912.
    ('reactnet_resnet18', IMAGENET, 11_704_424, 10_985_472),
    # torchvision ResNet-18 with each conv's BN moved before it, plus a final BN.
    ('xnor_resnet18', IMAGENET, 11_689_640, 10_985_472),
    # akamaster's option-A ResNet-20 (269,722) + IR-Net's BatchNorm1d(64) before the fc.
    ('binary_resnet20', CIFAR, 269_850, 267_264),
    # kuangliu's ResNet-18 (11,173,962) + IR-Net's BatchNorm1d(512) before the fc.
    ('binary_resnet18_cifar', CIFAR, 11_174_986, 10_985_472),
    # IR-Net VGG_SMALL_1W1A: 5 binary 3x3 convs, fc 8192 -> 10 with bias.
    ('binary_vgg_small', CIFAR, 4_660_106, 4_571_136),
])
def test_counts(name, input_shape, params, binary):
  got_params, _, got_binary, _ = _stats(name, input_shape)
  assert (got_params, got_binary) == (params, binary)


def test_model_sizes():
  assert round(_stats('birealnet34', IMAGENET)[3] / MIB, 2) == 5.29
  assert round(_stats('reactnet_resnet18', IMAGENET)[3] / MIB, 2) == 4.09
  assert round(_stats('xnor_resnet18', IMAGENET)[3] / MIB, 2) == 4.03
  assert _stats('binary_resnet20', CIFAR)[3] == 49_768


# ----------------------------------------------------------------------------- layer precisions
NAMES = sorted(binary_resnet.MODELS)


def _shape_of(name):
  return CIFAR if name in ('binary_resnet20', 'binary_resnet18_cifar',
                           'binary_vgg_small') else IMAGENET


def test_registered():
  assert set(binary_resnet.MODELS) <= set(registry.names('model'))
  assert set(NAMES) == {'xnor_resnet18', 'birealnet18', 'birealnet34', 'binary_resnet_e18',
                        'real_to_binary', 'reactnet_resnet18', 'binary_resnet20',
                        'binary_resnet18_cifar', 'binary_vgg_small'}


@pytest.mark.parametrize('name', NAMES)
def test_binary_layers_are_quant_convs_with_both_quantizers(name):
  """Every 3x3 conv after the stem is a 1-bit x 1-bit QuantConv; the stem, shortcuts,
  scaling and classifier are float Conv/Dense; each binary kernel is marked binary."""
  shape = _shape_of(name)
  model = get_model(name, 10)
  _, calls = inspect.trace_layers(model, shape)
  quant = [m for m, _, _ in calls if inspect.is_quant_layer(m)]
  assert quant
  for module in quant:
    assert quantizers.precision_of(module.input_q()) == 1, module.path
    assert quantizers.precision_of(module.kernel_q()) == 1, module.path
  floats = [m for m, _, _ in calls if isinstance(m, (nn.Conv, nn.Dense))]
  assert any(m.name == 'fc' for m in floats)
  assert any(m.name in ('stem_conv', 'conv0') for m in floats)
  _, _, binary, _ = _stats(name, shape)
  _, _, float_binary, _ = _stats(name, shape, input_quantizer=None, kernel_quantizer=None)
  assert binary > 0 and float_binary == 0


@pytest.mark.parametrize('name', NAMES)
def test_float_twin_has_the_same_params_and_no_binary_ones(name):
  shape = _shape_of(name)
  params, stats, _, _ = _stats(name, shape)
  twin = _stats(name, shape, input_quantizer=None, kernel_quantizer=None)
  assert twin[:3] == (params, stats, 0)
  # The binary model's 1-bit entries are exactly the kernels of its QuantConvs with a 1-bit
  # kernel quantizer, counted here from the traced layers rather than from the mask.
  classes = 1000 if shape == IMAGENET else 10  # as _stats
  model = get_model(name, classes)
  variables, calls = inspect.trace_layers(model, shape)
  kernels = {m.path: m for m, _, _ in calls if isinstance(m, layers.QuantConv)
             and quantizers.precision_of(m.kernel_q()) == 1}
  flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  one_bit = sum(v.size for p, v in flat
                if p[-1].key == 'kernel' and tuple(k.key for k in p[:-1]) in kernels)
  _, _, binary, size = _stats(name, shape)
  assert one_bit == binary > 0
  # The float twin really stores every variable as float32: its size is the variables'
  # bytes; the binary model saves 31 of every 32 bits on exactly those kernels.
  twin_vars, _ = inspect.trace_layers(
      get_model(name, classes, input_quantizer=None, kernel_quantizer=None), shape)
  stored = (twin_vars['params'], twin_vars.get('batch_stats', {}))
  assert twin[3] == sum(v.size * v.dtype.itemsize for v in jax.tree.leaves(stored))
  assert twin[3] - size == one_bit * 31 / 8


def test_real_to_binary_stages():
  """Real-valued (tanh inputs), binary-activation and fully binary stages share params."""
  fp = _stats('real_to_binary', IMAGENET, input_quantizer=None, kernel_quantizer=None,
               conv_input_activation='tanh')
  ban = _stats('real_to_binary', IMAGENET, kernel_quantizer=None)
  bnn = _stats('real_to_binary', IMAGENET)
  assert fp[:2] == ban[:2] == bnn[:2]
  assert fp[2] == ban[2] == 0 and bnn[2] == 10_985_472
  model = get_model('real_to_binary', 10, kernel_quantizer=None)
  _, calls = inspect.trace_layers(model, (32, 32, 3))
  quant = [m for m, _, _ in calls if inspect.is_quant_layer(m)]
  assert {quantizers.precision_of(m.input_q()) for m in quant} == {1}
  assert {quantizers.precision_of(m.kernel_q()) for m in quant} == {32}
  with pytest.raises(ValueError, match='conv_input_activation'):
    inspect.trace_layers(get_model('real_to_binary', 10, conv_input_activation='relu'),
                        (32, 32, 3))


@pytest.mark.parametrize('name, size', [('birealnet18', 33), ('real_to_binary', 45),
                                        ('binary_resnet_e18', 64), ('binary_resnet20', 9),
                                        ('binary_vgg_small', 8)])
def test_small_and_odd_inputs_give_float32_logits(name, size):
  model = get_model(name, 7, dtype=jnp.bfloat16)
  shape = (size, size, 3)
  variables, _ = inspect.trace_layers(model, shape)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  x = jnp.zeros((2, *shape))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (2, 7) and out.dtype == jnp.float32


# ----------------------------------------------------------------------------- real computation
def _random_variables(model, x):
  """Variables drawn with numpy from the abstract init: much cheaper than compiling init."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32),
                        shapes['params'])
  stats = jax.tree_util.tree_map_with_path(
      lambda p, s: np.full(s.shape, p[-1].key == 'var', np.float32), shapes['batch_stats'])
  return {'params': params, 'batch_stats': stats}


@pytest.mark.slow
def test_binary_resnet20_trains_on_digits_shape():
  """Forward + backward at 8x8x1 (scikit-learn digits), batch 4: finite loss and grads, the
  binary latent kernels get gradients, BN statistics update."""
  model = get_model('binary_resnet20', 10)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  labels = jnp.array([0, 3, 5, 9])
  variables = _random_variables(model, x)
  mask = inspect.binary_kernel_mask(model, (8, 8, 1))

  # A test of values, not speed: XLA's cheapest CPU backend compiles this twice as fast.
  @functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
  def step(params, batch_stats):
    def loss_fn(p):
      with quantizers.training_progress(0.5):
        logits, new = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                  mutable=['batch_stats'])
      one_hot = jax.nn.one_hot(labels, 10)
      return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1)), new
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, new), grads = step(variables['params'], variables['batch_stats'])
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  binary_grads = [g for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mask)) if m]
  assert len(binary_grads) == 18 and all(float(jnp.abs(g).sum()) > 0 for g in binary_grads)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new['batch_stats'],
                         variables['batch_stats'])
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize('block', [binary_resnet.BiRealBlock, binary_resnet.ReActBiRealBlock])
def test_inference_params_are_scaled_signs_and_keep_outputs(block):
  """Bi-Real/ReActNet kernels deploy as +-mean|W| per output channel, same logits."""
  model = binary_resnet.BiRealNet(num_classes=5, stage_sizes=(1, 1), widths=(8, 16),
                                  block=block)
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  variables = _random_variables(model, x)

  @jax.jit
  def deploy_and_compare(variables):
    deployed = inspect.inference_params(model, variables, (32, 32, 3))
    return (deployed, model.apply(variables, x, train=False),
            model.apply({**variables, 'params': deployed}, x, train=False))

  deployed, before, after = deploy_and_compare(variables)
  kernel = deployed['layer2_0']['conv']['kernel']
  per_channel = np.abs(np.asarray(kernel)).reshape(-1, kernel.shape[-1])
  np.testing.assert_allclose(per_channel, per_channel[:1].repeat(len(per_channel), 0))
  np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- configs
CONFIGS = [
    ('configs/cifar10/bnn.py', ['model=binary_resnet20', 'model=binary_vgg_small',
                                'model=binary_resnet18_cifar',
                                'model=binary_resnet20,float_activations']),
    ('configs/imagenet/birealnet.py', ['model=birealnet18', 'model=birealnet34,batch=1024']),
    ('configs/imagenet/binary_resnet.py', ['model=xnor_resnet18', 'model=binary_resnet_e18',
                                           'model=real_to_binary,stage=fp',
                                           'model=real_to_binary,stage=ban',
                                           'model=real_to_binary,stage=bnn']),
]


@pytest.mark.parametrize('path, arg', [(p, a) for p, args in CONFIGS for a in args])
def test_configs_build_their_models(path, arg):
  """Each variant merges into the trainer's config and its :runlocal model builds at 32x32
  with the right quantized layers; the full (non-runlocal) variant builds the same model."""
  if 'stage=fp' in arg:
    want = {(32, 32)}
  elif 'stage=ban' in arg:
    want = {(1, 32)}
  elif 'float_activations' in arg:
    want = {(32, 1)}
  else:
    want = {(1, 1)}
  models = {}
  for runlocal in (False, True):
    config = merge_config(load_config(f'{path}:{arg},runlocal' if runlocal else f'{path}:{arg}'))
    if runlocal:
      assert config.data.image_size == 32 and config.data.num_classes == 10
      assert config.data.num_train_examples == 64
    else:
      assert config.data.name != 'synthetic' and config.total_steps != 2
    options = {k: v for k, v in config.model.items() if k != 'name'}
    assert f"model={config.model.name}" in arg
    model = get_model(config.model.name, 10, **options)
    _, calls = inspect.trace_layers(model, (32, 32, 3))
    quant = [m for m, _, _ in calls if inspect.is_quant_layer(m)]
    bits = {(quantizers.precision_of(m.input_q()), quantizers.precision_of(m.kernel_q()))
            for m in quant}
    assert bits == want, (runlocal, bits)
    models[runlocal] = config.model
  assert models[False] == models[True]


def test_config_recipes():
  r20 = load_config('configs/cifar10/bnn.py')
  assert (r20.optimizer.lr, r20.total_epochs, r20.batch_size) == (0.1, 400.0, 128)
  assert r20.model.input_quantizer == 'ede(t_min=0.001, t_max=10.0)'
  vgg = load_config('configs/cifar10/bnn.py:model=binary_vgg_small')
  assert (vgg.optimizer.lr, vgg.total_epochs) == (0.007, 300.0)
  assert vgg.model.kernel_quantizer == 'irnet_weight(t_min=0.1, t_max=10.0)'
  bireal = load_config('configs/imagenet/birealnet.py:batch=1024')
  assert bireal.optimizer.lr == pytest.approx(2e-3) and bireal.total_epochs == 256.0
  r2b = load_config('configs/imagenet/binary_resnet.py:model=real_to_binary,stage=ban')
  assert r2b.optimizer.lr == 1e-3 and tuple(r2b.schedule.step_epochs) == (40.0, 60.0, 70.0)
  with pytest.raises(ConfigError, match='stage applies to model=real_to_binary'):
    load_config('configs/imagenet/binary_resnet.py:model=xnor_resnet18,stage=fp')
  with pytest.raises(ConfigError, match='takes model='):
    load_config('configs/cifar10/bnn.py:model=resnet20')
