"""IR-Net's binary CIFAR-10 networks (Qin et al. 2020, "Forward and Backward Information
Retention for Accurate Binary Neural Networks"), the official htqin/IR-Net recipes.

Commands:
  python -m mcj.train --config configs/cifar10/bnn.py:model=binary_resnet20 \
      --workdir /tmp/mcj/c10_bnn_r20
  python -m mcj.train --config configs/cifar10/bnn.py:model=binary_vgg_small \
      --workdir /tmp/mcj/c10_bnn_vgg
  python -m mcj.train --config configs/cifar10/bnn.py:model=binary_resnet18_cifar \
      --workdir /tmp/mcj/c10_bnn_r18
Data: TFDS `cifar10` (50k train / 10k test), pad-4 random crop + flip, per-channel
normalisation. Prepare once: python -c "import tensorflow_datasets as tfds;
tfds.builder('cifar10').download_and_prepare()" (or set TFDS_DATA_DIR).
Hardware: one GPU: a few hours for ResNet-20 and VGG-Small, about half a day for ResNet-18.
Models (mcj/models/bnn/binary_resnet.py; float first conv and classifier, every other conv
binary, Hardtanh instead of ReLU, BatchNorm1d before the classifier):
- binary_resnet20: 16-32-64 ResNet-20 with a shortcut around every binary conv, option-A
  (parameter-free) downsampling shortcuts; 269,850 params, 267,264 binary.
- binary_vgg_small: 128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-FC; 4,660,106 params,
  4,571,136 binary.
- binary_resnet18_cifar: kuangliu's ResNet-18 (3x3 stem, float 1x1-conv shortcuts);
  11,174,986 params, 10,985,472 binary.
Quantizers: activations by the error-decay estimator `ede`, weights by `irnet_weight`
(per-filter balanced and standardised, sign, power-of-two scale); EDE's t grows
log-linearly from t_min to 10 over training (official Log_UP, set once per epoch there,
continuously here): t_min 1e-3 in the ResNet-20 trainer, 0.1 in the VGG-Small one.
Expected top-1 (IR-Net README, 1W/1A): ResNet-20 86.5, VGG-Small 90.4, ResNet-18 91.5;
ResNet-20 with 32-bit activations (`:float_activations`) 90.8.
Recipe (official trainer.py / main.py): SGD, momentum 0.9, weight decay 1e-4, batch 128,
cosine annealing to 0; ResNet-20: lr 0.1, 400 epochs; VGG-Small: lr 0.007, 300 epochs. The
repository has no trainer for ResNet-18; it takes the ResNet-20 recipe here. Torch's SGD
decays every param; mcj decays kernels only (BN scales and biases are not decayed).
Variants: `:float_activations` keeps activations 32-bit (IR-Net's 1W/32A); `:runlocal`
runs a few steps on synthetic CIFAR-shaped data.
"""
from mcj.core.config import ConfigError, parse_arg, runlocal_overrides

# Per model: (lr, epochs, EDE t_min) of the official IR-Net trainers.
RECIPES = {
    'binary_resnet20': (0.1, 400.0, 1e-3),
    'binary_vgg_small': (0.007, 300.0, 0.1),
    'binary_resnet18_cifar': (0.1, 400.0, 1e-3),
}


def get_config(arg=None):
  arg = parse_arg(arg, model='binary_resnet20', float_activations=False, runlocal=False)
  if arg.model not in RECIPES:
    raise ConfigError(f'bnn.py takes model={"|".join(RECIPES)}, got {arg.model!r}.')
  lr, epochs, t_min = RECIPES[arg.model]
  ede = f'(t_min={t_min}, t_max=10.0)'
  config = {
      'seed': 0,
      'batch_size': 128,
      'total_epochs': epochs,
      'model': {'name': arg.model,
                'input_quantizer': None if arg.float_activations else 'ede' + ede,
                'kernel_quantizer': 'irnet_weight' + ede},
      'data': {'name': 'cifar10'},
      'optimizer': {'name': 'sgd', 'lr': lr, 'momentum': 0.9, 'weight_decay': 1e-4},
      'schedule': {'name': 'cosine'},
      'log_every_steps': 100,
      'eval_every_steps': 2000,
      'checkpoint_every_steps': 2000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10, num_train_examples=64))
  return config
