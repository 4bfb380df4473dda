"""Pruning algorithms (``prune.algorithm``), registered as kind 'prune_algorithm'.

- magnitude: per layer, the smallest |w| (Han et al. 2015; Zhu & Gupta 2017).
- global_magnitude: one |w| threshold over all pruned layers (Frankle & Carbin 2019).
- random: per layer, uniformly random weights (a baseline).
- saliency: per layer, the smallest |w * g| (SNIP, Lee et al. 2019, at step 0).
- n_m: in every group of ``m`` consecutive input-channel weights keep the ``n`` largest
  |w| (2:4 for sparse tensor cores; Mishra et al. 2021, Zhou et al. 2021).
- channel: per layer, whole output filters with the smallest L1 norm (Li et al. 2017), with
  the filter's bias and the BatchNorm scale and bias after it. Models with a
  ``channel_prunable()`` pattern (ResNets: the convs inside blocks; MobileNetV2: the expand
  convs, with their depthwise channel via ``channel_chain``) limit it to those, and their
  ``shrink(variables)`` rebuilds the dense smaller network (``pruner.rebuild``).
- slimming: network slimming (Liu et al. 2017): L1 sparsity on BatchNorm scales during
  training (``slimming_l1`` * sign(gamma) added to their gradient), then the channels with
  the smallest |gamma| over the whole network.

An algorithm is a class built as ``Algorithm(config, seed)`` from the ``prune`` block. Its
pieces, each overridable on its own:

- ``score(weight, grad, key)``: the score of every weight of one layer (smaller is pruned
  first); ``ChannelAlgorithm.channel_score(params, target)`` scores output channels.
- ``allocate(scores, sparsities, reach)``: the kept flags from the scores. Per layer by
  default; ``OneThreshold`` ranks all layers together; ``NM`` keeps n of every m.
- ``select(targets, model)``, ``final_sparsity()``, ``adjust_grads(...)``, and the flags
  ``channels`` (masks whole output channels and their followers) and ``distributed``
  (per-layer sparsities follow ``prune.distribution``).

Adding one is a subclass plus ``@registry.register('prune_algorithm', name)``, e.g. a
per-layer |w|^2 score::

  @registry.register('prune_algorithm', 'squared')
  class Squared(Algorithm):
    def score(self, weight, grad, key):
      return jnp.square(weight)

Pruned entries stay pruned: their score is -inf before allocation.
"""
import dataclasses
import re

import jax
import jax.numpy as jnp

from mcj.compress.prune.targets import get_path, set_paths
from mcj.core import registry
from mcj.core.config import ConfigError


def rank_keep(scores, n_prune):
  """True except at the ``n_prune`` smallest scores (ties broken by position); one sort,
  then the kept flags scattered back to the sorted positions."""
  flat = scores.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  keep = jnp.zeros(flat.shape, bool).at[order].set(jnp.arange(flat.size) >= n_prune)
  return keep.reshape(scores.shape)


def n_m_mask(scores, n: int, m: int):
  """Keeps the ``n`` largest of every ``m`` consecutive entries along the input-channel
  axis (-2) of a kernel (HWIO or (in, out))."""
  moved = jnp.moveaxis(scores, -2, -1)
  groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
  order = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1, stable=True)
  keep = (order < n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, -2)


class Algorithm:
  """Unstructured pruning of each target kernel; subclasses define ``score``.

  ``masks`` computes the new kept flags at a prune step: each layer's ``score`` (already
  pruned entries at -inf), then ``allocate``. ``reach(s)`` is the sparsity that a final
  sparsity ``s`` has reached at this step (the schedule's ``sparsity_at``).
  """
  channels = False      # masks whole output channels, with the params that follow them
  distributed = True    # per-layer sparsities from prune.distribution (else one budget)

  def __init__(self, config, seed: int = 0):
    self.config, self.seed = config, seed
    self.sparsity = self.final_sparsity()

  def final_sparsity(self) -> float:
    sparsity = float(self.config.sparsity)
    if not 0.0 <= sparsity < 1.0:
      raise ConfigError(f'prune.sparsity must be in [0, 1), got {sparsity}.')
    return sparsity

  def select(self, targets, model):
    """The targets this algorithm can prune, of those the config allows."""
    return targets

  def initial_masks(self, target) -> dict:
    """``{path: all-True mask}`` for the params this target's masks cover."""
    return {target.path: jnp.ones(target.shape, bool)}

  def score(self, weight, grad, key):
    """Scores of one layer's weights; the smallest are pruned. ``grad`` is the layer's
    gradient (None when none is given), ``key`` a PRNG key for this layer and step."""
    raise NotImplementedError

  def allocate(self, scores, sparsities, reach):
    """Kept flags per layer: each layer prunes its own smallest scores."""
    return [rank_keep(score, jnp.round(reach(s) * score.size))
            for score, s in zip(scores, sparsities)]

  def masks(self, params, grads, masks, count, targets, sparsities, reach) -> dict:
    """``{path: new mask}`` at a prune step."""
    scores = []
    for index, t in enumerate(targets):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), count), index)
      grad = None if grads is None else get_path(grads, t.path)
      score = self.score(get_path(params, t.path), grad, key)
      scores.append(jnp.where(get_path(masks, t.path), score, -jnp.inf))
    keeps = self.allocate(scores, sparsities, reach)
    return {t.path: keep for t, keep in zip(targets, keeps)}

  def adjust_grads(self, grads, params, targets, pruning):
    """The gradients before masking (``pruning``: before the last prune step)."""
    return grads


