"""ReActNet (Liu et al. 2020): the two-step recipe of the official liuzechun/ReActNet, for
ReActNet-A (MobileNetV1-based, `reactnet_a`) and its Bi-Real ResNet-18 (`reactnet_resnet18`).

Commands (one host with 8 accelerators, or a TPU VM via launch/tpu_vm.sh):
  # step 1: binary activations, real-valued weights
  python -m mcj.train --config configs/imagenet/reactnet.py:model=reactnet_a,step=1 \
      --workdir gs://BUCKET/mcj/reactnet_a_step1 --config.data.data_dir=gs://BUCKET/tfds
  # step 2: binary activations and weights, starting from step 1's params and BN statistics
  python -m mcj.train --config configs/imagenet/reactnet.py:model=reactnet_a,step=2 \
      --workdir gs://BUCKET/mcj/reactnet_a_step2 --config.data.data_dir=gs://BUCKET/tfds \
      --config.init_from=gs://BUCKET/mcj/reactnet_a_step1
Data: TFDS `imagenet2012` (1.28M train / 50k validation), Inception crop + flip at 224,
resize-256 centre-crop eval. The archives must be in DATA_DIR/downloads/manual first.
Hardware: 8 GPUs or a TPU v3-8: about two days per step for ReActNet-A.
Expected top-1: ReActNet-A 69.4 (paper abstract; 69.5 in the README), ReActNet ResNet-18
65.9 (paper). ReActNet-A: 29,343,592 params, 28,253,184 of them binary, 7.98 MB (larq
convention), 4.82e9 BOPs + 0.12e8 FLOPs = 0.87e8 OPs.
Source: official run.sh/train.py of both steps: Adam, lr decayed linearly to 0 over 128
epochs, lr 1.25e-3 at batch 256 (MobileNet) or 2.5e-3 at batch 512 (ResNet), weight decay
1e-5 on conv kernels in step 1 and 0 in step 2. Step 1 trains binary activations with real
weights; step 2 binarises the weights too (sign x mean|W|), initialised from step 1.
The paper's loss is distillation only: KL divergence to the soft outputs of a
real-valued ResNet-34 teacher (its "distributional loss"), no hard-label term. Knowledge
distillation is not in the trainer yet, so this config trains on labels with label
smoothing 0.1 (the official train.py's smoothing, used there without a teacher); expect
lower accuracy than published until a teacher is added. The official augmentation also
adds PCA lighting noise, not done here.
Variants: `:step=2`; `:model=reactnet_resnet18`; `:batch=512` scales the lr linearly;
`:runlocal` runs a few steps on synthetic 32x32 data.
"""
from mcj.config import ConfigError, parse_arg, runlocal_overrides

# Per model: (lr, batch) of the official 128-epoch run.sh.
RECIPES = {'reactnet_a': (1.25e-3, 256), 'reactnet_resnet18': (2.5e-3, 512)}
# What each step quantizes; both steps build the same param tree.
STEPS = {
    1: {'input_quantizer': 'approx_sign', 'kernel_quantizer': None, 'kernel_scale': 'none'},
    2: {'input_quantizer': 'approx_sign', 'kernel_quantizer': 'ste_sign', 'kernel_scale': 'xnor'},
}


def get_config(arg=None):
  arg = parse_arg(arg, model='reactnet_a', step=1, batch=0, runlocal=False)
  if arg.model not in RECIPES:
    raise ConfigError(f'reactnet.py takes model={"|".join(RECIPES)}, got {arg.model!r}.')
  if arg.step not in STEPS:
    raise ConfigError(f'reactnet.py takes step=1 or step=2, got {arg.step}.')
  base_lr, base_batch = RECIPES[arg.model]
  batch = arg.batch or base_batch
  config = {
      'seed': 0,
      'batch_size': batch,
      'total_epochs': 128.0,
      'model': {'name': arg.model, **STEPS[arg.step]},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'optimizer': {'name': 'adam', 'lr': base_lr * batch / base_batch, 'b1': 0.9, 'b2': 0.999,
                    'weight_decay': 1e-5 if arg.step == 1 else 0.0},
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
