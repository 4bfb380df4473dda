"""Quantizers: forward values and gradients against their papers' formulas (numpy, float64),
at many points with the boundaries included, in float32 and bfloat16; learned parameters
and their gradients; progress schedules (also traced under jit); the registry and specs."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj.core import registry
from mcj.nn import inspect, layers
from mcj.quant import quantizers
from mcj.core.config import ConfigError

BOUNDARIES = [-3.0, -2.0, -1.5, -1.2, -1.0, -0.7, -0.5, -0.3, -0.05, -1e-3, 0.0, 1e-3, 0.05,
              0.3, 0.5, 0.7, 1.0, 1.2, 1.5, 2.0, 3.0]
DTYPES = [jnp.float32, jnp.bfloat16]


def points(dtype, extra=(), seed=0):
  """Boundary points plus random ones, as ``dtype``, and the same values in float64."""
  rng = np.random.default_rng(seed)
  x = np.concatenate([BOUNDARIES, list(extra), rng.normal(0, 1.2, 64)])
  x = jnp.asarray(x, dtype)
  return x, np.asarray(x.astype(jnp.float32), np.float64)


def runner(q, seed=1):
  """``run(x, progress)``: ``q(x)`` and the gradient of ``sum(c * q(x))`` for a random
  cotangent ``c``, at a training progress; compiled once per input shape and dtype."""

  @jax.jit
  def run(x, c, progress):
    with quantizers.training_progress(progress):
      y, vjp = jax.vjp(q, x)
      return y, vjp(c)[0]

  def call(x, progress=1.0):
    c = jnp.asarray(np.random.default_rng(seed).uniform(-2, 2, x.shape), x.dtype)
    y, dx = run(x, c, jnp.float32(progress))
    return (y, np.asarray(y.astype(jnp.float32), np.float64), np.asarray(dx.astype(jnp.float32)),
            np.asarray(c.astype(jnp.float32), np.float64))

  return call


def forward_and_grad(q, x, progress=1.0):
  return runner(q)(x, progress)


def tolerance(dtype):
  return dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)


def sign(x):
  return np.where(x >= 0, 1.0, -1.0)


# ----------------------------------------------------------------------------- 1-bit functions
def swish_derivative(x, beta):
  bx = beta * x
  with np.errstate(over='ignore'):
    return beta * (2 - bx * np.tanh(bx / 2)) / (1 + np.cosh(bx))


ELEMENTWISE = {  # spec -> (forward, derivative), numpy
    'ste_sign': (sign, lambda x: (np.abs(x) <= 1.0) * 1.0),
    'ste_sign(clip_value=1.5)': (sign, lambda x: (np.abs(x) <= 1.5) * 1.0),
    'approx_sign': (sign, lambda x: np.where(np.abs(x) <= 1, 2 - 2 * np.abs(x), 0.0)),
    'swish_sign': (sign, lambda x: swish_derivative(x, 5.0)),
    'swish_sign(beta=2.0)': (sign, lambda x: swish_derivative(x, 2.0)),
    'hard_sign': (sign, lambda x: (np.abs(x) <= 1.5) * 1.0),
    'ste_heaviside': (lambda x: (x > 0) * 1.0, lambda x: (np.abs(x) <= 1.0) * 1.0),
    'ste_heaviside(clip_value=0.5)': (lambda x: (x > 0) * 1.0, lambda x: (np.abs(x) <= 0.5) * 1.0),
    'noop': (lambda x: x, np.ones_like),
}


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('spec', list(ELEMENTWISE))
def test_elementwise_quantizers_match_their_formulas(spec, dtype):
  forward, derivative = ELEMENTWISE[spec]
  x, x64 = points(dtype)
  y, y64, dx, c = forward_and_grad(quantizers.resolve(spec), x)
  assert y.dtype == dtype and dx.shape == x.shape
  np.testing.assert_array_equal(y64, forward(x64))
  np.testing.assert_allclose(dx, c * derivative(x64), **tolerance(dtype))


def test_sign_maps_zero_to_plus_one_and_hard_sign_is_bnext_range():
  names = ('ste_sign', 'approx_sign', 'swish_sign', 'hard_sign', 'ede', 'bnext_weight')
  at_zero = jax.jit(lambda x: [quantizers.get(name)(x) for name in names])(jnp.zeros((3,)))
  np.testing.assert_array_equal(at_zero, 1.0)
  _, _, dx, c = forward_and_grad(quantizers.get('hard_sign'),
                                 jnp.array([-1.5, 1.5, 1.5001, -1.5001]))
  np.testing.assert_array_equal(dx, c * [1, 1, 0, 0])


def test_swish_sign_gradient_values_and_no_nan_far_out():
  grad = jax.jit(jax.vmap(jax.grad(quantizers.get('swish_sign', beta=5.0))))
  # beta * 2 / 2 at 0; the SignSwish derivative by hand at x = 0.2: beta x = 1.
  expected = 5 * (2 - math.tanh(0.5)) / (1 + math.cosh(1.0))
  np.testing.assert_allclose(grad(jnp.array([0.0, 0.2])), [5.0, expected], rtol=1e-6)
  far = grad(jnp.array([-1e4, -50.0, 50.0, 1e4]))
  assert np.all(np.isfinite(far)) and np.all(np.abs(far) < 1e-6)


@pytest.mark.parametrize('dtype', DTYPES)
def test_magnitude_aware_sign(dtype):
  rng = np.random.default_rng(0)
  w = rng.normal(0, 0.8, (3, 3, 4, 5))
  w[0, 0, 0, :] = [0.0, 1.0, -1.0, 1.5, -3.0]  # boundaries of the clipped STE
  w = jnp.asarray(w, dtype)
  q = quantizers.get('magnitude_aware_sign')
  y, y64, dx, c = forward_and_grad(q, w)
  w64 = np.asarray(w.astype(jnp.float32), np.float64)
  scale = np.abs(w64).mean(axis=(0, 1, 2))
  assert y.dtype == dtype
  np.testing.assert_allclose(y64, scale * sign(w64), **tolerance(dtype))
  # The scale is a constant in the backward pass (Bi-Real Net; larq stop_gradient).
  np.testing.assert_allclose(dx, c * scale * (np.abs(w64) <= 1.0), **tolerance(dtype))
  # Per output channel: exactly two values, +-mean|W| of that channel.
  assert all(len(np.unique(np.abs(y64[..., o]))) == 1 for o in range(5))


# ----------------------------------------------------------------------------- ternary, k-bit
@pytest.mark.parametrize('dtype', DTYPES)
def test_ste_tern_fixed_threshold(dtype):
  x, x64 = points(dtype, extra=[-0.1, 0.1, 0.0999, -0.0999])
  q = quantizers.resolve('ste_tern(threshold_value=0.1)')
  t = float(jnp.asarray(0.1, dtype).astype(jnp.float32))  # larq compares in the input dtype
  y, y64, dx, c = forward_and_grad(q, x)
  expected = np.where(x64 >= t, 1.0, np.where(x64 <= -t, -1.0, 0.0))
  assert y.dtype == dtype and q.precision == 2
  np.testing.assert_array_equal(y64, expected)
  np.testing.assert_allclose(dx, c * (np.abs(x64) <= 1.0), **tolerance(dtype))
  # Default threshold 0.05 (larq), threshold 0 at x = 0 gives 0 (larq's sign(sign + sign)).
  np.testing.assert_array_equal(quantizers.get('ste_tern')(jnp.array([-0.05, 0.0, 0.0499, 0.05])),
                                [-1, 0, 0, 1])
  np.testing.assert_array_equal(
      quantizers.get('ste_tern', threshold_value=0.0)(jnp.array([-1e-3, 0.0, 1e-3])), [-1, 0, 1])


def ternary(x, delta):
  return np.where(x >= delta, 1.0, np.where(x <= -delta, -1.0, 0.0))


def test_ste_tern_ternary_weight_networks_threshold():
  """TWN (Li & Liu 2016, eq. 8) and larq: Delta = 0.7 mean|x| of the unclipped tensor, and
  the forward thresholds the unclipped x; the clip only shapes the gradient."""
  rng = np.random.default_rng(0)
  w64 = rng.normal(0, 0.7, (4, 4, 3, 6))
  w64[0, 0, 0, :6] = [1.0, -1.0, 2.5, 4.0, -3.0, 1.2]  # beyond the clip value
  w64 = w64.astype(np.float32).astype(np.float64)
  q = quantizers.get('ste_tern', ternary_weight_networks=True, clip_value=1.0)
  y, y64, dx, c = forward_and_grad(q, jnp.asarray(w64, jnp.float32))
  delta = 0.7 * np.abs(w64).mean()
  clipped_delta = 0.7 * np.abs(np.clip(w64, -1, 1)).mean()  # the former (wrong) threshold
  # The tensor tells the two apart: some entries lie between the thresholds.
  assert np.any(ternary(w64, delta) != ternary(w64, clipped_delta))
  safe = np.abs(np.abs(w64) - delta) > 1e-6
  np.testing.assert_array_equal(y64[safe], ternary(w64, delta)[safe])
  # No gradient flows through the threshold: the plain clipped STE.
  np.testing.assert_allclose(dx, c * (np.abs(w64) <= 1.0), rtol=1e-6)


def test_ste_tern_threshold_above_the_clip_value():
  """A threshold beyond clip_value still gives +-1 for |x| >= threshold (larq): the forward
  is not clipped (clipping first made every output 0)."""
  x = jnp.array([-3.0, -1.5, -1.4999, -1.0, -0.5, 0.0, 0.5, 1.0, 1.4999, 1.5, 3.0])
  q = quantizers.get('ste_tern', threshold_value=1.5, clip_value=1.0)
  y, y64, dx, c = forward_and_grad(q, x)
  x64 = np.asarray(x, np.float64)
  np.testing.assert_array_equal(y64, ternary(x64, 1.5))
  np.testing.assert_array_equal(y64, [-1, -1, 0, 0, 0, 0, 0, 0, 0, 1, 1])
  np.testing.assert_allclose(dx, c * (np.abs(x64) <= 1.0), rtol=1e-6)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('k_bit', [1, 2, 4])
def test_dorefa_activations(k_bit, dtype):
  n = 2 ** k_bit - 1
  halfway = [(i + 0.5) / n for i in range(n)]  # ties round half to even, as TF and torch
  x, x64 = points(dtype, extra=[0.0, 1.0, 1 / 6, 1 / 3, 2 / 3, *halfway])
  q = quantizers.get('dorefa', k_bit=k_bit)
  y, y64, dx, c = forward_and_grad(q, x)
  # The product rounds in float32 (as TF and torch do): float32(1/6) * 3 is exactly 0.5.
  expected = np.round(np.clip(x64, 0, 1).astype(np.float32) * np.float32(n)) / n
  assert y.dtype == dtype and q.precision == k_bit
  np.testing.assert_allclose(y64, expected, **(tolerance(dtype) if dtype == jnp.bfloat16 else
                                                dict(rtol=0, atol=1e-7)))
  np.testing.assert_array_equal(dx, c * ((x64 >= 0) & (x64 <= 1)))


@pytest.mark.parametrize('k_bit', [1, 2, 3])
def test_dorefa_weights(k_bit):
  rng = np.random.default_rng(k_bit)
  w64 = rng.normal(0, 0.5, (3, 3, 2, 4))
  w64[0, 0, 0, :2] = [0.0, -2.0]
  q = quantizers.get('dorefa', k_bit=k_bit, mode='weights')
  y, y64, dx, c = forward_and_grad(q, jnp.asarray(w64, jnp.float32))
  n = 2 ** k_bit - 1
  peak = np.abs(np.tanh(w64)).max()
  unit = np.tanh(w64) / (2 * peak) + 0.5  # DoReFa-Net's weight transform
  np.testing.assert_allclose(y64, 2 * np.round(unit * n) / n - 1, atol=1e-6)
  assert set(np.round((y64 + 1) / 2 * n, 4).ravel()) <= set(range(n + 1))
  np.testing.assert_allclose(dx, c * (1 - np.tanh(w64) ** 2) / peak, rtol=1e-5)


# ----------------------------------------------------------------------------- IR-Net
def ede_temperature(progress, t_min=0.1, t_max=10.0):
  """htqin/IR-Net ``Log_UP``: 10^(log10 T_min + (log10 T_max - log10 T_min) * progress)."""
  return 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * progress)


def ede_derivative(x, t):
  k = max(1 / t, 1.0)
  return k * t * (1 - np.tanh(t * x) ** 2)


@pytest.mark.parametrize('dtype', DTYPES)
def test_ede_follows_the_schedule(dtype):
  x, x64 = points(dtype)
  run = runner(quantizers.get('ede'))
  for progress in (0.0, 0.3, 0.5, 1.0):
    _, y64, dx, c = run(x, progress)
    np.testing.assert_array_equal(y64, sign(x64))
    np.testing.assert_allclose(dx, c * ede_derivative(x64, ede_temperature(progress)),
                               **tolerance(dtype))


def test_ede_defaults_to_the_end_of_training_and_other_ranges():
  x, x64 = points(jnp.float32)
  assert quantizers.current_progress() == 1.0
  dx = jax.jit(jax.vmap(jax.grad(quantizers.get('ede'))))(x)  # no training_progress around it
  np.testing.assert_allclose(dx, ede_derivative(x64, 10.0), rtol=1e-5, atol=1e-6)
  q = quantizers.get('ede', t_min=1e-3, t_max=10.0)  # the official ResNet-20 schedule
  _, _, dx, c = forward_and_grad(q, x, progress=0.25)
  np.testing.assert_allclose(dx, c * ede_derivative(x64, ede_temperature(0.25, 1e-3, 10.0)),
                             rtol=1e-5, atol=1e-6)


def test_progress_is_traced_under_jit_without_retracing():
  x, x64 = points(jnp.float32)
  traces = []

  @jax.jit
  def grads(progress, x):
    traces.append(1)
    with quantizers.training_progress(progress):
      return (jax.grad(lambda x: quantizers.get('ede')(x).sum())(x),
              quantizers.get('bnext_weight')(x))

  for p in (0.0, 0.2, 0.7, 1.0):
    dx, w = grads(jnp.float32(p), x)
    np.testing.assert_allclose(dx, ede_derivative(x64, ede_temperature(p)), rtol=1e-5, atol=1e-6)
    temperature = 0.9 ** (p * 512)
    expected = sign(x64) if temperature < 1e-7 else np.clip(x64 / temperature, -1, 1)
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
  assert len(traces) == 1
  # Contexts nest and restore.
  with quantizers.training_progress(0.1):
    with quantizers.training_progress(0.4):
      assert quantizers.current_progress() == 0.4
    assert quantizers.current_progress() == 0.1
  assert quantizers.current_progress() == 1.0


def irnet_reference(w, progress):
  """IRConv2d's weight path in jnp, with the EDE gradient through ``k tanh(t x)``."""
  axes = tuple(range(w.ndim - 1))
  centred = w - w.mean(axis=axes)
  standardised = centred / jnp.std(centred, axis=axes, ddof=1)
  scale = 2.0 ** jnp.round(jnp.log2(jnp.abs(standardised).mean(axis=axes)))
  t = ede_temperature(progress)
  smooth = jnp.maximum(1 / t, 1.0) * jnp.tanh(t * standardised)
  binary = jax.lax.stop_gradient(jnp.where(standardised >= 0, 1.0, -1.0) - smooth) + smooth
  return binary * jax.lax.stop_gradient(scale)


