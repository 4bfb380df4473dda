"""The one trainer: ``python -m mcj.train --config configs/quickstart.py --workdir DIR``.

``train_and_evaluate`` reads top to bottom: config -> the experiment (hosts and devices,
data, model, optimizer, methods) -> state and checkpoint restore -> the train loop with
logs, evals and saves -> final eval, the methods' end-of-run work and results. Each step is
a function other code calls on its own: ``build`` (an ``Experiment``), ``init_state``,
``restore``, ``steps.data_parallel_steps``, ``evaluate``, ``train_loop``, ``finish``.
Rerunning the same command resumes from the newest checkpoint in ``DIR/checkpoints`` and
continues the data stream where it stopped.
"""
import collections
import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from mcj import data as data_lib
from mcj.analysis import summary as summary_lib
from mcj.compress.distill import losses as distill_losses
from mcj.compress.distill import teachers as teachers_lib
from mcj.compress.prune import heads as heads_lib
from mcj.compress.prune import pruner as prune_lib
from mcj.core import checkpoint as checkpoint_lib
from mcj.core import metrics as metrics_lib
from mcj.core import parallel
from mcj.core import workdir as workdir_lib
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.nn import inspect
from mcj.train import optim
from mcj.train import pipeline
from mcj.train import steps as steps_lib
from mcj.train.schema import default_config, merge_config

AXIS = parallel.AXIS
# Summary totals written to results.json (see mcj/analysis/summary.py for the conventions).
SIZE_KEYS = ('binary_params', 'model_size_bytes', 'folded_model_size_bytes', 'float32_size_bytes',
             'compression_ratio', 'folded_compression_ratio',
             'macs', 'bops', 'flops', 'ops', 'sparsity', 'nonzero_params', 'nonzero_macs',
             'nonzero_model_size_bytes')


