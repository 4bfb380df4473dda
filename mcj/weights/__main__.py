"""python -m mcj.weights: a peer library's checkpoint file -> an mcj run workdir.

  python -m mcj.weights --from torchvision:resnet34 --file resnet34-b627a593.pth \\
      --workdir /tmp/mcj/resnet34_tv

The workdir (config.json + checkpoints/0) is what ``init_from``, ``distill.teachers`` and
``python -m mcj.summary --workdir`` take. ``--data`` names the dataset the model was
trained for (default imagenet2012 at 224: torchvision's normalisation is mcj's);
``--model.KEY=VALUE`` sets model options (a narrow model: ``--model.widths=[8,16,32,64]``),
``--data.KEY=VALUE`` data options. The file is read without torch (``formats.py``).

A Hugging Face BERT is its checkpoint folder (config.json, weights, vocab.txt) and a text
dataset, e.g. ``--from hf:bert --file bert-base-uncased/ --data glue/sst2``: config.json
sets the model's sizes, vocab.txt becomes the run's ``data.vocab_file``.
"""
import os
import argparse
import json
import sys

from mcj import data as data_lib
from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.nn import inspect
from mcj.train import schema
from mcj.weights import SOURCES, convert, formats


def _options(pairs) -> tuple[dict, dict]:
  """(model options, data options) of ``--model.KEY=VALUE`` / ``--data.KEY=VALUE``."""
  out = {'--model.': {}, '--data.': {}}
  for pair in pairs:
    key, sep, value = pair.partition('=')
    block = next((b for b in out if key.startswith(b)), None)
    if not sep or block is None:
      raise ConfigError(f'{pair}: options are --model.KEY=VALUE or --data.KEY=VALUE.')
    try:
      out[block][key[len(block):]] = json.loads(value)
    except json.JSONDecodeError:
      out[block][key[len(block):]] = value
  return out['--model.'], out['--data.']


def convert_file(source_name: str, path: str, workdir: str, *, data: str = 'imagenet2012',
                 image_size: int | None = 224, options: dict | None = None,
                 data_options: dict | None = None, say=print) -> dict:
  """Converts ``path`` (a checkpoint of ``source_name``: a file, or for Hugging Face its
  folder) into the run workdir ``workdir``; returns its config."""
  source = registry.get('weights_source', source_name)
  file = source.weights_in(path) if source.weights_in else path
  tensors = formats.read_checkpoint(file)
  data_block = {'name': data, **({} if source.text else {'image_size': image_size}),
                **(data_options or {})}
  vocab = source.vocab(path) if source.vocab else None
  if vocab:  # the run tokenizes with the checkpoint's own vocab, kept in the workdir
    data_block['vocab_file'] = os.path.join(os.path.abspath(workdir), 'vocab.txt')
  file_options = source.read_options(path) if source.read_options else {}
  config = schema.merge_config({'model': {'name': source.model, **dict(source.options),
                                          **file_options, **(options or {})},
                                'data': data_block})
  num_classes, shape = data_lib.model_input(config.data)
  file_classes = source.num_classes(tensors)
  if file_classes is not None and file_classes != num_classes:
    raise ConfigError(f'{path} classifies {file_classes} classes but --data {data} has '
                      f'{num_classes}; give the dataset the model was trained for.')
  block = dict(config.model)
  positions = block.get('max_position_embeddings')
  if source.text and positions and shape[0] > positions:
    raise ConfigError(f'--data {data} gives {shape[0]} tokens but {path} has '
                      f'max_position_embeddings {positions}: add --data.max_length={positions} '
                      '(or fewer).')
  model = get_model(block.pop('name'), num_classes=num_classes, **block)
  if file_classes is None and source.classifier:  # an encoder alone: a fresh classifier
    target = convert.initial_variables(model, shape)
  else:
    target = convert.abstract_variables(model, shape)
  variables = convert.fill(tensors, source.layout, target, file)
  if source.zero_is_plus_one:
    variables = convert.zero_as_plus_one(variables, inspect.binary_kernel_mask(model, shape))
  plain = config.to_dict()
  convert.write_workdir(workdir, plain, variables, say=say,
                        files={'vocab.txt': vocab} if vocab else None)
  return plain


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mcj.weights', description=__doc__.split(
      '\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--from', dest='source', required=True,
                      help='library:architecture, one of ' + ', '.join(SOURCES))
  parser.add_argument('--file', required=True,
                      help='the downloaded checkpoint file (Hugging Face: its folder)')
  parser.add_argument('--workdir', required=True, help='the mcj run workdir to write')
  parser.add_argument('--data', default='imagenet2012', help='the dataset it classifies')
  parser.add_argument('--image_size', type=int, default=224)
  args, rest = parser.parse_known_args(argv)
  try:
    options, data_options = _options(rest)
    convert_file(args.source, args.file, args.workdir, data=args.data,
                 image_size=args.image_size, options=options, data_options=data_options)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
