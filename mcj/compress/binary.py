"""Training binary latent weights: Bop (a latent-free optimizer) and latent-weight clipping.

The ``binary`` config block acts on the latent kernels of layers whose kernel quantizer has
1 bit (``mcj.nn.inspect.binary_kernel_mask``): ``optimizer`` '' trains them with the run's
optimizer like every other param; 'bop' flips their signs with Bop (Helwegen et al. 2019);
an optimizer name (e.g. 'adam') trains them at ``lr`` (None: the run's lr; same schedule
shape, no weight decay), as larq's ``CaseOptimizer`` recipes do, while the run's optimizer
trains the rest. ``latent_clip`` > 0 keeps them in [-latent_clip, latent_clip] after
every update (larq's ``WeightClip``).
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mcj.core.config import ConfigError

DEFAULTS = {'optimizer': '', 'lr': None, 'bop_threshold': 1e-8, 'bop_gamma': 1e-4,
            'latent_clip': 0.0}


class BopState(NamedTuple):
  count: jax.Array
  momentum: optax.Updates


def bop(threshold: float = 1e-8, gamma: float | optax.Schedule = 1e-4
        ) -> optax.GradientTransformation:
  """Bop, the latent-free binary optimizer (Helwegen et al. 2019; larq ``Bop``).

  Keeps an exponential moving average of gradients ``m <- m + gamma (g - m)`` and flips a
  weight's sign when ``w * m > threshold`` (the gradient has consistently pushed against
  its sign); every weight it handles becomes +-1 after the first step (exactly so from
  then on: the updates are 0 or +-2). ``gamma`` may be a schedule of the step count.
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


def wrap(tx: optax.GradientTransformation, binary, binary_mask,
         make_optimizer: Callable[[str], optax.GradientTransformation]
         ) -> optax.GradientTransformation:
  """``tx`` for the real params and the ``binary`` block's treatment of the binary ones.

  ``make_optimizer(name)`` builds a named optimizer at the binary learning rate (the
  trainer's optimizer registry, passed in so this module does not import the trainer).
  """
  binary_optimizer, limit = binary.get('optimizer', ''), binary.get('latent_clip', 0.0)
  if not binary_optimizer and not limit:
    return tx
  if binary_mask is None or not any(jax.tree.leaves(binary_mask)):
    raise ConfigError('config.binary sets an optimizer or latent_clip, but the model has no '
                      'binary (1-bit kernel) layers; unset config.binary or pick a binary model.')
  if limit < 0:
    raise ConfigError(f'config.binary.latent_clip must be >= 0, got {limit}.')
  if binary_optimizer:
    if binary_optimizer == 'bop':
      binary_tx = bop(binary.get('bop_threshold', 1e-8), binary.get('bop_gamma', 1e-4))
    else:
      binary_tx = make_optimizer(binary_optimizer)
    labels = jax.tree.map(lambda b: 'binary' if b else 'real', binary_mask)
    tx = optax.multi_transform({'binary': binary_tx, 'real': tx}, labels)
  if limit:
    tx = optax.chain(tx, clip_latent_weights(limit, binary_mask))
  return tx
