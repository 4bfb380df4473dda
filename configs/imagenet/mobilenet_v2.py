"""MobileNetV2 1.0 on ImageNet, the torchvision reference recipe.

Command:
  python -m mcj.train --config configs/imagenet/mobilenet_v2.py \
      --workdir gs://BUCKET/mcj/in1k_mbv2 --config.data.data_dir=gs://BUCKET/tfds
Data: TFDS `imagenet2012`, Inception crop + flip at 224, centre-crop eval.
Hardware: 8 GPUs or a TPU v3-8, about two days (300 epochs).
Expected top-1: 71.88 (torchvision weights' metadata); 3,504,872 params, 300.8M MACs.
Source: torchvision references/classification: SGD lr 0.045 at batch 256 (8 x 32),
momentum 0.9, weight decay 4e-5, 300 epochs, lr x0.98 after every epoch; Sandler et al.
2018 report 72.0.
Variants: `:width=0.5` (width multiplier); `:runlocal` runs a few steps on synthetic data.
"""
from mcj.core.config import parse_arg, runlocal_overrides

EPOCHS = 300


def get_config(arg=None):
  arg = parse_arg(arg, width=1.0, runlocal=False)
  config = {
      'seed': 0,
      'batch_size': 256,
      'total_epochs': float(EPOCHS),
      'model': {'name': 'mobilenet_v2', 'width_multiplier': arg.width},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'optimizer': {'name': 'sgd', 'lr': 0.045, 'momentum': 0.9, 'weight_decay': 4e-5},
      'schedule': {'name': 'step', 'step_epochs': tuple(float(e) for e in range(1, EPOCHS)),
                   'step_factor': 0.98},
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=64, num_classes=1000,
                                     num_train_examples=1_281_167))
  return config
