"""Distillation on scikit-learn's offline `digits`: a ResNet-20 teacher teaches a
Bi-Real-style binary ResNet-20 or a compact float MobileNetV2.

Commands:
  # the whole pipeline: teacher stage, then the distilled student, in one workdir
  python -m mcj.train --config configs/digits/distill.py --workdir /tmp/mcj/digits_kd
  # the README table: one teacher, then students with and without KD over 5 seeds
  python -m mcj.train --config configs/digits/distill.py:stage=teacher \\
      --workdir /tmp/mcj/digits_teacher
  python -m mcj.sweep --config configs/digits/distill.py:teacher=/tmp/mcj/digits_teacher \\
      --grid student=binary,mobilenet kd=True,False --seeds 0,1,2,3,4 \\
      --workdir /tmp/mcj/digits_kd_sweep
Data: `digits`, 1,437 train / 360 held-out test images (8x8 grey).
Hardware: any CPU; one to two minutes a run on 2 cores.
Teacher: `resnet20` (0.27M params, float), the quickstart's recipe: SGD + Nesterov, lr 0.1,
cosine, weight decay 5e-4, 60 epochs.
Students (same steps with or without KD: 60 epochs at batch 128):
- `student=binary`: `binary_resnet20` with Bi-Real's quantizers (ApproxSign activations,
  sign x mean|W| weights), Adam lr 2e-3, as configs/digits/bnn.py.
- `student=mobilenet`: a compact float MobileNetV2 (width 0.5, stride-1 stem, five
  stages, 256-channel head; 120k params, 1.0M MACs vs the teacher's 269k, 2.5M), Adam lr
  2e-3.
Loss with `kd=True`: Hinton et al. 2015 KD at temperature 4 mixed with the label loss,
0.5 x CE + 0.5 x T^2 KL (`distill.label_weight`, `distill.logit_weight`); `kd=False`
trains on labels only. Other losses: `--config.distill.logit_loss=distribution|dist`,
`--config.distill.feature_loss=fitnet|at|real_to_binary|rkd`.
Expected: see README ("Distillation on digits") for the measured table.
Variants: `:stage=teacher` trains the teacher only; `:teacher=DIR` uses a trained teacher
(no teacher stage); `:runlocal` trains each stage for a few steps (a smoke test).
"""
from mcj.core.config import ConfigError, parse_arg

STUDENTS = {
    'binary': {'name': 'binary_resnet20', 'input_quantizer': 'approx_sign',
               'kernel_quantizer': 'ste_sign', 'kernel_scale': 'xnor'},
    # MobileNetV2 for 8x8 inputs: half width, stride-1 stem, the 160/320-channel stages
    # dropped, a 256-channel head: 120k params and 1.0M MACs (the teacher: 269k, 2.5M).
    'mobilenet': {'name': 'mobilenet_v2', 'width_multiplier': 0.5, 'stem_stride': 1,
                  'last_channel': 256, 'dropout_rate': 0.0,
                  'settings': ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 3, 2),
                               (6, 96, 2, 1))},
}


def teacher_stage(runlocal):
  return {
      'name': 'teacher',
      'total_epochs': 2.0 if runlocal else 60.0,
      'model': {'name': 'resnet20'},
      'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'nesterov': True,
                    'weight_decay': 5e-4},
      'schedule': {'name': 'cosine', 'warmup_epochs': 2.0},
  }


def student_stage(student, kd, teacher, runlocal):
  stage = {
      'name': 'student',
      'total_epochs': 2.0 if runlocal else 60.0,
      'model': dict(STUDENTS[student]),
      'optimizer': {'name': 'adam', 'lr': 2e-3, 'weight_decay': 0.0},
      'schedule': {'name': 'cosine', 'warmup_epochs': 2.0},
  }
  if kd:
    stage['distill'] = {'teachers': ({'init_from': teacher},), 'label_weight': 0.5,
                        'logit_loss': 'kd', 'logit_weight': 0.5, 'temperature': 4.0}
  return stage


def get_config(arg=None):
  arg = parse_arg(arg, student='binary', kd=True, teacher='', stage='', runlocal=False)
  if arg.student not in STUDENTS:
    raise ConfigError(f'student must be one of {"|".join(STUDENTS)}, got {arg.student!r}.')
  if arg.stage not in ('', 'teacher'):
    raise ConfigError(f'stage takes teacher (or nothing), got {arg.stage!r}.')
  config = {
      'seed': 0,
      'batch_size': 128,
      'data': {'name': 'digits'},
      'log_every_steps': 10 if arg.runlocal else 100,
      'checkpoint_every_steps': 500,
  }
  if arg.stage == 'teacher':
    stage = teacher_stage(arg.runlocal)
    del stage['name']
    return {**config, **stage}
  if arg.teacher or not arg.kd:
    stage = student_stage(arg.student, arg.kd, arg.teacher, arg.runlocal)
    del stage['name']
    return {**config, **stage}
  return {**config, 'model': {'name': 'resnet20'},
          'stages': (teacher_stage(arg.runlocal),
                     student_stage(arg.student, True, 'teacher', arg.runlocal))}
