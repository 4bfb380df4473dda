"""Zero-cost proxies against their papers' formulas, on networks small enough to write the
gradients, Hessian products and activation codes by hand in numpy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj.core import registry
from mcj.search import proxies

N, D, H, C = 6, 5, 4, 3


class Linear(nn.Module):
  """logits = x W + b."""
  num_classes: int = C

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_classes, name='fc')(x.reshape(x.shape[0], -1))


class TwoLayer(nn.Module):
  """logits = relu(x W1 + b1) W2 + b2 (computed in ``dtype``, as mcj models)."""
  num_classes: int = C
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    h = jax.nn.relu(nn.Dense(H, dtype=self.dtype, name='fc1')(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='fc2')(h).astype(jnp.float32)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(N, D)).astype(np.float32),
          rng.integers(0, C, N).astype(np.int32))


def _variables(model, seed=0):
  v = model.init(jax.random.key(seed), jnp.zeros((1, D)))
  # Non-zero biases, so formulas that must ignore them are tested too.
  return jax.tree.map(lambda x: x + 0.1 * np.arange(x.size).reshape(x.shape) / x.size, v)


def _np(v):
  p = jax.tree.map(np.asarray, v['params'])
  return {k: (np.float64(p[k]['kernel']), np.float64(p[k]['bias'])) for k in p}


def _softmax(z):
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _linear_grads(x, y, w, b):
  """CE mean of x W + b: p, dL/dz = (p - onehot) / N, dL/dW = x^T dL/dz."""
  z = x @ w + b
  p = _softmax(z)
  dz = (p - np.eye(C)[y]) / len(y)
  return z, p, dz, x.T @ dz


def _score(name, model, v, x, y):
  return registry.get('search_proxy', name)(model, v, jnp.asarray(x), jnp.asarray(y), C)


def test_grad_norm_and_snip(batch):
  x, y = batch
  model = Linear()
  v = _variables(model)
  w, b = _np(v)['fc']
  _, _, _, gw = _linear_grads(np.float64(x), y, w, b)
  assert _score('grad_norm', model, v, x, y) == pytest.approx(np.linalg.norm(gw), rel=1e-5)
  assert _score('snip', model, v, x, y) == pytest.approx(np.abs(w * gw).sum(), rel=1e-5)


def test_grasp_is_minus_w_times_hessian_gradient(batch):
  x, y = batch
  x = np.float64(x)
  model = Linear()
  v = _variables(model)
  w, b = _np(v)['fc']
  _, p, _, g = _linear_grads(x, y, w, b)
  # Hessian of the mean CE over W, applied to g: (1/N) sum_n x_n [(diag p_n - p_n p_n^T)
  # (g^T x_n)]^T.
  hg = np.zeros_like(w)
  for n in range(N):
    s = np.diag(p[n]) - np.outer(p[n], p[n])
    hg += np.outer(x[n], s @ (g.T @ x[n])) / N
  assert _score('grasp', model, v, x, y) == pytest.approx(-(w * hg).sum(), rel=1e-4)


def test_fisher_channels_weighted_by_fan_in(batch):
  x, y = batch
  model = Linear()
  v = _variables(model)
  w, b = _np(v)['fc']
  z, _, dz, _ = _linear_grads(np.float64(x), y, w, b)
  delta = 0.5 * np.mean((z * dz) ** 2, axis=0)  # per output channel
  assert _score('fisher', model, v, x, y) == pytest.approx(np.abs(delta).sum() * D, rel=1e-4)


def test_synflow_on_absolute_weights_and_a_ones_input(batch):
  x, y = batch
  model = TwoLayer()
  v = _variables(model)
  (w1, b1), (w2, _) = _np(v)['fc1'], _np(v)['fc2']
  w1, b1, w2 = np.abs(w1), np.abs(b1), np.abs(w2)
  # R = 1^T(|W1|^T 1 + |b1|) |W2| + ...: every unit is active; dR/dW1_dh = sum_c |W2_hc|,
  # dR/dW2_hc = h_h = sum_d |W1_dh| + |b1_h|.
  hidden = w1.sum(axis=0) + b1
  expected = (w1 * w2.sum(axis=1)[None, :]).sum() + (w2 * hidden[:, None]).sum()
  assert _score('synflow', model, v, x, y) == pytest.approx(expected, rel=1e-9)


def test_synflow_runs_in_float64_beyond_float32_range():
  class Deep(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
      for i in range(18):
        x = nn.Dense(256, name=f'fc{i}', kernel_init=nn.initializers.constant(1.0),
                     dtype=self.dtype)(x)
      return x.astype(jnp.float32)

  model = Deep()
  v = model.init(jax.random.key(0), jnp.zeros((1, 4)))
  score = proxies.synflow(model, v, jnp.zeros((2, 4)), None, 256)
  # Each layer's sum of W dR/dW is R = 4 x 256^18 (Euler: R is linear in each layer's
  # kernel and the biases are 0), 1.6e45: float32 would overflow.
  assert score == pytest.approx(18 * 4 * 256.0 ** 18, rel=1e-9)


def test_jacob_cov_and_naswot_from_hand_made_codes(batch):
  x, y = batch
  x = np.float64(x)
  model = TwoLayer()
  v = _variables(model)
  (w1, b1), (w2, _) = _np(v)['fc1'], _np(v)['fc2']
  z = x @ w1 + b1
  active = (z > 0).astype(np.float64)
  # d(sum_c y_c)/dx_n = W1 diag(relu'(z_n)) W2 1.
  jac = (active * w2.sum(axis=1)[None, :]) @ w1.T
  corr = np.corrcoef(jac)
  eig = np.linalg.eig(corr)[0].real  # the reference's general eig
  k = 1e-5
  expected = -np.sum(np.log(eig + k) + 1 / (eig + k))
  assert _score('jacob_cov', model, v, x, y) == pytest.approx(expected, rel=1e-4)
  kernel = active @ active.T + (1 - active) @ (1 - active).T
  assert _score('naswot', model, v, x, y) == pytest.approx(np.linalg.slogdet(kernel)[1],
                                                           rel=1e-9)


def test_naswot_counts_only_relus():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, D)), jnp.float32)

  class Mixed(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = jax.nn.hard_swish(nn.Dense(8, name='a')(x))
      x = jax.nn.relu(nn.Dense(6, name='b')(x))
      return nn.Dense(C, name='c')(x)

  model = Mixed()
  v = model.init(jax.random.key(0), x)
  found = proxies.relu_inputs(model, v, x)
  assert [tuple(f.shape) for f in found] == [(4, 6)]


@pytest.mark.slow
def test_every_proxy_runs_on_a_batch_norm_network():
  from mcj.models import get_model
  model = get_model('nb201', 10, ops=['nor_conv_3x3', 'skip_connect', 'nor_conv_1x1',
                                      'avg_pool_3x3', 'none', 'nor_conv_3x3'],
                    channels=4, cells_per_stage=1)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 3)), jnp.float32)
  y = jnp.arange(8) % 10
  v = model.init(jax.random.key(0), x[:1])
  scores = {n: registry.get('search_proxy', n)(model, v, x, y, 10) for n in proxies.PROXIES}
  assert all(np.isfinite(s) for s in scores.values()), scores
  assert scores['synflow'] > 0 and scores['snip'] > 0 and scores['grad_norm'] > 0
