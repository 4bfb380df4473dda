"""A finished (or converted) run evaluated without training: its config as evaluation
needs it and the trainer's own eval step over its newest checkpoint. ``python -m
mcj.evaluate`` is the command; ``mcj.prune_heads`` evaluates rebuilt models with it."""
import json
import os
import time

import jax
import numpy as np

from mcj.core import checkpoint
from mcj.core import parallel
from mcj.core.config import ConfigError
from mcj.train import trainer
from mcj.train.schema import apply_overrides, merge_config

EVALUATIONS = 'evaluations.jsonl'


def load_run_config(workdir: str, overrides=()):
  """A run's config as evaluation needs it: its teachers and pruning dropped, the
  ``--config.*`` ``overrides`` applied."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConfigError(f'{workdir} holds no run (no config.json): give the workdir of a '
                      'training or of python -m mcj.weights.')
  with open(path) as f:
    plain = json.load(f)
  if plain.get('stages'):
    names = [s['name'] for s in plain['stages']]
    raise ConfigError(f'{workdir} is a pipeline; evaluate one of its stages: '
                      + ', '.join(os.path.join(workdir, n) for n in names) + '.')
  # The run's teachers and pruning schedule are training-time parts: not needed here.
  plain.setdefault('distill', {})['teachers'] = ()
  plain.setdefault('prune', {}).update(algorithm=None, sparsity=0.0,
                                       heads_fraction=0.0)
  if plain.get('total_steps') is None and plain.get('total_epochs') is None:
    plain['total_steps'] = 1  # a converted checkpoint (python -m mcj.weights): no schedule
  config = merge_config(plain)
  apply_overrides(config, list(overrides), say=lambda *a: None)
  return config


def evaluate_workdir(workdir: str, overrides=(), *, record: bool = True, say=print) -> dict:
  """``{'eval/accuracy', 'eval/loss', ...}`` of ``workdir``'s newest checkpoint on the
  eval split of its (overridden) data config."""
  config = load_run_config(workdir, overrides)
  exp = trainer.build(config, say=lambda *a: None)
  loaded = checkpoint.load_variables(workdir)
  target = jax.eval_shape(lambda: trainer.init_state(exp))
  variables = {'params': checkpoint.fit_variables(target['params'], loaded['params'], workdir),
               'batch_stats': checkpoint.fit_variables(target['batch_stats'],
                                                       loaded['batch_stats'], workdir)}
  # A finished run's quantizer schedules are at their end (progress 1.0): evaluate as such.
  state = jax.device_put({'step': np.asarray(exp.total_steps, np.int32), **variables},
                         parallel.replicated(exp.mesh))
  _, p_eval_step = trainer.exp_steps(exp)
  start = time.time()
  metrics = trainer.evaluate(exp, p_eval_step, state)
  result = {'workdir': os.path.abspath(workdir), 'data': config.data.name,
            'split': config.data.eval_split or 'default eval split',
            'examples': exp.info.num_eval_examples, 'seconds': round(time.time() - start, 2),
            'metric': trainer.main_metric(exp.info), **metrics}
  if record and jax.process_index() == 0:
    with open(os.path.join(workdir, EVALUATIONS), 'a') as f:
      f.write(json.dumps(result, sort_keys=True) + '\n')
  say(json.dumps(result, sort_keys=True))
  return result
