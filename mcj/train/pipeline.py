"""Multi-stage compression pipelines: one config, one workdir, resumable.

A config with ``stages`` is a pipeline. Each stage is a dict with a ``name`` and config
keys that override the shared ones (a stage's ``model`` block replaces the shared one
whole; other blocks merge key by key). A stage runs in ``<workdir>/<name>``; wherever a
stage gives ``init_from`` or a teacher's ``init_from`` as the name of an earlier stage, it
means that stage's workdir. For example ReActNet's two steps::

  'stages': (
      {'name': 'teacher', 'model': {'name': 'resnet34'}},
      {'name': 'step1', 'model': {...binary activations...},
       'distill': {'teachers': ({'init_from': 'teacher'},)}},
      {'name': 'step2', 'model': {...fully binary...}, 'init_from': 'step1',
       'distill': {'teachers': ({'init_from': 'teacher'},)}},
  )

A stage with a ``results.json`` is finished and skipped; rerunning after a kill resumes
the unfinished stage from its newest checkpoint. ``<workdir>/results.json`` lists every
stage's final metrics and, at its top level, the final stage's results (eval metrics,
params, model size, compression ratio, ...).
"""
import copy
import json
import os
import re

import ml_collections

from mcj.core import metrics as metrics_lib
from mcj.core import workdir as workdir_lib
from mcj.core.config import ConfigError
from mcj.train.schema import default_config, merge_config

STAGE_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


def stage_configs(config, workdir: str) -> list[tuple[str, str, dict]]:
  """``(name, stage workdir, full config)`` for each stage, stage names resolved."""
  base = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  stages = base.pop('stages')
  out, done = [], {}
  for i, stage in enumerate(stages):
    stage = dict(stage)
    name = stage.pop('name', None)
    if not isinstance(name, str) or not STAGE_NAME.match(name):
      raise ConfigError(f'config.stages[{i}] needs a name of letters, digits, _ . - '
                        f'(got {name!r}).')
    if name in done:
      raise ConfigError(f'config.stages: the name {name!r} is used twice.')
    if 'stages' in stage:
      raise ConfigError(f'config.stages[{i}] ({name}) cannot have stages of its own.')
    merged = _merge(copy.deepcopy(base), stage)
    merged['stages'] = ()
    merged['init_from'] = _resolve(merged.get('init_from', ''), done, name, 'init_from')
    teachers = merged.get('distill', {}).get('teachers', ())
    merged.setdefault('distill', {})['teachers'] = tuple(
        {**t, 'init_from': _resolve(t.get('init_from', ''), done, name,
                                    f'distill.teachers[{j}].init_from')}
        for j, t in enumerate(teachers))
    done[name] = os.path.join(workdir, name)
    out.append((name, done[name], merged))
  if not out:
    raise ConfigError('config.stages is empty.')
  return out


def _merge(base: dict, override: dict) -> dict:
  for key, value in override.items():
    if key != 'model' and isinstance(value, dict) and isinstance(base.get(key), dict):
      base[key] = _merge(base[key], value)
    else:
      base[key] = value
  return base


def _resolve(value: str, done: dict, stage: str, what: str) -> str:
  if value in done:
    return done[value]
  if value and '/' not in value and not os.path.exists(value) and value != 'random':
    raise ConfigError(f'Stage {stage}: {what}={value!r} is neither an earlier stage '
                      f'({", ".join(done) or "none yet"}) nor an existing path.')
  return value


def run(config, workdir: str, train_fn, *, allow_config_change: bool = False) -> dict:
  """Runs the unfinished stages in order with ``train_fn(config, stage_workdir)``."""
  import jax  # pylint: disable=g-import-not-at-top
  is_main = jax.process_index() == 0
  say = (lambda *a: print(*a, flush=True)) if is_main else (lambda *a: None)
  stages = stage_configs(config, workdir)
  for name, _, stage_config in stages:  # every stage checked before the first trains
    try:
      merge_config(stage_config)
    except ConfigError as e:
      raise ConfigError(f'stage {name}: {e}') from None
  with workdir_lib.open_run(workdir, config.to_dict(), config.to_json(indent=2, sort_keys=True),
                            allow_change=allow_config_change, is_main=is_main,
                            defaults=default_config().to_dict(), say=say) as finished_run:
    if finished_run is not None:
      return finished_run
    finished = []
    for i, (name, stage_dir, stage_config) in enumerate(stages):
      results_path = os.path.join(stage_dir, 'results.json')
      if os.path.exists(results_path):
        with open(results_path) as f:
          results = json.load(f)
        metric, value = metrics_lib.headline(results)
        say(f'mcj: stage {i + 1}/{len(stages)} {name}: finished earlier '
            f'({metric} {value:.4f}).')
      else:
        say(f'mcj: stage {i + 1}/{len(stages)} {name} in {stage_dir}')
        try:
          results = train_fn(stage_config, stage_dir)
        except ConfigError as e:
          raise ConfigError(f'stage {name}: {e}') from None
        if results.get('preempted'):
          return {**results, 'stage': name}
      finished.append({'name': name, 'workdir': stage_dir, **results})
    summary = {**finished[-1], 'stages': finished}
    summary.pop('workdir')
    say('mcj: pipeline finished\n' + format_stages(finished))
    if is_main:
      workdir_lib.write_atomically(os.path.join(workdir, 'results.json'),
                                   json.dumps(summary, indent=2))
    return summary


def format_stages(stages: list[dict]) -> str:
  rows = [('stage', 'model', 'eval metric', 'params', 'size', 'compression')]
  for s in stages:
    metric, value = metrics_lib.headline(s)
    rows.append((s['name'], s.get('model', ''), f'{metric[5:]} {value:.4f}',
                 f'{s.get("params", 0):,}', f'{s.get("model_size_bytes", 0) / 1024:.1f} KiB',
                 f'{s.get("compression_ratio", float("nan")):.2f}x'))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
