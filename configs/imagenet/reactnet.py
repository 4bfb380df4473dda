"""ReActNet (Liu et al. 2020) as one pipeline: a float ResNet-34 teacher, then the official
two steps (liuzechun/ReActNet), each distilled from the teacher; for ReActNet-A
(MobileNetV1-based, `reactnet_a`) and its Bi-Real ResNet-18 (`reactnet_resnet18`).

Commands (one host with 8 accelerators, or a TPU VM via launch/tpu_vm.sh):
  # teacher, step 1 and step 2 in one workdir (<workdir>/teacher, /step1, /step2); rerun
  # the same command to resume whichever stage was interrupted
  python -m mcj.train --config configs/imagenet/reactnet.py:model=reactnet_a \
      --workdir gs://BUCKET/mcj/reactnet_a --config.data.data_dir=gs://BUCKET/tfds
  # with a ResNet-34 trained earlier (configs/imagenet/resnet.py:model=resnet34):
  python -m mcj.train --config configs/imagenet/reactnet.py:teacher=gs://BUCKET/mcj/r34 ...
  # one step alone: step=1, or step=2 with --config.init_from=<step 1 workdir>
Data: TFDS `imagenet2012` (1.28M train / 50k validation), Inception crop + flip at 224,
resize-256 centre-crop eval. The archives must be in DATA_DIR/downloads/manual first.
Hardware: 8 GPUs or a TPU v3-8: about two days per step for ReActNet-A.
Expected top-1: ReActNet-A 69.4 (paper abstract; 69.5 in the README), ReActNet ResNet-18
65.9 (paper). ReActNet-A: 29,343,592 params, 28,253,184 of them binary, 7.98 MB (larq
convention), 4.82e9 BOPs + 0.12e8 FLOPs = 0.87e8 OPs.
Source: official run.sh/train.py of both steps: Adam, lr decayed linearly to 0 over 128
epochs, lr 1.25e-3 at batch 256 (MobileNet) or 2.5e-3 at batch 512 (ResNet), weight decay
1e-5 on conv kernels in step 1 and 0 in step 2. Step 1 trains binary activations with real
weights; step 2 binarises the weights too (sign x mean|W|), initialised from step 1. The
loss is distillation only: the distributional loss (cross-entropy to the soft outputs of
a real-valued ResNet-34 teacher, `distill.logit_loss='distribution'`), no label term. The
official teacher is torchvision's pretrained ResNet-34 (73.3); here it is the `teacher`
stage, the torchvision recipe of configs/imagenet/resnet.py. The official augmentation
also adds PCA lighting noise, not done here.
Variants: `:model=reactnet_resnet18`; `:teacher=DIR` skips the teacher stage; `:step=1|2`
runs one step (needs `teacher=DIR`); `:batch=512` scales the lr linearly; `:runlocal` runs
every stage for a few steps on synthetic 32x32 data with a ResNet-20 teacher.
"""
import os

from mcj.core.config import ConfigError, load_config, parse_arg, runlocal_overrides

# Per model: (lr, batch) of the official 128-epoch run.sh.
RECIPES = {'reactnet_a': (1.25e-3, 256), 'reactnet_resnet18': (2.5e-3, 512)}
# What each step quantizes; both steps build the same param tree.
STEPS = {
    1: {'input_quantizer': 'approx_sign', 'kernel_quantizer': None, 'kernel_scale': 'none'},
    2: {'input_quantizer': 'approx_sign', 'kernel_quantizer': 'ste_sign', 'kernel_scale': 'xnor'},
}


def step_stage(model, step, lr, teacher):
  return {
      'name': f'step{step}',
      'model': {'name': model, **STEPS[step]},
      'optimizer': {'name': 'adam', 'lr': lr, 'b1': 0.9, 'b2': 0.999,
                    'weight_decay': 1e-5 if step == 1 else 0.0},
      'init_from': 'step1' if step == 2 else '',
      'distill': {'teachers': ({'init_from': teacher},), 'label_weight': 0.0,
                  'logit_loss': 'distribution', 'logit_weight': 1.0},
  }


def get_config(arg=None):
  arg = parse_arg(arg, model='reactnet_a', step=0, batch=0, teacher='', runlocal=False)
  if arg.model not in RECIPES:
    raise ConfigError(f'reactnet.py takes model={"|".join(RECIPES)}, got {arg.model!r}.')
  if arg.step not in (0, 1, 2):
    raise ConfigError(f'reactnet.py takes step=1 or step=2 (or 0: the pipeline), got {arg.step}.')
  if arg.step and not arg.teacher and not arg.runlocal:
    raise ConfigError('reactnet.py:step=N needs teacher=DIR (a trained ResNet-34 workdir).')
  base_lr, base_batch = RECIPES[arg.model]
  batch = arg.batch or base_batch
  lr = base_lr * batch / base_batch
  config = {
      'seed': 0,
      'batch_size': batch,
      'total_epochs': 128.0,
      'model': {'name': arg.model, **STEPS[arg.step or 1]},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'schedule': {'name': 'linear', 'end_factor': 0.0},
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10, num_train_examples=64))
  teacher = arg.teacher or 'teacher'
  if arg.step:
    stage = step_stage(arg.model, arg.step, lr, teacher)
    if arg.runlocal and not arg.teacher:
      stage['distill']['teachers'] = ({'init_from': 'random', 'model': 'resnet20'},)
    del stage['name'], stage['init_from']
    return {**config, **stage}
  stages = [step_stage(arg.model, 1, lr, teacher), step_stage(arg.model, 2, lr, teacher)]
  if not arg.teacher:
    here = os.path.dirname(os.path.abspath(__file__))
    resnet = load_config(os.path.join(here, 'resnet.py:model=resnet34,batch=256')).to_dict()
    keep = ('optimizer', 'schedule') if arg.runlocal else (
        'batch_size', 'total_epochs', 'model', 'optimizer', 'schedule')
    teacher_stage = {'name': 'teacher', **{k: resnet[k] for k in keep}}
    if arg.runlocal:  # a small teacher keeps the smoke test quick
      teacher_stage['model'] = {'name': 'resnet20'}
    stages.insert(0, teacher_stage)
  return {**config, 'stages': tuple(stages)}
