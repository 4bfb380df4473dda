"""MeliusNet 22 / 29 / 42 / 59 (Bethge et al. 2020, "MeliusNet: Can Binary Neural Networks
Achieve MobileNet-level Accuracy?", arXiv:2001.05936).

Layers follow larq-zoo 2.4 (``larq_zoo/literature/meliusnet.py``, which ships MeliusNet22
only); 29 / 42 / 59 take their block counts and transition widths from BMXNet-v2's
``meliusnet_spec`` (hpi-xnor/BMXNet-v2, ``binary_models/meliusnet.py``), built the same way.

Each block is a Dense Block (BN -> binary 3x3 conv, 64 channels -> concatenate) followed by
an Improvement Block (BN -> binary 3x3 conv, 64 channels, added onto the last 64 channels):
the new channels are first created, then refined. Binary convs use
``ste_sign(clip_value=1.3)`` on input and kernel and zero padding as larq-zoo (BMXNet-v2's
``--clip-threshold 1.3``). Full precision: the grouped stem (3x3/2 conv to 32, 3x3 conv with
4 groups, 3x3 conv to 64 with 8 groups, each with BN + ReLU, then max-pool), the transitions
(BN -> 2x2 max-pool -> ReLU -> 1x1 conv) and the classifier.

Design choices: the stem's max-pool is larq-zoo's 2x2/2 ('same'); BMXNet-v2's grouped stem
uses 3x3/2 with padding 1 (no params either way, same output size). All kernels are
Glorot-normal (larq-zoo); grouped convs compute Glorot's fans per group, as larq-zoo's
split-and-concatenate convs do. larq's ``WeightClip(1.3)`` on the binary kernels is the
trainer's ``binary.latent_clip``. BatchNorm: momentum 0.9, epsilon 1e-5. Padding is TF
'same' (asymmetric for the strided stem conv).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mcj.core import registry
from mcj.nn import blocks
from mcj.nn import layers

QUANTIZER = 'ste_sign(clip_value=1.3)'
GROWTH = 64
glorot_normal = nn.initializers.glorot_normal()


def grouped_glorot_normal(groups: int):
  """Glorot-normal for a grouped HWIO kernel with fans counted per group (as ``groups``
  separate convs would have)."""
  per_group = nn.initializers.variance_scaling(
      1.0, 'fan_avg', 'truncated_normal', in_axis=-3, out_axis=-1, batch_axis=(-2,))

  def init(key, shape, dtype=jnp.float32):
    kh, kw, cin, cout = shape
    kernel = per_group(key, (kh, kw, cin, groups, cout // groups), dtype)
    return kernel.reshape(shape)
  return init


class MeliusNet(nn.Module):
  """MeliusNet: ``section_blocks[i]`` Dense+Improvement blocks per section; transitions to
  ``transition_features[i]`` channels between sections.

  ``input_quantizer=None, kernel_quantizer=None`` gives the full-precision twin.
  """
  num_classes: int = 1000
  section_blocks: Sequence[int] = (4, 5, 4, 4)
  transition_features: Sequence[int] = (160, 224, 256)
  input_quantizer: Any = QUANTIZER
  kernel_quantizer: Any = QUANTIZER
  kernel_scale: str = 'none'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(blocks.batch_norm, train, axis_name=self.bn_axis_name,
                           dtype=self.dtype)
    fp_conv = functools.partial(layers.QuantConv, padding='SAME', kernel_init=glorot_normal,
                                dtype=self.dtype)
    binary_conv = functools.partial(
        layers.QuantConv, GROWTH, 3, padding='SAME', input_quantizer=self.input_quantizer,
        kernel_quantizer=self.kernel_quantizer, kernel_scale=self.kernel_scale,
        kernel_init=glorot_normal, dtype=self.dtype)

    x = x.astype(self.dtype)
    x = nn.relu(bn(name='stem_bn0')(fp_conv(32, 3, 2, name='stem_conv0')(x)))
    x = fp_conv(32, 3, feature_group_count=4, kernel_init=grouped_glorot_normal(4),
                name='stem_conv1')(x)
    x = nn.relu(bn(name='stem_bn1')(x))
    x = fp_conv(64, 3, feature_group_count=8, kernel_init=grouped_glorot_normal(8),
                name='stem_conv2')(x)
    x = nn.relu(bn(name='stem_bn2')(x))
    x = nn.max_pool(x, (2, 2), (2, 2), padding='SAME')

    for s, num_blocks in enumerate(self.section_blocks):
      for b in range(num_blocks):
        name = f'section{s}_block{b}'
        new = binary_conv(name=f'{name}_dense_conv')(bn(name=f'{name}_dense_bn')(x))
        x = jnp.concatenate([x, new], axis=-1)
        delta = binary_conv(name=f'{name}_improve_conv')(bn(name=f'{name}_improve_bn')(x))
        x = jnp.concatenate([x[..., :-GROWTH], x[..., -GROWTH:] + delta], axis=-1)
      if s < len(self.transition_features):
        x = bn(name=f'transition{s}_bn')(x)
        x = nn.relu(nn.max_pool(x, (2, 2), (2, 2), padding='SAME'))
        x = fp_conv(self.transition_features[s], 1, name=f'transition{s}_conv')(x)

    x = nn.relu(bn(name='final_bn')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = layers.QuantDense(self.num_classes, kernel_init=glorot_normal, dtype=self.dtype,
                          name='fc')(x)
    return x.astype(jnp.float32)


# BMXNet-v2 meliusnet_spec: transition widths are the numerators of its reduction factors
# (e.g. 29: 128/320, 192/512, 256/704), the same widths larq-zoo lists for 22.
MODELS = {
    'meliusnet22': functools.partial(MeliusNet, section_blocks=(4, 5, 4, 4),
                                     transition_features=(160, 224, 256)),
    'meliusnet29': functools.partial(MeliusNet, section_blocks=(4, 6, 8, 6),
                                     transition_features=(128, 192, 256)),
    'meliusnet42': functools.partial(MeliusNet, section_blocks=(5, 8, 14, 10),
                                     transition_features=(160, 256, 416)),
    'meliusnet59': functools.partial(MeliusNet, section_blocks=(6, 12, 24, 12),
                                     transition_features=(192, 320, 544)),
}
registry.add_all('model', MODELS)
