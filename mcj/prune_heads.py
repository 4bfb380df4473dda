"""python -m mcj.prune_heads: accuracy against the fraction of attention heads pruned.

  python -m mcj.prune_heads --workdir /tmp/mcj/rt_bert --fractions 0,0.25,0.5,0.75

Michel et al. 2019's experiment (their Fig. 4): the heads of a trained BERT or ViT run
(``workdir``) ranked once by importance on training batches (``--batches``, default 20;
``mcj.compress.prune.heads``), then for each fraction the least important heads removed
without retraining, the smaller model rebuilt (``<workdir>/heads_curve/<fraction>``, a run
workdir of its own) and evaluated by the trainer's eval step. Prints one JSON line per
fraction (accuracy, heads kept, params) and writes them to ``<workdir>/heads_curve.json``.
``--step 0.1`` recomputes the importance after every 10% of the heads (the iterative
variant). Pruning during a training run, with fine-tuning after, is ``prune.heads_fraction``.
"""
import argparse
import itertools
import json
import os
import sys

import jax

from mcj.compress.prune import heads as heads_lib
from mcj.compress.prune import pruner as pruner_lib
from mcj.core import checkpoint
from mcj.core import workdir as workdir_lib
from mcj.core.config import ConfigError
from mcj.train import evaluation as evaluate_lib
from mcj.train import trainer


def curve(workdir: str, fractions, *, batches: int = 20, step: float = 0.0,
          say=print) -> list:
  """One ``{'fraction', 'eval/accuracy' (every eval metric), 'metric', 'heads_kept',
  'params', ...}`` per fraction."""
  config = evaluate_lib.load_run_config(workdir)
  exp = trainer.build(config, say=lambda *a: None)
  if not heads_lib.supports_heads(exp.model):
    raise ConfigError(f'{config.model.name} has no attention heads to prune.')
  loaded = checkpoint.load_variables(workdir)
  variables = {'params': loaded['params'], 'batch_stats': loaded.get('batch_stats', {})}
  data = exp.dataset

  def train_batches():
    return itertools.islice(data.train_batches(0, config.batch_size), batches)

  rows = []
  for fraction in fractions:
    keep, _ = heads_lib.prune_iteratively(exp.model, variables, train_batches, fraction,
                                          step=step)
    small_model, small_variables = heads_lib.rebuild(exp.model, variables, keep)
    out = os.path.join(workdir, 'heads_curve', f'{fraction:g}')
    rebuilt = {**config.model.to_dict(), 'heads_per_layer': list(small_model.heads_per_layer)}
    small_config = config.copy_and_resolve_references()
    small_config.unlock()
    small_config.total_steps, small_config.total_epochs = 1, None
    pruner_lib.save_rebuilt(out, small_config, rebuilt, small_variables, 0)
    result = evaluate_lib.evaluate_workdir(os.path.join(out, 'rebuilt'), record=False,
                                           say=lambda *a: None)
    row = {'fraction': fraction, **{k: v for k, v in result.items() if k.startswith('eval/')},
           'metric': result['metric'], 'heads_kept': int(keep.sum()),
           'heads_total': int(keep.size), 'params': heads_lib.param_count(small_variables),
           'heads_per_layer': rebuilt['heads_per_layer']}
    say(json.dumps(row))
    rows.append(row)
  if jax.process_index() == 0:
    workdir_lib.write_atomically(os.path.join(workdir, 'heads_curve.json'),
                                 json.dumps(rows, indent=2))
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mcj.prune_heads',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a trained BERT or ViT run')
  parser.add_argument('--fractions', default='0,0.25,0.5,0.75')
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--step', type=float, default=0.0)
  args = parser.parse_args(argv)
  try:
    fractions = [float(f) for f in args.fractions.split(',')]
    curve(args.workdir, fractions, batches=args.batches, step=args.step)
  except (ConfigError, ValueError) as e:
    print(f'mcj.prune_heads: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
