"""Binary and distilled BERT methods against their papers' formulas (numpy, float64): BiT's
elastic binary activation (values and gradients w.r.t. the input, alpha and beta; the
initial alpha; as a layer's input, Q/K and attention quantizer) and its BWN weights,
BiBERT's weights, bool and Bi-Attention, its direction-matching distillation (also over 4
devices), TinyBERT's layer losses and layer mapping, DistilBERT's student initialisation."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from mcj.compress.distill import losses
from mcj.core.config import ConfigError
from mcj.models.transformers import bert
from mcj.nn import layers
from mcj.quant import quantizers

TOL = dict(rtol=1e-5, atol=1e-6)


def f64(x):
  return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def np_sign(x):
  return np.where(x >= 0, 1.0, -1.0)


class Quantize(nn.Module):
  """Applies a quantizer spec inside a module, as mcj.layers does."""
  spec: str

  @nn.compact
  def __call__(self, x):
    return quantizers.resolve(self.spec)(x)


def vjp_of(fn, *args, seed=1):
  """``fn(*args)`` and the gradients of ``sum(c * fn(*args))`` for a random cotangent c
  (compiled), and c."""
  out = jax.eval_shape(fn, *args)
  c = jnp.asarray(np.random.default_rng(seed).uniform(-2, 2, out.shape), out.dtype)

  @jax.jit
  def run(args, c):
    y, vjp = jax.vjp(fn, *args)
    return y, vjp(c)

  y, grads = run(args, c)
  return y, grads, f64(c)


# ----------------------------------------------------------------------------- BiT activations
def np_elastic(x, alpha, beta, signed):
  """BiT eq. 5 forward and the code's backward (eq. 6-7; the alpha gradient's LSQ scale)."""
  q = (x - beta) / alpha
  if signed:
    y = alpha * np_sign(x - beta)
    inside = (q >= -1) & (q <= 1)
    dalpha = np_sign(x - beta)
  else:
    y = alpha * np.clip(np.round(q), 0, 1)  # np.round: half to even, as torch.round
    inside = (q >= 0) & (q <= 1)
    dalpha = np.where(q < 0, 0.0, np.where(q > 1, 1.0, np.round(q) - q))
  return y, inside * 1.0, dalpha


def elastic_points(alpha, beta, signed, seed=0):
  """Inputs at the clip boundaries, the rounding tie q = 0.5 and random ones."""
  grid = [-1.5, -1.0, -0.75, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 2.0] if signed else \
      [-0.5, 0.0, 0.2, 0.5, 0.6, 1.0, 1.5, 3.0]
  rng = np.random.default_rng(seed)
  base = np.asarray(grid) * alpha + beta
  extra = rng.normal(beta, 1.5 * alpha, 40) if signed else rng.uniform(-0.3, 2.5, 40) * alpha
  return np.concatenate([base, extra]).astype(np.float32).reshape(-1, 1)


@pytest.mark.parametrize('signed', [True, False])
def test_bit_elastic_forward_and_gradients(signed):
  alpha, beta = 0.5, 0.25  # exact in binary floating point: the grid stays on its points
  x = jnp.asarray(elastic_points(alpha, beta, signed))
  model = Quantize(f'bit_elastic(signed={signed})')
  init = jax.jit(model.init)(jax.random.key(0), x)['params']['ElasticQuant_0']
  # alpha starts as BiT's AlphaInit: 2 mean|x| (signed) or 4 mean|x| (unsigned); beta at 0.
  np.testing.assert_allclose(init['alpha'], (2 if signed else 4) * np.abs(f64(x)).mean(),
                             rtol=1e-6)
  assert init['beta'].shape == () and float(init['beta']) == 0.0
  params = {'ElasticQuant_0': {'alpha': jnp.float32(alpha), 'beta': jnp.float32(beta)}}
  y, (dparams, dx), c = vjp_of(lambda p, x: model.apply({'params': p}, x), params, x)
  ref_y, inside, dalpha = np_elastic(f64(x), alpha, beta, signed)
  np.testing.assert_array_equal(f64(y), ref_y)
  np.testing.assert_allclose(f64(dx), c * inside, **TOL)                       # STE in range
  grads = dparams['ElasticQuant_0']
  np.testing.assert_allclose(grads['beta'], -(c * inside).sum(), rtol=1e-5)      # eq. 7
  np.testing.assert_allclose(grads['alpha'], (c * dalpha).sum() / math.sqrt(x.size),
                             rtol=1e-5, atol=1e-6)                              # eq. 6
  values = set(np.unique(ref_y))
  assert values == ({-alpha, alpha} if signed else {0.0, alpha})


def np_elastic_2bit(x, alpha, beta, signed):
  """BiT's code at 2 bits (ElasticQuantBinarizerSigned / Unsigned, num_bits=2): levels
  -2 .. 1 (signed) or 0 .. 3 after subtracting the input's minimum (unsigned)."""
  qn, qp = (-2, 1) if signed else (0, 3)
  v = x - beta
  low = 0.0 if signed else v.min()
  q = (v - low) / alpha
  y = np.clip(np.round(q), qn, qp) * alpha + low
  inside = (q >= qn) & (q <= qp)
  # LSQ's eq. 3 at the clip boundaries (q = Qn or Qp exactly: Qn / Qp); the code's strict
  # comparisons give round(q) - q = 0 there, a difference on a set of measure zero.
  dalpha = np.where(q <= qn, qn, np.where(q >= qp, qp, np.round(q) - q))
  return y, inside * 1.0, dalpha, qp


