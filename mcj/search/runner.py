"""The search loop: ask the strategy, evaluate, append to ``candidates.jsonl``, repeat.

``run(config, workdir)`` reads top to bottom:

1. the workdir is held (lock), its config checked (a changed search config is refused, as
   for training) and a finished search only reports its results;
2. space, strategy and evaluators are built; every objective and constraint must name a
   metric some evaluator provides, and a sample of the space must make a valid trainer
   config, before anything is evaluated;
3. ``candidates.jsonl`` is read back: every line is a finished evaluation (a line cut
   short by a kill is dropped), so a rerun continues with the next candidate and never
   evaluates one again; a candidate killed during its training resumes from its
   checkpoint in ``candidates/<index>/``;
4. until the budget is spent: ``ask`` (seeded by (seed, index), so the same search
   replays exactly), skip encodings seen before, run the evaluators in order (stopping
   at the first broken constraint), append the record (fsync'd), print one line;
5. the report (``report.write``): ``pareto.json``, ``best/config.py``, plots and
   ``results.json`` last, which marks the search finished.

Several hosts run the same loop in lockstep (the strategy is deterministic given the
history); every candidate trains data-parallel over all devices of all hosts, measured
metrics are taken from process 0, and only process 0 writes.
"""
import json
import math
import os
import time

import jax
import numpy as np

from mcj.core import workdir as workdir_lib
from mcj.core.config import ConfigError
from mcj.search import evaluators as evaluators_lib
from mcj.search import objective_pairs, parse_limit
from mcj.search import report
from mcj.search import spaces as spaces_lib
from mcj.search import strategies as strategies_lib
from mcj.train import schema
from mcj.train import trainer

CANDIDATES = 'candidates.jsonl'


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


def read_history(path: str) -> list[dict]:
  """The records of ``candidates.jsonl``; a last line cut short by a kill is dropped (and
  cut off the file, so the next record starts on a line of its own)."""
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    data = f.read()
  end = data.rfind(b'\n') + 1
  if end < len(data) and jax.process_index() == 0:
    with open(path, 'r+b') as f:
      f.truncate(end)
  records = []
  for number, line in enumerate(data[:end].splitlines(), start=1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      raise ConfigError(f'{path} line {number} is not a candidate record: move the file '
                        'away to start the search again.') from None
  return records


def append_record(path: str, record: dict) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')
    f.flush()
    os.fsync(f.fileno())


def violation(metrics: dict, constraints: dict) -> float:
  """Summed relative excess over the constraints (0: within all; inf: a constrained metric
  is missing or not a number, i.e. a failed evaluation)."""
  total = 0.0
  for metric, limit in constraints.items():
    op, bound = parse_limit(metric, limit)
    value = metrics.get(metric)
    if value is None:
      continue
    if not isinstance(value, (int, float)) or math.isnan(value):
      return math.inf
    excess = value - bound if op == '<=' else bound - value
    if excess > 0:
      total += excess / max(abs(bound), 1e-12)
  return total


def objective_vector(metrics: dict, objectives) -> list[float]:
  """The objectives as a vector to minimise (metrics to maximise negated; NaN if
  missing)."""
  out = []
  for metric, direction in objectives:
    value = metrics.get(metric)
    value = float(value) if isinstance(value, (int, float)) else math.nan
    out.append(-value if direction == 'max' else value)
  return out


def _agree(metrics: dict) -> dict:
  """Process 0's metrics on every host (measured values differ between hosts)."""
  if jax.process_count() == 1:
    return metrics
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(json.dumps(metrics, sort_keys=True).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  padded = np.zeros(size, np.uint8)
  padded[:min(size, data.size)] = data[:size]
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).decode())