def test_irnet_weight():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(0.05, 0.1, (3, 3, 4, 6)), jnp.float32)
  q = quantizers.get('irnet_weight')
  run = runner(q)

  @jax.jit
  def reference(w, c, progress):
    y, vjp = jax.vjp(lambda w: irnet_reference(w, progress), w)
    return y, vjp(c)[0]

  for progress in (0.0, 0.6, 1.0):
    y, y64, dw, c = run(w, progress)
    ref, ref_dw = reference(w, jnp.asarray(c, jnp.float32), jnp.float32(progress))
    np.testing.assert_allclose(y64, ref, rtol=1e-6)
    # float32 sums in the std's gradient: tolerance relative to the largest entry
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-4, atol=1e-5 * np.abs(ref_dw).max())
    # Balanced (zero-mean) filters, +-one power of two per output channel.
    for o in range(6):
      magnitudes = np.unique(np.abs(y64[..., o]))
      assert len(magnitudes) == 1 and float(np.log2(magnitudes[0])).is_integer()
  # A filter with no spread gives zeros, not NaN, in the forward and backward pass.
  y, _, dw, _ = run(w.at[..., 0].set(0.25))
  assert np.all(np.isfinite(y)) and np.all(np.isfinite(dw))
  np.testing.assert_array_equal(y[..., 0], 0)


