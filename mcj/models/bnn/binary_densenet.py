"""BinaryDenseNet 28 / 37 / 45 and 37-dilated (Bethge et al. 2019, "Back to Simplicity: How
to Train Accurate BNNs from Scratch?", arXiv:1906.08637), as larq-zoo 2.4 builds them
(``larq_zoo/literature/densenet.py``).

A dense block is BN -> binary 3x3 conv (64 new channels, ``ste_sign(clip_value=1.3)`` on
input and kernel, zero padding) -> concatenate. Between sections a full-precision transition
BN -> 2x2 max-pool -> ReLU -> 1x1 conv shrinks the channels by ``reduction`` (rounded to a
multiple of 32). The stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) and the classifier stay full
precision. As in larq-zoo, inputs smaller than 50 pixels get a 3x3/1 stem conv alone.

Padding is TF 'same' (larq-zoo is Keras): symmetric for the stride-1 convs, one extra pixel
bottom/right for the strided stem. Initialisers follow larq-zoo: Glorot-normal for binary
kernels, He-normal for the full-precision convs and the classifier. larq's
``WeightClip(1.3)`` on the binary kernels is the trainer's ``binary.latent_clip``, not a layer
option. BatchNorm: momentum 0.9, epsilon 1e-5.

The dilated variant keeps the resolution of the last two sections (no max-pool before them)
and dilates their binary convs by 2 and 4; its params equal BinaryDenseNet37's.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mcj.core import registry
from mcj.nn import blocks
from mcj.nn import layers

QUANTIZER = 'ste_sign(clip_value=1.3)'
he_normal = nn.initializers.he_normal()
glorot_normal = nn.initializers.glorot_normal()


class BinaryDenseNet(nn.Module):
  """BinaryDenseNet: ``section_layers[i]`` dense blocks per section, transitions between.

  ``input_quantizer=None, kernel_quantizer=None`` gives the full-precision twin.
  """
  num_classes: int = 1000
  section_layers: Sequence[int] = (6, 6, 6, 5)
  reduction: Sequence[float] = (2.7, 2.7, 2.2)
  dilation: Sequence[int] = (1, 1, 1, 1)
  initial_filters: int = 64
  growth_rate: int = 64
  input_quantizer: Any = QUANTIZER
  kernel_quantizer: Any = QUANTIZER
  kernel_scale: str = 'none'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(blocks.batch_norm, train, axis_name=self.bn_axis_name,
                           dtype=self.dtype)
    fp_conv = functools.partial(layers.QuantConv, padding='SAME', kernel_init=he_normal,
                                dtype=self.dtype)
    x = x.astype(self.dtype)
    if x.shape[1] < 50:  # larq-zoo's small-input stem
      x = fp_conv(self.initial_filters, 3, name='stem_conv')(x)
    else:
      x = fp_conv(self.initial_filters, 7, 2, name='stem_conv')(x)
      x = nn.relu(bn(name='stem_bn')(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')

    last = len(self.section_layers) - 1
    for s, num_layers in enumerate(self.section_layers):
      for i in range(num_layers):
        y = bn(name=f'section{s}_block{i}_bn')(x)
        y = self._binary_conv(self.dilation[s], f'section{s}_block{i}_conv')(y)
        x = jnp.concatenate([x, y], axis=-1)
      if s < last:
        x = bn(name=f'transition{s}_bn')(x)
        if self.dilation[s + 1] == 1:
          x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(x)
        features = round(x.shape[-1] // self.reduction[s] / 32) * 32  # larq-zoo's rounding
        x = fp_conv(features, 1, name=f'transition{s}_conv')(x)

    x = nn.relu(bn(name='final_bn')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = layers.QuantDense(self.num_classes, kernel_init=he_normal, dtype=self.dtype,
                          name='fc')(x)
    return x.astype(jnp.float32)

  def _binary_conv(self, dilation, name):
    options = dict(features=self.growth_rate, kernel_size=3,
                   input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
                   kernel_scale=self.kernel_scale, kernel_init=glorot_normal, dtype=self.dtype,
                   name=name)
    return layers.QuantConv(padding='SAME', kernel_dilation=dilation, **options)


MODELS = {
    'binary_densenet28': functools.partial(
        BinaryDenseNet, section_layers=(6, 6, 6, 5), reduction=(2.7, 2.7, 2.2)),
    'binary_densenet37': functools.partial(
        BinaryDenseNet, section_layers=(6, 8, 12, 6), reduction=(3.3, 3.3, 4.0)),
    'binary_densenet37_dilated': functools.partial(
        BinaryDenseNet, section_layers=(6, 8, 12, 6), reduction=(3.3, 3.3, 4.0),
        dilation=(1, 1, 2, 4)),
    'binary_densenet45': functools.partial(
        BinaryDenseNet, section_layers=(6, 12, 14, 8), reduction=(2.7, 3.3, 4.0)),
}
registry.add_all('model', MODELS)
