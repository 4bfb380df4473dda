"""ResNet-18/34/50 on ImageNet, the torchvision reference recipe.

Command (one host with 8 accelerators, or a TPU VM via launch/tpu_vm.sh):
  python -m mcj.train --config configs/imagenet/resnet.py:model=resnet50 \
      --workdir gs://BUCKET/mcj/in1k_r50 --config.data.data_dir=gs://BUCKET/tfds
Data: TFDS `imagenet2012` (1.28M train / 50k validation), Inception crop + flip at 224,
resize-256 centre-crop eval. The archives must be in DATA_DIR/downloads/manual first.
Hardware: 8 GPUs or a TPU v3-8: about a day for ResNet-50.
Expected top-1: ResNet-18 69.76, ResNet-34 73.31, ResNet-50 (v1.5) 76.13 (torchvision
weights' metadata). Params 11,689,512 / 21,797,672 / 25,557,032.
Source: torchvision references/classification: SGD lr 0.1 per 256 images, momentum 0.9,
weight decay 1e-4, 90 epochs, lr x0.1 every 30 epochs.
Variants: `:model=resnet18`; `:batch=1024` scales the lr linearly; `:runlocal` runs a
few steps on synthetic 64x64 data.
"""
from mcj.core.config import parse_arg, runlocal_overrides


def get_config(arg=None):
  arg = parse_arg(arg, model='resnet50', batch=256, runlocal=False)
  config = {
      'seed': 0,
      'batch_size': arg.batch,
      'total_epochs': 90.0,
      'model': {'name': arg.model},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'optimizer': {'name': 'sgd', 'lr': 0.1 * arg.batch / 256, 'momentum': 0.9,
                    'weight_decay': 1e-4},
      'schedule': {'name': 'step', 'step_epochs': (30.0, 60.0), 'step_factor': 0.1},
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=64, num_classes=1000,
                                     num_train_examples=1_281_167))
  return config
