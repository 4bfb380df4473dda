"""Train-step throughput of the real trainer on synthetic data.

  python -m mcj.bench --model resnet50 --image_size 224 --batch_size 256 \
      --compute_dtype bfloat16 --steps 60 [--max_batch]

Builds the real trainer's experiment and data-parallel train step in-process
(``mcj.train.trainer.build``, ``init_state``, ``exp_steps``) on ``synthetic`` data and
reports the images/s of the last third of the steps (compilation and warm-up excluded;
each timed step waits for its result). ``--max_batch``
doubles the batch from ``--batch_size`` until it no longer fits, and reports each size.
Prints one JSON object per measured batch size.

Token models (BERT) run on synthetic token ids of ``--seq_len`` tokens; ``--bits 8|1``
makes a transformer 8-bit or binary (``mcj.models.transformers.precision``), so float and
binary are measured side by side:

  python -m mcj.bench --model bert_base --seq_len 128 --bits 1 --batch_size 64 --max_batch
  python -m mcj.bench --model vit_base --image_size 224 --bits 1 --batch_size 64 --max_batch

``--teacher NAME`` measures distillation: the student alone, the distillation step (a
frozen, randomly initialised ``NAME`` in the same data-parallel step, Hinton KD) and the
teacher's forward pass alone, and reports the step time the teacher adds next to its
forward time:

  python -m mcj.bench --model birealnet18 --teacher resnet34 --image_size 224 \
      --batch_size 256 --compute_dtype bfloat16
"""
import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mcj.core import parallel
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.models.transformers import precision
from mcj.train import trainer
from mcj.train.schema import merge_config


