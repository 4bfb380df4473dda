"""ResNet-18 for CIFAR (3x3 stem, no max-pool) on CIFAR-10, the kuangliu/pytorch-cifar recipe.

Command:
  python -m mcj.train --config configs/cifar10/resnet18.py --workdir /tmp/mcj/c10_r18
Data: TFDS `cifar10`, pad-4 random crop + flip, per-channel normalisation.
Hardware: one GPU, a few hours (200 epochs).
Expected top-1: 93.02 (kuangliu/pytorch-cifar README, ResNet18); 11,173,962 params.
Source: kuangliu/pytorch-cifar main.py: SGD lr 0.1, momentum 0.9, weight decay 5e-4,
batch 128, cosine annealing over 200 epochs.
Variants: `:runlocal` runs a few steps on synthetic CIFAR-shaped data.
"""
from mcj.core.config import parse_arg, runlocal_overrides


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  config = {
      'seed': 0,
      'batch_size': 128,
      'total_epochs': 200.0,
      'model': {'name': 'resnet18_cifar'},
      'data': {'name': 'cifar10'},
      'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4},
      'schedule': {'name': 'cosine'},
      'log_every_steps': 100,
      'eval_every_steps': 2000,
      'checkpoint_every_steps': 2000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10, num_train_examples=50_000))
  return config