class Search:
  """A search's parts, built and checked from its (merged) config."""

  def __init__(self, config, workdir: str, say=_say):
    self.config, self.workdir, self.say = config, workdir, say
    self.space = spaces_lib.get_space(config.space)
    self.strategy = strategies_lib.get_strategy(config.strategy, self.space)
    self.context = evaluators_lib.Context(config, workdir, say)
    self.evaluators = [evaluators_lib.get_evaluator(s, self.context) for s in config.evaluators]
    if not self.evaluators:
      raise ConfigError('config.evaluators is empty: give at least one (e.g. complexity, '
                        'train, proxies, latency).')
    self.objectives = objective_pairs(config)
    self.constraints = dict(config.constraints)
    provided = {m for e in self.evaluators for m in e.provides()}
    for metric in [m for m, _ in self.objectives] + list(self.constraints):
      if metric not in provided:
        raise ConfigError(f'Metric {metric!r} of the objectives / constraints is measured by '
                          f'no evaluator of config.evaluators. Measured: '
                          f'{", ".join(sorted(provided))}.')
    # A sample of the space must make a trainer config (caught before any evaluation).
    schema.merge_config(self.train_config(self.space.sample(np.random.default_rng(0))))

  def train_config(self, encoding) -> dict:
    """The trainer config a candidate trains with: the train block + the space's part."""
    return evaluators_lib.deep_update(self.config.train.to_dict(),
                                      self.space.overrides(encoding))

  def rng(self, index: int, attempt: int):
    return np.random.default_rng([self.config.seed, index, attempt])

  def entry(self, record: dict) -> dict:
    """A record as the strategies see it."""
    return {'encoding': record['encoding'], 'violation': record['violation'],
            'objectives': record['objectives'], 'index': record['index']}

  def ask(self, history: list[dict]):
    """The next encoding not evaluated before, or None when the strategy keeps proposing
    seen ones (a small space is exhausted)."""
    seen = {r['key'] for r in history}
    entries = [self.entry(r) for r in history]
    for attempt in range(self.config.max_attempts):
      encoding = self.strategy.ask(entries, self.rng(len(history), attempt))
      self.space.validate(encoding)
      if self.space.key(encoding) not in seen:
        return encoding
    return None

  def evaluate(self, index: int, encoding: dict) -> dict:
    candidate = evaluators_lib.Candidate(
        index=index, encoding=encoding, train_config=self.train_config(encoding),
        workdir=os.path.join(self.workdir, 'candidates', str(index)), context=self.context)
    start, metrics, skipped, failed = time.time(), {}, [], None
    for evaluator in self.evaluators:
      if violation(metrics, self.constraints) > 0 or failed:
        skipped.append(evaluator.name)
        continue
      began = time.time()
      try:
        metrics.update(evaluator(candidate))
        metrics[f'seconds/{evaluator.name}'] = time.time() - began
      except FloatingPointError as e:  # a candidate that diverges is a result, not a crash
        failed = f'{evaluator.name}: {e}'
      # A remote_lib.RemoteError propagates: nothing is recorded, a rerun evaluates again.
    metrics = _agree(metrics)
    excess = math.inf if failed else violation(metrics, self.constraints)
    return {'index': index, 'key': self.space.key(encoding), 'encoding': encoding,
            'arch': self.space.describe(encoding), 'model': candidate.train_config['model'],
            'metrics': metrics, 'objectives': objective_vector(metrics, self.objectives),
            'violation': excess, 'feasible': excess == 0, 'skipped': skipped,
            'failed': failed, 'seconds': time.time() - start,
            'strategy': self.strategy.describe()}

  def spent(self, history) -> bool:
    budget = self.config.budget
    if budget.evaluations and len(history) >= budget.evaluations:
      return True
    return bool(budget.seconds) and sum(r['seconds'] for r in history) >= budget.seconds

  def console_line(self, record, history) -> str:
    budget = self.config.budget
    done, elapsed = len(history), sum(r['seconds'] for r in history)
    total = f'/{budget.evaluations}' if budget.evaluations else ''
    shown = [m for m, _ in self.objectives] + [m for m in self.constraints
                                               if m not in dict(self.objectives)]
    values = ' | '.join(f'{m} {_fmt(record["metrics"].get(m))}' for m in shown)
    status = ('failed: ' + record['failed']) if record['failed'] else (
        'feasible' if record['feasible'] else 'over a constraint'
        + (f', skipped {", ".join(record["skipped"])}' if record['skipped'] else ''))
    left = []
    if budget.evaluations:
      left.append((budget.evaluations - done) * elapsed / done)
    if budget.seconds:
      left.append(max(0.0, budget.seconds - elapsed))
    eta = f' | ETA {_duration(min(left))}' if left else ''
    return (f'mcj.search: [{done}{total}] #{record["index"]} {record["arch"]} | {values} | '
            f'{status} | {record["seconds"]:.1f} s{eta}')


def _fmt(value) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  if isinstance(value, int):
    return f'{value:,}'
  return str(value)


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else (
      f'{seconds // 60}m{seconds % 60:02d}s')


def run(config, workdir: str, *, allow_config_change: bool = False, say=_say) -> dict:
  """Runs (or resumes) the search of a merged search config in ``workdir``."""
  is_main = jax.process_index() == 0
  trainer.watch_preemption()
  with workdir_lib.open_run(workdir, config.to_dict(), config.to_json(indent=2, sort_keys=True),
                            allow_change=allow_config_change, is_main=is_main,
                            say=say) as finished:
    if finished is not None:
      return finished
    search = Search(config, workdir, say)
    path = os.path.join(workdir, CANDIDATES)
    history = read_history(path)
    if history:
      say(f'mcj.search: resuming after {len(history)} evaluated candidate(s) in {path}.')
    say(f'mcj.search: {search.strategy.describe()} over {config.space} '
        f'(10^{spaces_lib.log10_size(search.space):.1f} points), evaluators '
        f'{", ".join(e.name for e in search.evaluators)}.')
    while not search.spent(history):
      if trainer.preemption_requested():
        return _stopped(say, len(history))
      encoding = search.ask(history)
      if encoding is None:
        say(f'mcj.search: no unseen candidate in {config.max_attempts} proposals; the space '
            'looks exhausted. Stopping early.')
        break
      try:
        record = search.evaluate(len(history), encoding)
      except evaluators_lib.Preempted:
        return _stopped(say, len(history))
      if is_main:
        append_record(path, record)
      history.append(record)
      say(search.console_line(record, history))
    results = report.write(search, history, is_main=is_main)
    say(report.summary_line(results))
    return results


def _stopped(say, done: int) -> dict:
  say(f'mcj.search: stopped by SIGTERM after {done} candidate(s); rerun the same command to '
      'resume.')
  return {'preempted': True, 'evaluated': done}
