"""Binary ResNets: XNOR-Net, Bi-Real Net, BinaryResNetE, Real-to-Binary, ReActNet (ImageNet)
and IR-Net's ResNet-20 / ResNet-18 / VGG-Small (CIFAR-10).

Every model binarizes its 3x3 convolutions with ``layers.QuantConv`` (both quantizers set,
so ``mcj.summary`` and ``inspect.binary_kernel_mask`` see 1-bit layers) and keeps the first
conv, the downsampling shortcuts and the classifier in full precision, as each paper does.
``input_quantizer`` / ``kernel_quantizer`` / ``kernel_scale`` default to the paper's choice;
``input_quantizer=None, kernel_quantizer=None`` builds the float twin of the same network
(the real-valued stage of a multi-stage recipe).

Conventions as ``resnet.py``: NHWC, BatchNorm with torch's defaults and a two-pass variance,
kaiming (fan_out) conv init, torch-style symmetric padding, compute in ``dtype`` with float32
params and logits. The papers' own code (PyTorch for Bi-Real and Real-to-Binary, MXNet's
BMXNet for BinaryResNetE) pads symmetrically; larq-zoo's Keras versions, whose weight files
``mcj.weights`` imports, differ in three options that change outputs but no count:
``padding='same'`` (TensorFlow's 'same': 0 before and 1 after on the strided convs and
max-pool of even-sized maps), ``bn_epsilon`` (Keras's default 1e-3 for Bi-Real and
Real-to-Binary) and ``bn_momentum`` (0.8 and 0.99 there). Bi-Real-style downsampling shortcuts average-pool 2x2; on odd sizes the
pool covers the last row/column alone, so it matches the strided conv's ceil(n/2) output
where torch's floor mode would fail.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mcj.core import registry
from mcj.nn import blocks
from mcj.nn import layers

conv_init = layers.conv_init
dense_init = layers.dense_init
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
PADDINGS = ('symmetric', 'same')


class _Options(nn.Module):
  """Options shared by every network and block here, and the layers built from them."""
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  input_quantizer: Any = None
  kernel_quantizer: Any = None
  kernel_scale: str = 'none'
  padding: str = 'symmetric'  # or 'same': TensorFlow's (larq-zoo's weights)
  bn_epsilon: float = 1e-5
  bn_momentum: float = 0.9

  def shared(self) -> dict:
    """The options a network hands down to its blocks."""
    return dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
                kernel_scale=self.kernel_scale, padding=self.padding,
                bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum)

  def bn(self, train, name=None):
    return blocks.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name)

  def _pad(self, kernel):
    """A conv's or pool's padding: (k - 1) // 2 on every side, or TensorFlow's 'same'."""
    if self.padding not in PADDINGS:
      raise ValueError(f'padding must be one of {PADDINGS}, got {self.padding!r}.')
    pad = (kernel - 1) // 2
    return 'SAME' if self.padding == 'same' else ((pad, pad), (pad, pad))

  def binary_conv(self, features, kernel=3, stride=1, name=None):
    """The quantized conv (float when both quantizers are None)."""
    return layers.QuantConv(features, kernel, stride, padding=self._pad(kernel),
                            input_quantizer=self.input_quantizer,
                            kernel_quantizer=self.kernel_quantizer,
                            kernel_scale=self.kernel_scale, dtype=self.dtype, name=name)

  def float_conv(self, features, kernel, stride=1, name=None):
    return nn.Conv(features, (kernel, kernel), (stride, stride),
                   padding=self._pad(kernel), use_bias=False,
                   kernel_init=conv_init, dtype=self.dtype, name=name)

  def pooled_shortcut(self, x, features, stride, train):
    """Bi-Real Net's downsampling shortcut: 2x2 average pool (when strided), float 1x1
    conv, BN."""
    if stride > 1:
      pads = tuple((0, n % 2) for n in x.shape[1:3])
      x = nn.avg_pool(x, (2, 2), (2, 2), padding=pads, count_include_pad=False)
    x = self.float_conv(features, 1, name='shortcut_conv')(x)
    return self.bn(train, name='shortcut_bn')(x)

  def imagenet_stem(self, x, features, train, activation):
    """7x7/2 float conv, BN, ``activation`` ('relu', 'prelu' or None), 3x3/2 max-pool."""
    x = self.float_conv(features, 7, 2, name='stem_conv')(x)
    x = self.bn(train, name='stem_bn')(x)
    if activation == 'relu':
      x = nn.relu(x)
    elif activation == 'prelu':
      x = prelu(self, x, 'stem_prelu_slope')
    return nn.max_pool(x, (3, 3), (2, 2), padding=self._pad(3))

  def classifier(self, x, num_classes):
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(num_classes, kernel_init=dense_init, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32)


