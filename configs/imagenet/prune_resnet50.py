"""Gradual magnitude pruning of ResNet-50 on ImageNet (Zhu & Gupta 2017, as benchmarked by
Gale et al. 2019, "The State of Sparsity in Deep Neural Networks").

Command (one host with 8 accelerators, or a TPU VM via launch/tpu_vm.sh):
  python -m mcj.train --config configs/imagenet/prune_resnet50.py:sparsity=0.8 \\
      --workdir gs://BUCKET/mcj/in1k_r50_s80 --config.data.data_dir=gs://BUCKET/tfds
  python -m mcj.summary --workdir gs://BUCKET/mcj/in1k_r50_s80   # per-layer sparsity
Data: TFDS `imagenet2012`, as configs/imagenet/resnet.py.
Hardware: 8 GPUs or a TPU v3-8: about a day (the dense run's cost; masks add little).
Expected top-1 (magnitude pruning, ResNet-50, as reported in RigL, Evci et al. 2020,
Table 2, from Gale et al.): 80 % sparsity 75.6, 90 % sparsity 73.9; dense 76.1 here
(torchvision recipe, configs/imagenet/resnet.py).
Recipe: the dense torchvision recipe (SGD lr 0.1 per 256 images, momentum 0.9, weight decay
1e-4, 90 epochs, step decay at 30 and 60) with pruning from scratch: uniform per-layer
sparsity of every conv and dense kernel except the first conv and the classifier, the
cubic schedule from 10 % to 60 % of training (epochs 9 to 54), masks updated every 1000
steps. These fractions are this config's, not the paper's exact steps.
Variants: `:sparsity=0.9`, `:distribution=erk` (Evci et al. 2020's layer-wise
sparsities), `:batch=1024` scales the lr linearly; `:runlocal` runs a few steps on
synthetic 32x32 data.
"""
from mcj.core.config import ConfigError, parse_arg, runlocal_overrides


def get_config(arg=None):
  arg = parse_arg(arg, sparsity=0.8, distribution='uniform', batch=256, runlocal=False)
  if arg.distribution not in ('uniform', 'erk'):
    raise ConfigError(f'distribution must be uniform or erk, got {arg.distribution!r}.')
  config = {
      'seed': 0,
      'batch_size': arg.batch,
      'total_epochs': 90.0,
      'model': {'name': 'resnet50'},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'optimizer': {'name': 'sgd', 'lr': 0.1 * arg.batch / 256, 'momentum': 0.9,
                    'weight_decay': 1e-4},
      'schedule': {'name': 'step', 'step_epochs': (30.0, 60.0), 'step_factor': 0.1},
      'prune': {'algorithm': 'magnitude', 'sparsity': arg.sparsity,
                'distribution': arg.distribution, 'schedule': 'gradual',
                'start_fraction': 0.1, 'end_fraction': 0.6, 'update_every_steps': 1000},
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=1000,
                                     num_train_examples=1_281_167))
    # One prune event (a mask over 23M weights costs seconds of sorting on a CPU).
    config['prune'] = {**config['prune'], 'schedule': 'one_shot', 'start_fraction': 0.5}
  return config
