"""Quantized layers: larq's API in Flax.

``QuantConv`` / ``QuantDense`` / ``QuantDepthwiseConv`` quantize their input with
``input_quantizer`` and their latent float kernel with ``kernel_quantizer`` (a name such as
``'ste_sign'``, a spec ``'ste_sign(clip_value=1.5)'``, a function from
``mcj.quant.quantizers``, or None for full precision), then optionally scale the quantized
kernel per output channel: ``kernel_scale='xnor'`` multiplies by mean|W| (Rastegari et al.
2016; Bi-Real's magnitude-aware sign; ReActNet), treated as a constant in the backward pass
as the official code does, and ``'learned'`` by a trained per-channel factor (XNOR-Net++),
kept as its own param. ``pad_value`` pads the quantized input with a constant (larq's
``pad_values``: 1.0 keeps a binary conv's input in {-1, +1}).

Latent weights are float params; what the network computes with is
``quantized_kernel(kernel)``, which the layer also sows (collection
``quantized_kernels``) for ``mcj.nn.inspect.inference_params``.

``QuantEmbed`` is a lookup table quantized like a kernel (``embedding_quantizer``).
``quant_matmul`` and ``QuantDotProductAttention`` are the products of two activations
(attention's Q.K^T and A.V), each operand with its own quantizer.
"""
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcj.quant import quantizers

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
KERNEL_SCALES = ('none', 'xnor', 'learned')

def depthwise_conv(x, kernel, strides, padding):
  """A depthwise convolution (one filter per channel, multiplier 1): NHWC input, HWIO
  kernel of shape (kh, kw, 1, C), ``padding`` as ((top, bottom), (left, right)).

  On CPU it is computed as the sum of kh x kw shifted copies of the input, each scaled per
  channel (unrolled up to 3x3, a scan over the offsets beyond, which compiles as fast as
  the native op): XLA's CPU grouped convolution is 2-20x slower, forward and backward,
  which makes MobileNets crawl on a laptop. Elsewhere it is the native grouped convolution. Both
  are in the traced program (``lax.platform_dependent``), so op-level counting
  (``mcj.analysis.counting``, which takes a conditional's costlier branch) still sees the
  convolution's MACs.
  """
  strides = _pairs(strides)

  def native(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=x.shape[-1])

  def shifted(x, kernel):
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    kh, kw = kernel.shape[:2]
    ho = (xp.shape[1] - kh) // strides[0] + 1
    wo = (xp.shape[2] - kw) // strides[1] + 1
    size = (xp.shape[0], strides[0] * (ho - 1) + 1, strides[1] * (wo - 1) + 1, xp.shape[3])
    out = jnp.zeros(x.shape[:1] + (ho, wo) + x.shape[3:], x.dtype)
    if kh * kw <= 9:  # unrolled: fastest to run, and small enough to compile quickly
      for i in range(kh):
        for j in range(kw):
          window = jax.lax.slice(xp, (0, i, j, 0), (size[0], i + size[1], j + size[2], size[3]))
          out = out + window[:, ::strides[0], ::strides[1], :] * kernel[i, j, 0]
      return out

    def add_offset(out, offset_and_weight):  # larger kernels: one loop body to compile
      (i, j), weight = offset_and_weight
      window = jax.lax.dynamic_slice(xp, (0, i, j, 0), size)
      return out + window[:, ::strides[0], ::strides[1], :] * weight, None

    offsets = jnp.array([(i, j) for i in range(kh) for j in range(kw)])
    return jax.lax.scan(add_offset, out, (offsets, kernel.reshape(kh * kw, -1)))[0]

  return jax.lax.platform_dependent(x, kernel, cpu=shifted, default=native)


class DepthwiseConv(nn.Module):
  """A bias-free depthwise convolution with ``nn.Conv``'s param layout (``kernel`` of shape
  (kh, kw, 1, C)), computed by ``depthwise_conv``."""
  kernel_size: int
  strides: int = 1
  padding: int = 0
  kernel_init: Callable = conv_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, 1, c), jnp.float32)
    p = self.padding
    return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides,
                          ((p, p), (p, p)))


