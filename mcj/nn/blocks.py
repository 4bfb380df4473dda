"""Blocks every model shares: BatchNorm as mcj uses it, and ReActNet's learnable shifts.

ReActNet's RSign is ``LearnableBias`` followed by the next layer's sign input quantizer (the
official code's ``LearnableBias`` then ``BinaryActivation``), as the models build it; there
is no separate RSign module.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def batch_norm(train: bool, *, axis_name=None, dtype=jnp.float32, momentum=0.9, epsilon=1e-5,
               **options) -> nn.BatchNorm:
  """BatchNorm as every mcj model uses it: torch's momentum and epsilon (flax momentum 0.9 =
  torch 0.1, eps 1e-5), statistics averaged over the devices of ``axis_name``, and the
  two-pass variance (E[x^2]-E[x]^2 cancels badly and makes 1- and n-device runs drift
  apart). ``options`` go to ``nn.BatchNorm`` (``name``, ``use_scale``, ...).

  One difference from torch remains, on purpose (checkpoints and results depend on it): in
  training, flax updates the running variance with the biased batch variance,
  ``var <- momentum var + (1 - momentum) mean((x - mean x)^2)``, where torch's
  ``BatchNorm2d`` uses the unbiased one, ``... + (1 - momentum) n / (n - 1) mean((x - mean
  x)^2)`` with ``n`` the elements per channel (batch x height x width, over every device of
  ``axis_name``): each update adds ``(1 - momentum) var_batch / (n - 1)`` less than torch's,
  so the running variance (used in evaluation) sits a factor of about ``(n - 1) / n`` below
  torch's; this matters only for small ``n``. The running mean, and the normalisation in
  training (biased batch variance in both), are the same as torch's.
  """
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
