"""When masks change (``prune.schedule``), registered as kind 'prune_schedule'.

All as fractions of training (``start_fraction``, ``end_fraction`` of ``total_steps``):

- one_shot: prune once at ``start_fraction`` (0: at initialisation; 0.5: after half).
- gradual: Zhu & Gupta 2017, ``s_t = s (1 - (1 - (t - t0) / (t1 - t0))^power)`` every
  ``update_every_steps`` from ``start_fraction`` (t0) to ``end_fraction`` (t1)
  (``polynomial_sparsity``).
- iterative: iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019;
  Frankle et al. 2020): ``rounds`` prune events; training is split into a first dense
  segment of L steps and ``rounds`` segments of L - k steps (k = ``rewind_fraction`` * L,
  ``imp_segments``); at the end of each segment, each round removing the same fraction of
  the remaining weights, the kept weights rewind to their values after k steps, the
  optimizer moments restart (``restart_moments``), and the learning-rate schedule replays
  from step k (``replay_schedule``).

A schedule is a class built as ``Schedule(config, total_steps)`` (it validates its
options); a new one is one subclass of ``Schedule`` plus
``@registry.register('prune_schedule', name)``.
"""
import jax
import jax.numpy as jnp
import optax

from mcj.core import registry
from mcj.core.config import ConfigError


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


def restart_moments(fresh, current, event):
  """The optimizer state after an IMP rewind: moments from ``fresh`` (init), step counters
  (integer leaves) kept, so learning-rate schedules inside the optimizer go on."""
  def pick(f, c):
    if jnp.issubdtype(c.dtype, jnp.integer):
      return c
    return jnp.where(event, f, c)
  return jax.tree.map(pick, fresh, current)


class Schedule:
  """When masks change and how far toward the final sparsity they go.

  ``rewinds``: at each prune step the kept weights go back to their values after
  ``rewind_step`` updates and the optimizer moments restart (the optax wrapper does it).
  """
  rewinds = False
  rewind_step = 0

  def __init__(self, config, total_steps: int):
    self.config, self.total_steps = config, total_steps
    self.start = int(round(config.start_fraction * total_steps))
    self.end = int(round(config.end_fraction * total_steps))

  def is_prune_step(self, count):
    """Whether the update at ``count`` (traced) computes new masks."""
    raise NotImplementedError

  def fraction(self, count):
    """How far toward the final sparsity the masks computed at ``count`` go (0 to 1)."""
    raise NotImplementedError

  def sparsity_at(self, sparsity, count):
    """The sparsity a layer whose final sparsity is ``sparsity`` has after ``count``."""
    return sparsity * self.fraction(count)

  @property
  def last_prune_step(self) -> int:
    """The last step that changes masks (network slimming's L1 stops there)."""
    raise NotImplementedError

  def schedule_lr(self, schedule: optax.Schedule) -> optax.Schedule:
    return schedule

  def schedule_steps(self) -> int:
    """The length the learning-rate schedule is built for."""
    return self.total_steps


@registry.register('prune_schedule', 'one_shot')
class OneShot(Schedule):
  """Prune once, at ``start_fraction``, to the final sparsity."""

  def __init__(self, config, total_steps):
    super().__init__(config, total_steps)
    if not 0 <= self.start < total_steps:
      raise ConfigError(f'prune: one_shot needs 0 <= start_fraction < 1, got '
                        f'{config.start_fraction}.')

  def is_prune_step(self, count):
    return count == self.start

  def fraction(self, count):
    return jnp.ones((), jnp.float32)

  @property
  def last_prune_step(self):
    return self.start


@registry.register('prune_schedule', 'gradual')
class Gradual(Schedule):
  """Zhu & Gupta's cubic (``power``) ramp, every ``update_every_steps`` and at the end."""

  def __init__(self, config, total_steps):
    super().__init__(config, total_steps)
    if not self.start < self.end <= total_steps:
      raise ConfigError(f'prune: gradual pruning needs 0 <= start_fraction < end_fraction <= '
                        f'1, got {config.start_fraction} and {config.end_fraction}.')
    self.every = max(1, int(config.update_every_steps))

  def is_prune_step(self, count):
    return ((count >= self.start) & (count <= self.end)
            & ((jnp.mod(count - self.start, self.every) == 0) | (count == self.end)))

  def fraction(self, count):
    return polynomial_sparsity(count, 1.0, self.start, self.end, self.config.power)

  @property
  def last_prune_step(self):
    return self.end


@registry.register('prune_schedule', 'iterative')
class Iterative(Schedule):
  """IMP with rewinding: ``rounds`` events at the ends of the segments of ``imp_segments``;
  after round r (1-based) a layer keeps (1 - s)^(r / rounds) of its weights."""
  rewinds = True

  def __init__(self, config, total_steps):
    super().__init__(config, total_steps)
    if config.rounds < 1:
      raise ConfigError(f'prune.rounds must be >= 1, got {config.rounds}.')
    self.length, self.rewind_step = imp_segments(total_steps, config.rounds,
                                                 config.rewind_fraction)
    self.events = [self.length + r * (self.length - self.rewind_step)
                   for r in range(config.rounds)]

  def is_prune_step(self, count):
    return jnp.isin(count, jnp.asarray(self.events))

  def fraction(self, count):
    r = jnp.sum(count >= jnp.asarray(self.events))
    return r / self.config.rounds  # an exponent, used by sparsity_at

  def sparsity_at(self, sparsity, count):
    return 1.0 - (1.0 - sparsity) ** self.fraction(count)

  @property
  def last_prune_step(self):
    return self.events[-1]

  def schedule_lr(self, schedule):
    return replay_schedule(schedule, self.length, self.rewind_step)

  def schedule_steps(self):
    return self.length
