"""Accuracy vs sparsity of a pruned ResNet-20 on scikit-learn's offline `digits`.

Commands:
  python -m mcj.train --config configs/digits/prune.py:method=gradual,sparsity=0.9 \\
      --workdir /tmp/mcj/digits_prune
  # the README table and plot (3 seeds, about 35 minutes): three methods over six
  # sparsities, the dense baseline, 2:4 and channel pruning
  python -m mcj.sweep --config configs/digits/prune.py --grid method=dense,n_m \\
      --grid method=gradual,one_shot,random sparsity=0.5,0.8,0.9,0.95,0.98,0.99 \\
      --grid method=channel sparsity=0.5 --seeds 0,1,2 \\
      --workdir /tmp/mcj/digits_prune_sweep --plot configs/digits/prune.png
  python -m mcj.summary --workdir /tmp/mcj/digits_prune   # per-layer sparsity
Data: `digits`, 1,437 train / 360 held-out test images (8x8 grey).
Hardware: any CPU; about a minute a run on 2 cores.
Model and recipe: `resnet20` (0.27M params), the quickstart teacher's recipe: SGD +
Nesterov, lr 0.1, 2-epoch warmup, cosine, weight decay 5e-4, 60 epochs at batch 128; the
first conv and the classifier stay dense (all methods).
Methods (`method=`), all with the same steps:
- dense: no pruning (sparsity 0).
- gradual: magnitude pruning on Zhu & Gupta's cubic schedule from 10 % to 60 % of
  training, masks updated every 20 steps, then fine-tuning at the final sparsity.
- one_shot: magnitude pruning once, half-way, then fine-tuning (Han et al. 2015, one round).
- random: random masks at initialisation (a static sparse network; the baseline).
- n_m: 2:4 semi-structured sparsity (50 %), one shot at 10 % of training.
- channel: L1-norm filter pruning (Li et al. 2017) at `sparsity` of each layer's output
  channels (default 0.5 here), one shot half-way, with the filters' BatchNorm.
Expected: see README ("Pruning on digits") for the measured table and plot.
Variants: `:student=binary` prunes the latent weights of the Bi-Real-style binary ResNet-20
of configs/digits/bnn.py (with its Adam recipe); `:teacher=DIR` distils from a trained run
while pruning (0.5 x CE + 0.5 x KD at T = 4, as configs/digits/distill.py), e.g.
  python -m mcj.train --config configs/digits/prune.py:student=binary,teacher=/tmp/mcj/digits_teacher,sparsity=0.5 \
      --workdir /tmp/mcj/digits_prune_binary_kd
`:runlocal` trains for a few steps only (a smoke test).
"""
from mcj.core.config import ConfigError, parse_arg

METHODS = {
    'dense': {},
    'gradual': {'algorithm': 'magnitude', 'schedule': 'gradual', 'start_fraction': 0.1,
                'end_fraction': 0.6, 'update_every_steps': 20},
    'one_shot': {'algorithm': 'magnitude', 'schedule': 'one_shot', 'start_fraction': 0.5},
    'random': {'algorithm': 'random', 'schedule': 'one_shot', 'start_fraction': 0.0},
    'n_m': {'algorithm': 'n_m', 'n': 2, 'm': 4, 'schedule': 'one_shot',
            'start_fraction': 0.1},
    'channel': {'algorithm': 'channel', 'schedule': 'one_shot', 'start_fraction': 0.5},
}


def get_config(arg=None):
  arg = parse_arg(arg, method='gradual', sparsity=-1.0, student='float', teacher='',
                  runlocal=False)
  if arg.method not in METHODS:
    raise ConfigError(f'method must be one of {"|".join(METHODS)}, got {arg.method!r}.')
  if arg.student not in ('float', 'binary'):
    raise ConfigError(f'student must be float or binary, got {arg.student!r}.')
  prune = dict(METHODS[arg.method])
  if prune and arg.method != 'n_m':
    prune['sparsity'] = arg.sparsity if arg.sparsity >= 0 else (
        0.5 if arg.method == 'channel' else 0.9)
  if arg.runlocal and 'update_every_steps' in prune:
    prune['update_every_steps'] = 1
  config = {
      'seed': 0,
      'batch_size': 128,
      'total_epochs': 2.0 if arg.runlocal else 60.0,
      'model': {'name': 'resnet20'},
      'data': {'name': 'digits'},
      'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'nesterov': True,
                    'weight_decay': 5e-4},
      'schedule': {'name': 'cosine', 'warmup_epochs': 2.0},
      'prune': prune,
      'log_every_steps': 10 if arg.runlocal else 100,
      'eval_every_steps': 0,
      'checkpoint_every_steps': 500,
  }
  if arg.student == 'binary':
    config['model'] = {'name': 'binary_resnet20', 'input_quantizer': 'approx_sign',
                       'kernel_quantizer': 'ste_sign', 'kernel_scale': 'xnor'}
    config['optimizer'] = {'name': 'adam', 'lr': 2e-3, 'weight_decay': 0.0}
  if arg.teacher:
    config['distill'] = {'teachers': ({'init_from': arg.teacher},), 'label_weight': 0.5,
                         'logit_loss': 'kd', 'logit_weight': 0.5, 'temperature': 4.0}
  return config
