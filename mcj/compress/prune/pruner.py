"""Pruning as an optax wrapper: masks live in the optimizer state.

``Pruner(config.prune, model, image_shape, total_steps).wrap(tx)`` returns an optimizer whose state is
``PruneState(count, masks, inner_state, rewind)``; checkpoints, resume and data
parallelism need nothing else (the update is the same replicated computation on every
device). Each update: (1) at a prune step, new masks from the scores of the algorithm;
(2) gradients of pruned weights are zeroed before the wrapped optimizer, so its moments
never see them; (3) the returned updates set pruned weights to exactly 0 (``-p``), so the
params themselves are sparse (as jaxpruner's ``wrap_optax`` + ``post_gradient_update``, in
one transform).

Algorithms (``prune.algorithm``):
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
  ``shrink(variables)`` rebuilds the dense smaller network (``rebuild``).
- slimming: network slimming (Liu et al. 2017): L1 sparsity on BatchNorm scales during
  training (``slimming_l1`` * sign(gamma) added to their gradient), then the channels with
  the smallest |gamma| over the whole network.

Schedules (``prune.schedule``), as fractions of training:
- one_shot: prune once at ``start_fraction`` (0: at initialisation; 0.5: after half).
- gradual: Zhu & Gupta's ``s_t = s (1 - (1 - (t - t0) / (t1 - t0))^power)`` every
  ``update_every_steps`` from ``start_fraction`` to ``end_fraction``.
- iterative: iterative magnitude pruning with weight rewinding (Frankle et al. 2019,
  2020): ``rounds`` prune events; training is split into a first dense segment of L steps
  and ``rounds`` segments of L - k steps (k = ``rewind_fraction`` * L); at the end of each
  segment, each round removing the same fraction of the remaining weights, the kept
  weights rewind to their values after k steps, the optimizer moments restart, and the
  learning-rate schedule replays from step k (``replay_schedule``).

Which params: the kernels of conv and dense layers, without the first and the last
layer (``exclude_first_last``), filtered by regular expressions on their path
(``include``, ``exclude``; e.g. ``'stage1/.*'``). Per-layer sparsities (``distribution``):
uniform, or ERK (Evci et al. 2020: density proportional to (sum of dims) / (product of
dims), dense where that exceeds 1). A pruned weight of a quantized layer computes as 0 (not
sign(0) = +1): see ``mcj.nn.layers.QuantKernel``.
"""
import copy
import dataclasses
import json
import math
import os
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcj.analysis import summary as summary_lib
from mcj.compress.prune import DEFAULTS
from mcj.core import checkpoint as checkpoint_lib
from mcj.core import tree as tree_lib
from mcj.nn import inspect
from mcj.core.config import ConfigError

ALGORITHMS = ('magnitude', 'global_magnitude', 'random', 'saliency', 'n_m', 'channel',
              'slimming')
SCHEDULES = ('one_shot', 'gradual', 'iterative')
DISTRIBUTIONS = ('uniform', 'erk')
CHANNEL_ALGORITHMS = ('channel', 'slimming')


@dataclasses.dataclass(frozen=True)
class Target:
  """A prunable kernel: its path in params, shape, and the per-channel params that follow
  its output channels (its bias, the next BatchNorm's scale and bias)."""
  path: tuple[str, ...]
  shape: tuple[int, ...]
  depthwise: bool
  followers: tuple[tuple[str, ...], ...] = ()
  bn_scale: tuple[str, ...] | None = None

  @property
  def name(self) -> str:
    return '/'.join(self.path)


def find_targets(model: nn.Module, image_shape, *, include=(), exclude=(),
                 exclude_first_last=True) -> list[Target]:
  """The kernels a pruner may touch, in call order, with their channel followers."""
  variables, calls = inspect.trace_layers(model, image_shape)
  params = variables['params']
  kernels, seen = [], set()
  for index, (module, _, out) in enumerate(calls):
    own = tree_lib.own_params(params, module.path)
    kernel = own.get('kernel')
    if kernel is None or kernel.ndim < 2 or module.path in seen:
      continue
    seen.add(module.path)
    depthwise = getattr(module, 'feature_group_count', 1) > 1
    followers, bn_scale = [], None
    if 'bias' in own:
      followers.append(module.path + ('bias',))
    for later, inp, _ in calls[index + 1:]:  # the BatchNorm applied to this output
      if inp is out and isinstance(later, nn.BatchNorm):
        bn = tree_lib.own_params(params, later.path)
        followers += [later.path + (k,) for k in ('scale', 'bias') if k in bn]
        bn_scale = later.path + ('scale',) if 'scale' in bn else None
        break
    kernels.append(Target(module.path + ('kernel',), tuple(kernel.shape), depthwise,
                          tuple(followers), bn_scale))
  if exclude_first_last:
    kernels = kernels[1:-1]
  if include:
    kernels = [t for t in kernels if any(re.search(p, t.name) for p in include)]
  kernels = [t for t in kernels if not any(re.search(p, t.name) for p in exclude)]
  return kernels


