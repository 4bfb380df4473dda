"""Per-layer parameter and MAC counts of a model, as a table or JSON.

  python -m mcj.summary --model resnet18 [--num_classes N] [--image_size S] [--json]
  python -m mcj.summary --config configs/...py[:arg] [--json]

Shapes come from ``jax.eval_shape`` (nothing is materialised) and every module
call is seen through ``nn.intercept_methods``. A layer is a module that owns
params directly (Conv, Dense, BatchNorm, ...). MACs are per example: conv =
output elements x (Cin / groups) x kh x kw, dense = in x out x positions; BN,
activations, pooling and bias adds count zero. Per-layer records are plain dicts
so that more columns (e.g. per-precision counts) can be added by
``summarize`` and listed in ``COLUMNS``.
"""
import argparse
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _layer_macs(module: nn.Module, params: dict, out_shape) -> int:
  """MACs of one call of a Conv / Dense layer (0 for other layers)."""
  if not isinstance(module, (nn.Conv, nn.Dense)) or 'kernel' not in params:
    return 0
  # Both kernels end in (..., inputs per group, outputs): each output element
  # costs prod(kernel.shape[:-1]) multiply-adds.
  return math.prod(out_shape) * math.prod(params['kernel'].shape[:-1])


def summarize(model: nn.Module, input_shape, **call_kwargs) -> dict[str, Any]:
  """Counts params and MACs of ``model`` on one example of ``input_shape``.

  Args:
    model: a Flax module called as ``model(x, train=False, **call_kwargs)``.
    input_shape: per-example input shape, e.g. (224, 224, 3).

  Returns:
    ``{'params': int, 'macs': int, 'layers': [dict]}``; each layer dict has
    ``name`` (module path), ``type``, ``output_shape`` (per example),
    ``params`` and ``macs``.
  """
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      calls.append((context.module, out))
    return out

  def init():
    with nn.intercept_methods(interceptor):
      x = jnp.zeros((1, *input_shape), jnp.float32)
      return model.init(jax.random.key(0), x, train=False, **call_kwargs)

  variables = jax.eval_shape(init)
  params = variables.get('params', {})
  layers, seen = [], set()
  for module, out in calls:
    own = params
    for part in module.path:
      own = own.get(part, {}) if isinstance(own, Mapping) else {}
    own = {k: v for k, v in own.items() if not isinstance(v, Mapping)}
    if not own or not hasattr(out, 'shape'):
      continue  # Containers, and layers without params (none add MACs here).
    out_shape = tuple(out.shape[1:])
    first = module.path not in seen  # Shared layers count their params once.
    seen.add(module.path)
    layers.append({
        'name': '/'.join(module.path),
        'type': type(module).__name__,
        'output_shape': out_shape,
        'params': sum(v.size for v in own.values()) if first else 0,
        'macs': _layer_macs(module, own, out_shape),
    })
  return {
      'params': sum(x.size for x in jax.tree.leaves(params)),
      'macs': sum(layer['macs'] for layer in layers),
      'layers': layers,
  }


# (header, layer key, formatter); extend with more columns as needed.
COLUMNS = [
    ('Layer', 'name', str),
    ('Type', 'type', str),
    ('Output shape', 'output_shape', lambda s: 'x'.join(map(str, s))),
    ('Params', 'params', '{:,}'.format),
    ('MACs', 'macs', '{:,}'.format),
]


def format_table(summary: dict[str, Any], columns=COLUMNS) -> str:
  """One row per layer and a footer with params, MACs and float32 size."""
  rows = [[fmt(layer[key]) for _, key, fmt in columns]
          for layer in summary['layers']]
  headers = [h for h, _, _ in columns]
  widths = [max([len(h)] + [len(r[i]) for r in rows])
            for i, h in enumerate(headers)]
  numeric = [i >= 3 for i in range(len(headers))]

  def line(cells):
    return '  '.join(c.rjust(w) if num else c.ljust(w)
                     for c, w, num in zip(cells, widths, numeric)).rstrip()

  rule = '-' * len(line(headers))
  mb = summary['params'] * 4 / 2**20
  return '\n'.join([line(headers), rule, *map(line, rows), rule,
                    f"Total params: {summary['params']:,}",
                    f"Total MACs:   {summary['macs']:,}",
                    f'Params size (float32): {mb:.2f} MB'])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mcj.summary', description=__doc__.split('\n')[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--model', help='registered model name')
  source.add_argument('--config', help='config file, optionally FILE:ARG')
  parser.add_argument('--num_classes', type=int, default=None,
                      help='default 1000, or the dataset of --config')
  parser.add_argument('--image_size', type=int, default=None,
                      help='default 224, or the dataset of --config')
  parser.add_argument('--channels', type=int, default=None, help='default 3')
  parser.add_argument('--json', action='store_true',
                      help='print one JSON object instead of a table')
  args = parser.parse_args(argv)

  from mcj.models import get_model  # pylint: disable=g-import-not-at-top
  name, kwargs, shape, num_classes = args.model, {}, (224, 224, 3), 1000
  if args.config:
    from mcj import config as config_lib  # pylint: disable=g-import-not-at-top
    from mcj import data  # pylint: disable=g-import-not-at-top
    try:
      config = config_lib.load_config(args.config)
      kwargs = dict(config.model)
      name = kwargs.pop('name')
      num_classes, shape = data.model_input(config_lib.ml_collections.ConfigDict(
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

  summary = summarize(model, shape)
  if args.json:
    print(json.dumps({'model': name, 'input_shape': list(shape),
                      'num_classes': num_classes, **summary}))
  else:
    print(f'{name}: input {"x".join(map(str, shape))}, '
          f'{num_classes} classes')
    print(format_table(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
