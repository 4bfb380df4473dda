"""Train-step throughput of the real trainer on synthetic data.

  python -m mcj.bench --model resnet50 --image_size 224 --batch_size 256 \
      --compute_dtype bfloat16 --steps 60 [--max_batch]

Runs ``mcj.train.train_and_evaluate`` on ``synthetic`` data in a temporary workdir and
reports the images/s of the last third of the steps (compilation excluded). ``--max_batch``
doubles the batch from ``--batch_size`` until it no longer fits, and reports each size.
Prints one JSON object per measured batch size.
"""
import argparse
import json
import os
import sys
import tempfile

import jax

from mcj.config import ConfigError
from mcj.train import train_and_evaluate


def measure(model, batch_size, image_size, num_classes, compute_dtype, steps,
            optimizer='sgd', model_options=None) -> dict:
  """img/s over the last third of ``steps`` train steps (after compile and warm-up)."""
  log_every = max(steps // 3, 1)
  config = {
      'batch_size': batch_size, 'total_steps': log_every * 3,
      'model': {'name': model, **(model_options or {})},
      'data': {'name': 'synthetic', 'image_size': image_size, 'num_classes': num_classes,
               'num_eval_examples': batch_size},
      'optimizer': {'name': optimizer},
      'compute_dtype': compute_dtype, 'log_every_steps': log_every,
      'checkpoint_every_steps': 0,
  }
  with tempfile.TemporaryDirectory() as workdir:
    train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      last = [json.loads(l) for l in f if 'img_per_sec' in l][-1]
  return {'model': model, 'image_size': image_size, 'batch_size': batch_size,
          'compute_dtype': compute_dtype, 'device': jax.devices()[0].device_kind,
          'devices': jax.device_count(), 'img_per_sec': round(last['img_per_sec'], 1),
          'img_per_sec_per_device': round(last['img_per_sec_per_device'], 1),
          'steps_timed': log_every}


def _out_of_memory(e: Exception) -> bool:
  return 'RESOURCE_EXHAUSTED' in str(e) or 'Out of memory' in str(e)


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
  args = parser.parse_args(argv)
  batch = args.batch_size
  try:
    while True:
      try:
        result = measure(args.model, batch, args.image_size, args.num_classes,
                         args.compute_dtype, args.steps, args.optimizer)
      except Exception as e:  # pylint: disable=broad-except
        if args.max_batch and _out_of_memory(e):
          print(json.dumps({'batch_size': batch, 'fits': False}), flush=True)
          return 0
        raise
      print(json.dumps(result), flush=True)
      if not args.max_batch:
        return 0
      batch *= 2
  except ConfigError as e:
    print(f'mcj.bench: error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
