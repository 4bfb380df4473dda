"""Schedules, optimizers, weight decay and the loss, checked against their formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mcj.compress import binary as binary_lib
from mcj.core import registry
from mcj.train import optim
from mcj.core.config import ConfigError
from mcj.train import cross_entropy, merge_config


def config(**kw):
  base = {'model': {'name': 'resnet20'}, 'total_steps': 100}
  for key, value in kw.items():
    block, _, leaf = key.partition('__')
    if leaf:
      base.setdefault(block, {})[leaf] = value
    else:
      base[key] = value
  return merge_config(base)


def test_warmup_then_cosine():
  c = config(optimizer__lr=0.4, schedule__name='cosine', schedule__warmup_steps=10)
  s = optim.make_schedule(c, total_steps=110, steps_per_epoch=10.0)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(0.2)       # linear warmup
  assert float(s(10)) == pytest.approx(0.4)
  for t in (30, 60, 100):                        # 0.5 lr (1 + cos(pi t/T)), t after warmup
    assert float(s(10 + t)) == pytest.approx(0.2 * (1 + math.cos(math.pi * t / 100)), rel=1e-5)


def test_cosine_end_factor_and_warmup_epochs():
  c = config(optimizer__lr=1.0, schedule__warmup_epochs=2.0, schedule__end_factor=0.1)
  s = optim.make_schedule(c, total_steps=120, steps_per_epoch=10.0)
  assert float(s(20)) == pytest.approx(1.0)
  assert float(s(120)) == pytest.approx(0.1, rel=1e-5)


def test_linear_decay():
  c = config(optimizer__lr=1.0, schedule__name='linear')
  s = optim.make_schedule(c, total_steps=100, steps_per_epoch=10.0)
  assert [float(s(t)) for t in (0, 25, 100)] == pytest.approx([1.0, 0.75, 0.0])


def test_step_decay_is_cumulative_at_epoch_boundaries():
  c = config(optimizer__lr=0.1, schedule__name='step', schedule__step_epochs=(3.0, 6.0),
             schedule__step_factor=0.1)
  s = optim.make_schedule(c, total_steps=100, steps_per_epoch=10.0)
  assert float(s(29)) == pytest.approx(0.1)
  assert float(s(30)) == pytest.approx(0.01)
  assert float(s(60)) == pytest.approx(0.001)


def test_weight_decay_mask_spares_bn_and_biases():
  params = {'conv': {'kernel': jnp.ones((3, 3, 1, 2))}, 'bn': {'scale': jnp.ones(2),
                                                              'bias': jnp.ones(2)},
            'dense': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
  mask = optim.decay_mask(params)
  assert mask == {'conv': {'kernel': True}, 'bn': {'scale': False, 'bias': False},
                  'dense': {'kernel': True, 'bias': False}}


def _one_step(c, params, grads):
  tx = optim.make_optimizer(c, optim.make_schedule(c, 100, 10.0))
  updates, _ = tx.update(grads, tx.init(params), params)
  return jax.tree.map(lambda p, u: p + u, params, updates)


def test_sgd_coupled_l2_formula():
  c = config(optimizer__lr=0.5, optimizer__weight_decay=0.1, optimizer__momentum=0.9,
             schedule__name='constant')
  params = {'w': jnp.array([[2.0, -1.0]]), 'b': jnp.array([3.0])}
  grads = {'w': jnp.array([[0.5, 0.5]]), 'b': jnp.array([1.0])}
  new = _one_step(c, params, grads)
  # First momentum step: w - lr (g + wd w); the bias is not decayed.
  np.testing.assert_allclose(new['w'], [[2.0 - 0.5 * (0.5 + 0.2), -1.0 - 0.5 * (0.5 - 0.1)]])
  np.testing.assert_allclose(new['b'], [3.0 - 0.5 * 1.0])


def test_adamw_decoupled_decay_formula():
  c = config(optimizer__name='adamw', optimizer__lr=0.1, optimizer__weight_decay=0.5,
             schedule__name='constant')
  params = {'w': jnp.array([[2.0]]), 'b': jnp.array([2.0])}
  grads = {'w': jnp.array([[3.0]]), 'b': jnp.array([3.0])}
  new = _one_step(c, params, grads)
  # First Adam step moves by lr * sign(g) (bias-corrected m/sqrt(v) = 1), then lr * wd * w.
  np.testing.assert_allclose(new['w'], [[2.0 - 0.1 * 1.0 - 0.1 * 0.5 * 2.0]], rtol=1e-6)
  np.testing.assert_allclose(new['b'], [2.0 - 0.1], rtol=1e-6)


def test_gradient_clipping_by_global_norm():
  c = config(optimizer__lr=1.0, optimizer__momentum=0.0, optimizer__grad_clip_norm=1.0,
             schedule__name='constant')
  params = {'w': jnp.zeros((1, 2))}
  new = _one_step(c, params, {'w': jnp.array([[3.0, 4.0]])})  # norm 5 -> clipped to 1
  np.testing.assert_allclose(new['w'], [[-0.6, -0.8]], rtol=1e-6)


@pytest.mark.parametrize('name', registry.names('optimizer'))
def test_every_optimizer_reduces_a_quadratic(name):
  c = config(optimizer__name=name, optimizer__lr=0.05, schedule__name='constant')
  tx = optim.make_optimizer(c, optim.make_schedule(c, 100, 10.0))
  params = {'w': jnp.array([[1.0, -2.0]])}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p['w'] ** 2)
  for _ in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  assert float(loss(params)) < 5.0 * 0.5


def test_label_smoothing_formula():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  logp = jax.nn.log_softmax(logits)[0]
  eps = 0.3
  expected = -((1 - eps + eps / 3) * logp[1] + eps / 3 * (logp[0] + logp[2]))
  got = cross_entropy(logits, jnp.array([1]), 3, label_smoothing=eps)[0]
  assert float(got) == pytest.approx(float(expected), rel=1e-6)
  assert float(cross_entropy(logits, jnp.array([0]), 3)[0]) == pytest.approx(float(-logp[0]))


def test_total_steps_from_epochs_and_exclusivity():
  assert optim.total_steps_of(config(total_steps=None, total_epochs=2.0, batch_size=100),
                              1050) == 21
  with pytest.raises(ConfigError, match='exactly one of'):
    optim.total_steps_of(config(total_epochs=2.0), 1000)


def test_bop_flips_where_momentum_agrees_with_the_weight_sign():
  tx = binary_lib.bop(threshold=0.1, gamma=0.5)
  w = jnp.array([0.3, -0.7, 0.2, -0.1, 0.0])
  state = tx.init(w)
  g = jnp.array([1.0, -1.0, -1.0, 0.1, 1.0])
  updates, state = tx.update(g, state, w)
  # m = 0 + 0.5 (g - 0) = g / 2; flip iff w * m > 0.1
  np.testing.assert_allclose(state.momentum, g / 2)
  np.testing.assert_allclose(w + updates, [-1.0, 1.0, 1.0, -1.0, 1.0], rtol=1e-7)  # sign(0)=+1
  w = jnp.array([-1.0, 1.0, 1.0, -1.0, 1.0])
  updates, state = tx.update(g, state, w)
  # m = 0.5 + 0.5 (1 - 0.5) = 0.75 ...; weights now +-1: flip again iff w * m > 0.1
  np.testing.assert_allclose(state.momentum, 0.75 * g)
  np.testing.assert_array_equal(w + updates, [-1.0, 1.0, 1.0, -1.0, -1.0])  # exact from +-1
  assert int(state.count) == 2


def test_binary_block_routes_kernels_to_bop_and_clips_latents():
  import ml_collections
  config = ml_collections.ConfigDict({
      'optimizer': {'name': 'sgd', 'lr': 0.5, 'momentum': 0.0, 'weight_decay': 0.0},
      'binary': {'optimizer': 'bop', 'bop_threshold': 0.0, 'bop_gamma': 1.0, 'latent_clip': 0.0}})
  params = {'binary': {'kernel': jnp.array([[0.5, -0.5]])}, 'real': {'kernel': jnp.array([[0.5]])}}
  mask = {'binary': {'kernel': True}, 'real': {'kernel': False}}
  tx = optim.make_optimizer(config, optax.constant_schedule(0.5), mask)
  grads = {'binary': {'kernel': jnp.array([[1.0, 1.0]])}, 'real': {'kernel': jnp.array([[1.0]])}}
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new['binary']['kernel'], [[-1.0, -1.0]])  # flip, sign
  np.testing.assert_allclose(new['real']['kernel'], [[0.0]])  # SGD: 0.5 - 0.5 * 1

  config.binary.optimizer, config.binary.latent_clip = '', 0.6
  tx = optim.make_optimizer(config, optax.constant_schedule(0.5), mask)
  grads = {'binary': {'kernel': jnp.array([[-1.0, 1.0]])}, 'real': {'kernel': jnp.array([[-1.0]])}}
  new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  np.testing.assert_allclose(new['binary']['kernel'], [[0.6, -0.6]])  # 1.0, -1.0 clipped
  np.testing.assert_allclose(new['real']['kernel'], [[1.0]])  # not clipped


def test_binary_block_without_binary_layers_is_a_clear_error():
  import ml_collections
  config = ml_collections.ConfigDict({'optimizer': {'name': 'adam', 'lr': 0.1},
                                      'binary': {'optimizer': 'bop', 'latent_clip': 0.0}})
  with pytest.raises(ConfigError, match='no binary'):
    optim.make_optimizer(config, optax.constant_schedule(0.1), {'w': False})
  config.binary.optimizer = 'rmsprop'
  with pytest.raises(ConfigError, match='Unknown binary optimizer'):
    optim.make_optimizer(config, optax.constant_schedule(0.1), {'w': True})


def test_binary_block_named_optimizer_uses_its_own_lr_and_no_decay():
  import ml_collections
  config = ml_collections.ConfigDict({
      'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.0, 'weight_decay': 0.5},
      'binary': {'optimizer': 'adam', 'lr': 0.01, 'latent_clip': 0.0}})
  params = {'binary': {'kernel': jnp.array([[0.5, -0.5]])}, 'real': {'kernel': jnp.array([[0.5]])}}
  mask = {'binary': {'kernel': True}, 'real': {'kernel': False}}
  tx = optim.make_optimizer(config, lambda step: 0.1 * (1.0 - step / 10), mask)
  grads = {'binary': {'kernel': jnp.array([[2.0, -3.0]])}, 'real': {'kernel': jnp.array([[1.0]])}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step is -lr * g / |g| (up to eps); no weight decay on the binary kernels.
  np.testing.assert_allclose(updates['binary']['kernel'], [[-0.01, 0.01]], rtol=1e-5)
  # SGD with coupled decay: -lr * (g + wd * w).
  np.testing.assert_allclose(updates['real']['kernel'], [[-0.1 * (1.0 + 0.5 * 0.5)]], rtol=1e-6)


def test_quantizer_lr_trains_the_learned_scales_at_their_own_rate():
  """optimizer.quantizer_lr: LSQ steps and BiT / PACT alphas follow the schedule scaled to
  their own peak lr, without weight decay (BiT's --clip_lr); BiT's thresholds (beta) and
  the kernels keep the weights' lr (SGD: the update is -lr * g)."""
  c = config(optimizer__name='sgd', optimizer__momentum=0.0, optimizer__lr=0.5,
             optimizer__quantizer_lr=0.05, optimizer__weight_decay=0.1)
  params = {'Dense_0': {'kernel': jnp.ones((2, 2)), 'LSQ_0': {'step': jnp.float32(2.0)},
                        'ElasticQuant_0': {'alpha': jnp.float32(2.0), 'beta': jnp.ones(3)}},
            'PACT_3': {'alpha': jnp.float32(2.0)}, 'step': jnp.float32(2.0)}
  schedule = optim.make_schedule(c, total_steps=100, steps_per_epoch=10.0)
  tx = optim.make_optimizer(c, schedule)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = float(schedule(0))
  u = updates['Dense_0']
  assert float(u['LSQ_0']['step']) == pytest.approx(-lr * 0.1)  # 0.05 / 0.5 of the schedule
  assert float(u['ElasticQuant_0']['alpha']) == pytest.approx(-lr * 0.1)
  assert float(updates['PACT_3']['alpha']) == pytest.approx(-lr * 0.1)
  np.testing.assert_allclose(u['ElasticQuant_0']['beta'], -lr * np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(u['kernel'], -lr * (1 + 0.1) * np.ones((2, 2)), rtol=1e-6)
  assert float(updates['step']) == pytest.approx(-lr)  # not a quantizer's: the weights' lr
  with pytest.raises(ConfigError, match='quantizer_lr must be >= 0'):
    config(optimizer__quantizer_lr=-1.0)
  with pytest.raises(ConfigError, match='quantizer_lr follows the schedule'):
    optim.make_optimizer(config(optimizer__lr=0.0, optimizer__quantizer_lr=0.1), schedule)
