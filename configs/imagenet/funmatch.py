"""FunMatch, "Knowledge distillation: A good teacher is patient and consistent" (Beyer et
al. CVPR 2022): function matching with a consistent teacher on ImageNet.

Command (a TPU VM via launch/tpu_vm.sh; batch 4096):
  python -m mcj.train --config configs/imagenet/funmatch.py:teacher=gs://BUCKET/mcj/r152 \
      --workdir gs://BUCKET/mcj/funmatch_r50 --config.data.data_dir=gs://BUCKET/tfds
Data: TFDS `imagenet2012`, Inception crop + flip at 224, resize-256 centre-crop eval.
Hardware: big_vision reports 300 epochs in about 15 h on a v3-32; 1200 epochs is 4x that.
Expected top-1 (paper / big_vision README): BiT-R152x2 teacher 83.0 -> BiT-R50x1 student
82.8 at 224px (the longest schedule); shorter schedules end lower. mcj has no BiT
(GroupNorm + weight standardisation) nets, so the student is torchvision's `resnet50` and
the teacher any trained mcj workdir (`teacher=DIR`, its model read from its config.json).
Source: big_vision configs/proj/distill/bit_i1k.py: teacher and student see the same
Inception crop and the same mixup (`mixup_alpha` 1, inside the step); loss = KL to the
teacher at temperature 1, no label term; Adam (b1 0.9, b2 0.999), lr 0.03 at batch 4096,
5000 warmup steps then cosine, global-norm clipping at 1, 1200 epochs; big_vision's
decoupled weight decay 3e-4 follows the schedule but not the lr, which is AdamW's
weight_decay 0.01 here (AdamW multiplies it by the scheduled lr of 0.03).
Without `teacher=DIR` the run stops with an error that asks for it.
Variants: `:epochs=N`; `:batch=N` scales the lr linearly; `:runlocal` runs a few steps on
synthetic 32x32 data, a ResNet-18 student and a random ResNet-20 teacher.
"""
from mcj.core.config import parse_arg, runlocal_overrides


def get_config(arg=None):
  arg = parse_arg(arg, teacher='', epochs=1200.0, batch=4096, runlocal=False)
  config = {
      'seed': 0,
      'batch_size': arg.batch,
      'total_epochs': arg.epochs,
      'model': {'name': 'resnet50'},
      'data': {'name': 'imagenet2012', 'image_size': 224},
      'optimizer': {'name': 'adamw', 'lr': 0.03 * arg.batch / 4096, 'b1': 0.9, 'b2': 0.999,
                    'weight_decay': 0.01, 'grad_clip_norm': 1.0},
      'schedule': {'name': 'cosine', 'warmup_steps': 5000},
      'mixup_alpha': 1.0,
      'distill': {'teachers': ({'init_from': arg.teacher},), 'label_weight': 0.0,
                  'logit_loss': 'kd', 'temperature': 1.0, 'logit_weight': 1.0},
      'compute_dtype': 'bfloat16',
      'log_every_steps': 100,
      'eval_every_steps': 10000,
      'checkpoint_every_steps': 5000,
  }
  if arg.runlocal:
    config.update(runlocal_overrides(image_size=32, num_classes=10, num_train_examples=64))
    config['schedule'] = {'name': 'cosine', 'warmup_steps': 1}
    config['model'] = {'name': 'resnet18'}  # a smaller student keeps the smoke test quick
    if not arg.teacher:
      config['distill']['teachers'] = ({'init_from': 'random', 'model': 'resnet20'},)
  return config
