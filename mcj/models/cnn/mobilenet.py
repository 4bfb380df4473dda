"""MobileNet v1 (Howard et al. 2017) and v2 / v3 in torchvision's layout.

Same conventions as ``resnet.py``: NHWC, bias-free convs before BN, kaiming
fan_out conv init, torch-style symmetric padding, float32 params and logits.
Classifier Dense layers of v2/v3 use torchvision's N(0, 0.01) init.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcj.core import registry
from mcj.core import tree as tree_lib
from mcj.core.config import ConfigError
from mcj.nn import blocks
from mcj.nn import layers

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_init = nn.initializers.normal(0.01)


def make_divisible(v: float, divisor: int = 8) -> int:
  """Rounds channels to a multiple of ``divisor`` (never down by more than 10%)."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBN(nn.Module):
  """Conv (no bias) + BatchNorm + optional activation, ``groups`` for depthwise."""
  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  act: Callable | None = nn.relu
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train=False):
    p = (self.kernel - 1) // 2
    if self.groups > 1 and self.groups == x.shape[-1] == self.features:  # depthwise
      x = layers.DepthwiseConv(self.kernel, self.stride, p, kernel_init=conv_init,
                               dtype=self.dtype, name='conv')(x)
    else:
      x = nn.Conv(self.features, (self.kernel, self.kernel),
                  (self.stride, self.stride), padding=((p, p), (p, p)),
                  feature_group_count=self.groups, use_bias=False,
                  kernel_init=conv_init, dtype=self.dtype, name='conv')(x)
    x = blocks.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype,
                          momentum=self.bn_momentum, epsilon=self.bn_epsilon, name='bn')(x)
    return x if self.act is None else self.act(x)


