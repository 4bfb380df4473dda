"""BNext (Guo et al. 2022, "Join the High Accuracy Club on ImageNet with A Binary Neural
Network Ticket"): BNext-T/S/M/L with the official hpi-xnor/BNext recipe.

Command (one host with 8 accelerators, or a TPU VM via launch/tpu_vm.sh):
  python -m mcj.train --config configs/imagenet/bnext.py:model=bnext_tiny \
      --workdir gs://BUCKET/mcj/bnext_tiny --config.data.data_dir=gs://BUCKET/tfds
  # with consecutive teachers (trained mcj workdirs, weakest first), each teaching an equal
  # consecutive share of training:
  python -m mcj.train --config 'configs/imagenet/bnext.py:model=bnext_tiny,teachers=gs://B/r18+gs://B/r50' ...
Data: TFDS `imagenet2012` (1.28M train / 50k validation), Inception crop + flip at 224,
resize-256 centre-crop eval. The archives must be in DATA_DIR/downloads/manual first.
Hardware: 8 GPUs or a TPU v3-8: several days for BNext-T (512 epochs), much longer for L.
Expected top-1 (README / paper): BNext-T 72.4, S 76.1, M 78.3, L 80.57. Published BOPs
(1-bit MACs / 64): 0.077G / 0.172G / 0.317G / 0.819G; mcj counts 0.0753 / 0.169 / 0.314 /
0.815 and 30.9M / 68.6M / 134.5M / 326.5M params (tests/test_zoo_reactnet_bnext.py).
Source: official train_assistant_group_amp.py and src/script/*: AdamW lr 1e-3 at batch
512, 5 warmup epochs then cosine decay to 1e-7 over 512 epochs; latent binary weights
clamped to +-1.5 (`binary.latent_clip`); the weight binarizer's temperature falls by 0.9
per epoch (the `bnext_weight` quantizer follows training progress). The official optimizer
decays non-kernel params (BN, PReLU, biases, classifier) by 1e-3 and kernels by 1e-8; the
trainer's weight decay applies to kernels only, so this config uses 1e-8 there and none
elsewhere. The paper trains with knowledge distillation from a sequence of teachers
(assistant EfficientNets, then the main teacher: EfficientNet-B2 for T and S, B4 for M,
ConvNeXt-Tiny for L; a KL loss weighted by the knowledge complexity), RandAugment
(rand-m7-mstd0.5-inc1) and bicubic resizing. mcj's zoo has no EfficientNet or ConvNeXt,
so `teachers=A+B+...` takes any trained mcj workdirs (e.g. ResNet-18 then ResNet-50); each
teaches its share of training in turn (`start` / `end` in `distill.teachers`) with the
ReActNet distribution loss plus the label loss; the official knowledge-complexity weighting
is not reproduced. Without teachers the config trains on labels; expect lower accuracy
than published either way until RandAugment and the official teachers are available.
Variants: `:model=bnext_small|bnext_middle|bnext_large`; `:teachers=A+B`; `:batch=1024`
scales the lr linearly; `:runlocal` runs a few steps on synthetic 32x32 data (with two
random ResNet-20 teachers taking turns).
"""
from mcj.core.config import ConfigError, parse_arg, runlocal_overrides

SIZES = ('bnext_tiny', 'bnext_small', 'bnext_middle', 'bnext_large')


def get_config(arg=None):
  arg = parse_arg(arg, model='bnext_tiny', batch=512, teachers='', runlocal=False)
  if arg.model not in SIZES:
    raise ConfigError(f'bnext.py takes model={"|".join(SIZES)}, got {arg.model!r}.')
  config = {
      'seed': 0,
      'batch_size': arg.batch,
      'total_epochs': 512.0,
      'model': {'name': arg.model},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'optimizer': {'name': 'adamw', 'lr': 1e-3 * arg.batch / 512, 'b1': 0.9, 'b2': 0.999,
                    'weight_decay': 1e-8},
      'schedule': {'name': 'cosine', 'warmup_epochs': 5.0, 'end_factor': 1e-4},
      'binary': {'latent_clip': 1.5},
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10, num_train_examples=64))
  paths = [p for p in arg.teachers.split('+') if p]
  teachers = [{'init_from': p} for p in paths]
  if arg.runlocal and not teachers:
    teachers = [{'init_from': 'random', 'model': 'resnet20'}] * 2
  if teachers:
    n = len(teachers)
    config['distill'] = {
        'teachers': tuple({**t, 'start': i / n, 'end': (i + 1) / n}
                          for i, t in enumerate(teachers)),
        'label_weight': 1.0, 'logit_loss': 'distribution', 'logit_weight': 1.0}
  return config
