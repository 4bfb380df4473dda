"""Optimizers and learning-rate schedules by name, from ``config.optimizer`` and
``config.schedule``.

Weight decay applies to kernels only (arrays of rank > 1): BatchNorm scales and biases are
not decayed, as in the ResNet/MobileNet recipes. For SGD and Adam it is the coupled L2 form
of PyTorch (``g += wd * w`` before the update); AdamW and LAMB decouple it (``w -= lr * wd * w``).
"""
import math

import jax
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


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer named by ``config.optimizer.name``, with clipping and weight decay."""
  opt = config.optimizer
  name, wd = opt.name, opt.get('weight_decay', 0.0)
  b1, b2, eps = opt.get('b1', 0.9), opt.get('b2', 0.999), opt.get('eps', 1e-8)
  if name == 'sgd':
    core = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                       optax.sgd(schedule, momentum=opt.get('momentum', 0.9) or None,
                                 nesterov=opt.get('nesterov', False)))
  elif name == 'adam':
    core = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                       optax.adam(schedule, b1=b1, b2=b2, eps=eps))
  elif name == 'adamw':
    core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
  elif name == 'lamb':
    core = optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
  else:
    raise ConfigError(f'Unknown optimizer {name!r}. Available: {", ".join(OPTIMIZERS)}.')
  clip = opt.get('grad_clip_norm', None)
  return optax.chain(optax.clip_by_global_norm(clip), core) if clip else core


def total_steps_of(config, num_train_examples: int) -> int:
  """``config.total_steps``, or ``total_epochs`` over the training split, rounded up."""
  steps, epochs = config.get('total_steps', None), config.get('total_epochs', None)
  if (steps is None) == (epochs is None):
    raise ConfigError('Set exactly one of config.total_steps and config.total_epochs.')
  if steps is not None:
    return int(steps)
  return max(1, math.ceil(epochs * num_train_examples / config.batch_size))
