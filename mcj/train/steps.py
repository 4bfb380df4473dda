"""The per-device train and eval steps, and their data-parallel versions.

Each step is written for ONE device and its share of the batch; ``pmean`` / ``psum`` over
``AXIS`` combine devices (the pmap programming model) and ``parallel.data_parallel`` runs
it with ``jax.shard_map`` over the mesh. BatchNorm statistics are averaged inside the
model. A step is built from the pieces of an ``Experiment`` (``mcj.train.trainer``), so a
benchmark, a search's short trainings or a test can build and call it alone.
"""
import jax
import jax.numpy as jnp
import optax

from mcj import data as data_lib
from mcj.compress.distill import features as features_lib
from mcj.core import parallel
from mcj.core.losses import cross_entropy, task_loss  # noqa: F401 (mcj.train's names)
from mcj.quant import quantizers

AXIS = parallel.AXIS


def make_train_step(exp):
  """``train_step(state, batch, teacher_variables) -> (state, metrics)`` for one device.

  The loss is ``label_weight * CE`` plus the distiller's terms; gradients are averaged
  over devices before the optimizer (with pruning, the optax wrapper masks them).
  """
  config, model, tx, info = exp.config, exp.model, exp.tx, exp.info
  distiller, pruner, adapter_tx = exp.distiller, exp.pruner, exp.adapter_tx
  total_steps, num_classes = exp.total_steps, info.num_classes
  dropout_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  label_weight = config.distill.label_weight if distiller else 1.0

  def train_step(state, batch, teacher_variables):
    rng = jax.random.fold_in(jax.random.fold_in(dropout_key, state['step']),
                             jax.lax.axis_index(AXIS))
    progress = state['step'].astype(jnp.float32) / total_steps
    images, labels = batch['image'], batch['label']
    if config.mixup_alpha:  # teacher and student see the same mixed images (FunMatch)
      images, partner, mix = data_lib.mixup(jax.random.fold_in(rng, 1), images,
                                            config.mixup_alpha)

    def label_loss(logits):
      loss = task_loss(logits, labels, num_classes, config.label_smoothing)
      if config.mixup_alpha:
        loss = mix * loss + (1 - mix) * task_loss(
            logits, labels[partner], num_classes, config.label_smoothing)
      return loss.mean()

    def loss_fn(trainable):
      variables = {'params': trainable['params'], 'batch_stats': state['batch_stats']}
      apply = dict(train=True, mutable=['batch_stats'], rngs={'dropout': rng})
      # Quantizers with a schedule (IR-Net, BNext) read the fraction of training done.
      with quantizers.training_progress(progress):
        if distiller and distiller.needs_features:
          (logits, new_vars), stages = features_lib.apply_with_features(
              model, variables, images, **apply)
        else:
          (logits, new_vars), stages = model.apply(variables, images, **apply), {}
      terms = {'train/label_loss': label_loss(logits)}
      loss = label_weight * terms['train/label_loss']
      if distiller:
        distill_loss, distill_terms = distiller.loss(
            logits, stages, teacher_variables, trainable.get('adapters'), images, progress,
            AXIS)
        loss, terms = loss + distill_loss, {**terms, **distill_terms}
      return loss, (logits, new_vars.get('batch_stats', {}), terms)

    trainable = {'params': state['params']}
    if 'adapters' in state:
      trainable['adapters'] = state['adapters']
    (loss, (logits, batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads['params'], state['opt_state'], state['params'])
    new_state = {**state, 'step': state['step'] + 1,
                 'params': optax.apply_updates(state['params'], updates),
                 'batch_stats': batch_stats, 'opt_state': opt_state}
    if 'adapters' in state:
      updates, new_state['adapter_opt_state'] = adapter_tx.update(
          grads['adapters'], state['adapter_opt_state'], state['adapters'])
      new_state['adapters'] = optax.apply_updates(state['adapters'], updates)
    metrics = {'train/loss': loss}
    if num_classes > 1:  # a regression task's loss is its squared error
      metrics['train/accuracy'] = jnp.mean(jnp.argmax(logits, -1) == labels)
    if distiller or config.mixup_alpha:
      metrics.update(terms)
    if pruner:
      metrics['prune/sparsity'] = pruner.sparsity_of(opt_state.masks)
    return new_state, jax.lax.pmean(metrics, AXIS)

  return train_step


def make_eval_step(exp):
  """``eval_step(state, batch) -> sums`` (loss, correct, top-5, count; the confusion
  matrix when the dataset is scored by F1 or Matthews) over the devices. A regression
  task's step also returns ``rows``: every device's outputs, labels and mask, since rank
  correlation (Spearman) needs the whole split."""
  model, total_steps, num_classes = exp.model, exp.total_steps, exp.info.num_classes
  confusion = bool(set(exp.info.metrics) & {'f1', 'matthews_corrcoef'})

  def eval_step(state, batch):
    # Scheduled quantizers evaluate as trained so far (1.0, i.e. final, at the last step).
    with quantizers.training_progress(state['step'].astype(jnp.float32) / total_steps):
      logits = model.apply({'params': state['params'], 'batch_stats': state['batch_stats']},
                           batch['image'], train=False).astype(jnp.float32)
    mask, labels = batch['mask'], batch['label']
    if num_classes == 1:
      sums = {'loss': task_loss(logits, labels, 1) * mask, 'count': mask}
      rows = {'output': logits[:, 0], 'label': labels.astype(jnp.float32), 'mask': mask}
      return {**jax.lax.psum(jax.tree.map(lambda v: jnp.sum(v, axis=0), sums), AXIS),
              'rows': jax.tree.map(lambda v: jax.lax.all_gather(v, AXIS, tiled=True), rows)}
    top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
    sums = {'loss': cross_entropy(logits, labels, num_classes) * mask,
            'correct': (jnp.argmax(logits, -1) == labels) * mask,
            'top5': jnp.any(top5 == labels[:, None], axis=-1) * mask,
            'count': mask}
    if confusion:  # (true, predicted) counts: F1 and Matthews need the whole split
      sums['confusion'] = jnp.einsum('b,bi,bj->bij', mask, jax.nn.one_hot(labels, num_classes),
                                     jax.nn.one_hot(jnp.argmax(logits, -1), num_classes))
    return jax.lax.psum(jax.tree.map(lambda v: jnp.sum(v, axis=0), sums), AXIS)

  return eval_step


def data_parallel_steps(exp):
  """``(p_train_step, p_eval_step)``: the steps jitted over every device of the mesh;
  the train step donates the state."""
  p_train_step = parallel.data_parallel(
      make_train_step(exp), exp.mesh,
      in_specs=(parallel.REPLICATED, parallel.BATCH, parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED), donate_argnums=(0,))
  p_eval_step = parallel.data_parallel(
      make_eval_step(exp), exp.mesh, in_specs=(parallel.REPLICATED, parallel.BATCH),
      out_specs=parallel.REPLICATED)
  return p_train_step, p_eval_step
