"""How small is a model: per-layer precision, params per bit width, memory and MACs (larq's
``summary`` for Flax), as a table or JSON.

``summarize(model, input_shape, params=None)`` returns the counts; ``format_table`` and
``format_totals`` print them (``python -m mcj.summary`` is the command line).

Two abstract traces, nothing materialised: ``jax.eval_shape`` of ``model.init`` (the
variables, and every module call through ``nn.intercept_methods``), and ``jax.make_jaxpr``
of ``model.apply(variables, x, train=False)`` on a batch of 1, whose convs and dots
``mcj.analysis.counting`` counts. A layer row is a module that owns variables directly
(Conv, Dense, QuantConv, BatchNorm, ...) or that does MACs of its own without variables (a
constant blur-pool conv, an attention product; name '' is the model itself); a module
called several times is one row. Conventions (as larq; see REFERENCE counting rules):
- params: the ``params`` collection (BatchNorm scale and bias in, running statistics out);
  a quantized layer's latent kernel counts at its kernel quantizer's precision (1 bit for
  sign functions), every other param at 32 bits.
- MACs per example, per operation of the forward pass: conv = output elements x (Cin /
  groups) x kh x kw, dot_general = output elements x the contracted size; every other op
  (BN, activations, pooling, bias adds) counts zero. An operand's precision is the bit width
  of the quantizer scope it comes from (``quantizers.PRECISION_SCOPE``), carried through
  layout ops and through rescaling / masking (``mul``, ``select_n``, ``neg``), else 32; a
  MAC's precision is the larger of its two operands'.
- frozen weights: conv / dot operands computed from constants only (QuickNet's blur-pool
  kernel): no params, but stored by larq as non-trainable weights.
- ``model_size_bytes``: params at their precision plus the BatchNorm running statistics
  (mean and var) at 32 bits, i.e. four 32-bit values per BN channel; ``float32_size_bytes``
  counts the same values all at 32 bits; ``compression_ratio`` = float-32 size / model size.
- ``folded_model_size_bytes``: BatchNorm folded to two values per channel (scale and bias
  dropped, running statistics kept) plus frozen weights at 32 bits: larq's "Model size"
  and the published MeliusNet / QuickNet sizes; ``folded_compression_ratio`` = float-32
  size / folded size.
- BOPs: MACs whose both operands are quantized, weighted by bits_lhs x bits_rhs (for 1-bit
  x 1-bit ops exactly their MACs); FLOPs: MACs with a 32-bit operand; OPs = BOPs / 64 +
  FLOPs (Bi-Real Net, Real-to-Binary, ReActNet).
- with trained params (``params=``, ``--workdir``): a layer's ``sparsity`` is the fraction
  of zeros in its kernel; ``nonzero_params`` counts non-zero params; ``nonzero_macs`` =
  MACs x kernel density (each kernel weight takes part in the same number of MACs);
  ``nonzero_model_size_bytes`` stores only non-zero params (indices not counted, as the
  pruning literature's effective size). Totals: ``sparsity`` over all conv and dense
  kernels.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mcj.analysis import counting
from mcj.core import tree as tree_lib
from mcj.nn import inspect
from mcj.quant import quantizers

FULL = 32  # bits of an unquantized value


def _kernel_bits(module) -> int:
  """Bits a layer's ``kernel`` param is stored at: its kernel quantizer's precision, else 32."""
  if inspect.is_quant_layer(module):
    return quantizers.precision_of(module.kernel_q())
  return FULL


def _is_batch_norm(module, own, own_stats) -> bool:
  """BatchNorm-like: owns running statistics (``mean`` and ``var``), or is nn.BatchNorm."""
  return isinstance(module, nn.BatchNorm) or {'mean', 'var'} <= set(own_stats)


def _trace_ops(model, variables, input_shape, call_kwargs) -> list[counting.Op]:
  """The conv / dot ops of ``model.apply(variables, x, train=False)`` on a batch of 1: one
  ``make_jaxpr`` trace of abstract values (nothing is materialised)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  jaxpr = jax.make_jaxpr(
      lambda v, x: model.apply(v, x, train=False, **call_kwargs))(variables, x)
  return counting.count_ops(jaxpr)