@pytest.mark.parametrize('signed', [True, False])
def test_bit_elastic_two_bits_is_bits_w1a2_quantizer(signed):
  alpha, beta = 0.5, 0.25
  rng = np.random.default_rng(4)
  x = jnp.asarray(np.concatenate([
      np.array([-1.25, -1.0, -0.75, -0.5, 0.0, 0.125, 0.5, 0.75, 1.0, 2.0]) + beta,
      rng.normal(beta, 1.0, 40)]).astype(np.float32).reshape(-1, 1))
  model = Quantize(f'bit_elastic(bits=2, signed={signed}, threshold="tensor")')
  init = jax.jit(model.init)(jax.random.key(0), x)['params']['ElasticQuant_0']
  qp = 1 if signed else 3  # AlphaInit: 2 (signed) or 4 (unsigned) mean|x| / sqrt(Qp)
  np.testing.assert_allclose(init['alpha'], (2 if signed else 4) * np.abs(f64(x)).mean()
                             / math.sqrt(qp), rtol=1e-6)
  params = {'ElasticQuant_0': {'alpha': jnp.float32(alpha), 'beta': jnp.float32(beta)}}
  y, (dparams, dx), c = vjp_of(lambda p, x: model.apply({'params': p}, x), params, x)
  ref_y, inside, dalpha, qp = np_elastic_2bit(f64(x), alpha, beta, signed)
  np.testing.assert_allclose(f64(y), ref_y, atol=1e-6)
  np.testing.assert_allclose(f64(dx), c * inside, **TOL)
  grads = dparams['ElasticQuant_0']
  np.testing.assert_allclose(grads['alpha'], (c * dalpha).sum() / math.sqrt(x.size * qp),
                             rtol=1e-4, atol=1e-6)
  # The unsigned shift is a constant (the code's min().item()): beta's gradient is -dx.
  np.testing.assert_allclose(grads['beta'], -(c * inside).sum(), rtol=1e-4, atol=1e-5)
  levels = np.unique(np.round((ref_y - (0 if signed else ref_y.min())) / alpha))
  assert set(levels) <= ({-2, -1, 0, 1} if signed else {0, 1, 2, 3}) and len(levels) == 4
  assert quantizers.resolve('bit_elastic(bits=2)').precision == 2


def test_bit_elastic_signed_alpha_gradient_is_the_true_derivative():
  """alpha sign(x - beta) is linear in alpha: the analytic gradient (before the code's
  1 / sqrt(numel) scale) equals a central finite difference."""
  x = jnp.asarray(elastic_points(0.7, -0.1, True, seed=3))
  model = Quantize('bit_elastic')
  c = np.random.default_rng(2).uniform(0.5, 2, x.shape) * np_sign(f64(x) + 0.1)  # no cancelling

  def objective(alpha):
    p = {'ElasticQuant_0': {'alpha': alpha, 'beta': jnp.float32(-0.1)}}
    return jnp.sum(jnp.asarray(c, jnp.float32) * model.apply({'params': p}, x))

  grad = jax.grad(objective)(jnp.float32(0.7)) * math.sqrt(x.size)
  h = 0.125
  fd = (float(objective(jnp.float32(0.7 + h))) - float(objective(jnp.float32(0.7 - h)))) / (2 * h)
  np.testing.assert_allclose(grad, fd, rtol=1e-5)
  assert fd > 10


def test_bit_elastic_thresholds_init_and_dtype():
  x = jnp.asarray(np.random.default_rng(0).normal(0, 1, (2, 5, 6)), jnp.bfloat16)
  def init(spec, x):
    return jax.jit(Quantize(spec).init)(jax.random.key(0), x)['params']['ElasticQuant_0']

  assert init('bit_elastic(threshold="channel")', x)['beta'].shape == (6,)  # per feature
  assert set(init('bit_elastic(signed=False, threshold="none")', x)) == {'alpha'}
  model = Quantize('bit_elastic')
  y = jax.jit(model.apply)({'params': {'ElasticQuant_0': init('bit_elastic', x)}}, x)
  assert y.dtype == jnp.bfloat16 and len(np.unique(f64(y))) == 2
  # An all-zero first input: alpha_init, by default 2 sqrt(2 / pi) (a unit-normal input).
  zeros = jnp.zeros((3, 4))
  np.testing.assert_allclose(init('bit_elastic', zeros)['alpha'], 2 * math.sqrt(2 / math.pi),
                             rtol=1e-6)
  np.testing.assert_allclose(init('bit_elastic(alpha_init=0.3)', zeros)['alpha'], 0.3,
                             rtol=1e-6)
  # alpha is clamped at 1e-5 in the computation (the code's eps).
  tiny = {'ElasticQuant_0': {'alpha': jnp.float32(-1.0), 'beta': jnp.float32(0.0)}}
  np.testing.assert_allclose(f64(jax.jit(model.apply)({'params': tiny}, x)),
                             1e-5 * np_sign(f64(x)), rtol=1e-2)