def _pairs(value, n=2):
  return tuple(value) if isinstance(value, Sequence) else (value,) * n


class QuantKernel(nn.Module):
  """Shared by the quantized layers: resolves quantizers and quantizes the kernel."""

  def input_q(self):
    return quantizers.resolve(self.input_quantizer)

  def kernel_q(self):
    return quantizers.resolve(self.kernel_quantizer)

  def quantized_kernel(self, kernel):
    """The kernel the layer computes with (float32): q(W), times the per-channel scale."""
    if self.kernel_scale not in KERNEL_SCALES:
      raise ValueError(f'kernel_scale must be one of {KERNEL_SCALES}, got {self.kernel_scale!r}.')
    q = self.kernel_q()
    # A pruned latent weight (exactly 0) computes as 0, not as sign(0) = +1.
    out = kernel if q is None else jnp.where(kernel == 0, 0.0, q(kernel))
    if self.kernel_scale == 'xnor':
      axes = tuple(range(kernel.ndim - 1))
      out = out * jax.lax.stop_gradient(jnp.mean(jnp.abs(kernel), axis=axes))
    # What inference stores as the kernel (see inspect.inference_params); a learned scale
    # stays a param of its own.
    self.sow('quantized_kernels', 'kernel', out, reduce_fn=lambda _, b: b)
    if self.kernel_scale == 'learned':
      out = out * self.param('kernel_scale', nn.initializers.ones, (kernel.shape[-1],))
    return out

  def quantize_input(self, x):
    q = self.input_q()
    return x if q is None else q(x)


