"""``python -m mcj.summary``: how small is a model (larq's summary for Flax).

  python -m mcj.summary --model birealnet18 [--num_classes N] [--image_size S] [--json]
  python -m mcj.summary --model bert_tiny [--seq_len L] [--json]   # token models: L tokens
  python -m mcj.summary --config configs/...py[:arg] [--json]
  python -m mcj.summary --workdir DIR [--json]    # a trained run: its sparsity too

The counting itself is ``mcj.analysis.summary`` (MACs per conv / dot op of the traced
forward pass, ``mcj.analysis.counting``); its docstring gives the conventions. ``--json``
prints ``summarize``'s dict: both ``model_size_bytes`` (params at their precision + BN
running statistics) and ``folded_model_size_bytes`` (BN folded + frozen weights, larq's
"Model size").

A model that takes token ids (``input_is_tokens``: BERT) is counted on one sequence of
``--seq_len`` tokens (default 128, BERT's usual fine-tuning length); its attention products
Q.K^T and A.V are counted with the rest, so they grow as seq_len^2.
"""
import argparse
import json
import os
import sys

import ml_collections

from mcj import data
from mcj.analysis.summary import format_table, summarize
from mcj.core import checkpoint
from mcj.core import config as config_lib
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.train import pipeline
from mcj.train.schema import merge_config

SEQ_LEN = 128  # tokens of a token model's sequence unless --seq_len says otherwise


def _trained_run(workdir: str):
  """(model name, model options, num_classes, input shape, params) of a run's workdir; for
  a pipeline, of its last stage."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConfigError(f'{workdir} has no config.json: give the workdir of an mcj run.')
  with open(path) as f:
    config = merge_config(json.load(f))
  if config.stages:
    _, workdir, last = pipeline.stage_configs(config, workdir)[-1]
    config = merge_config(last)
  kwargs = dict(config.model)
  name = kwargs.pop('name')
  num_classes, shape = data.model_input(config.data)
  params = checkpoint.load_variables(workdir)['params']
  return name, kwargs, num_classes, tuple(shape), params


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mcj.summary', description='How small is a model: params per bit width, memory, MACs.')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--model', help='registered model name')
  source.add_argument('--config', help='config file, optionally FILE:ARG')
  source.add_argument('--workdir', help='a trained run (or pipeline): its model and its '
                      'newest checkpoint, with per-layer sparsity')
  parser.add_argument('--num_classes', type=int, default=None,
                      help='default 1000, or the dataset of --config')
  parser.add_argument('--image_size', type=int, default=None,
                      help='default 224, or the dataset of --config')
  parser.add_argument('--channels', type=int, default=None, help='default 3')
  parser.add_argument('--seq_len', type=int, default=None,
                      help=f'tokens per sequence of a token model (BERT); default {SEQ_LEN}')
  parser.add_argument('--json', action='store_true',
                      help='print one JSON object instead of a table')
  args = parser.parse_args(argv)
  for flag in ('num_classes', 'image_size', 'channels', 'seq_len'):
    if getattr(args, flag) is not None and getattr(args, flag) < 1:
      parser.error(f'--{flag} must be at least 1, got {getattr(args, flag)}.')

  name, kwargs, shape, num_classes = args.model, {}, (224, 224, 3), 1000
  values = None
  if args.workdir:
    try:
      name, kwargs, num_classes, shape, values = _trained_run(args.workdir)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
  elif args.config:
    try:
      config = merge_config(config_lib.load_config(args.config))
      if config.stages:  # a pipeline: its final stage's model
        config = merge_config(pipeline.stage_configs(config, '.')[-1][2])
      kwargs = dict(config.model)
      name = kwargs.pop('name')
      num_classes, shape = data.model_input(ml_collections.ConfigDict(
          config.get('data', {'name': 'digits'})))
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
  if args.image_size is not None:
    shape = (args.image_size, args.image_size, shape[2])
  if args.channels is not None:
    shape = (*shape[:2], args.channels)
  if args.num_classes is not None:
    num_classes = args.num_classes
  try:
    model = get_model(name, num_classes, **kwargs)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  tokens = getattr(model, 'input_is_tokens', False)
  if tokens:
    if args.image_size is not None or args.channels is not None:
      parser.error(f'{name} takes token ids: give --seq_len, not --image_size / --channels.')
    if args.seq_len is not None or len(shape) != 1:
      shape = (args.seq_len or SEQ_LEN,)
  elif args.seq_len is not None:
    parser.error(f'--seq_len is for token models (BERT); {name} takes images (--image_size).')

  summary = summarize(model, shape, params=values)
  if args.json:
    print(json.dumps({'model': name, 'input_shape': list(shape),
                      'num_classes': num_classes, **summary}))
  else:
    size = f'{shape[0]} tokens' if tokens else 'x'.join(map(str, shape))
    print(f'{name}: input {size}, {num_classes} classes')
    print(format_table(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
