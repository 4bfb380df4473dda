"""Blocks every model shares: BatchNorm as mcj uses it, and ReActNet's learnable shifts."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mcj.quant import quantizers


def batch_norm(train: bool, *, axis_name=None, dtype=jnp.float32, momentum=0.9, epsilon=1e-5,
               **options) -> nn.BatchNorm:
  """BatchNorm as every mcj model uses it: torch's defaults (flax momentum 0.9 = torch 0.1),
  statistics averaged over the devices of ``axis_name``, and the two-pass variance
  (E[x^2]-E[x]^2 cancels badly and makes 1- and n-device runs drift apart). ``options``
  go to ``nn.BatchNorm`` (``name``, ``use_scale``, ...)."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                      use_fast_variance=False, axis_name=axis_name, dtype=dtype, **options)


class LearnableBias(nn.Module):
  """Adds a learned per-channel shift (ReActNet's RSign threshold / RPReLU shifts)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return x + bias.astype(self.dtype)


class RPReLU(nn.Module):
  """ReActNet's RPReLU: shift, PReLU with a per-channel slope (init 0.25), shift."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = LearnableBias(self.dtype, name='shift_in')(x)
    slope = self.param('slope', nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    x = jnp.where(x >= 0, x, slope.astype(x.dtype) * x)
    return LearnableBias(self.dtype, name='shift_out')(x)


class RSign(nn.Module):
  """ReActNet's RSign: a learned per-channel threshold, then a sign quantizer."""
  quantizer: Any = 'approx_sign'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return quantizers.resolve(self.quantizer)(LearnableBias(self.dtype, name='threshold')(x))
