"""A binary network built from a table (the ``binary`` search space's model): ReActNet /
Bi-Real-style blocks whose kernel, width, groups and depth vary per stage, and whose
downsampling shortcut, stem and classifier precisions are chosen.

Stem: a 3x3 conv (``stem_precision``: 'float', or '8bit' with LSQ 8-bit input and kernel
quantizers) + BN. Each stage ``[width, depth, kernel, groups]`` has ``depth`` blocks; the
first block of every stage but the first has stride 2. A block is two binary convs, each
behind RSign (a learned shift, then the sign input quantizer) and followed by BN, a real
shortcut and RPReLU (ReActNet-A's block, Liu et al. 2020):

  y = RPReLU(BN(binary kxk conv, Cin -> Cin, groups, stride)(RSign(x)) + pool(x))
  z = RPReLU(BN(binary 1x1 conv, Cin -> Cout)(RSign(y)) + proj(y))

``pool`` is a 2x2 average pool at stride 2 (identity otherwise); ``proj`` is the identity
when Cout = Cin, else a 1x1 conv + BN at the ``downsample`` precision ('float' as
Bi-Real / ResNet-E's real downsampling, '8bit', or 'binary'). Global average pool, then the
classifier (``head_precision``). Binary weights are sign(W) x mean|W| (``kernel_scale=
'xnor'``); ``input_quantizer=None, kernel_quantizer=None`` gives the float twin.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.nn import blocks
from mcj.nn import layers

PRECISIONS = ('float', '8bit', 'binary')
_EIGHT_BIT = 'lsq(bits=8)'


def _quantizers(precision, input_quantizer, kernel_quantizer, kernel_scale):
  """(input quantizer, kernel quantizer, kernel scale) of a layer at ``precision``."""
  if precision == 'float':
    return None, None, 'none'
  if precision == '8bit':
    return _EIGHT_BIT, _EIGHT_BIT, 'none'
  return input_quantizer, kernel_quantizer, kernel_scale


class BinaryBlock(nn.Module):
  features: int
  kernel: int = 3
  groups: int = 1
  strides: int = 1
  downsample: str = 'float'
  input_quantizer: Any = 'approx_sign'
  kernel_quantizer: Any = 'ste_sign'
  kernel_scale: str = 'xnor'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin = x.shape[-1]
    if cin % self.groups:
      raise ConfigError(f'binary_net: {cin} channels do not split into {self.groups} groups: '
                        'choose groups that divide every stage width.')
    bn = lambda name: blocks.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype,
                                        name=name)
    binary = dict(input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
                  kernel_scale=self.kernel_scale, use_bias=False, dtype=self.dtype)
    y = blocks.LearnableBias(self.dtype, name='rsign_kxk')(x)
    y = layers.QuantConv(cin, self.kernel, self.strides, padding=self.kernel // 2,
                         feature_group_count=self.groups, name='conv_kxk', **binary)(y)
    pooled = nn.avg_pool(x, (2, 2), (2, 2)) if self.strides == 2 else x
    y = blocks.RPReLU(self.dtype, name='rprelu_kxk')(bn('bn_kxk')(y) + pooled)

    z = blocks.LearnableBias(self.dtype, name='rsign_1x1')(y)
    z = bn('bn_1x1')(layers.QuantConv(self.features, 1, padding=0, name='conv_1x1',
                                      **binary)(z))
    if self.features == cin:
      shortcut = y
    else:
      q_in, q_kernel, scale = _quantizers(self.downsample, self.input_quantizer,
                                          self.kernel_quantizer, self.kernel_scale)
      shortcut = bn('bn_proj')(layers.QuantConv(
          self.features, 1, padding=0, input_quantizer=q_in, kernel_quantizer=q_kernel,
          kernel_scale=scale, use_bias=False, dtype=self.dtype, name='proj')(y))
    return blocks.RPReLU(self.dtype, name='rprelu_1x1')(z + shortcut)


class BinaryNet(nn.Module):
  """See the module docstring. ``stages``: rows of [width, depth, kernel, groups]."""
  num_classes: int = 1000
  stages: Sequence[Sequence[int]] = ((64, 2, 3, 1), (128, 2, 3, 1), (256, 2, 3, 1),
                                     (512, 2, 3, 1))
  stem_channels: int = 32
  stem_stride: int = 2
  stem_precision: str = 'float'
  downsample: str = 'float'
  head_precision: str = 'float'
  input_quantizer: Any = 'approx_sign'
  kernel_quantizer: Any = 'ste_sign'
  kernel_scale: str = 'xnor'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for what, value in (('stem_precision', self.stem_precision),
                        ('downsample', self.downsample), ('head_precision', self.head_precision)):
      if value not in PRECISIONS:
        raise ConfigError(f'binary_net {what} must be one of {", ".join(PRECISIONS)}, got '
                          f'{value!r}.')
    q = lambda p: _quantizers(p, self.input_quantizer, self.kernel_quantizer, self.kernel_scale)
    q_in, q_kernel, scale = q(self.stem_precision)
    x = layers.QuantConv(self.stem_channels, 3, self.stem_stride, padding=1, use_bias=False,
                         input_quantizer=q_in, kernel_quantizer=q_kernel, kernel_scale=scale,
                         dtype=self.dtype, name='stem')(x)
    x = blocks.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype,
                          name='stem_bn')(x)
    for i, (width, depth, kernel, groups) in enumerate(self.stages):
      for j in range(depth):
        x = BinaryBlock(int(width), int(kernel), int(groups), 2 if (i and not j) else 1,
                        self.downsample, self.input_quantizer, self.kernel_quantizer,
                        self.kernel_scale, self.dtype, self.bn_axis_name,
                        name=f'stage{i}_block{j}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    q_in, q_kernel, scale = q(self.head_precision)
    x = layers.QuantDense(self.num_classes, input_quantizer=q_in, kernel_quantizer=q_kernel,
                          kernel_scale=scale, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32)


MODELS = {'binary_net': BinaryNet}
registry.add_all('model', MODELS)
