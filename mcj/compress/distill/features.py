"""Intermediate features of any model, taken without rewriting it.

Feature-based distillation (FitNets, attention transfer, Real-to-Binary, RKD) needs the
output of each stage of the student and the teacher. Every mcj model is a Flax module
whose top-level children are its blocks (or, for the DenseNet-style nets, its layers), so a
method interceptor records each top-level child's output in call order, grouped by grid:

* NHWC feature maps (4-D) by spatial resolution, key ``(H, W)``;
* token tensors ``(batch, tokens, features)`` (3-D, a transformer's blocks) by token
  count, key ``(T,)``.

The last output at each grid is that stage's output. Teacher and student see the same
inputs, so their stages pair up by grid, whatever their architectures (a map pairs only
with a map of the same H, W, a token tensor only with one of the same token count);
within a stage, block outputs pair up from the last one backwards. Other outputs (2-D
logits, 5-D tensors) are not taps.

A transformer's distillation (TinyBERT, BiT, BiBERT) needs more than block outputs: each
layer's attention scores and Q, K, V. Models sow those into the ``'intermediates'``
collection (``mcj.models.transformers.bert``, ``mcj.nn.layers.QuantDotProductAttention``);
``apply_with_features`` makes that collection mutable and returns what was sown under the
stage key ``SOWN`` (the empty grid ``()``, so the dict's keys stay sortable tuples, as jax
needs), only when a model sowed anything. ``transformer_taps`` reads it as per-layer lists.
"""
import re

import flax.linen as nn
from flax import traverse_util

IMAGE, TOKENS = 'image', 'tokens'  # the two layouts of a tap
SOWN = ()  # the stages key of the sown 'intermediates' collection (not a grid)
COLLECTION = 'intermediates'


def apply_with_features(model, variables, images, **apply_kwargs):
  """``(model.apply(...), stages)``: stages maps a grid key (``(H, W)`` for 4-D NHWC
  outputs, ``(T,)`` for 3-D token outputs) to the list of outputs of top-level children
  with that grid, in call order (jax orders dict keys itself, so the functions below
  sort grids by depth), and ``SOWN`` to the model's sown ``'intermediates'`` when it sows
  any. The result of ``model.apply`` is what it would be without the taps: the logits, or
  ``(logits, mutated variables)`` with the caller's ``mutable`` collections only."""
  mutable = apply_kwargs.pop('mutable', False)
  if mutable is True:
    wanted, keeps_taps = True, True
  else:
    asked = [] if mutable is False else [mutable] if isinstance(mutable, str) else list(mutable)
    wanted, keeps_taps = sorted({*asked, COLLECTION}), COLLECTION in asked
  variables = {k: v for k, v in variables.items() if k != COLLECTION}  # taps start empty
  outputs = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == '__call__' and len(context.module.path) == 1
        and getattr(out, 'ndim', 0) in (3, 4)):
      outputs.append(out)
    return out

  with nn.intercept_methods(record):
    out, mutated = model.apply(variables, images, mutable=wanted, **apply_kwargs)
  mutated = dict(mutated)
  sown = mutated.get(COLLECTION) if keeps_taps else mutated.pop(COLLECTION, None)
  result = out if mutable is False else (out, mutated)
  stages = {}
  for feature in outputs:
    stages.setdefault(grid_key(feature.shape), []).append(feature)
  if sown:
    stages[SOWN] = sown
  return result, stages


def grids(stages: dict) -> list:
  """The grid keys of ``stages`` (every key but ``SOWN``)."""
  return [k for k in stages if k != SOWN]


def _natural(path):
  """A sort key that orders 'layer_10' after 'layer_2'."""
  return [tuple(int(p) if p.isdigit() else p for p in re.split(r'(\d+)', str(part)))
          for part in path]


TRANSFORMER_TAPS = ('scores', 'query', 'key', 'value')


def transformer_taps(stages: dict) -> dict:
  """A transformer's sown taps as per-layer lists, shallow to deep: ``hidden`` (the
  embedding output then each layer's output: L + 1 arrays (batch, tokens, d)), ``scores``
  (each layer's pre-softmax scaled, masked scores (batch, heads, T, T)), ``query``,
  ``key``, ``value`` (each layer's Q, K, V before their quantizers (batch, T, heads,
  head_dim)). Lists are empty when the model sowed none (a CNN; a layer without heads has
  no scores, Q, K, V). Layers are ordered by their module path with numbers compared as
  numbers."""
  sown = stages.get(SOWN) or {}
  flat = traverse_util.flatten_dict(dict(sown))
  taps = {'hidden': [], **{name: [] for name in TRANSFORMER_TAPS}}
  for path in sorted(flat, key=_natural):
    name = path[-1]
    key = 'hidden' if name == 'hidden_states' else name
    if key in taps:
      taps[key].extend(flat[path])
  return taps


def grid_key(shape):
  """``(H, W)`` of an NHWC shape, ``(T,)`` of a (batch, tokens, features) shape."""
  return tuple(shape[1:-1])


def layout(key_or_feature) -> str:
  """``'image'`` for an NHWC grid / feature, ``'tokens'`` for a token one."""
  key = key_or_feature
  if hasattr(key_or_feature, 'shape'):
    key = grid_key(key_or_feature.shape)
  return TOKENS if len(key) == 1 else IMAGE


def _by_size(grids):
  """Shallow to deep: feature maps from the highest resolution down, then token grids
  from the most tokens down (a hybrid net's maps come before its transformer blocks)."""
  def depth(key):
    size = 1
    for n in key:
      size *= n
    return (layout(key) == TOKENS, -size)
  return sorted(grids, key=depth)


def paired_stages(student_stages: dict, teacher_stages: dict, count: int,
                  blocks: bool = False):
  """(student, teacher) feature pairs at the ``count`` deepest grids both models have
  (``count`` <= 0: all), shallow to deep: each stage's last output, or with ``blocks`` n
  evenly spaced outputs ending with the last, n the smaller of the two models' counts
  there (a Bi-Real stage's 4 conv outputs pair with a ResNet stage's 2 blocks as 2nd and
  4th; a 12-block transformer's token outputs with a 6-block one's as every other)."""
  shared = _by_size(k for k in grids(student_stages) if k in teacher_stages)
  if count > 0:
    shared = shared[-count:]
  pairs = []
  for k in shared:
    s, t = student_stages[k], teacher_stages[k]
    n = min(len(s), len(t)) if blocks else 1
    pairs.extend(zip(_spaced(s, n), _spaced(t, n)))
  return pairs


def _spaced(outputs, n):
  return [outputs[round((j + 1) * len(outputs) / n) - 1] for j in range(n)]


def last_stage(stages: dict):
  """The model's deepest tapped output (what its classifier pools): the last output at
  the deepest grid (see ``_by_size``)."""
  return stages[_by_size(grids(stages))[-1]][-1]