def erk_sparsities(shapes: list[tuple[int, ...]], sparsity: float) -> list[float]:
  """Per-layer sparsities of the Erdos-Renyi-Kernel distribution with overall ``sparsity``
  (RigL's ``get_sparsities_erdos_renyi``): layers whose density would exceed 1 stay dense
  and the others share their part."""
  sizes = [math.prod(s) for s in shapes]
  raw = [sum(s) / math.prod(s) for s in shapes]
  dense = set()
  while True:
    rhs = divisor = 0.0
    for i, n in enumerate(sizes):
      if i in dense:
        rhs -= sparsity * n
      else:
        rhs += (1 - sparsity) * n
        divisor += raw[i] * n
    eps = rhs / divisor if divisor else 0.0
    over = [i for i in range(len(sizes)) if i not in dense and raw[i] * eps > 1]
    if not over:
      break
    dense.add(max(over, key=lambda i: raw[i]))
  return [0.0 if i in dense else 1 - raw[i] * eps for i in range(len(sizes))]


def polynomial_sparsity(step, target, start, end, power=3.0):
  """Zhu & Gupta 2017: 0 before ``start``, ``target`` from ``end``, and
  ``target * (1 - (1 - (step - start) / (end - start))^power)`` in between."""
  frac = jnp.clip((step - start) / max(end - start, 1), 0.0, 1.0)
  return target * (1.0 - (1.0 - frac) ** power)


def imp_segments(total_steps: int, rounds: int, rewind_fraction: float) -> tuple[int, int]:
  """(L, k) of iterative pruning: a dense segment of L steps, then ``rounds`` segments of
  L - k steps, L + rounds (L - k) = total_steps, k = rewind_fraction * L."""
  length = total_steps / (1 + rounds * (1 - rewind_fraction))
  length = int(round(length))
  rewind = int(round(rewind_fraction * length))
  if length - rewind < 1:
    raise ConfigError(f'prune: {total_steps} steps are too few for {rounds} rounds of '
                      'iterative pruning; train longer or lower prune.rounds.')
  return length, rewind


def replay_schedule(schedule: optax.Schedule, length: int, rewind: int) -> optax.Schedule:
  """The learning rate of iterative pruning: ``schedule`` over the first L steps, then
  replayed from step k for each later segment of L - k steps (rewinding, Frankle 2020)."""

  def replayed(step):
    later = rewind + jnp.mod(step - length, length - rewind)
    return schedule(jnp.where(step < length, step, later))

  return replayed


class PruneState(NamedTuple):
  count: jax.Array       # updates done
  masks: Any             # params-shaped: bool arrays at pruned params, scalar True elsewhere
  inner_state: Any       # the wrapped optimizer's state
  rewind: Any            # iterative: the params after k steps; () otherwise


def _rank_keep(scores, n_prune):
  """True except at the ``n_prune`` smallest scores (ties broken by position); one sort,
  then the kept flags scattered back to the sorted positions."""
  flat = scores.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  keep = jnp.zeros(flat.shape, bool).at[order].set(jnp.arange(flat.size) >= n_prune)
  return keep.reshape(scores.shape)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set_paths(tree, values: dict):
  """A copy of the nested dict ``tree`` with ``values[path]`` at each path."""
  out = dict(tree)
  children = {}
  for path, value in values.items():
    if len(path) == 1:
      out[path[0]] = value
    else:
      children.setdefault(path[0], {})[path[1:]] = value
  for key, sub in children.items():
    out[key] = _set_paths(tree[key], sub)
  return out


