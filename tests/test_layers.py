"""Quantized layers, ReActNet's pieces, the binary-kernel mask and the inference view."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj.nn import blocks
from mcj.nn import inspect
from mcj.nn import layers
from mcj.quant import quantizers


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize('kernel,stride,padding,groups', [
    (3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1), (3, 1, 'SAME', 2), (5, 2, 'SAME', 4),
    (3, 2, 'VALID', 1)])
def test_unquantized_conv_equals_flax_conv(kernel, stride, padding, groups):
  x = _x((2, 9, 9, 4))
  q = layers.QuantConv(8, kernel, stride, padding, feature_group_count=groups)
  variables = q.init(jax.random.key(1), x)
  flax_padding = ((padding, padding),) * 2 if isinstance(padding, int) else padding
  ref = nn.Conv(8, (kernel, kernel), stride, flax_padding, feature_group_count=groups,
                use_bias=False)
  np.testing.assert_allclose(q.apply(variables, x), ref.apply(variables, x), rtol=1e-5,
                             atol=1e-5)


def test_dilated_conv_equals_flax_conv():
  x = _x((1, 9, 9, 2))
  q = layers.QuantConv(3, 3, padding='SAME', kernel_dilation=2, pad_value=0.0)
  variables = q.init(jax.random.key(1), x)
  ref = nn.Conv(3, (3, 3), padding='SAME', kernel_dilation=2, use_bias=False)
  np.testing.assert_allclose(q.apply(variables, x), ref.apply(variables, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_binary_conv_forward_is_sign_times_xnor_scale():
  x = _x((2, 6, 6, 3))
  q = layers.QuantConv(4, 3, 1, 1, input_quantizer='ste_sign', kernel_quantizer='ste_sign',
                       kernel_scale='xnor')
  variables = q.init(jax.random.key(1), x)
  w = variables['params']['kernel']
  alpha = jnp.mean(jnp.abs(w), axis=(0, 1, 2))
  expected = jax.lax.conv_general_dilated(
      jnp.where(x >= 0, 1.0, -1.0), jnp.where(w >= 0, 1.0, -1.0) * alpha, (1, 1),
      ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(q.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_pad_value_one_keeps_binary_borders():
  x = -jnp.ones((1, 3, 3, 1))
  kernel = {'params': {'kernel': jnp.ones((3, 3, 1, 1))}}
  zero = layers.QuantConv(1, 3, 1, 1, input_quantizer='ste_sign', kernel_quantizer='ste_sign')
  one = layers.QuantConv(1, 3, 1, 1, input_quantizer='ste_sign', kernel_quantizer='ste_sign',
                         pad_value=1.0)
  assert float(zero.apply(kernel, x)[0, 0, 0, 0]) == -4.0  # 4 in-image pixels, 5 zeros
  assert float(one.apply(kernel, x)[0, 0, 0, 0]) == -4.0 + 5.0  # the 5 pads count +1
  same = layers.QuantConv(1, 3, 2, 'SAME', kernel_quantizer='ste_sign', pad_value=1.0)
  assert same.apply(kernel, _x((1, 4, 4, 1))).shape == (1, 2, 2, 1)


def test_latent_kernel_gets_the_ste_gradient_and_scale_is_constant():
  q = layers.QuantDense(1, use_bias=False, kernel_quantizer='ste_sign', kernel_scale='xnor')
  w = jnp.array([[0.5], [-2.0], [0.25]])
  x = jnp.array([[1.0, 1.0, 1.0]])
  grad = jax.grad(lambda w: q.apply({'params': {'kernel': w}}, x).sum())(w)
  # d/dw of alpha * sign(w) with alpha held constant: alpha * 1[|w| <= 1] * x.
  alpha = (0.5 + 2.0 + 0.25) / 3
  np.testing.assert_allclose(grad[:, 0], [alpha, 0.0, alpha], rtol=1e-6)


def test_learned_scale_has_a_gradient():
  q = layers.QuantDense(2, use_bias=False, kernel_quantizer='ste_sign', kernel_scale='learned')
  x = _x((3, 4))
  variables = q.init(jax.random.key(0), x)
  assert variables['params']['kernel_scale'].tolist() == [1.0, 1.0]
  grad = jax.grad(lambda p: q.apply({'params': p}, x).sum())(variables['params'])
  sign = jnp.where(variables['params']['kernel'] >= 0, 1.0, -1.0)
  np.testing.assert_allclose(grad['kernel_scale'], (x @ sign).sum(0), rtol=1e-5)


def test_depthwise_conv_one_filter_per_channel():
  x = _x((1, 5, 5, 3))
  q = layers.QuantDepthwiseConv(3, 1, 1, depth_multiplier=2)
  variables = q.init(jax.random.key(0), x)
  kernel = variables['params']['conv']['kernel']
  assert kernel.shape == (3, 3, 1, 6)
  ref = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=3, use_bias=False)
  np.testing.assert_allclose(q.apply(variables, x),
                             ref.apply({'params': {'kernel': kernel}}, x), rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_exact_signs():
  x = _x((2, 4, 4, 3))
  q = layers.QuantConv(4, 3, 1, 1, input_quantizer='ste_sign', kernel_quantizer='ste_sign',
                       dtype=jnp.bfloat16)
  variables = q.init(jax.random.key(0), x)
  assert variables['params']['kernel'].dtype == jnp.float32
  y = q.apply(variables, x)
  assert y.dtype == jnp.bfloat16
  # +-1 inputs and kernels give integer sums, exact in bf16 up to 256.
  y32 = layers.QuantConv(4, 3, 1, 1, input_quantizer='ste_sign',
                         kernel_quantizer='ste_sign').apply(variables, x)
  np.testing.assert_array_equal(np.asarray(y, np.float32), y32)


def test_rprelu_and_learnable_bias_formulas():
  x = jnp.array([[-2.0, -0.5, 0.0, 1.0]])
  params = {'shift_in': {'bias': jnp.array([0.5, 0.5, -1.0, 0.0])},
            'slope': jnp.array([0.25, 0.1, 0.5, 0.25]),
            'shift_out': {'bias': jnp.array([1.0, 0.0, 0.0, -1.0])}}
  y = blocks.RPReLU().apply({'params': params}, x)
  # shift, PReLU, shift: (-1.5*0.25)+1, 0*..., (-1*0.5), 1-1
  np.testing.assert_allclose(y[0], [-0.375 + 1.0, 0.0, -0.5, 0.0])
  init = blocks.RPReLU().init(jax.random.key(0), x)['params']
  assert init['slope'].tolist() == [0.25] * 4 and not init['shift_in']['bias'].any()
  bias = {'params': {'bias': jnp.array([1.0, -1.0, 0.0, 2.0])}}
  np.testing.assert_allclose(blocks.LearnableBias().apply(bias, x)[0], [-1.0, -1.5, 0.0, 3.0])


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_rsign_is_learnable_bias_then_the_sign_quantizer(dtype):
  """ReActNet's RSign as the models build it (official code: LearnableBias, then
  BinaryActivation): sign(x + bias) with approx_sign's gradient 2 - 2|x + bias| on
  |x + bias| <= 1, reaching both x and the per-channel bias."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 1, (8, 5)), dtype)
  bias = jnp.array([0.0, 0.5, -0.5, 1.0, -0.25])
  shift, q = blocks.LearnableBias(dtype), quantizers.get('approx_sign')
  assert shift.init(jax.random.key(0), x)['params']['bias'].tolist() == [0.0] * 5
  c = jnp.asarray(rng.uniform(-2, 2, x.shape), dtype)
  y, vjp = jax.vjp(lambda p, x: q(shift.apply({'params': p}, x)), {'bias': bias}, x)
  dparams, dx = vjp(c)
  shifted = (np.asarray(x.astype(jnp.float32), np.float64)
             + np.asarray(bias.astype(dtype).astype(jnp.float32)))
  derivative = np.where(np.abs(shifted) <= 1, 2 - 2 * np.abs(shifted), 0.0)
  c64 = np.asarray(c.astype(jnp.float32), np.float64)
  tol = dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=2e-2, atol=5e-2)
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32)),
                                np.where(shifted >= 0, 1.0, -1.0))
  np.testing.assert_allclose(np.asarray(dx.astype(jnp.float32)), c64 * derivative, **tol)
  np.testing.assert_allclose(dparams['bias'], (c64 * derivative).sum(0), **tol)


