"""Quantizers: functions with custom gradients, by name.

``get(name, **kwargs)`` returns a function ``q(x) -> x_quantized``; ``resolve(spec)`` also
accepts ``None``/``'none'`` (no quantization), a callable, or a spec string such as
``'ste_sign(clip_value=1.5)'`` (the form configs use). Every quantizer carries a
``precision`` attribute (bits: 1 for sign functions, 2 for ternary, k for k-bit), which the
summary reads to count binary params, model size and BOPs. Options are checked when the
quantizer is built: a missing or wrong-typed value (``ste_sign(clip_value=None)``) is one
``ConfigError`` line, not an error at the first call.

Each forward value and gradient follows the paper named in its docstring; the formulas are
tested at many points, boundaries included, in ``tests/test_quantizers.py``.

==========================  =========================================================
name                        method
==========================  =========================================================
ste_sign                    BinaryNet sign, clipped straight-through gradient
approx_sign                 Bi-Real Net sign, piecewise-polynomial gradient
swish_sign                  BNN+ sign, SignSwish gradient
magnitude_aware_sign        Bi-Real Net weights: mean|W| per output channel x sign
ste_heaviside               {0, 1} step, clipped straight-through gradient (larq)
ste_tern                    ternary {-1, 0, 1} (larq; TWN threshold optional)
dorefa                      DoReFa-Net k-bit activations or weights
hard_sign                   BNext activation sign, straight-through gradient on [-1.5, 1.5]
bnext_weight                BNext weights: temperature-annealed clip -> sign
ede                         IR-Net sign with the error-decay estimator
irnet_weight                IR-Net weights: per-filter balance, EDE sign, 2^n scale
lsq                         LSQ k-bit with a learned step size (per tensor or per channel)
uniform                     symmetric k-bit with the tensor's own range (per tensor or channel)
pact                        PACT k-bit activations with a learned clipping level
bit_elastic                 BiT elastic activation (1 or 2 bits): learned scale and threshold
bit_weight                  BiT weights (BWN): mean|W| x sign(W - mean W), identity grad
bibert_weight               BiBERT weights: per-row centred sign x mean|W|, clipped grad
bibert_bool                 BiBERT's bool: {0, 1} attention weights from the scores
noop                        identity that declares a precision (larq NoOp)
==========================  =========================================================

Sign functions map 0 to +1 (as larq), so a binary tensor only ever holds +-1 (the PyTorch
references use ``torch.sign``, which maps 0 to 0; with float inputs this never matters).

ReActNet's RSign (a learned per-channel threshold, then sign) is not a quantizer here: it is
``mcj.nn.blocks.LearnableBias`` (the shift, param ``bias``) followed by the next layer's sign
input quantizer (``approx_sign`` in ReActNet), as the official code's ``LearnableBias`` then
``BinaryActivation`` and as ``mcj.models`` builds it; the shift is then a param of the block,
beside the conv.

Quantizers with learned parameters (``lsq``, ``pact``, ``bit_elastic``) are functions that
build a small Flax module when called, so they must be called inside a module's
``@nn.compact`` method (as ``mcj.layers`` does); the module becomes a child of the calling
layer.

Quantizers whose behaviour changes over training (IR-Net's error-decay estimator, BNext's
annealed weights) read ``current_progress()``, the fraction of training done in [0, 1],
which the trainer sets around the model call with ``training_progress(step / total)``;
outside it (evaluation, export) progress is 1.
"""
import contextlib
import contextvars
import functools
import math
import numbers
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcj.core import registry
from mcj.core.config import ConfigError

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


def _progress_array():
  """``current_progress()`` as a float32 scalar clipped to [0, 1] (traced or not)."""
  return jnp.clip(jnp.asarray(current_progress(), jnp.float32), 0.0, 1.0)


# ----------------------------------------------------------------------------- helpers
def _sign(x):
  """sign with sign(0) = +1, so binary tensors hold exactly +-1."""
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def _sign_forward(x, *schedule):
  """``_sign`` as an ``_elementwise`` forward (the schedule only shapes the gradient)."""
  return _sign(x)


# The name scope a quantizer's output is computed in: the summary's op-level counting reads
# it from the traced program to know the precision of each conv / dot operand.
PRECISION_SCOPE = 'quantized_{bits}bit'


def _with_precision(fn, precision: int):
  """``fn`` tagged with its output ``precision`` (bits) and traced inside the scope
  ``PRECISION_SCOPE``, so the summary sees the precision of every op operand it feeds."""
  scope = PRECISION_SCOPE.format(bits=precision)

  def quantize(x):
    with jax.named_scope(scope):
      return fn(x)

  quantize.precision = precision
  return quantize


def precision_of(quantizer) -> int:
  """Bits of a quantizer's output; 32 for ``None`` (no quantization)."""
  if quantizer is None:
    return 32
  return int(getattr(quantizer, 'precision', 32))


def _check(condition: bool, message: str):
  if not condition:
    raise ConfigError(message)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(quantizer: str, option: str, value, *, minimum: float = 0.0,
            inclusive: bool = False, allow_inf: bool = False) -> float:
  """``value`` as a float, or one ConfigError line: a real number (not None, a string or a
  bool) above ``minimum`` (or equal to it with ``inclusive``), finite unless ``allow_inf``."""
  ok = _is_number(value) and not math.isnan(value) and (
      value >= minimum if inclusive else value > minimum) and (allow_inf or math.isfinite(value))
  bound = f'>= {minimum:g}' if inclusive else f'> {minimum:g}'
  extra = " (float('inf') for an identity gradient)" if allow_inf else ''
  _check(ok, f'{quantizer} {option} must be a number {bound}{extra}, got {value!r}.')
  return float(value)


def _clip_value(quantizer: str, value) -> float:
  return _number(quantizer, 'clip_value', value, allow_inf=True)


