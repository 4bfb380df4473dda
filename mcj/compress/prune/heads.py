"""Attention-head pruning (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better
than One?") for the models with a ``head_mask`` call argument and ``shrink_heads`` (BERT
and ViT, ``mcj.models.transformers``).

Importance (the paper's section 4.1): each head's output is multiplied by a mask variable
xi_h, and

  I_h = E_x | dL(x) / dxi_h |   at xi = 1 (at the current mask when heads are already gone)

the expected absolute gradient of the per-example loss (``per_example=True``: x is one
sequence or image; with one mask per example in the batch, a single backward pass gives
every example's gradient). ``per_example=False`` takes |.| of each batch's gradient of the
batch-mean loss instead, as HF's bertology example does; the official code takes |.| of
each token's term of the same sum and averages over tokens (so the three differ only in
where |.| is taken). Then, per layer, I_l / ||I_l||_2 (``normalize``; the paper found this
normalisation crucial for global pruning, the official code's ``normalize_pruning_by_layer``
with 1e-20 added to the norm). Heads already pruned (or absent from a rebuilt model) score
0 and are left out of their layer's norm.

Pruning: the globally least important heads are removed until ``floor(fraction * heads)``
of all heads are gone (``fraction`` in [0, 1), so at least one head stays). Neither the
paper nor HF keeps a head per layer: HF's ``prune_heads`` can empty a layer (zero-size Q,
K, V and output kernels; the output bias stays) and the official code protects
``at_least_x_heads_per_layer`` heads only when asked (default 0); here
``min_heads_per_layer`` (default 0) does the same (when it forbids reaching the fraction,
as many heads as it allows are removed). ``prune_iteratively`` removes them in steps of
``step`` of all heads, recomputing the importance with the heads removed so far masked
before each step (the paper's iterative curves use 10% steps; the official code recomputes
with ``--exact_pruning``, else it ranks once: ``step=0``).

Rebuild: ``rebuild(model, variables, keep)`` is the model without the removed heads (its
``heads_per_layer``; Q, K, V output columns and attention-output input rows of the removed
heads sliced away); its outputs equal the model's with ``head_mask=keep`` (up to float rounding where the
attention output layer is float; a quantized one sees a removed head's 0 as q(0) and
scales its kernel over every input row, so there the two only agree approximately).

Functions::

  from mcj.compress.prune import heads
  batches = list(itertools.islice(dataset.train_batches(0, 32), 20))  # {'image', 'label'}
  importance = heads.head_importance(model, variables, batches)      # (layers, heads)
  keep = heads.prune_heads(importance, 0.4)                          # True: kept
  small_model, small_variables = heads.rebuild(model, variables, keep)
  small_model.heads_per_layer                                        # its model option
  heads.param_count(variables) - heads.param_count(small_variables)

In a run, ``prune.heads_fraction`` (with ``heads_step``, ``heads_batches``,
``heads_min_per_layer``, ``heads_normalize``; see ``mcj.compress.prune.DEFAULTS``) does
this at the end of training (``HeadPruner.finish``) on the run's first training batches,
saves the smaller model as ``<workdir>/rebuilt`` (a run workdir: config.json with
``model.heads_per_layer``, checkpoints/) like channel pruning, and the importance of
every round and the kept heads in ``<workdir>/heads.json``.
"""
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from mcj import data as data_lib
from mcj.analysis import summary as summary_lib
from mcj.compress.prune import pruner as pruner_lib
from mcj.core import losses
from mcj.core import workdir as workdir_lib
from mcj.core.config import ConfigError

EPSILON = 1e-20  # added to each layer's norm, as the official code does


def supports_heads(model) -> bool:
  """Whether ``model`` has attention heads this module can mask and remove."""
  return hasattr(model, 'shrink_heads') and hasattr(model, 'layer_heads')


def head_shape(model) -> tuple[int, int]:
  """(num_layers, num_heads): the shape of importance arrays, masks and ``head_mask``."""
  return model.num_layers, model.num_heads