# ----------------------------------------------------------------------------- BNext weights
@pytest.mark.parametrize('dtype', DTYPES)
def test_bnext_weight_temperature_annealing(dtype):
  x, x64 = points(dtype, extra=[0.9 ** 10, -(0.9 ** 10), 1.7, -1.7])
  q = quantizers.get('bnext_weight')
  run = runner(q)
  for progress in (0.0, 10 / 512, 0.1, 0.5, 1.0):
    temperature = 0.9 ** (progress * 512)  # x0.9 per epoch, 512 epochs (BNext scripts)
    y, y64, dx, c = run(x, progress)
    expected = sign(x64) if temperature < 1e-7 else np.clip(x64 / temperature, -1, 1)
    assert y.dtype == dtype
    np.testing.assert_allclose(y64, expected, **tolerance(dtype))
    np.testing.assert_allclose(dx, c, **tolerance(dtype))  # identity STE, also past +-1.5
  # At T = 1 the forward is the clipped identity; outside training exactly +-1.
  np.testing.assert_array_equal(q(x).astype(jnp.float32), sign(x64))
  fast = quantizers.get('bnext_weight', decay=0.5, epochs=10)
  with quantizers.training_progress(0.5):  # T = 0.5^5
    np.testing.assert_allclose(fast(jnp.array([0.01, -0.5])), [0.01 * 32, -1.0], rtol=1e-6)