def _integer(quantizer: str, option: str, value, minimum: int) -> int:
  """``value`` as an int >= ``minimum``, or one ConfigError line (bools are not integers)."""
  _check(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum,
         f'{quantizer} needs an integer {option} >= {minimum}, got {value!r}.')
  return int(value)


def _flag(quantizer: str, option: str, value) -> bool:
  _check(isinstance(value, bool), f'{quantizer} {option} must be True or False, got {value!r}.')
  return value


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _elementwise(forward, derivative, x, *schedule):
  """``forward(x, *schedule)`` whose gradient is ``g * derivative(x, *schedule)``.

  ``forward`` and ``derivative`` are static; ``schedule`` holds scalars that may be traced
  (a temperature read from the training progress) and get no gradient. The derivative is
  evaluated in float32 and cast to the input's dtype.
  """
  return forward(x, *schedule)


def _elementwise_fwd(forward, derivative, x, *schedule):
  return forward(x, *schedule), (x, schedule)


def _elementwise_bwd(forward, derivative, residuals, g):
  x, schedule = residuals
  dx = g.astype(jnp.float32) * derivative(x.astype(jnp.float32), *schedule)
  return (dx.astype(x.dtype), *(jnp.zeros_like(s) for s in schedule))


_elementwise.defvjp(_elementwise_fwd, _elementwise_bwd)


def _inside(x, clip_value):
  """1 where |x| <= clip_value (the clipped straight-through estimator), else 0."""
  return (jnp.abs(x) <= clip_value).astype(jnp.float32)


# ----------------------------------------------------------------------------- sign functions
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _ste_sign(x, clip_value):
  return _sign(x)


def _ste_sign_fwd(x, clip_value):
  return _sign(x), x


def _ste_sign_bwd(clip_value, x, g):
  return (g * (jnp.abs(x) <= clip_value).astype(g.dtype),)


_ste_sign.defvjp(_ste_sign_fwd, _ste_sign_bwd)


@registry.register('quantizer', 'ste_sign')
def ste_sign(clip_value: float = 1.0) -> Quantizer:
  """Sign with the straight-through estimator (Hubara et al. 2016, BinaryNet).

  Forward ``sign(x)``; gradient ``g * 1[|x| <= clip_value]``. ``clip_value=inf`` gives the
  identity gradient.
  """
  clip_value = _clip_value('ste_sign', clip_value)
  return _with_precision(lambda x: _ste_sign(x, clip_value), 1)


@jax.custom_vjp
def _approx_sign(x):
  return _sign(x)


def _approx_sign_fwd(x):
  return _sign(x), x


def _approx_sign_bwd(x, g):
  return (g * jnp.where(jnp.abs(x) <= 1, 2 - 2 * jnp.abs(x), 0).astype(g.dtype),)


_approx_sign.defvjp(_approx_sign_fwd, _approx_sign_bwd)


@registry.register('quantizer', 'approx_sign')
def approx_sign() -> Quantizer:
  """Sign with Bi-Real Net's piecewise-polynomial gradient (Liu et al. 2018, eq. 6).

  Forward ``sign(x)``; gradient ``g * (2 - 2|x|)`` for ``|x| <= 1``, else 0.
  """
  return _with_precision(_approx_sign, 1)


def _swish_sign_derivative(x, beta):
  bx = beta * x
  return beta * (2 - bx * jnp.tanh(bx / 2)) / (1 + jnp.cosh(bx))


@registry.register('quantizer', 'swish_sign')
def swish_sign(beta: float = 5.0) -> Quantizer:
  """Sign with the SignSwish gradient (Darabi et al. 2018, BNN+; larq ``swish_sign``).

  Forward ``sign(x)``; gradient ``beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))``,
  the derivative of ``2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1``: 2 beta / 2 =
  beta at 0, slightly negative beyond |x| ~ 2.4 / beta, and 0 (not NaN) far out.
  """
  beta = _number('swish_sign', 'beta', beta)
  derivative = functools.partial(_swish_sign_derivative, beta=beta)
  return _with_precision(lambda x: _elementwise(_sign, derivative, x), 1)


@registry.register('quantizer', 'magnitude_aware_sign')
def magnitude_aware_sign(clip_value: float = 1.0) -> Quantizer:
  """Bi-Real Net's magnitude-aware weight sign (Liu et al. 2018; larq ``magnitude_aware_sign``).

  ``mean|W|`` per output channel (over every axis but the last), a constant in the backward
  pass, times ``ste_sign(W, clip_value)``. Output in {-a, +a} per channel: 1 bit plus a
  per-channel float.
  """
  clip_value = _clip_value('magnitude_aware_sign', clip_value)

  def quantize(x):
    scale = jnp.mean(jnp.abs(x), axis=tuple(range(x.ndim - 1)))
    return jax.lax.stop_gradient(scale).astype(x.dtype) * _ste_sign(x, clip_value)

  return _with_precision(quantize, 1)


@registry.register('quantizer', 'ste_heaviside')
def ste_heaviside(clip_value: float = 1.0) -> Quantizer:
  """Step function with values {0, 1} (larq ``ste_heaviside``).

  Forward 1 if ``x > 0`` else 0 (0 at x = 0, as larq's ``sign(relu(x))``); gradient
  ``g * 1[|x| <= clip_value]``. One bit, but {0, 1} rather than +-1.
  """
  clip_value = _clip_value('ste_heaviside', clip_value)

  def forward(x):
    return (x > 0).astype(x.dtype)

  derivative = functools.partial(_inside, clip_value=clip_value)
  return _with_precision(lambda x: _elementwise(forward, derivative, x), 1)


