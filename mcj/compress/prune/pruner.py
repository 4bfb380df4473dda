"""Pruning as an optax wrapper: masks live in the optimizer state.

``Pruner(config.prune, model, image_shape, total_steps, seed).wrap(tx)`` returns an
optimizer whose state is ``PruneState(count, masks, inner_state, rewind)``; checkpoints,
resume and data parallelism need nothing else (the update is the same replicated
computation on every device). Each update: (1) at a prune step, new masks from the scores
of the algorithm; (2) gradients of pruned weights are zeroed before the wrapped optimizer,
so its moments never see them; (3) the returned updates set pruned weights to exactly 0
(``-p``), so the params themselves are sparse (as jaxpruner's ``wrap_optax`` +
``post_gradient_update``, in one transform).

The pieces are looked up by name in the one registry, each next to its code:

- ``prune.algorithm`` (kind 'prune_algorithm', ``algorithms.py``): how weights are scored
  and how masks are allocated (magnitude, global_magnitude, random, saliency, n_m,
  channel, slimming).
- ``prune.schedule`` (kind 'prune_schedule', ``schedules.py``): when masks change and how
  far they go (one_shot, gradual, iterative with rewinding).
- ``prune.distribution`` (kind 'prune_distribution', ``distributions.py``): per-layer
  sparsities (uniform, erk).
- Which params (``targets.py``): conv and dense kernels, without the first and the last
  layer (``exclude_first_last``), filtered by ``include`` / ``exclude``.

A new algorithm, schedule or distribution is one class (or function) plus its
``@registry.register``; nothing here names them. A pruned weight of a quantized layer
computes as 0 (not sign(0) = +1): see ``mcj.nn.layers.QuantKernel``.
"""
import copy
import json
import math
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcj.analysis import summary as summary_lib
from mcj.compress.prune import DEFAULTS
# Imported for their registrations (and as ``pruner.algorithms`` etc.).
from mcj.compress.prune import algorithms, distributions, schedules  # noqa: F401
# Re-exported, so ``pruner.X`` reaches the whole pruning API.
from mcj.compress.prune.algorithms import Algorithm, n_m_mask, rank_keep
from mcj.compress.prune.distributions import erk_sparsities
from mcj.compress.prune.schedules import (Schedule, imp_segments, polynomial_sparsity,
                                          replay_schedule, restart_moments)
from mcj.compress.prune.targets import Target, find_targets, get_path, set_paths
from mcj.core import checkpoint as checkpoint_lib
from mcj.core import registry
from mcj.core.config import ConfigError

# The helpers that lived here, under their old names.
_get, _set_paths, _rank_keep, _restart_moments = get_path, set_paths, rank_keep, restart_moments

class PruneState(NamedTuple):
  count: jax.Array       # updates done
  masks: Any             # params-shaped: bool arrays at pruned params, scalar True elsewhere
  inner_state: Any       # the wrapped optimizer's state
  rewind: Any            # iterative: the params after k steps; () otherwise


