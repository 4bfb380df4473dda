"""A tiny, fast config for trainer tests: a ResNet on `digits`, a few dozen steps.

``shallow`` uses one block per stage (ResNet-8): fewer ReLU kinks, so float rounding
differences between device counts do not grow chaotically over 50 steps.
"""
from mcj.core.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, steps=20, batch=32, ckpt=10, log=1, model='resnet20', lr=0.05,
                  shallow=False)
  model = {'name': arg.model}
  if arg.shallow:
    model['stage_sizes'] = (1, 1, 1)
  return {
      'seed': 0,
      'batch_size': arg.batch,
      'total_steps': arg.steps,
      'model': model,
      'data': {'name': 'digits'},
      'optimizer': {'name': 'sgd', 'lr': arg.lr, 'momentum': 0.9, 'weight_decay': 5e-4},
      'schedule': {'name': 'cosine', 'warmup_steps': 2},
      'log_every_steps': arg.log,
      'checkpoint_every_steps': arg.ckpt,
  }