def test_batch_norm_running_variance_is_flax_biased_not_torch_unbiased():
  """One train-mode call: running var = momentum * 1 + (1 - momentum) * biased batch var
  (flax), not torch's unbiased n / (n - 1) update; the running mean matches torch."""
  n, momentum = 6, 0.9
  x = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, (2, 3, 1, 4)), jnp.float32)
  x64 = np.asarray(x, np.float64).reshape(n, 4)
  bn = blocks.batch_norm(train=True)
  variables = bn.init(jax.random.key(0), x)
  assert variables['batch_stats']['var'].tolist() == [1.0] * 4
  y, updated = bn.apply(variables, x, mutable=['batch_stats'])
  stats = updated['batch_stats']
  biased = x64.var(axis=0)
  unbiased = x64.var(axis=0, ddof=1)
  np.testing.assert_allclose(stats['var'], momentum + (1 - momentum) * biased, rtol=1e-5)
  np.testing.assert_allclose(stats['mean'], (1 - momentum) * x64.mean(axis=0), rtol=1e-5)
  torch_var = momentum + (1 - momentum) * unbiased
  # torch's update is larger by (1 - momentum) * biased / (n - 1): measurably different.
  np.testing.assert_allclose(torch_var - stats['var'], (1 - momentum) * biased / (n - 1),
                             rtol=1e-4)
  assert np.all(torch_var - stats['var'] > 1e-3)
  # Training normalises with the biased batch variance (as torch), eps 1e-5.
  np.testing.assert_allclose(np.asarray(y).reshape(n, 4),
                             (x64 - x64.mean(0)) / np.sqrt(biased + 1e-5), rtol=1e-4, atol=1e-5)


