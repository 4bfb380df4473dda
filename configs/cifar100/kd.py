"""The CIFAR-100 distillation benchmark of CRD / RepDistiller (Tian et al. ICLR 2020):
a teacher ResNet and a smaller student ResNet, with KD, FitNet, AT, RKD or DIST, as one
pipeline (teacher stage, then the student).

Command:
  python -m mcj.train --config configs/cifar100/kd.py:teacher=resnet56,student=resnet20,method=kd \
      --workdir /tmp/mcj/c100_kd_r56_r20
Data: TFDS `cifar100` (50k train / 10k test), pad-4 random crop + flip. Prepare once:
python -c "import tensorflow_datasets as tfds; tfds.builder('cifar100').download_and_prepare()".
Hardware: one GPU, a few hours per stage (240 epochs).
Expected top-1 (RepDistiller README): resnet56 -> resnet20: teacher 72.34, student alone
69.06, KD 70.66; resnet110 -> resnet32: 74.31, 71.14, KD 73.08. RepDistiller's CIFAR
ResNets use a 1x1-conv projection shortcut; mcj's are He et al.'s option A (parameter-free),
so expect small differences.
Source: RepDistiller train_teacher.py / train_student.py: SGD, momentum 0.9, weight decay
5e-4, batch 64, lr 0.05 (both stages), x0.1 at epochs 150, 180, 210, 240 epochs; KD at
T = 4 with 0.1 x CE + 0.9 x KD (`-r 0.1 -a 0.9`); the feature methods keep CE at 1 and add
their loss with RepDistiller's weights: FitNet 100 (`-b 100`, on the deepest shared
stage), AT 1000 x the sum over stages of mean squared attention differences (mcj's
attention_transfer with its beta of 1e3, weight 1), RKD 1 (distance 25 / angle 50 inside). `method=dist`: DIST with T 4, beta = gamma = 2, plus
CE (the DIST paper's CIFAR-100 setting).
Variants: `:teacher=resnet110,student=resnet32`; `:method=kd|fitnet|at|rkd|dist|none`
(`none`: the student alone, same steps); `:runlocal` runs each stage a few steps on
synthetic CIFAR-shaped data.
"""
from mcj.core.config import ConfigError, parse_arg, runlocal_overrides

METHODS = {
    'none': None,
    'kd': {'label_weight': 0.1, 'logit_loss': 'kd', 'temperature': 4.0, 'logit_weight': 0.9},
    'fitnet': {'label_weight': 1.0, 'logit_loss': '', 'feature_loss': 'fitnet',
               'feature_weight': 100.0, 'feature_stages': 1},
    'at': {'label_weight': 1.0, 'logit_loss': '', 'feature_loss': 'at', 'feature_weight': 1.0,
           'feature_stages': 3},
    'rkd': {'label_weight': 1.0, 'logit_loss': '', 'feature_loss': 'rkd',
            'feature_weight': 1.0},
    'dist': {'label_weight': 1.0, 'logit_loss': 'dist', 'temperature': 4.0,
             'dist_beta': 2.0, 'dist_gamma': 2.0, 'logit_weight': 1.0},
}


def get_config(arg=None):
  arg = parse_arg(arg, teacher='resnet56', student='resnet20', method='kd', runlocal=False)
  if arg.method not in METHODS:
    raise ConfigError(f'method must be one of {"|".join(METHODS)}, got {arg.method!r}.')
  epochs = 240.0
  config = {
      'seed': 0,
      'batch_size': 64,
      'total_epochs': epochs,
      'data': {'name': 'cifar100'},
      'optimizer': {'name': 'sgd', 'lr': 0.05, 'momentum': 0.9, 'weight_decay': 5e-4},
      'schedule': {'name': 'step', 'step_epochs': (150.0, 180.0, 210.0), 'step_factor': 0.1},
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=100, num_train_examples=64))
  student = {'name': 'student', 'model': {'name': arg.student}}
  if METHODS[arg.method]:
    student['distill'] = {'teachers': ({'init_from': 'teacher'},), **METHODS[arg.method]}
  return {**config, 'stages': ({'name': 'teacher', 'model': {'name': arg.teacher}}, student)}
