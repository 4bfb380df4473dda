"""Distillation losses: each against an independent numpy (float64) implementation of its
paper's formula at several random inputs, hand-checkable cases (identical student and
teacher give 0, CE = KL + H), the analytic KD gradient, and device-count invariance of the
relational losses (value, and gradients pmean-ed over devices as the trainer does)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from mcj.compress.distill import features as features_lib
from mcj.compress.distill import losses as distill
from mcj.compress.distill import objectives
from mcj.compress.distill import teachers as teachers_lib
from mcj.compress import distill as distill_pkg
from mcj.core import registry
from mcj.core.config import ConfigError

SEEDS = [0, 1, 2]
TOL = dict(rtol=1e-5, atol=1e-6)


def logits(seed, n=8, c=10, scale=2.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(0, scale, (n, c)).astype(np.float32),
          rng.normal(0, scale, (n, c)).astype(np.float32))


def features(seed, shape=(3, 6, 5, 4), shape_t=None):
  rng = np.random.default_rng(seed)
  s = rng.normal(0, 1, shape).astype(np.float32)
  t = rng.normal(0, 1, shape_t or shape).astype(np.float32)
  return s, t


def f64(x):
  return np.asarray(x, np.float64)


# ----------------------------------------------------------------------------- numpy references
def np_softmax(z):
  z = f64(z)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def np_kd(s, t, temp):
  """T^2 * mean over examples of KL(p_t || p_s), p = softmax(z / T) (Hinton et al.)."""
  ps, pt = np_softmax(f64(s) / temp), np_softmax(f64(t) / temp)
  return temp ** 2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1))


def np_distribution(s, t):
  """ReActNet: mean over examples of -sum_c p_t log p_s."""
  return np.mean(-np.sum(np_softmax(t) * np.log(np_softmax(s)), axis=-1))


def np_pearson(a, b):
  a, b = a - a.mean(), b - b.mean()
  return np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))


def np_dist(s, t, temp=1.0, beta=1.0, gamma=1.0):
  """DIST: T^2 (beta * inter + gamma * intra), Pearson over classes / over the batch."""
  ps, pt = np_softmax(f64(s) / temp), np_softmax(f64(t) / temp)
  inter = np.mean([1 - np_pearson(ps[i], pt[i]) for i in range(ps.shape[0])])
  intra = np.mean([1 - np_pearson(ps[:, c], pt[:, c]) for c in range(ps.shape[1])])
  return temp ** 2 * (beta * inter + gamma * intra)


def np_attention(a, p=2):
  q = np.mean(np.abs(f64(a)) ** p, axis=-1).reshape(a.shape[0], -1)
  return q / np.linalg.norm(q, axis=1, keepdims=True)


def np_at(ss, ts, beta=1e3, p=2):
  """Attention transfer as the official code: beta * sum_j mean((Q_s - Q_t)^2)."""
  return beta * sum(np.mean((np_attention(s, p) - np_attention(t, p)) ** 2)
                    for s, t in zip(ss, ts))


def np_r2b(ss, ts):
  """Real-to-Binary: sum_j mean_i ||Q_s/||Q_s|| - Q_t/||Q_t|| ||_2, Q = sum_c A_c^2."""
  total = 0.0
  for s, t in zip(ss, ts):
    qs = np.sum(f64(s) ** 2, axis=-1).reshape(s.shape[0], -1)
    qt = np.sum(f64(t) ** 2, axis=-1).reshape(t.shape[0], -1)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    qt /= np.linalg.norm(qt, axis=1, keepdims=True)
    total += np.mean(np.linalg.norm(qs - qt, axis=1))
  return total


def np_huber(x, y):
  d = np.abs(x - y)
  return np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5))


def np_rkd_distance(s, t):
  def psi(e):
    e = f64(e)
    n = e.shape[0]
    d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
    return d / (d.sum() / (n * (n - 1)))  # mean over distinct pairs
  return np_huber(psi(s), psi(t))


def np_rkd_angle(s, t):
  def psi(e):
    e = f64(e)
    n = e.shape[0]
    out = np.zeros((n, n, n))
    for i in range(n):
      for j in range(n):
        for k in range(n):
          if j != i and k != i:
            v, w = e[j] - e[i], e[k] - e[i]
            out[i, j, k] = v @ w / (np.linalg.norm(v) * np.linalg.norm(w))
    return out
  return np_huber(psi(s), psi(t))


# ----------------------------------------------------------------------------- logit losses
@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_hinton_kd_matches_formula(seed, temperature):
  s, t = logits(seed)
  got = distill.hinton_kd(s, t, temperature=temperature)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, np_kd(s, t, temperature), **TOL)


def test_hinton_kd_default_temperature_and_zero():
  s, t = logits(3)
  np.testing.assert_allclose(distill.hinton_kd(s, t), np_kd(s, t, 4.0), **TOL)
  np.testing.assert_allclose(distill.hinton_kd(s, s, 4.0), 0.0, atol=1e-6)
  # bfloat16 logits are cast to float32 inside
  out = distill.hinton_kd(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
  assert out.dtype == jnp.float32


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('temperature', [1.0, 2.0, 8.0])
def test_hinton_kd_gradient_is_analytic(seed, temperature):
  """d/ds [T^2 mean KL] = T (softmax(s/T) - softmax(t/T)) / N."""
  s, t = logits(seed)
  g = jax.grad(distill.hinton_kd)(jnp.asarray(s), jnp.asarray(t), temperature)
  expected = (np_softmax(s / temperature) - np_softmax(t / temperature)) * temperature / len(s)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)


def test_hinton_kd_t_squared_keeps_gradient_scale():
  """For large T the gradient tends to ((s - mean s) - (t - mean t)) / (C N), whatever T
  (Hinton et al., section 2.1); without the T^2 factor it would shrink as 1/T^2."""
  s, t = logits(4, scale=1.0)
  n, c = s.shape
  limit = ((s - s.mean(1, keepdims=True)) - (t - t.mean(1, keepdims=True))) / (c * n)
  for temperature in (20.0, 50.0, 100.0):
    g = jax.grad(distill.hinton_kd)(jnp.asarray(s), jnp.asarray(t), temperature)
    error = np.linalg.norm(np.asarray(g) - limit) / np.linalg.norm(limit)
    assert error < 2.0 / temperature, (temperature, error)


def test_traced_temperature_and_weights():
  """Temperatures and weights may be traced (e.g. scheduled) as well as Python floats."""
  s, t = logits(6)
  kd = jax.jit(distill.hinton_kd)(s, t, jnp.float32(3.0))
  np.testing.assert_allclose(kd, np_kd(s, t, 3.0), **TOL)
  dist = jax.jit(distill.dist_loss)(s, t, jnp.float32(2.0), jnp.float32(0.5), jnp.float32(2.0))
  np.testing.assert_allclose(dist, np_dist(s, t, 2.0, 0.5, 2.0), **TOL)
  e_s, e_t = embeddings(6)
  rkd = jax.jit(distill.rkd_loss)(e_s, e_t, jnp.float32(2.0), jnp.float32(3.0))
  expected = 2.0 * np_rkd_distance(e_s, e_t) + 3.0 * np_rkd_angle(e_s, e_t)
  np.testing.assert_allclose(rkd, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('seed', SEEDS)
def test_distribution_loss_is_cross_entropy(seed):
  s, t = logits(seed)
  got = distill.distribution_loss(s, t)
  np.testing.assert_allclose(got, np_distribution(s, t), **TOL)
  # CE(p_t, p_s) = KL(p_t || p_s) + H(p_t): hinton_kd at T = 1 plus the teacher's entropy
  pt = np_softmax(t)
  entropy = np.mean(-np.sum(pt * np.log(pt), axis=-1))
  np.testing.assert_allclose(got, distill.hinton_kd(s, t, 1.0) + entropy, **TOL)
  np.testing.assert_allclose(distill.distribution_loss(t, t), entropy, **TOL)


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('temperature,beta,gamma', [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5),
                                                    (1.0, 1.0, 0.0), (2.0, 0.0, 1.0)])
def test_dist_loss_matches_formula(seed, temperature, beta, gamma):
  s, t = logits(seed, n=12)
  got = distill.dist_loss(s, t, temperature=temperature, beta=beta, gamma=gamma)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, np_dist(s, t, temperature, beta, gamma), **TOL)


def test_dist_loss_perfect_correlation_is_zero():
  s, _ = logits(5)
  np.testing.assert_allclose(distill.dist_loss(s, s), 0.0, atol=1e-6)
  # Pearson ignores the scale of the (centred) probabilities: still 0 for any T (up to
  # T^2 = 16 times float32 rounding and the 1e-8 epsilon)
  np.testing.assert_allclose(distill.dist_loss(s, s, temperature=4.0), 0.0, atol=1e-4)
  # anti-correlated inter-class relation: 1 - (-1) = 2 per example, with two classes
  two = np.array([[1.0, -1.0], [-2.0, 0.5], [0.3, 0.1]], np.float32)
  np.testing.assert_allclose(distill.dist_loss(two, -two, gamma=0.0), 2.0, rtol=1e-5)


# ----------------------------------------------------------------------------- feature losses
def test_fitnet_adapter_and_loss():
  s, t = features(0, (2, 4, 4, 8), (2, 4, 4, 16))
  adapter = distill.FitNetAdapter(features=16)
  params = adapter.init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))['params']
  out = adapter.apply({'params': params}, s)
  assert out.shape == (2, 4, 4, 16) and out.dtype == jnp.float32
  # a 1x1 convolution is a per-position linear map, starting with zero bias
  kernel, bias = params['regressor']['kernel'], params['regressor']['bias']
  assert kernel.shape == (1, 1, 8, 16)
  np.testing.assert_array_equal(bias, 0.0)
  np.testing.assert_allclose(out, f64(s) @ f64(kernel[0, 0]), rtol=1e-5, atol=1e-5)
  # LeCun-normal: variance about 1 / fan_in
  assert 0.3 / 8 < np.var(kernel) < 3.0 / 8
  got = distill.fitnet_loss(out, t)
  np.testing.assert_allclose(got, np.mean((f64(out) - f64(t)) ** 2), **TOL)
  np.testing.assert_allclose(distill.fitnet_loss(t, t), 0.0)
  assert isinstance(adapter, nn.Module)


@pytest.mark.parametrize('p', [1, 2, 4])
def test_attention_map(p):
  s, _ = features(1)
  q = distill.attention_map(s, p)
  assert q.shape == (3, 30)
  np.testing.assert_allclose(q, np_attention(s, p), **TOL)
  np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('seed', SEEDS)
def test_attention_transfer_matches_official_formula(seed):
  s1, t1 = features(seed, (3, 8, 8, 4), (3, 8, 8, 6))  # channel counts may differ
  s2, t2 = features(seed + 10, (3, 4, 4, 8), (3, 4, 4, 16))
  got = distill.attention_transfer([s1, s2], [t1, t2])
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, np_at([s1, s2], [t1, t2]), **TOL)
  np.testing.assert_allclose(distill.attention_transfer((s1,), (t1,), beta=2.0, p=4),
                             np_at([s1], [t1], beta=2.0, p=4), **TOL)
  np.testing.assert_allclose(distill.attention_transfer([s1, s2], [s1, s2]), 0.0, atol=1e-7)


@pytest.mark.parametrize('seed', SEEDS)
def test_real_to_binary_attention_matches_paper(seed):
  s1, t1 = features(seed, (3, 8, 8, 4), (3, 8, 8, 6))
  s2, t2 = features(seed + 10, (3, 4, 4, 8), (3, 4, 4, 16))
  got = distill.real_to_binary_attention([s1, s2], [t1, t2])
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, np_r2b([s1, s2], [t1, t2]), **TOL)


def test_real_to_binary_attention_identical_is_zero_with_finite_gradient():
  s, _ = features(7)
  np.testing.assert_allclose(distill.real_to_binary_attention([s], [s]), 0.0, atol=1e-7)
  g = jax.grad(lambda x: distill.real_to_binary_attention([x], [s]))(jnp.asarray(s))
  assert np.all(np.isfinite(g))
  g = jax.grad(lambda x: distill.attention_transfer([x], [jnp.zeros_like(x)]))(jnp.zeros_like(s))
  assert np.all(np.isfinite(g))


def test_attention_losses_reject_mismatched_pairs():
  s, t = features(0, (2, 4, 4, 3), (2, 2, 2, 3))
  with pytest.raises(ValueError, match='equal N, H, W'):
    distill.attention_transfer([s], [t])
  with pytest.raises(ValueError, match='pair one to one'):
    distill.real_to_binary_attention([s, s], [s])


# ----------------------------------------------------------------------------- RKD
def embeddings(seed, n=7, ds=5, dt=9, outlier=False):
  rng = np.random.default_rng(seed)
  s = rng.normal(0, 1, (n, ds)).astype(np.float32)
  t = rng.normal(0, 3, (n, dt)).astype(np.float32)
  if outlier:  # one far teacher point: normalised distances differ by > 1 (Huber's linear part)
    t[0] += 40.0
  return s, t


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('outlier', [False, True])
def test_rkd_matches_formula(seed, outlier):
  s, t = embeddings(seed, outlier=outlier)
  dist, angle = np_rkd_distance(s, t), np_rkd_angle(s, t)
  np.testing.assert_allclose(distill.rkd_distance(s, t), dist, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(distill.rkd_angle(s, t), angle, rtol=1e-5, atol=1e-6)
  got = distill.rkd_loss(s, t)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, 25.0 * dist + 50.0 * angle, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(distill.rkd_loss(s, t, distance_weight=1.0, angle_weight=0.0),
                             dist, rtol=1e-5, atol=1e-6)


def test_rkd_huber_linear_part_is_exercised():
  s, t = embeddings(0, outlier=True)
  def psi(e):
    d = np.linalg.norm(f64(e)[:, None] - f64(e)[None], axis=-1)
    return d / (d.sum() / (len(e) * (len(e) - 1)))
  assert np.max(np.abs(psi(s) - psi(t))) > 1.0


@pytest.mark.slow
def test_rkd_identical_and_scaled_embeddings_give_zero():
  s, _ = embeddings(1)
  np.testing.assert_allclose(distill.rkd_loss(s, s), 0.0, atol=1e-5)
  # both relations are scale invariant: a scaled, shifted copy is also a perfect match
  np.testing.assert_allclose(distill.rkd_loss(s, 3.0 * s + 1.0), 0.0, atol=1e-4)
  g = jax.grad(distill.rkd_loss)(jnp.asarray(s), jnp.asarray(s))
  assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------- plumbing
def test_pool_embedding():
  s, _ = features(0, (2, 8, 6, 3))
  emb = distill.pool_embedding(s)
  assert emb.shape == (2, 3) and emb.dtype == jnp.float32
  np.testing.assert_allclose(emb, f64(s).mean(axis=(1, 2)), **TOL)
  tokens, _ = features(1, (2, 7, 5))  # (batch, tokens, features): mean over the tokens
  np.testing.assert_allclose(distill.pool_embedding(tokens), f64(tokens).mean(axis=1), **TOL)


def test_registry():
  assert registry.names('logit_loss') == ['dist', 'distribution', 'kd', 'mse', 'soft_ce']
  assert registry.names('feature_loss') == ['at', 'dmd', 'fitnet', 'real_to_binary', 'rkd',
                                            'tinybert']
  assert registry.get('logit_loss', 'kd') is objectives.kd
  # each loss declares its own default temperature (None: it takes none)
  assert {n: registry.info('logit_loss', n)['temperature'] for n in
          registry.names('logit_loss')} == {'kd': 4.0, 'dist': 1.0, 'distribution': None,
                                            'mse': None, 'soft_ce': 1.0}
  assert registry.info('feature_loss', 'fitnet')['adapter'] is not None
  assert registry.info('feature_loss', 'tinybert')['adapter'] is not None
  assert not any('adapter' in registry.info('feature_loss', n) for n in ('at', 'rkd', 'dmd'))
  assert not registry.info('feature_loss', 'rkd')['pairs']
  # the transformer losses read the sown taps: a plan instead of paired grids
  assert all('plan' in registry.info('feature_loss', n) for n in ('tinybert', 'dmd'))
  with pytest.raises(ConfigError, match=r"^Unknown distill\.logit_loss 'kl'\. "
                     r"Valid: dist, distribution, kd, mse, soft_ce\.$"):
    registry.get('logit_loss', 'kl')
  with pytest.raises(ConfigError, match=r"^Unknown distill\.feature_loss 'fitnets'\. Did you "
                     r"mean 'fitnet'\? Valid: at, dmd, fitnet, real_to_binary, rkd, "
                     r"tinybert\.$"):
    registry.get('feature_loss', 'fitnets')


def test_temperature_defaults_to_the_losses_own():
  """distill.temperature None: kd's 4 and DIST's 1 (its ImageNet setting, dist_loss's
  default); an explicit value applies to either."""
  assert distill_pkg.DEFAULTS['temperature'] is None
  s, t = logits(8, n=12)
  block = lambda **kw: ml_collections.ConfigDict({**distill_pkg.DEFAULTS, **kw})
  np.testing.assert_allclose(objectives.kd(s, t, block()), np_kd(s, t, 4.0), **TOL)
  np.testing.assert_allclose(objectives.dist(s, t, block()),
                             distill.dist_loss(s, t, temperature=1.0), **TOL)
  np.testing.assert_allclose(objectives.dist(s, t, block()), np_dist(s, t, 1.0), **TOL)
  np.testing.assert_allclose(objectives.kd(s, t, block(temperature=2.0)), np_kd(s, t, 2.0),
                             **TOL)
  np.testing.assert_allclose(objectives.dist(s, t, block(temperature=4.0)),
                             np_dist(s, t, 4.0), **TOL)


# ----------------------------------------------------------------------------- token taps
class TokenNet(nn.Module):
  """A tiny transformer-shaped model: Dense blocks over (batch, tokens, features) as
  top-level children, then a head on the token mean."""
  widths: tuple = (8, 8)
  num_classes: int = 10
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    for i, width in enumerate(self.widths):
      x = nn.gelu(nn.Dense(width, dtype=self.dtype, name=f'block{i}')(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x.mean(axis=1))


TOKENS, IN_FEATURES = 5, 6


def _token_model(name, num_classes, dtype, **options):
  assert name == 'token_teacher'
  return TokenNet(num_classes=num_classes, dtype=dtype, **options)


def _token_distiller(feature_loss, **kw):
  block = ml_collections.ConfigDict({
      **distill_pkg.DEFAULTS, 'logit_loss': '', 'feature_loss': feature_loss, **kw,
      'teachers': ({'init_from': 'random',
                    'model': {'name': 'token_teacher', 'widths': (16, 16, 16)}},)})
  return teachers_lib.Distiller(
      block, get_model=_token_model, image_shape=(TOKENS, IN_FEATURES), num_classes=10,
      compute_dtype='float32', student=TokenNet(widths=(8, 8)), seed=0,
      place=lambda v: jax.tree.map(jnp.asarray, v))


def _student_outputs(x):
  student = TokenNet(widths=(8, 8))
  variables = student.init(jax.random.key(3), x, train=False)
  return features_lib.apply_with_features(student, variables, x, train=False)


@pytest.mark.slow
def test_token_taps_group_by_token_count_and_pair():
  x = jax.random.normal(jax.random.key(0), (4, TOKENS, IN_FEATURES))
  teacher = TokenNet(widths=(16, 16, 16))
  logits_, stages = features_lib.apply_with_features(
      teacher, teacher.init(jax.random.key(1), x), x)
  assert logits_.shape == (4, 10)  # the 2-D head output is not a tap
  assert list(stages) == [(TOKENS,)] and [f.shape for f in stages[(TOKENS,)]] == [
      (4, TOKENS, 16)] * 3
  assert features_lib.layout((TOKENS,)) == 'tokens' and features_lib.layout((4, 4)) == 'image'
  _, student_stages = _student_outputs(x)
  pairs = features_lib.paired_stages(student_stages, stages, 4)
  assert [(s.shape, t.shape) for s, t in pairs] == [((4, TOKENS, 8), (4, TOKENS, 16))]
  assert pairs[0][1] is stages[(TOKENS,)][-1]
  blocks = features_lib.paired_stages(student_stages, stages, 4, blocks=True)
  assert len(blocks) == 2  # 2 student blocks pair with teacher blocks 2 and 3 (spaced)
  assert blocks[0][1] is stages[(TOKENS,)][1] and blocks[1][1] is stages[(TOKENS,)][2]
  assert features_lib.last_stage(stages) is stages[(TOKENS,)][-1]
  # a token tensor and a feature map never pair, whatever the numbers
  assert features_lib.paired_stages({(TOKENS,): [x]}, {(TOKENS, 1): [x[..., None]]}, 4) == []


@pytest.mark.slow
def test_token_models_distill_with_fitnet_and_rkd():
  x = jax.random.normal(jax.random.key(0), (4, TOKENS, IN_FEATURES))
  s_logits, s_stages = _student_outputs(x)
  d = _token_distiller('fitnet')
  assert d.needs_features
  assert d.adapter_shapes == [[((1, TOKENS, 8), (1, TOKENS, 16))]]
  adapters = d.init_adapters(jax.random.key(2))
  kernel = adapters['teacher0_stage0']['regressor']['kernel']
  assert kernel.shape == (8, 16)  # a Dense on the feature axis
  loss, terms = jax.jit(lambda a: d.loss(s_logits, s_stages, d.variables, a, x, 0.0, None))(
      adapters)
  assert np.isfinite(float(loss)) and float(loss) > 0
  _, t_stages = features_lib.apply_with_features(d.models[0], d.variables[0], x, train=False)
  adapted = f64(s_stages[(TOKENS,)][-1]) @ f64(kernel)  # zero bias at init
  expected = np.mean((adapted - f64(t_stages[(TOKENS,)][-1])) ** 2)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  np.testing.assert_allclose(terms['distill/feature_loss'], loss)
  grad = jax.grad(lambda a: d.loss(s_logits, s_stages, d.variables, a, x, 0.0, None)[0])(
      adapters)
  assert np.any(np.asarray(grad['teacher0_stage0']['regressor']['kernel']) != 0)

  r = _token_distiller('rkd')
  assert r.init_adapters(jax.random.key(2)) == {}
  loss, _ = r.loss(s_logits, s_stages, r.variables, {}, x, 0.0, None)
  expected = distill.rkd_loss(distill.pool_embedding(s_stages[(TOKENS,)][-1]),
                              distill.pool_embedding(t_stages[(TOKENS,)][-1]))
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize('name', ['at', 'real_to_binary'])
def test_attention_losses_refuse_token_features(name):
  with pytest.raises(ConfigError, match=rf"^distill.feature_loss='{name}' applies to image "
                     r"features only .* the student gives tokens features of shape "
                     r"\(1, 5, 8\); use fitnet or rkd there\.$"):
    _token_distiller(name)


# ----------------------------------------------------------------------------- device counts
def _per_device(loss_fn):
  """shard_map over all devices: per-device loss and the pmean of per-device gradients of
  a shared (replicated) linear layer, as the trainer combines them."""
  mesh = Mesh(np.asarray(jax.devices()), ('data',))

  def step(w, x, t):
    value, grad = jax.value_and_grad(lambda w: loss_fn(x @ w, t, 'data'))(w)
    return value, jax.lax.pmean(grad, 'data')

  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                               out_specs=(P(), P()), check_vma=False))


def _single_device(loss_fn):
  return jax.jit(jax.value_and_grad(lambda w, x, t: loss_fn(x @ w, t, None)))


RELATIONAL = {
    'dist': lambda s, t, axis: distill.dist_loss(s, t, temperature=2.0, axis_name=axis),
    'dist_intra': lambda s, t, axis: distill.dist_loss(s, t, beta=0.0, axis_name=axis),
    'dist_inter': lambda s, t, axis: distill.dist_loss(s, t, gamma=0.0, axis_name=axis),
    'rkd': lambda s, t, axis: distill.rkd_loss(s, t, axis_name=axis),
    'rkd_distance': lambda s, t, axis: distill.rkd_distance(s, t, axis_name=axis),
    'rkd_angle': lambda s, t, axis: distill.rkd_angle(s, t, axis_name=axis),
    # per-example: no axis inside; the trainer pmeans the value as a metric
    'kd': lambda s, t, axis: (distill.hinton_kd(s, t, 4.0) if axis is None else
                              jax.lax.pmean(distill.hinton_kd(s, t, 4.0), axis)),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(RELATIONAL))
def test_device_count_invariance(name):
  assert jax.device_count() == 4
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (16, 6)).astype(np.float32)
  w = rng.normal(0, 0.5, (6, 10)).astype(np.float32)
  t = rng.normal(0, 2, (16, 10)).astype(np.float32)
  loss_fn = RELATIONAL[name]
  value, grad = _per_device(loss_fn)(w, x, t)
  full_value, full_grad = _single_device(loss_fn)(w, x, t)
  np.testing.assert_allclose(value, full_value, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad, full_grad, rtol=1e-4, atol=1e-6)
  assert np.max(np.abs(full_grad)) > 1e-4  # a real gradient was compared


def test_relational_losses_differ_per_device_without_axis():
  """Sanity check of the harness: the relations of a device's share are not the global
  ones, so the invariance above comes from the collectives."""
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (16, 6)).astype(np.float32)
  w = rng.normal(0, 0.5, (6, 10)).astype(np.float32)
  t = rng.normal(0, 2, (16, 10)).astype(np.float32)
  for name in ('dist_intra', 'rkd'):
    local = lambda s, t, axis, f=RELATIONAL[name]: jax.lax.pmean(f(s, t, None), axis)
    value, _ = _per_device(local)(w, x, t)
    full_value, _ = _single_device(RELATIONAL[name])(w, x, t)
    assert abs(float(value) - float(full_value)) > 1e-3 * abs(float(full_value))


# ----------------------------------------------------------------------------- transformer losses
def np_soft_ce(s, t, temp):
  """TinyBERT eq. 9: mean over examples of -sum_c softmax(t/T) log softmax(s/T), no T^2."""
  ps, pt = np_softmax(f64(s) / temp), np_softmax(f64(t) / temp)
  return np.mean(-np.sum(pt * np.log(ps), axis=-1))


@pytest.mark.parametrize('temperature', [None, 2.0])
def test_soft_ce_is_tinyberts_prediction_loss(temperature):
  s, t = logits(9)
  block = ml_collections.ConfigDict({**distill_pkg.DEFAULTS, 'temperature': temperature})
  np.testing.assert_allclose(objectives.soft_ce(s, t, block),
                             np_soft_ce(s, t, temperature or 1.0), **TOL)


MASKED = np.finfo(np.float32).min


def transformer_arrays(seed, layers, batch=4, tokens=5, width=6, heads=2, head_dim=3,
                       padded=2):
  """Random hidden states (layers + 1), masked scores and Q, K, V (one per layer)."""
  rng = np.random.default_rng(seed)
  draw = lambda *shape: rng.normal(0, 1, shape).astype(np.float32)
  hidden = [draw(batch, tokens, width) for _ in range(layers + 1)]
  scores = []
  for _ in range(layers):
    sc = draw(batch, heads, tokens, tokens)
    sc[-1, :, :, tokens - padded:] = MASKED  # the last example's padded keys
    scores.append(sc)
  qkv = {name: [draw(batch, tokens, heads, head_dim) for _ in range(layers)]
         for name in ('query', 'key', 'value')}
  return {'hidden': hidden, 'scores': scores, **qkv}


def as_stages(arrays):
  """The stages apply_with_features returns for a BERT that sowed ``arrays``."""
  sown = {'hidden_states': tuple(arrays['hidden'])}
  for i in range(len(arrays['scores'])):
    sown[f'layer_{i}'] = {'attention': {'dot_product': {
        name: (arrays[name][i],) for name in ('scores', 'query', 'key', 'value')}}}
  return {(arrays['hidden'][0].shape[1],): list(arrays['hidden']), features_lib.SOWN: sown}


def test_transformer_taps_order_layers_as_numbers():
  arrays = transformer_arrays(0, 12, batch=1, tokens=2, width=2, heads=1, head_dim=1)
  taps = features_lib.transformer_taps(as_stages(arrays))
  for name in ('hidden', 'scores', 'query', 'key', 'value'):
    assert len(taps[name]) == len(arrays[name])
    assert all(a is b for a, b in zip(taps[name], arrays[name])), name  # layer_10 after _9
  assert features_lib.transformer_taps({(4, 4): [np.zeros((1, 4, 4, 2))]})['scores'] == []
  # the sown entry is not a grid: pairing and the deepest stage ignore it
  stages = as_stages(arrays)
  assert features_lib.grids(stages) == [(2,)]
  assert features_lib.last_stage(stages) is arrays['hidden'][-1]


def np_tinybert(s, t, projections, attention_weight):
  """TinyBERT eq. 10 (lambda = 1) with g(m) = m N / M: MSE(H_s W_m + b_m, H_t^g(m)) for
  m = 0..M (W_0: the embeddings' W_e; None: no projection) + w * MSE of the scores of each
  layer pair, scores at or below -100 (padding) set to 0 on both sides."""
  m_layers, n_layers = len(s['scores']), len(t['scores'])
  g = [m * n_layers // m_layers for m in range(m_layers + 1)]
  mse = lambda a, b: np.mean((f64(a) - f64(b)) ** 2)
  zero = lambda a: np.where(f64(a) <= -100, 0.0, f64(a))
  total = 0.0
  for m in range(m_layers + 1):
    hs = f64(s['hidden'][m])
    if projections is not None:
      kernel, bias = projections[m if len(projections) > 1 else 0]
      hs = hs @ f64(kernel) + f64(bias)
    total += mse(hs, t['hidden'][g[m]])
    if m:
      total += attention_weight * mse(zero(s['scores'][m - 1]), zero(t['scores'][g[m] - 1]))
  return total


def _projections(seed, count, width_s, width_t):
  rng = np.random.default_rng(seed)
  return [(rng.normal(0, 0.5, (width_s, width_t)).astype(np.float32),
           rng.normal(0, 0.1, width_t).astype(np.float32)) for _ in range(count)]


def _adapters(projections):
  return {objectives.adapter_key(0, j): {'regressor': {'kernel': k, 'bias': b}}
          for j, (k, b) in enumerate(projections)}


def _block(**kw):
  return ml_collections.ConfigDict({**distill_pkg.DEFAULTS, **kw})


@pytest.mark.parametrize('projection,attention_weight', [
    ('layer', 1.0), ('shared', 1.0), ('none', 0.0), ('layer', 0.5)])
def test_tinybert_objective_matches_numpy(projection, attention_weight):
  s = transformer_arrays(1, 2, width=4)
  t = transformer_arrays(2, 4, width=4 if projection == 'none' else 6)
  count = {'layer': 3, 'shared': 1, 'none': 0}[projection]
  projections = _projections(3, count, 4, t['hidden'][0].shape[-1])
  block = _block(tinybert_projection=projection, tinybert_attention_weight=attention_weight)
  got = objectives.tinybert(as_stages(s), as_stages(t), config=block,
                            adapters=_adapters(projections), teacher_index=0)
  want = np_tinybert(s, t, projections if count else None, attention_weight)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # the plan: one adapter per hidden-state pair ('layer'), one ('shared') or none
  plan = objectives._tinybert_plan(as_stages(s), as_stages(t), block, 0)
  assert len(plan) == count
  assert all(ps == (4, 5, 4) and pt == t['hidden'][0].shape for ps, pt in plan)
  np.testing.assert_allclose(objectives.tinybert(
      as_stages(t), as_stages(t), config=_block(tinybert_projection='none'), adapters=None,
      teacher_index=0), 0.0)


def np_direction(a, b):
  a, b = f64(a), f64(b)
  return np.linalg.norm((a / np.linalg.norm(a) - b / np.linalg.norm(b)).ravel())


def np_dmd_objective(s, t, hidden_weight):
  """BiBERT: sum over layer pairs and F in Q, K, V of the direction distance of P = F F^T
  per head (whole-tensor norms), + w * the direction distance of each hidden-state pair."""
  m_layers, n_layers = len(s['scores']), len(t['scores'])
  g = [m * n_layers // m_layers for m in range(m_layers + 1)]
  sim = lambda f: np.einsum('bqhd,bkhd->bhqk', f64(f), f64(f))
  total = 0.0
  for m in range(1, m_layers + 1):
    for name in ('query', 'key', 'value'):
      total += np_direction(sim(s[name][m - 1]), sim(t[name][g[m] - 1]))
  return total + hidden_weight * sum(np_direction(s['hidden'][m], t['hidden'][g[m]])
                                     for m in range(m_layers + 1))


@pytest.mark.parametrize('hidden_weight', [1.0, 0.0, 2.5])
def test_dmd_objective_matches_numpy(hidden_weight):
  s, t = transformer_arrays(4, 2), transformer_arrays(5, 4)
  for name in ('query', 'key', 'value'):  # head_dim may differ: P is tokens x tokens
    t[name] = [np.concatenate([f, f[..., :1]], -1) for f in t[name]]
  got = objectives.dmd(as_stages(s), as_stages(t), config=_block(dmd_hidden_weight=hidden_weight),
                       adapters=None, teacher_index=0)
  np.testing.assert_allclose(got, np_dmd_objective(s, t, hidden_weight), rtol=1e-5)
  assert objectives._dmd_plan(as_stages(s), as_stages(t), _block(), 0) == []


def test_transformer_losses_refuse_models_that_do_not_fit():
  s, t = as_stages(transformer_arrays(0, 2)), as_stages(transformer_arrays(1, 3))
  with pytest.raises(ConfigError, match=r"^distill.feature_loss='tinybert': the uniform "
                     r"mapping needs 0 < M <= N with M dividing N, got M=2 student and N=3"):
    objectives._tinybert_plan(s, t, _block(), 0)
  cnn = {(4, 4): [np.zeros((1, 4, 4, 8))]}
  with pytest.raises(ConfigError, match=r"^distill.feature_loss='dmd' needs transformers that "
                     r"sow their hidden states and every layer's query, key, value"):
    objectives._dmd_plan(cnn, t, _block(), 0)
  wide = as_stages(transformer_arrays(1, 4, width=8))
  with pytest.raises(ConfigError, match=r"hidden states without a projection of the same "
                     r"tokens and width"):
    objectives._tinybert_plan(s, wide, _block(tinybert_projection='none'), 0)
  with pytest.raises(ConfigError, match=r"hidden-state directions"):
    objectives._dmd_plan(s, wide, _block(), 0)
  objectives._dmd_plan(s, wide, _block(dmd_hidden_weight=0.0), 0)  # Q, K, V only: fits
  three_heads = as_stages(transformer_arrays(1, 4, heads=3))
  with pytest.raises(ConfigError, match=r"attention scores of the same heads and tokens"):
    objectives._tinybert_plan(s, three_heads, _block(), 0)
  with pytest.raises(ConfigError, match=r"^distill.tinybert_projection must be one of layer, "
                     r"shared, none, got 'per_layer'\.$"):
    objectives._tinybert_plan(s, t, _block(tinybert_projection='per_layer'), 0)


def _transformer_per_device(name, block):
  """(sharded step, single-device step) of a transformer feature loss whose student taps
  come from a shared (replicated) linear layer w; teacher taps are data."""
  loss_of = registry.get('feature_loss', name)

  def student(x, w):
    hidden = [jnp.tanh((i + 1.0) * x @ w) for i in range(3)]  # M = 2 layers
    qkv = {n: [jnp.sin(h * (k + 1.0)).reshape(*h.shape[:2], 2, 3) for h in hidden[1:]]
           for k, n in enumerate(('query', 'key', 'value'))}
    scores = [jnp.einsum('bqhd,bkhd->bhqk', q, k) for q, k in zip(qkv['query'], qkv['key'])]
    scores = [jnp.where(jnp.arange(5) < 3 + (i % 2), sc, MASKED) for i, sc in enumerate(scores)]
    return as_stages({'hidden': hidden, 'scores': scores, **qkv})

  def loss(w, adapters, x, t, axis):
    value = loss_of(student(x, w), as_stages(t), config=block, adapters=adapters,
                    teacher_index=0, axis_name=axis)
    if name == 'tinybert' and axis is not None:  # per example: the trainer pmeans it
      value = jax.lax.pmean(value, axis)
    return value

  def step(w, adapters, x, t):
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(w, adapters, x, t, 'data')
    return value, jax.lax.pmean(grads, 'data')

  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P('data'), P('data')),
                                  out_specs=(P(), P()), check_vma=False))
  single = jax.jit(lambda w, a, x, t: jax.value_and_grad(loss, argnums=(0, 1))(
      w, a, x, t, None))
  return sharded, single


@pytest.mark.slow
@pytest.mark.parametrize('name', ['tinybert', 'dmd'])
def test_transformer_losses_do_not_depend_on_the_device_count(name):
  assert jax.device_count() == 4
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (8, 5, 4)).astype(np.float32)
  w = rng.normal(0, 0.5, (4, 6)).astype(np.float32)
  t = transformer_arrays(6, 4, batch=8)
  adapters = _adapters(_projections(7, 3, 6, 6)) if name == 'tinybert' else {}
  sharded, single = _transformer_per_device(name, _block())
  value, (grad_w, grad_a) = sharded(w, adapters, x, t)
  full_value, (full_w, full_a) = single(w, adapters, x, t)
  np.testing.assert_allclose(value, full_value, rtol=1e-5)
  np.testing.assert_allclose(grad_w, full_w, rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_a,
               full_a)
  assert np.abs(full_w).max() > 1e-3


BERT = {'name': 'bert_tiny', 'num_layers': 2, 'hidden_size': 16, 'num_heads': 2,
        'vocab_size': 120, 'max_position_embeddings': 12}


def _bert_distiller(feature_loss, student_layers=2, teacher_layers=4, **kw):
  from mcj.models import get_model
  block = _block(logit_loss='soft_ce', feature_loss=feature_loss, **kw, teachers=(
      {'init_from': 'random', 'model': {**BERT, 'num_layers': teacher_layers}},))
  options = {k: v for k, v in BERT.items() if k != 'name'}
  student = get_model('bert_tiny', 2, **{**options, 'num_layers': student_layers})
  return student, teachers_lib.Distiller(
      block, get_model=get_model, image_shape=(10,), num_classes=2, compute_dtype='float32',
      student=student, seed=0, place=lambda v: jax.tree.map(jnp.asarray, v))


@pytest.mark.slow  # compiles a BERT / ViT: the full tier
def test_bert_distillers_plan_their_adapters_and_compute():
  student, d = _bert_distiller('tinybert')
  assert d.adapter_shapes == [[((1, 10, 16), (1, 10, 16))] * 3]  # W_e, then W_1, W_2
  adapters = d.init_adapters(jax.random.key(0))
  assert sorted(adapters) == [f'teacher0_stage{j}' for j in range(3)]
  ids = np.array([[101, 5, 7, 9, 102, 11, 13, 102, 0, 0], [101, 3, 4, 5, 6, 102, 8, 9, 10, 102]])
  variables = student.init(jax.random.key(1), ids)
  s_logits, s_stages = features_lib.apply_with_features(student, variables, ids, train=False)
  loss, terms = d.loss(s_logits, s_stages, d.variables, adapters, ids, 0.0, None)
  assert np.isfinite(float(loss)) and float(terms['distill/feature_loss']) > 0
  with pytest.raises(ConfigError, match=r"^distill.feature_loss='dmd': the uniform mapping "
                     r"needs 0 < M <= N with M dividing N, got M=3 student and N=4"):
    _bert_distiller('dmd', student_layers=3)


BIBERT_STUDENT = {'input_quantizer': 'ste_sign', 'kernel_quantizer': 'bibert_weight',
                  'query_key_quantizer': 'ste_sign', 'value_quantizer': 'ste_sign',
                  'attention_score_quantizer': 'bibert_bool', 'quantize_pooler': True}


def _text_pipeline():
  """A tiny BERT teacher on synthetic token ids, then three students through the trainer:
  TinyBERT (half the layers, DistilBERT-initialised, a fresh learned quantizer, lr 0 so
  its params stay what the init gave), BiBERT (DMD) and BiT (hidden-state MSE)."""
  model = {**BERT, 'vocab_size': 300, 'max_position_embeddings': 16}
  teacher = ({'init_from': 'teacher'},)
  return {
      'seed': 0, 'batch_size': 8, 'eval_batch_size': 32, 'total_steps': 2,
      'log_every_steps': 1, 'checkpoint_every_steps': 0,
      'data': {'name': 'synthetic', 'vocab_size': 300, 'max_length': 16, 'num_classes': 2,
               'num_train_examples': 64, 'num_eval_examples': 64},
      'optimizer': {'name': 'adamw', 'lr': 1e-3, 'weight_decay': 0.0},
      'schedule': {'name': 'constant'},
      'stages': (
          {'name': 'teacher', 'model': model},
          {'name': 'tinybert', 'model': {**model, 'num_layers': 1,
                                         'attention_quantizer': 'lsq(bits=2, signed=False)'},
           'init_from': 'teacher', 'init_from_layers': (1,), 'init_from_partial': True,
           'optimizer': {'lr': 0.0},
           'distill': {'teachers': teacher, 'label_weight': 0.0, 'logit_loss': 'soft_ce',
                       'feature_loss': 'tinybert'}},
          {'name': 'bibert', 'model': {**model, **BIBERT_STUDENT}, 'init_from': 'teacher',
           'distill': {'teachers': teacher, 'label_weight': 0.5, 'logit_loss': 'soft_ce',
                       'feature_loss': 'dmd'}},
          {'name': 'bit', 'model': {**model, 'hidden_act': 'relu',
                                    'input_quantizer': 'bit_elastic(threshold="channel")',
                                    'kernel_quantizer': 'bit_weight'},
           'init_from': 'teacher', 'init_from_partial': True,
           'distill': {'teachers': teacher, 'label_weight': 0.0, 'logit_loss': 'soft_ce',
                       'feature_loss': 'tinybert', 'tinybert_projection': 'none',
                       'tinybert_attention_weight': 0.0}},
      ),
  }


@pytest.mark.slow
def test_bert_students_distil_through_the_trainer(tmp_path):
  from mcj.core import checkpoint as checkpoint_lib
  from mcj.train import trainer
  from mcj.train.schema import merge_config
  from tests.helpers import read_metrics
  results = trainer.train_and_evaluate(merge_config(_text_pipeline()), str(tmp_path))
  assert [s['name'] for s in results['stages']] == ['teacher', 'tinybert', 'bibert', 'bit']
  for stage in results['stages'][1:]:
    lines = [m for m in read_metrics(tmp_path / stage['name']) if 'train/loss' in m]
    assert [m['step'] for m in lines] == [1, 2]
    for m in lines:
      assert np.isfinite(m['distill/feature_loss']) and m['distill/feature_loss'] > 0
      assert np.isfinite(m['distill/logit_loss'])
    assert 0.0 <= stage['eval/accuracy'] <= 1.0
  # DistilBERT's init: the student's layer_0 is the teacher's layer_1 (lr 0: unchanged);
  # the learned quantizer the teacher lacks is initialised on the first batch with the
  # teacher's weights; the rest is the teacher's.
  t = checkpoint_lib.load_variables(str(tmp_path / 'teacher'))['params']
  s = checkpoint_lib.load_variables(str(tmp_path / 'tinybert'))['params']
  products = s['layer_0']['attention'].pop('dot_product')
  assert list(products) == ['LSQ_0'] and 0 < float(products['LSQ_0']['step']) < 10
  jax.tree.map(np.testing.assert_array_equal, s['layer_0'], t['layer_1'])
  for name in ('embeddings', 'pooler', 'classifier'):
    jax.tree.map(np.testing.assert_array_equal, s[name], t[name])