# ----------------------------------------------------------------------------- learned quantizers
class Quantize(nn.Module):
  """Applies a quantizer spec inside a module, as mcj.layers does."""
  spec: str

  @nn.compact
  def __call__(self, x):
    return quantizers.resolve(self.spec)(x)


def init_and_grads(spec, x, params_update=None, seed=1):
  model = Quantize(spec)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  params = variables['params']
  if params_update:
    params = params_update(params)
  c = jnp.asarray(np.random.default_rng(seed).uniform(-2, 2, x.shape), x.dtype)

  @jax.jit
  def run(params, x, c):
    y, vjp = jax.vjp(lambda p, x: model.apply({'params': p}, x), params, x)
    return y, *vjp(c)

  y, dparams, dx = run(params, x, c)
  return variables['params'], params, y, dparams, dx, np.asarray(c.astype(jnp.float32), np.float64)


def lsq_reference(x, step, qn, qp, c):
  v = x / step
  y = np.round(np.clip(v, -qn, qp)) * step
  dx = c * ((v >= -qn) & (v <= qp))
  dstep = np.where(v <= -qn, -qn, np.where(v >= qp, qp, np.round(v) - v))  # LSQ eq. 3
  return y, dx, (c * dstep).sum() / math.sqrt(x.size * qp)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('bits,signed', [(4, True), (2, True), (3, False)])