@registry.register('quantizer', 'hard_sign')
def hard_sign(clip_value: float = 1.5) -> Quantizer:
  """BNext's activation binarizer ``HardSign(range=[-1.5, 1.5])`` (Guo et al. 2022,
  hpi-xnor/BNext ``src/bnext.py``).

  Forward ``sign(x)``; gradient that of ``clamp(x, -1.5, 1.5)``: ``g * 1[|x| <= 1.5]``.
  BNext's ``HardSign`` also holds a temperature, but in its (default, non-progressive) mode
  ``sign(clamp(x / T, -1, 1)) = sign(x)`` for any T > 0, so it plays no part here.
  """
  clip_value = _clip_value('hard_sign', clip_value)
  derivative = functools.partial(_inside, clip_value=clip_value)
  return _with_precision(lambda x: _elementwise(_sign, derivative, x), 1)


# ----------------------------------------------------------------------------- IR-Net
def _ede_temperature(t_min, t_max):
  """IR-Net's ``Log_UP``: t rises from t_min to t_max log-linearly with training progress."""
  return t_min * (t_max / t_min) ** _progress_array()


def _ede_derivative(x, t):
  k = jnp.maximum(1 / t, 1.0)
  return k * t / jnp.cosh(t * x) ** 2  # 1 - tanh^2, without float32 cancellation


def _ede_sign(x, t_min, t_max):
  return _elementwise(_sign_forward, _ede_derivative, x, _ede_temperature(t_min, t_max))


def _check_ede(quantizer, t_min, t_max):
  """(t_min, t_max) as floats, or one ConfigError line."""
  t_min = _number(quantizer, 't_min', t_min)
  t_max = _number(quantizer, 't_max', t_max)
  _check(t_min <= t_max,
         f'{quantizer} needs 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}.')
  return t_min, t_max


@registry.register('quantizer', 'ede')
def ede(t_min: float = 0.1, t_max: float = 10.0) -> Quantizer:
  """Sign with IR-Net's error-decay estimator (Qin et al. 2020; htqin/IR-Net).

  Forward ``sign(x)``; gradient ``g * k t (1 - tanh^2(t x))`` with
  ``t = t_min 10^(progress log10(t_max / t_min))`` and ``k = max(1 / t, 1)``: early on a
  wide, identity-like gradient (k t = 1), late a narrow one close to the sign's derivative.
  The official trainers set t once per epoch (``Log_UP(T_min, T_max, epoch)``); here t
  follows the progress continuously. Defaults are the paper's (and the official VGG-Small
  code's) T_min = 0.1, T_max = 10; the official ResNet-20 code uses t_min = 1e-3.
  """
  t_min, t_max = _check_ede('ede', t_min, t_max)
  return _with_precision(lambda x: _ede_sign(x, t_min, t_max), 1)


@registry.register('quantizer', 'irnet_weight')
def irnet_weight(t_min: float = 0.1, t_max: float = 10.0) -> Quantizer:
  """IR-Net's weight binarizer (Qin et al. 2020, Libra-PB; htqin/IR-Net ``IRConv2d``).

  Per output channel (the last axis): balance and standardise ``W_std = (W - mean) / std``
  (unbiased std, as ``torch.std``; the gradient flows through mean and std, as in the
  official code), binarize with the EDE sign (see ``ede``), and multiply by the constant
  power of two ``2^round(log2(mean|W_std|))`` (a bit shift at inference). A filter with
  zero spread gives 0 rather than NaN.
  """
  t_min, t_max = _check_ede('irnet_weight', t_min, t_max)

  def quantize(w):
    axes = tuple(range(w.ndim - 1))
    w32 = w.astype(jnp.float32)
    centred = w32 - jnp.mean(w32, axis=axes)
    count = math.prod(w.shape[:-1])
    var = jnp.sum(centred ** 2, axis=axes) / max(count - 1, 1)
    standardised = centred / jnp.sqrt(jnp.where(var > 0, var, 1.0))  # no NaN, also in grads
    scale = 2.0 ** jnp.round(jnp.log2(jnp.mean(jnp.abs(standardised), axis=axes)))
    out = _ede_sign(standardised, t_min, t_max) * jax.lax.stop_gradient(scale)
    return out.astype(w.dtype)

  return _with_precision(quantize, 1)


# ----------------------------------------------------------------------------- BNext weights
_BNEXT_SIGN_BELOW = 1e-7  # hpi-xnor/BNext src/bnext.py: exact sign once T < 1e-7


def _bnext_forward(w, temperature):
  soft = jnp.clip(w.astype(jnp.float32) / jnp.maximum(temperature, 1e-8), -1, 1)
  return jnp.where(temperature < _BNEXT_SIGN_BELOW, _sign(w).astype(jnp.float32),
                   soft).astype(w.dtype)


@registry.register('quantizer', 'bnext_weight')
def bnext_weight(decay: float = 0.9, epochs: int = 512) -> Quantizer:
  """BNext's temperature-annealed weight binarizer (Guo et al. 2022; hpi-xnor/BNext
  ``HardBinaryConv`` and ``adjust_temperature`` in ``train_assistant_group_amp.py``).

  Forward ``clip(W / T, -1, 1)``, exactly ``sign(W)`` once ``T < 1e-7`` (BNext-18's code:
  1e-5); gradient identity (``binary.detach() - W.detach() + W``). The temperature starts
  at 1 and is multiplied by ``decay`` = 0.9 every epoch, so ``T = decay^(progress *
  epochs)`` (512 epochs: BNext's ImageNet scripts); the official code steps it once per
  epoch, here it follows the progress continuously. Early in training the output is not
  binary (at T = 1 it is ``clip(W, -1, 1)``); with the defaults it is exactly +-1 from 30%
  of training on, and outside training (progress 1).
  BNext also clamps the latent weights to [-1.5, 1.5] before every forward: use the
  trainer's ``config.binary.latent_clip = 1.5`` for that (it does not change the forward
  value, since ``clip(W / T, -1, 1)`` already saturates there for ``T <= 1``).
  """
  _check(_is_number(decay) and 0 < decay < 1 and _is_number(epochs) and 0 < epochs < math.inf,
         f'bnext_weight needs 0 < decay < 1 and epochs > 0, got decay={decay!r}, '
         f'epochs={epochs!r}.')
  decay, epochs = float(decay), float(epochs)

  def quantize(w):
    temperature = decay ** (_progress_array() * epochs)
    return _elementwise(_bnext_forward, lambda x, t: jnp.ones_like(x), w, temperature)

  return _with_precision(quantize, 1)


