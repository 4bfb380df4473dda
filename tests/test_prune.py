"""Pruning: schedules and distributions against their formulas, masks per algorithm, the
optax wrapper (zeros stay zero, rewinding), quantized layers, the trainer (config block,
results, kill and resume, 1 vs 4 devices, with distillation and binary layers), summary."""
import json
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mcj.nn import layers
from mcj.compress.prune import algorithms
from mcj.compress.prune import pruner as prune
from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.train import default_config, train_and_evaluate
from tests.helpers import (TINY, assert_trees_equal, final_params, kill_step, read_metrics,
                           run_cli, start_cli, tiny, train_losses, wait_for_step)


class Net(nn.Module):
  """conv(4) -> BN -> conv(8) -> BN -> conv(8, no BN, bias) -> dense(16) -> dense(10)."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=True, name='bn0')(
        nn.Conv(4, (3, 3), use_bias=False, name='conv0')(x)))
    x = nn.relu(nn.BatchNorm(use_running_average=True, name='bn1')(
        nn.Conv(8, (3, 3), use_bias=False, name='conv1')(x)))
    x = nn.relu(nn.Conv(8, (3, 3), name='conv2')(x))
    x = nn.relu(nn.Dense(16, name='fc0')(x.mean((1, 2))))
    return nn.Dense(10, name='fc1')(x)


SHAPE = (6, 6, 3)


def prune_config(**kw):
  config = default_config().prune
  config.update(kw)
  return config


def make(total_steps=100, seed=0, **kw):
  model = Net()
  params = model.init(jax.random.key(seed), jnp.zeros((1, *SHAPE)))['params']
  # Distinct magnitudes everywhere, BN scales included, so every ranking is unambiguous.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  params = jax.tree.unflatten(tree, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
  return prune.Pruner(prune_config(**kw), model, SHAPE, total_steps), params


def target_names(pruner):
  return [t.name for t in pruner.targets]


# ------------------------------------------------------------------ formulas

@pytest.mark.slow
def test_polynomial_schedule_is_zhu_and_gupta():
  s_f, t0, t1 = 0.9, 100, 1100
  for t in (0, 100, 350, 600, 850, 1100, 2000):
    frac = min(max((t - t0) / (t1 - t0), 0), 1)
    expected = s_f + (0.0 - s_f) * (1 - frac) ** 3
    np.testing.assert_allclose(prune.polynomial_sparsity(t, s_f, t0, t1), expected, atol=1e-6)
  pruner, _ = make(total_steps=1000, algorithm='magnitude', sparsity=0.9, start_fraction=0.1,
                   end_fraction=0.55, update_every_steps=100)
  steps = [t for t in range(1000) if pruner.is_prune_step(t)]
  assert steps == [100, 200, 300, 400, 500, 550]  # every 100 steps, and the end itself


def test_erk_matches_its_definition():
  shapes = [(3, 3, 3, 16), (3, 3, 16, 32), (3, 3, 32, 64), (64, 10)]
  sparsity = 0.8
  out = prune.erk_sparsities(shapes, sparsity)
  sizes = np.array([np.prod(s) for s in shapes])
  density = 1 - np.array(out)
  np.testing.assert_allclose((density * sizes).sum(), (1 - sparsity) * sizes.sum(), rtol=1e-9)
  raw = np.array([sum(s) / np.prod(s) for s in shapes])
  sparse = density < 1
  # Density proportional to (sum of dims) / (product of dims) where not capped at 1.
  ratio = density[sparse] / raw[sparse]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
  # The small first conv and the classifier would need a density > 1: kept dense.
  assert out[0] == out[3] == 0.0
  assert out[2] > sparsity > out[1] > 0  # the larger layer is sparser


def test_iterative_segments_and_replayed_learning_rate():
  length, rewind = prune.imp_segments(total_steps=260, rounds=3, rewind_fraction=0.2)
  # L + 3 (L - k) = 260 with k = 0.2 L: L = 76.47 -> 76, k = 15 (76 + 3 x 61 = 259).
  assert (length, rewind) == (76, 15)
  sched = prune.replay_schedule(lambda s: s * 1.0, length, rewind)
  assert [float(sched(s)) for s in (0, 75, 76, 77, 76 + 61, 76 + 62)] == [
      0, 75, rewind, rewind + 1, rewind, rewind + 1]
  with pytest.raises(ConfigError, match='too few'):
    prune.imp_segments(total_steps=3, rounds=5, rewind_fraction=0.9)


# ------------------------------------------------------------------ targets and masks

@pytest.mark.slow
def test_targets_skip_first_and_last_and_follow_include_exclude():
  pruner, _ = make(algorithm='magnitude', sparsity=0.5)
  assert target_names(pruner) == ['conv1/kernel', 'conv2/kernel', 'fc0/kernel']
  conv1 = pruner.targets[0]
  assert conv1.followers == (('bn1', 'scale'), ('bn1', 'bias')) and conv1.bn_scale
  assert pruner.targets[1].followers == (('conv2', 'bias'),)  # its own bias, no BN
  pruner, _ = make(algorithm='magnitude', sparsity=0.5, exclude_first_last=False,
                   exclude=('fc.*',))
  assert target_names(pruner) == ['conv0/kernel', 'conv1/kernel', 'conv2/kernel']
  pruner, _ = make(algorithm='magnitude', sparsity=0.5, include=('conv2',))
  assert target_names(pruner) == ['conv2/kernel']


@pytest.mark.parametrize('kw, message', [
    ({'algorithm': 'lottery'},
     "^Unknown prune.algorithm 'lottery'. Valid: channel, global_magnitude, magnitude"),
    ({'algorithm': 'magnitude', 'schedule': 'cubic'},
     "^Unknown prune.schedule 'cubic'. Valid: gradual, iterative, one_shot."),
    ({'algorithm': 'magnitude', 'distribution': 'er'},
     r"^Unknown prune.distribution 'er'. Did you mean 'erk'\? Valid: erk, uniform.$"),
    ({'algorithm': 'magnitude', 'sparsity': 1.0}, r'in \[0, 1\)'),
    ({'algorithm': 'n_m', 'n': 4, 'm': 4}, '0 < n < m'),
    ({'algorithm': 'n_m', 'n': 1, 'm': 3}, 'no layer of this model can be pruned'),
    ({'algorithm': 'magnitude', 'include': ('nothing',)}, 'widen include'),
    ({'algorithm': 'magnitude', 'start_fraction': 0.8, 'end_fraction': 0.5}, 'start_fraction'),
])
def test_bad_prune_settings_are_one_line_errors(kw, message):
  with pytest.raises(ConfigError, match=message):
    make(**kw)


@pytest.mark.parametrize('kind, key', [('prune_algorithm', 'algorithm'),
                                       ('prune_schedule', 'schedule'),
                                       ('prune_distribution', 'distribution')])
def test_unknown_names_list_every_registered_one(kind, key):
  names = registry.names(kind)
  assert {'algorithm': {'magnitude', 'global_magnitude', 'random', 'saliency', 'n_m',
                        'channel', 'slimming'},
          'schedule': {'one_shot', 'gradual', 'iterative'},
          'distribution': {'uniform', 'erk'}}[key] <= set(names)
  with pytest.raises(ConfigError) as error:
    make(**{'algorithm': 'magnitude', key: 'no_such_name'})
  message = str(error.value)
  assert '\n' not in message
  assert message.endswith(f'Valid: {", ".join(names)}.')  # all of them, sorted


# The extension point: an algorithm defined outside mcj, found by name.
@registry.register('prune_algorithm', 'test_prune_squared_magnitude')
class SquaredMagnitude(algorithms.Algorithm):
  """Per layer, the smallest w^2."""

  def score(self, weight, grad, key):
    return jnp.square(weight)


@pytest.mark.slow
def test_a_registered_algorithm_class_is_all_a_new_algorithm_needs():
  pruner, params = make(algorithm='test_prune_squared_magnitude', sparsity=0.75,
                        schedule='one_shot', distribution='erk')
  assert isinstance(pruner.method, SquaredMagnitude)
  assert target_names(pruner) == ['conv1/kernel', 'conv2/kernel', 'fc0/kernel']
  masks = masks_at(pruner, params)
  for t, s in zip(pruner.targets, pruner.layer_sparsity):  # per layer, erk sparsities
    w2 = np.square(np.asarray(prune._get(params, t.path)))
    m = np.asarray(prune._get(masks, t.path))
    assert m.sum() == w2.size - round(s * w2.size)
    assert w2[m].min() > w2[~m].max()
  # And in the optax wrapper: the pruned weights are exactly zero after an update.
  (p, state), = run_updates(pruner, params, 1)
  for t in pruner.targets:
    m = np.asarray(prune._get(state.masks, t.path))
    assert (np.asarray(prune._get(p, t.path))[~m] == 0).all() and not m.all()


def masks_at(pruner, params, grads=None, count=0):
  masks = pruner.initial_masks(params)
  return pruner.compute_masks(params, grads, jnp.asarray(count), masks)


def test_magnitude_keeps_the_largest_per_layer_and_erk_varies_by_layer():
  pruner, params = make(algorithm='magnitude', sparsity=0.75, schedule='one_shot')
  masks = masks_at(pruner, params)
  for t in pruner.targets:
    w, m = np.abs(np.asarray(prune._get(params, t.path))), np.asarray(prune._get(masks, t.path))
    assert m.sum() == w.size - round(0.75 * w.size)
    assert w[m].min() > w[~m].max()
  assert masks['conv0']['kernel'].shape == ()  # not a target: a scalar True
  pruner, params = make(algorithm='magnitude', sparsity=0.75, schedule='one_shot',
                        distribution='erk')
  masks = masks_at(pruner, params)
  fractions = [1 - np.asarray(prune._get(masks, t.path)).mean() for t in pruner.targets]
  np.testing.assert_allclose(fractions, pruner.layer_sparsity, atol=1e-3)
  assert len(set(np.round(fractions, 3))) > 1


def test_global_magnitude_uses_one_threshold():
  pruner, params = make(algorithm='global_magnitude', sparsity=0.6, schedule='one_shot')
  masks = masks_at(pruner, params)
  kept, pruned = [], []
  for t in pruner.targets:
    w, m = np.abs(np.asarray(prune._get(params, t.path))), np.asarray(prune._get(masks, t.path))
    kept.append(w[m]), pruned.append(w[~m])
  kept, pruned = np.concatenate(kept), np.concatenate(pruned)
  assert kept.min() > pruned.max()
  assert pruned.size == round(0.6 * (kept.size + pruned.size))


@pytest.mark.slow
def test_random_and_saliency_masks():
  pruner, params = make(algorithm='random', sparsity=0.5, schedule='one_shot')
  a, b = masks_at(pruner, params, count=0), masks_at(pruner, params, count=1)
  for t in pruner.targets:
    ma, mb = np.asarray(prune._get(a, t.path)), np.asarray(prune._get(b, t.path))
    assert ma.sum() == ma.size - round(0.5 * ma.size)
    assert (ma != mb).any()  # a new draw each step
  pruner, params = make(algorithm='saliency', sparsity=0.5, schedule='one_shot')
  grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), params)
  masks = masks_at(pruner, params, grads)
  for t in pruner.targets:
    score = np.abs(np.asarray(prune._get(params, t.path)) * np.asarray(prune._get(grads, t.path)))
    m = np.asarray(prune._get(masks, t.path))
    assert score[m].min() >= score[~m].max()


def test_n_m_keeps_n_largest_of_every_m_input_channels():
  pruner, params = make(algorithm='n_m', n=2, m=4, exclude_first_last=False)
  # conv0 has 3 input channels (not a multiple of 4): left dense.
  assert target_names(pruner) == ['conv1/kernel', 'conv2/kernel', 'fc0/kernel', 'fc1/kernel']
  masks = masks_at(pruner, params)
  for t in pruner.targets:
    w = np.abs(np.asarray(prune._get(params, t.path)))
    m = np.asarray(prune._get(masks, t.path))
    cin = w.shape[-2]
    groups_w = np.moveaxis(w, -2, -1).reshape(-1, cin // 4, 4)
    groups_m = np.moveaxis(m, -2, -1).reshape(-1, cin // 4, 4)
    assert (groups_m.sum(-1) == 2).all()
    top2 = np.argsort(-groups_w, axis=-1)[..., :2]
    expected = np.zeros_like(groups_m)
    np.put_along_axis(expected, top2, True, axis=-1)
    np.testing.assert_array_equal(groups_m, expected)


def test_channel_pruning_removes_whole_filters_with_their_bn():
  pruner, params = make(algorithm='channel', sparsity=0.5, schedule='one_shot')
  masks = masks_at(pruner, params)
  conv1 = np.asarray(masks['conv1']['kernel'])
  channels = conv1[0, 0, 0]
  assert channels.sum() == 4 and (conv1 == channels).all()  # whole filters
  l1 = np.abs(np.asarray(params['conv1']['kernel'])).sum((0, 1, 2))
  assert l1[channels].min() > l1[~channels].max()
  np.testing.assert_array_equal(masks['bn1']['scale'], channels)
  np.testing.assert_array_equal(masks['bn1']['bias'], channels)
  np.testing.assert_array_equal(masks['conv2']['bias'], masks['conv2']['kernel'][0, 0, 0])


def test_slimming_prunes_channels_by_bn_scale_over_the_network():
  pruner, params = make(algorithm='slimming', sparsity=0.5, schedule='one_shot',
                        exclude_first_last=False)
  assert target_names(pruner) == ['conv0/kernel', 'conv1/kernel']  # the convs with a BN
  masks = masks_at(pruner, params)
  gammas = np.abs(np.concatenate([params['bn0']['scale'], params['bn1']['scale']]))
  keep = np.concatenate([masks['bn0']['scale'], masks['bn1']['scale']])
  assert keep.sum() == 6 and gammas[keep].min() > gammas[~keep].max()


# ------------------------------------------------------------------ the optax wrapper

def run_updates(pruner, params, steps, lr=0.1, seed=0):
  tx = pruner.wrap(optax.sgd(lr, momentum=0.9))
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for i in range(steps):
    grads = jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(seed + i), p.shape),
                         params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append((params, state))
  return history


def test_gradual_masks_are_nested_and_pruned_weights_stay_exactly_zero():
  pruner, params = make(total_steps=40, algorithm='magnitude', sparsity=0.9,
                        start_fraction=0.1, end_fraction=0.5, update_every_steps=4)
  history = run_updates(pruner, params, 40)
  previous = None
  for step, (p, state) in enumerate(history):
    for t in pruner.targets:
      w, m = np.asarray(prune._get(p, t.path)), np.asarray(prune._get(state.masks, t.path))
      assert (w[~m] == 0).all(), step  # exactly zero, after every update
      assert (w[m] != 0).all(), step
      if previous is not None:
        assert not (m & ~np.asarray(prune._get(previous, t.path))).any()  # never regrow
    previous = state.masks
    expected = prune.polynomial_sparsity(min(step, 20) // 4 * 4 if step < 20 else 20,
                                         0.9, 4, 20)
    np.testing.assert_allclose(float(pruner.sparsity_of(state.masks)), expected, atol=2e-3)
  assert int(history[-1][1].count) == 40


@pytest.mark.slow
def test_iterative_pruning_rewinds_kept_weights():
  total = 50
  pruner, params = make(total_steps=total, algorithm='magnitude', sparsity=0.875,
                        schedule='iterative', rounds=3, rewind_fraction=0.2)
  length, k = pruner.length, pruner.rewind_step
  history = run_updates(pruner, params, total)
  at_k = history[k - 1][0]  # params after k updates
  for r, event in enumerate(pruner.events):
    after, state = history[event]  # the update at count == event prunes and rewinds
    np.testing.assert_allclose(float(pruner.sparsity_of(state.masks)),
                               1 - (1 - 0.875) ** ((r + 1) / 3), atol=2e-3)
    for t in pruner.targets:
      m = np.asarray(prune._get(state.masks, t.path))
      np.testing.assert_allclose(np.asarray(prune._get(after, t.path))[m],
                                 np.asarray(prune._get(at_k, t.path))[m], rtol=1e-6, atol=1e-6)
      assert (np.asarray(prune._get(after, t.path))[~m] == 0).all()
    # The optimizer's momentum restarts at the rewind.
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(state.inner_state)
               if jnp.issubdtype(x.dtype, jnp.floating))
  assert pruner.events[0] == length


@pytest.mark.slow
def test_pruned_binary_weights_compute_as_zero():
  conv = layers.QuantConv(4, 3, input_quantizer='ste_sign', kernel_quantizer='ste_sign')
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 8))
  variables = conv.init(jax.random.key(1), x)
  kernel = variables['params']['kernel']
  pruned = kernel.at[:, :, :4].set(0.0)  # the first 4 input channels pruned
  _, sown = conv.apply({'params': {'kernel': pruned}}, x, mutable=['quantized_kernels'])
  effective = np.asarray(sown['quantized_kernels']['kernel'])
  assert (effective[:, :, :4] == 0).all() and set(np.unique(effective[:, :, 4:])) == {-1, 1}
  # The same output as a dense binary conv over the kept input channels only.
  small = layers.QuantConv(4, 3, input_quantizer='ste_sign', kernel_quantizer='ste_sign')
  np.testing.assert_allclose(
      conv.apply({'params': {'kernel': pruned}}, x),
      small.apply({'params': {'kernel': kernel[:, :, 4:]}}, x[..., 4:]), atol=1e-5)


# ------------------------------------------------------------------ structured: rebuild

@pytest.mark.slow
@pytest.mark.parametrize('name, options, shape', [
    ('resnet20', {}, (8, 8, 1)),
    ('resnet50', {'stage_sizes': (1, 2), 'widths': (8, 16)}, (16, 16, 3)),  # bottlenecks
    ('mobilenet_v2', {'width_multiplier': 0.25, 'last_channel': 64, 'stem_stride': 1,
                      'settings': ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2))}, (16, 16, 3)),
])
@pytest.mark.parametrize('algorithm', ['channel', 'slimming'])
def test_channel_pruned_resnet_rebuilds_as_a_smaller_dense_one(name, options, shape, algorithm):
  from mcj.models import get_model  # pylint: disable=g-import-not-at-top
  from mcj.analysis.summary import summarize  # pylint: disable=g-import-not-at-top
  model = get_model(name, num_classes=10, **options)
  x = jax.random.normal(jax.random.key(0), (4, *shape))
  variables = model.init(jax.random.key(1), x)
  # Random BN scales, biases and statistics, so no channel is trivially zero.
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  variables = jax.tree.unflatten(tree, [
      jnp.abs(jax.random.normal(k, v.shape)) + 0.5 if v.ndim == 1 else v
      for k, v in zip(keys, leaves)])
  pruner = prune.Pruner(prune_config(algorithm=algorithm, sparsity=0.5, schedule='one_shot'),
                        model, shape, total_steps=10)
  expected = {'resnet20': r'^layer\d+_\d+/conv1/kernel$',
              'resnet50': r'^layer\d+_\d+/conv[12]/kernel$',
              'mobilenet_v2': r'^block\d+/expand/conv/kernel$'}[name]
  assert all(re_match(expected, t.name) for t in pruner.targets) and pruner.targets
  masks = pruner.compute_masks(variables['params'], None, jnp.asarray(0),
                               pruner.initial_masks(variables['params']))
  pruned = {**variables, 'params': jax.tree.map(lambda p, m: p * m, variables['params'], masks)}
  small_model, small_vars = prune.rebuild(model, pruned)
  np.testing.assert_allclose(small_model.apply(small_vars, x), model.apply(pruned, x),
                             rtol=1e-5, atol=1e-5)
  big, small = summarize(model, shape), summarize(small_model, shape)
  removed = sum(int((~np.asarray(prune._get(masks, t.path))[(0,) * 3]).sum())
                for t in pruner.targets)
  assert removed > 0 and small['params'] < big['params'] and small['macs'] < big['macs']
  assert small['params'] == sum(x.size for x in jax.tree.leaves(small_vars['params']))
  if algorithm == 'channel':  # half of every pruned layer's filters, layer by layer
    kept = [t.shape[-1] // 2 for t in pruner.targets]
    widths = (small_model.hidden_widths if name == 'mobilenet_v2'
              else small_model.inner_widths)
    assert [w for w in np.ravel(np.array(widths, dtype=object)) if w is not None] == kept


def re_match(pattern, text):
  import re  # pylint: disable=g-import-not-at-top
  return re.search(pattern, text) is not None


# ------------------------------------------------------------------ in the trainer

def pruned_tiny(**prune_kw):
  config = tiny('steps=24,ckpt=8,log=4,shallow')
  config.prune = ml_collections.ConfigDict({'algorithm': 'magnitude', 'sparsity': 0.8,
                                            'update_every_steps': 4, 'end_fraction': 0.5,
                                            **prune_kw})
  return config


@pytest.mark.slow
def test_trainer_prunes_and_reports_sparsity(tmp_path):
  results = train_and_evaluate(pruned_tiny(), str(tmp_path))
  _, params = final_params(str(tmp_path))
  conv = params['layer1_0']['conv1']['kernel']
  assert abs(float((conv == 0).mean()) - 0.8) < 1e-3
  assert 0.5 < results['sparsity'] < 0.8  # first and last layers stay dense
  assert results['nonzero_params'] < 0.35 * results['params']
  assert results['nonzero_macs'] < 0.4 * results['macs']
  assert results['nonzero_model_size_bytes'] < 0.4 * results['model_size_bytes']
  logged = [m['prune/sparsity'] for m in read_metrics(str(tmp_path)) if 'prune/sparsity' in m]
  assert logged[-1] == pytest.approx(0.8, abs=1e-3) and logged[0] < logged[-1]

  proc = run_cli(['--config', TINY, '--workdir', str(tmp_path / 'x'),
                  '--config.prune.algorithm=magnitud'])
  assert proc.returncode == 2
  assert proc.stderr.strip().count('\n') == 0 and "Did you mean 'magnitude'?" in proc.stderr
  out = summary_cli(str(tmp_path))
  assert out['sparsity'] == results['sparsity']
  assert out['nonzero_params'] == results['nonzero_params']
  assert out['nonzero_macs'] == results['nonzero_macs']
  by_name = {layer['name']: layer for layer in out['layers']}
  assert by_name['layer1_0/conv1']['sparsity'] == pytest.approx(0.8, abs=1e-3)
  assert by_name['conv1']['sparsity'] == 0.0


@pytest.mark.slow
def test_trainer_channel_pruning_reports_the_rebuilt_model(tmp_path):
  config = pruned_tiny(algorithm='channel', sparsity=0.5, schedule='one_shot',
                       start_fraction=0.5)
  results = train_and_evaluate(config, str(tmp_path))
  assert results['rebuilt_model']['inner_widths'] == [8, 16, 32]  # shallow ResNet-20, halved
  assert results['rebuilt_params'] < results['params']
  assert results['rebuilt_macs'] < results['macs']
  from mcj.models import get_model  # pylint: disable=g-import-not-at-top
  from mcj.analysis.summary import summarize  # pylint: disable=g-import-not-at-top
  options = {k: v for k, v in results['rebuilt_model'].items() if k != 'name'}
  small_model = get_model('resnet20', num_classes=10, **options)
  small = summarize(small_model, (8, 8, 1))
  assert (small['params'], small['macs']) == (results['rebuilt_params'], results['rebuilt_macs'])
  # The rebuilt network is saved as a workdir of its own, with the pruned model's outputs.
  from mcj.core import checkpoint  # pylint: disable=g-import-not-at-top
  big_model = get_model('resnet20', num_classes=10, stage_sizes=(1, 1, 1))
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  np.testing.assert_allclose(
      small_model.apply(checkpoint.load_variables(str(tmp_path / 'rebuilt')), x),
      big_model.apply(checkpoint.load_variables(str(tmp_path)), x), rtol=1e-5, atol=1e-5)
  out = summary_cli(str(tmp_path / 'rebuilt'))
  assert out['params'] == results['rebuilt_params'] and out['sparsity'] == 0.0


@pytest.mark.slow
def test_trainer_iterative_pruning_replays_the_learning_rate(tmp_path):
  config = pruned_tiny(algorithm='global_magnitude', sparsity=0.75, schedule='iterative',
                       rounds=2, rewind_fraction=0.25)
  config.total_steps = 28  # L + 2 (L - k) = 28 with k = L / 4: L = 11, k = 3 (11 + 16 = 27)
  train_and_evaluate(config, str(tmp_path))
  lr = {m['step']: m['lr'] for m in read_metrics(str(tmp_path)) if 'lr' in m}
  sparsity = {m['step']: m['prune/sparsity'] for m in read_metrics(str(tmp_path))
              if 'prune/sparsity' in m}
  length, rewind = prune.imp_segments(28, 2, 0.25)
  assert (length, rewind) == (11, 3)
  # The logged lr at step s is the schedule at s - 1; segment 2 starts again at step k.
  assert lr[length + 1] == pytest.approx(lr[rewind + 1])
  assert lr[length + (length - rewind) + 1] == pytest.approx(lr[rewind + 1])
  assert sparsity[4] == pytest.approx(0.0, abs=1e-6)
  assert sparsity[28] == pytest.approx(0.75, abs=1e-3)
  _, params = final_params(str(tmp_path))
  conv = np.concatenate([np.ravel(params[f'layer{i}_0'][c]['kernel'])
                         for i in (1, 2, 3) for c in ('conv1', 'conv2')])
  assert float((conv == 0).mean()) == pytest.approx(0.75, abs=1e-3)


def summary_cli(workdir):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, '-m', 'mcj.summary', '--workdir', workdir, '--json'],
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(TINY) + '/..',
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout)


@pytest.mark.slow
def test_masks_survive_a_kill_and_resume_bitwise(tmp_path):
  args = ['--config', f'{TINY}:steps=24,ckpt=5,log=1,shallow', '--config.prune.algorithm=random',
          '--config.prune.sparsity=0.7', '--config.prune.update_every_steps=3',
          '--config.prune.end_fraction=0.8']
  straight = str(tmp_path / 'straight')
  assert run_cli(args + ['--workdir', straight]).returncode == 0
  killed = str(tmp_path / 'killed')
  proc = start_cli(args, killed)
  # After a finished checkpoint, at a seeded step: masks changed since the save.
  wait_for_step(killed, kill_step(8, 16, 'prune_kill'), proc, need_checkpoint=True)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rerun = run_cli(args + ['--workdir', killed])
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'resumed from step' in rerun.stdout
  _, a = final_params(straight)
  _, b = final_params(killed)
  assert_trees_equal(a, b)
  assert train_losses(straight) == train_losses(killed)


@pytest.mark.slow
def test_one_and_four_devices_prune_the_same(tmp_path):
  args = ['--config', f'{TINY}:steps=20,batch=64,ckpt=0,lr=0.002,shallow',
          '--config.prune.algorithm=global_magnitude', '--config.prune.sparsity=0.8',
          '--config.prune.update_every_steps=3', '--config.prune.end_fraction=0.5']
  params, losses = {}, {}
  for devices in (1, 4):
    workdir = str(tmp_path / f'd{devices}')
    proc = run_cli(args + ['--workdir', workdir], devices=devices)
    assert proc.returncode == 0, proc.stderr[-2000:]
    params[devices], losses[devices] = final_params(workdir)[1], train_losses(workdir)
  np.testing.assert_allclose(list(losses[4].values()), list(losses[1].values()), rtol=1e-4)
  assert_trees_equal(jax.tree.map(lambda x: x == 0, params[1]),  # the same masks
                     jax.tree.map(lambda x: x == 0, params[4]))


@pytest.mark.slow
def test_prune_a_binary_student_while_distilling(tmp_path):
  config = pruned_tiny(algorithm='magnitude', sparsity=0.5, schedule='one_shot',
                       start_fraction=0.25)
  config.model = ml_collections.ConfigDict({
      'name': 'binary_resnet20', 'input_quantizer': 'approx_sign',
      'kernel_quantizer': 'ste_sign', 'kernel_scale': 'xnor'})
  config.optimizer = ml_collections.ConfigDict({'name': 'adam', 'lr': 2e-3})
  config.distill = ml_collections.ConfigDict({
      'teachers': ({'init_from': 'random', 'model': {'name': 'resnet20'}},),
      'label_weight': 0.5, 'logit_weight': 0.5})
  results = train_and_evaluate(config, str(tmp_path))
  assert 'distill/logit_loss' in read_metrics(str(tmp_path))[0]
  _, params = final_params(str(tmp_path))
  binary = params['layer1_0']['conv1']['kernel']
  assert float((binary == 0).mean()) == pytest.approx(0.5, abs=1e-3)
  assert results['binary_params'] > 0 and 0.3 < results['sparsity'] < 0.5


def test_transformer_targets_are_its_dense_layers_not_its_tables():
  """BERT: the embedding tables are lookups, never pruned; the first layer excluded is the
  word embedding and the last the classifier, so every encoder dense layer and the pooler
  are targets."""
  from mcj.compress.prune import targets as targets_lib  # pylint: disable=g-import-not-at-top
  from mcj.models import get_model as get  # pylint: disable=g-import-not-at-top
  model = get('bert_tiny', num_classes=2, num_layers=1, hidden_size=32, vocab_size=200,
              max_position_embeddings=16)
  names = [t.name for t in targets_lib.find_targets(model, (16,))]
  assert names == [f'layer_0/{n}/kernel' for n in ('attention/query', 'attention/key',
                                                   'attention/value', 'attention/output',
                                                   'intermediate', 'output')] + ['pooler/kernel']