def test_lsq_forward_and_step_gradient(bits, signed, dtype):
  qn, qp = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
  step = 0.25
  grid = [-qn - 1, -qn - 0.5, -qn, -qn + 0.5, -0.5, 0.0, 0.5, 1.5, 2.5, qp - 0.5, qp, qp + 0.5,
          qp + 3]  # clip boundaries and rounding ties (half to even)
  rng = np.random.default_rng(bits)
  x = jnp.asarray(np.concatenate([np.array(grid) * step, rng.normal(0, 0.6, 40)]), dtype)
  x64 = np.asarray(x.astype(jnp.float32), np.float64)
  spec = f'lsq(bits={bits}, signed={signed})'
  init, _, y, dparams, dx, c = init_and_grads(
      spec, x, lambda p: {'LSQ_0': {'step': jnp.float32(step)}})
  # The step starts at 2 mean|x| / sqrt(Qp), from the first input (LSQ).
  np.testing.assert_allclose(init['LSQ_0']['step'], 2 * np.abs(x64).mean() / math.sqrt(qp),
                             rtol=1e-5 if dtype == jnp.float32 else 1e-2)
  ref_y, ref_dx, ref_dstep = lsq_reference(x64, step, qn, qp, c)
  assert y.dtype == dtype and quantizers.resolve(spec).precision == bits
  np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32)), ref_y)
  np.testing.assert_allclose(dx.astype(jnp.float32), ref_dx, **tolerance(dtype))
  np.testing.assert_allclose(dparams['LSQ_0']['step'], ref_dstep, rtol=1e-5, atol=1e-6)