# ----------------------------------------------------------------------------- ternary, k-bit
@registry.register('quantizer', 'ste_tern')
def ste_tern(threshold_value: float = 0.05, ternary_weight_networks: bool = False,
             clip_value: float = 1.0) -> Quantizer:
  """Ternarization with the straight-through estimator (larq ``ste_tern``).

  Forward ``sign(sign(x + D) + sign(x - D))`` on the unclipped ``x``: +1 for ``x >= D``, -1
  for ``x <= -D``, 0 between (0 at x = 0 when D = 0). ``D = threshold_value``, or with
  ``ternary_weight_networks=True`` ``D = 0.7 mean|x|`` over the whole, unclipped tensor
  (Li & Liu 2016, TWN eq. 8; larq), a constant in the backward pass. ``clip_value`` only
  shapes the gradient, ``g * 1[|x| <= clip_value]``: it does not clip the forward input, so
  a threshold above it still gives +-1 beyond the threshold.
  """
  threshold_value = _number('ste_tern', 'threshold_value', threshold_value, inclusive=True)
  clip_value = _clip_value('ste_tern', clip_value)
  twn = _flag('ste_tern', 'ternary_weight_networks', ternary_weight_networks)

  def forward(x, threshold):
    t = threshold.astype(x.dtype)  # larq compares in the input dtype
    return jnp.sign(jnp.sign(x + t) + jnp.sign(x - t))

  derivative = lambda x, threshold: _inside(x, clip_value)

  def quantize(x):
    if twn:
      threshold = jax.lax.stop_gradient(0.7 * jnp.mean(jnp.abs(x.astype(jnp.float32))))
    else:
      threshold = jnp.asarray(threshold_value, jnp.float32)
    return _elementwise(forward, derivative, x, threshold)

  return _with_precision(quantize, 2)


def _round_k_bit(x, k_bit):
  """``round(x (2^k - 1)) / (2^k - 1)`` on [0, 1] (round half to even, as TF and torch)."""
  n = 2 ** k_bit - 1
  return jnp.round(x * n) / n


@registry.register('quantizer', 'dorefa')
def dorefa(k_bit: int = 2, mode: str = 'activations') -> Quantizer:
  """DoReFa-Net k-bit quantizer (Zhou et al. 2016; larq ``DoReFa``).

  ``mode='activations'``: ``quantize_k(clip(x, 0, 1))`` with gradient ``g * 1[0 <= x <= 1]``.
  ``mode='weights'``: ``2 quantize_k(tanh(W) / (2 max|tanh W|) + 1/2) - 1`` with the
  straight-through estimator for the rounding and ``max|tanh W|`` a constant in the backward
  pass (as larq), so the gradient is ``g (1 - tanh^2 W) / max|tanh W|``. Here
  ``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)``. The paper's special case for 1-bit
  weights (``sign(W) E|W|``) is not applied (as larq).
  """
  k_bit = _integer('dorefa', 'k_bit', k_bit, 1)
  _check(mode in ('activations', 'weights'),
         f"dorefa mode must be 'activations' or 'weights', got {mode!r}.")

  def quantize_unit(r):  # r in [0, 1], straight-through rounding
    return _elementwise(lambda v: _round_k_bit(v.astype(jnp.float32), k_bit).astype(v.dtype),
                        jnp.ones_like, r)

  def activations(x):
    clipped = _elementwise(lambda v: jnp.clip(v, 0, 1),
                           lambda v: ((v >= 0) & (v <= 1)).astype(jnp.float32), x)
    return quantize_unit(clipped)

  def weights(w):
    limited = jnp.tanh(w.astype(jnp.float32))
    peak = jax.lax.stop_gradient(jnp.max(jnp.abs(limited)))
    unit = jnp.where(peak > 0, limited / (2 * jnp.where(peak > 0, peak, 1.0)), 0.0) + 0.5
    return (2 * quantize_unit(unit) - 1).astype(w.dtype)

  return _with_precision(activations if mode == 'activations' else weights, k_bit)


@registry.register('quantizer', 'noop')
def noop(precision: int = 32) -> Quantizer:
  """The identity, declaring ``precision`` bits (larq ``NoOp``): for tensors that are
  already quantized, or to count a layer at a given precision in the summary."""
  precision = _integer('noop', 'precision', precision, 1)
  # A copy, not x itself: it leaves an op inside the precision scope for the summary.
  return _with_precision(lambda x: jnp.array(x, copy=True), precision)


# ----------------------------------------------------------------------------- learned quantizers
def _lsq_levels(bits: int, signed: bool):
  """(Qn, Qp): the quantized integers run from -Qn to Qp (LSQ section 2)."""
  if signed:
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1
  return 0, 2 ** bits - 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _lsq(x, step, qn, qp, grad_scale):
  v = jnp.clip(x.astype(jnp.float32) / step, -qn, qp)
  return (jnp.round(v) * step).astype(x.dtype)


def _lsq_fwd(x, step, qn, qp, grad_scale):
  return _lsq(x, step, qn, qp, grad_scale), (x, step)


def _lsq_bwd(qn, qp, grad_scale, residuals, g):
  x, step = residuals
  v = x.astype(jnp.float32) / step
  g32 = g.astype(jnp.float32)
  dx = g32 * ((v >= -qn) & (v <= qp))
  dstep = jnp.where(v <= -qn, -qn, jnp.where(v >= qp, qp, jnp.round(v) - v))
  # One step per tensor, or per channel (last axis): the gradient sums over what it scales.
  axes = tuple(range(x.ndim - step.ndim))
  return dx.astype(x.dtype), (jnp.sum(g32 * dstep, axis=axes) * grad_scale).astype(step.dtype)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


