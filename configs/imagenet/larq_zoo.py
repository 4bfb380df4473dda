"""The larq-zoo binary networks on ImageNet: BinaryDenseNet, MeliusNet, QuickNet.

Command (one host with 8 accelerators, or a TPU VM via launch/tpu_vm.sh):
  python -m mcj.train --config configs/imagenet/larq_zoo.py:model=quicknet \
      --workdir gs://BUCKET/mcj/in1k_quicknet --config.data.data_dir=gs://BUCKET/tfds
Models: binary_densenet28 / 37 / 37_dilated / 45, meliusnet22 / 29 / 42 / 59,
quicknet_small / quicknet / quicknet_large.
Data: TFDS `imagenet2012` (1.28M train / 50k validation) at 224; the archives must be in
DATA_DIR/downloads/manual first. mcj's ImageNet augmentation (Inception crop + flip).
Hardware: 8 GPUs or a TPU v3-8 (the recipes run 80 to 600 epochs).
Expected top-1 (larq-zoo 2.4 docstrings; MeliusNet from the BMXNet-v2 results page):
BinaryDenseNet 28 / 37 / 37-dilated / 45: 60.91 / 62.89 / 64.34 / 64.59; MeliusNet 22 / 29 /
42 / 59: 63.6 / 65.8 / 69.2 / 70.7 (larq-zoo's MeliusNet22: 62.4); QuickNet small / normal /
large: 59.4 / 63.3 / 66.9.
Recipes, plain cross-entropy, no weight decay or label smoothing in any of them:
- BinaryDenseNet (larq-zoo ``training/basic_experiments.py``): Adam (eps 1e-8), 28: lr 4e-3,
  batch 256, 120 epochs, lr x0.1 at epochs 100 and 110; 37: batch 192; 37-dilated: batch
  256, 80 epochs, steps at 60 and 70; 45: lr 8e-3, batch 384, 125 epochs, steps at 80, 100.
- MeliusNet (larq-zoo has no MeliusNet recipe; BMXNet-v2 wiki commands): RAdam lr 2e-3 at
  batch 64 (22, 29: 2 GPUs x 32; 42: 4 x 16), 59: Adam lr 3e-3 at batch 256 (8 x 32),
  cosine decay over 120 epochs. The trainer has no RAdam: Adam stands in for it.
- QuickNet (larq-zoo ``training/sota_experiments.py``): batch 2048, 600 epochs, cosine decay
  after 5 warmup epochs; binary latent weights train with Adam (lr 1e-2, `binary.optimizer`)
  and the rest with SGD (momentum 0.9, lr 0.1), as larq-zoo's CaseOptimizer.
larq's ``WeightClip`` kernel constraint on binary kernels (1.3 for BinaryDenseNet and
MeliusNet, 1.25 for QuickNet) is ``binary.latent_clip``.
Variants: `:model=meliusnet22`; `:batch=512` changes the batch and scales the lr linearly;
`:runlocal` runs a few steps on synthetic 32x32 data.
"""
from mcj.core.config import ConfigError, parse_arg, runlocal_overrides


def _densenet(batch, epochs, lr, steps):
  return dict(batch=batch, epochs=epochs, clip=1.3,
              optimizer={'name': 'adam', 'lr': lr, 'eps': 1e-8},
              schedule={'name': 'step', 'step_epochs': steps, 'step_factor': 0.1})


def _meliusnet(batch, lr):
  return dict(batch=batch, epochs=120.0, clip=1.3, optimizer={'name': 'adam', 'lr': lr},
              schedule={'name': 'cosine'})


_QUICKNET = dict(batch=2048, epochs=600.0, clip=1.25,
                 optimizer={'name': 'sgd', 'lr': 0.1, 'momentum': 0.9},
                 binary={'optimizer': 'adam', 'lr': 1e-2},
                 schedule={'name': 'cosine', 'warmup_epochs': 5.0})

RECIPES = {
    'binary_densenet28': _densenet(256, 120.0, 4e-3, (100.0, 110.0)),
    'binary_densenet37': _densenet(192, 120.0, 4e-3, (100.0, 110.0)),
    'binary_densenet37_dilated': _densenet(256, 80.0, 4e-3, (60.0, 70.0)),
    'binary_densenet45': _densenet(384, 125.0, 8e-3, (80.0, 100.0)),
    'meliusnet22': _meliusnet(64, 2e-3),
    'meliusnet29': _meliusnet(64, 2e-3),
    'meliusnet42': _meliusnet(64, 2e-3),
    'meliusnet59': _meliusnet(256, 3e-3),
    'quicknet_small': _QUICKNET,
    'quicknet': _QUICKNET,
    'quicknet_large': _QUICKNET,
}


def get_config(arg=None):
  arg = parse_arg(arg, model='quicknet', batch=0, runlocal=False)
  if arg.model not in RECIPES:
    raise ConfigError(f'larq_zoo.py has no recipe for {arg.model!r}. '
                      f'Available: {", ".join(RECIPES)}.')
  recipe = RECIPES[arg.model]
  batch = arg.batch or recipe['batch']
  scale = batch / recipe['batch']
  optimizer = dict(recipe['optimizer'], lr=recipe['optimizer']['lr'] * scale)
  binary = {'latent_clip': recipe['clip']}
  if 'binary' in recipe:
    binary.update(recipe['binary'], lr=recipe['binary']['lr'] * scale)
  config = {
      'seed': 0,
      'batch_size': batch,
      'total_epochs': recipe['epochs'],
      'model': {'name': arg.model},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'optimizer': optimizer,
      'schedule': dict(recipe['schedule']),
      'binary': binary,
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10, num_train_examples=64))
  return config