def test_lsq_step_init_without_data():
  zeros = jnp.zeros((2, 4, 4, 3))
  init = jax.jit(Quantize('lsq(bits=4)').init)(jax.random.key(0), zeros)['params']
  np.testing.assert_allclose(init['LSQ_0']['step'], 2 * math.sqrt(2 / math.pi) / math.sqrt(7),
                             rtol=1e-6)
  init = jax.jit(Quantize('lsq(bits=4, step_init=0.1)').init)(jax.random.key(0), zeros)['params']
  np.testing.assert_allclose(init['LSQ_0']['step'], 0.1, rtol=1e-6)
  # A step_init given wins over the data too (a range known in advance).
  init = jax.jit(Quantize('lsq(bits=4, step_init=0.1)').init)(jax.random.key(0),
                                                                zeros + 5.0)['params']
  np.testing.assert_allclose(init['LSQ_0']['step'], 0.1, rtol=1e-6)
  # As a kernel quantizer in a layer it starts from the initialised kernel.
  conv = layers.QuantConv(4, 3, kernel_quantizer='lsq(bits=4)', input_quantizer='pact(bits=4)')
  params = jax.jit(conv.init)(jax.random.key(0), jnp.ones((1, 6, 6, 3)))['params']
  np.testing.assert_allclose(params['LSQ_0']['step'],
                             2 * jnp.abs(params['kernel']).mean() / math.sqrt(7), rtol=1e-5)
  np.testing.assert_allclose(params['PACT_0']['alpha'], 10.0)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('bits', [2, 4])
def test_pact_forward_and_alpha_gradient(bits, dtype):
  n = 2 ** bits - 1
  alpha = n / 4  # levels at multiples of 1/4: the rounding ties below are exact
  rng = np.random.default_rng(bits)
  extra = [0.0, alpha, -1e-3, alpha - 1e-2, alpha + 1e-2, 5.0, 0.5 * alpha / n]
  x = jnp.asarray(np.concatenate([extra, rng.normal(1.0, 1.5, 40)]), dtype)
  x64 = np.asarray(x.astype(jnp.float32), np.float64)
  init, _, y, dparams, dx, c = init_and_grads(
      f'pact(bits={bits}, alpha_init=3.0)', x, lambda p: {'PACT_0': {'alpha': jnp.float32(alpha)}})
  np.testing.assert_allclose(init['PACT_0']['alpha'], 3.0)
  expected = np.round(np.clip(x64, 0, alpha) * n / alpha) * alpha / n  # PACT eq. 1-2
  assert y.dtype == dtype
  np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), expected, **tolerance(dtype))
  np.testing.assert_allclose(dx.astype(jnp.float32), c * ((x64 >= 0) & (x64 < alpha)),
                             **tolerance(dtype))
  np.testing.assert_allclose(dparams['PACT_0']['alpha'], (c * (x64 >= alpha)).sum(),
                             rtol=1e-5, atol=1e-5)  # eq. 3


# ----------------------------------------------------------------------------- registry
PRECISIONS = {'ste_sign': 1, 'approx_sign': 1, 'swish_sign': 1, 'magnitude_aware_sign': 1,
              'ste_heaviside': 1, 'hard_sign': 1, 'ste_tern': 2, 'dorefa': 2, 'ede': 1,
              'irnet_weight': 1, 'bnext_weight': 1, 'lsq': 4, 'pact': 4, 'noop': 32,
              'bit_elastic': 1, 'bit_weight': 1, 'bibert_weight': 1, 'bibert_bool': 1,
              'uniform': 8}