class LSQ(nn.Module):
  """Learned step size quantization (Esser et al. 2020, ICLR).

  ``q = round(clip(x / s, -Qn, Qp)) s`` with one learned step ``s`` (param ``step``).
  Gradients: ``dq/dx = 1`` for ``-Qn <= x / s <= Qp`` (straight through the rounding), else
  0; ``dq/ds = round(x/s) - x/s`` inside, ``-Qn`` for ``x/s <= -Qn``, ``Qp`` for ``x/s >= Qp``
  (eq. 3), summed and scaled by ``g = 1 / sqrt(numel(x) Qp)``.

  ``s`` is initialised as the paper does from the first input it sees, ``2 mean|x| /
  sqrt(Qp)``: for a kernel that is the initialised kernel. ``per_channel``: one step per
  channel of the last axis (a kernel's output channels), each initialised from its own
  channel and with ``g = 1 / sqrt(numel per channel Qp)``. A ``step_init`` given is used
  instead of the data (a range known in advance: softmax probabilities in [0, 1] take
  ``1 / Qp``, where a first batch could misjudge it). The trainer initialises the model on
  the first training batch (``trainer.first_inputs``), and a model fine-tuned from a float
  run on that batch with the loaded weights (``init_from_partial``). An all-zero first input
  (``model.init`` on a zeros example, as shape-only code does) gives no information, so then
  the step starts at ``2 sqrt(2/pi) / sqrt(Qp)``: the paper's formula for a unit-normal
  input (activations after batch norm).
  """
  bits: int = 4
  signed: bool = True
  step_init: float | None = None
  per_channel: bool = False

  @nn.compact
  def __call__(self, x):
    qn, qp = _lsq_levels(self.bits, self.signed)
    fallback = (self.step_init if self.step_init is not None
                else 2 * math.sqrt(2 / math.pi) / math.sqrt(qp))
    axes = tuple(range(x.ndim - 1)) if self.per_channel else None

    def init(rng):
      del rng
      from_data = 2 * jnp.mean(jnp.abs(x.astype(jnp.float32)), axis=axes) / math.sqrt(qp)
      if self.step_init is not None:
        return jnp.full_like(from_data, self.step_init)
      return jnp.where(from_data > 0, from_data, jnp.float32(fallback))

    step = self.param('step', init)
    per_step = x.size // (x.shape[-1] if self.per_channel else 1)
    return _lsq(x, step, qn, qp, 1 / math.sqrt(per_step * qp))


@registry.register('quantizer', 'lsq')
def lsq(bits: int = 4, signed: bool = True, step_init: float | None = None,
        per_channel: bool = False) -> Quantizer:
  """LSQ k-bit quantizer with a learned step size (Esser et al. 2020); see ``LSQ``.

  ``signed=True`` for weights and signed activations (levels -2^(b-1) .. 2^(b-1) - 1),
  ``False`` for non-negative activations (0 .. 2^b - 1); ``per_channel=True``: a step per
  channel of the last axis.
  """
  signed = _flag('lsq', 'signed', signed)
  per_channel = _flag('lsq', 'per_channel', per_channel)
  _check(isinstance(bits, numbers.Integral) and not isinstance(bits, bool)
         and bits >= (2 if signed else 1),
         f'lsq needs an integer bits >= {2 if signed else 1} (signed={signed}), got {bits!r}.')
  bits = int(bits)
  step_init = None if step_init is None else _number('lsq', 'step_init', step_init)

  def quantize(x):
    return LSQ(bits, signed, step_init, per_channel)(x)

  return _with_precision(quantize, bits)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _uniform(x, bits, per_channel):
  qp = 2 ** (bits - 1) - 1
  axes = tuple(range(x.ndim - 1)) if per_channel else None
  x32 = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(x32), axis=axes, keepdims=per_channel) / qp
  scale = jnp.where(scale > 0, scale, 1.0)
  return (jnp.round(x32 / scale) * scale).astype(x.dtype)


_uniform.defvjp(lambda x, bits, per_channel: (_uniform(x, bits, per_channel), None),
                lambda bits, per_channel, _, g: (g,))


@registry.register('quantizer', 'uniform')
def uniform(bits: int = 8, per_channel: bool = False) -> Quantizer:
  """Symmetric uniform (linear) quantization with the range of the tensor itself (Jacob et
  al. 2018's symmetric scheme; Q8BERT's, Zafrir et al. 2019, eq. 1-2): ``q = round(x / s)
  s`` with ``s = max|x| / (2^(b-1) - 1)`` over the tensor, or per channel of the last axis
  (``per_channel``); the gradient is the straight-through identity (every value is inside
  the range). For activations this is dynamic quantization (the range of each batch);
  Q8BERT keeps an EMA of the activations' range instead.
  """
  per_channel = _flag('uniform', 'per_channel', per_channel)
  _check(isinstance(bits, numbers.Integral) and not isinstance(bits, bool) and bits >= 2,
         f'uniform needs an integer bits >= 2, got {bits!r}.')
  bits = int(bits)
  return _with_precision(lambda x: _uniform(x, bits, per_channel), bits)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pact(x, alpha, bits):
  levels = 2 ** bits - 1
  y = jnp.clip(x.astype(jnp.float32), 0, alpha)
  return (jnp.round(y * levels / alpha) * alpha / levels).astype(x.dtype)


def _pact_fwd(x, alpha, bits):
  return _pact(x, alpha, bits), (x, alpha)


def _pact_bwd(bits, residuals, g):
  x, alpha = residuals
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  dx = g32 * ((x32 >= 0) & (x32 < alpha))
  dalpha = jnp.sum(g32 * (x32 >= alpha))
  return dx.astype(x.dtype), dalpha.astype(alpha.dtype)


