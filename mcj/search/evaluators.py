"""Evaluators: what a search measures of a candidate, registered as ``search_evaluator``.

An evaluator is built once per search from its spec (``'latency(runs=30)'``) and the
search context, declares the metrics it ``provides`` (objectives and constraints are
checked against them before anything runs) and is called with a ``Candidate``; it returns
a flat dict of metrics (numbers, or lists for curves). Evaluators compose: a search runs
them in its config's order, and the candidate shares what one builds (the model, its
initial variables) with the next.

- ``complexity``: the summary's counts (params, MACs, BOPs, FLOPs, OPs, model sizes);
  abstract traces only, no compilation.
- ``proxies``: zero-cost proxies at initialisation on one minibatch (``proxies.py``), the
  same minibatch and initialisation seed for every candidate.
- ``train``: a short training through ``mcj.train``'s ``train_and_evaluate`` itself (same
  data pipeline, step and devices: each candidate is data-parallel over every device of
  the run) in ``<search workdir>/candidates/<index>/``, so a killed search resumes the
  candidate's training from its checkpoint. Reports eval accuracy and loss and the
  convergence-speed proxies: the per-epoch mean training loss curve and the training-speed
  estimate TSE (Ru et al. 2021: the sum over epochs of the epoch's mean minibatch loss,
  lower is better), here over the first ``tse_epochs`` epochs (None: all).
- ``latency``: the compiled inference forward (``model.apply(..., train=False)``: binary
  layers as they run in mcj, sign and all) timed on the device: ``warmup`` untimed calls,
  then ``runs`` timed ones, each to ``block_until_ready``; the median (``latency_ms``) and
  interquartile range at batch 1 and the throughput at ``throughput_batch``, with the
  device kind.
- ``latency_table``: the latency predicted by a per-block lookup table built as the search
  goes (``latency.py``); next to ``latency``, the report gives its error.
"""
import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mcj import data as data_lib
from mcj.analysis import summary as summary_lib
from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.search import latency as latency_lib
from mcj.search import proxies as proxies_lib
from mcj.search import remote as remote_lib
from mcj.train import schema
from mcj.train import trainer

class Preempted(Exception):
  """SIGTERM arrived during a candidate's training: its checkpoint is saved; rerun."""


COMPLEXITY_KEYS = ('params', 'binary_params', 'macs', 'bops', 'flops', 'ops',
                   'model_size_bytes', 'folded_model_size_bytes')


def deep_update(base: dict, extra: dict) -> dict:
  """``base`` with ``extra`` merged in, block by block (the model block is replaced)."""
  out = dict(base)
  for key, value in extra.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict) and key != 'model':
      out[key] = deep_update(out[key], value)
    else:
      out[key] = value
  return out


@dataclasses.dataclass
class Context:
  """What every candidate of one search shares."""
  config: ml_collections.ConfigDict   # the search config
  workdir: str
  say: Any = print
  _dataset: Any = None

  def dataset(self):
    """The train config's dataset (its stream seeded by ``train.seed``), read once."""
    if self._dataset is None:
      self._dataset = data_lib.get_dataset(self.config.train.data, seed=self.config.train.seed)
    return self._dataset

  def info(self) -> data_lib.DatasetInfo:
    return data_lib.get_dataset_info(self.config.train.data)


@dataclasses.dataclass
class Candidate:
  """One architecture under evaluation."""
  index: int
  encoding: dict
  train_config: dict                  # the trainer config it trains with (a plain dict)
  workdir: str                        # <search workdir>/candidates/<index>
  context: Context
  _model: Any = None
  _variables: Any = None
  _merged: Any = None

  def config(self) -> ml_collections.ConfigDict:
    if self._merged is None:
      self._merged = schema.merge_config(self.train_config)
    return self._merged

  def image_shape(self) -> tuple:
    return tuple(data_lib.get_dataset_info(self.config().data).image_shape)

  def num_classes(self) -> int:
    return data_lib.get_dataset_info(self.config().data).num_classes

  def model(self):
    if self._model is None:
      block = dict(self.config().model)
      name = block.pop('name')
      self._model = get_model(name, num_classes=self.num_classes(), **block)
    return self._model

  def variables(self):
    """Initial variables (seeded by ``train.seed``, as training initialises them: the
    search seed picks architectures, not initialisations), built once per candidate."""
    if self._variables is None:
      model, shape = self.model(), self.image_shape()
      init = jax.jit(lambda rng: model.init({'params': rng, 'dropout': rng},
                                            jnp.zeros((1,) + shape), train=False))
      self._variables = init(jax.random.key(self.context.config.train.seed))
    return self._variables