def test_bit_elastic_in_layers_becomes_their_params():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 1, (2, 5, 8)), jnp.float32)
  dense = layers.QuantDense(3, input_quantizer='bit_elastic(threshold="channel")',
                            kernel_quantizer='bit_weight')
  params = jax.jit(dense.init)(jax.random.key(0), x)['params']
  assert params['ElasticQuant_0']['beta'].shape == (8,)
  elastic = params['ElasticQuant_0']
  xb = float(elastic['alpha']) * np_sign(f64(x) - f64(elastic['beta']))
  w = f64(params['kernel'])
  wb = np.abs(w).mean() * np_sign(w - w.mean())
  np.testing.assert_allclose(f64(jax.jit(dense.apply)({'params': params}, x)), xb @ wb,
                             rtol=1e-5, atol=1e-5)

  attention = layers.QuantDotProductAttention(
      query_key_quantizer='bit_elastic(threshold="none")',
      attention_quantizer='bit_elastic(signed=False, threshold="none")',
      value_quantizer='bit_elastic(threshold="none")')
  q, k, v = (jnp.asarray(rng.normal(0, 1, (2, 6, 2, 4)), jnp.float32) for _ in range(3))
  params = jax.jit(attention.init)(jax.random.key(0), q, k, v)['params']
  # One alpha per operand: Q, K, the probabilities, V (BiT's clip_query/key/attn/value).
  assert sorted(params) == [f'ElasticQuant_{i}' for i in range(4)]
  alpha = [float(params[f'ElasticQuant_{i}']['alpha']) for i in range(4)]
  np.testing.assert_allclose(alpha[0], 2 * np.abs(f64(q)).mean(), rtol=1e-5)
  np.testing.assert_allclose(alpha[1], 2 * np.abs(f64(k)).mean(), rtol=1e-5)
  qb, kb = alpha[0] * np_sign(f64(q)), alpha[1] * np_sign(f64(k))
  scores = np.einsum('bqhd,bkhd->bhqk', qb, kb) / 2.0
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(alpha[2], 4 * probs.mean(), rtol=1e-5)
  ab = alpha[2] * np.clip(np.round(probs / alpha[2]), 0, 1)
  vb = alpha[3] * np_sign(f64(v))
  out = jax.jit(attention.apply)({'params': params}, q, k, v)
  np.testing.assert_allclose(f64(out), np.einsum('bhqk,bkhd->bqhd', ab, vb), rtol=1e-5,
                             atol=1e-5)


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize('per', ['tensor', 'column', 'row'])
def test_bit_weight_is_bwn(per):
  w = jnp.asarray(np.random.default_rng(1).normal(0.1, 1.2, (6, 5)), jnp.float32)
  y, (dw,), c = vjp_of(quantizers.resolve(f'bit_weight(per="{per}")'), w)
  w64 = f64(w)
  axes = {'tensor': None, 'column': 0, 'row': 1}[per]
  scale = np.abs(w64).mean(axis=axes, keepdims=axes is not None)
  np.testing.assert_allclose(f64(y), scale * np_sign(w64 - w64.mean()), **TOL)  # BwnQuantizer
  np.testing.assert_allclose(f64(dw), c, **TOL)  # identity gradient, even beyond |W| > 1
  assert quantizers.resolve('bit_weight').precision == 1