_pact.defvjp(_pact_fwd, _pact_bwd)


class PACT(nn.Module):
  """Parameterized clipping activation (Choi et al. 2018, eq. 1-3).

  ``y = clip(x, 0, alpha)`` quantized to ``bits``: ``round(y (2^k - 1) / alpha) alpha /
  (2^k - 1)``, with a learned ``alpha`` (param ``alpha``, one per layer). Gradients with
  the straight-through estimator: ``dy/dx = 1`` on ``[0, alpha)``, else 0; ``dy/dalpha = 1``
  where ``x >= alpha``, else 0 (eq. 3). The paper also puts L2 weight decay on ``alpha``.
  """
  bits: int = 4
  alpha_init: float = 10.0

  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.constant(self.alpha_init), (), jnp.float32)
    return _pact(x, alpha, self.bits)


@registry.register('quantizer', 'pact')
def pact(bits: int = 4, alpha_init: float = 10.0) -> Quantizer:
  """PACT k-bit activation quantizer with a learned clipping level; see ``PACT``."""
  bits = _integer('pact', 'bits', bits, 1)
  alpha_init = _number('pact', 'alpha_init', alpha_init)

  def quantize(x):
    return PACT(bits, alpha_init)(x)

  return _with_precision(quantize, bits)


# ----------------------------------------------------------------------------- binary transformers
# BiT (Liu et al. NeurIPS 2022; facebookresearch/bit transformer/utils_quant.py) and BiBERT
# (Qin et al. ICLR 2022; htqin/BiBERT transformer/utils_quant.py, modeling_quant.py).
_BIT_ALPHA_EPS = 1e-5  # utils_quant.py: alpha = where(alpha > 1e-5, alpha, 1e-5)
THRESHOLDS = ('tensor', 'channel', 'none')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _bit_elastic(v, alpha, signed, grad_scale):
  """BiT's elastic binarization of ``v = x - beta`` (float32) with scale ``alpha``."""
  a = jnp.maximum(alpha, _BIT_ALPHA_EPS)
  if signed:
    return a * _sign(v)
  return a * jnp.clip(jnp.round(v / a), 0, 1)


def _bit_elastic_fwd(v, alpha, signed, grad_scale):
  return _bit_elastic(v, alpha, signed, grad_scale), (v, alpha)


def _bit_elastic_bwd(signed, grad_scale, residuals, g):
  v, alpha = residuals
  q = v / jnp.maximum(alpha, _BIT_ALPHA_EPS)
  if signed:
    inside = (q >= -1) & (q <= 1)
    dalpha = _sign(v)
  else:
    inside = (q >= 0) & (q <= 1)
    dalpha = jnp.where(q < 0, 0.0, jnp.where(q > 1, 1.0, jnp.round(q) - q))
  return g * inside, (jnp.sum(g * dalpha) * grad_scale).astype(alpha.dtype)


_bit_elastic.defvjp(_bit_elastic_fwd, _bit_elastic_bwd)


class ElasticQuant(nn.Module):
  """BiT's elastic activation quantizer (Liu et al. 2022, section 3.2, eq. 5-7), as the
  official code computes it (``ElasticQuantBinarizerSigned`` / ``...Unsigned`` after
  ``LearnableBias``): binary at ``bits=1``, LSQ-like at 2 bits (the W1A2 stage).

  With a learned scale ``alpha`` (param ``alpha``) and threshold ``beta`` (param ``beta``),
  one bit:

    non-negative inputs (``signed=False``: attention probabilities, after-ReLU/GELU
    activations):  X_B = alpha * round(clip((X - beta) / alpha, 0, 1))   (eq. 5), in {0, alpha}
    signed inputs (``signed=True``):  X_B = alpha * sign((X - beta) / alpha)
                                          = alpha * sign(X - beta), in {-alpha, +alpha}

  Gradients, with ``q = (X - beta) / alpha`` and the straight-through estimator for the
  rounding (eq. 6-7 and the code's backward):

    dX_B/dX = 1 inside the clip range (0 <= q <= 1; signed: -1 <= q <= 1), else 0;
    dX_B/dbeta = -dX_B/dX (``beta`` is subtracted, so through autodiff);
    dX_B/dalpha = 0 for q < 0, round(q) - q for 0 <= q <= 1, 1 for q > 1 (unsigned);
                  sign(X - beta) everywhere (signed);

  the ``alpha`` gradient summed over the tensor and multiplied, as the code (after LSQ),
  by ``1 / sqrt(numel(X) Qp)`` with ``Qp = 1`` at one bit (the paper does not scale it).
  ``alpha`` is clamped at 1e-5 in the computation (its gradient is unchanged), as the code.
  Rounding is half to even (as ``torch.round``): q = 0.5 gives 0. ``sign(0) = +1``
  (``torch.sign`` gives 0 there).

  ``bits >= 2``: LSQ (``_lsq``, Esser et al. 2020) of ``v = X - beta`` with step ``alpha``,
  levels -2^(b-1) .. 2^(b-1) - 1 (signed: {-2, -1, 0, 1} at 2 bits) or 0 .. 2^b - 1
  (unsigned); the unsigned input is shifted by its own minimum first (a constant: the code's
  ``min_val = input.min().item()``), ``alpha * round(clip((v - min v) / alpha, 0, Qp)) +
  min v``, so only the range above the minimum is quantized. The step's gradient at the
  clip boundaries follows LSQ's eq. 3 (``-Qn`` / ``Qp`` at ``q`` exactly on them; the
  code's strict comparisons give 0 there, a set of measure zero).

  ``alpha`` starts as the code's ``AlphaInit`` sets it from the first input it sees:
  ``2 mean|X| / sqrt(Qp)`` (signed) or ``4 mean|X| / sqrt(Qp)`` (unsigned; ``Qp = 1`` at one
  bit; the paper writes ``mean|X|``, its eq. 2): the trainer's first training batch, through
  the loaded weights when initialised from another run (see ``LSQ``). An all-zero first
  input gives no information; then ``alpha_init`` is used, by
  default ``2 sqrt(2/pi) / sqrt(Qp)``: the code's value for a unit-normal input, signed or
  (4 mean of its ReLU) unsigned. ``beta`` starts at 0. Both keep their names across bit
  widths, so a W1A1 stage initialised from a W1A2 one (``init_from_partial``) starts from
  its learned scales and thresholds, as BiT's code loads them.

  ``threshold``: ``'tensor'`` one ``beta`` (the paper's scalar), ``'channel'`` one per entry
  of the last axis (the code's ``LearnableBias(in_features)`` before a linear layer's input
  quantizer: for ``input_quantizer`` of a dense layer), ``'none'`` no ``beta`` (the code's
  attention probabilities, and its Q, K, V: there ``move_q/k/v`` are computed but their
  outputs unused). Do not use ``'channel'`` on attention probabilities (the last axis is
  the key position).
  """
  signed: bool = True
  threshold: str = 'tensor'
  alpha_init: float | None = None
  bits: int = 1

  @nn.compact
  def __call__(self, x):
    if self.threshold not in THRESHOLDS:
      raise ValueError(f'threshold must be one of {THRESHOLDS}, got {self.threshold!r}.')
    x32 = x.astype(jnp.float32)
    qn, qp = (0, 1) if self.bits == 1 else _lsq_levels(self.bits, self.signed)
    fallback = (self.alpha_init if self.alpha_init is not None
                else 2 * math.sqrt(2 / math.pi) / math.sqrt(qp))

    def init(rng):
      del rng
      from_data = (2.0 if self.signed else 4.0) * jnp.mean(jnp.abs(x32)) / math.sqrt(qp)
      return jnp.where(from_data > 0, from_data, jnp.float32(fallback))

    alpha = self.param('alpha', init)
    if self.threshold != 'none':
      shape = () if self.threshold == 'tensor' else (x.shape[-1],)
      x32 = x32 - self.param('beta', nn.initializers.zeros, shape, jnp.float32)
    grad_scale = 1 / math.sqrt(x.size * qp)
    if self.bits == 1:
      return _bit_elastic(x32, alpha, self.signed, grad_scale).astype(x.dtype)
    # The clamp at 1e-5 passes alpha's gradient unchanged, as the code's.
    step = alpha + jax.lax.stop_gradient(jnp.maximum(alpha, _BIT_ALPHA_EPS) - alpha)
    if self.signed:
      return _lsq(x32, step, qn, qp, grad_scale).astype(x.dtype)
    low = jax.lax.stop_gradient(jnp.min(x32))
    return (_lsq(x32 - low, step, qn, qp, grad_scale) + low).astype(x.dtype)


