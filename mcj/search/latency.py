"""A per-block latency lookup table (nn-Meter's idea at block granularity): predict a
network's latency as the sum of its blocks' latencies, each distinct block measured once.

A *block* is a direct child module of the model (a MobileNetV3 stem, each inverted
residual, the head and classifier layers; a NAS-Bench-201 cell; a ReActNet block): the
model's forward pass is traced once with ``nn.intercept_methods`` to find each child
call, its module (with all its fields) and its input shapes. Two calls of equal modules on
equal shapes share one key, so a table built while a search runs is reused by every later
candidate that contains the block. Work done between children (pooling, an activation on
the logits path) is not in any block: the fixed cost of one compiled call is measured once and counted once (not once per
block); the prediction's error against measured networks
(``prediction_error``: mean absolute percentage error and the share within +-10%,
nn-Meter's figures) says what that costs.

The table persists as JSON (``<search workdir>/latency_table.json``), keyed by device kind,
so a resumed search does not measure a block again.
"""
import dataclasses
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mcj.core import workdir as workdir_lib


def time_call(fn, args, *, warmup: int, runs: int) -> np.ndarray:
  """Seconds of each of ``runs`` timed calls of ``fn(*args)`` after ``warmup`` untimed ones,
  each waited for (``block_until_ready``)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return np.asarray(times)


@dataclasses.dataclass
class Block:
  key: str
  module: nn.Module        # unbound, as the parent built it
  args: tuple              # jax.ShapeDtypeStruct for arrays, else the value
  kwargs: dict


def _fields(module) -> dict:
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.init and f.name not in ('parent', 'name')}


def _stable(value):
  """A repr that is the same in every process: functions by name, never by address;
  initialisers (they do not change latency) left out by ``_key_fields``."""
  if isinstance(value, (list, tuple)):
    return type(value)(_stable(v) for v in value)
  if isinstance(value, dict):
    return {k: _stable(v) for k, v in value.items()}
  if callable(value) and not isinstance(value, type):
    func = getattr(value, 'func', value)
    return f'<{getattr(func, "__module__", "")}.{getattr(func, "__qualname__", type(func).__name__)}>'
  return value


def _key_fields(module) -> list:
  return sorted((k, _stable(v)) for k, v in _fields(module).items() if not k.endswith('_init'))


def _spec(value):
  if hasattr(value, 'shape') and hasattr(value, 'dtype'):
    return jax.ShapeDtypeStruct(value.shape, value.dtype)
  return value


def blocks_of(model, input_shape, batch_size: int = 1) -> list[Block]:
  """The model's direct child calls in an inference forward pass, in call order."""
  found = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and len(module.path) == 1 and not isinstance(
        module, nn.Dropout):
      specs = tuple(_spec(a) for a in args)
      kw = {k: _spec(v) for k, v in kwargs.items()}
      key = (f'{type(module).__name__}{_key_fields(module)!r}'
             f'@{[(s.shape, str(s.dtype)) if hasattr(s, "shape") else s for s in specs]}'
             f'{sorted(kw.items())!r}')
      fresh = type(module)(**_fields(module))
      found.append(Block(key, fresh, specs, kw))
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((batch_size,) + tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype),
                                                train=False))
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x.shape, x.dtype), train=False),
                   variables)
  return found


def measure_block(block: Block, *, warmup: int, runs: int, time_call) -> float:
  """Median milliseconds of the block's compiled inference call on the default device."""
  is_array = [isinstance(a, jax.ShapeDtypeStruct) for a in block.args]
  arrays = [jnp.zeros(a.shape, a.dtype) for a, arr in zip(block.args, is_array) if arr]

  def call(method, first, xs):  # non-array arguments (train=False) stay Python values
    it = iter(xs)
    args = [next(it) if arr else a for a, arr in zip(block.args, is_array)]
    return method(first, *args, **block.kwargs)

  variables = jax.jit(lambda rng, xs: call(block.module.init, rng, xs))(jax.random.key(0),
                                                                        arrays)
  forward = jax.jit(lambda v, xs: call(block.module.apply, v, xs))
  times = time_call(forward, (variables, arrays), warmup=warmup, runs=runs)
  return float(np.median(times) * 1e3)


class LatencyTable:
  """{device kind: {block key: milliseconds}}, saved after every new entry."""

  def __init__(self, path: str | None):
    self.path, self.entries = path, {}
    if path and os.path.exists(path):
      with open(path) as f:
        self.entries = json.load(f)

  def predict(self, model, input_shape, *, device_kind: str, measure,
              measure_overhead=None) -> tuple[float, int]:
    """(predicted ms, number of blocks measured now) for ``model`` at batch 1.

    Each measured block carries the fixed cost of one compiled call (dispatch, argument
    checks), which a whole network pays once: ``measure_overhead(input_shape)`` (the time
    of a trivial compiled call on the input) is subtracted from every block and added once.
    """
    table = self.entries.setdefault(device_kind, {})
    total, new = 0.0, 0
    overhead_key = f'call_overhead@{tuple(input_shape)}'
    if measure_overhead is not None and overhead_key not in table:
      table[overhead_key] = measure_overhead(input_shape)
      new += 1
    overhead = table.get(overhead_key, 0.0)
    for block in blocks_of(model, input_shape):
      if block.key not in table:
        table[block.key] = measure(block)
        new += 1
      total += max(table[block.key] - overhead, 0.0)
    total += overhead
    if new and self.path and jax.process_index() == 0:
      workdir_lib.write_atomically(self.path, json.dumps(self.entries, indent=1,
                                                         sort_keys=True))
    return total, new


def measure_call_overhead(input_shape, *, warmup: int, runs: int, time_call) -> float:
  """Median milliseconds of a trivial compiled call (x + 1) on a batch-1 input."""
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  times = time_call(jax.jit(lambda x: x + 1), (x,), warmup=warmup, runs=runs)
  return float(np.median(times) * 1e3)


def prediction_error(predicted, measured) -> dict:
  """nn-Meter's accuracy figures: mean absolute percentage error and the share of
  predictions within +-10% of the measured latency."""
  p, m = np.asarray(predicted, float), np.asarray(measured, float)
  keep = np.isfinite(p) & np.isfinite(m) & (m > 0)
  if not keep.any():
    return {'n': 0}
  rel = np.abs(p[keep] - m[keep]) / m[keep]
  return {'n': int(keep.sum()), 'mape': float(rel.mean()),
          'within_10pct': float(np.mean(rel <= 0.10 + 1e-9))}