def test_bit_weight_differs_from_ste_sign_with_xnor_scale():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 1, (3, 6)), jnp.float32)
  params = {'kernel': jnp.asarray(rng.normal(0.3, 1.0, (6, 4)), jnp.float32)}
  bit = layers.QuantDense(4, use_bias=False, kernel_quantizer='bit_weight(per="column")')
  xnor = layers.QuantDense(4, use_bias=False, kernel_quantizer='ste_sign', kernel_scale='xnor')
  # The same per-output-unit scale mean|W|, but BWN takes the sign of W - mean(W).
  w = f64(params['kernel'])
  np.testing.assert_allclose(f64(xnor.apply({'params': params}, x)),
                             f64(x) @ (np.abs(w).mean(0) * np_sign(w)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(f64(bit.apply({'params': params}, x)),
                             f64(x) @ (np.abs(w).mean(0) * np_sign(w - w.mean())), rtol=1e-5,
                             atol=1e-5)
  assert np.any(np_sign(w) != np_sign(w - w.mean()))


@pytest.mark.parametrize('per', ['column', 'row'])
def test_bibert_weight(per):
  w = jnp.asarray(np.random.default_rng(2).normal(0.2, 0.8, (7, 4)), jnp.float32)
  y, (dw,), c = vjp_of(quantizers.resolve(f'bibert_weight(per="{per}")'), w)
  axis = 0 if per == 'column' else 1
  w64 = f64(w)
  centred = w64 - w64.mean(axis=axis, keepdims=True)
  np.testing.assert_allclose(
      f64(y), np.abs(w64).mean(axis=axis, keepdims=True) * np_sign(centred), **TOL)
  g = c * (np.abs(centred) <= 1)  # clip(W_c, -1, 1), then through W_c = W - mean(W)
  np.testing.assert_allclose(f64(dw), g - g.mean(axis=axis, keepdims=True), **TOL)


# ----------------------------------------------------------------------------- BiBERT attention
@pytest.mark.parametrize('inclusive', [False, True])
def test_bibert_bool(inclusive):
  x = jnp.asarray([-2.0, -1.0, -0.99, -0.5, 0.0, 0.5, 0.99, 1.0, 2.0], jnp.float32)
  y, (dx,), c = vjp_of(quantizers.resolve(f'bibert_bool(inclusive={inclusive})'), x)
  x64 = f64(x)
  if inclusive:  # the paper: 1 for x >= 0, gradient where |x| <= 1
    ref_y, ref_d = x64 >= 0, np.abs(x64) <= 1
  else:          # the code: sign then -1 -> 0 (0 at 0), gradient zeroed at |x| >= 1
    ref_y, ref_d = x64 > 0, np.abs(x64) < 1
  np.testing.assert_array_equal(f64(y), ref_y * 1.0)
  np.testing.assert_allclose(f64(dx), c * ref_d, **TOL)
  assert quantizers.resolve('bibert_bool').precision == 1


def bi_attention(q, k, v, mask, score_quantizer):
  """Bi-Attention from mcj's pieces: bool(sign(Q) sign(K)^T / sqrt(D)) . sign(V), masked
  scores at the float32 minimum (the hook a layer option would add)."""
  scores = layers.quant_matmul('...qhd,...khd->...hqk', q, k, 'ste_sign', 'ste_sign')
  scores = jnp.where(mask, scores / math.sqrt(q.shape[-1]), jnp.finfo(jnp.float32).min)
  weights = quantizers.resolve(score_quantizer)(scores)
  return layers.quant_matmul('...hqk,...khd->...qhd', weights, v, None, 'ste_sign')


@pytest.mark.parametrize('inclusive', [False, True])
def test_bi_attention_output_values(inclusive):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(0, 1, (2, 5, 3, 4)), jnp.float32) for _ in range(3))
  mask = jnp.asarray([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
  out = bi_attention(q, k, v, mask, f'bibert_bool(inclusive={inclusive})')
  scores = np.einsum('bqhd,bkhd->bhqk', np_sign(f64(q)), np_sign(f64(k))) / 2.0
  assert (scores == 0).any()  # even head_dim: ties at 0 happen, where the two forms differ
  weights = (scores >= 0) if inclusive else (scores > 0)
  weights = weights & np.asarray(mask)  # masked keys get weight 0 in both forms
  expected = np.einsum('bhqk,bkhd->bqhd', weights * 1.0, np_sign(f64(v)))
  np.testing.assert_array_equal(f64(out), expected)
  # On softmax probabilities (attention_quantizer) bool would give every key weight 1.
  probs = jax.nn.softmax(jnp.asarray(scores, jnp.float32), axis=-1)
  assert np.all(f64(quantizers.resolve('bibert_bool')(probs)) == 1.0)


# ----------------------------------------------------------------------------- DMD
def np_dmd(students, teachers):
  """BiBERT's DMD: sum || P_s / ||P_s|| - P_t / ||P_t|| ||, P = F F^T per head, whole-tensor
  l2 norms (htqin/BiBERT att_loss_r2b on the Q/K/V similarity scores)."""
  total = 0.0
  for s, t in zip(students, teachers):
    ps = np.einsum('bqhd,bkhd->bhqk', f64(s), f64(s)) / math.sqrt(s.shape[-1])
    pt = np.einsum('bqhd,bkhd->bhqk', f64(t), f64(t)) / math.sqrt(t.shape[-1])
    total += np.linalg.norm((ps / np.linalg.norm(ps) - pt / np.linalg.norm(pt)).ravel())
  return total


def qkv(seed, shape=(4, 6, 2, 3), d_teacher=5):
  rng = np.random.default_rng(seed)
  students = [rng.normal(0, 1, shape).astype(np.float32) for _ in range(3)]
  teachers = [rng.normal(0, 2, shape[:3] + (d_teacher,)).astype(np.float32) for _ in range(3)]
  return students, teachers


@pytest.mark.parametrize('seed', [0, 1])
def test_direction_matching_loss_matches_numpy(seed):
  students, teachers = qkv(seed)  # head_dim may differ: P is tokens x tokens per head
  dmd = jax.jit(losses.direction_matching_loss)
  np.testing.assert_allclose(dmd(students, teachers), np_dmd(students, teachers), rtol=1e-5)
  # Only directions matter: scaling a feature changes nothing.
  scaled = [3.0 * s for s in students]
  np.testing.assert_allclose(dmd(scaled, teachers), np_dmd(students, teachers), rtol=1e-5)
  # A (batch, tokens, features) tensor is one head.
  flat = [s.reshape(4, 6, 6) for s in students]
  flat_t = [t.reshape(4, 6, 10) for t in teachers]
  np.testing.assert_allclose(dmd(flat, flat_t),
                             np_dmd([s[:, :, None] for s in flat],
                                    [t[:, :, None] for t in flat_t]), rtol=1e-5)


def test_direction_matching_loss_identical_is_zero_with_finite_gradient():
  students, _ = qkv(0)
  value, grad = jax.jit(jax.value_and_grad(
      lambda s: losses.direction_matching_loss(s, students)))(students)
  assert abs(float(value)) < 1e-6 and all(np.isfinite(g).all() for g in grad)
  with pytest.raises(ValueError, match='equal shape'):
    losses.direction_matching_loss([students[0]], [students[0][:, :, :1]])
  with pytest.raises(ValueError, match='pair one to one'):
    losses.direction_matching_loss(students, students[:2])


def test_direction_matching_loss_over_devices_is_the_full_batch_loss():
  assert jax.device_count() == 4
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (8, 5, 6)).astype(np.float32)
  w = rng.normal(0, 0.5, (6, 8)).astype(np.float32)
  t = rng.normal(0, 1, (8, 5, 2, 4)).astype(np.float32)

  def loss(w, x, t, axis):
    f = (x @ w).reshape(*x.shape[:2], 2, 4)
    return losses.direction_matching_loss([f, 2 * f], [t, t[..., ::-1]], axis_name=axis)

  def step(w, x, t):
    value, grad = jax.value_and_grad(loss)(w, x, t, 'data')
    return value, jax.lax.pmean(grad, 'data')

  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  value, grad = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                                      out_specs=(P(), P()), check_vma=False))(w, x, t)
  full_value, full_grad = jax.jit(jax.value_and_grad(loss), static_argnums=3)(w, x, t, None)
  np.testing.assert_allclose(value, full_value, rtol=1e-5)
  np.testing.assert_allclose(grad, full_grad, rtol=1e-4, atol=1e-6)
  assert np.abs(full_grad).max() > 1e-3