def _add(counts: dict, key, n):
  counts[key] = counts.get(key, 0) + n


def summarize(model: nn.Module, input_shape, params=None, **call_kwargs) -> dict[str, Any]:
  """Counts params, bits, memory and MACs of ``model`` on one example of ``input_shape``.

  Args:
    model: a Flax module called as ``model(x, train=False, **call_kwargs)``.
    input_shape: per-example input shape, e.g. (224, 224, 3), or (seq_len,) for a model
      of token ids (BERT: its attention products grow as seq_len^2).
    params: trained values of the ``params`` collection (optional): adds the sparsity
      keys (``sparsity``, ``nonzero_params``, ``nonzero_macs``,
      ``nonzero_model_size_bytes``; per layer ``sparsity``, ``nonzero_params``,
      ``nonzero_macs``).

  Returns:
    Totals ``params``, ``binary_params``, ``params_by_bits`` ({bits: count}),
    ``batch_stats``, ``frozen_weights``, ``model_size_bytes``,
    ``folded_model_size_bytes``, ``float32_size_bytes``, ``compression_ratio``,
    ``folded_compression_ratio``, ``macs``, ``macs_by_precision``, ``bops``, ``flops``,
    ``ops``, ``binarized_macs_ratio``, and ``layers``: one dict per layer with ``name``
    (module path, '' for the model itself), ``type``, ``input_precision``,
    ``output_shape`` (per example), ``params``, ``params_by_bits``, ``memory_bytes``,
    ``macs``, ``macs_by_precision`` and ``mac_precision`` (None unless all its MACs have
    one precision).
  """
  variables, calls = inspect.trace_layers(model, input_shape, **call_kwargs)
  values = params
  params = variables.get('params', {})
  stats = variables.get('batch_stats', {})
  modules = {}  # path -> (module, output) of its first call, in call order
  for module, _, out in calls:
    modules.setdefault(tuple(module.path), (module, out))
  modules.setdefault((), (model, None))  # ops outside every submodule belong to the model

  # MACs per module path, from the ops of the traced forward pass.
  ops_by_path: dict[tuple, list] = {}
  frozen = 0  # elements of frozen operands (constant kernels), counted per op
  for op in _trace_ops(model, variables, input_shape, call_kwargs):
    path = counting.module_path(op.name_stack, modules.keys())
    ops_by_path.setdefault(path, []).append(op)
    frozen += sum(op.frozen_operands)

  layers, bn_params = [], 0
  for path, (module, out) in modules.items():
    own = tree_lib.own_params(params, path)
    own_stats = tree_lib.own_params(stats, path)
    ops = ops_by_path.get(path, [])
    if not (own or own_stats or ops):
      continue  # Containers without variables or MACs of their own.
    kernel_bits = _kernel_bits(module)
    by_bits = {}
    for key, value in own.items():
      _add(by_bits, kernel_bits if key == 'kernel' else FULL, value.size)
    if _is_batch_norm(module, own, own_stats):
      bn_params += sum(v.size for k, v in own.items() if k in ('scale', 'bias'))
    macs_by_precision, bops, flops = {}, 0, 0
    for op in ops:
      _add(macs_by_precision, op.precision, op.macs)
      if op.precision < FULL:
        bops += op.macs * op.lhs_bits * op.rhs_bits
      else:
        flops += op.macs
    macs = sum(macs_by_precision.values())
    stat_count = sum(v.size for v in own_stats.values())
    layers.append({
        'name': '/'.join(path),
        'type': type(module).__name__,
        'input_precision': max((op.lhs_bits for op in ops), default=FULL),
        'output_shape': tuple(out.shape[1:]) if hasattr(out, 'shape') else None,
        'params': sum(by_bits.values()),
        'params_by_bits': by_bits,
        'memory_bytes': (sum(b * n for b, n in by_bits.items()) + FULL * stat_count) / 8,
        'macs': macs,
        'macs_by_precision': dict(sorted(macs_by_precision.items())),
        'mac_precision': next(iter(macs_by_precision)) if len(macs_by_precision) == 1 else None,
        '_bops_flops': (bops, flops),
    })
    if values is not None:
      kernel = own.get('kernel')
      own_values = tree_lib.own_params(values, path)
      nonzero = {key: int(np.count_nonzero(np.asarray(v))) for key, v in own_values.items()}
      density = nonzero['kernel'] / kernel.size if kernel is not None and kernel.size else 1.0
      layers[-1].update(
          sparsity=1.0 - density if kernel is not None else None,  # layers with a kernel
          nonzero_params=sum(nonzero.values()),
          nonzero_macs=round(macs * density),
          _nonzero_bits=sum(n * (kernel_bits if k == 'kernel' else FULL)
                            for k, n in nonzero.items()) + FULL * stat_count)
  totals = _totals(params, stats, layers, bn_params, frozen)
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


