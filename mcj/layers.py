"""Quantized layers (larq's API in Flax) and the tools that inspect them.

``QuantConv`` / ``QuantDense`` / ``QuantDepthwiseConv`` quantize their input with
``input_quantizer`` and their latent float kernel with ``kernel_quantizer`` (a name such as
``'ste_sign'``, a spec ``'ste_sign(clip_value=1.5)'``, a function from ``mcj.quantizers``,
or None for full precision), then optionally scale the quantized kernel per output channel:
``kernel_scale='xnor'`` multiplies by mean|W| (Rastegari et al. 2016; Bi-Real's
magnitude-aware sign; ReActNet), treated as a constant in the backward pass as the official
code does, and ``'learned'`` by a trained per-channel factor (XNOR-Net++). ``pad_value``
pads the quantized input with a constant (larq's ``pad_values``: 1.0 keeps a binary conv's
input in {-1, +1}).

Latent weights are float params; what the network computes with is
``quantized_kernel(kernel)``. ``inference_params`` swaps every latent kernel for that
value, so a binary kernel is stored as exactly +-1 (or +-alpha per channel), and
``binary_kernel_mask`` marks the latent kernels of 1-bit layers (for Bop and clipping).

``RPReLU`` and ``LearnableBias`` are ReActNet's (Liu et al. 2020) shift-and-PReLU pieces.
"""
import math
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mcj import quantizers

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
KERNEL_SCALES = ('none', 'xnor', 'learned')


def batch_norm(train: bool, *, axis_name=None, dtype=jnp.float32, momentum=0.9, epsilon=1e-5,
               **options) -> nn.BatchNorm:
  """BatchNorm as every mcj model uses it: torch's defaults (flax momentum 0.9 = torch 0.1),
  statistics averaged over the devices of ``axis_name``, and the two-pass variance
  (E[x^2]-E[x]^2 cancels badly and makes 1- and n-device runs drift apart). ``options``
  go to ``nn.BatchNorm`` (``name``, ``use_scale``, ...)."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                      use_fast_variance=False, axis_name=axis_name, dtype=dtype, **options)


def _pairs(value, n=2):
  return tuple(value) if isinstance(value, Sequence) else (value,) * n


class _QuantKernel(nn.Module):
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
    # What inference stores as the kernel (see inference_params); a learned scale stays apart.
    self.sow('quantized_kernels', 'kernel', out, reduce_fn=lambda _, b: b)
    if self.kernel_scale == 'learned':
      out = out * self.param('kernel_scale', nn.initializers.ones, (kernel.shape[-1],))
    return out

  def quantize_input(self, x):
    q = self.input_q()
    return x if q is None else q(x)


class QuantConv(_QuantKernel):
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


class QuantDense(_QuantKernel):
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


class LearnableBias(nn.Module):
  """Adds a learned per-channel shift (ReActNet's RSign threshold / RPReLU shifts)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return x + bias.astype(self.dtype)


class RPReLU(nn.Module):
  """ReActNet's RPReLU: shift, PReLU with a per-channel slope (init 0.25), shift."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = LearnableBias(self.dtype, name='shift_in')(x)
    slope = self.param('slope', nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    x = jnp.where(x >= 0, x, slope.astype(x.dtype) * x)
    return LearnableBias(self.dtype, name='shift_out')(x)


class RSign(nn.Module):
  """ReActNet's RSign: a learned per-channel threshold, then a sign quantizer."""
  quantizer: Any = 'approx_sign'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return quantizers.resolve(self.quantizer)(LearnableBias(self.dtype, name='threshold')(x))


# ----------------------------------------------------------------------------- inspection
def trace_layers(model: nn.Module, input_shape, **call_kwargs):
  """Runs ``model.init`` abstractly and returns ``(variables, calls)``.

  ``calls`` lists ``(module, input, output)`` for every module ``__call__`` in call order
  (shapes only, via ``jax.eval_shape``), and ``variables`` the abstract variables.
  """
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      calls.append((context.module, args[0] if args else None, out))
    return out

  def init():
    with nn.intercept_methods(interceptor):
      x = jnp.zeros((1, *input_shape), jnp.float32)
      return model.init(jax.random.key(0), x, train=False, **call_kwargs)

  variables = jax.eval_shape(init)
  return variables, calls


def numpy_tree(tree):
  """A nested dict of numpy copies of ``tree`` (editable in place, e.g. by a model's
  ``shrink``)."""
  if hasattr(tree, 'items'):
    return {k: numpy_tree(v) for k, v in tree.items()}
  return np.array(tree)


def own_params(params, path) -> dict:
  """The arrays a module at ``path`` owns directly (not those of its children)."""
  node = params
  for part in path:
    node = node.get(part, {}) if isinstance(node, Mapping) else {}
  return {k: v for k, v in node.items() if not isinstance(v, Mapping)}


def is_quant_layer(module) -> bool:
  return isinstance(module, _QuantKernel)


def binary_kernel_mask(model: nn.Module, input_shape, **call_kwargs):
  """A params-shaped tree: True at the latent kernels of layers with a 1-bit kernel quantizer."""
  variables, calls = trace_layers(model, input_shape, **call_kwargs)
  binary = {module.path for module, _, _ in calls
            if is_quant_layer(module) and quantizers.precision_of(module.kernel_q()) == 1}
  flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(variables['params']),
      [tuple(k.key for k in path[:-1]) in binary and path[-1].key == 'kernel'
       for path, _ in flat])


def inference_params(model: nn.Module, variables, input_shape, **call_kwargs):
  """``variables['params']`` with every quantized layer's latent kernel replaced by the kernel
  it computes with: exactly +-1 (or +-alpha per channel with XNOR scaling) for binary
  layers; a learned per-channel scale stays a separate param (it folds into the next BN).

  For sign and ternary quantizers, applying the model to these params gives the same
  outputs (sign of +-alpha is +-1 and mean|+-alpha| is alpha), so the result is both the
  deployable and a checkable form.
  """
  x = jnp.zeros((1, *input_shape), jnp.float32)
  _, sown = model.apply(variables, x, train=False, mutable=['quantized_kernels'], **call_kwargs)
  quantized = sown.get('quantized_kernels', {})

  def swap(params, kernels):
    out = dict(params)
    for key, sub in kernels.items():
      if key == 'kernel' and not isinstance(sub, Mapping):
        out['kernel'] = sub
      else:
        out[key] = swap(params[key], sub)
    return out

  return swap(dict(variables['params']), quantized)
