"""Quickstart: a compression pipeline on scikit-learn's offline `digits`. A float ResNet-20
teacher is trained, then a binary ResNet-20 student is distilled from it; the run prints
both accuracies and the student's compression summary.

Command:
  python -m mcj.train --config configs/quickstart.py --workdir /tmp/mcj/quickstart
Data: `digits`, 1,437 train / 360 held-out test images (8x8 grey), embedded in scikit-learn.
Hardware: any CPU; about a minute and a half on 2 cores.
Stages (each in its own subfolder of the workdir; rerunning resumes the unfinished one):
1. `teacher`: ResNet-20 (He et al. 2016, option-A shortcuts; 0.27M params, float), SGD +
   Nesterov momentum, lr 0.1, cosine, weight decay 5e-4, 40 epochs.
2. `student`: the same network with Bi-Real Net's binarization (Liu et al. 2018): ApproxSign
   activations, sign(W) x mean|W| weights, real-valued shortcut around every binary conv;
   first conv and classifier float. Adam lr 2e-3, cosine, 60 epochs; loss 0.5 x label
   cross-entropy + 0.5 x Hinton KD (T = 4, T^2-scaled) from the frozen teacher, which runs
   in the same data-parallel step.
Expected: teacher about 0.98, binary student about 0.93-0.95 at 22x compression (README
gives measured figures).
Variants: `:runlocal` trains each stage for a few steps only (a smoke test).
"""
from mcj.core.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  epochs = (lambda n: 2.0) if arg.runlocal else float
  return {
      'seed': 0,
      'batch_size': 128,
      'data': {'name': 'digits'},
      'log_every_steps': 10 if arg.runlocal else 100,
      'checkpoint_every_steps': 500,
      'stages': (
          {'name': 'teacher',
           'total_epochs': epochs(40),
           'model': {'name': 'resnet20'},
           'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'nesterov': True,
                         'weight_decay': 5e-4},
           'schedule': {'name': 'cosine', 'warmup_epochs': 2.0}},
          {'name': 'student',
           'total_epochs': epochs(60),
           'model': {'name': 'binary_resnet20', 'input_quantizer': 'approx_sign',
                     'kernel_quantizer': 'ste_sign', 'kernel_scale': 'xnor'},
           'optimizer': {'name': 'adam', 'lr': 2e-3, 'weight_decay': 0.0},
           'schedule': {'name': 'cosine', 'warmup_epochs': 2.0},
           'distill': {'teachers': ({'init_from': 'teacher'},), 'label_weight': 0.5,
                       'logit_loss': 'kd', 'logit_weight': 0.5, 'temperature': 4.0}},
      ),
  }