class OneThreshold:
  """Mixin: one ranking over the scores of all layers (one global threshold)."""
  distributed = False

  def allocate(self, scores, sparsities, reach):
    flat = jnp.concatenate([s.reshape(-1) for s in scores])
    keep = rank_keep(flat, jnp.round(reach(self.sparsity) * flat.size))
    keeps, offset = [], 0
    for s in scores:
      keeps.append(keep[offset:offset + s.size].reshape(s.shape))
      offset += s.size
    return keeps


@registry.register('prune_algorithm', 'magnitude')
class Magnitude(Algorithm):
  """Per layer, the smallest |w|."""

  def score(self, weight, grad, key):
    return jnp.abs(weight)


@registry.register('prune_algorithm', 'global_magnitude')
class GlobalMagnitude(OneThreshold, Magnitude):
  """The smallest |w| over all pruned layers together."""


@registry.register('prune_algorithm', 'random')
class Random(Algorithm):
  """Per layer, uniformly random weights; a new draw at each prune step."""

  def score(self, weight, grad, key):
    return jax.random.uniform(key, weight.shape)


@registry.register('prune_algorithm', 'saliency')
class Saliency(Algorithm):
  """Per layer, the smallest |w * g| (SNIP)."""

  def score(self, weight, grad, key):
    return jnp.abs(weight * grad)


@registry.register('prune_algorithm', 'n_m')
class NM(Magnitude):
  """n:m sparsity: the ``n`` largest |w| of every ``m`` consecutive input channels, at
  every prune step (sparsity 1 - n/m, not ramped); kernels whose input channels are not a
  multiple of m, and depthwise ones, stay dense."""
  distributed = False

  def final_sparsity(self):
    n, m = self.config.n, self.config.m
    if not 0 < n < m:
      raise ConfigError(f'prune.n and prune.m need 0 < n < m, got {n}:{m}.')
    return 1 - n / m

  def select(self, targets, model):
    return [t for t in targets if not t.depthwise and t.shape[-2] % self.config.m == 0]

  def allocate(self, scores, sparsities, reach):
    return [n_m_mask(score, self.config.n, self.config.m) for score in scores]


class ChannelAlgorithm(Algorithm):
  """Structured pruning of whole output channels; subclasses define ``channel_score``.

  Targets are the non-depthwise kernels the model allows (``channel_prunable()``, a
  pattern on their names), with the params tied to their channels (``channel_chain``);
  a channel's mask covers its filter, its bias and the BatchNorm after it. Per layer, at
  least one channel is kept.
  """
  channels = True

  def select(self, targets, model):
    targets = [t for t in targets if not t.depthwise]
    if hasattr(model, 'channel_prunable'):  # e.g. ResNets: the block-internal convs only
      targets = [t for t in targets if re.search(model.channel_prunable(), t.name)]
    if hasattr(model, 'channel_chain'):  # more params tied to those channels
      targets = [dataclasses.replace(t, followers=t.followers + model.channel_chain(t.path))
                 for t in targets]
    return targets

  def initial_masks(self, target):
    values = {target.path: jnp.ones(target.shape, bool)}
    for f in target.followers:
      values[f] = jnp.ones((target.shape[-1],), bool)
    return values

  def channel_score(self, params, target):
    """One score per output channel of ``target``; the smallest are pruned."""
    raise NotImplementedError

  def allocate(self, scores, sparsities, reach):
    return [rank_keep(s, jnp.minimum(jnp.round(reach(sp) * s.size), s.size - 1))
            for s, sp in zip(scores, sparsities)]

  def masks(self, params, grads, masks, count, targets, sparsities, reach):
    scores = []
    for t in targets:
      old = get_path(masks, t.path)[(0,) * (len(t.shape) - 1)]  # the channel mask
      scores.append(jnp.where(old, self.channel_score(params, t), -jnp.inf))
    values = {}
    for t, keep in zip(targets, self.allocate(scores, sparsities, reach)):
      values[t.path] = jnp.broadcast_to(keep, t.shape)
      for f in t.followers:
        values[f] = keep
    return values


@registry.register('prune_algorithm', 'channel')
class Channel(ChannelAlgorithm):
  """Per layer, the filters with the smallest L1 norm (Li et al. 2017)."""

  def channel_score(self, params, target):
    axes = tuple(range(len(target.shape) - 1))
    return jnp.sum(jnp.abs(get_path(params, target.path)), axis=axes)


@registry.register('prune_algorithm', 'slimming')
class Slimming(OneThreshold, ChannelAlgorithm):
  """Network slimming: L1 on the BatchNorm scales until the last prune step, then the
  channels with the smallest |gamma| over the whole network (kernels with a BatchNorm)."""

  def select(self, targets, model):
    return [t for t in super().select(targets, model) if t.bn_scale is not None]

  def channel_score(self, params, target):
    return jnp.abs(get_path(params, target.bn_scale))

  def adjust_grads(self, grads, params, targets, pruning):
    l1 = self.config.slimming_l1
    if not l1:
      return grads
    rate = jnp.where(pruning, l1, 0.0)  # the L1 subgradient on the prunable BN scales
    return set_paths(grads, {t.bn_scale: get_path(grads, t.bn_scale)
                             + rate * jnp.sign(get_path(params, t.bn_scale))
                             for t in targets})