class Evaluator:
  """``provides()`` (metric names) and ``__call__(candidate) -> metrics``."""
  name = ''

  def __init__(self, context: Context):
    self.context = context

  def provides(self) -> list[str]:
    raise NotImplementedError

  def __call__(self, candidate: Candidate) -> dict:
    raise NotImplementedError


@registry.register('search_evaluator', 'complexity')
class Complexity(Evaluator):
  name = 'complexity'

  def provides(self):
    return list(COMPLEXITY_KEYS)

  def __call__(self, candidate):
    counts = summary_lib.summarize(candidate.model(), candidate.image_shape())
    return {k: counts[k] for k in COMPLEXITY_KEYS}


@registry.register('search_evaluator', 'proxies')
class Proxies(Evaluator):
  """Zero-cost proxies (``names``, default all) on the first ``batch_size`` training
  examples of the ``train.seed`` stream, at the ``train.seed`` initialisation."""
  name = 'proxies'

  def __init__(self, context, names=proxies_lib.PROXIES, batch_size: int = 64):
    super().__init__(context)
    for n in names:
      registry.get('search_proxy', n)
    self.names, self.batch_size = tuple(names), batch_size

  def provides(self):
    return [f'proxy/{n}' for n in self.names] + ['proxy_seconds']

  def batch(self):
    if not hasattr(self, '_batch'):
      batch = next(self.context.dataset().train_batches(0, self.batch_size))
      self._batch = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
    return self._batch

  def __call__(self, candidate):
    images, labels = self.batch()
    model, variables, n = candidate.model(), candidate.variables(), candidate.num_classes()
    start, out, grads = time.time(), {}, None
    shared = {'grad_norm', 'snip', 'grasp'}
    for name in self.names:
      if name in shared:
        grads = grads or proxies_lib._kernel_grads(  # pylint: disable=protected-access
            model, variables, images, labels, n, hessian='grasp' in self.names)
        value = registry.get('search_proxy', name)(model, variables, images, labels, n,
                                                   grads=grads)
      else:
        value = registry.get('search_proxy', name)(model, variables, images, labels, n)
      out[f'proxy/{name}'] = float(value)
    out['proxy_seconds'] = time.time() - start
    return out


@registry.register('search_evaluator', 'train')
class Train(Evaluator):
  """A short training through the trainer (see the module docstring); ``tse_epochs``:
  the epochs the training-speed estimate sums (None: all)."""
  name = 'train'

  def __init__(self, context, tse_epochs=None):
    super().__init__(context)
    self.tse_epochs = tse_epochs

  def provides(self):
    return ['eval/accuracy', 'eval/loss', 'train/tse', 'train/loss_curve', 'train_seconds']

  def __call__(self, candidate):
    config = dict(candidate.train_config, log_every_steps=1)  # every step's loss, for TSE
    merged = schema.merge_config(config)
    os.makedirs(candidate.workdir, exist_ok=True)
    log = os.path.join(candidate.workdir, 'train.log')
    with open(log, 'a') as f, contextlib.redirect_stdout(f):
      results = trainer.train_and_evaluate(merged, candidate.workdir)
    if results.get('preempted'):
      raise Preempted(candidate.index)
    curve = epoch_losses(os.path.join(candidate.workdir, 'metrics.jsonl'),
                         steps_per_epoch(merged, candidate))
    used = curve if self.tse_epochs is None else curve[:self.tse_epochs]
    return {'eval/accuracy': results['eval/accuracy'], 'eval/loss': results['eval/loss'],
            'train/tse': float(sum(used)), 'train/loss_curve': curve,
            'train_seconds': results.get('train_seconds')}


def steps_per_epoch(config, candidate) -> float:
  info = data_lib.get_dataset_info(config.data)
  return info.num_train_examples / config.batch_size