class _Net(nn.Module):
  """Binary sums over an odd number of +-1 terms (27, 7) are never 0, so rounding cannot
  flip the next layer's sign when the inference view is compared with the latent model."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(3, (3, 3))(x)
    x = layers.QuantConv(7, 3, 1, 1, input_quantizer='approx_sign', kernel_quantizer='ste_sign',
                         kernel_scale='xnor', pad_value=1.0, name='binary')(x)
    x = layers.QuantConv(8, 1, input_quantizer='ste_sign', kernel_quantizer='ste_sign',
                         kernel_scale='learned', name='binary_learned')(x)
    x = layers.QuantConv(8, 1, input_quantizer='ste_sign', name='float_kernel')(x)
    return layers.QuantDense(3, kernel_quantizer='ste_sign', name='head')(x.mean((1, 2)))


def test_binary_kernel_mask_marks_one_bit_kernels_only():
  mask = inspect.binary_kernel_mask(_Net(), (6, 6, 2))
  assert mask == {'Conv_0': {'kernel': False, 'bias': False},
                  'binary': {'kernel': True},
                  'binary_learned': {'kernel': True, 'kernel_scale': False},
                  'float_kernel': {'kernel': False},
                  'head': {'kernel': True, 'bias': False}}


@pytest.mark.slow
def test_inference_params_are_plus_minus_alpha_and_give_the_same_outputs():
  net, x = _Net(), _x((3, 6, 6, 2))
  variables = net.init(jax.random.key(0), x)
  params = dict(variables['params'])
  params['binary_learned'] = {**params['binary_learned'],
                              'kernel_scale': jnp.arange(1.0, 9.0)}
  variables = {'params': params}
  view = inspect.inference_params(net, variables, (6, 6, 2))
  w, v = params['binary']['kernel'], view['binary']['kernel']
  alpha = jnp.mean(jnp.abs(w), axis=(0, 1, 2))
  np.testing.assert_allclose(jnp.abs(v), jnp.broadcast_to(alpha, v.shape), rtol=1e-6)
  assert bool(jnp.all(jnp.sign(v) == jnp.where(w >= 0, 1, -1)))
  np.testing.assert_array_equal(jnp.unique(jnp.abs(view['head']['kernel'])), [1.0])
  np.testing.assert_array_equal(jnp.unique(jnp.abs(view['binary_learned']['kernel'])), [1.0])
  assert view['binary_learned']['kernel_scale'].tolist() == list(range(1, 9))
  np.testing.assert_array_equal(view['float_kernel']['kernel'], params['float_kernel']['kernel'])
  np.testing.assert_allclose(net.apply({'params': view}, x), net.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape, k, stride, pad', [
    ((2, 9, 9, 6), 3, 1, 1),
    pytest.param((2, 9, 9, 6), 5, 2, 2, marks=pytest.mark.slow),
    pytest.param((1, 8, 8, 4), 7, 2, 3, marks=pytest.mark.slow)])
def test_depthwise_conv_equals_the_grouped_convolution(shape, k, stride, pad):
  """The CPU shifted-sum depthwise conv gives the native grouped conv's outputs and
  gradients, and op-level counting still sees the grouped conv's MACs."""
  from mcj.analysis import counting
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, shape[-1])), jnp.float32)
  padding = ((pad, pad), (pad, pad))

  def native(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=shape[-1])

  ours = lambda x, w: layers.depthwise_conv(x, w, stride, padding)
  np.testing.assert_allclose(ours(x, w), native(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) ** 2)
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(native), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  ops = counting.count_ops(jax.make_jaxpr(ours)(x, w))
  out = native(x, w)
  assert sum(op.macs for op in ops) == out.size * k * k
