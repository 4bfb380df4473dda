"""python -m mcj.weights: a peer library's checkpoint file -> an mcj run workdir.

  python -m mcj.weights --from torchvision:resnet34 --file resnet34-b627a593.pth \\
      --workdir /tmp/mcj/resnet34_tv

The workdir (config.json + checkpoints/0) is what ``init_from``, ``distill.teachers`` and
``python -m mcj.summary --workdir`` take. ``--data`` names the dataset the model was
trained for (default imagenet2012 at 224: torchvision's normalisation is mcj's);
``--model.KEY=VALUE`` sets model options (a narrow model: ``--model.widths=[8,16,32,64]``).
The file is read without torch (``formats.py``).
"""
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


def _options(pairs) -> dict:
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition('=')
    if not sep or not key.startswith('--model.'):
      raise ConfigError(f'{pair}: model options are --model.KEY=VALUE.')
    try:
      out[key[len('--model.'):]] = json.loads(value)
    except json.JSONDecodeError:
      out[key[len('--model.'):]] = value
  return out


def convert_file(source_name: str, path: str, workdir: str, *, data: str = 'imagenet2012',
                 image_size: int = 224, options: dict | None = None, say=print) -> dict:
  """Converts ``path`` (a checkpoint of ``source_name``) into the run workdir ``workdir``;
  returns its config."""
  source = registry.get('weights_source', source_name)
  tensors = formats.read_checkpoint(path)
  data_block = {'name': data, 'image_size': image_size}
  config = schema.merge_config({'model': {'name': source.model, **dict(source.options),
                                          **(options or {})}, 'data': data_block})
  num_classes, shape = data_lib.model_input(config.data)
  file_classes = source.num_classes(tensors)
  if file_classes is not None and file_classes != num_classes:
    raise ConfigError(f'{path} classifies {file_classes} classes but --data {data} has '
                      f'{num_classes}; give the dataset the model was trained for.')
  block = dict(config.model)
  model = get_model(block.pop('name'), num_classes=num_classes, **block)
  variables = convert.fill(tensors, source.layout, convert.abstract_variables(model, shape),
                           path)
  if source.zero_is_plus_one:
    variables = convert.zero_as_plus_one(variables, inspect.binary_kernel_mask(model, shape))
  plain = config.to_dict()
  convert.write_workdir(workdir, plain, variables, say=say)
  return plain


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mcj.weights', description=__doc__.split(
      '\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--from', dest='source', required=True,
                      help='library:architecture, one of ' + ', '.join(SOURCES))
  parser.add_argument('--file', required=True, help='the downloaded checkpoint file')
  parser.add_argument('--workdir', required=True, help='the mcj run workdir to write')
  parser.add_argument('--data', default='imagenet2012', help='the dataset it classifies')
  parser.add_argument('--image_size', type=int, default=224)
  args, rest = parser.parse_known_args(argv)
  try:
    convert_file(args.source, args.file, args.workdir, data=args.data,
                 image_size=args.image_size, options=_options(rest))
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