def epoch_losses(metrics_path: str, per_epoch: float) -> list[float]:
  """The mean training loss of each (started) epoch, from per-step ``metrics.jsonl`` lines
  (step s, counted from 1, belongs to epoch floor((s - 1) / steps per epoch))."""
  by_epoch: dict[int, list] = {}
  with open(metrics_path) as f:
    for line in f:
      row = json.loads(line)
      if 'train/loss' in row:
        by_epoch.setdefault(int((row['step'] - 1) // per_epoch), []).append(row['train/loss'])
  return [float(np.mean(by_epoch[e])) for e in sorted(by_epoch)]


def measure_forward(model, variables, image_shape, *, batch_size=1, warmup=3, runs=20,
                    device=None) -> dict:
  """Latency of the compiled inference forward at ``batch_size`` on ``device``."""
  device = device or jax.devices()[0]
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  x = jax.device_put(jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32), device)
  v = jax.device_put(variables, device)
  times = latency_lib.time_call(forward, (v, x), warmup=warmup, runs=runs) * 1e3
  q1, median, q3 = np.percentile(times, [25, 50, 75])
  return {'median_ms': float(median), 'iqr_ms': float(q3 - q1), 'runs_ms': times.tolist(),
          'device': device.device_kind}


@registry.register('search_evaluator', 'latency')
class Latency(Evaluator):
  """Measured latency of the candidate on this process's first device, or on the device of
  a latency server (``remote='HOST:PORT'``, ``mcj/search/remote.py``) (see the module
  docstring); ``throughput_batch=0`` skips the throughput measurement."""
  name = 'latency'

  def __init__(self, context, warmup: int = 3, runs: int = 20, throughput_batch: int = 64,
               remote=None, retries: int = 3):
    super().__init__(context)
    if warmup < 0 or runs < 1 or throughput_batch < 0:
      raise ConfigError('latency needs warmup >= 0, runs >= 1 and throughput_batch >= 0, got '
                        f'{warmup}, {runs}, {throughput_batch}.')
    self.warmup, self.runs, self.throughput_batch = warmup, runs, throughput_batch
    self.remote = remote_lib.RemoteLatency(remote, retries=retries) if remote else None

  def _measure(self, candidate, batch_size, runs):
    model, variables, shape = candidate.model(), candidate.variables(), candidate.image_shape()
    if self.remote:
      return self.remote.measure(model, variables, shape, batch_size=batch_size,
                                 warmup=self.warmup, runs=runs)
    return measure_forward(model, variables, shape, batch_size=batch_size, warmup=self.warmup,
                           runs=runs)

  def provides(self):
    return ['latency_ms', 'latency_iqr_ms', 'throughput_img_s', 'latency_device']

  def __call__(self, candidate):
    one = self._measure(candidate, 1, self.runs)
    out = {'latency_ms': one['median_ms'], 'latency_iqr_ms': one['iqr_ms'],
           'latency_device': one['device']}
    if self.throughput_batch:
      many = self._measure(candidate, self.throughput_batch, max(3, self.runs // 4))
      out['throughput_img_s'] = self.throughput_batch / (many['median_ms'] / 1e3)
    return out


@registry.register('search_evaluator', 'latency_table')
class LatencyTablePredictor(Evaluator):
  """Latency predicted from the per-block lookup table (``latency.py``): each distinct
  block of a candidate is measured once on this device (``warmup`` / ``runs`` as
  ``latency``) and stored in ``<workdir>/latency_table.json``; the prediction is the sum.
  With ``latency`` in the same search, the report gives the table's error."""
  name = 'latency_table'

  def __init__(self, context, warmup: int = 3, runs: int = 20):
    super().__init__(context)
    self.warmup, self.runs = warmup, runs
    self.table = latency_lib.LatencyTable(os.path.join(context.workdir, 'latency_table.json'))

  def provides(self):
    return ['latency_pred_ms', 'latency_table_new_blocks']

  def __call__(self, candidate):
    measure = functools.partial(latency_lib.measure_block, warmup=self.warmup, runs=self.runs,
                                time_call=latency_lib.time_call)
    overhead = functools.partial(latency_lib.measure_call_overhead, warmup=self.warmup,
                                 runs=self.runs, time_call=latency_lib.time_call)
    predicted, new = self.table.predict(candidate.model(), candidate.image_shape(),
                                        device_kind=jax.devices()[0].device_kind,
                                        measure=measure, measure_overhead=overhead)
    return {'latency_pred_ms': predicted, 'latency_table_new_blocks': new}


def get_evaluator(spec, context) -> Evaluator:
  return registry.build('search_evaluator', spec, context=context)