class QuantConv(QuantKernel):
  """2-D convolution with quantized input and kernel (larq ``QuantConv2D``).

  ``padding`` is an int (symmetric, torch style), explicit pairs, or 'SAME' / 'VALID'.
  """
  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: Any = 'SAME'
  feature_group_count: int = 1
  kernel_dilation: int | Sequence[int] = 1
  use_bias: bool = False
  input_quantizer: Any = None
  kernel_quantizer: Any = None
  kernel_scale: str = 'none'
  pad_value: float = 0.0
  kernel_init: Callable = conv_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    ksize, strides = _pairs(self.kernel_size), _pairs(self.strides)
    dilation = _pairs(self.kernel_dilation)
    cin = x.shape[-1]
    if cin % self.feature_group_count:
      raise ValueError(f'{cin} input channels do not split into {self.feature_group_count} groups.')
    kernel = self.param('kernel', self.kernel_init,
                        (*ksize, cin // self.feature_group_count, self.features), jnp.float32)
    x = self.quantize_input(x.astype(self.dtype))
    effective = tuple((k - 1) * d + 1 for k, d in zip(ksize, dilation))
    pads = _explicit_padding(self.padding, x.shape[1:3], effective, strides)
    if self.pad_value and pads != 'VALID':
      x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=self.pad_value)
      pads = 'VALID'
    y = jax.lax.conv_general_dilated(
        x, self.quantized_kernel(kernel).astype(self.dtype), strides, pads,
        rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=self.feature_group_count)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(
          self.dtype)
    return y


class QuantDepthwiseConv(nn.Module):
  """Depthwise convolution (one filter per input channel, ``depth_multiplier`` outputs each)."""
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: Any = 'SAME'
  depth_multiplier: int = 1
  use_bias: bool = False
  input_quantizer: Any = None
  kernel_quantizer: Any = None
  kernel_scale: str = 'none'
  pad_value: float = 0.0
  kernel_init: Callable = conv_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    return QuantConv(
        cin * self.depth_multiplier, self.kernel_size, self.strides, self.padding,
        feature_group_count=cin, use_bias=self.use_bias,
        input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
        kernel_scale=self.kernel_scale, pad_value=self.pad_value,
        kernel_init=self.kernel_init, dtype=self.dtype, name='conv')(x)


class QuantDense(QuantKernel):
  """Dense layer with quantized input and kernel (larq ``QuantDense``)."""
  features: int
  use_bias: bool = True
  input_quantizer: Any = None
  kernel_quantizer: Any = None
  kernel_scale: str = 'none'
  kernel_init: Callable = dense_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    x = self.quantize_input(x.astype(self.dtype))
    y = x @ self.quantized_kernel(kernel).astype(self.dtype)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(
          self.dtype)
    return y


def _explicit_padding(padding, spatial, ksize, strides):
  """Padding as ((lo, hi), (lo, hi)) pairs, or 'VALID'."""
  if isinstance(padding, str):
    if padding.upper() == 'VALID':
      return 'VALID'
    if padding.upper() != 'SAME':
      raise ValueError(f'padding must be an int, pairs, SAME or VALID, got {padding!r}.')
    pads = []
    for n, k, s in zip(spatial, ksize, strides):
      total = max((math.ceil(n / s) - 1) * s + k - n, 0)
      pads.append((total // 2, total - total // 2))
    return tuple(pads)
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return tuple(_pairs(p) for p in padding)


class QuantEmbed(QuantKernel):
  """A lookup table (``num_embeddings`` rows of ``features``) whose rows are read from the
  quantized table ``embedding_quantizer(table)`` (None: float).

  The table is the param ``kernel`` (shape (num_embeddings, features)), so the summary,
  binary latent-weight clipping, Bop and ``inference_params`` see its precision as they see
  any quantized layer's kernel. Called on integer ids of any shape; the output has one more
  axis, ``features``.
  """
  num_embeddings: int
  features: int
  embedding_quantizer: Any = None
  embedding_init: Callable = nn.initializers.normal(0.02)
  dtype: Any = jnp.float32
  input_quantizer = None  # the ids are never quantized
  kernel_scale = 'none'

  def kernel_q(self):
    return quantizers.resolve(self.embedding_quantizer)

  @nn.compact
  def __call__(self, ids):
    table = self.param('kernel', self.embedding_init, (self.num_embeddings, self.features),
                       jnp.float32)
    return jnp.take(self.quantized_kernel(table), ids, axis=0).astype(self.dtype)


def sow_taps(module: nn.Module, **values):
  """Sows ``values`` into ``module``'s ``'intermediates'`` collection (a no-op unless the
  caller made it mutable, and at ``init``, so initialised variables never hold taps)."""
  if module.is_initializing():
    return
  for name, value in values.items():
    module.sow('intermediates', name, value)


def quant_matmul(subscripts: str, lhs, rhs, lhs_quantizer=None, rhs_quantizer=None):
  """``jnp.einsum(subscripts, lq(lhs), rq(rhs))``: a product of two activations with each
  operand quantized by its own quantizer (a name, a spec such as
  ``'ste_sign(clip_value=1.3)'``, a function, or None for float), resolved with
  ``quantizers.resolve``. The quantized operands are traced in their ``quantized_<bits>bit``
  scope, so the summary counts the product's MACs at both operands' precision (1-bit x
  1-bit: BOPs). A learned quantizer (``lsq``, ``pact``) must be called inside a module's
  ``@nn.compact`` method; it then becomes a child of that module.
  """
  lq, rq = quantizers.resolve(lhs_quantizer), quantizers.resolve(rhs_quantizer)
  lhs = lhs if lq is None else lq(lhs)
  rhs = rhs if rq is None else rq(rhs)
  return jnp.einsum(subscripts, lhs, rhs)


class QuantDotProductAttention(nn.Module):
  """Scaled dot-product attention with quantized products (no params of its own, except a
  learned quantizer's).

  ``query``, ``key``, ``value``: (batch, length, heads, head_dim) (query and key/value
  lengths may differ). Computes

    scores = (qk(Q) . qk(K)^T) / sqrt(head_dim),  masked where ``mask`` is False
    A = softmax(scores) over the keys (in float32), then dropout
    out = a(A) . v(V)                     -> (batch, query length, heads, head_dim)

  with ``qk = query_key_quantizer`` (applied to Q and to K; e.g. ``'ste_sign'``: a binary
  Q.K^T), ``a = attention_quantizer`` on the softmax probabilities (non-negative, so a
  binary one maps them to {0, 1} times a scale rather than to +-1: ``'lsq(bits=1,
  signed=False)'`` is {0, s} with a learned s, BiT's elastic binarization with no shift;
  ``'dorefa(k_bit=1)'`` rounds at 0.5) and ``v = value_quantizer`` on V. None (default)
  leaves an operand float. The scale 1/sqrt(head_dim) multiplies the scores after the
  product, so the product's operands are exactly the quantizers' outputs.

  ``mask``: booleans broadcastable to (batch, heads, query length, key length), True where a
  query may attend to a key; masked scores are set to the float32 minimum, so a masked key
  gets probability 0 (a fully masked row gets uniform weights, not NaN). Dropout
  (``dropout_rate``, at ``train=True``, rng ``'dropout'``) acts on the probabilities before
  ``attention_quantizer``, so A.V's operand is exactly the quantizer's output in training
  too (after a {0, 1} quantizer, dropout's rescaling would make it {0, 1 / (1 - rate)}, and
  a sign input quantizer of the next layer would then see values beyond its clip).

  ``score_quantizer`` (None: the softmax above) replaces the softmax: the attention weights
  are ``score_quantizer(dropout(scores))``, the scaled masked scores (dropout at
  ``train=True``, then ``attention_quantizer`` if set too). That is BiBERT's Bi-Attention
  (Qin et al. 2022, section 3.2) with ``'bibert_bool'``: ``bool(B_Q B_K^T / sqrt(D)) .
  sign(V)``, where the official code applies dropout to the scores and then its
  ``ZMeanBinaryQuantizer``. Masked keys get weight exactly 0 whatever the quantizer: it sees
  them at the float32 minimum (dropout cannot move them), and its output there is set to 0.

  Taps for distillation (``mcj.compress.distill.features``): when the collection
  ``'intermediates'`` is mutable (not at ``init``), the layer sows ``query``, ``key`` and
  ``value`` (the inputs, (batch, length, heads, head_dim), before their quantizers) and
  ``scores`` (the scaled, masked scores before the softmax, (batch, heads, query length,
  key length), float32, masked entries at the float32 minimum).
  """
  query_key_quantizer: Any = None
  attention_quantizer: Any = None
  value_quantizer: Any = None
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  score_quantizer: Any = None

  @nn.compact
  def __call__(self, query, key, value, mask=None, train: bool = False):
    query, key, value = (t.astype(self.dtype) for t in (query, key, value))
    sow_taps(self, query=query, key=key, value=value)
    scores = quant_matmul('...qhd,...khd->...hqk', query, key,
                          self.query_key_quantizer, self.query_key_quantizer)
    scores = scores.astype(jnp.float32) / math.sqrt(query.shape[-1])
    lowest = jnp.finfo(jnp.float32).min
    masked = scores if mask is None else jnp.where(mask, scores, lowest)
    sow_taps(self, scores=masked)
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    score_q = quantizers.resolve(self.score_quantizer)
    if score_q is None:
      probs = dropout(jax.nn.softmax(masked, axis=-1).astype(self.dtype))
    else:  # Bi-Attention: the weights from the (dropped-out) scores, no softmax
      dropped = dropout(scores)
      if mask is not None:
        dropped = jnp.where(mask, dropped, lowest)
      probs = score_q(dropped)
      if mask is not None:
        probs = jnp.where(mask, probs, 0.0)
      probs = probs.astype(self.dtype)
    q = quantizers.resolve(self.attention_quantizer)
    probs = probs if q is None else q(probs)
    return quant_matmul('...hqk,...khd->...qhd', probs, value, None, self.value_quantizer)
