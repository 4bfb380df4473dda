"""ReActNet-A (Liu et al. 2020, "ReActNet: Towards Precise Binary Neural Network with
Generalized Activation Functions"), following the official liuzechun/ReActNet
``mobilenet/{1_step1,2_step2}/reactnet.py``.

A MobileNetV1-shaped backbone (channels 32-64-128-128-256-256-512x6-1024-1024) in which
every depthwise + pointwise pair becomes a block of two binary convs, each with a real-valued
shortcut:

  RSign -> binary 3x3 conv (Cin -> Cin, stride s) -> BN -> + shortcut -> RPReLU
  RSign -> binary 1x1 conv (Cin -> Cout)          -> BN -> + shortcut -> RPReLU

The 3x3 conv is a full (not depthwise) conv; the stride-2 shortcut is a 2x2 average pool.
Where channels double, the 1x1 conv is two Cin -> Cin convs (each with its BN and the same
shortcut added) concatenated. RSign is a learned per-channel shift followed by the conv's
input quantizer (approx_sign: sign forward, Bi-Real's 2 - 2|x| gradient), so the quantized
layers carry their precisions. Weights are sign(W) x mean|W| per output channel
(``kernel_scale='xnor'``), the scale held constant in the backward pass, and the STE passes
gradients where |W| <= 1 (``ste_sign``'s default). The first conv (no activation after its
BN, as the official code) and the classifier stay full precision.

Two training steps share one param tree: step 1 trains binary activations with real weights
(``kernel_quantizer=None, kernel_scale='none'``), step 2 starts from it with
``kernel_quantizer='ste_sign', kernel_scale='xnor'``; ``input_quantizer=None`` as well gives
the float twin.

Differences from the official code: the weight STE there passes the gradient to W unscaled,
here it is multiplied by mean|W| (a per-channel factor Adam normalises away); latent weights
are initialised with kaiming-normal instead of the step-2 file's U(0, 0.001) (step 2 starts
from step 1's weights, and the xnor scale makes the forward pass independent of |W|).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mcj.core import registry
from mcj.nn import blocks
from mcj.nn import layers

# Output channels of the stem and the 13 blocks; stride 2 where channels change (but not
# into the first block, 32 -> 64), as the official ``stage_out_channel``.
REACTNET_A_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def _batch_norm(train, dtype, axis_name, name):
  # torch BatchNorm2d defaults: momentum 0.1 (0.9 here), eps 1e-5.
  return blocks.batch_norm(train, axis_name=axis_name, dtype=dtype, name=name)


class ReActNetABlock(nn.Module):
  """One ReActNet-A (MobileNet-shaped) basic block: binary 3x3 (Cin -> Cin) then binary 1x1
  (Cin -> features), each behind RSign (a ``blocks.LearnableBias`` shift, then the conv's
  sign input quantizer) and followed by BN, a real shortcut and RPReLU. The ResNet-18-style
  ReActNet block is ``binary_resnet.ReActBiRealBlock``."""
  features: int
  strides: int = 1
  input_quantizer: Any = 'approx_sign'
  kernel_quantizer: Any = 'ste_sign'
  kernel_scale: str = 'xnor'
  pad_value: float = 0.0
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin = x.shape[-1]
    conv = functools.partial(
        layers.QuantConv, use_bias=False, input_quantizer=self.input_quantizer,
        kernel_quantizer=self.kernel_quantizer, kernel_scale=self.kernel_scale,
        pad_value=self.pad_value, dtype=self.dtype)
    bn = functools.partial(_batch_norm, train, self.dtype, self.bn_axis_name)

    y = blocks.LearnableBias(self.dtype, name='rsign_3x3')(x)
    y = bn('bn_3x3')(conv(cin, 3, self.strides, padding=1, name='conv_3x3')(y))
    shortcut = nn.avg_pool(x, (2, 2), (2, 2)) if self.strides == 2 else x
    y = blocks.RPReLU(self.dtype, name='rprelu_3x3')(y + shortcut)

    z = blocks.LearnableBias(self.dtype, name='rsign_1x1')(y)
    if self.features == cin:
      out = bn('bn_1x1')(conv(cin, 1, padding=0, name='conv_1x1')(z)) + y
    elif self.features == 2 * cin:
      out = jnp.concatenate(
          [bn(f'bn_1x1_{i}')(conv(cin, 1, padding=0, name=f'conv_1x1_{i}')(z)) + y
           for i in (1, 2)], axis=-1)
    else:
      raise ValueError(f'A ReActNet block keeps or doubles channels: {cin} -> {self.features}.')
    return blocks.RPReLU(self.dtype, name='rprelu_1x1')(out)


class ReActNetA(nn.Module):
  """ReActNet-A: 69.4% top-1 (paper abstract; 69.5 in the README), 4.82e9 BOPs and
  0.12e8 FLOPs at 224 (paper Table; OPs 0.87e8). See the module docstring."""
  num_classes: int = 1000
  channels: Sequence[int] = REACTNET_A_CHANNELS
  input_quantizer: Any = 'approx_sign'
  kernel_quantizer: Any = 'ste_sign'
  kernel_scale: str = 'xnor'
  pad_value: float = 0.0
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.channels[0], (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=layers.conv_init, dtype=self.dtype, name='stem_conv')(x)
    x = _batch_norm(train, self.dtype, self.bn_axis_name, 'stem_bn')(x)
    for i, (cin, cout) in enumerate(zip(self.channels[:-1], self.channels[1:])):
      stride = 2 if cout != cin and i > 0 else 1
      x = ReActNetABlock(cout, stride, self.input_quantizer, self.kernel_quantizer,
                         self.kernel_scale, self.pad_value, self.dtype, self.bn_axis_name,
                         name=f'block{i + 1}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, kernel_init=layers.dense_init, dtype=self.dtype,
                 name='fc')(x)
    return x.astype(jnp.float32)


MODELS = {'reactnet_a': functools.partial(ReActNetA)}
registry.add_all('model', MODELS)