@registry.register('quantizer', 'bit_elastic')
def bit_elastic(signed: bool = True, threshold: str = 'tensor',
                alpha_init: float | None = None, bits: int = 1) -> Quantizer:
  """BiT's elastic activation with a learned scale and threshold; see ``ElasticQuant``.
  One bit: {0, alpha} (``signed=False``) or {-alpha, alpha}; ``bits=2``: the W1A2 stage's
  2-bit elastic quantizer (LSQ with BiT's initialisation and unsigned shift).

  As BiT binarizes a BERT (facebookresearch/bit, 1-bit activations with ``sym_quant_qkvo``
  True and ``sym_quant_ffn_attn`` False): ``signed=True, threshold='channel'`` for the
  inputs of the dense layers, ``signed=False, threshold='channel'`` for the input of the
  FFN's second dense layer (after the activation; BiT's script uses ReLU there),
  ``signed=True, threshold='none'`` for Q, K and V, ``signed=False, threshold='none'`` for
  the attention probabilities.
  """
  signed = _flag('bit_elastic', 'signed', signed)
  _check(threshold in THRESHOLDS,
         f'bit_elastic threshold must be one of {", ".join(THRESHOLDS)}, got {threshold!r}.')
  alpha_init = None if alpha_init is None else _number('bit_elastic', 'alpha_init', alpha_init)
  bits = _integer('bit_elastic', 'bits', bits, 1)

  def quantize(x):
    return ElasticQuant(signed, threshold, alpha_init, bits)(x)

  return _with_precision(quantize, bits)


def _reduce_axes(ndim: int, per: str):
  """The axes a per-``per`` statistic averages over: all of them (``'tensor'``), all but the
  last (``'column'``: one value per output unit of a (in, out) kernel), or all but the first
  (``'row'``: one value per row of a 2-D table, e.g. each token of an embedding table)."""
  if per == 'tensor':
    return tuple(range(ndim))
  if per == 'column':
    return tuple(range(ndim - 1))
  return tuple(range(1, ndim))


def _scaled_sign_forward(x, scale, centre):
  return (scale * _sign(x - centre)).astype(x.dtype)


@registry.register('quantizer', 'bit_weight')
def bit_weight(per: str = 'tensor') -> Quantizer:
  """BiT's weight binarizer, Binary Weight Networks (facebookresearch/bit ``BwnQuantizer``,
  ``--weight_quant_method bwn``; Rastegari et al. 2016).

  Forward ``alpha * sign(W - mean(W))``: the mean over the whole tensor, ``alpha =
  mean|W|`` (of W, not of the centred W) over the whole tensor (``per='tensor'``: the code's
  ``weight_layerwise=True``, its default for every linear layer), per output unit
  (``'column'``: per last-axis entry of a (in, out) kernel, a torch Linear weight's row) or
  per row of a 2-D table (``'row'``: per token of an embedding table, the code's
  ``embed_layerwise=False`` default for the word embeddings). Gradient: the identity (the
  code's backward passes ``grad_output`` unchanged; no clipping, none through the mean or
  alpha). Use it with ``kernel_scale='none'`` (alpha is in the output).

  It is not mcj's ``kernel_quantizer='ste_sign', kernel_scale='xnor'`` (nor
  ``magnitude_aware_sign``): those take ``sign(W)`` without centring, scale per output
  channel, and clip the gradient to ``|W| <= 1``.
  """
  _check(per in ('tensor', 'column', 'row'),
         f"bit_weight per must be 'tensor', 'column' or 'row', got {per!r}.")

  def quantize(w):
    w32 = w.astype(jnp.float32)
    scale = jnp.mean(jnp.abs(w32), axis=_reduce_axes(w.ndim, per), keepdims=True)
    out = _elementwise(_scaled_sign_forward, lambda x, s, c: jnp.ones_like(x), w32, scale,
                       jnp.mean(w32))
    return out.astype(w.dtype)

  return _with_precision(quantize, 1)


