"""Quantizers: functions with custom gradients, by name.

``get(name, **kwargs)`` returns a function ``q(x) -> x_quantized``; ``resolve(spec)`` also
accepts ``None``/``'none'`` (no quantization), a callable, or a spec string such as
``'ste_sign(clip_value=1.5)'`` (the form configs use). Every quantizer carries a
``precision`` attribute (bits: 1 for sign functions, 2 for ternary, k for k-bit), which the
summary reads to count binary params, model size and BOPs.

Each forward value and gradient follows the paper named in its docstring; the formulas are
tested at many points, boundaries included, in ``tests/test_quantizers.py``.

Sign functions map 0 to +1 (as larq), so a binary tensor only ever holds +-1.

Quantizers whose behaviour changes over training (IR-Net's error-decay estimator, BNext's
annealed weights) read ``current_progress()``, the fraction of training done in [0, 1],
which the trainer sets around the model call with ``training_progress(step / total)``;
outside it (evaluation, export) progress is 1.
"""
import ast
import contextlib
import contextvars
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from mcj.config import ConfigError

Quantizer = Callable[[jax.Array], jax.Array]

# ----------------------------------------------------------------------------- training progress
_PROGRESS = contextvars.ContextVar('mcj_training_progress', default=None)


@contextlib.contextmanager
def training_progress(progress):
  """Sets the fraction of training done (a scalar, may be traced) for the block."""
  token = _PROGRESS.set(progress)
  try:
    yield
  finally:
    _PROGRESS.reset(token)


def current_progress():
  """The fraction of training done, set by ``training_progress``; 1.0 outside training."""
  value = _PROGRESS.get()
  return 1.0 if value is None else value


# ----------------------------------------------------------------------------- helpers
def _sign(x):
  """sign with sign(0) = +1, so binary tensors hold exactly +-1."""
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def _with_precision(fn, precision: int, name: str):
  fn.precision = precision
  fn.quantizer_name = name
  return fn


def precision_of(quantizer) -> int:
  """Bits of a quantizer's output; 32 for ``None`` (no quantization)."""
  if quantizer is None:
    return 32
  return int(getattr(quantizer, 'precision', 32))


# ----------------------------------------------------------------------------- sign functions
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _ste_sign(x, clip_value):
  return _sign(x)


def _ste_sign_fwd(x, clip_value):
  return _sign(x), x


def _ste_sign_bwd(clip_value, x, g):
  return (g * (jnp.abs(x) <= clip_value).astype(g.dtype),)


_ste_sign.defvjp(_ste_sign_fwd, _ste_sign_bwd)


def ste_sign(clip_value: float = 1.0) -> Quantizer:
  """Sign with the straight-through estimator (Hubara et al. 2016, BinaryNet).

  Forward ``sign(x)``; gradient ``g * 1[|x| <= clip_value]``. ``clip_value=inf`` gives the
  identity gradient.
  """
  return _with_precision(lambda x: _ste_sign(x, float(clip_value)), 1, 'ste_sign')


@jax.custom_vjp
def _approx_sign(x):
  return _sign(x)


def _approx_sign_fwd(x):
  return _sign(x), x


def _approx_sign_bwd(x, g):
  return (g * jnp.where(jnp.abs(x) <= 1, 2 - 2 * jnp.abs(x), 0).astype(g.dtype),)


_approx_sign.defvjp(_approx_sign_fwd, _approx_sign_bwd)


def approx_sign() -> Quantizer:
  """Sign with Bi-Real Net's piecewise-polynomial gradient (Liu et al. 2018, eq. 6).

  Forward ``sign(x)``; gradient ``g * (2 - 2|x|)`` for ``|x| <= 1``, else 0.
  """
  return _with_precision(_approx_sign, 1, 'approx_sign')


# ----------------------------------------------------------------------------- registry
QUANTIZERS: dict[str, Callable[..., Quantizer]] = {
    'ste_sign': ste_sign,
    'approx_sign': approx_sign,
}


def get(name: str, **kwargs) -> Quantizer:
  """The quantizer ``name`` built with ``kwargs``; unknown names list the valid ones."""
  if name not in QUANTIZERS:
    raise ConfigError(f'Unknown quantizer {name!r}. Available: {", ".join(sorted(QUANTIZERS))}.')
  try:
    return QUANTIZERS[name](**kwargs)
  except TypeError as e:
    raise ConfigError(f'Bad option for quantizer {name!r}: {e}.') from None


def resolve(spec) -> Quantizer | None:
  """``None``/``''``/``'none'`` -> None; a callable -> itself; ``'name(k=v, ...)'`` -> get()."""
  if spec is None or callable(spec):
    return spec
  if not isinstance(spec, str):
    raise ConfigError(f'A quantizer is a name such as "ste_sign(clip_value=1.5)", got {spec!r}.')
  text = spec.strip()
  if text.lower() in ('', 'none'):
    return None
  name, paren, rest = text.partition('(')
  kwargs = {}
  if paren:
    if not rest.endswith(')'):
      raise ConfigError(f'Bad quantizer spec {spec!r}: expected name(key=value, ...).')
    try:
      call = ast.parse(f'f({rest}', mode='eval').body
      if call.args:
        raise ValueError('use key=value')
      kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
      raise ConfigError(f'Bad quantizer spec {spec!r}: {e}; expected name(key=value, ...).') from None
  return get(name.strip(), **kwargs)