def test_every_registered_quantizer_has_its_precision():
  # No 'rsign': ReActNet's RSign is blocks.LearnableBias then a sign quantizer (test_layers).
  assert set(registry.names('quantizer')) == set(PRECISIONS)
  for name, bits in PRECISIONS.items():
    q = quantizers.get(name)
    assert q.precision == bits and quantizers.precision_of(q) == bits
  assert quantizers.precision_of(None) == 32
  assert quantizers.resolve('dorefa(k_bit=3, mode="weights")').precision == 3
  assert quantizers.resolve('lsq(bits=8, signed=False)').precision == 8
  assert quantizers.resolve('noop(precision=1)').precision == 1


def test_resolve_specs():
  assert quantizers.resolve(None) is None
  assert quantizers.resolve('none') is None and quantizers.resolve(' None ') is None
  assert quantizers.resolve('') is None
  fn = quantizers.get('ste_sign')
  assert quantizers.resolve(fn) is fn
  q = quantizers.resolve(' ste_tern( threshold_value=0.1 ) ')
  np.testing.assert_array_equal(q(jnp.array([-0.1, -0.09, 0.09, 0.1])), [-1, 0, 0, 1])
  q = quantizers.resolve('ste_tern(threshold_value=0.1, ternary_weight_networks=True)')
  np.testing.assert_array_equal(q(jnp.array([-1.0, -0.1, 0.1, 1.0])), [-1, 0, 0, 1])  # D=0.385


@pytest.mark.parametrize('spec,message', [
    ('not_a_quantizer', 'Valid: approx_sign, bibert_bool, bibert_weight, bit_elastic, '
                        'bit_weight, bnext_weight, dorefa, ede, hard_sign'),
    ('ste_sign(beta=1.0)', "Bad option for quantizer 'ste_sign'"),
    ('ste_sign(1.0)', 'expected name(key=value, ...)'),
    ('ste_sign(clip_value=1.0', 'expected name(key=value, ...)'),
    ('ste_sign(clip_value=abs)', 'Bad quantizer spec'),
    ('dorefa(mode="kernel")', "'activations' or 'weights'"),
    ('dorefa(k_bit=0)', 'k_bit >= 1'),
    ('lsq(bits=1)', 'bits >= 2'),
    ('lsq(step_init=-1.0)', 'lsq step_init must be a number > 0'),
    ('pact(alpha_init=0.0)', 'pact alpha_init must be a number > 0'),
    ('ede(t_min=0.0)', 'ede t_min must be a number > 0'),
    ('irnet_weight(t_min=10.0, t_max=1.0)', '0 < t_min <= t_max'),
    ('bnext_weight(decay=1.5)', '0 < decay < 1'),
    ('noop(precision=0)', 'precision >= 1'),
    # None or a wrong type is caught when the quantizer is built, not at the first call.
    ('ste_sign(clip_value=None)', 'ste_sign clip_value must be a number > 0'),
    ('ste_sign(clip_value="1.0")', "clip_value must be a number > 0 (float('inf')"),
    ('ste_sign(clip_value=0.0)', 'ste_sign clip_value must be a number > 0'),
    ('ste_sign(clip_value=True)', 'ste_sign clip_value must be a number > 0'),
    ('magnitude_aware_sign(clip_value=None)', 'magnitude_aware_sign clip_value must be'),
    ('ste_heaviside(clip_value=None)', 'ste_heaviside clip_value must be'),
    ('hard_sign(clip_value=-1.5)', 'hard_sign clip_value must be'),
    ('swish_sign(beta=None)', 'swish_sign beta must be a number > 0'),
    ('ste_tern(threshold_value=None)', 'ste_tern threshold_value must be a number >= 0'),
    ('ste_tern(threshold_value=-0.1)', 'ste_tern threshold_value must be a number >= 0'),
    ('ste_tern(clip_value=None)', 'ste_tern clip_value must be'),
    ('ste_tern(ternary_weight_networks="yes")', 'ternary_weight_networks must be True or False'),
    ('ede(t_max=None)', 'ede t_max must be a number > 0'),
    ('irnet_weight(t_min=None)', 'irnet_weight t_min must be a number > 0'),
    ('bnext_weight(decay=None)', '0 < decay < 1'),
    ('bnext_weight(epochs="512")', 'epochs > 0'),
    ('dorefa(k_bit=None)', 'k_bit >= 1'),
    ('dorefa(k_bit=True)', 'k_bit >= 1'),
    ('dorefa(k_bit=2.0)', 'k_bit >= 1'),
    ('lsq(bits=None)', 'bits >= 2'),
    ('lsq(signed=None)', 'lsq signed must be True or False'),
    ('lsq(step_init="0.1")', 'lsq step_init must be a number > 0'),
    ('pact(bits=None)', 'bits >= 1'),
    ('pact(alpha_init=None)', 'pact alpha_init must be a number > 0'),
    ('noop(precision=None)', 'precision >= 1'),
])
def test_bad_names_and_options_are_config_errors(spec, message):
  with pytest.raises(ConfigError) as e:
    quantizers.resolve(spec)
  assert message in str(e.value) and '\n' not in str(e.value)


