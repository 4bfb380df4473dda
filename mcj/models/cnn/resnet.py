"""ResNets for ImageNet (torchvision v1.5) and CIFAR (He et al. 2016, option A).

Conventions shared by all models here: NHWC inputs, BatchNorm with torch's
defaults (flax momentum 0.9 = torch 0.1, epsilon 1e-5) and a two-pass variance
(``use_fast_variance=False``: E[x^2]-E[x]^2 cancels badly and makes 1- and n-device
runs drift apart), bias-free convs before
BN, kaiming-normal (fan_out) conv init as torchvision, explicit torch-style
symmetric padding (so strided convs see the same pixels as the torch models),
compute in ``dtype`` with float32 params and float32 logits.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mcj.core import registry
from mcj.core import tree as tree_lib
from mcj.nn import blocks
from mcj.nn import layers

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch.nn.Linear's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


class _Layers(nn.Module):
  """Holds the shared dtype / BatchNorm options and builds conv and BN layers."""
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  def conv(self, features, kernel, stride=1, name=None):
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False,
                   kernel_init=conv_init, dtype=self.dtype, name=name)

  def bn(self, train, name=None):
    return blocks.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype, name=name)


class BasicBlock(_Layers):
  """Two 3x3 convs; ``shortcut`` is 'conv' (1x1 conv + BN) or 'A' (He et al.

  option A: parameter-free, stride-2 subsampling and zero-padded channels).
  """
  features: int = 64
  stride: int = 1
  shortcut: str = 'conv'
  inner: Any = None  # conv1's output channels (None: features); set by channel pruning

  @nn.compact
  def __call__(self, x, train=False):
    y = self.conv(self.inner or self.features, 3, self.stride, name='conv1')(x)
    y = nn.relu(self.bn(train, name='bn1')(y))
    y = self.conv(self.features, 3, name='conv2')(y)
    y = self.bn(train, name='bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      if self.shortcut == 'A':
        x = x[:, ::self.stride, ::self.stride, :]
        extra = self.features - x.shape[-1]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
      else:
        x = self.conv(self.features, 1, self.stride, name='downsample_conv')(x)
        x = self.bn(train, name='downsample_bn')(x)
    return nn.relu(x + y)


class Bottleneck(_Layers):
  """1x1-3x3-1x1 bottleneck, ResNet v1.5: the stride sits on the 3x3 conv."""
  features: int = 64
  stride: int = 1
  expansion: int = 4
  inner: Any = None  # (conv1, conv2) output channels (None: features); channel pruning

  @nn.compact
  def __call__(self, x, train=False):
    out = self.features * self.expansion
    inner = self.inner or (self.features, self.features)
    y = self.conv(inner[0], 1, name='conv1')(x)
    y = nn.relu(self.bn(train, name='bn1')(y))
    y = self.conv(inner[1], 3, self.stride, name='conv2')(y)
    y = nn.relu(self.bn(train, name='bn2')(y))
    y = self.conv(out, 1, name='conv3')(y)
    y = self.bn(train, name='bn3')(y)
    if self.stride != 1 or x.shape[-1] != out:
      x = self.conv(out, 1, self.stride, name='downsample_conv')(x)
      x = self.bn(train, name='downsample_bn')(x)
    return nn.relu(x + y)


class ResNet(_Layers):
  """ResNet; ``stem`` 'imagenet' = 7x7/2 conv + 3x3/2 max-pool, 'cifar' = 3x3/1.

  Stage ``i`` has ``stage_sizes[i]`` blocks of width ``widths[i]``; every stage
  after the first starts with stride 2. ``inner_widths`` (one entry per block: an int for
  basic blocks, a pair for bottlenecks) narrows the convs inside the blocks: what
  ``shrink`` gives after channel pruning.
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  block: Callable[..., nn.Module] = BasicBlock
  stem: str = 'imagenet'
  inner_widths: Sequence[Any] | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.stem == 'imagenet':
      x = self.conv(self.widths[0], 7, 2, name='conv1')(x)
      x = nn.relu(self.bn(train, name='bn1')(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = self.conv(self.widths[0], 3, name='conv1')(x)
      x = nn.relu(self.bn(train, name='bn1')(x))
    index = 0
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        inner = self.inner_widths[index] if self.inner_widths else None
        x = self.block(features=width, stride=stride, dtype=self.dtype,
                       bn_axis_name=self.bn_axis_name, inner=inner,
                       name=f'layer{i + 1}_{j}')(x, train)
        index += 1
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                 name='fc')(x)
    return x.astype(jnp.float32)


  # ---------------------------------------------------------------- channel pruning
  def _bottleneck(self) -> bool:
    return getattr(self.block, 'func', self.block) is Bottleneck

  def channel_prunable(self) -> str:
    """The kernels whose output channels feed only the next conv of their block (a
    regular expression on param paths): what channel pruning removes in a ResNet, as Li et
    al. 2017, since the block outputs are tied together by the residual sums."""
    return r'^layer\d+_\d+/conv[12]/kernel$' if self._bottleneck() else (
        r'^layer\d+_\d+/conv1/kernel$')

  def shrink(self, variables):
    """The dense smaller ResNet and its variables, without the block-internal channels
    that channel pruning zeroed (BatchNorm scale and bias both 0: the channel outputs 0).
    Its outputs equal the pruned model's."""
    params = tree_lib.numpy_tree(variables['params'])
    stats = tree_lib.numpy_tree(variables.get('batch_stats', {}))
    pairs = (('conv1', 'bn1', 'conv2'), ('conv2', 'bn2', 'conv3')) if self._bottleneck() else (
        ('conv1', 'bn1', 'conv2'),)
    inner = []
    for name in sorted((k for k in params if k.startswith('layer')),
                       key=lambda k: tuple(int(v) for v in k[5:].split('_'))):
      block, block_stats, widths = params[name], stats.get(name, {}), []
      for conv, bn, consumer in pairs:
        live = (block[bn]['scale'] != 0) | (block[bn]['bias'] != 0)
        if not live.any():
          live[0] = True  # a block keeps one (zero) channel
        block[conv]['kernel'] = block[conv]['kernel'][..., live]
        block[bn] = {k: v[live] for k, v in block[bn].items()}
        if bn in block_stats:
          block_stats[bn] = {k: v[live] for k, v in block_stats[bn].items()}
        block[consumer]['kernel'] = block[consumer]['kernel'][..., live, :]
        widths.append(int(live.sum()))
      inner.append(tuple(widths) if self._bottleneck() else widths[0])
    return self.clone(inner_widths=tuple(inner)), {'params': params, 'batch_stats': stats}


def _cifar(depth):
  """CIFAR ResNet-``depth`` (6n+2 layers, 16/32/64 channels, option-A shortcut)."""
  n = (depth - 2) // 6
  return functools.partial(
      ResNet, stage_sizes=(n, n, n), widths=(16, 32, 64), stem='cifar',
      block=functools.partial(BasicBlock, shortcut='A'))


MODELS = {
    # torchvision resnet18/34/50 (v1.5), for ImageNet-sized inputs.
    'resnet18': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)),
    'resnet34': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)),
    'resnet50': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                                  block=Bottleneck),
    # He et al. 2016, sec. 4.2: CIFAR ResNets with option-A shortcuts.
    **{f'resnet{d}': _cifar(d) for d in (20, 32, 44, 56, 110)},
    # The common "ResNet-18 for CIFAR": 3x3 stride-1 stem, no max-pool,
    # 64-128-256-512 BasicBlocks with 1x1-conv projection shortcuts.
    'resnet18_cifar': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                                        stem='cifar'),
}
registry.add_all('model', MODELS)