def present_heads(model) -> np.ndarray:
  """Booleans of ``head_shape(model)``: True at the heads the model has (layer i's first
  ``layer_heads()[i]``; all of them unless ``heads_per_layer`` is set)."""
  heads = model.layer_heads()
  return np.arange(model.num_heads)[None, :] < np.asarray(heads)[:, None]


def check_mask(mask, shape, what='mask') -> np.ndarray:
  """``mask`` as booleans of ``shape``; a one-line ValueError otherwise."""
  array = np.asarray(mask)
  if array.shape != tuple(shape):
    raise ValueError(f'the head {what} must have shape (num_layers, num_heads) = '
                     f'{tuple(shape)}, got {array.shape}.')
  return array.astype(bool)


def _kept_mask(model, mask):
  present = present_heads(model)
  if mask is None:
    return present
  return check_mask(mask, present.shape) & present


def cross_entropy(logits, batch):
  """Per-example task loss of a batch ``{'image', 'label'}`` (``core.losses.task_loss``):
  softmax cross-entropy, or the squared error of a one-output regression (glue/stsb)."""
  return losses.task_loss(logits, batch['label'], logits.shape[-1])


def normalize_by_layer(importance, mask=None) -> np.ndarray:
  """Each layer's row divided by its L2 norm (+ 1e-20), over the heads ``mask`` keeps
  (all if None); the others are 0."""
  importance = np.asarray(importance, np.float64)
  if mask is not None:
    importance = np.where(mask, importance, 0.0)
  norm = np.sqrt(np.sum(importance ** 2, axis=-1, keepdims=True))
  return importance / (norm + EPSILON)


def _gradient_fn(model, loss_fn, per_example):
  """A jitted ``(variables, batch, xi) -> (sum of |dL/dxi| over examples or batches,
  count)``."""

  def grads(variables, batch, xi):
    x = batch['image']
    weights = batch['mask'].astype(jnp.float32) if 'mask' in batch else jnp.ones(x.shape[0])

    def losses(head_mask):
      logits = model.apply(variables, x, train=False, head_mask=head_mask)
      return loss_fn(logits, batch).astype(jnp.float32) * weights

    if per_example:  # one xi per example: the gradient of the sum is each example's
      g = jax.grad(lambda m: jnp.sum(losses(m)))(jnp.broadcast_to(xi, (x.shape[0], *xi.shape)))
      return jnp.sum(jnp.abs(g), axis=0), jnp.sum(weights)
    g = jax.grad(lambda m: jnp.sum(losses(m)) / jnp.maximum(jnp.sum(weights), 1.0))(xi)
    return jnp.abs(g), jnp.ones(())

  return jax.jit(grads)


def _importance(grad_fn, model, variables, batches, kept, normalize):
  total, count = np.zeros(kept.shape), 0.0
  xi = jnp.asarray(kept, jnp.float32)
  for batch in batches:
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    g, n = grad_fn(variables, batch, xi)
    total += np.asarray(g, np.float64)
    count += float(n)
  if count == 0:
    raise ValueError('head importance needs at least one batch (with a real example).')
  importance = np.where(kept, total / count, 0.0)
  return normalize_by_layer(importance, kept) if normalize else importance


def head_importance(model, variables, batches, loss_fn=None, *, mask=None,
                    normalize: bool = True, per_example: bool = True) -> np.ndarray:
  """The importance of every head, shape (num_layers, num_heads) (see the module
  docstring).

  Args:
    model: a model with ``head_mask`` and ``shrink_heads`` (BERT, ViT).
    variables: its variables (``{'params': ...}``).
    batches: an iterable of ``{'image': inputs, 'label': labels}`` (mcj's batches; an
      optional ``'mask'`` weights the examples, as eval batches' padding).
    loss_fn: ``(logits, batch) -> per-example losses`` (None: ``cross_entropy``).
    mask: booleans (num_layers, num_heads), False at heads already removed: they are
      masked in the forward (xi = 0) and score 0 (None: every head the model has).
    normalize: divide each layer by its L2 norm (the paper's).
    per_example: |.| of each example's gradient (the paper's E_x); False: of each batch's.
  """
  if not supports_heads(model):
    raise ValueError(f'{type(model).__name__} has no attention heads to score (BERT and ViT '
                     'do).')
  kept = _kept_mask(model, mask)
  grad_fn = _gradient_fn(model, loss_fn or cross_entropy, per_example)
  return _importance(grad_fn, model, variables, batches, kept, normalize)