def test_infinite_clip_value_is_the_identity_gradient():
  x, x64 = points(jnp.float32)
  q = quantizers.get('ste_sign', clip_value=float('inf'))
  _, y64, dx, c = forward_and_grad(q, x)
  np.testing.assert_array_equal(y64, sign(x64))
  np.testing.assert_allclose(dx, c, rtol=1e-6)


def test_unknown_name_lists_every_valid_name():
  with pytest.raises(ConfigError) as e:
    quantizers.get('sign')
  assert all(name in str(e.value) for name in registry.names('quantizer'))
  with pytest.raises(ConfigError):
    quantizers.resolve(3)


def test_binary_kernel_mask_sees_registered_weight_binarizers():
  for spec, binary in [('irnet_weight', True), ('bnext_weight', True),
                       ('magnitude_aware_sign', True), ('ste_tern', False),
                       ('dorefa(k_bit=1, mode="weights")', True), ('lsq(bits=4)', False)]:
    mask = inspect.binary_kernel_mask(OneConv(spec), (6, 6, 3))
    assert mask['conv']['kernel'] is binary, spec


class OneConv(nn.Module):
  kernel_quantizer: str

  @nn.compact
  def __call__(self, x, train=False):
    return layers.QuantConv(4, 3, input_quantizer='hard_sign',
                            kernel_quantizer=self.kernel_quantizer, name='conv')(x)


def test_uniform_is_symmetric_linear_quantization_per_tensor_and_channel():
  """Q8BERT's scheme: s = max|x| / 127, q = round(x / s) s; per channel, each column's own
  max; the gradient passes straight through."""
  x = np.array([[0.5, -2.0, 0.01], [1.0, 0.25, -0.04]], np.float32)
  q = quantizers.resolve('uniform(bits=8)')
  s = 2.0 / 127
  np.testing.assert_allclose(q(jnp.asarray(x)), np.round(x / s) * s, rtol=1e-6)
  qc = quantizers.resolve('uniform(bits=4, per_channel=True)')
  sc = np.abs(x).max(axis=0) / 7
  np.testing.assert_allclose(qc(jnp.asarray(x)), np.round(x / sc) * sc, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(qc(v) * 3.0))(jnp.asarray(x)),
                             np.full_like(x, 3.0))
  assert quantizers.resolve('uniform(bits=4)').precision == 4


def test_lsq_per_channel_has_a_step_per_output_channel():
  """A step per last-axis channel, each initialised from its channel (2 mean|x| / sqrt(Qp))
  and its gradient summed over that channel only (eq. 3, g = 1 / sqrt(n_channel Qp))."""
  class Layer(nn.Module):
    @nn.compact
    def __call__(self, x):
      return quantizers.resolve('lsq(bits=4, per_channel=True)')(x)

  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32))
  params = Layer().init(jax.random.key(0), x)['params']
  (name,) = params
  step = params[name]['step']
  qp = 7
  np.testing.assert_allclose(step, 2 * np.abs(np.asarray(x)).mean(axis=0) / np.sqrt(qp),
                             rtol=1e-6)
  grad = jax.grad(lambda p: jnp.sum(Layer().apply({'params': p}, x)))(params)[name]['step']
  v = np.asarray(x) / np.asarray(step)
  dstep = np.where(v <= -8, -8, np.where(v >= qp, qp, np.round(v) - v))
  np.testing.assert_allclose(grad, dstep.sum(axis=0) / np.sqrt(6 * qp), rtol=1e-5)
