"""Quickstart: ResNet-20 (option-A shortcut) on scikit-learn's offline `digits`.

Command:
  python -m mcj.train --config configs/quickstart.py --workdir /tmp/mcj/quickstart
Data: `digits`, 1,437 train / 360 held-out test images (8x8 grey), embedded in scikit-learn.
Hardware: any CPU; about a minute on 2 cores.
Expected: test accuracy about 0.98-0.99 (at least 0.97).
Source: He et al. 2016, "Deep Residual Learning for Image Recognition", CIFAR ResNet-20
(sec. 4.2), trained with SGD + Nesterov momentum and a cosine schedule.
Variants: `:runlocal` trains for a few steps only (a smoke test).
"""
from mcj.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  return {
      'seed': 0,
      'batch_size': 128,
      'total_epochs': 2.0 if arg.runlocal else 60.0,
      'model': {'name': 'resnet20'},
      'data': {'name': 'digits'},
      'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'nesterov': True,
                    'weight_decay': 5e-4},
      'schedule': {'name': 'cosine', 'warmup_epochs': 2.0},
      'label_smoothing': 0.0,
      'log_every_steps': 10 if arg.runlocal else 100,
      'eval_every_steps': 0 if arg.runlocal else 300,
      'checkpoint_every_steps': 500,
  }