def _check_fraction(fraction, name='fraction'):
  if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
    raise ValueError(f'the {name} of heads to prune must be in [0, 1), got {fraction!r}.')
  return float(fraction)


def heads_to_remove(fraction: float, total: int) -> int:
  """How many of ``total`` heads a ``fraction`` removes: floor(fraction * total) (as the
  official code's int(total * percent / 100))."""
  return int(math.floor(_check_fraction(fraction) * total + 1e-9))


def prune_heads(importance, fraction: float, mask=None, min_heads_per_layer: int = 0
                ) -> np.ndarray:
  """The kept heads (booleans, the shape of ``importance``) once the globally least
  important are removed so that ``floor(fraction * importance.size)`` heads are gone in all.

  ``mask`` (booleans, False at heads already removed; they count toward the fraction and
  stay removed) defaults to every head. Each layer keeps its ``min_heads_per_layer`` most
  important heads (or all it has, if fewer). Ties go by position (the earlier layer and
  head first).
  """
  importance = np.asarray(importance, np.float64)
  if importance.ndim != 2:
    raise ValueError(f'head importance must have shape (num_layers, num_heads), got '
                     f'{importance.shape}.')
  if not np.all(np.isfinite(importance)):
    raise ValueError('head importance has non-finite values.')
  if not isinstance(min_heads_per_layer, int) or min_heads_per_layer < 0:
    raise ValueError(f'min_heads_per_layer must be an integer >= 0, got '
                     f'{min_heads_per_layer!r}.')
  kept = (np.ones(importance.shape, bool) if mask is None
          else check_mask(mask, importance.shape).copy())
  goal = heads_to_remove(fraction, importance.size)
  more = goal - int(np.sum(~kept))
  if more <= 0:
    return kept
  candidates = kept.copy()
  if min_heads_per_layer:
    for layer in range(importance.shape[0]):  # protect each layer's best kept heads
      alive = np.flatnonzero(kept[layer])
      best = alive[np.argsort(-importance[layer, alive], kind='stable')][:min_heads_per_layer]
      candidates[layer, best] = False
  flat = np.flatnonzero(candidates.reshape(-1))
  order = flat[np.argsort(importance.reshape(-1)[flat], kind='stable')]
  kept.reshape(-1)[order[:more]] = False
  return kept


def prune_iteratively(model, variables, batches, fraction: float, *, step: float = 0.0,
                      loss_fn=None, mask=None, min_heads_per_layer: int = 0,
                      normalize: bool = True, per_example: bool = True):
  """``(kept heads, rounds)``: ``fraction`` of all heads removed in steps of ``step`` of
  all heads (0: one step), the importance recomputed before each with the heads removed so
  far masked. ``rounds`` holds one dict per step: ``{'fraction', 'importance', 'kept'}``.

  ``batches`` is a list of batches or a function returning a fresh iterable of them (each
  round reads them again).
  """
  fraction = _check_fraction(fraction)
  step = _check_fraction(step, 'step fraction')
  if not supports_heads(model):
    raise ValueError(f'{type(model).__name__} has no attention heads to prune (BERT and ViT '
                     'do).')
  kept = _kept_mask(model, mask)
  if step and fraction > step:
    rounds = math.ceil(fraction / step - 1e-9)
    targets = [min(step * (k + 1), fraction) for k in range(rounds)]
  else:
    targets = [fraction]
  if len(targets) > 1 and not callable(batches) and iter(batches) is batches:
    raise ValueError('iterative head pruning reads the batches once per step: give a list or '
                     'a function returning them, not an iterator.')
  grad_fn = _gradient_fn(model, loss_fn or cross_entropy, per_example)
  history = []
  for target in targets:
    round_batches = batches() if callable(batches) else batches
    importance = _importance(grad_fn, model, variables, round_batches, kept, normalize)
    kept = prune_heads(importance, target, kept, min_heads_per_layer)
    history.append({'fraction': target, 'importance': importance, 'kept': kept})
  return kept, history