@dataclasses.dataclass
class Experiment:
  """What a run is made of, built once from its config (``build``)."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  dataset: Any
  info: data_lib.DatasetInfo
  total_steps: int
  eval_batch_size: int
  model: Any
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  adapter_tx: optax.GradientTransformation
  pruner: Any = None      # compress.prune.Pruner: masks in the optimizer state
  distiller: Any = None   # compress.distill.teachers.Distiller: frozen teachers + losses
  head_pruner: Any = None  # compress.prune.heads.HeadPruner: attention heads at the end
  compiled_steps: Any = None  # (p_train_step, p_eval_step), built on first use

  @property
  def teacher_variables(self) -> list:
    return self.distiller.variables if self.distiller else []

  @property
  def methods(self) -> list:
    """The compression methods in this run (each may have ``finish``: end-of-run work)."""
    return [m for m in (self.pruner, self.distiller, self.head_pruner) if m is not None]


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


def build(config: ml_collections.ConfigDict, say: Callable = _say) -> Experiment:
  """Hosts and devices, data, model, optimizer and methods of a (merged) config."""
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
  if info.num_classes == 1 and config.label_smoothing:
    raise ConfigError(f'{config.data.name} is a regression task (one output, float labels): '
                      'label_smoothing does not apply; set it to 0.')
  total_steps = optim.total_steps_of(config, info.num_train_examples)
  steps_per_epoch = info.num_train_examples / config.batch_size

  # ---------------------------------------------------------------- Model and optimizer
  model_options = {k: v for k, v in config.model.items() if k != 'name'}
  model = get_model(config.model.name, num_classes=info.num_classes,
                    dtype=jnp.dtype(config.compute_dtype), bn_axis_name=AXIS, **model_options)
  binary = config.binary
  binary_mask = (inspect.binary_kernel_mask(model, info.image_shape)
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
  head_pruner = (heads_lib.HeadPruner(config.prune, model) if config.prune.heads_fraction
                 else None)
  adapter_tx = optim.make_optimizer(  # no binary layers among the adapters
      ml_collections.ConfigDict({'optimizer': config.optimizer.to_dict()}), schedule)
  return Experiment(config=config, mesh=mesh, dataset=dataset, info=info,
                    total_steps=total_steps, eval_batch_size=eval_batch_size, model=model,
                    schedule=schedule, tx=tx, adapter_tx=adapter_tx, pruner=pruner,
                    distiller=distiller, head_pruner=head_pruner)


INIT_EXAMPLES = 32


def first_inputs(exp: Experiment) -> np.ndarray:
  """The first ``INIT_EXAMPLES`` of process 0's first training batch, on every process:
  what the data-dependent initialisers see (LSQ's step 2 mean|x| / sqrt(Qp) and BiT's
  AlphaInit are computed from the first batch in the papers). A fixed count, so that the
  init does not depend on the number of devices and its pass stays small."""
  batch = next(iter(exp.dataset.train_batches(0, exp.config.batch_size)))
  inputs = np.asarray(batch['image'])[:INIT_EXAMPLES]
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    inputs = np.asarray(multihost_utils.broadcast_one_to_all(inputs))
  return inputs


def _init_inputs(exp: Experiment, inputs):
  return (jnp.zeros((1,) + tuple(exp.info.image_shape), jnp.float32) if inputs is None
          else jnp.asarray(inputs))


def init_state(exp: Experiment, inputs: np.ndarray | None = None) -> dict:
  """The freshly initialised train state, replicated over the mesh. The model is
  initialised on ``inputs`` (``first_inputs``), else on one all-zero example (then
  data-dependent initialisers fall back to their documented constants)."""
  model, tx, distiller = exp.model, exp.tx, exp.distiller

  def init(rng, x):
    variables = model.init({'params': rng, 'dropout': rng}, x, train=False)
    params = variables['params']
    state = {'step': jnp.zeros((), jnp.int32), 'params': params,
             'batch_stats': variables.get('batch_stats', {}), 'opt_state': tx.init(params)}
    adapters = distiller.init_adapters(jax.random.fold_in(rng, 2)) if distiller else {}
    if adapters:
      state.update(adapters=adapters, adapter_opt_state=exp.adapter_tx.init(adapters))
    return state

  return jax.jit(init, out_shardings=parallel.replicated(exp.mesh))(
      jax.random.key(exp.config.seed), _init_inputs(exp, inputs))


def restore(exp: Experiment, state: dict, checkpointer, say: Callable = _say,
            inputs: np.ndarray | None = None) -> dict:
  """The newest checkpoint's state if there is one; else ``init_from``'s params with a
  fresh optimizer state (e.g. ReActNet's second step); else ``state`` unchanged. With
  ``init_from_partial``, the arrays the source lacks (a binary student's learned scales)
  are initialised on ``inputs`` by the model carrying the loaded weights, as LSQ and BiT
  initialise a quantized model fine-tuned from a float one."""
  restored, restored_step = checkpointer.restore_latest(state)
  if restored is not None:
    say(f'mcj: resumed from step {restored_step} in {checkpointer.directory}.')
    return restored
  config = exp.config
  source = config.init_from
  if not source:
    return state
  loaded = checkpoint_lib.load_variables(source)
  if config.init_from_layers:  # DistilBERT: the student's layers from the listed ones
    try:
      loaded['params'] = distill_losses.distilbert_init(loaded['params'],
                                                        layers=config.init_from_layers)
    except ValueError as e:
      raise ConfigError(f'config.init_from_layers with init_from={source}: {e}') from None
  note, kept = '', set()
  if config.init_from_partial:
    loaded, kept, dropped = _partial(parallel.fetch(
        {'params': state['params'], 'batch_stats': state['batch_stats']}), loaded)
    note = (f' ({len(kept)} arrays it lacks initialised with its weights, {dropped} of its '
            'arrays unused)')
  params = checkpoint_lib.fit_variables(state['params'], loaded['params'], source)
  stats = checkpoint_lib.fit_variables(state['batch_stats'], loaded['batch_stats'], source)
  if kept:  # after the shapes are checked (a misfit is one line, not a model error)
    completed = _complete(exp, {'params': params, 'batch_stats': stats}, kept, inputs)
    params, stats = completed['params'], completed['batch_stats']
  state = jax.jit(lambda st, p, s: {**st, 'params': p, 'batch_stats': s,
                                    'opt_state': exp.tx.init(p)},
                  out_shardings=parallel.replicated(exp.mesh))(state, params, stats)
  say(f'mcj: params initialised from {source}{note}.')
  return state


def _flat(tree) -> dict:
  def plain(tree):  # nested dicts (orbax's restored mappings included)
    return {k: plain(v) for k, v in tree.items()} if hasattr(tree, 'items') else tree
  return traverse_util.flatten_dict(plain(tree), sep='/')


def _partial(fresh: dict, loaded: dict):
  """``loaded`` ({'params', 'batch_stats'}) reduced to the paths ``fresh`` has, the others
  taken from ``fresh``; the ``(collection, path)`` pairs taken from ``fresh``, and the count
  of loaded arrays left out."""
  out, kept, dropped = {}, set(), 0
  for collection in ('params', 'batch_stats'):
    ours, theirs = _flat(fresh[collection]), _flat(loaded.get(collection, {}))
    out[collection] = traverse_util.unflatten_dict(
        {k: theirs.get(k, v) for k, v in ours.items()}, sep='/') if ours else {}
    kept |= {(collection, k) for k in ours if k not in theirs}
    dropped += sum(k not in ours for k in theirs)
  return out, kept, dropped


def _complete(exp: Experiment, variables: dict, missing: set, inputs) -> dict:
  """``variables`` with the ``missing`` arrays recomputed by one init pass of the model over
  ``inputs`` that carries every other array: a data-dependent initialiser (LSQ's step) then
  sees the activations of the loaded weights, not of a random model."""
  given = {c: traverse_util.unflatten_dict(
      {k: v for k, v in _flat(variables[c]).items() if (c, k) not in missing}, sep='/')
      for c in ('params', 'batch_stats')}
  rng = jax.random.key(exp.config.seed)
  _, made = jax.jit(lambda g, x: exp.model.apply(
      g, x, train=False, mutable=['params', 'batch_stats'],
      rngs={'params': rng, 'dropout': rng}))(given, _init_inputs(exp, inputs))
  made = {c: _flat(made.get(c, {})) for c in ('params', 'batch_stats')}
  return {c: traverse_util.unflatten_dict(
      {k: made[c][k] if (c, k) in missing else v for k, v in _flat(variables[c]).items()},
      sep='/') for c in ('params', 'batch_stats')}


def main_metric(info) -> str:
  """The eval metric a run is judged by: its task's first (GLUE), else eval/accuracy."""
  return f'eval/{info.metrics[0]}' if info.metrics else 'eval/accuracy'


def evaluate(exp: Experiment, p_eval_step, state) -> dict:
  """One pass over the eval split: ``eval/loss``, ``eval/accuracy`` (+ top-5 over 10
  classes, F1 / Matthews where the task is scored by them); a regression task's
  ``eval/loss`` is its mean squared error, with ``eval/pearson`` and ``eval/spearman``."""
  totals, rows = None, []
  for batch in exp.dataset.eval_batches(exp.eval_batch_size):
    sums = p_eval_step(state, parallel.shard_batch(exp.mesh, batch))
    if 'rows' in sums:
      rows.append(sums.pop('rows'))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = parallel.fetch(totals)
  count = max(float(totals['count']), 1.0)
  out = {'eval/loss': float(totals['loss']) / count}
  if rows:  # regression: correlations of the outputs with the labels over the split
    rows = {k: np.concatenate([parallel.fetch(r[k]) for r in rows]) for k in rows[0]}
    keep = rows['mask'] > 0
    for name in exp.info.metrics or ('pearson', 'spearman'):
      out[f'eval/{name}'] = data_lib.glue.METRICS[name](rows['label'][keep],
                                                        rows['output'][keep])
    return out
  out['eval/accuracy'] = float(totals['correct']) / count
  if exp.info.num_classes > 10:
    out['eval/top5_accuracy'] = float(totals['top5']) / count
  if 'confusion' in totals:  # GLUE's F1 / Matthews
    out.update({f'eval/{k}': v for k, v in data_lib.glue.confusion_metrics(
        totals['confusion'], exp.info.metrics).items() if k != 'accuracy'})
  return out


@dataclasses.dataclass
class LoopResult:
  state: dict
  step: int
  train_seconds: float
  preempted: bool


def train_loop(exp: Experiment, state, p_train_step, p_eval_step, checkpointer, writer,
               say: Callable = _say) -> LoopResult:
  """Steps from the state's step to ``total_steps``: logs, periodic evals and saves, a NaN
  stop, and SIGTERM (save and return ``preempted``). Saves the last step."""
  config, total_steps = exp.config, exp.total_steps
  start_step = int(parallel.fetch(state['step']))
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
        checkpointer.wait()  # the save in flight, if any, lands before it is named
        kept = checkpointer.latest_step()
        raise FloatingPointError(
            f'train/loss is {m["train/loss"]} at step {s}: stopping. '
            + (f'The last good checkpoint (step {kept}) is kept in {checkpointer.directory}.'
               if kept is not None else 'No checkpoint was saved before it.'))
    checkpointer.check()  # a background save that failed (a full disk) stops the run here
    if fetched and writer and (step % config.log_every_steps == 0 or step == total_steps):
      means = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
      means.update(progress.tick(step), lr=float(exp.schedule(step - 1)))
      writer.write(step, means)
      say(metrics_lib.console_line(step, total_steps, means))

  def save(step):
    nonlocal last_saved
    flush_metrics(step)
    t = time.perf_counter()
    checkpointer.save(step, state)
    last_saved = step
    progress.pause(time.perf_counter() - t)

  batches = _prefetch((parallel.shard_batch(exp.mesh, b)
                       for b in exp.dataset.train_batches(start_step, config.batch_size)),
                      size=2)
  teacher_variables = exp.teacher_variables
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
      eval_metrics = evaluate(exp, p_eval_step, state)
      progress.pause(time.perf_counter() - t)
      if writer:
        writer.write(step, eval_metrics)
      say(f'step {step:>7}/{total_steps} | ' + _fmt(eval_metrics))
    if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
      save(step)
    if preempted.now(step):
      save(step)
      return LoopResult(state, step, time.perf_counter() - train_start, True)
  flush_metrics(step)
  train_seconds = time.perf_counter() - train_start
  if last_saved != step:
    save(step)
  return LoopResult(state, step, train_seconds, False)


def finish(exp: Experiment, state, step: int, train_seconds: float, workdir: str,
           say: Callable = _say) -> dict:
  """Final eval, the compression summary, each method's end-of-run work (``finish``: e.g.
  channel pruning's rebuilt network) and ``results.json``."""
  config, info, model = exp.config, exp.info, exp.model
  _, p_eval_step = exp_steps(exp)
  final = evaluate(exp, p_eval_step, state)
  params = parallel.fetch(state['params'])
  num_params = sum(x.size for x in jax.tree.leaves(params))
  size = summary_lib.summarize(model, info.image_shape, params=params)
  results = {'step': step, **final, 'metric': main_metric(info), 'params': int(num_params),
             **{k: size[k] for k in SIZE_KEYS},
             'train_seconds': round(train_seconds, 2), 'model': config.model.name,
             'data': config.data.name}
  variables = parallel.fetch({'params': state['params'], 'batch_stats': state['batch_stats']})
  for method in exp.methods:
    if hasattr(method, 'finish'):
      results.update(method.finish(model=model, variables=variables, config=config,
                                   workdir=workdir, step=step, image_shape=info.image_shape,
                                   dense_summary=size, say=say))
  say(f'mcj: final eval at step {step} | ' + _fmt(final))
  say(f'mcj: compression summary of {config.model.name} '
      f'({"x".join(map(str, info.image_shape))} input):\n' + summary_lib.format_totals(size))
  return results


def exp_steps(exp: Experiment):
  """The experiment's data-parallel ``(train_step, eval_step)``, built once."""
  if exp.compiled_steps is None:
    exp.compiled_steps = steps_lib.data_parallel_steps(exp)
  return exp.compiled_steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns results.

  A workdir that holds a run of another config is refused unless ``allow_config_change``
  (``mcj.core.workdir``); a finished run is reported, not trained or evaluated again.
  """
  config = merge_config(config)
  if config.stages:
    return pipeline.run(config, workdir, functools.partial(
        train_and_evaluate, allow_config_change=allow_config_change),
        allow_config_change=allow_config_change)
  is_main = jax.process_index() == 0
  with workdir_lib.open_run(workdir, config.to_dict(), config.to_json(indent=2, sort_keys=True),
                            allow_change=allow_config_change, is_main=is_main,
                            defaults=default_config().to_dict(), say=_say) as finished:
    if finished is not None:
      return finished
    return _train(config, workdir, is_main)


def _train(config, workdir: str, is_main: bool) -> dict:
  exp = build(config)
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints, say=_say)
  writer = None
  try:  # every exit path waits for the save in flight
    # a resumed run's init is overwritten: only a fresh one reads the first batch for it
    inputs = first_inputs(exp) if checkpointer.latest_step() is None else None
    state = init_state(exp, inputs)
    num_params = sum(x.size for x in jax.tree.leaves(state['params']))
    _say(f'mcj: model {config.model.name}, {num_params:,} params; data {config.data.name}, '
         f'{exp.info.num_train_examples:,} train / {exp.info.num_eval_examples:,} eval '
         f'examples, {exp.total_steps:,} steps.')
    for method in (exp.pruner, exp.head_pruner):
      if method:
        _say(f'mcj: {method.describe()}.')
    p_train_step, p_eval_step = exp_steps(exp)
    state = restore(exp, state, checkpointer, inputs=inputs)
    start_step = int(parallel.fetch(state['step']))
    writer = metrics_lib.MetricWriter(workdir, resume_step=start_step) if is_main else None
    loop = train_loop(exp, state, p_train_step, p_eval_step, checkpointer, writer)
    checkpointer.wait()
  except BaseException:
    if writer:
      writer.close()
    raise
  finally:
    checkpointer.close()
  if loop.preempted:
    _say(f'mcj: stopped by SIGTERM at step {loop.step}; checkpoint saved. Rerun to resume.')
    return {'preempted': True, 'step': loop.step}

  results = finish(exp, loop.state, loop.step, loop.train_seconds, workdir)
  if is_main:
    writer.write(loop.step, {k: v for k, v in results.items() if k.startswith('eval/')})
    writer.close()
    workdir_lib.write_atomically(os.path.join(workdir, 'results.json'), json.dumps(results, indent=2))
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
  agree on; with several hosts jax's own preemption service coordinates that step. The
  request is process-wide, so one that arrives between runs (a sweep compiling its next
  run) is honoured at that run's first step."""
  requested = False  # set by the handler; cleared once a loop has stopped for it

  def __init__(self):
    if jax.process_count() == 1 and signal.getsignal(signal.SIGTERM) is not _on_sigterm:
      signal.signal(signal.SIGTERM, _on_sigterm)

  def now(self, step) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # no preemption service in this runtime
        return False
    if _PreemptionWatcher.requested:
      _PreemptionWatcher.requested = False
      return True
    return False


def _on_sigterm(signum, frame):
  del signum, frame
  _PreemptionWatcher.requested = True


def preemption_requested() -> bool:
  """Whether a SIGTERM arrived that no train loop has stopped for yet."""
  return _PreemptionWatcher.requested


def watch_preemption() -> None:
  """Installs the SIGTERM handler now (a sweep does, before its first run)."""
  _PreemptionWatcher()
