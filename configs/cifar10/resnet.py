"""CIFAR ResNet-20/32/44/56/110 (option-A shortcut) on CIFAR-10, the recipe of He et al.

Command:
  python -m mcj.train --config configs/cifar10/resnet.py:depth=20 --workdir /tmp/mcj/c10_r20
Data: TFDS `cifar10` (50k train / 10k test), pad-4 random crop + flip, per-channel
normalisation. Prepare once: python -c "import tensorflow_datasets as tfds;
tfds.builder('cifar10').download_and_prepare()" (or set TFDS_DATA_DIR).
Hardware: one GPU, about an hour for depth 20.
Expected top-1 (paper Table 6, option A): ResNet-20 91.25, ResNet-32 92.49, ResNet-44
92.83, ResNet-56 93.03, ResNet-110 93.57 (best of 5; mean 93.39). akamaster's
pytorch_resnet_cifar10 reaches 91.73 for ResNet-20 (269,722 params).
Source: He et al. 2016, "Deep Residual Learning for Image Recognition", sec. 4.2: SGD,
momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k iterations,
64k iterations in all (about 164 epochs). For ResNet-110 the paper holds lr at 0.01 for
about 400 iterations; here a 400-step linear warmup stands in for it.
Variants: `:depth=56`; `:runlocal` runs a few steps on synthetic CIFAR-shaped data.
"""
from mcj.core.config import parse_arg, runlocal_overrides

ITERATIONS, STEP_ITERATIONS = 64_000, (32_000, 48_000)


def get_config(arg=None):
  arg = parse_arg(arg, depth=20, runlocal=False)
  steps_per_epoch = 50_000 / 128
  config = {
      'seed': 0,
      'batch_size': 128,
      'total_steps': ITERATIONS,
      'model': {'name': f'resnet{arg.depth}'},
      'data': {'name': 'cifar10'},
      'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 1e-4},
      'schedule': {'name': 'step', 'step_epochs': tuple(s / steps_per_epoch
                                                          for s in STEP_ITERATIONS),
                   'step_factor': 0.1,
                   'warmup_steps': 400 if arg.depth == 110 else 0},
      'log_every_steps': 100,
      'eval_every_steps': 2000,
      'checkpoint_every_steps': 2000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10, num_train_examples=50_000,
                                     batch_size=32, steps=4))
  return config
