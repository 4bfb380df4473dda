"""BNext (Guo, Bethge, Meinel & Yang 2022, "Join the High Accuracy Club on ImageNet with A
Binary Neural Network Ticket"), following the official hpi-xnor/BNext ``src/bnext.py``.

The backbone is ReActNet-A's (MobileNetV1 channels, a 3x3 then 1x1 binary conv per block,
the 1x1 duplicated and concatenated where channels double, avg-pool shortcuts). Small has
1.5x its channels; middle 1.5x and deeper stages (4, 4, 8, 4 blocks instead of 2, 2, 6, 2);
large 2x and 4, 4, 16, 4 blocks. Every binary conv sits in a "processor":

  shift -> HardSign -> binary conv -> BN -> PReLU -> info-recoupling

HardSign is sign forward with the gradient passed for |x| <= 1.5 (``hard_sign``, the same
as ``ste_sign(clip_value=1.5)``). Binary weights are temperature-annealed: clamp(W / T, -1,
1) forward with an identity gradient, T shrinking from 1 until the weights are exactly
sign(W) (the official trainer multiplies T by 0.9 every epoch); latent weights are clipped
to +-1.5 (the trainer's ``binary.latent_clip``). No per-channel weight scale.
Info-recoupling mixes the processor's input and output with a learned per-channel ratio
s in [0, 1], ``mix = s x + (1 - s) y``, and gates y by a squeeze-and-excite branch of the
mix (avg-pool, 1x1 conv C -> C/8, ReLU, 1x1 conv, sigmoid), then BN. The 3x3 processor
of even-numbered blocks is the ELM-Attention: its output multiplies the real-valued
residual PReLU(x) before BN and the residual add; odd blocks add the plain shortcut.
The first conv and the classifier (after a final PReLU) stay full precision.

Options: ``elm_attention`` / ``infor_recoupling`` give the paper's ablations (the official
``BasicBlock_No_*`` classes); ``stem_strides`` is 2 for ImageNet (the official code uses 1
whenever num_classes != 1000, for CIFAR).

Differences from the official code: the mixing ratio is clipped to [0, 1] in the forward pass
with a straight-through gradient, where the official code clamps the parameter in place;
PReLU modules the official code builds but never calls (the stem's, and ``activation1`` of
the non-attention processors) are left out, so its parameter count is higher by their
channels (tests/test_zoo_reactnet_bnext.py counts both).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcj.core import registry
from mcj.nn import blocks
from mcj.nn import layers


def _stage(widths_and_repeats):
  return tuple(c for c, n in widths_and_repeats for _ in range(n))


# Output channels of the stem and of every block (official ``stage_out_channel_*``). Large is
# the 64-channel-stem net whose BOPs match the published BNext-L (0.819G); hpi-xnor/BNext
# ``src/bnext.py`` names it "super", next to a 48-channel "large" (0.458G, no published row).
CHANNELS = {
    'tiny': _stage([(32, 1), (64, 1), (128, 2), (256, 2), (512, 6), (1024, 2)]),
    'small': _stage([(48, 1), (96, 1), (192, 2), (384, 2), (768, 6), (1536, 2)]),
    'middle': _stage([(48, 1), (96, 1), (192, 4), (384, 4), (768, 8), (1536, 4)]),
    'large': _stage([(64, 1), (128, 1), (256, 4), (512, 4), (1024, 16), (2048, 4)]),
}


DEFAULT_INPUT_QUANTIZER = 'hard_sign'
DEFAULT_KERNEL_QUANTIZER = 'bnext_weight'
binary_kernel_init = nn.initializers.normal(1e-3)  # official: randn * 0.001


def _batch_norm(train, dtype, axis_name, name):
  # torch BatchNorm2d defaults: momentum 0.1 (0.9 here), eps 1e-5.
  return blocks.batch_norm(train, axis_name=axis_name, dtype=dtype, name=name)


class PReLU(nn.Module):
  """torch ``nn.PReLU(channels)``: per-channel slope for negative inputs, init 0.25."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    slope = self.param('slope', nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class SqueezeExpand(nn.Module):
  """Info-recoupling gate: global avg-pool, 1x1 conv C -> C/8 + ReLU, 1x1 conv -> features,
  sigmoid (official ``SqueezeAndExpand`` with attention_mode='sigmoid')."""
  features: int
  ratio: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    # torch's default Conv2d init (U(+-1/sqrt(fan_in))), as the official code.
    s = nn.relu(nn.Conv(x.shape[-1] // self.ratio, (1, 1), kernel_init=layers.dense_init,
                        dtype=self.dtype, name='squeeze')(s))
    s = nn.Conv(self.features, (1, 1), kernel_init=layers.dense_init, dtype=self.dtype,
                name='expand')(s)
    return nn.sigmoid(s)