# ----------------------------------------------------------------------------- TinyBERT
def np_mse(a, b):
  return np.mean((f64(a) - f64(b)) ** 2)


def np_soft_ce(s, t, temperature):
  def log_softmax(z):
    z = f64(z) / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  return np.mean(-np.sum(np.exp(log_softmax(t)) * log_softmax(s), axis=-1))


def test_uniform_layer_map():
  assert losses.uniform_layer_map(4, 12) == (0, 3, 6, 9, 12)  # TinyBERT4: g(m) = 3m
  assert losses.uniform_layer_map(6, 12) == (0, 2, 4, 6, 8, 10, 12)
  assert losses.uniform_layer_map(3, 3) == (0, 1, 2, 3)
  # Per-layer tensors indexed from 0 pair as the codes' i * k + k - 1 (BiBERT, TinyBERT).
  k = 12 // 4
  assert [losses.uniform_layer_map(4, 12)[m] - 1 for m in range(1, 5)] == \
      [i * k + k - 1 for i in range(4)]
  for bad in [(5, 12), (0, 12), (13, 12)]:
    with pytest.raises(ValueError, match='uniform mapping'):
      losses.uniform_layer_map(*bad)


def test_tinybert_attention_loss_on_masked_scores():
  rng = np.random.default_rng(0)
  s = rng.normal(0, 1, (2, 3, 4, 4)).astype(np.float32)
  t = rng.normal(0, 1, (2, 3, 4, 4)).astype(np.float32)
  s[1, :, :, -1] = np.finfo(np.float32).min  # mcj's masked score
  t[1, :, :, -1] = -10000.0 + t[1, :, :, -1]  # TinyBERT's additive mask
  s0, t0 = np.where(s <= -100, 0, s), np.where(t <= -100, 0, t)
  per_head = np.mean([np_mse(s0[:, h], t0[:, h]) for h in range(3)])  # 1/h sum_i MSE (eq. 6)
  np.testing.assert_allclose(losses.tinybert_attention_loss(s, t), per_head, rtol=1e-5)
  assert float(losses.tinybert_attention_loss(t, t)) == 0.0
  with pytest.raises(ValueError, match='equal shape'):
    losses.tinybert_attention_loss(s, t[:, :2])


def test_tinybert_hidden_embedding_and_prediction_losses():
  rng = np.random.default_rng(1)
  hs = rng.normal(0, 1, (2, 5, 4)).astype(np.float32)
  ht = rng.normal(0, 1, (2, 5, 6)).astype(np.float32)
  w = rng.normal(0, 0.5, (4, 6)).astype(np.float32)
  b = rng.normal(0, 0.1, (6,)).astype(np.float32)
  np.testing.assert_allclose(losses.tinybert_hidden_loss(hs, ht, w),
                             np_mse(f64(hs) @ f64(w), ht), rtol=1e-5)          # eq. 7
  np.testing.assert_allclose(losses.tinybert_embedding_loss(hs, ht, w, b),
                             np_mse(f64(hs) @ f64(w) + f64(b), ht), rtol=1e-5)  # eq. 8
  with pytest.raises(ValueError, match='projected student'):
    losses.tinybert_hidden_loss(hs, ht, w[:, :5])
  zs, zt = rng.normal(0, 2, (8, 3)), rng.normal(0, 2, (8, 3))
  for temperature in (1.0, 2.5):                                                 # eq. 9
    np.testing.assert_allclose(losses.tinybert_prediction_loss(zs, zt, temperature),
                               np_soft_ce(zs, zt, temperature), rtol=1e-5)
  np.testing.assert_allclose(losses.tinybert_prediction_loss(zs, zt),
                             losses.distribution_loss(zs, zt), rtol=1e-6)


def test_tinybert_intermediate_loss_uses_the_uniform_mapping():
  rng = np.random.default_rng(2)
  m_layers, n_layers = 2, 6
  s_scores = [rng.normal(0, 1, (2, 2, 3, 3)).astype(np.float32) for _ in range(m_layers)]
  t_scores = [rng.normal(0, 1, (2, 2, 3, 3)).astype(np.float32) for _ in range(n_layers)]
  s_hidden = [rng.normal(0, 1, (2, 3, 4)).astype(np.float32) for _ in range(m_layers + 1)]
  t_hidden = [rng.normal(0, 1, (2, 3, 5)).astype(np.float32) for _ in range(n_layers + 1)]
  w, b = rng.normal(0, 0.5, (4, 5)).astype(np.float32), rng.normal(0, 0.1, 5).astype(np.float32)
  we = rng.normal(0, 0.5, (4, 5)).astype(np.float32)
  # g(m) = 3m: student layers 1, 2 <-> teacher layers 3, 6 (scores 2, 5; hidden 3, 6).
  proj = lambda h, w, b: f64(h) @ f64(w) + f64(b)
  expected = (np_mse(s_scores[0], t_scores[2]) + np_mse(s_scores[1], t_scores[5])
              + np_mse(proj(s_hidden[0], w, b), t_hidden[0])
              + np_mse(proj(s_hidden[1], w, b), t_hidden[3])
              + np_mse(proj(s_hidden[2], w, b), t_hidden[6]))
  np.testing.assert_allclose(losses.tinybert_intermediate_loss(
      s_scores, t_scores, s_hidden, t_hidden, w, b), expected, rtol=1e-5)
  own_embedding = expected - np_mse(proj(s_hidden[0], w, b), t_hidden[0]) + np_mse(
      f64(s_hidden[0]) @ f64(we), t_hidden[0])
  np.testing.assert_allclose(losses.tinybert_intermediate_loss(
      s_scores, t_scores, s_hidden, t_hidden, w, b, embedding_kernel=we), own_embedding,
      rtol=1e-5)
  with pytest.raises(ValueError, match='embedding output plus one per layer'):
    losses.tinybert_intermediate_loss(s_scores, t_scores, s_hidden[1:], t_hidden, w)