class MobileNetV1(nn.Module):
  """MobileNet v1, Howard et al. 2017, Table 1 (4.2M params, ~569M MACs).

  Table 1 lists the last depthwise conv as "s2" but its input and the following
  layer are both 7x7, i.e. stride 1; we use stride 1, which also gives the
  paper's 569M mult-adds. ``width_multiplier`` is the paper's alpha (channels
  scaled and truncated, no rounding to multiples of 8).
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  # (output channels of the pointwise conv, stride of the depthwise conv).
  blocks: Sequence[tuple[int, int]] = (
      (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
      (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

  @nn.compact
  def __call__(self, x, train: bool = False):
    ch = lambda c: max(8, int(c * self.width_multiplier))
    layer = functools.partial(ConvBN, dtype=self.dtype,
                              bn_axis_name=self.bn_axis_name)
    x = layer(ch(32), 3, 2, name='conv0')(x, train)
    for i, (c, s) in enumerate(self.blocks):
      x = layer(x.shape[-1], 3, s, groups=x.shape[-1], name=f'dw{i + 1}')(x, train)
      x = layer(ch(c), 1, name=f'pw{i + 1}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32)


class InvertedResidualV2(nn.Module):
  """MobileNet v2 block: 1x1 expand, 3x3 depthwise (ReLU6), linear 1x1 project."""
  features: int
  stride: int
  expand_ratio: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  hidden: int | None = None  # expanded channels (None: input x expand_ratio); pruning

  @nn.compact
  def __call__(self, x, train=False):
    layer = functools.partial(ConvBN, act=nn.relu6, dtype=self.dtype,
                              bn_axis_name=self.bn_axis_name)
    hidden = self.hidden or int(round(x.shape[-1] * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = layer(hidden, 1, name='expand')(y, train)
    y = layer(hidden, 3, self.stride, groups=hidden, name='dw')(y, train)
    y = layer(self.features, 1, act=None, name='project')(y, train)
    if self.stride == 1 and x.shape[-1] == self.features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNet v2 (Sandler et al. 2018) as torchvision: ReLU6, last 1280 channels.

  3.5M params and ~301M MACs at 224 with ``width_multiplier`` 1. ``stem_stride`` 1 and a
  smaller ``last_channel`` give the usual compact variants for tiny images (CIFAR, digits).
  ``hidden_widths`` (one per block; None keeps a block's own) narrows the expanded
  channels: what ``shrink`` gives after channel pruning.
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  dropout_rate: float = 0.2
  stem_stride: int = 2
  last_channel: int = 1280
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  hidden_widths: Sequence[int | None] | None = None

  # (expand ratio t, channels c, repeats n, first stride s), paper Table 2.
  settings: Sequence[tuple[int, int, int, int]] = (
      (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

  @nn.compact
  def __call__(self, x, train: bool = False):
    w = self.width_multiplier
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = ConvBN(make_divisible(32 * w), 3, self.stem_stride, act=nn.relu6, name='stem',
               **kw)(x, train)
    k = 0
    for t, c, n, s in self.settings:
      for i in range(n):
        hidden = self.hidden_widths[k] if self.hidden_widths else None
        x = InvertedResidualV2(make_divisible(c * w), s if i == 0 else 1, t, hidden=hidden,
                               name=f'block{k}', **kw)(x, train)
        k += 1
    x = ConvBN(make_divisible(self.last_channel * max(1.0, w)), 1, act=nn.relu6,
               name='head', **kw)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                 name='classifier')(x)
    return x.astype(jnp.float32)

  # ---------------------------------------------------------------- channel pruning
  def channel_prunable(self) -> str:
    """The expand convs: their channels stay inside a block (expand -> depthwise ->
    project), so channel pruning can remove them (with their depthwise channel)."""
    return r'^block\d+/expand/conv/kernel$'

  def channel_chain(self, kernel_path) -> tuple:
    """Params tied to an expand conv's output channels beyond its own BN: the depthwise
    conv and its BN, so that a pruned channel outputs exactly 0 into ``project``."""
    block = kernel_path[0]
    return ((block, 'dw', 'conv', 'kernel'), (block, 'dw', 'bn', 'scale'),
            (block, 'dw', 'bn', 'bias'))

  def shrink(self, variables):
    """The dense smaller MobileNetV2 without the expanded channels that channel pruning
    zeroed (expand BN scale and bias both 0), and its variables; same outputs."""
    params = tree_lib.numpy_tree(variables['params'])
    stats = tree_lib.numpy_tree(variables.get('batch_stats', {}))
    blocks = sorted((k for k in params if k.startswith('block')), key=lambda k: int(k[5:]))
    hidden = []
    for name in blocks:
      block, block_stats = params[name], stats.get(name, {})
      if 'expand' not in block:
        hidden.append(None)
        continue
      bn = block['expand']['bn']
      live = (bn['scale'] != 0) | (bn['bias'] != 0)
      if not live.any():
        live[0] = True  # a block keeps one (zero) channel
      block['expand']['conv']['kernel'] = block['expand']['conv']['kernel'][..., live]
      block['dw']['conv']['kernel'] = block['dw']['conv']['kernel'][..., live]
      block['project']['conv']['kernel'] = block['project']['conv']['kernel'][..., live, :]
      for part in ('expand', 'dw'):
        block[part]['bn'] = {k: v[live] for k, v in block[part]['bn'].items()}
        if part in block_stats:
          block_stats[part]['bn'] = {k: v[live] for k, v in block_stats[part]['bn'].items()}
      hidden.append(int(live.sum()))
    return self.clone(hidden_widths=tuple(hidden)), {'params': params, 'batch_stats': stats}


class SqueezeExcite(nn.Module):
  """torchvision SE: avg-pool, 1x1 conv (bias) + ReLU, 1x1 conv + hardsigmoid."""
  squeeze: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Conv(self.squeeze, (1, 1), kernel_init=conv_init,
                        dtype=self.dtype, name='fc1')(s))
    s = nn.Conv(x.shape[-1], (1, 1), kernel_init=conv_init, dtype=self.dtype,
                name='fc2')(s)
    return x * jax.nn.hard_sigmoid(s)


class InvertedResidualV3(nn.Module):
  """MobileNet v3 block: expand, depthwise, optional SE, linear project."""
  kernel: int
  expanded: int
  features: int
  use_se: bool
  act: Callable
  stride: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train=False):
    layer = functools.partial(ConvBN, act=self.act, dtype=self.dtype,
                              bn_axis_name=self.bn_axis_name,
                              bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    y = x
    if self.expanded != x.shape[-1]:
      y = layer(self.expanded, 1, name='expand')(y, train)
    y = layer(self.expanded, self.kernel, self.stride, groups=self.expanded,
              name='dw')(y, train)
    if self.use_se:
      y = SqueezeExcite(make_divisible(self.expanded // 4), dtype=self.dtype,
                        name='se')(y)
    y = layer(self.features, 1, act=None, name='project')(y, train)
    if self.stride == 1 and x.shape[-1] == self.features:
      y = x + y
    return y


_RE, _HS = nn.relu, jax.nn.hard_swish
# Activations by name, so a block table is plain data (configs, search spaces, JSON).
ACTIVATIONS = {'relu': nn.relu, 'hardswish': jax.nn.hard_swish}
_RE_NAME, _HS_NAME = 'relu', 'hardswish'


def activation(act) -> Callable:
  """A block table's activation: a name of ``ACTIVATIONS`` or the function itself."""
  if callable(act):
    return act
  if act not in ACTIVATIONS:
    raise ConfigError(f'Unknown activation {act!r} in a MobileNetV3 block. Valid: '
                      f'{", ".join(ACTIVATIONS)}.')
  return ACTIVATIONS[act]