class Processor(nn.Module):
  """A binary conv with BNext's shift, HardSign, BN, PReLU and info-recoupling.

  ``elm_attention`` makes it the ELM-Attention (official ``Attention``): the output gates
  the residual PReLU(x); otherwise (``FFN_3x3`` / ``FFN_1x1``) the shortcut is x itself.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  elm_attention: bool = False
  infor_recoupling: bool = True
  input_quantizer: Any = DEFAULT_INPUT_QUANTIZER
  kernel_quantizer: Any = DEFAULT_KERNEL_QUANTIZER
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(_batch_norm, train, self.dtype, self.bn_axis_name)
    pool = (lambda t: nn.avg_pool(t, (2, 2), (2, 2))) if self.strides == 2 else (lambda t: t)

    y = blocks.LearnableBias(self.dtype, name='shift')(x)
    y = layers.QuantConv(
        self.features, self.kernel_size, self.strides, padding=self.kernel_size // 2,
        input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
        kernel_init=binary_kernel_init, dtype=self.dtype, name='binary_conv')(y)
    y = PReLU(self.dtype, name='prelu')(bn('bn1')(y))

    shortcut = pool(x)
    if self.infor_recoupling:
      ratio = self.param('mix_ratio', nn.initializers.constant(0.5), (self.features,),
                         jnp.float32)
      ratio = ratio + jax.lax.stop_gradient(jnp.clip(ratio, 0.0, 1.0) - ratio)
      ratio = ratio.astype(y.dtype)
      mix = ratio * shortcut + (1 - ratio) * y
      y = SqueezeExpand(self.features, dtype=self.dtype, name='se')(mix) * y
    if self.elm_attention:
      residual = pool(PReLU(self.dtype, name='residual_prelu')(x))
      return bn('bn2')(y * residual) + residual
    if self.infor_recoupling:
      y = bn('bn2')(y)
    return y + shortcut


class BNextBlock(nn.Module):
  """3x3 processor (ELM-Attention or plain) then 1x1 processor(s): channels kept, or doubled
  by two 1x1 processors concatenated."""
  features: int
  strides: int = 1
  elm_attention: bool = False
  infor_recoupling: bool = True
  input_quantizer: Any = DEFAULT_INPUT_QUANTIZER
  kernel_quantizer: Any = DEFAULT_KERNEL_QUANTIZER
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin = x.shape[-1]
    processor = functools.partial(
        Processor, infor_recoupling=self.infor_recoupling,
        input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
        dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = processor(cin, 3, self.strides, self.elm_attention, name='conv_3x3')(x, train)
    if self.features == cin:
      return processor(cin, 1, name='conv_1x1')(x, train)
    if self.features != 2 * cin:
      raise ValueError(f'A BNext block keeps or doubles channels: {cin} -> {self.features}.')
    return jnp.concatenate(
        [processor(cin, 1, name=f'conv_1x1_{i}')(x, train) for i in (1, 2)], axis=-1)


class BNext(nn.Module):
  """BNext-T/S/M/L: 72.4 / 76.1 / 78.3 / 80.57% top-1 (README; paper), trained 512 epochs
  with knowledge distillation. See the module docstring."""
  num_classes: int = 1000
  channels: Sequence[int] = CHANNELS['tiny']
  elm_attention: bool = True
  infor_recoupling: bool = True
  stem_strides: int = 2
  input_quantizer: Any = DEFAULT_INPUT_QUANTIZER
  kernel_quantizer: Any = DEFAULT_KERNEL_QUANTIZER
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    ch = self.channels
    x = nn.Conv(ch[0], (3, 3), self.stem_strides, padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=layers.conv_init, dtype=self.dtype, name='stem_conv')(x)
    x = _batch_norm(train, self.dtype, self.bn_axis_name, 'stem_bn')(x)
    for i in range(1, len(ch)):
      # Official rule: stride 2 where channels change (except into block 1); the 3x3
      # processor of even-numbered blocks is the ELM-Attention (block 1 never is).
      stride = 2 if ch[i] != ch[i - 1] and i > 1 else 1
      x = BNextBlock(ch[i], stride, self.elm_attention and i % 2 == 0 and i > 1,
                     self.infor_recoupling, self.input_quantizer, self.kernel_quantizer,
                     self.dtype, self.bn_axis_name, name=f'block{i}')(x, train)
    x = PReLU(self.dtype, name='head_prelu')(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, kernel_init=layers.dense_init, dtype=self.dtype,
                 name='fc')(x)
    return x.astype(jnp.float32)


MODELS = {f'bnext_{size}': functools.partial(BNext, channels=channels)
          for size, channels in CHANNELS.items()}
registry.add_all('model', MODELS)
