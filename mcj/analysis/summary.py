"""How small is a model: per-layer precision, params per bit width, memory and MACs (larq's
``summary`` for Flax), as a table or JSON.

``summarize(model, input_shape, params=None)`` returns the counts; ``format_table`` and
``format_totals`` print them (``python -m mcj.summary`` is the command line).

Shapes come from ``jax.eval_shape`` (nothing is materialised) and every module call is seen
through ``nn.intercept_methods``. A layer is a module that owns variables directly (Conv,
Dense, QuantConv, BatchNorm, ...). Conventions (as larq; see REFERENCE counting rules):
- params: the ``params`` collection (BatchNorm scale and bias in, running statistics out);
  a quantized layer's latent kernel counts at its kernel quantizer's precision (1 bit for
  sign functions), every other param at 32 bits.
- MACs per example: conv = output elements x (Cin / groups) x kh x kw, dense = in x out x
  positions; BN, activations, pooling and bias adds count zero. A MAC's precision is the
  larger of its input's and its kernel's precision.
- model size: params at their precision plus BatchNorm running statistics at 32 bits (what
  inference needs; larq's "Model size"); float-32 size counts everything at 32 bits;
  compression ratio = float-32 size / model size.
- BOPs: MACs whose both operands are quantized, weighted by bits_in x bits_kernel (for 1-bit
  x 1-bit layers exactly their MACs); FLOPs: MACs with a 32-bit operand; OPs = BOPs / 64 +
  FLOPs (Bi-Real Net, Real-to-Binary, ReActNet).
- with trained params (``params=``, ``--workdir``): a layer's ``sparsity`` is the fraction
  of zeros in its kernel; ``nonzero_params`` counts non-zero params; ``nonzero_macs`` =
  MACs x kernel density (each kernel weight takes part in the same number of MACs);
  ``nonzero_model_size_bytes`` stores only non-zero params (indices not counted, as the
  pruning literature's effective size). Totals: ``sparsity`` over all conv and dense
  kernels.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mcj.core import tree as tree_lib
from mcj.nn import inspect
from mcj.quant import quantizers

FULL = 32  # bits of an unquantized value


def _precisions(module) -> tuple[int, int]:
  """(input precision, kernel precision) of a layer; 32 for unquantized ones."""
  if inspect.is_quant_layer(module):
    return (quantizers.precision_of(module.input_q()),
            quantizers.precision_of(module.kernel_q()))
  return FULL, FULL


def summarize(model: nn.Module, input_shape, params=None, **call_kwargs) -> dict[str, Any]:
  """Counts params, bits, memory and MACs of ``model`` on one example of ``input_shape``.

  Args:
    model: a Flax module called as ``model(x, train=False, **call_kwargs)``.
    input_shape: per-example input shape, e.g. (224, 224, 3).
    params: trained values of the ``params`` collection (optional): adds the sparsity
      keys (``sparsity``, ``nonzero_params``, ``nonzero_macs``,
      ``nonzero_model_size_bytes``; per layer ``sparsity``, ``nonzero_params``,
      ``nonzero_macs``).

  Returns:
    Totals ``params``, ``binary_params``, ``params_by_bits`` ({bits: count}),
    ``model_size_bytes``, ``float32_size_bytes``, ``compression_ratio``, ``macs``,
    ``macs_by_precision``, ``bops``, ``flops``, ``ops``, ``binarized_macs_ratio``, and
    ``layers``: one dict per layer with ``name`` (module path), ``type``,
    ``input_precision``, ``output_shape`` (per example), ``params``, ``params_by_bits``,
    ``memory_bytes``, ``macs`` and ``mac_precision``.
  """
  variables, calls = inspect.trace_layers(model, input_shape, **call_kwargs)
  values = params
  params = variables.get('params', {})
  stats = variables.get('batch_stats', {})
  layers, seen = [], set()
  for module, _, out in calls:
    own = tree_lib.own_params(params, module.path)
    own_stats = tree_lib.own_params(stats, module.path)
    if not (own or own_stats) or not hasattr(out, 'shape'):
      continue  # Containers, and layers without variables (none add MACs here).
    first = module.path not in seen  # Shared layers count their variables once.
    seen.add(module.path)
    in_bits, kernel_bits = _precisions(module)
    by_bits = {}
    if first:
      for key, value in own.items():
        bits = kernel_bits if key == 'kernel' else FULL
        by_bits[bits] = by_bits.get(bits, 0) + value.size
    out_shape = tuple(out.shape[1:])
    kernel = own.get('kernel')
    macs = (math.prod(out_shape) * math.prod(kernel.shape[:-1])
            if kernel is not None and kernel.ndim >= 2 else 0)
    stat_count = sum(v.size for v in own_stats.values()) if first else 0
    layers.append({
        'name': '/'.join(module.path),
        'type': type(module).__name__,
        'input_precision': in_bits,
        'output_shape': out_shape,
        'params': sum(by_bits.values()),
        'params_by_bits': by_bits,
        'memory_bytes': (sum(b * n for b, n in by_bits.items()) + FULL * stat_count) / 8,
        'macs': macs,
        'mac_precision': max(in_bits, kernel_bits) if macs else None,
        # kept for BOPs: bits of both operands
        '_operand_bits': (in_bits, kernel_bits),
    })
    if values is not None:
      own_values = tree_lib.own_params(values, module.path)
      nonzero = {key: int(np.count_nonzero(np.asarray(v))) for key, v in own_values.items()}
      density = nonzero['kernel'] / kernel.size if kernel is not None and kernel.size else 1.0
      layers[-1].update(
          sparsity=1.0 - density if kernel is not None else None,  # layers with a kernel
          nonzero_params=sum(nonzero.values()) if first else 0,
          nonzero_macs=round(macs * density),
          _nonzero_bits=(sum(n * (kernel_bits if k == 'kernel' else FULL)
                             for k, n in nonzero.items()) + FULL * stat_count) if first else 0)
  totals = _totals(params, stats, layers)
  if values is not None:
    kernels = [np.asarray(v) for path, v in jax.tree_util.tree_flatten_with_path(values)[0]
               if getattr(path[-1], 'key', None) == 'kernel' and np.ndim(v) >= 2]
    kernel_nonzero = sum(np.count_nonzero(k) for k in kernels)
    kernel_total = sum(k.size for k in kernels)
    nonzero_bits = sum(layer.pop('_nonzero_bits') for layer in layers)
    totals.update(
        sparsity=1.0 - kernel_nonzero / kernel_total if kernel_total else 0.0,
        nonzero_params=int(sum(np.count_nonzero(np.asarray(v))
                               for v in jax.tree.leaves(values))),
        nonzero_macs=sum(layer['nonzero_macs'] for layer in layers),
        nonzero_model_size_bytes=nonzero_bits / 8)
  return totals


def _totals(params, stats, layers) -> dict[str, Any]:
  params_by_bits, macs_by_precision = {}, {}
  bops = flops = 0
  for layer in layers:
    for bits, n in layer['params_by_bits'].items():
      params_by_bits[bits] = params_by_bits.get(bits, 0) + n
    in_bits, kernel_bits = layer.pop('_operand_bits')
    if layer['macs']:
      p = layer['mac_precision']
      macs_by_precision[p] = macs_by_precision.get(p, 0) + layer['macs']
      if p < FULL:
        bops += layer['macs'] * in_bits * kernel_bits
      else:
        flops += layer['macs']
  num_params = sum(x.size for x in jax.tree.leaves(params))
  num_stats = sum(x.size for x in jax.tree.leaves(stats))
  size_bits = sum(b * n for b, n in params_by_bits.items()) + FULL * num_stats
  float_bits = FULL * (num_params + num_stats)
  macs = sum(layer['macs'] for layer in layers)
  return {
      'params': num_params,
      'binary_params': params_by_bits.get(1, 0),
      'params_by_bits': dict(sorted(params_by_bits.items())),
      'batch_stats': num_stats,
      'model_size_bytes': size_bits / 8,
      'float32_size_bytes': float_bits / 8,
      'compression_ratio': float_bits / size_bits if size_bits else 1.0,
      'macs': macs,
      'macs_by_precision': dict(sorted(macs_by_precision.items())),
      'bops': bops,
      'flops': flops,
      'ops': bops / 64 + flops,
      'binarized_macs_ratio': macs_by_precision.get(1, 0) / macs if macs else 0.0,
      'layers': layers,
  }


def _count(n):
  return f'{n:,}' if n else '0'


def format_table(summary: dict[str, Any]) -> str:
  """larq-style table: one row per layer, then the totals block."""
  param_bits = sorted(summary['params_by_bits'])
  mac_bits = sorted(summary['macs_by_precision'])
  sparse = 'sparsity' in summary
  headers = (['Layer', 'Type', 'In bits', 'Output shape']
             + [f'{b}-bit params' for b in param_bits] + ['Memory (KiB)']
             + [f'{b}-bit MACs' for b in mac_bits] + (['Sparsity'] if sparse else []))
  rows = []
  for layer in summary['layers']:
    in_bits = layer['input_precision'] if layer['macs'] else '-'  # for layers that multiply
    rows.append([layer['name'], layer['type'], str(in_bits),
                 'x'.join(map(str, layer['output_shape']))]
                + [_count(layer['params_by_bits'].get(b, 0)) for b in param_bits]
                + [f"{layer['memory_bytes'] / 1024:.2f}"]
                + [_count(layer['macs'] if layer['mac_precision'] == b else 0) for b in mac_bits]
                + ([f"{layer['sparsity']:.1%}" if layer['sparsity'] is not None else '-']
                   if sparse else []))
  rows.append(['Total', '', '', '']
              + [_count(summary['params_by_bits'][b]) for b in param_bits]
              + [f"{summary['model_size_bytes'] / 1024:.2f}"]
              + [_count(summary['macs_by_precision'][b]) for b in mac_bits]
              + ([f"{summary['sparsity']:.1%}"] if sparse else []))
  widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

  def line(cells):
    return '  '.join(c.ljust(w) if i < 2 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  rule = '-' * len(line(headers))
  return '\n'.join([line(headers), rule, *map(line, rows[:-1]), rule, line(rows[-1]), '',
                    format_totals(summary)])


def format_totals(summary: dict[str, Any]) -> str:
  """The totals block (also printed by the trainer at the end of a run)."""
  mib = 2**20
  return '\n'.join([
      f"Total params:                {summary['params']:,}",
      f"Binary (1-bit) params:       {summary['binary_params']:,}",
      f"Model size:                  {summary['model_size_bytes'] / mib:.2f} MiB",
      f"Float-32 equivalent:         {summary['float32_size_bytes'] / mib:.2f} MiB",
      f"Compression ratio:           {summary['compression_ratio']:.2f}x",
      f"MACs:                        {summary['macs']:,}",
      f"Binarized MACs:              {summary['binarized_macs_ratio']:.2%}",
      f"BOPs / FLOPs / OPs:          {summary['bops']:.3e} / {summary['flops']:.3e} / "
      f"{summary['ops']:.3e}",
  ] + ([
      f"Kernel sparsity:             {summary['sparsity']:.2%}",
      f"Non-zero params:             {summary['nonzero_params']:,}",
      f"Non-zero MACs:               {summary['nonzero_macs']:,}",
      f"Non-zero model size:         {summary['nonzero_model_size_bytes'] / mib:.2f} MiB",
  ] if summary.get('sparsity', 0) > 0 else []))
