"""Per-layer sparsities (``prune.distribution``), registered as kind 'prune_distribution'.

A distribution is a function ``(shapes, sparsity) -> [sparsity of each layer]`` whose
weighted mean (by layer size) is ``sparsity``:

- uniform: every layer at ``sparsity``.
- erk: Erdos-Renyi-Kernel (Evci et al. 2020, RigL): density proportional to
  (sum of dims) / (product of dims), dense where that exceeds 1.

Algorithms with one budget over all layers (``Algorithm.distributed = False``:
global_magnitude, slimming, n_m) ignore the distribution. A new distribution is one
function plus ``@registry.register('prune_distribution', name)``.
"""
import math

from mcj.core import registry


@registry.register('prune_distribution', 'uniform')
def uniform(shapes: list[tuple[int, ...]], sparsity: float) -> list[float]:
  """Every layer at ``sparsity``."""
  return [sparsity] * len(shapes)


@registry.register('prune_distribution', 'erk')
def erk_sparsities(shapes: list[tuple[int, ...]], sparsity: float) -> list[float]:
  """Per-layer sparsities of the Erdos-Renyi-Kernel distribution with overall ``sparsity``
  (RigL's ``get_sparsities_erdos_renyi``): layers whose density would exceed 1 stay dense
  and the others share their part."""
  sizes = [math.prod(s) for s in shapes]
  raw = [sum(s) / math.prod(s) for s in shapes]
  dense = set()
  while True:
    rhs = divisor = 0.0
    for i, n in enumerate(sizes):
      if i in dense:
        rhs -= sparsity * n
      else:
        rhs += (1 - sparsity) * n
        divisor += raw[i] * n
    eps = rhs / divisor if divisor else 0.0
    over = [i for i in range(len(sizes)) if i not in dense and raw[i] * eps > 1]
    if not over:
      break
    dense.add(max(over, key=lambda i: raw[i]))
  return [0.0 if i in dense else 1 - raw[i] * eps for i in range(len(sizes))]