def _hardtanh(x):
  return jnp.clip(x, -1, 1)


def prelu(module, x, name):
  """PReLU with a per-channel slope param ``name`` of ``module`` (torch's init, 0.25)."""
  slope = module.param(name, nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
  return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


# ----------------------------------------------------------------------------- XNOR-Net
class XnorBlock(_Options):
  """Two binary 3x3 convs in XNOR-Net's order, BN -> binarize -> conv (Rastegari et al.
  2016, "Training XNOR-Networks": BN before the sign so the binarized input is centred);
  the sign is the only nonlinearity. Shortcut: identity, or torchvision's float 1x1 conv +
  BN when the shape changes."""
  features: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    y = self.binary_conv(self.features, 3, self.stride, name='conv1')(
        self.bn(train, name='bn1')(x))
    y = self.binary_conv(self.features, 3, name='conv2')(self.bn(train, name='bn2')(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = self.float_conv(self.features, 1, self.stride, name='shortcut_conv')(x)
      x = self.bn(train, name='shortcut_bn')(x)
    return x + y


class XnorResNet(_Options):
  """XNOR-Net ResNet-18 (Rastegari et al. 2016: 51.2 top-1, 73.2 top-5).

  XNOR-Net released code only for AlexNet, so the ResNet layout follows the paper's text:
  torchvision ResNet-18 with every 3x3 conv of the residual stages binarized (inputs by
  sign, weights by sign times the per-output-channel mean|W|, ``kernel_scale='xnor'``) and
  preceded by its BatchNorm; first conv and classifier stay float, and the network ends
  with BN + ReLU before pooling, as XNOR AlexNet does before its classifier (larq-zoo
  ``literature/xnornet.py``). XNOR-Net's activation scale K (a box filter over mean|I|) is
  left out, as in larq-zoo and in later re-implementations (Bulat & Tzimiropoulos 2019
  show it adds little); the weight scale is a constant in the backward pass.
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  input_quantizer: Any = 'ste_sign'
  kernel_quantizer: Any = 'ste_sign'
  kernel_scale: str = 'xnor'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.imagenet_stem(x, self.widths[0], train, activation='relu')
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = XnorBlock(features=width, stride=2 if i > 0 and j == 0 else 1,
                      **self.shared(), name=f'layer{i + 1}_{j}')(x, train)
    x = nn.relu(self.bn(train, name='final_bn')(x))
    return self.classifier(x, self.num_classes)


# ----------------------------------------------------------------------------- Bi-Real Net
class BiRealBlock(_Options):
  """One binary 3x3 conv + BN with a real-valued shortcut around it (Liu et al. 2018)."""
  features: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    y = self.binary_conv(self.features, 3, self.stride, name='conv')(x)
    y = self.bn(train, name='bn')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = self.pooled_shortcut(x, self.features, self.stride, train)
    return x + y


class ReActBiRealBlock(_Options):
  """ReActNet's ResNet-18 block: Bi-Real's single binary 3x3 conv with RSign and RPReLU
  (Liu et al. 2020, official ``resnet/*/birealnet.py``): RSign (a learned per-channel shift,
  ``blocks.LearnableBias`` named ``rsign_shift``, then the conv's sign input quantizer), the
  binary conv + BN + shortcut, then RPReLU (shift, PReLU, shift). The MobileNet-shaped
  ReActNet-A has its own two-conv block, ``reactnet.ReActNetABlock``."""
  features: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    y = blocks.LearnableBias(self.dtype, name='rsign_shift')(x)
    y = self.binary_conv(self.features, 3, self.stride, name='conv')(y)
    y = self.bn(train, name='bn')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = self.pooled_shortcut(x, self.features, self.stride, train)
    return blocks.RPReLU(self.dtype, name='rprelu')(x + y)


class BiRealNet(_Options):
  """Bi-Real Net (Liu et al. 2018; official liuzechun/Bi-Real-net
  ``pytorch_implementation``, larq-zoo ``literature/birealnet.py``): 18/34 layers as 16/32
  single-conv blocks, each binary 3x3 conv bypassed by a real-valued identity; activations
  by ApproxSign, weights by sign x mean|W| (the magnitude-aware sign, ``kernel_scale='xnor'``
  with the STE clipped at |W| <= 1); float stem (7x7 conv, BN, max-pool, no ReLU, as the
  official code) and classifier; downsampling shortcut = avg-pool + float 1x1 conv + BN.

  ``block=ReActBiRealBlock`` gives ReActNet's ResNet-18 (``reactnet_resnet18``).

  Differences from the official PyTorch code: latent weights start kaiming-normal (there:
  uniform in [0, 1e-3]), and their gradient is the clipped STE times the per-channel
  constant mean|W| (there: the clipped STE alone); Adam's per-parameter normalisation
  makes that constant factor nearly irrelevant.
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = (4, 4, 4, 4)
  widths: Sequence[int] = (64, 128, 256, 512)
  block: Callable[..., nn.Module] = BiRealBlock
  input_quantizer: Any = 'approx_sign'
  kernel_quantizer: Any = 'ste_sign'
  kernel_scale: str = 'xnor'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.imagenet_stem(x, self.widths[0], train, activation=None)
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = self.block(features=width, stride=2 if i > 0 and j == 0 else 1,
                       **self.shared(), name=f'layer{i + 1}_{j}')(x, train)
    return self.classifier(x, self.num_classes)


class BinaryResNetE(_Options):
  """BinaryResNetE18 (Bethge et al. 2019, "Back to Simplicity"; larq-zoo
  ``literature/resnet_e.py``): Bi-Real's single-conv blocks with ste_sign (clip 1.25) on
  inputs and weights and no weight scale; stem 7x7 conv, BN, ReLU, max-pool, BN; ReLU
  before the pooled classifier. larq-zoo switches to a 3x3 stem below 50 px; here the stem
  is always the ImageNet one."""
  num_classes: int = 1000
  stage_sizes: Sequence[int] = (4, 4, 4, 4)
  widths: Sequence[int] = (64, 128, 256, 512)
  input_quantizer: Any = 'ste_sign(clip_value=1.25)'
  kernel_quantizer: Any = 'ste_sign(clip_value=1.25)'
  kernel_scale: str = 'none'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.imagenet_stem(x, self.widths[0], train, activation='relu')
    x = self.bn(train, name='stem_bn2')(x)
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = BiRealBlock(features=width, stride=2 if i > 0 and j == 0 else 1,
                        **self.shared(), name=f'layer{i + 1}_{j}')(x, train)
    return self.classifier(nn.relu(x), self.num_classes)


# ----------------------------------------------------------------------------- Real-to-Binary
class RealToBinaryUnit(_Options):
  """Half of a Real-to-Binary block (Martinez et al. 2020, Fig. 1 and sec. 4.3; larq-zoo
  ``half_binary_block``): BN, binary 3x3 conv, data-driven channel scaling, PReLU, then the
  real-valued shortcut. The scaling is squeeze-excite-like on the conv's real input:
  global pool -> dense(C_in / 8, ReLU) -> dense(C_out, sigmoid) multiplies the conv output.
  ``conv_input_activation='tanh'`` is the real-valued first stage (larq-zoo
  ``RealToBinNetFP`` feeds tanh of the BN output to a float conv)."""
  features: int = 64
  stride: int = 1
  conv_input_activation: str = 'none'
  scaling_reduction: int = 8

  @nn.compact
  def __call__(self, x, train=False):
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = self.pooled_shortcut(x, self.features, self.stride, train)
    h = self.bn(train, name='bn')(x)
    if self.conv_input_activation not in ('none', 'tanh'):
      raise ValueError(f"conv_input_activation must be 'none' or 'tanh', got "
                       f'{self.conv_input_activation!r}.')
    conv_in = jnp.tanh(h) if self.conv_input_activation == 'tanh' else h
    y = self.binary_conv(self.features, 3, self.stride, name='conv')(conv_in)
    z = jnp.mean(h, axis=(1, 2))
    z = nn.relu(nn.Dense(x.shape[-1] // self.scaling_reduction, use_bias=False,
                         kernel_init=he_normal, dtype=self.dtype, name='scale_reduce')(z))
    z = nn.sigmoid(nn.Dense(self.features, use_bias=False, kernel_init=he_normal,
                            dtype=self.dtype, name='scale_expand')(z))
    y = y * z[:, None, None, :]
    return prelu(self, y, 'prelu_slope') + shortcut


class RealToBinaryNet(_Options):
  """Real-to-Binary Net (Martinez et al. 2020; larq-zoo ``literature/real_to_bin_nets.py``,
  ``RealToBinaryNet``, 65.01 top-1): ResNet-18 layout of 4 stages x 2 blocks x 2 units
  (``RealToBinaryUnit``); float stem (7x7 conv, BN, PReLU, max-pool) and classifier. The
  stem has a PReLU because larq-zoo's code gives every StrongBaselineNet subclass one (its
  comment says ReLU); with it the count matches larq-zoo's 11,995,624 (BN statistics in).

  The paper's stages are this model with: ``input_quantizer=None,
  conv_input_activation='tanh'`` (real-valued, tanh inputs), ``input_quantizer='ste_sign',
  kernel_quantizer=None`` (binary activations) and the defaults (fully binary, sign
  weights without a scale: the learned scaling replaces it).
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  input_quantizer: Any = 'ste_sign'
  kernel_quantizer: Any = 'ste_sign'
  kernel_scale: str = 'none'
  conv_input_activation: str = 'none'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.imagenet_stem(x, self.widths[0], train, activation='prelu')
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        for half in 'ab':
          stride = 2 if i > 0 and j == 0 and half == 'a' else 1
          x = RealToBinaryUnit(features=width, stride=stride,
                               conv_input_activation=self.conv_input_activation,
                               **self.shared(), name=f'layer{i + 1}_{j}{half}')(x, train)
    return self.classifier(x, self.num_classes)


# ----------------------------------------------------------------------------- IR-Net, CIFAR-10
class IRNetShortcutPerConvBlock(_Options):
  """IR-Net's ResNet-20 block (htqin/IR-Net ``CIFAR-10/ResNet20/1w1a/resnet.py``,
  ``BasicBlock_1w1a``): two binary 3x3 convs, each followed by BN, its own shortcut and a
  Hardtanh (Bi-Real style). The first conv's shortcut is He et al.'s option A when the shape
  changes: stride-2 subsampling and zero-padded channels, no params."""
  features: int = 16
  stride: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = x[:, ::self.stride, ::self.stride, :]
      extra = self.features - x.shape[-1]
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    y = self.bn(train, name='bn1')(self.binary_conv(self.features, 3, self.stride,
                                                    name='conv1')(x))
    y = _hardtanh(y + shortcut)
    z = self.bn(train, name='bn2')(self.binary_conv(self.features, 3, name='conv2')(y))
    return _hardtanh(z + y)


class IRNetBasicBlock(_Options):
  """IR-Net's CIFAR ResNet-18 block (htqin/IR-Net ``CIFAR-10/ResNet18/resnet.py``, kuangliu
  layout): binary conv, BN, Hardtanh, binary conv, BN, + shortcut (float 1x1 conv + BN when
  the shape changes), Hardtanh."""
  features: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    y = self.binary_conv(self.features, 3, self.stride, name='conv1')(x)
    y = _hardtanh(self.bn(train, name='bn1')(y))
    y = self.bn(train, name='bn2')(self.binary_conv(self.features, 3, name='conv2')(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = self.float_conv(self.features, 1, self.stride, name='shortcut_conv')(x)
      x = self.bn(train, name='shortcut_bn')(x)
    return _hardtanh(x + y)


class BinaryCifarResNet(_Options):
  """Binary CIFAR ResNets in IR-Net's layouts (Qin et al. 2020; htqin/IR-Net): float 3x3
  stem conv + BN (+ Hardtanh for ResNet-20), binary blocks, global average pool,
  BatchNorm1d, float classifier. The default block (``binary_resnet20``) puts a shortcut
  around every binary conv, He et al.'s option A (subsample + zero-padded channels) where
  the shape changes (``IRNetShortcutPerConvBlock``); ``binary_resnet18_cifar`` uses the
  two-conv ``IRNetBasicBlock``.

  The quantizers are options. The defaults are IR-Net's: weights by the balanced,
  standardised sign with a power-of-two scale (``irnet_weight``), activations by the
  error-decay estimator (``ede``). Other recipes pass their own: ``configs/quickstart.py``
  and ``configs/digits`` train it with Bi-Real's (``input_quantizer='approx_sign'``,
  ``kernel_quantizer='ste_sign', kernel_scale='xnor'``: sign x per-channel mean|W|),
  ``configs/cifar10/bnn.py`` with IR-Net's ``ede`` at the
  official ResNet-20 schedule.
  """
  num_classes: int = 10
  stage_sizes: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 32, 64)
  block: Callable[..., nn.Module] = IRNetShortcutPerConvBlock
  stem_hardtanh: bool = True
  input_quantizer: Any = 'ede'
  kernel_quantizer: Any = 'irnet_weight'
  kernel_scale: str = 'none'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.float_conv(self.widths[0], 3, name='stem_conv')(x)
    x = self.bn(train, name='stem_bn')(x)
    if self.stem_hardtanh:
      x = _hardtanh(x)
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = self.block(features=width, stride=2 if i > 0 and j == 0 else 1,
                       **self.shared(), name=f'layer{i + 1}_{j}')(x, train)
    x = self.bn(train, name='pool_bn')(jnp.mean(x, axis=(1, 2)))
    x = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32)


class VGGSmall(_Options):
  """VGG-Small (Zhang et al. 2018, LQ-Nets; binarized as in htqin/IR-Net
  ``CIFAR-10/VGG-Small/vgg.py``, ``VGG_SMALL_1W1A``): 128C3-128C3-MP2-256C3-256C3-MP2-
  512C3-512C3-MP2-FC. The first conv and the classifier stay float; every binary conv is
  followed (after the pool where there is one) by BN and Hardtanh."""
  num_classes: int = 10
  widths: Sequence[int] = (128, 128, 256, 256, 512, 512)
  input_quantizer: Any = 'ede'
  kernel_quantizer: Any = 'irnet_weight'
  kernel_scale: str = 'none'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.float_conv(self.widths[0], 3, name='conv0')(x)
    x = _hardtanh(self.bn(train, name='bn0')(x))
    for i, width in enumerate(self.widths[1:], start=1):
      x = self.binary_conv(width, 3, name=f'conv{i}')(x)
      if i % 2 == 1:
        x = nn.max_pool(x, (2, 2), (2, 2))
      x = _hardtanh(self.bn(train, name=f'bn{i}')(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32)


MODELS = {
    'xnor_resnet18': XnorResNet,
    'birealnet18': functools.partial(BiRealNet, stage_sizes=(4, 4, 4, 4)),
    'birealnet34': functools.partial(BiRealNet, stage_sizes=(6, 8, 12, 6)),
    'binary_resnet_e18': BinaryResNetE,
    'real_to_binary': RealToBinaryNet,
    'reactnet_resnet18': functools.partial(BiRealNet, block=ReActBiRealBlock),
    # ResNet-20 in IR-Net's layout: option-A shortcut around every binary conv.
    'binary_resnet20': BinaryCifarResNet,
    # IR-Net's ResNet-18 for CIFAR (kuangliu): 3x3 stem, no max-pool, 1x1-conv shortcuts.
    'binary_resnet18_cifar': functools.partial(
        BinaryCifarResNet, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512),
        block=IRNetBasicBlock, stem_hardtanh=False),
    'binary_vgg_small': VGGSmall,
}
registry.add_all('model', MODELS)
