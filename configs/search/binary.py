"""A search of binary networks under a BOPs limit: ReActNet / Bi-Real-style blocks whose
kernel, width, groups, depth, downsampling precision and stem / classifier precision vary
(the `binary` space), scored by accuracy, BOPs and the binary model size.

Command (README's binary search):
  python -m mcj.search --config configs/search/binary.py --workdir /tmp/mcj/binary
then train the winner with distillation from a float teacher (e.g. the quickstart's):
  python -m mcj.train --config /tmp/mcj/binary/best/config.py --workdir /tmp/mcj/binary_kd \\
      --config.distill.teachers=/tmp/mcj/quickstart/teacher --config.total_epochs=60
Data: `digits`; each candidate trains 6 epochs (Adam 2e-3, cosine, no weight decay; Bop is
not used: latent weights train with Adam as ReActNet's recipe does).
Objectives: eval/accuracy (max), model_size_bytes (min); constraint bops <= `bops`
(default 3e7 for 8x8 inputs). Strategy: aging evolution (population 10, sample 3).
No peer searches binary networks; compare the winner with configs/digits/bnn.py.
Variants: `:runlocal` (3 candidates, a few steps).
"""
from mcj.core.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, candidates=30, bops=3e7, seed=0, runlocal=False)
  config = {
      'seed': arg.seed,
      'space': 'binary(variant="digits")',
      'strategy': 'evolution(population=10, sample=3)',
      'evaluators': ('complexity', 'train'),
      'objectives': ('eval/accuracy:max', 'model_size_bytes:min'),
      'constraints': {'bops': arg.bops},
      'budget': {'evaluations': arg.candidates},
      'train': {'seed': 0, 'batch_size': 64, 'total_epochs': 6.0, 'data': {'name': 'digits'},
                'optimizer': {'name': 'adam', 'lr': 2e-3, 'weight_decay': 0.0},
                'schedule': {'name': 'cosine'}, 'checkpoint_every_steps': 200},
  }
  if arg.runlocal:
    config.update(space='binary(variant="digits", width_choices=(0.25,), depth_choices=(1,))',
                  strategy='evolution(population=2, sample=2)', budget={'evaluations': 3})
    config['train'].update(total_epochs=None, total_steps=3, batch_size=16)
  return config
