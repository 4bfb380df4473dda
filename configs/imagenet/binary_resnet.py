"""XNOR-Net ResNet-18, BinaryResNetE18 and Real-to-Binary Net on ImageNet, each with its
reference recipe.

Commands (one host with 8 accelerators, or a TPU VM via launch/tpu_vm.sh):
  python -m mcj.train --config configs/imagenet/binary_resnet.py:model=binary_resnet_e18 \
      --workdir gs://BUCKET/mcj/in1k_resnet_e18 --config.data.data_dir=gs://BUCKET/tfds
  # Real-to-Binary: its four stages as one pipeline (<workdir>/teacher, fp, ban, bnn);
  # rerun the same command to resume whichever stage was interrupted
  python -m mcj.train --config configs/imagenet/binary_resnet.py:model=real_to_binary \
      --workdir gs://BUCKET/mcj/r2b --config.data.data_dir=gs://BUCKET/tfds
Data: TFDS `imagenet2012` (1.28M train / 50k validation), Inception crop + flip at 224,
resize-256 centre-crop eval. The archives must be in DATA_DIR/downloads/manual first.
Hardware: 8 GPUs or a TPU v3-8: one to two days per 100 epochs of these ResNet-18-sized nets.
Models (mcj/models/bnn/binary_resnet.py; float stem, shortcuts and classifier):
- xnor_resnet18 (Rastegari et al. 2016): 51.2 top-1 (paper); 11,689,640 params, 10,985,472
  binary, 4.03 MiB. XNOR-Net published no ResNet recipe or code; this uses larq-zoo's
  XNOR-Net (AlexNet) recipe (``training/basic_experiments.py``): Adam lr 1e-3, batch 1200,
  100 epochs, lr steps at epochs 19, 30, 44, 53, 66, 76, 86 (larq alternates x0.5 and x0.2,
  i.e. x0.1 every two steps; here x0.316 at each), L2 5e-7 on kernels (Keras' l2(5e-7),
  i.e. weight decay 1e-6 on the gradient), latent weights clipped to +-1 (WeightClip).
- binary_resnet_e18 (Bethge et al. 2019): 58.32 top-1 (larq-zoo); 11,689,640 params
  (11,699,368 with BN statistics, larq-zoo's figure), 4.03 MiB. larq-zoo's
  TrainBinaryResNetE18: Adam lr 4e-3 (eps 1e-8), batch 1024, 120 epochs, lr x0.3 at
  epochs 70, 90, 110; latent weights clipped to +-1.25 (larq's WeightClip).
- real_to_binary (Martinez et al. 2020): 65.01 top-1 (larq-zoo; 65.4 in the paper);
  11,986,920 params (11,995,624 with BN statistics, larq-zoo's figure), 10,985,472 binary,
  5.13 MiB without BN statistics (larq-zoo's "5.13 MB"; 5.16 with them). larq-zoo's
  ``training/multi_stage_experiments.py`` (TrainR2B), stage by stage: `teacher` a float
  ResNet-18, Adam lr 1e-3, batch 512, 100 epochs, 5 warmup epochs, cosine; `fp` the
  real-valued R2B network with tanh conv inputs and `ban` binary activations: Adam lr
  1e-3, batch 256, 75 epochs, 5 linear warmup epochs, lr x0.3 at epochs 40, 60, 70, L2 1e-5
  (weight decay 2e-5 on the gradient), loss = labels + 3 x output matching (KL at T=1) +
  30 x attention matching on the block outputs of the 4 stages (`fp` from `teacher`, `ban`
  from `fp`); `bnn` fully binary, initialised from `ban` and taught by it with output
  matching 0.8 and no attention term: Adam lr 2e-4, 10 warmup epochs then cosine decay
  (larq-zoo's variant of the paper's step schedule), no weight decay, latent weights
  clipped to +-1.
Variants: `:model=xnor_resnet18`; `:stage=fp|ban|bnn` (real_to_binary only) runs one stage
(with `teacher=DIR`, its teacher's workdir, and `--config.init_from` for bnn); `:batch=N`
scales the lr linearly; `:runlocal` runs a few steps on synthetic 32x32 data (the R2B
pipeline with a shallow ResNet-20 as the first teacher).
"""
from mcj.core.config import ConfigError, parse_arg, runlocal_overrides

XNOR_STEPS = (19.0, 30.0, 44.0, 53.0, 66.0, 76.0, 86.0)
# Real-to-Binary stages: the model options that make each stage, and its recipe.
R2B_STAGES = {
    'fp': {'input_quantizer': None, 'kernel_quantizer': None, 'conv_input_activation': 'tanh'},
    'ban': {'input_quantizer': 'ste_sign', 'kernel_quantizer': None},
    'bnn': {},
}
_R2B_STEP = dict(batch=256, epochs=75.0, optimizer={'name': 'adam', 'lr': 1e-3,
                                                    'weight_decay': 2e-5},
                 schedule={'name': 'step', 'warmup_epochs': 5.0,
                           'step_epochs': (40.0, 60.0, 70.0), 'step_factor': 0.3})