def measure(model, batch_size, image_size, num_classes, compute_dtype, steps,
            optimizer='sgd', model_options=None, teacher=None, seq_len=None) -> dict:
  """img/s (examples/s) over the last third of ``steps`` train steps (after compile and
  warm-up); ``seq_len``: token ids of that length instead of images."""
  log_every = max(steps // 3, 1)
  config = {
      'batch_size': batch_size, 'total_steps': log_every * 3,
      'model': {'name': model, **(model_options or {})},
      'data': {'name': 'synthetic', 'image_size': image_size, 'num_classes': num_classes,
               'num_eval_examples': batch_size, 'max_length': seq_len},
      'optimizer': {'name': optimizer},
      'compute_dtype': compute_dtype, 'log_every_steps': log_every,
      'checkpoint_every_steps': 0,
  }
  if teacher:
    config['distill'] = {'teachers': ({'init_from': 'random', 'model': teacher},),
                         'logit_loss': 'kd'}
  exp = trainer.build(merge_config(config), say=lambda *a: print(*a, file=sys.stderr))
  state = trainer.init_state(exp)
  p_train_step, _ = trainer.exp_steps(exp)
  batches = exp.dataset.train_batches(0, batch_size)
  device_batches = [parallel.shard_batch(exp.mesh, next(batches)) for _ in range(2)]
  teachers = exp.teacher_variables
  for i in range(2 * log_every):  # compile and warm up
    state, metrics = p_train_step(state, device_batches[i % 2], teachers)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(log_every):
    state, metrics = p_train_step(state, device_batches[i % 2], teachers)
  jax.block_until_ready(metrics)
  img_per_sec = batch_size * log_every / (time.perf_counter() - start)
  shape = {'seq_len': seq_len} if seq_len else {'image_size': image_size}
  return {'model': model, **shape, 'model_options': model_options or {},
          'batch_size': batch_size,
          'compute_dtype': compute_dtype, 'device': jax.devices()[0].device_kind,
          'devices': jax.device_count(), 'img_per_sec': round(img_per_sec, 1),
          'img_per_sec_per_device': round(img_per_sec / jax.device_count(), 1),
          'steps_timed': log_every}


def measure_forward(model, batch_size, image_size, num_classes, compute_dtype, steps) -> dict:
  """img/s of ``model``'s eval-mode forward pass, data-parallel over every device."""
  module = get_model(model, num_classes=num_classes, dtype=jnp.dtype(compute_dtype))
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch_size)
  channels = 3
  images = jax.device_put(np.zeros((batch_size, image_size, image_size, channels), np.float32),
                          jax.sharding.NamedSharding(mesh, parallel.BATCH))
  variables = jax.jit(lambda x: module.init(jax.random.key(0), x[:1], train=False),
                      out_shardings=parallel.replicated(mesh))(images)
  forward = parallel.data_parallel(lambda v, x: module.apply(v, x, train=False), mesh,
                                   in_specs=(parallel.REPLICATED, parallel.BATCH),
                                   out_specs=parallel.BATCH)
  forward(variables, images).block_until_ready()  # compile
  timed = max(steps // 3, 1)
  start = time.perf_counter()
  for _ in range(timed):
    out = forward(variables, images)
  out.block_until_ready()
  return {'img_per_sec': round(batch_size * timed / (time.perf_counter() - start), 1)}


def measure_distillation(model, teacher, batch_size, image_size, num_classes, compute_dtype,
                         steps, optimizer='sgd') -> dict:
  """Student alone, distillation step and teacher forward: what the teacher costs."""
  args = (batch_size, image_size, num_classes, compute_dtype, steps)
  alone = measure(model, *args, optimizer=optimizer)['img_per_sec']
  both = measure(model, *args, optimizer=optimizer, teacher=teacher)['img_per_sec']
  forward = measure_forward(teacher, *args)['img_per_sec']
  ms = lambda img_per_sec: 1000 * batch_size / img_per_sec
  return {'model': model, 'teacher': teacher, 'image_size': image_size,
          'batch_size': batch_size, 'compute_dtype': compute_dtype,
          'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
          'student_img_per_sec': alone, 'distill_img_per_sec': both,
          'teacher_forward_img_per_sec': forward,
          'student_ms_per_step': round(ms(alone), 2), 'distill_ms_per_step': round(ms(both), 2),
          'overhead_ms_per_step': round(ms(both) - ms(alone), 2),
          'teacher_forward_ms_per_step': round(ms(forward), 2)}


def _out_of_memory(e: Exception) -> bool:
  """Device memory (XLA's RESOURCE_EXHAUSTED) or host memory (numpy's MemoryError)."""
  return (isinstance(e, MemoryError) or 'RESOURCE_EXHAUSTED' in str(e)
          or 'Out of memory' in str(e))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mcj.bench', description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--compute_dtype', default='bfloat16', choices=('float32', 'bfloat16'))
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--optimizer', default='sgd')
  parser.add_argument('--max_batch', action='store_true',
                      help='double the batch until it does not fit; report each size')
  parser.add_argument('--teacher', default='',
                      help='a model name: compare the student alone with distillation from it')
  parser.add_argument('--seq_len', type=int, default=None,
                      help='token models: synthetic token ids of this length')
  parser.add_argument('--bits', type=int, default=32, choices=sorted(precision.QUANTIZED),
                      help='transformers: 8-bit or binary (models/transformers/precision.py)')
  args = parser.parse_args(argv)
  for flag in ('batch_size', 'steps', 'image_size', 'num_classes'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag} must be at least 1, got {getattr(args, flag)}.')
  batch = args.batch_size
  try:
    if args.teacher:
      print(json.dumps(measure_distillation(
          args.model, args.teacher, batch, args.image_size, args.num_classes,
          args.compute_dtype, args.steps, args.optimizer)), flush=True)
      return 0
    while True:
      try:
        result = measure(args.model, batch, args.image_size, args.num_classes,
                         args.compute_dtype, args.steps, args.optimizer,
                         model_options=precision.options(args.bits) or None,
                         seq_len=args.seq_len)
      except Exception as e:  # pylint: disable=broad-except
        if not _out_of_memory(e):
          raise
        if args.max_batch and batch > args.batch_size:
          print(json.dumps({'batch_size': batch, 'fits': False}), flush=True)
          return 0
        print(f'mcj.bench: error: batch {batch} does not fit in memory '
              f'({type(e).__name__}): use a smaller --batch_size.', file=sys.stderr)
        return 1
      print(json.dumps(result), flush=True)
      if not args.max_batch:
        return 0
      batch *= 2
  except ConfigError as e:
    print(f'mcj.bench: error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
