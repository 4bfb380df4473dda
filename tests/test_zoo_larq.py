"""larq-zoo binary networks: BinaryDenseNet, MeliusNet, QuickNet.

Counts are taken at 224x224, 1000 classes, with ``jax.eval_shape`` (nothing materialised).
- params: the Flax ``params`` collection (BN scale and bias in, running statistics out);
  binary params: entries of the latent kernels ``inspect.binary_kernel_mask`` marks.
- Exact trainable and binary counts: larq-zoo 2.4.0 computed (REFERENCE.md).
- larq-zoo's docstring "Parameters" and "Memory" columns count BatchNorm two ways:
  BinaryDenseNet's rows count all four BN vectors (docstring parameters = params +
  batch_stats, e.g. 5,150,504 for BinaryDenseNet28), QuickNet's and MeliusNet's rows count
  two per channel (larq's summary folds BN scale and bias into the moving statistics) plus
  QuickNet's frozen blur-pool kernels. Memory is binary kernels at 1 bit and every other
  counted weight at 32 bits, and its "MB" are MiB (2**20 bytes): with 10**6 no row matches
  (BinaryDenseNet28 would be 4.32 MB, QuickNet 4.37 MB). BMXNet-v2's MeliusNet sizes follow
  the same folded count (params at their precision). ``summarize`` gives both:
  ``model_size_bytes`` (all four BN vectors) and ``folded_model_size_bytes`` (two per
  channel plus frozen weights).
"""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj.analysis import summary
from mcj.core import tree as tree_lib
from mcj.nn import inspect
from mcj.nn import layers
from mcj.core.config import load_config
from mcj.models.bnn import binary_densenet, meliusnet, quicknet
from mcj.train import merge_config

MODELS = {**binary_densenet.MODELS, **meliusnet.MODELS, **quicknet.MODELS}
MiB = 2 ** 20
IMAGE = (224, 224, 3)


