"""Which params a pruner may touch: the kernels of conv and dense layers, in call order.

Lookup tables (a transformer's embeddings, ``QuantEmbed``: a row per token, not a weight
that multiplies) are never targets. By default without the first and the last layer
(``exclude_first_last``; a BERT's first is its word embedding), filtered by
regular expressions on their path (``include``, ``exclude``; e.g. ``'stage1/.*'``). Each
``Target`` also knows the per-channel params that follow its output channels (its bias, the
BatchNorm applied to its output), which channel pruning masks with it. Algorithms narrow
the list further (``Algorithm.select``).
"""
import dataclasses
import re

import flax.linen as nn

from mcj.core import tree as tree_lib
from mcj.nn import inspect
from mcj.nn import layers


@dataclasses.dataclass(frozen=True)
class Target:
  """A prunable kernel: its path in params, shape, and the per-channel params that follow
  its output channels (its bias, the next BatchNorm's scale and bias)."""
  path: tuple[str, ...]
  shape: tuple[int, ...]
  depthwise: bool
  followers: tuple[tuple[str, ...], ...] = ()
  bn_scale: tuple[str, ...] | None = None
  table: bool = False  # an embedding table: found, then left out

  @property
  def name(self) -> str:
    return '/'.join(self.path)


def find_targets(model: nn.Module, image_shape, *, include=(), exclude=(),
                 exclude_first_last=True) -> list[Target]:
  """The kernels a pruner may touch, in call order, with their channel followers."""
  variables, calls = inspect.trace_layers(model, image_shape)
  params = variables['params']
  kernels, seen = [], set()
  for index, (module, _, out) in enumerate(calls):
    own = tree_lib.own_params(params, module.path)
    kernel = own.get('kernel')
    if kernel is None or kernel.ndim < 2 or module.path in seen:
      continue
    seen.add(module.path)
    depthwise = getattr(module, 'feature_group_count', 1) > 1
    followers, bn_scale = [], None
    if 'bias' in own:
      followers.append(module.path + ('bias',))
    for later, inp, _ in calls[index + 1:]:  # the BatchNorm applied to this output
      if inp is out and isinstance(later, nn.BatchNorm):
        bn = tree_lib.own_params(params, later.path)
        followers += [later.path + (k,) for k in ('scale', 'bias') if k in bn]
        bn_scale = later.path + ('scale',) if 'scale' in bn else None
        break
    kernels.append(Target(module.path + ('kernel',), tuple(kernel.shape), depthwise,
                          tuple(followers), bn_scale, isinstance(module, layers.QuantEmbed)))
  if exclude_first_last:
    kernels = kernels[1:-1]
  kernels = [t for t in kernels if not t.table]
  if include:
    kernels = [t for t in kernels if any(re.search(p, t.name) for p in include)]
  kernels = [t for t in kernels if not any(re.search(p, t.name) for p in exclude)]
  return kernels


def get_path(tree, path):
  """``tree[path[0]][path[1]]...``."""
  for key in path:
    tree = tree[key]
  return tree


def set_paths(tree, values: dict):
  """A copy of the nested dict ``tree`` with ``values[path]`` at each path."""
  out = dict(tree)
  children = {}
  for path, value in values.items():
    if len(path) == 1:
      out[path[0]] = value
    else:
      children.setdefault(path[0], {})[path[1:]] = value
  for key, sub in children.items():
    out[key] = set_paths(tree[key], sub)
  return out
