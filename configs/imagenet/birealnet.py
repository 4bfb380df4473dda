"""Bi-Real Net 18 / 34 (Liu et al. 2018) on ImageNet, the official PyTorch recipe
(liuzechun/Bi-Real-net ``pytorch_implementation/BiReal18_34``).

Command (one host with 8 accelerators, or a TPU VM via launch/tpu_vm.sh):
  python -m mcj.train --config configs/imagenet/birealnet.py:model=birealnet18 \
      --workdir gs://BUCKET/mcj/in1k_birealnet18 --config.data.data_dir=gs://BUCKET/tfds
Data: TFDS `imagenet2012` (1.28M train / 50k validation), Inception crop + flip at 224,
resize-256 centre-crop eval. The archives must be in DATA_DIR/downloads/manual first.
Hardware: 8 GPUs or a TPU v3-8: about three days for 256 epochs of Bi-Real 18.
Model (mcj/models/bnn/binary_resnet.py): a real-valued identity shortcut around every binary
3x3 conv, ApproxSign activations, sign(W) x per-channel mean|W| weights, float stem and
classifier, avg-pool + float 1x1 conv + BN downsampling shortcuts. birealnet18: 11,689,512
params, 10,985,472 binary, 4.03 MiB (larq-zoo's counts and "4.03 MB"); birealnet34:
21,797,672 params, 21,086,208 binary, 5.29 MiB.
Expected top-1: Bi-Real 18 56.4, Bi-Real 34 62.2 (paper / README); larq-zoo's BiRealNet
reaches 57.47 with its own recipe (Adam 5e-3, batch 512, 300 epochs, linear decay).
Source: the official PyTorch train.py and README: Adam, lr 1e-3 at batch 512 (scale it
linearly with the batch), decayed linearly to 0 over 256 epochs, no weight decay, label
smoothing 0.1, trained from scratch. Its augmentation adds PCA lighting noise, not done
here. The paper's original Caffe recipe (SGD fine-tuning from a clip-activation real
network, then BN re-training) is not reproduced.
Variants: `:model=birealnet34`; `:batch=1024` scales the lr linearly; `:runlocal` runs a
few steps on synthetic 32x32 data. ReActNet's Bi-Real ResNet-18 (`reactnet_resnet18`) has
its own two-step recipe in configs/imagenet/reactnet.py.
"""
from mcj.core.config import ConfigError, parse_arg, runlocal_overrides

MODELS = ('birealnet18', 'birealnet34')
BASE_LR, BASE_BATCH = 1e-3, 512


def get_config(arg=None):
  arg = parse_arg(arg, model='birealnet18', batch=BASE_BATCH, runlocal=False)
  if arg.model not in MODELS:
    raise ConfigError(f'birealnet.py takes model={"|".join(MODELS)}, got {arg.model!r}.')
  config = {
      'seed': 0,
      'batch_size': arg.batch,
      'total_epochs': 256.0,
      'model': {'name': arg.model},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'optimizer': {'name': 'adam', 'lr': BASE_LR * arg.batch / BASE_BATCH,
                    'weight_decay': 0.0},
      'schedule': {'name': 'linear', 'end_factor': 0.0},
      'label_smoothing': 0.1,
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10, num_train_examples=64))
  return config
