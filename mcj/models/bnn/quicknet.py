"""QuickNetSmall / QuickNet / QuickNetLarge (Bannink et al. 2021, "Larq Compute Engine:
Design, Benchmark, and Deploy State-of-the-Art Binarized Neural Networks", arXiv:2011.09398),
as larq-zoo 2.4 builds them (``larq_zoo/sota/quicknet.py``).

Sections of residual blocks x + BN(ReLU(binary 3x3 conv(x))), with ``ste_sign(clip_value=1.25)``
on input and kernel and the binary conv's input padded with +1 (larq ``pad_values=1.0``), so
a binary conv only ever sees +-1. Between sections a full-precision transition changes width
and halves the resolution: ReLU -> 2x2/1 max-pool ('valid') -> fixed 3x3/2 blur-pool
(anti-aliased downsampling, Zhang 2019; a constant, not trained) -> 1x1 conv -> BN. Stem:
3x3/2 conv to width/4 -> BN -> ReLU -> 3x3/2 depthwise conv -> BN without scale or bias ->
1x1 conv to width -> BN. Head: ReLU, global average pool, dense.

Details kept from larq-zoo: the stem's BatchNorms use Keras defaults (momentum 0.99, epsilon
1e-3), every other BN momentum 0.9 / epsilon 1e-5; He-normal stem convs, Glorot-normal
binary, transition and dense kernels, Glorot-uniform depthwise kernel; TF 'same' padding.
larq's ``WeightClip(1.25)`` on binary kernels is the trainer's ``binary.latent_clip``. The
blur-pool kernel is a constant here (larq stores it as a frozen weight), so it is in neither
``params`` nor ``batch_stats``.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mcj.core import registry
from mcj.nn import blocks
from mcj.nn import layers

QUANTIZER = 'ste_sign(clip_value=1.25)'
he_normal = nn.initializers.he_normal()
glorot_normal = nn.initializers.glorot_normal()
glorot_uniform = nn.initializers.glorot_uniform()


def blur_pool(x, stride: int = 2):
  """Depthwise 3x3 binomial ([1, 2, 1] x [1, 2, 1] / 16) filter with ``stride``, TF 'same'
  padding: larq-zoo's frozen ``blurpool_initializer`` kernel."""
  taps = np.outer([1., 2., 1.], [1., 2., 1.]) / 16.
  channels = x.shape[-1]
  kernel = jnp.asarray(np.tile(taps[:, :, None, None], (1, 1, 1, channels)), x.dtype)
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=channels)


class QuickNet(nn.Module):
  """QuickNet: ``section_blocks[i]`` residual blocks of width ``section_filters[i]``.

  ``input_quantizer=None, kernel_quantizer=None`` gives the full-precision twin.
  """
  num_classes: int = 1000
  section_blocks: Sequence[int] = (4, 4, 4, 4)
  section_filters: Sequence[int] = (64, 128, 256, 512)
  input_quantizer: Any = QUANTIZER
  kernel_quantizer: Any = QUANTIZER
  kernel_scale: str = 'none'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(blocks.batch_norm, train, axis_name=self.bn_axis_name,
                           dtype=self.dtype)
    keras_bn = functools.partial(bn, momentum=0.99, epsilon=1e-3)
    conv = functools.partial(layers.QuantConv, padding='SAME', dtype=self.dtype)

    width = self.section_filters[0]
    x = x.astype(self.dtype)
    x = conv(width // 4, 3, 2, kernel_init=he_normal, name='stem_conv')(x)
    x = nn.relu(keras_bn(name='stem_bn')(x))
    x = layers.QuantDepthwiseConv(3, 2, 'SAME', kernel_init=glorot_uniform, dtype=self.dtype,
                                  name='stem_depthwise')(x)
    x = keras_bn(use_scale=False, use_bias=False, name='stem_depthwise_bn')(x)
    x = conv(width, 1, kernel_init=he_normal, name='stem_pointwise')(x)
    x = keras_bn(name='stem_pointwise_bn')(x)

    for s, (num_blocks, filters) in enumerate(zip(self.section_blocks, self.section_filters)):
      for b in range(num_blocks):
        name = f'section{s}_block{b}'
        if filters != x.shape[-1]:
          x = nn.relu(x)
          x = nn.max_pool(x, (2, 2), (1, 1))
          x = blur_pool(x, 2)
          x = conv(filters, 1, kernel_init=glorot_normal, name=f'{name}_transition_conv')(x)
          x = bn(name=f'{name}_transition_bn')(x)
        y = conv(filters, 3, input_quantizer=self.input_quantizer,
                 kernel_quantizer=self.kernel_quantizer, kernel_scale=self.kernel_scale,
                 pad_value=1.0, kernel_init=glorot_normal, name=f'{name}_conv')(x)
        x = x + bn(name=f'{name}_bn')(nn.relu(y))

    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    x = layers.QuantDense(self.num_classes, kernel_init=glorot_normal, dtype=self.dtype,
                          name='fc')(x)
    return x.astype(jnp.float32)


MODELS = {
    'quicknet_small': functools.partial(QuickNet, section_blocks=(4, 4, 4, 4),
                                        section_filters=(32, 64, 256, 512)),
    'quicknet': functools.partial(QuickNet, section_blocks=(4, 4, 4, 4),
                                  section_filters=(64, 128, 256, 512)),
    'quicknet_large': functools.partial(QuickNet, section_blocks=(6, 8, 12, 6),
                                        section_filters=(64, 128, 256, 512)),
}
registry.add_all('model', MODELS)