def _bibert_weight_derivative(x, scale):
  return _inside(x, 1.0)


@registry.register('quantizer', 'bibert_weight')
def bibert_weight(per: str = 'column') -> Quantizer:
  """BiBERT's weight (and embedding) binarizer (htqin/BiBERT ``QuantizeLinear`` /
  ``QuantizeEmbedding`` at ``weight_bits=1``).

  Per row of the torch weight (``per='column'``: per output unit of a (in, out) kernel,
  averaging over every other axis; ``'row'``: per token of an embedding table, averaging
  over its features): ``W_c = W - mean(W)``, forward ``mean|W| * sign(W_c)`` (``mean|W|`` of
  the uncentred W, a constant in the backward pass). Gradient that of ``clip(W_c, -1, 1)``
  (``binary.detach() - clipped.detach() + clipped``): ``g * 1[|W_c| <= 1]``, not scaled by
  ``mean|W|``, then through the centring (minus its mean over the row), as autodiff of the
  code gives. Use it with ``kernel_scale='none'``.
  """
  _check(per in ('column', 'row'), f"bibert_weight per must be 'column' or 'row', got {per!r}.")

  def quantize(w):
    w32 = w.astype(jnp.float32)
    axes = _reduce_axes(w.ndim, per)
    centred = w32 - jnp.mean(w32, axis=axes, keepdims=True)
    scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(w32), axis=axes, keepdims=True))
    out = _elementwise(lambda x, s: s * _sign(x), _bibert_weight_derivative, centred, scale)
    return out.astype(w.dtype)

  return _with_precision(quantize, 1)


@registry.register('quantizer', 'bibert_bool')
def bibert_bool(inclusive: bool = False) -> Quantizer:
  """BiBERT's ``bool`` (Qin et al. 2022, section 3.2, Bi-Attention): {0, 1} attention weights
  from the attention scores, ``B_A = bool(B_Q B_K^T / sqrt(D))``, which replaces the softmax;
  the output is ``B_A . sign(V)``.

  ``inclusive=False`` (default), the official code (``ZMeanBinaryQuantizer``:
  ``torch.sign``, then -1 -> 0): forward 1 for ``x > 0``, 0 for ``x <= 0``; gradient
  ``g * 1[|x| < 1]`` (the code zeroes it where ``x >= 1`` or ``x <= -1``).
  ``inclusive=True``, the paper's equations: 1 for ``x >= 0``; gradient ``g * 1[|x| <= 1]``.
  The two differ only at ``x = 0`` and ``|x| = 1``, which binary scores hit often: ``B_Q
  B_K^T / sqrt(D)`` is an integer over ``sqrt(D)``, 0 for an even D whenever half the signs
  agree, +-1 for a square D. Forward as the code and gradient as the paper is
  ``ste_heaviside``.

  It needs the pre-softmax scores: as ``attention_quantizer`` of
  ``layers.QuantDotProductAttention`` it would see softmax probabilities (all > 0: every
  weight 1), so Bi-Attention needs a layer option that applies it to the (scaled, masked)
  scores in place of the softmax. Masked scores (the float32 minimum) give 0 in both forms.
  """
  inclusive = _flag('bibert_bool', 'inclusive', inclusive)

  def forward(x):
    return (x >= 0 if inclusive else x > 0).astype(x.dtype)

  def derivative(x):
    return (jnp.abs(x) <= 1 if inclusive else jnp.abs(x) < 1).astype(jnp.float32)

  return _with_precision(lambda x: _elementwise(forward, derivative, x), 1)


# ----------------------------------------------------------------------------- lookup
def get(name: str, **kwargs) -> Quantizer:
  """The quantizer ``name`` built with ``kwargs``; unknown names list the valid ones."""
  return registry.build('quantizer', {'name': name, **kwargs})


# The learned scales of the quantizers (LSQ's step, PACT's clip level, BiT's alpha): the
# parameters ``optimizer.quantizer_lr`` trains at their own learning rate (BiT's and
# BiBERT's scripts: ``--clip_lr 1e-4`` for every ``clip_`` parameter).
LEARNED_SCALES = {'LSQ': 'step', 'PACT': 'alpha', 'ElasticQuant': 'alpha'}


def is_learned_scale(path) -> bool:
  """True for a param path (tuple of names) that ends in a quantizer's learned scale:
  ``(..., 'LSQ_0', 'step')``."""
  if len(path) < 2:
    return False
  module, leaf = str(path[-2]), str(path[-1])
  return any(module.startswith(name + '_') and leaf == scale
             for name, scale in LEARNED_SCALES.items())


def resolve(spec) -> Quantizer | None:
  """``None``/``''``/``'none'`` -> None; a callable -> itself; ``'name(k=v, ...)'`` -> get()."""
  if spec is None or callable(spec):
    return spec
  if isinstance(spec, str) and spec.strip().lower() in ('', 'none'):
    return None
  if not isinstance(spec, str):
    raise ConfigError(f'A quantizer is a name such as "ste_sign(clip_value=1.5)", got {spec!r}.')
  return registry.build('quantizer', spec)