def _size(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=None)
def _counts(name):
  """Params, binary params, BN running stats, BN scale+bias, blur-pool constants."""
  model = MODELS[name](num_classes=1000)
  variables, calls = inspect.trace_layers(model, IMAGE)
  mask = inspect.binary_kernel_mask(model, IMAGE)
  params = variables['params']
  binary = sum(p.size for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
  bn_params = sum(_size(tree_lib.own_params(params, m.path)) for m, _, _ in
                  {id(c[0]): c for c in calls if isinstance(c[0], nn.BatchNorm)}.values())
  blur = 0
  if isinstance(model, quicknet.QuickNet):  # larq keeps the 3x3 blur kernel as a frozen weight
    widths = model.section_filters
    blur = sum(9 * a for a, b in zip(widths, widths[1:]) if a != b)
  return dict(params=_size(params), binary=binary, stats=_size(variables['batch_stats']),
              bn_params=bn_params, blur=blur)


@functools.lru_cache(maxsize=None)
def _summary(name):
  return summary.summarize(MODELS[name](num_classes=1000), IMAGE)


@pytest.mark.parametrize('name, params, binary', [
    ('binary_densenet28', 5_131_496, 4_202_496),
    ('meliusnet22', 6_944_584, 6_119_424),
    ('quicknet', 13_230_024, 12_533_760),
])
def test_exact_counts_match_larq_zoo(name, params, binary):
  c = _counts(name)
  assert (c['params'], c['binary']) == (params, binary)


@pytest.mark.parametrize('name, keras_total, millions, digits', [
    ('binary_densenet28', 5_150_504, 5.15, 2), ('binary_densenet37', 8_734_120, 8.73, 2),
    ('binary_densenet37_dilated', 8_734_120, 8.73, 2),
    ('binary_densenet45', 13_939_240, 13.9, 1)])
def test_densenet_parameters_are_params_plus_bn_stats(name, keras_total, millions, digits):
  """larq-zoo densenet.py docstrings (exact) and REFERENCE (5.15M / 8.73M / 13.9M) count
  params plus BN running statistics; trainable params are 5.13M / 8.70M / 13.89M."""
  c = _counts(name)
  assert c['params'] + c['stats'] == keras_total
  assert round((c['params'] + c['stats']) / 1e6, digits) == millions


@pytest.mark.parametrize('name, larq_parameters, rounded', [
    ('quicknet_small', 12_655_688, 12.7), ('quicknet', 13_234_088, 13.2),
    ('quicknet_large', 23_342_248, 23.3)])
def test_quicknet_params(name, larq_parameters, rounded):
  """Trainable params round to REFERENCE's 12.7M / 13.2M / 23.3M; larq-zoo quicknet.py's
  docstring "Parameters" is the folded-BN count plus the frozen blur-pool kernels."""
  c = _counts(name)
  assert round(c['params'] / 1e6, 1) == rounded
  assert c['params'] - c['bn_params'] + c['stats'] + c['blur'] == larq_parameters


@pytest.mark.parametrize('name, mib, digits', [
    ('binary_densenet28', 4.12, 2), ('binary_densenet37', 5.25, 2),
    ('binary_densenet37_dilated', 5.25, 2), ('binary_densenet45', 7.54, 2)])
def test_densenet_memory(name, mib, digits):
  """BinaryDenseNet rows: binary kernels at 1 bit, params and all four BN vectors at 32."""
  assert round(_summary(name)['model_size_bytes'] / MiB, digits) == mib


@pytest.mark.slow
@pytest.mark.parametrize('name, mib, digits', [
    ('meliusnet22', 3.88, 2), ('meliusnet29', 5.07, 2), ('meliusnet42', 10.1, 1),
    ('meliusnet59', 17.39, 2),  # BMXNet-v2 results page: 17.39 (REFERENCE: 17.4)
    ('quicknet_small', 4.00, 2), ('quicknet', 4.17, 2), ('quicknet_large', 5.40, 2)])
def test_folded_bn_memory(name, mib, digits):
  """larq's summary "Model size": BN as its two running statistics, frozen weights (the
  blur-pool kernels) at 32 bits."""
  s = _summary(name)
  assert round(s['folded_model_size_bytes'] / MiB, digits) == mib
  widths = getattr(MODELS[name](num_classes=1000), 'section_filters', ())
  assert s['frozen_weights'] == sum(9 * a for a, b in zip(widths, widths[1:]) if a != b)


def test_dilated_densenet_keeps_28x28():
  """BinaryDenseNet37Dilated: no pooling before sections 3 and 4, binary convs dilated."""
  _, calls = inspect.trace_layers(MODELS['binary_densenet37_dilated'](num_classes=1000), IMAGE)
  convs = [(m, out.shape) for m, _, out in calls if isinstance(m, layers.QuantConv)
           and m.name.endswith('conv') and m.name.startswith('section')]
  assert convs[-1][1] == (1, 28, 28, 64)
  assert {m.kernel_dilation for m, _ in convs} == {1, 2, 4}


def test_float_twin_has_no_binary_kernels():
  model = MODELS['meliusnet22'](num_classes=10, input_quantizer=None, kernel_quantizer=None)
  mask = inspect.binary_kernel_mask(model, (32, 32, 3))
  leaves = jax.tree.leaves(mask)
  assert leaves and not any(leaves)


# ----------------------------------------------------------------------------- real compute
SMALL = {  # Each family at reduced depth and width: the same layer types, fast on CPU.
    'binary_densenet': binary_densenet.BinaryDenseNet(
        num_classes=10, section_layers=(2, 1), reduction=(2.0,), dilation=(1, 2),
        initial_filters=16, growth_rate=16),
    'meliusnet': meliusnet.MeliusNet(num_classes=10, section_blocks=(1, 1),
                                     transition_features=(96,)),
    'quicknet': quicknet.QuickNet(num_classes=10, section_blocks=(1, 2),
                                  section_filters=(16, 32)),
}


def _random_variables(model, x):
  """Variables drawn with numpy: much faster than compiling ``model.init`` on a CPU."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                        shapes['params'])
  stats = jax.tree_util.tree_map_with_path(
      lambda p, s: np.full(s.shape, p[-1].key == 'var', np.float32), shapes['batch_stats'])
  return {'params': params, 'batch_stats': stats}


@pytest.mark.slow
@pytest.mark.parametrize('family', list(SMALL))
def test_forward_backward_with_binary_inputs(family):
  model = SMALL[family]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, x)
  mask = inspect.binary_kernel_mask(model, (32, 32, 3))

  def loss_fn(params):
    seen = []  # the quantized input of every binary conv

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == 'quantize_input' and context.module.input_q() is not None:
        seen.append(out)
      return out

    with nn.intercept_methods(record):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), (logits, seen)

  @jax.jit
  def run(variables):
    (loss, (logits, seen)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables['params'])
    # The deployable form: every binary kernel replaced by the +-1 it computes with.
    deployed = inspect.inference_params(model, variables, (32, 32, 3))
    same = [model.apply({**variables, 'params': p}, x, train=False)
            for p in (variables['params'], deployed)]
    return loss, logits, seen, grads, deployed, same

  loss, logits, seen, grads, deployed, (eval_logits, deployed_logits) = run(variables)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all() and np.isfinite(float(loss))
  assert seen and all(set(np.unique(np.asarray(s))) <= {-1.0, 1.0} for s in seen)
  binary_grads = [g for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mask)) if m]
  assert binary_grads and all(np.isfinite(np.asarray(g)).all() for g in binary_grads)
  assert all(np.abs(np.asarray(g)).sum() > 0 for g in binary_grads)  # the STE passes gradient
  kernels = [k for k, m in zip(jax.tree.leaves(deployed), jax.tree.leaves(mask)) if m]
  assert kernels and all(set(np.unique(np.asarray(k))) == {-1.0, 1.0} for k in kernels)
  np.testing.assert_allclose(deployed_logits, eval_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('family', list(SMALL))
def test_bfloat16_compute_keeps_float32_params_and_logits(family):
  model = SMALL[family].clone(dtype=jnp.bfloat16, bn_axis_name=None)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  out, _ = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, mutable=['batch_stats']), variables)
  assert out.shape == (2, 10) and out.dtype == jnp.float32


# ----------------------------------------------------------------------------- config
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      'configs', 'imagenet', 'larq_zoo.py')


def _load(arg):
  return load_config(f'{CONFIG}:{arg}')


@pytest.mark.parametrize('name', list(MODELS))
def test_config_has_a_recipe_for_every_model(name):
  config = merge_config(_load(f'model={name}'))
  assert config.model.name == name and config.data.name == 'imagenet2012'
  assert config.binary.latent_clip == (1.25 if name.startswith('quicknet') else 1.3)


def test_config_runlocal_and_batch_scaling():
  config = merge_config(_load('model=binary_densenet28,runlocal'))
  assert config.data.name == 'synthetic' and config.data.image_size == 32
  scaled = _load('model=binary_densenet28,batch=512')
  assert scaled.batch_size == 512 and scaled.optimizer.lr == pytest.approx(8e-3)