def rebuild(model, variables, keep):
  """``(smaller model, its variables)`` without the heads where ``keep`` is False; the
  smaller model's ``heads_per_layer`` is its model option. Its outputs equal ``model``'s
  with ``head_mask=keep``."""
  if not supports_heads(model):
    raise ValueError(f'{type(model).__name__} has no attention heads to remove (BERT and ViT '
                     'do).')
  keep = check_mask(keep, head_shape(model))
  return model.shrink_heads(variables, keep)


def param_count(variables) -> int:
  """Params in the ``params`` collection of ``variables``."""
  return int(sum(np.size(x) for x in jax.tree.leaves(variables['params'])))


class HeadPruner:
  """The ``prune.heads_*`` keys for one run: at the end of training, the heads' importance
  on the run's training batches, pruning and the rebuilt smaller model (``finish``)."""

  def __init__(self, config, model):
    if not supports_heads(model):
      raise ConfigError(f'prune.heads_fraction needs a model with attention heads (bert_*, '
                        f'vit_*), not {type(model).__name__}: unset it.')
    self.fraction = float(config.heads_fraction)
    self.step = float(config.heads_step)
    self.batches = int(config.heads_batches)
    self.min_heads_per_layer = int(config.heads_min_per_layer)
    self.normalize = bool(config.heads_normalize)  # ranges: mcj.train.schema.validate

  def describe(self) -> str:
    return (f'prune: {self.fraction:.0%} of the attention heads at the end'
            + (f', in steps of {self.step:.0%}' if self.step else ''))

  def finish(self, *, model, variables, config, workdir, step, image_shape, dense_summary,
             say) -> dict:
    """End-of-run work: importance on the first ``heads_batches`` global training batches
    (every host reads the same ones, so every host prunes the same heads), pruning, and the
    rebuilt model saved as ``<workdir>/rebuilt``; ``<workdir>/heads.json`` holds every
    round's importance and the kept heads. Returns what goes into results.json."""
    dataset = data_lib.get_dataset(config.data, seed=config.seed, process_index=0,
                                   process_count=1)
    count = self.batches or math.ceil(dataset.info.num_train_examples / config.batch_size)

    def batches():
      return itertools.islice(dataset.train_batches(0, config.batch_size), count)

    keep, rounds = prune_iteratively(
        model, variables, batches, self.fraction, step=self.step,
        min_heads_per_layer=self.min_heads_per_layer, normalize=self.normalize)
    small_model, small_variables = rebuild(model, variables, keep)
    small = summary_lib.summarize(small_model, image_shape)
    heads = list(small_model.heads_per_layer)
    rebuilt_model = {**config.model.to_dict(), 'heads_per_layer': heads}
    rebuilt_dir = pruner_lib.save_rebuilt(workdir, config, rebuilt_model, small_variables,
                                          step)
    total = int(present_heads(model).sum())
    if jax.process_index() == 0:
      record = {'fraction': self.fraction, 'step': self.step, 'batches': count,
                'batch_size': config.batch_size, 'normalize': self.normalize,
                'min_heads_per_layer': self.min_heads_per_layer,
                'rounds': [{'fraction': r['fraction'], 'importance': r['importance'].tolist(),
                            'kept': r['kept'].tolist()} for r in rounds],
                'kept': keep.tolist(), 'heads_per_layer': heads,
                'params': dense_summary['params'], 'rebuilt_params': small['params']}
      workdir_lib.write_atomically(os.path.join(workdir, 'heads.json'),
                                   json.dumps(record, indent=2))
    say(f'mcj: removed {total - sum(heads)} of {total} attention heads by importance on '
        f'{count} training batches ({len(rounds)} round(s)); rebuilt in {rebuilt_dir}: '
        f'{small["params"]:,} params, {small["macs"]:,} MACs (dense: '
        f'{dense_summary["params"]:,}, {dense_summary["macs"]:,}); heads per layer {heads}.')
    return {'rebuilt_params': small['params'], 'rebuilt_macs': small['macs'],
            'rebuilt_model': rebuilt_model, 'heads_kept': sum(heads), 'heads_total': total}
