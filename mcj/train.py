"""The one trainer: ``python -m mcj.train --config configs/quickstart.py --workdir DIR``.

Read top to bottom: config -> hosts and devices -> data -> model and optimizer ->
data-parallel steps -> checkpoint restore -> train loop with logs, evals, saves -> final
eval and results. Rerunning the same command resumes from the newest checkpoint in
``DIR/checkpoints`` and continues the data stream where it stopped.
"""
import argparse
import collections
import json
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mcj import checkpoint as checkpoint_lib
from mcj import config as config_lib
from mcj import data as data_lib
from mcj import features as features_lib
from mcj import layers
from mcj import metrics as metrics_lib
from mcj import optim
from mcj import parallel
from mcj import pipeline
from mcj import prune as prune_lib
from mcj import quantizers
from mcj import summary as summary_lib
from mcj import teachers as teachers_lib
from mcj.config import ConfigError
from mcj.models import get_model

AXIS = parallel.AXIS


def default_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with its default. A config sets what it needs."""
  return ml_collections.ConfigDict({
      'seed': 0,
      'batch_size': 128,             # global, over all devices and hosts
      'eval_batch_size': None,       # None: batch_size
      'total_steps': None,           # set exactly one of total_steps and total_epochs
      'total_epochs': None,
      'model': {'name': ''},         # other keys are the model's keyword options
      'data': {'name': 'digits', 'data_dir': None, 'train_split': None, 'eval_split': None,
               'image_size': None, 'channels': None, 'num_classes': None,
               'num_train_examples': None, 'num_eval_examples': None,
               'shuffle_buffer': None, 'augment': True},
      'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'nesterov': False,
                    'weight_decay': 0.0, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,
                    'grad_clip_norm': None},
      'schedule': {'name': 'cosine', 'warmup_epochs': 0.0, 'warmup_steps': None,
                   'end_factor': 0.0, 'step_epochs': (), 'step_factor': 0.1},
      # Binary latent weights (kernels of layers whose kernel quantizer has 1 bit):
      # optimizer '' trains them with `optimizer` like every other param; 'bop' flips their
      # signs with larq's Bop (Helwegen et al. 2019), and an optimizer name (e.g. 'adam')
      # trains them at `lr` (None: optimizer.lr; same schedule shape, no weight decay),
      # while `optimizer` trains the rest. latent_clip > 0 keeps them in
      # [-latent_clip, latent_clip] after every update.
      'binary': {'optimizer': '', 'lr': None, 'bop_threshold': 1e-8, 'bop_gamma': 1e-4,
                 'latent_clip': 0.0},
      'init_from': '',               # a workdir or checkpoint folder to take params from
      # Knowledge distillation (mcj/teachers.py, mcj/distill.py). Each teacher is a dict:
      # init_from (its mcj workdir or checkpoint; 'random' for benchmarks), model (default:
      # the one in that workdir's config.json), weight, start / end (fractions of training
      # when it teaches), compute_dtype ('' = the run's). Loss = label_weight * CE(labels)
      # + logit_weight * logit_loss + feature_weight * feature_loss, averaged over teachers.
      'distill': {'teachers': (), 'label_weight': 1.0,
                  'logit_loss': 'kd',        # kd | distribution | dist | ''
                  'logit_weight': 1.0, 'temperature': 4.0, 'dist_beta': 1.0, 'dist_gamma': 1.0,
                  'feature_loss': '',        # fitnet | at | real_to_binary | rkd | ''
                  'feature_weight': 1.0,
                  'feature_stages': 4,       # the deepest resolutions both models share
                  'feature_blocks': False,   # every block output there, not just the last
                  'rkd_distance_weight': 25.0, 'rkd_angle_weight': 50.0},
      'mixup_alpha': 0.0,            # > 0: mixup (Zhang et al. 2018) inside the step
      # Pruning (mcj/prune.py): an optax wrapper whose state holds the masks. algorithm ''
      # trains dense; sparsity is the target fraction of zeros in the pruned kernels;
      # start/end_fraction are fractions of training; include/exclude are regular
      # expressions on kernel paths such as 'stage1/block0/conv1/kernel'.
      'prune': {'algorithm': '',     # magnitude | global_magnitude | random | saliency |
                                     # n_m | channel | slimming
                'sparsity': 0.0, 'distribution': 'uniform',  # uniform | erk
                'schedule': 'gradual',                      # one_shot | gradual | iterative
                'start_fraction': 0.0, 'end_fraction': 0.75, 'update_every_steps': 100,
                'power': 3.0, 'n': 2, 'm': 4, 'rounds': 3, 'rewind_fraction': 0.0,
                'slimming_l1': 1e-4, 'include': (), 'exclude': (),
                'exclude_first_last': True},
      # A pipeline (mcj/pipeline.py): dicts with a name and the keys that stage overrides;
      # each stage trains in <workdir>/<name>; init_from may name an earlier stage.
      'stages': (),
      'label_smoothing': 0.0,
      'compute_dtype': 'float32',    # or 'bfloat16'; params stay float32
      'log_every_steps': 50,
      'eval_every_steps': 0,         # 0: evaluate only at the end
      'checkpoint_every_steps': 1000,
      'keep_checkpoints': 3,
  })


OPEN_BLOCKS = ('model',)  # blocks whose keys are passed on as keyword options
# Summary totals written to results.json (see mcj/summary.py for the conventions).
SIZE_KEYS = ('binary_params', 'model_size_bytes', 'float32_size_bytes', 'compression_ratio',
             'macs', 'bops', 'flops', 'ops', 'sparsity', 'nonzero_params', 'nonzero_macs',
             'nonzero_model_size_bytes')


def merge_config(user) -> ml_collections.ConfigDict:
  """Defaults overlaid with ``user``; unknown keys and wrong types are ConfigErrors."""
  config = default_config()
  _merge_into(config, user, 'config')
  if not config.model.name and not config.stages:
    raise ConfigError('config.model.name is not set.')
  if config.compute_dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'compute_dtype must be float32 or bfloat16, got {config.compute_dtype!r}.')
  return config


def _merge_into(node, user, path):
  for key, value in user.items():
    here = f'{path}.{key}'
    if key not in node:
      if path.split('.')[-1] in OPEN_BLOCKS:
        with node.ignore_type():
          node[key] = value
        continue
      raise ConfigError(f'Unknown config key {here}. Valid: {", ".join(sorted(node.keys()))}.')
    if isinstance(node[key], ml_collections.ConfigDict):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f'{here} is a block of keys ({", ".join(sorted(node[key]))}).')
      _merge_into(node[key], value, here)
      continue
    current = node[key]
    ok = (current is None or value is None or isinstance(value, type(current))
          or (isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool))
          or (isinstance(current, (tuple, list)) and isinstance(value, (tuple, list))))
    if not ok or (isinstance(current, (int, float)) and isinstance(value, bool)
                  and not isinstance(current, bool)):
      raise ConfigError(f'{here} expects a {type(current).__name__}, got {value!r}.')
    with node.ignore_type():
      node[key] = float(value) if isinstance(current, float) and value is not None else value


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  """Per-example softmax cross-entropy with optional label smoothing (Szegedy et al. 2016)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns results."""
  config = merge_config(config)
  if config.stages:
    return pipeline.run(config, workdir, train_and_evaluate)
  is_main = jax.process_index() == 0
  say = (lambda *a: print(*a, flush=True)) if is_main else (lambda *a: None)
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2, sort_keys=True))

  # ---------------------------------------------------------------- Hosts and devices
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size)
  eval_batch_size = config.eval_batch_size or config.batch_size
  parallel.check_batch_size(eval_batch_size, 'eval_batch_size')
  say(f'mcj: {jax.process_count()} host(s), {jax.device_count()} {jax.devices()[0].platform} '
      f'device(s); global batch {config.batch_size}.')

  # ---------------------------------------------------------------- Data
  dataset = data_lib.get_dataset(config.data, seed=config.seed,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  info = dataset.info
  total_steps = optim.total_steps_of(config, info.num_train_examples)
  steps_per_epoch = info.num_train_examples / config.batch_size

  # ---------------------------------------------------------------- Model and optimizer
  model_options = {k: v for k, v in config.model.items() if k != 'name'}
  try:
    model = get_model(config.model.name, num_classes=info.num_classes,
                      dtype=jnp.dtype(config.compute_dtype), bn_axis_name=AXIS, **model_options)
  except TypeError as e:
    raise ConfigError(f'Bad option for model {config.model.name!r}: {e}.') from None
  binary = config.binary
  binary_mask = (layers.binary_kernel_mask(model, info.image_shape)
                 if binary.optimizer or binary.latent_clip else None)
  # Pruning wraps the optimizer: its masks live in the optimizer state.
  pruner = (prune_lib.Pruner(config.prune, model, info.image_shape, total_steps, config.seed)
            if config.prune.algorithm else None)
  if pruner:
    schedule = pruner.schedule_lr(
        optim.make_schedule(config, pruner.schedule_steps(), steps_per_epoch))
    tx = pruner.wrap(optim.make_optimizer(config, schedule, binary_mask))
  else:
    schedule = optim.make_schedule(config, total_steps, steps_per_epoch)
    tx = optim.make_optimizer(config, schedule, binary_mask)
  # Frozen teachers, replicated on every device; FitNet adapters train with the student.
  distiller = teachers_lib.Distiller(
      config.distill, get_model=get_model, image_shape=info.image_shape,
      num_classes=info.num_classes, compute_dtype=config.compute_dtype, student=model,
      seed=config.seed, place=jax.jit(lambda v: v, out_shardings=parallel.replicated(mesh)),
  ) if config.distill.teachers else None
  teacher_variables = distiller.variables if distiller else []
  adapter_tx = optim.make_optimizer(  # no binary layers among the adapters
      ml_collections.ConfigDict({'optimizer': config.optimizer.to_dict()}), schedule)

  def init_state(rng):
    dummy = jnp.zeros((1,) + tuple(info.image_shape), jnp.float32)
    variables = model.init({'params': rng, 'dropout': rng}, dummy, train=False)
    params = variables['params']
    state = {'step': jnp.zeros((), jnp.int32), 'params': params,
             'batch_stats': variables.get('batch_stats', {}), 'opt_state': tx.init(params)}
    adapters = distiller.init_adapters(jax.random.fold_in(rng, 2)) if distiller else {}
    if adapters:
      state.update(adapters=adapters, adapter_opt_state=adapter_tx.init(adapters))
    return state

  state = jax.jit(init_state, out_shardings=parallel.replicated(mesh))(
      jax.random.key(config.seed))
  num_params = sum(x.size for x in jax.tree.leaves(state['params']))
  say(f'mcj: model {config.model.name}, {num_params:,} params; data {config.data.name}, '
      f'{info.num_train_examples:,} train / {info.num_eval_examples:,} eval examples, '
      f'{total_steps:,} steps.')
  if pruner:
    say(f'mcj: {pruner.describe()}.')

  # ---------------------------------------------------------------- Data-parallel steps
  # Each function below is written for ONE device and its share of the batch; pmean/psum
  # over AXIS combine devices. BatchNorm statistics are averaged inside the model.
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
      loss = cross_entropy(logits, labels, info.num_classes, config.label_smoothing)
      if config.mixup_alpha:
        loss = mix * loss + (1 - mix) * cross_entropy(
            logits, labels[partner], info.num_classes, config.label_smoothing)
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
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    metrics = {'train/loss': loss, 'train/accuracy': accuracy}
    if distiller or config.mixup_alpha:
      metrics.update(terms)
    if pruner:
      metrics['prune/sparsity'] = pruner.sparsity_of(opt_state.masks)
    return new_state, jax.lax.pmean(metrics, AXIS)

  def eval_step(state, batch):
    # Scheduled quantizers evaluate as trained so far (1.0, i.e. final, at the last step).
    with quantizers.training_progress(state['step'].astype(jnp.float32) / total_steps):
      logits = model.apply({'params': state['params'], 'batch_stats': state['batch_stats']},
                           batch['image'], train=False).astype(jnp.float32)
    mask, labels = batch['mask'], batch['label']
    top5 = jax.lax.top_k(logits, min(5, info.num_classes))[1]
    sums = {'loss': cross_entropy(logits, labels, info.num_classes) * mask,
            'correct': (jnp.argmax(logits, -1) == labels) * mask,
            'top5': jnp.any(top5 == labels[:, None], axis=-1) * mask,
            'count': mask}
    return jax.lax.psum(jax.tree.map(jnp.sum, sums), AXIS)

  p_train_step = parallel.data_parallel(
      train_step, mesh, in_specs=(parallel.REPLICATED, parallel.BATCH, parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED), donate_argnums=(0,))
  p_eval_step = parallel.data_parallel(
      eval_step, mesh, in_specs=(parallel.REPLICATED, parallel.BATCH),
      out_specs=parallel.REPLICATED)

  def evaluate(state) -> dict:
    totals = None
    for batch in dataset.eval_batches(eval_batch_size):
      sums = p_eval_step(state, parallel.shard_batch(mesh, batch))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = parallel.fetch(totals)
    count = max(float(totals['count']), 1.0)
    out = {'eval/loss': float(totals['loss']) / count,
           'eval/accuracy': float(totals['correct']) / count}
    if info.num_classes > 10:
      out['eval/top5_accuracy'] = float(totals['top5']) / count
    return out

  # ---------------------------------------------------------------- Checkpoint restore
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  restored, restored_step = checkpointer.restore_latest(state)
  if restored is not None:
    state = restored
    say(f'mcj: resumed from step {restored_step} in {checkpointer.directory}.')
  elif config.init_from:
    # A new run that starts from another run's weights (e.g. ReActNet's second step);
    # the optimizer state starts afresh.
    loaded = checkpoint_lib.load_variables(config.init_from)
    params = checkpoint_lib.fit_variables(state['params'], loaded['params'], config.init_from)
    stats = checkpoint_lib.fit_variables(state['batch_stats'], loaded['batch_stats'],
                                         config.init_from)
    state = jax.jit(lambda st, p, s: {**st, 'params': p, 'batch_stats': s,
                                      'opt_state': tx.init(p)},
                    out_shardings=parallel.replicated(mesh))(state, params, stats)
    say(f'mcj: params initialised from {config.init_from}.')
  start_step = int(parallel.fetch(state['step']))
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step) if is_main else None

  # ---------------------------------------------------------------- Train loop
  preempted = _PreemptionWatcher()
  progress = metrics_lib.Progress(total_steps, start_step, config.batch_size)
  pending = []  # (step, device metrics) not yet fetched: fetching every step would stall
  last_saved = checkpointer.latest_step()
  train_start = time.perf_counter()

  def flush_metrics(step):
    """Fetches pending train metrics; a NaN or Inf loss stops the run before any save."""
    nonlocal pending
    fetched = [(s, parallel.fetch(m)) for s, m in pending]
    pending = []
    for s, m in fetched:
      if not np.isfinite(m['train/loss']):
        raise FloatingPointError(
            f'train/loss is {m["train/loss"]} at step {s}: stopping. The last good checkpoint '
            f'(step {checkpointer.latest_step()}) is kept in {checkpointer.directory}.')
    if fetched and is_main and (step % config.log_every_steps == 0 or step == total_steps):
      means = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
      means.update(progress.tick(step), lr=float(schedule(step - 1)))
      writer.write(step, means)
      say(metrics_lib.console_line(step, total_steps, means))

  def save(step):
    nonlocal last_saved
    flush_metrics(step)
    t = time.perf_counter()
    checkpointer.save(step, state)
    last_saved = step
    progress.pause(time.perf_counter() - t)

  batches = _prefetch((parallel.shard_batch(mesh, b)
                       for b in dataset.train_batches(start_step, config.batch_size)), size=2)
  step = start_step
  while step < total_steps:
    state, metrics = p_train_step(state, next(batches), teacher_variables)
    step += 1
    pending.append((step, metrics))
    if step % config.log_every_steps == 0:
      flush_metrics(step)
    if config.eval_every_steps and step % config.eval_every_steps == 0 and step < total_steps:
      flush_metrics(step)
      t = time.perf_counter()
      eval_metrics = evaluate(state)
      progress.pause(time.perf_counter() - t)
      if is_main:
        writer.write(step, eval_metrics)
      say(f'step {step:>7}/{total_steps} | ' + _fmt(eval_metrics))
    if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
      save(step)
    if preempted.now(step):
      save(step)
      checkpointer.close()
      say(f'mcj: stopped by SIGTERM at step {step}; checkpoint saved. Rerun to resume.')
      return {'preempted': True, 'step': step}
  flush_metrics(step)
  train_seconds = time.perf_counter() - train_start

  # ---------------------------------------------------------------- Final eval and results
  if last_saved != step:
    save(step)
  checkpointer.close()
  final = evaluate(state)
  size = summary_lib.summarize(model, info.image_shape, params=parallel.fetch(state['params']))
  results = {'step': step, **final, 'params': int(num_params),
             **{k: size[k] for k in SIZE_KEYS},
             'train_seconds': round(train_seconds, 2), 'model': config.model.name,
             'data': config.data.name}
  if pruner and pruner.algorithm in prune_lib.CHANNEL_ALGORITHMS:
    # Channel pruning really shrinks the network: the dense smaller model it leaves.
    rebuilt = prune_lib.rebuild(model, parallel.fetch(
        {'params': state['params'], 'batch_stats': state['batch_stats']}))
    if rebuilt:
      small_model, small_variables = rebuilt
      small = summary_lib.summarize(small_model, info.image_shape)
      rebuilt_model = {**config.model.to_dict(),  # the option shrink set (ResNet, MobileNetV2)
                       **{k: list(getattr(small_model, k)) for k in ('inner_widths', 'hidden_widths')
                          if getattr(small_model, k, None) is not None}}
      results.update(rebuilt_params=small['params'], rebuilt_macs=small['macs'],
                     rebuilt_model=rebuilt_model)
      # A workdir of its own: init_from / a teacher / mcj.summary --workdir can use it.
      rebuilt_dir = os.path.join(workdir, 'rebuilt')
      if is_main:
        os.makedirs(rebuilt_dir, exist_ok=True)
        small_config = config.to_dict()
        small_config.update(model=rebuilt_model, prune={})
        with open(os.path.join(rebuilt_dir, 'config.json'), 'w') as f:
          json.dump(merge_config(small_config).to_dict(), f, indent=2, sort_keys=True)
      small_checkpointer = checkpoint_lib.Checkpointer(rebuilt_dir, keep=1)
      small_checkpointer.save(step, {'step': np.asarray(step, np.int32), **small_variables})
      small_checkpointer.close()
      say(f'mcj: rebuilt without the pruned channels in {rebuilt_dir}: {small["params"]:,} '
          f'params, {small["macs"]:,} MACs (dense: {num_params:,}, {size["macs"]:,}).')
  say(f'mcj: final eval at step {step} | ' + _fmt(final))
  say(f'mcj: compression summary of {config.model.name} '
      f'({"x".join(map(str, info.image_shape))} input):\n' + summary_lib.format_totals(size))
  if is_main:
    writer.write(step, final)
    writer.close()
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results


def _fmt(metrics: dict) -> str:
  return ' | '.join(f'{k} {v:.4f}' for k, v in metrics.items())


def _prefetch(iterator, size):
  """Keeps ``size`` batches in flight so host-to-device copies overlap the step."""
  queue = collections.deque()
  for item in iterator:
    queue.append(item)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


class _PreemptionWatcher:
  """SIGTERM (a TPU preemption notice) asks the loop to save and exit at a step all hosts
  agree on; with several hosts jax's own preemption service coordinates that step."""

  def __init__(self):
    self.requested = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.requested = True

  def now(self, step) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # no preemption service in this runtime
        return False
    return self.requested


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mcj.train', allow_abbrev=False,
      description='Train and evaluate a model from a config; rerun to resume.',
      epilog='Override config fields with --config.key=value (e.g. --config.batch_size=256).')
  parser.add_argument('--config', required=True, help='path.py[:arg] defining get_config(arg)')
  parser.add_argument('--workdir', required=True, help='checkpoints, metrics and results go here')
  parser.add_argument('--coordinator_address', default=None, help='HOST:PORT of process 0')
  parser.add_argument('--num_processes', type=int, default=None)
  parser.add_argument('--process_id', type=int, default=None)
  args, overrides = parser.parse_known_args(argv)
  try:
    config = merge_config(config_lib.load_config(args.config))
    config_lib.parse_overrides(config, overrides)
    parallel.initialize_hosts(args.coordinator_address, args.num_processes, args.process_id)
    train_and_evaluate(config, args.workdir)
  except ConfigError as e:
    print(f'mcj.train: error: {e}', file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(f'mcj.train: error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