RECIPES = {
    'xnor_resnet18': dict(
        batch=1200, epochs=100.0, latent_clip=1.0,
        optimizer={'name': 'adam', 'lr': 1e-3, 'weight_decay': 1e-6},
        schedule={'name': 'step', 'step_epochs': XNOR_STEPS, 'step_factor': 0.1 ** 0.5}),
    'binary_resnet_e18': dict(
        batch=1024, epochs=120.0, latent_clip=1.25,
        optimizer={'name': 'adam', 'lr': 4e-3, 'eps': 1e-8},
        schedule={'name': 'step', 'step_epochs': (70.0, 90.0, 110.0), 'step_factor': 0.3}),
    'real_to_binary/fp': _R2B_STEP,
    'real_to_binary/ban': _R2B_STEP,
    'real_to_binary/bnn': dict(
        batch=256, epochs=75.0, latent_clip=1.0, optimizer={'name': 'adam', 'lr': 2e-4},
        schedule={'name': 'cosine', 'warmup_epochs': 10.0}),
    'real_to_binary/teacher': dict(
        batch=512, epochs=100.0, optimizer={'name': 'adam', 'lr': 1e-3},
        schedule={'name': 'cosine', 'warmup_epochs': 5.0}),
}
# Who teaches each R2B stage, and with which weights (larq-zoo's TrainR2B*).
R2B_TEACHING = {
    'fp': ('teacher', {'label_weight': 1.0, 'logit_loss': 'kd', 'temperature': 1.0,
                       'logit_weight': 3.0, 'feature_loss': 'real_to_binary',
                       'feature_weight': 30.0, 'feature_stages': 4, 'feature_blocks': True}),
    'ban': ('fp', {'label_weight': 1.0, 'logit_loss': 'kd', 'temperature': 1.0,
                   'logit_weight': 3.0, 'feature_loss': 'real_to_binary',
                   'feature_weight': 30.0, 'feature_stages': 4, 'feature_blocks': True}),
    'bnn': ('ban', {'label_weight': 1.0, 'logit_loss': 'kd', 'temperature': 1.0,
                    'logit_weight': 0.8}),
}


def _stage(model, stage, batch_arg, teacher):
  """One stage's keys: batch, epochs, model, optimizer, schedule, latent clip, teachers."""
  recipe = RECIPES[f'{model}/{stage}' if model == 'real_to_binary' else model]
  batch = batch_arg or recipe['batch']
  optimizer = dict(recipe['optimizer'])
  optimizer['lr'] *= batch / recipe['batch']
  out = {'batch_size': batch, 'total_epochs': recipe['epochs'],
         'optimizer': optimizer, 'schedule': recipe['schedule'],
         'binary': {'latent_clip': recipe.get('latent_clip', 0.0)}}
  if stage == 'teacher':
    out['model'] = {'name': 'resnet18'}
  else:
    out['model'] = {'name': model, **(R2B_STAGES[stage] if model == 'real_to_binary' else {})}
  if model == 'real_to_binary' and stage in R2B_TEACHING and teacher:
    out['distill'] = {'teachers': ({'init_from': teacher},), **R2B_TEACHING[stage][1]}
  return out


def get_config(arg=None):
  arg = parse_arg(arg, model='binary_resnet_e18', stage='', batch=0, teacher='',
                  runlocal=False)
  models = ('xnor_resnet18', 'binary_resnet_e18', 'real_to_binary')
  if arg.model not in models:
    raise ConfigError(f'binary_resnet.py takes model={"|".join(models)}, got {arg.model!r}.')
  if arg.stage and arg.stage not in R2B_STAGES:
    raise ConfigError(f'stage must be one of {"|".join(R2B_STAGES)}, got {arg.stage!r}.')
  if arg.model != 'real_to_binary' and arg.stage:
    raise ConfigError(f'stage applies to model=real_to_binary only, not {arg.model}.')
  common = {
      'seed': 0,
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 5000,
      'checkpoint_every_steps': 5000,
  }
  local = (runlocal_overrides(image_size=32, num_classes=10, num_train_examples=64)
           if arg.runlocal else {})
  if arg.model != 'real_to_binary' or arg.stage:
    config = {**common, **_stage(arg.model, arg.stage or 'bnn', arg.batch, arg.teacher)}
    return {**config, **local}
  stages = []
  for name in ('teacher', 'fp', 'ban', 'bnn'):
    stage = {'name': name, **_stage(arg.model, name, arg.batch,
                                    R2B_TEACHING.get(name, ('',))[0])}
    if name == 'bnn':
      stage['init_from'] = 'ban'
    if arg.runlocal:  # a few steps each, and a small first teacher
      for key in ('batch_size', 'total_epochs'):
        stage.pop(key)
      if name == 'teacher':
        stage['model'] = {'name': 'resnet20'}
    stages.append(stage)
  return {**common, **local, 'stages': tuple(stages)}
