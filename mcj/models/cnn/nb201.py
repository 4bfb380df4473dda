"""The NAS-Bench-201 network (Dong & Yang 2020, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search"), as the benchmark's ``TinyNetwork`` builds it.

Stem (3x3 conv, BN) -> 5 cells at C -> ResNet reduction block -> 5 cells at 2C -> reduction
-> 5 cells at 4C -> BN + ReLU -> global average pool -> Linear. A cell has 4 nodes; node j
is the sum of one operation per edge i -> j (i < j) applied to node i, in the edge order
0->1, 0->2, 1->2, 0->3, 1->3, 2->3, and the cell outputs node 3. Operations: ``none``
(zeros), ``skip_connect`` (identity), ``nor_conv_1x1`` / ``nor_conv_3x3`` (ReLU -> conv
without bias -> BN) and ``avg_pool_3x3`` (stride 1, padding 1, padding not counted). The
reduction block is ReLU-conv3x3(stride 2)-BN, ReLU-conv3x3-BN, plus a shortcut of a 2x2
average pool and a 1x1 conv without bias. BN as torch's defaults (eps 1e-5, momentum 0.1);
weights initialised as torch's defaults (uniform with bound 1/sqrt(fan_in), conv and
linear), because zero-cost proxies are scored at initialisation. Parameter counts equal the
benchmark's: 1,531,546 with every edge a 3x3 conv, 73,306 with none (CIFAR-10).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.nn import blocks

OPS = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
# torch's default init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def _torch_bias_init(fan_in: int):
  bound = 1 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


class ReLUConvBN(nn.Module):
  features: int
  kernel: int
  stride: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=False):
    p = (self.kernel - 1) // 2
    x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                padding=((p, p), (p, p)), use_bias=False, kernel_init=torch_init,
                dtype=self.dtype, name='conv')(nn.relu(x))
    return blocks.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype,
                             name='bn')(x)


class Cell(nn.Module):
  """One NAS-Bench-201 cell: ``ops`` in edge order (see the module docstring)."""
  ops: Sequence[str]
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=False):
    nodes = [x]
    for j in (1, 2, 3):
      total = 0.0
      for e, ((i, dst), op) in enumerate(zip(EDGES, self.ops)):
        if dst != j:
          continue
        h = nodes[i]
        if op == 'none':
          h = jnp.zeros_like(h)
        elif op == 'avg_pool_3x3':
          h = nn.avg_pool(h, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)
        elif op in ('nor_conv_1x1', 'nor_conv_3x3'):
          h = ReLUConvBN(x.shape[-1], int(op[-1]), dtype=self.dtype,
                         bn_axis_name=self.bn_axis_name, name=f'edge{e}')(h, train)
        total = total + h
      nodes.append(total)
    return nodes[3]


class ResidualReduction(nn.Module):
  """The ResNet basic block between stages: stride 2, channels doubled."""
  features: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=False):
    layer = functools.partial(ReLUConvBN, self.features, 3, dtype=self.dtype,
                              bn_axis_name=self.bn_axis_name)
    y = layer(stride=2, name='conv_a')(x, train)
    y = layer(name='conv_b')(y, train)
    s = nn.avg_pool(x, (2, 2), (2, 2))
    s = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=torch_init,
                dtype=self.dtype, name='shortcut')(s)
    return s + y


class NB201Network(nn.Module):
  """NAS-Bench-201's network for one cell (``ops``: 6 operation names in edge order)."""
  num_classes: int = 10
  ops: Sequence[str] = ('nor_conv_3x3',) * 6
  channels: int = 16
  cells_per_stage: int = 5
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.ops) != len(EDGES) or any(op not in OPS for op in self.ops):
      raise ConfigError(f'nb201 ops must be 6 of {", ".join(OPS)}, got {list(self.ops)}.')
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=torch_init, dtype=self.dtype, name='stem')(x)
    x = blocks.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype,
                          name='stem_bn')(x)
    for stage in range(3):
      if stage:
        x = ResidualReduction(self.channels * 2 ** stage, name=f'reduce{stage}', **kw)(x, train)
      for c in range(self.cells_per_stage):
        x = Cell(tuple(self.ops), name=f'stage{stage}_cell{c}', **kw)(x, train)
    x = blocks.batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype,
                          name='last_bn')(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    x = nn.Dense(self.num_classes, kernel_init=torch_init,
                 bias_init=_torch_bias_init(x.shape[-1]), dtype=self.dtype,
                 name='classifier')(x)
    return x.astype(jnp.float32)


MODELS = {'nb201': NB201Network}
registry.add_all('model', MODELS)