def _totals(params, stats, layers, bn_params, frozen) -> dict[str, Any]:
  params_by_bits, macs_by_precision = {}, {}
  bops = flops = 0
  for layer in layers:
    for bits, n in layer['params_by_bits'].items():
      _add(params_by_bits, bits, n)
    for bits, n in layer['macs_by_precision'].items():
      _add(macs_by_precision, bits, n)
    layer_bops, layer_flops = layer.pop('_bops_flops')
    bops += layer_bops
    flops += layer_flops
  num_params = sum(x.size for x in jax.tree.leaves(params))
  num_stats = sum(x.size for x in jax.tree.leaves(stats))
  size_bits = sum(b * n for b, n in params_by_bits.items()) + FULL * num_stats
  folded_bits = size_bits - FULL * bn_params + FULL * frozen
  float_bits = FULL * (num_params + num_stats)
  macs = sum(layer['macs'] for layer in layers)
  return {
      'params': num_params,
      'binary_params': params_by_bits.get(1, 0),
      'params_by_bits': dict(sorted(params_by_bits.items())),
      'batch_stats': num_stats,
      'frozen_weights': frozen,
      'model_size_bytes': size_bits / 8,
      'folded_model_size_bytes': folded_bits / 8,
      'float32_size_bytes': float_bits / 8,
      'compression_ratio': float_bits / size_bits if size_bits else 1.0,
      'folded_compression_ratio': float_bits / folded_bits if folded_bits else 1.0,
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
    shape = layer['output_shape']
    rows.append([layer['name'] or '(top level)', layer['type'], str(in_bits),
                 'x'.join(map(str, shape)) if shape is not None else '-']
                + [_count(layer['params_by_bits'].get(b, 0)) for b in param_bits]
                + [f"{layer['memory_bytes'] / 1024:.2f}"]
                + [_count(layer['macs_by_precision'].get(b, 0)) for b in mac_bits]
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
  """The totals block (also printed by the trainer at the end of a run): the model size with
  BN running statistics (params at their precision + 4 values per BN channel) and folded
  (2 values per BN channel + frozen weights: larq's "Model size")."""
  mib = 2**20
  folded = summary.get('folded_model_size_bytes', summary['model_size_bytes'])
  folded_ratio = summary.get('folded_compression_ratio', summary['compression_ratio'])
  return '\n'.join([
      f"Total params:                {summary['params']:,}",
      f"Binary (1-bit) params:       {summary['binary_params']:,}",
      f"Model size (with BN stats):  {summary['model_size_bytes'] / mib:.2f} MiB",
      f"Model size (BN folded):      {folded / mib:.2f} MiB",
      f"Float-32 equivalent:         {summary['float32_size_bytes'] / mib:.2f} MiB",
      f"Compression ratio:           {summary['compression_ratio']:.2f}x "
      f"({folded_ratio:.2f}x BN folded)",
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
