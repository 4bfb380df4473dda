"""Optimizers and learning-rate schedules by name, from ``config.optimizer`` and
``config.schedule``; each is one registered function.

``optimizer.quantizer_lr`` (None: the weights' lr) trains the quantizers' learned scales
(LSQ steps, PACT and BiT alphas: ``quant.quantizers.is_learned_scale``) at their own peak
learning rate, following the same schedule, without weight decay (BiT's and BiBERT's
``--clip_lr 1e-4``).

Weight decay applies to kernels only (arrays of rank > 1): BatchNorm scales and biases are
not decayed, as in the ResNet/MobileNet recipes. For SGD and Adam it is the coupled L2 form
of PyTorch (``g += wd * w`` before the update); AdamW and LAMB decouple it (``w -= lr * wd * w``).
"""
import math

import jax
import optax

from flax import traverse_util

from mcj.compress import binary as binary_lib
from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.quant import quantizers

OPTIMIZER_DEFAULTS = {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'nesterov': False,
                      'weight_decay': 0.0, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,
                      'grad_clip_norm': None, 'quantizer_lr': None}
SCHEDULE_DEFAULTS = {'name': 'cosine', 'warmup_epochs': 0.0, 'warmup_steps': None,
                     'end_factor': 0.0, 'step_epochs': (), 'step_factor': 0.1}


def decay_mask(params):
  """True for the parameters weight decay applies to: kernels, not BN scales or biases."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


# ----------------------------------------------------------------------------- schedules
# A schedule is ``f(base_lr, end_lr, decay_steps, sched, steps_per_epoch, warmup)`` -> the
# decay after the warmup (``sched`` is the config block).
@registry.register('schedule', 'constant')
def constant(base_lr, end_lr, decay_steps, sched, steps_per_epoch, warmup):
  return optax.constant_schedule(base_lr)


@registry.register('schedule', 'cosine')
def cosine(base_lr, end_lr, decay_steps, sched, steps_per_epoch, warmup):
  return optax.cosine_decay_schedule(base_lr, decay_steps,
                                     alpha=end_lr / base_lr if base_lr else 0.)


@registry.register('schedule', 'linear')
def linear(base_lr, end_lr, decay_steps, sched, steps_per_epoch, warmup):
  return optax.linear_schedule(base_lr, end_lr, decay_steps)


@registry.register('schedule', 'step')
def step(base_lr, end_lr, decay_steps, sched, steps_per_epoch, warmup):
  """Multiplies by ``step_factor`` at each of ``step_epochs``."""
  boundaries = {max(round(e * steps_per_epoch) - warmup, 0): sched.get('step_factor', 0.1)
                for e in sched.get('step_epochs', ())}
  return optax.piecewise_constant_schedule(base_lr, boundaries)


def make_schedule(config, total_steps: int, steps_per_epoch: float) -> optax.Schedule:
  """Warmup (linear from 0) then the named decay of ``optimizer.lr``.

  ``schedule.warmup_epochs`` or ``schedule.warmup_steps``; cosine and linear decay to
  ``lr * end_factor`` at ``total_steps``.
  """
  sched, base_lr = config.schedule, config.optimizer.lr
  decay = registry.get('schedule', sched.get('name', 'cosine'))
  warmup = sched.get('warmup_steps', None)
  if warmup is None:
    warmup = round(sched.get('warmup_epochs', 0.0) * steps_per_epoch)
  warmup = min(int(warmup), total_steps)
  decay_steps = max(total_steps - warmup, 1)
  end_lr = base_lr * sched.get('end_factor', 0.0)
  main = decay(base_lr, end_lr, decay_steps, sched, steps_per_epoch, warmup)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


# ----------------------------------------------------------------------------- optimizers
# An optimizer is ``f(opt, schedule, weight_decay)`` -> an optax transformation (``opt`` is
# the config block).
@registry.register('optimizer', 'sgd')
def sgd(opt, schedule, wd):
  return optax.chain(optax.add_decayed_weights(wd, decay_mask),
                     optax.sgd(schedule, momentum=opt.get('momentum', 0.9) or None,
                               nesterov=opt.get('nesterov', False)))


@registry.register('optimizer', 'adam')
def adam(opt, schedule, wd):
  return optax.chain(optax.add_decayed_weights(wd, decay_mask),
                     optax.adam(schedule, b1=opt.get('b1', 0.9), b2=opt.get('b2', 0.999),
                                eps=opt.get('eps', 1e-8)))


@registry.register('optimizer', 'adamw')
def adamw(opt, schedule, wd):
  return optax.adamw(schedule, b1=opt.get('b1', 0.9), b2=opt.get('b2', 0.999),
                     eps=opt.get('eps', 1e-8), weight_decay=wd, mask=decay_mask)


@registry.register('optimizer', 'lamb')
def lamb(opt, schedule, wd):
  return optax.lamb(schedule, b1=opt.get('b1', 0.9), b2=opt.get('b2', 0.999),
                    eps=opt.get('eps', 1e-8), weight_decay=wd, mask=decay_mask)


def make_optimizer(config, schedule: optax.Schedule, binary_mask=None
                   ) -> optax.GradientTransformation:
  """The optimizer named by ``config.optimizer.name``, with clipping and weight decay, and
  ``config.binary``'s treatment of binary latent kernels (``mcj.compress.binary``), for
  which ``binary_mask`` (params-shaped, True at binary latent kernels) is needed.
  """
  opt = config.optimizer
  core = registry.get('optimizer', opt.name)(opt, schedule, opt.get('weight_decay', 0.0))
  quantizer_lr = opt.get('quantizer_lr', None)
  if quantizer_lr is not None:
    if not opt.lr:
      raise ConfigError('optimizer.quantizer_lr follows the schedule of optimizer.lr, which '
                        'is 0: set optimizer.lr > 0 or unset quantizer_lr.')
    ratio = quantizer_lr / opt.lr
    scales = registry.get('optimizer', opt.name)(opt, lambda count: schedule(count) * ratio,
                                                 0.0)
    core = optax.multi_transform({'weights': core, 'quantizer_scales': scales},
                                 scale_labels)
  clip = opt.get('grad_clip_norm', None)
  tx = optax.chain(optax.clip_by_global_norm(clip), core) if clip else core
  binary = config.get('binary', None) or {}

  def binary_optimizer(name):
    if not registry.contains('optimizer', name):
      raise registry.unknown_name_error('binary_optimizer', name,
                                        ['bop'] + registry.names('optimizer'))
    ratio = (binary.get('lr', None) or opt.lr) / opt.lr if opt.lr else 0.0
    return registry.get('optimizer', name)(opt, lambda count: schedule(count) * ratio, 0.0)

  return binary_lib.wrap(tx, binary, binary_mask, binary_optimizer)


def scale_labels(params):
  """'quantizer_scales' at the quantizers' learned scales, 'weights' elsewhere."""
  flat = traverse_util.flatten_dict(params, keep_empty_nodes=False)
  return traverse_util.unflatten_dict(
      {path: 'quantizer_scales' if quantizers.is_learned_scale(path) else 'weights'
       for path in flat})


def total_steps_of(config, num_train_examples: int) -> int:
  """``config.total_steps``, or ``total_epochs`` over the training split, rounded up."""
  steps, epochs = config.get('total_steps', None), config.get('total_epochs', None)
  if (steps is None) == (epochs is None):
    raise ConfigError('Set exactly one of config.total_steps and config.total_epochs.')
  if steps is not None:
    return int(steps)
  return max(1, math.ceil(epochs * num_train_examples / config.batch_size))
