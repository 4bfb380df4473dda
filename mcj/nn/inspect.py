"""Looking inside a model without running it: module calls, binary kernels, the deployed
params. Shapes come from ``jax.eval_shape``; nothing is materialised."""
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcj.nn import layers as layers_lib
from mcj.quant import quantizers


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


def is_quant_layer(module) -> bool:
  """True for the layers whose kernel (and input) a quantizer may touch."""
  return isinstance(module, layers_lib.QuantKernel)


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
  layers; a learned per-channel scale (``kernel_scale='learned'``) stays a separate param.

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