# ----------------------------------------------------------------------------- DistilBERT
def test_distilbert_layers():
  assert losses.distilbert_layers(12) == (0, 2, 4, 7, 9, 11)  # extract_distilbert.py
  assert losses.distilbert_layers(4) == (0, 3)
  assert losses.distilbert_layers(24) == (0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23)
  assert losses.distilbert_layers(12, 3) == (0, 2, 11)
  with pytest.raises(ValueError, match='one layer out of two'):
    losses.distilbert_layers(12, 8)


@pytest.mark.slow  # compiles a BERT / ViT: the full tier
def test_distilbert_init_takes_the_teacher_layers():
  options = dict(hidden_size=16, num_heads=2, vocab_size=50, max_position_embeddings=16)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 7)))
  teacher = bert.Bert(num_layers=4, **options)
  t_params = jax.jit(teacher.init)(jax.random.key(0), ids)['params']
  s_params = losses.distilbert_init(t_params)
  student = bert.Bert(num_layers=2, **options)
  expected = jax.eval_shape(student.init, jax.random.key(1), ids)['params']
  assert jax.tree.structure(s_params) == jax.tree.structure(expected)
  for j, i in enumerate((0, 3)):
    jax.tree.map(np.testing.assert_array_equal, s_params[f'layer_{j}'], t_params[f'layer_{i}'])
  for name in ('embeddings', 'pooler', 'classifier'):
    jax.tree.map(np.testing.assert_array_equal, s_params[name], t_params[name])
  logits = jax.jit(student.apply)({'params': s_params}, ids)
  assert logits.shape == (2, 2) and np.isfinite(f64(logits)).all()
  # Explicit layers, and variables holding the params.
  picked = losses.distilbert_init({'params': t_params}, layers=(1, 2))
  assert sorted(picked) == ['params']
  jax.tree.map(np.testing.assert_array_equal, picked['params']['layer_0'], t_params['layer_1'])
  with pytest.raises(ValueError, match='not all among'):
    losses.distilbert_init(t_params, layers=(0, 4))


def test_init_from_layers_and_partial_in_the_config_and_the_trainer():
  from mcj.train import trainer
  from mcj.train.schema import merge_config
  base = {'model': {'name': 'bert_tiny'}, 'total_steps': 1}
  with pytest.raises(ConfigError, match=r'^config.init_from_layers / init_from_partial are '
                     r'set but config.init_from is not'):
    merge_config({**base, 'init_from_layers': (0, 2)})
  with pytest.raises(ConfigError, match=r'lists teacher layer indices \(ints >= 0\), got '
                     r'\(0, -1\)\.$'):
    merge_config({**base, 'init_from': '/tmp', 'init_from_layers': (0, -1)})
  assert merge_config({**base, 'init_from': '/tmp', 'init_from_layers': [0, 2]}
                      ).init_from_layers == (0, 2)
  # init_from_partial: the model's arrays the source lacks are named (the trainer then
  # initialises them with the loaded weights), the source's arrays the model lacks are left
  # out; shapes are still fit_variables' to check.
  fresh = {'params': {'dense': {'kernel': 1}, 'LSQ_0': {'step': 2}}, 'batch_stats': {}}
  loaded = {'params': {'dense': {'kernel': 5}, 'old': {'x': 3}}, 'batch_stats': {}}
  assert trainer._partial(fresh, loaded) == (
      {'params': {'dense': {'kernel': 5}, 'LSQ_0': {'step': 2}}, 'batch_stats': {}},
      {('params', 'LSQ_0/step')}, 1)


# ----------------------------------------------------------------------------- specs
@pytest.mark.parametrize('spec,message', [
    ('bit_elastic(signed=1)', 'bit_elastic signed must be True or False'),
    ('bit_elastic(threshold="row")', 'bit_elastic threshold must be one of tensor, channel'),
    ('bit_elastic(alpha_init=0.0)', 'bit_elastic alpha_init must be a number > 0'),
    ('bit_weight(per="channel")', "bit_weight per must be 'tensor', 'column' or 'row'"),
    ('bibert_weight(per="tensor")', "bibert_weight per must be 'column' or 'row'"),
    ('bibert_bool(inclusive="yes")', 'bibert_bool inclusive must be True or False'),
])
def test_bad_options_are_config_errors(spec, message):
  with pytest.raises(ConfigError) as e:
    quantizers.resolve(spec)
  assert message in str(e.value) and '\n' not in str(e.value)


# ----------------------------------------------------------------------------- BERT options
def np_layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-12) * f64(p['scale']) + f64(p['bias'])


def np_gelu(x):
  from scipy import special
  return 0.5 * x * special.erfc(-x / math.sqrt(2))


NP_QUANTIZERS = {
    None: lambda x: x,
    'ste_sign': np_sign,
    'ste_heaviside': lambda x: (x > 0) * 1.0,
    'bibert_weight': lambda w: np.abs(w).mean(0) * np_sign(w - w.mean(0)),  # per column
}


def np_dense(x, p, input_q=None, kernel_q=None):
  return NP_QUANTIZERS[input_q](x) @ NP_QUANTIZERS[kernel_q](f64(p['kernel'])) + f64(p['bias'])


