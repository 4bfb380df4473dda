"""Compact network design by search: ``python -m mcj.search --config FILE --workdir DIR``.

A search is spaces + strategies + evaluators, each registered by name in the one registry:

- ``spaces.py``: what an architecture is (an encoding) and the model block it trains as;
- ``strategies.py``: which encoding next, from the results so far (random, aging evolution,
  NSGA-II), with the Pareto helpers;
- ``evaluators.py``: what a candidate measures (``train`` through the trainer itself,
  zero-cost ``proxies``, ``complexity`` from the summary, ``latency`` on the device);
- ``runner.py``: the loop (ask, evaluate, append to ``candidates.jsonl``, resume);
- ``report.py``: what a finished search leaves (``pareto.json``, plots, ``best/``).

The search config (``DEFAULTS``, merged by ``merge_config``; unknown keys, wrong types and
impossible settings are one ConfigError line)::

  space        spec of a search space, e.g. 'mobilenet_v3(variant="mnist")'
  strategy     spec of a strategy, e.g. 'evolution(population=20, sample=5)'
  evaluators   specs, run in order for each candidate; once a constraint is broken the
               remaining (costlier) evaluators are skipped
  objectives   'metric:max' / 'metric:min'; the first one picks the best candidate
  constraints  {metric: limit}: a number is an upper limit, '>=x' a lower one
  budget       evaluations (candidates, all counted) and seconds (evaluation time summed
               over candidates, so a resumed search keeps its clock); 0: no limit
  train        the trainer config every candidate trains with (all but its model block,
               which the space gives); ``best/config.py`` is this plus the winner's model
"""
import copy

import ml_collections

from mcj.core.config import ConfigError

DEFAULTS = {
    'seed': 0,
    'space': 'mobilenet_v3',
    'strategy': 'random',
    'evaluators': ('complexity',),
    'objectives': ('params:min',),
    'constraints': {},
    'budget': {'evaluations': 20, 'seconds': 0.0},
    'train': {},
    'max_attempts': 100,   # samples drawn to find a candidate not evaluated before
}
# The search's own blocks whose keys are free (their names are checked elsewhere).
_OPEN = ('constraints',)


def merge_config(user) -> ml_collections.ConfigDict:
  """DEFAULTS overlaid with ``user``; ``train`` is merged with the trainer's schema (so its
  mistakes read as ``config.train.<key>``)."""
  from mcj.train import schema  # pylint: disable=g-import-not-at-top
  user = user.to_dict() if hasattr(user, 'to_dict') else dict(user)
  unknown = sorted(set(user) - set(DEFAULTS))
  if unknown:
    raise ConfigError(f'Unknown config key config.{unknown[0]}. Valid: '
                      f'{", ".join(sorted(DEFAULTS))}.')
  merged = copy.deepcopy(DEFAULTS)
  for key, value in user.items():
    if key == 'budget':
      if not isinstance(value, dict):
        raise ConfigError('config.budget is a block of keys (evaluations, seconds).')
      bad = sorted(set(value) - set(DEFAULTS['budget']))
      if bad:
        raise ConfigError(f'Unknown config key config.budget.{bad[0]}. Valid: evaluations, '
                          'seconds.')
      merged['budget'].update(value)
    elif key in _OPEN or key == 'train':
      if not isinstance(value, dict):
        raise ConfigError(f'config.{key} is a block of keys, got {value!r}.')
      merged[key] = dict(value)
    else:
      merged[key] = value
  if isinstance(merged['evaluators'], str) or isinstance(merged['objectives'], str):
    raise ConfigError('config.evaluators and config.objectives are lists of strings, e.g. '
                      "('complexity', 'train') and ('eval/accuracy:max',).")
  train = schema.merge_config(merged.pop('train'), path='config.train', need_model=False)
  config = ml_collections.ConfigDict(merged)
  with config.ignore_type():
    config.train = train
  validate(config)
  return config


def validate(config) -> None:
  def need(ok, message):
    if not ok:
      raise ConfigError(message)
  budget = config.budget
  need(isinstance(budget.evaluations, int) and budget.evaluations >= 0,
       f'config.budget.evaluations must be an integer >= 0, got {budget.evaluations!r}.')
  need(budget.seconds >= 0, f'config.budget.seconds must be >= 0, got {budget.seconds}.')
  need(budget.evaluations or budget.seconds,
       'The search has no budget: set config.budget.evaluations or config.budget.seconds.')
  need(config.objectives, 'config.objectives is empty: give at least one, e.g. '
       "'eval/accuracy:max'.")
  for objective in config.objectives:
    metric, _, direction = str(objective).rpartition(':')
    need(metric and direction in ('max', 'min'),
         f'Objective {objective!r} must read metric:max or metric:min.')
  for metric, limit in config.constraints.items():
    parse_limit(metric, limit)
  need(config.max_attempts >= 1, 'config.max_attempts must be at least 1.')


def parse_limit(metric: str, limit) -> tuple[str, float]:
  """A constraint as (op, value): a number is '<=' it, '>=x' is a lower limit."""
  if isinstance(limit, (int, float)) and not isinstance(limit, bool):
    return '<=', float(limit)
  text = str(limit).strip()
  for op in ('<=', '>='):
    if text.startswith(op):
      try:
        return op, float(text[2:])
      except ValueError:
        break
  raise ConfigError(f'config.constraints.{metric}={limit!r}: give an upper limit as a number '
                    "or a lower one as '>=x'.")


def objective_pairs(config) -> list[tuple[str, str]]:
  """[(metric, 'max' | 'min'), ...] of config.objectives."""
  return [tuple(str(o).rsplit(':', 1)) for o in config.objectives]
