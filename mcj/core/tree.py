"""Small tree utilities shared by every layer of the package."""
from collections.abc import Mapping

import numpy as np


def numpy_tree(tree):
  """A nested dict of numpy copies of ``tree`` (editable in place, e.g. by a model's
  ``shrink``)."""
  if hasattr(tree, 'items'):
    return {k: numpy_tree(v) for k, v in tree.items()}
  return np.array(tree)


def own_params(params, path) -> dict:
  """The arrays a module at ``path`` owns directly (not those of its children)."""
  node = params
  for part in path:
    node = node.get(part, {}) if isinstance(node, Mapping) else {}
  return {k: v for k, v in node.items() if not isinstance(v, Mapping)}