def np_bert_layer(x, p, heads, keys, o):
  """One post-LN BERT layer in float64 with the options ``o`` (a Bert's keyword options):
  its output, and its pre-softmax masked scores and Q, K, V (before their quantizers)."""
  a = p['attention']
  dense = lambda x, q, inq=o.get('input_quantizer'): np_dense(
      x, q, inq, o.get('kernel_quantizer'))
  b, n, d = x.shape
  qkv = [dense(x, a[name]).reshape(b, n, heads, d // heads) for name in ('query', 'key', 'value')]
  qk = NP_QUANTIZERS[o.get('query_key_quantizer')]
  raw = np.einsum('bqhd,bkhd->bhqk', qk(qkv[0]), qk(qkv[1])) / math.sqrt(d // heads)
  keys = np.asarray(keys)[:, None, None, :]
  scores = np.where(keys, raw, np.finfo(np.float32).min)
  if o.get('attention_score_quantizer') == 'bibert_bool':
    weights = (raw > 0) & keys  # bool replaces the softmax; masked keys 0
  else:
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True)
  v = NP_QUANTIZERS[o.get('value_quantizer')](qkv[2])
  ctx = np.einsum('bhqk,bkhd->bqhd', weights * 1.0, v).reshape(b, n, d)
  x = np_layer_norm(x + dense(ctx, a['output']), p['attention_norm'])
  y = dense(x, p['intermediate'])
  y = np.maximum(y, 0) if o.get('hidden_act') == 'relu' else np_gelu(y)
  y = dense(y, p['output'], o.get('ffn_input_quantizer', o.get('input_quantizer')))
  return np_layer_norm(x + y, p['output_norm']), scores, qkv


IDS = np.array([[101, 5, 7, 9, 102, 11, 13, 102, 0, 0],
                [101, 20, 30, 102, 0, 0, 0, 0, 0, 0],
                [101, 3, 4, 5, 6, 102, 8, 9, 10, 102]])
TINY = dict(num_layers=2, hidden_size=16, num_heads=2, vocab_size=120, max_position_embeddings=12)
OPTION_CASES = {
    'float': {},
    'relu_ffn_input': dict(hidden_act='relu', input_quantizer='ste_sign',
                           ffn_input_quantizer='ste_heaviside'),
    'bibert': dict(input_quantizer='ste_sign', kernel_quantizer='bibert_weight',
                   query_key_quantizer='ste_sign', value_quantizer='ste_sign',
                   attention_score_quantizer='bibert_bool', quantize_pooler=True),
}


def random_bert_params(model, seed=0):
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(IDS.shape))['params']
  return jax.tree_util.tree_map_with_path(
      lambda p, s: (1.0 * (p[-1].key == 'scale') + rng.normal(0, 0.3, s.shape)).astype(
          np.float32), shapes)


def apply_with_taps(model, params, ids):
  from mcj.compress.distill import features
  logits, stages = jax.jit(lambda p, i: features.apply_with_features(
      model, {'params': p}, i, train=False))(params, ids)
  return logits, features.transformer_taps(stages)


@pytest.mark.parametrize('case', list(OPTION_CASES))
def test_bert_options_and_taps_match_a_numpy_layer(case):
  """Each layer's sown output is the numpy layer of its sown input (hidden_act, the FFN's
  own input quantizer, Bi-Attention's bool weights, BiBERT's weights), the sown scores and
  Q, K, V are the layer's, and the logits come from a pooler quantized like the encoder
  (``quantize_pooler``) and a float classifier."""
  options = OPTION_CASES[case]
  model = bert.Bert(num_classes=3, **TINY, **options)
  params = random_bert_params(model)
  logits, taps = apply_with_taps(model, params, IDS)
  assert [h.shape for h in taps['hidden']] == [(3, 10, 16)] * 3
  assert [s.shape for s in taps['scores']] == [(3, 2, 10, 10)] * 2
  assert [q.shape for q in taps['query']] == [(3, 10, 2, 8)] * 2
  keys = IDS != 0
  for i in range(2):
    out, scores, qkv = np_bert_layer(f64(taps['hidden'][i]), params[f'layer_{i}'], 2, keys,
                                     options)
    np.testing.assert_allclose(f64(taps['hidden'][i + 1]), out, rtol=1e-4, atol=1e-4)
    finite = scores > -1e30
    np.testing.assert_allclose(f64(taps['scores'][i])[finite], scores[finite], rtol=1e-4,
                               atol=1e-4)
    assert np.all(f64(taps['scores'][i])[~finite] == np.finfo(np.float32).min)
    for name, want in zip(('query', 'key', 'value'), qkv):
      np.testing.assert_allclose(f64(taps[name][i]), want, rtol=1e-4, atol=1e-4)
  pooler_q = options.get('input_quantizer') if options.get('quantize_pooler') else None
  kernel_q = options.get('kernel_quantizer') if options.get('quantize_pooler') else None
  pooled = np.tanh(np_dense(f64(taps['hidden'][-1])[:, 0], params['pooler'], pooler_q,
                            kernel_q))
  np.testing.assert_allclose(f64(logits), np_dense(pooled, params['classifier']), rtol=1e-4,
                             atol=1e-4)
  # A plain apply returns the logits alone, and init holds no taps.
  np.testing.assert_allclose(f64(model.apply({'params': params}, IDS)), f64(logits), rtol=1e-5,
                             atol=1e-5)
  assert 'intermediates' not in jax.eval_shape(model.init, jax.random.key(0), IDS)


@pytest.mark.slow  # compiles two ViTs: the full tier
def test_vit_sows_the_taps_tinybert_reads():
  """ViT sows its hidden states (the embedded patches, then each block's output) beside the
  attention taps, as BERT: the logits are the head on the final LayerNorm of the last one,
  and TinyBERT's layer loss plans a 4-block teacher onto a 2-block student."""
  from mcj.compress.distill import features
  from mcj.compress.distill import objectives
  from mcj.models.transformers import vit
  import ml_collections

  def build(blocks):
    return vit.VisionTransformer(num_classes=3, num_layers=blocks, hidden_size=16,
                                 num_heads=2, patch_size=2)

  images = jnp.asarray(np.random.default_rng(0).normal(0, 1, (2, 8, 8, 1)), jnp.float32)
  student = build(2)
  params = student.init(jax.random.key(0), images)['params']
  logits, stages = features.apply_with_features(student, {'params': params}, images,
                                                train=False)
  taps = features.transformer_taps(stages)
  assert [h.shape for h in taps['hidden']] == [(2, 17, 16)] * 3  # class token + 16 patches
  assert [q.shape for q in taps['scores']] == [(2, 2, 17, 17)] * 2
  final = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False).apply(
      {'params': params['norm']}, taps['hidden'][-1])
  head = f64(final)[:, 0] @ f64(params['head']['kernel']) + f64(params['head']['bias'])
  np.testing.assert_allclose(f64(logits), head, rtol=1e-4, atol=1e-5)
  teacher = build(4)
  t_params = teacher.init(jax.random.key(1), images)['params']
  _, t_stages = features.apply_with_features(teacher, {'params': t_params}, images,
                                             train=False)
  config = ml_collections.ConfigDict({'tinybert_projection': 'none',
                                      'tinybert_attention_weight': 1.0})
  assert objectives._tinybert_plan(stages, t_stages, config, 0) == []  # pylint: disable=protected-access
  loss = objectives.tinybert(stages, t_stages, config=config, adapters={}, teacher_index=0)
  assert np.isfinite(float(loss)) and float(loss) > 0