class Pruner:
  """The ``prune`` config block for one model: targets, per-layer sparsities, schedule."""

  def __init__(self, config, model: nn.Module, image_shape, total_steps: int, seed: int = 0):
    self.algorithm = config.algorithm
    if self.algorithm not in ALGORITHMS:
      raise ConfigError(f'Unknown prune.algorithm {self.algorithm!r}. '
                        f'Available: {", ".join(ALGORITHMS)}.')
    if config.schedule not in SCHEDULES:
      raise ConfigError(f'Unknown prune.schedule {config.schedule!r}. '
                        f'Available: {", ".join(SCHEDULES)}.')
    if config.distribution not in DISTRIBUTIONS:
      raise ConfigError(f'Unknown prune.distribution {config.distribution!r}. '
                        f'Available: {", ".join(DISTRIBUTIONS)}.')
    self.sparsity = float(config.sparsity)
    if self.algorithm == 'n_m':
      if not 0 < config.n < config.m:
        raise ConfigError(f'prune.n and prune.m need 0 < n < m, got {config.n}:{config.m}.')
      self.sparsity = 1 - config.n / config.m
    elif not 0.0 <= self.sparsity < 1.0:
      raise ConfigError(f'prune.sparsity must be in [0, 1), got {self.sparsity}.')
    self.config, self.seed, self.total_steps = config, seed, total_steps
    targets = find_targets(model, image_shape, include=tuple(config.include),
                           exclude=tuple(config.exclude),
                           exclude_first_last=config.exclude_first_last)
    if self.algorithm in CHANNEL_ALGORITHMS:
      targets = [t for t in targets if not t.depthwise]
      if hasattr(model, 'channel_prunable'):  # e.g. ResNets: the block-internal convs only
        targets = [t for t in targets if re.search(model.channel_prunable(), t.name)]
      if hasattr(model, 'channel_chain'):  # more params tied to those channels
        targets = [dataclasses.replace(t, followers=t.followers + model.channel_chain(t.path))
                   for t in targets]
    if self.algorithm == 'slimming':
      targets = [t for t in targets if t.bn_scale is not None]
    if self.algorithm == 'n_m':
      targets = [t for t in targets if not t.depthwise and t.shape[-2] % config.m == 0]
    if not targets:
      raise ConfigError(
          f'prune: no layer of this model can be pruned with {self.algorithm} under '
          f'include={tuple(config.include)} exclude={tuple(config.exclude)} '
          f'exclude_first_last={config.exclude_first_last}; widen include or set '
          'prune.exclude_first_last=False.')
    self.targets = targets
    if config.distribution == 'erk' and self.algorithm not in ('global_magnitude', 'slimming',
                                                               'n_m'):
      self.layer_sparsity = erk_sparsities([t.shape for t in targets], self.sparsity)
    else:
      self.layer_sparsity = [self.sparsity] * len(targets)
    # When masks change.
    start = int(round(config.start_fraction * total_steps))
    end = int(round(config.end_fraction * total_steps))
    if config.schedule == 'gradual' and not start < end <= total_steps:
      raise ConfigError(f'prune: gradual pruning needs 0 <= start_fraction < end_fraction <= '
                        f'1, got {config.start_fraction} and {config.end_fraction}.')
    if config.schedule == 'one_shot' and not 0 <= start < total_steps:
      raise ConfigError(f'prune: one_shot needs 0 <= start_fraction < 1, got '
                        f'{config.start_fraction}.')
    self.start, self.end = start, end
    self.every = max(1, int(config.update_every_steps))
    if config.schedule == 'iterative':
      if config.rounds < 1:
        raise ConfigError(f'prune.rounds must be >= 1, got {config.rounds}.')
      self.length, self.rewind_step = imp_segments(total_steps, config.rounds,
                                                   config.rewind_fraction)
      self.events = [self.length + r * (self.length - self.rewind_step)
                     for r in range(config.rounds)]
    # Network slimming's L1 penalty acts until the last prune step, not while fine-tuning.
    self.last_prune_step = {'one_shot': start, 'gradual': end,
                            'iterative': (self.events[-1] if config.schedule == 'iterative'
                                          else 0)}[config.schedule]

  # ------------------------------------------------------------------ schedule
  def is_prune_step(self, count):
    schedule = self.config.schedule
    if schedule == 'one_shot':
      return count == self.start
    if schedule == 'gradual':
      return ((count >= self.start) & (count <= self.end)
              & ((jnp.mod(count - self.start, self.every) == 0) | (count == self.end)))
    return jnp.isin(count, jnp.asarray(self.events))

  def fraction(self, count):
    """How far toward the final sparsity the masks computed at ``count`` go (0 to 1)."""
    schedule = self.config.schedule
    if schedule == 'one_shot' or self.algorithm == 'n_m':
      return jnp.ones((), jnp.float32)
    if schedule == 'gradual':
      return polynomial_sparsity(count, 1.0, self.start, self.end, self.config.power)
    # iterative: after round r (1-based) the kept fraction is (1 - s)^(r / rounds) per layer.
    r = jnp.sum(count >= jnp.asarray(self.events))
    return r / self.config.rounds  # an exponent, used by layer_target

  def layer_target(self, sparsity, count):
    if self.config.schedule == 'iterative' and self.algorithm != 'n_m':
      return 1.0 - (1.0 - sparsity) ** self.fraction(count)
    return sparsity * self.fraction(count)

  def schedule_lr(self, schedule: optax.Schedule) -> optax.Schedule:
    if self.config.schedule != 'iterative':
      return schedule
    return replay_schedule(schedule, self.length, self.rewind_step)

  def schedule_steps(self) -> int:
    """The length the learning-rate schedule is built for (L for iterative pruning)."""
    return self.length if self.config.schedule == 'iterative' else self.total_steps

  # ------------------------------------------------------------------ masks
  def initial_masks(self, params):
    masks = jax.tree.map(lambda _: jnp.ones((), bool), params)
    values = {}
    for t in self.targets:
      values[t.path] = jnp.ones(t.shape, bool)
      if self.algorithm in CHANNEL_ALGORITHMS:
        for f in t.followers:
          values[f] = jnp.ones((t.shape[-1],), bool)
    return _set_paths(masks, values)

  def compute_masks(self, params, grads, count, masks):
    """New masks at a prune step; pruned entries stay pruned (their score is -inf)."""
    algorithm, values = self.algorithm, {}
    if algorithm in CHANNEL_ALGORITHMS:
      return self._channel_masks(params, count, masks)
    scores = []
    for t in self.targets:
      w, old = _get(params, t.path), _get(masks, t.path)
      if algorithm in ('magnitude', 'global_magnitude', 'n_m'):
        score = jnp.abs(w)
      elif algorithm == 'random':
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), count),
                                 len(scores))
        score = jax.random.uniform(key, w.shape)
      else:  # saliency
        score = jnp.abs(w * _get(grads, t.path))
      scores.append(jnp.where(old, score, -jnp.inf))
    if algorithm == 'n_m':
      for t, score in zip(self.targets, scores):
        values[t.path] = n_m_mask(score, self.config.n, self.config.m)
    elif algorithm == 'global_magnitude':
      flat = jnp.concatenate([s.reshape(-1) for s in scores])
      total = flat.size
      keep = _rank_keep(flat, jnp.round(self.layer_target(self.sparsity, count) * total))
      offset = 0
      for t in self.targets:
        n = math.prod(t.shape)
        values[t.path] = keep[offset:offset + n].reshape(t.shape)
        offset += n
    else:
      for t, score, s in zip(self.targets, scores, self.layer_sparsity):
        n_prune = jnp.round(self.layer_target(s, count) * score.size)
        values[t.path] = _rank_keep(score, n_prune)
    return _set_paths(masks, values)

  def _channel_masks(self, params, count, masks):
    keeps = []
    for t in self.targets:
      old = _get(masks, t.path)[(0,) * (len(t.shape) - 1)]  # the channel mask
      if self.algorithm == 'channel':
        axes = tuple(range(len(t.shape) - 1))
        score = jnp.sum(jnp.abs(_get(params, t.path)), axis=axes)
      else:
        score = jnp.abs(_get(params, t.bn_scale))
      keeps.append(jnp.where(old, score, -jnp.inf))
    if self.algorithm == 'slimming':  # one threshold over every layer's channels
      flat = jnp.concatenate(keeps)
      keep = _rank_keep(flat, jnp.round(self.layer_target(self.sparsity, count) * flat.size))
      sizes = np.cumsum([t.shape[-1] for t in self.targets])[:-1]
      keeps = jnp.split(keep, sizes)
    else:  # at least one channel is kept per layer
      keeps = [_rank_keep(s, jnp.minimum(jnp.round(self.layer_target(sp, count) * s.size),
                                         s.size - 1))
               for s, sp in zip(keeps, self.layer_sparsity)]
    values = {}
    for t, keep in zip(self.targets, keeps):
      values[t.path] = jnp.broadcast_to(keep, t.shape)
      for f in t.followers:
        values[f] = keep
    return _set_paths(masks, values)

  # ------------------------------------------------------------------ the optax wrapper
  def wrap(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    iterative = self.config.schedule == 'iterative'
    slimming_l1 = self.config.slimming_l1 if self.algorithm == 'slimming' else 0.0

    def init(params):
      rewind = jax.tree.map(jnp.copy, params) if iterative else ()
      return PruneState(jnp.zeros((), jnp.int32), self.initial_masks(params), tx.init(params),
                        rewind)

    def update(grads, state, params):
      if params is None:
        raise ValueError('pruning needs the params: call tx.update(grads, state, params).')
      count, event = state.count, self.is_prune_step(state.count)
      masks = jax.lax.cond(event, lambda: self.compute_masks(params, grads, count, state.masks),
                           lambda: state.masks)
      if slimming_l1:  # the L1 subgradient on the BatchNorm scales of prunable channels
        rate = jnp.where(count < self.last_prune_step, slimming_l1, 0.0)
        grads = _set_paths(grads, {t.bn_scale: _get(grads, t.bn_scale)
                                   + rate * jnp.sign(_get(params, t.bn_scale))
                                   for t in self.targets})
      grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0), grads, masks)
      updates, inner = tx.update(grads, state.inner_state, params)
      rewind = state.rewind
      if iterative:
        rewind = jax.tree.map(lambda r, p: jnp.where(count == self.rewind_step, p, r),
                              rewind, params)
        updates = jax.tree.map(lambda u, p, r: jnp.where(event, r - p, u), updates, params,
                               rewind)
        inner = _restart_moments(tx.init(params), inner, event)
      updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
      return updates, PruneState(optax.safe_increment(count), masks, inner, rewind)

    return optax.GradientTransformation(init, update)

  def sparsity_of(self, masks):
    """The fraction of pruned weights among the targets' weights."""
    kept = sum(jnp.sum(_get(masks, t.path)) for t in self.targets)
    total = sum(math.prod(t.shape) for t in self.targets)
    return 1.0 - kept / total

  def finish(self, *, model, variables, config, workdir, step, image_shape, dense_summary,
             say) -> dict:
    """End-of-run work: channel pruning really shrinks the network, so the dense smaller
    model it leaves is rebuilt and saved as a workdir of its own, ``<workdir>/rebuilt``
    (init_from, a teacher or ``mcj.summary --workdir`` can use it). Returns what goes into
    results.json."""
    if self.algorithm not in CHANNEL_ALGORITHMS:
      return {}
    rebuilt = rebuild(model, variables)
    if not rebuilt:
      return {}
    small_model, small_variables = rebuilt
    small = summary_lib.summarize(small_model, image_shape)
    rebuilt_model = {**config.model.to_dict(),  # the option shrink set (ResNet, MobileNetV2)
                     **{k: list(getattr(small_model, k)) for k in ('inner_widths',
                                                                    'hidden_widths')
                        if getattr(small_model, k, None) is not None}}
    rebuilt_dir = os.path.join(workdir, 'rebuilt')
    if jax.process_index() == 0:
      os.makedirs(rebuilt_dir, exist_ok=True)
      small_config = config.to_dict()
      small_config.update(model=rebuilt_model, prune=copy.deepcopy(DEFAULTS))
      with open(os.path.join(rebuilt_dir, 'config.json'), 'w') as f:
        json.dump(small_config, f, indent=2, sort_keys=True)
    small_checkpointer = checkpoint_lib.Checkpointer(rebuilt_dir, keep=1)
    small_checkpointer.save(step, {'step': np.asarray(step, np.int32), **small_variables})
    small_checkpointer.close()
    say(f'mcj: rebuilt without the pruned channels in {rebuilt_dir}: {small["params"]:,} '
        f'params, {small["macs"]:,} MACs (dense: {dense_summary["params"]:,}, '
        f'{dense_summary["macs"]:,}).')
    return {'rebuilt_params': small['params'], 'rebuilt_macs': small['macs'],
            'rebuilt_model': rebuilt_model}

  def describe(self) -> str:
    return (f'prune: {self.algorithm}, {self.config.schedule}, target sparsity '
            f'{self.sparsity:.2%} over {len(self.targets)} layers '
            f'({sum(math.prod(t.shape) for t in self.targets):,} weights)')


def rebuild(model: nn.Module, variables):
  """``(smaller model, its variables)`` without the channels channel pruning removed, or
  None for a model that cannot be rebuilt (it has no ``shrink``)."""
  if not hasattr(model, 'shrink'):
    return None
  return model.shrink(variables)


def n_m_mask(scores, n: int, m: int):
  """Keeps the ``n`` largest of every ``m`` consecutive entries along the input-channel
  axis (-2) of a kernel (HWIO or (in, out))."""
  moved = jnp.moveaxis(scores, -2, -1)
  groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
  order = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1, stable=True)
  keep = (order < n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, -2)


def _restart_moments(fresh, current, event):
  """The optimizer state after an IMP rewind: moments from ``fresh`` (init), step counters
  (integer leaves) kept, so learning-rate schedules inside the optimizer go on."""
  def pick(f, c):
    if jnp.issubdtype(c.dtype, jnp.integer):
      return c
    return jnp.where(event, f, c)
  return jax.tree.map(pick, fresh, current)