# (kernel, expanded, out, use_se, activation, stride), torchvision's bneck table.
V3_LARGE = (
    (3, 16, 16, False, 'relu', 1), (3, 64, 24, False, 'relu', 2),
    (3, 72, 24, False, 'relu', 1), (5, 72, 40, True, 'relu', 2),
    (5, 120, 40, True, 'relu', 1), (5, 120, 40, True, 'relu', 1),
    (3, 240, 80, False, 'hardswish', 2), (3, 200, 80, False, 'hardswish', 1),
    (3, 184, 80, False, 'hardswish', 1), (3, 184, 80, False, 'hardswish', 1),
    (3, 480, 112, True, 'hardswish', 1), (3, 672, 112, True, 'hardswish', 1),
    (5, 672, 160, True, 'hardswish', 2), (5, 960, 160, True, 'hardswish', 1),
    (5, 960, 160, True, 'hardswish', 1))
V3_SMALL = (
    (3, 16, 16, True, 'relu', 2), (3, 72, 24, False, 'relu', 2),
    (3, 88, 24, False, 'relu', 1), (5, 96, 40, True, 'hardswish', 2),
    (5, 240, 40, True, 'hardswish', 1), (5, 240, 40, True, 'hardswish', 1),
    (5, 120, 48, True, 'hardswish', 1), (5, 144, 48, True, 'hardswish', 1),
    (5, 288, 96, True, 'hardswish', 2), (5, 576, 96, True, 'hardswish', 1),
    (5, 576, 96, True, 'hardswish', 1))


class MobileNetV3(nn.Module):
  """MobileNet v3 (Howard et al. 2019) in torchvision's layout.

  Hardswish, SE with hardsigmoid and make_divisible(expanded // 4) squeeze
  channels, BN eps 1e-3 / torch momentum 0.01, classifier Dense(last_channel) +
  hardswish + dropout + Dense. Parameter counts are torchvision's: large
  5,483,032, small 2,542,856 (the TF-slim small model reports 2.9M for its own
  variant).

  ``settings`` is the block table (kernel, expanded, out, use_se, activation name, stride),
  so any MobileNetV3-style network is plain data (the ``mobilenet_v3`` search space emits
  it); ``stem_channels`` / ``stem_stride`` / ``head_channels`` (None: 6x the last block's)
  reshape the ends for small inputs; ``bn_momentum`` (flax's: 0.99 = torch's 0.01) is
  0.9 in the search's small-input variants, whose short trainings leave too few steps for
  the running statistics to settle at 0.99; ``bn_epsilon`` is torchvision's 1e-3 (timm's
  MobileNetV3s use torch's default 1e-5). ``head_bias=False`` is Once-for-All's layout (its
  feature-mix 1x1 conv after pooling has no bias): with the same table it is exactly
  ``last_channel`` params smaller than torchvision's.
  """
  num_classes: int = 1000
  settings: Sequence[Sequence] = V3_LARGE
  last_channel: int = 1280
  width_multiplier: float = 1.0
  dropout_rate: float = 0.2
  stem_channels: int = 16
  stem_stride: int = 2
  head_channels: int | None = None
  head_bias: bool = True
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    ch = lambda c: make_divisible(c * self.width_multiplier)
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    x = ConvBN(ch(self.stem_channels), 3, self.stem_stride, act=_HS, name='stem', **kw,
               **bn)(x, train)
    for i, (k, e, c, se, act, s) in enumerate(self.settings):
      x = InvertedResidualV3(k, ch(e), ch(c), bool(se), activation(act), s, name=f'block{i}',
                             **bn, **kw)(x, train)
    head = ch(self.head_channels) if self.head_channels else 6 * x.shape[-1]
    x = ConvBN(head, 1, act=_HS, name='head', **kw, **bn)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(ch(self.last_channel), use_bias=self.head_bias, kernel_init=dense_init,
                 dtype=self.dtype, name='classifier1')(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(_HS(x))
    x = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                 name='classifier2')(x)
    return x.astype(jnp.float32)


MODELS = {
    'mobilenet_v1': MobileNetV1,
    'mobilenet_v2': MobileNetV2,
    'mobilenet_v3': MobileNetV3,  # any block table (``settings``); default: Large's
    'mobilenet_v3_large': functools.partial(MobileNetV3, settings=V3_LARGE,
                                            last_channel=1280),
    'mobilenet_v3_small': functools.partial(MobileNetV3, settings=V3_SMALL,
                                            last_channel=1024),
}
registry.add_all('model', MODELS)