class Pruner:
  """The ``prune`` config block for one model: its algorithm, schedule and distribution
  (from the registry), targets and per-layer sparsities."""

  def __init__(self, config, model: nn.Module, image_shape, total_steps: int, seed: int = 0):
    self.algorithm = config.algorithm
    algorithm_cls = registry.get('prune_algorithm', self.algorithm)
    schedule_cls = registry.get('prune_schedule', config.schedule)
    distribution = registry.get('prune_distribution', config.distribution)
    self.method: Algorithm = algorithm_cls(config, seed)
    self.sparsity = self.method.sparsity
    self.config, self.seed, self.total_steps = config, seed, total_steps
    targets = find_targets(model, image_shape, include=tuple(config.include),
                           exclude=tuple(config.exclude),
                           exclude_first_last=config.exclude_first_last)
    targets = self.method.select(targets, model)
    if not targets:
      raise ConfigError(
          f'prune: no layer of this model can be pruned with {self.algorithm} under '
          f'include={tuple(config.include)} exclude={tuple(config.exclude)} '
          f'exclude_first_last={config.exclude_first_last}; widen include or set '
          'prune.exclude_first_last=False.')
    self.targets = targets
    if self.method.distributed:
      self.layer_sparsity = distribution([t.shape for t in targets], self.sparsity)
    else:
      self.layer_sparsity = [self.sparsity] * len(targets)
    self.schedule: Schedule = schedule_cls(config, total_steps)
    # Network slimming's L1 penalty acts until the last prune step, not while fine-tuning.
    self.last_prune_step = self.schedule.last_prune_step

  # Iterative pruning's segments (length and events: AttributeError for other schedules).
  length = property(lambda self: self.schedule.length)
  rewind_step = property(lambda self: self.schedule.rewind_step)
  events = property(lambda self: self.schedule.events)

  # ------------------------------------------------------------------ schedule
  def is_prune_step(self, count):
    return self.schedule.is_prune_step(count)

  def fraction(self, count):
    """How far toward the final sparsity the masks computed at ``count`` go (0 to 1)."""
    return self.schedule.fraction(count)

  def layer_target(self, sparsity, count):
    """The sparsity reached at ``count`` by a layer whose final sparsity is ``sparsity``."""
    return self.schedule.sparsity_at(sparsity, count)

  def schedule_lr(self, schedule: optax.Schedule) -> optax.Schedule:
    return self.schedule.schedule_lr(schedule)

  def schedule_steps(self) -> int:
    """The length the learning-rate schedule is built for (L for iterative pruning)."""
    return self.schedule.schedule_steps()

  # ------------------------------------------------------------------ masks
  def initial_masks(self, params):
    masks = jax.tree.map(lambda _: jnp.ones((), bool), params)
    values = {}
    for t in self.targets:
      values.update(self.method.initial_masks(t))
    return set_paths(masks, values)

  def compute_masks(self, params, grads, count, masks):
    """New masks at a prune step; pruned entries stay pruned (their score is -inf)."""
    values = self.method.masks(params, grads, masks, count, self.targets, self.layer_sparsity,
                               lambda s: self.layer_target(s, count))
    return set_paths(masks, values)

  # ------------------------------------------------------------------ the optax wrapper
  def wrap(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    rewinds = self.schedule.rewinds

    def init(params):
      rewind = jax.tree.map(jnp.copy, params) if rewinds else ()
      return PruneState(jnp.zeros((), jnp.int32), self.initial_masks(params), tx.init(params),
                        rewind)

    def update(grads, state, params):
      if params is None:
        raise ValueError('pruning needs the params: call tx.update(grads, state, params).')
      count, event = state.count, self.is_prune_step(state.count)
      masks = jax.lax.cond(event, lambda: self.compute_masks(params, grads, count, state.masks),
                           lambda: state.masks)
      grads = self.method.adjust_grads(grads, params, self.targets,
                                       count < self.last_prune_step)
      grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0), grads, masks)
      updates, inner = tx.update(grads, state.inner_state, params)
      rewind = state.rewind
      if rewinds:  # IMP: kept weights back to their values after k steps, moments restart
        rewind = jax.tree.map(lambda r, p: jnp.where(count == self.rewind_step, p, r),
                              rewind, params)
        updates = jax.tree.map(lambda u, p, r: jnp.where(event, r - p, u), updates, params,
                               rewind)
        inner = restart_moments(tx.init(params), inner, event)
      updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
      return updates, PruneState(optax.safe_increment(count), masks, inner, rewind)

    return optax.GradientTransformation(init, update)

  def sparsity_of(self, masks):
    """The fraction of pruned weights among the targets' weights."""
    kept = sum(jnp.sum(get_path(masks, t.path)) for t in self.targets)
    total = sum(math.prod(t.shape) for t in self.targets)
    return 1.0 - kept / total

  def finish(self, *, model, variables, config, workdir, step, image_shape, dense_summary,
             say) -> dict:
    """End-of-run work: channel pruning really shrinks the network, so the dense smaller
    model it leaves is rebuilt and saved as a workdir of its own, ``<workdir>/rebuilt``
    (init_from, a teacher or ``mcj.summary --workdir`` can use it). Returns what goes into
    results.json."""
    if not self.method.channels:
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
    rebuilt_dir = save_rebuilt(workdir, config, rebuilt_model, small_variables, step)
    say(f'mcj: rebuilt without the pruned channels in {rebuilt_dir}: {small["params"]:,} '
        f'params, {small["macs"]:,} MACs (dense: {dense_summary["params"]:,}, '
        f'{dense_summary["macs"]:,}).')
    return {'rebuilt_params': small['params'], 'rebuilt_macs': small['macs'],
            'rebuilt_model': rebuilt_model}

  def describe(self) -> str:
    return (f'prune: {self.algorithm}, {self.config.schedule}, target sparsity '
            f'{self.sparsity:.2%} over {len(self.targets)} layers '
            f'({sum(math.prod(t.shape) for t in self.targets):,} weights)')


def save_rebuilt(workdir: str, config, rebuilt_model: dict, variables, step: int) -> str:
  """Writes the rebuilt smaller network as a run workdir of its own, ``<workdir>/rebuilt``:
  ``config.json`` (the run's config with the model block ``rebuilt_model`` and the ``prune``
  block at its defaults) and ``checkpoints/<step>`` (``step`` and ``variables``). Returns
  its path."""
  rebuilt_dir = os.path.join(workdir, 'rebuilt')
  if jax.process_index() == 0:
    os.makedirs(rebuilt_dir, exist_ok=True)
    small_config = config.to_dict()
    small_config.update(model=rebuilt_model, prune=copy.deepcopy(DEFAULTS))
    with open(os.path.join(rebuilt_dir, 'config.json'), 'w') as f:
      json.dump(small_config, f, indent=2, sort_keys=True)
  small_checkpointer = checkpoint_lib.Checkpointer(rebuilt_dir, keep=1)
  small_checkpointer.save(step, {'step': np.asarray(step, np.int32), **variables})
  small_checkpointer.close()
  return rebuilt_dir


def rebuild(model: nn.Module, variables):
  """``(smaller model, its variables)`` without the channels channel pruning removed, or
  None for a model that cannot be rebuilt (it has no ``shrink``)."""
  if not hasattr(model, 'shrink'):
    return None
  return model.shrink(variables)