def test_hidden_act_changes_only_the_ffn_and_is_checked():
  model = bert.Bert(num_classes=2, **TINY)
  params = random_bert_params(model)
  gelu = model.apply({'params': params}, IDS)
  relu = model.clone(hidden_act='relu').apply({'params': params}, IDS)
  assert np.abs(f64(gelu) - f64(relu)).max() > 1e-3
  with pytest.raises(ValueError, match="hidden_act must be one of gelu, relu, got 'tanh'"):
    model.clone(hidden_act='tanh').apply({'params': params}, IDS)


@pytest.mark.parametrize('inclusive', [False, True])
def test_score_quantizer_gives_masked_keys_zero_weight_with_dropout(inclusive):
  """Bi-Attention as a layer option: bool(sign(Q) sign(K)^T / sqrt(D)) . sign(V), no softmax
  (the numpy reference, eval); at train=True with dropout on the scores the weights stay
  {0, 1} (integer outputs) and what the masked keys' V holds changes nothing."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(0, 1, (2, 5, 3, 4)), jnp.float32) for _ in range(3))
  mask = jnp.asarray([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
  attention = layers.QuantDotProductAttention(
      query_key_quantizer='ste_sign', value_quantizer='ste_sign', dropout_rate=0.5,
      score_quantizer=f'bibert_bool(inclusive={inclusive})')
  out = attention.apply({}, q, k, v, mask)
  np.testing.assert_array_equal(f64(out), f64(bi_attention(
      q, k, v, mask, f'bibert_bool(inclusive={inclusive})')))
  flipped = v.at[1, 3:].multiply(-1.0)  # the masked keys of example 1
  rngs = {'dropout': jax.random.key(3)}
  trained = attention.apply({}, q, k, v, mask, train=True, rngs=rngs)
  np.testing.assert_array_equal(f64(trained), np.round(f64(trained)))
  assert np.abs(f64(trained) - f64(out)).max() > 0  # dropout acted
  np.testing.assert_array_equal(
      f64(attention.apply({}, q, k, flipped, mask, train=True, rngs=rngs)), f64(trained))
  np.testing.assert_array_equal(f64(attention.apply({}, q, k, flipped, mask)), f64(out))


@pytest.mark.slow  # compiles a BERT / ViT: the full tier
def test_bi_attention_bert_ignores_padding():
  model = bert.Bert(num_classes=3, **TINY, **OPTION_CASES['bibert'])
  params = random_bert_params(model, seed=2)
  short = np.array([[101, 5, 7, 9, 102, 11, 13, 102]])
  padded = np.concatenate([short, np.zeros((1, 4), int)], 1)
  np.testing.assert_allclose(f64(model.apply({'params': params}, padded)),
                             f64(model.apply({'params': params}, short)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('head,pooler,expected', [
    (False, None, (32, 32)), (True, None, (1, 1)), (False, True, (1, 32)),
    (True, False, (32, 1))])
def test_quantize_pooler_apart_from_the_classifier(head, pooler, expected):
  from mcj.analysis import summary
  model = bert.Bert(num_classes=2, **TINY, input_quantizer='ste_sign',
                    kernel_quantizer='ste_sign', quantize_head=head, quantize_pooler=pooler)
  rows = {r['name']: r['params_by_bits'] for r in summary.summarize(model, (10,))['layers']}
  for name, bits in zip(('pooler', 'classifier'), expected):
    kernel = 16 * (16 if name == 'pooler' else 2)
    assert rows[name].get(bits, 0) >= kernel, (name, rows[name])
