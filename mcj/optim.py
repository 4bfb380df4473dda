"""Optimizers and learning-rate schedules by name, from ``config.optimizer`` and
``config.schedule``.

Weight decay applies to kernels only (arrays of rank > 1): BatchNorm scales and biases are
not decayed, as in the ResNet/MobileNet recipes. For SGD and Adam it is the coupled L2 form
of PyTorch (``g += wd * w`` before the update); AdamW and LAMB decouple it (``w -= lr * wd * w``).
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mcj.config import ConfigError

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'lamb')
SCHEDULES = ('constant', 'cosine', 'linear', 'step')


def decay_mask(params):
  """True for the parameters weight decay applies to: kernels, not BN scales or biases."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(config, total_steps: int, steps_per_epoch: float) -> optax.Schedule:
  """Warmup (linear from 0) then constant, cosine, linear or step decay of ``optimizer.lr``.

  ``schedule.warmup_epochs`` or ``schedule.warmup_steps``; cosine and linear decay to
  ``lr * end_factor`` at ``total_steps``; step decay multiplies by ``step_factor`` at each
  of ``step_epochs``.
  """
  sched, base_lr = config.schedule, config.optimizer.lr
  name = sched.get('name', 'cosine')
  if name not in SCHEDULES:
    raise ConfigError(f'Unknown schedule {name!r}. Available: {", ".join(SCHEDULES)}.')
  warmup = sched.get('warmup_steps', None)
  if warmup is None:
    warmup = round(sched.get('warmup_epochs', 0.0) * steps_per_epoch)
  warmup = min(int(warmup), total_steps)
  decay_steps = max(total_steps - warmup, 1)
  end_lr = base_lr * sched.get('end_factor', 0.0)
  if name == 'constant':
    main = optax.constant_schedule(base_lr)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(base_lr, decay_steps, alpha=end_lr / base_lr if base_lr else 0.)
  elif name == 'linear':
    main = optax.linear_schedule(base_lr, end_lr, decay_steps)
  else:  # step
    boundaries = {max(round(e * steps_per_epoch) - warmup, 0): sched.get('step_factor', 0.1)
                  for e in sched.get('step_epochs', ())}
    main = optax.piecewise_constant_schedule(base_lr, boundaries)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


class BopState(NamedTuple):
  count: jax.Array
  momentum: optax.Updates


def bop(threshold: float = 1e-8, gamma: float | optax.Schedule = 1e-4
        ) -> optax.GradientTransformation:
  """Bop, the latent-free binary optimizer (Helwegen et al. 2019; larq ``Bop``).

  Keeps an exponential moving average of gradients ``m <- m + gamma (g - m)`` and flips a
  weight's sign when ``w * m > threshold`` (the gradient has consistently pushed against
  its sign); every weight it handles becomes +-1 after the first step (exactly so from
  then on: the updates are 0 or +-2). ``gamma``
  may be a schedule of the step count.
  """

  def init(params):
    return BopState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params):
    if params is None:
      raise ValueError('bop needs the params: call tx.update(grads, state, params).')
    rate = gamma(state.count) if callable(gamma) else gamma
    momentum = jax.tree.map(lambda m, g: m + rate * (g - m), state.momentum, grads)

    def new_minus_old(w, m):
      sign = jnp.where(w >= 0, 1.0, -1.0).astype(w.dtype)
      return jnp.where(w * m > threshold, -sign, sign) - w

    return (jax.tree.map(new_minus_old, params, momentum),
            BopState(optax.safe_increment(state.count), momentum))

  return optax.GradientTransformation(init, update)


def clip_latent_weights(limit: float, mask) -> optax.GradientTransformation:
  """Keeps masked params in [-limit, limit] after the update (larq's ``WeightClip``): the
  latent weights of binary layers stop growing where the sign's STE gradient vanishes."""

  def update(updates, state, params):
    clipped = jax.tree.map(
        lambda u, p, m: jnp.clip(p + u, -limit, limit) - p if m else u, updates, params, mask)
    return clipped, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _named(name, opt, schedule, wd) -> optax.GradientTransformation:
  """The optimizer ``name`` with the hyper-parameters of ``opt`` and weight decay ``wd``."""
  b1, b2, eps = opt.get('b1', 0.9), opt.get('b2', 0.999), opt.get('eps', 1e-8)
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(wd, decay_mask),
                       optax.sgd(schedule, momentum=opt.get('momentum', 0.9) or None,
                                 nesterov=opt.get('nesterov', False)))
  if name == 'adam':
    return optax.chain(optax.add_decayed_weights(wd, decay_mask),
                       optax.adam(schedule, b1=b1, b2=b2, eps=eps))
  if name == 'adamw':
    return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
  if name == 'lamb':
    return optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
  raise ConfigError(f'Unknown optimizer {name!r}. Available: {", ".join(OPTIMIZERS)}.')


def make_optimizer(config, schedule: optax.Schedule, binary_mask=None
                   ) -> optax.GradientTransformation:
  """The optimizer named by ``config.optimizer.name``, with clipping and weight decay.

  ``binary_mask`` (a params-shaped tree, True at binary latent kernels) is needed by
  ``config.binary``: ``binary.optimizer`` trains those kernels ('bop', or any optimizer
  name, at ``binary.lr`` with the same schedule shape and no weight decay, as larq's
  ``CaseOptimizer`` recipes) while ``optimizer`` trains the rest; ``binary.latent_clip``
  keeps them in [-clip, clip].
  """
  opt = config.optimizer
  core = _named(opt.name, opt, schedule, opt.get('weight_decay', 0.0))
  clip = opt.get('grad_clip_norm', None)
  tx = optax.chain(optax.clip_by_global_norm(clip), core) if clip else core
  binary = config.get('binary', None) or {}
  binary_optimizer, limit = binary.get('optimizer', ''), binary.get('latent_clip', 0.0)
  if not binary_optimizer and not limit:
    return tx
  if binary_mask is None or not any(jax.tree.leaves(binary_mask)):
    raise ConfigError('config.binary sets an optimizer or latent_clip, but the model has no '
                      'binary (1-bit kernel) layers; unset config.binary or pick a binary model.')
  if binary_optimizer:
    if binary_optimizer == 'bop':
      binary_tx = bop(binary.get('bop_threshold', 1e-8), binary.get('bop_gamma', 1e-4))
    elif binary_optimizer in OPTIMIZERS:
      ratio = (binary.get('lr', None) or opt.lr) / opt.lr if opt.lr else 0.0
      binary_tx = _named(binary_optimizer, opt, lambda step: schedule(step) * ratio, 0.0)
    else:
      raise ConfigError(f'Unknown binary optimizer {binary_optimizer!r}. '
                        f'Available: bop, {", ".join(OPTIMIZERS)}.')
    labels = jax.tree.map(lambda b: 'binary' if b else 'real', binary_mask)
    tx = optax.multi_transform({'binary': binary_tx, 'real': tx}, labels)
  if limit:
    tx = optax.chain(tx, clip_latent_weights(limit, binary_mask))
  return tx


def total_steps_of(config, num_train_examples: int) -> int:
  """``config.total_steps``, or ``total_epochs`` over the training split, rounded up."""
  steps, epochs = config.get('total_steps', None), config.get('total_epochs', None)
  if (steps is None) == (epochs is None):
    raise ConfigError('Set exactly one of config.total_steps and config.total_epochs.')
  if steps is not None:
    return int(steps)
  return max(1, math.ceil(epochs * num_train_examples / config.batch_size))
