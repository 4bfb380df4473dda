"""Zero-cost proxies: scores of an untrained network on one minibatch that rank
architectures without training them.

Each proxy is ``proxy(model, variables, images, labels, num_classes) -> float`` (higher is
meant to be better; the search reports Spearman's rho against trained accuracy with its
sign). They follow the reference code the published correlations come from
(SamsungLabs/zero-cost-nas ``foresight/pruners/measures``, Abdelfattah et al. 2021;
BayesWatch/nas-without-training, Mellor et al. 2021):

- the weights that enter are the conv and dense kernels (params named ``kernel``), never
  biases or BatchNorm parameters;
- the network runs in training mode (BatchNorm normalises with the batch's statistics),
  the loss is the mean softmax cross-entropy, and one proxy's number is the sum over layers
  of its per-layer sums;
- ``grad_norm`` = sum over layers of ||dL/dW||_F; ``snip`` (Lee et al. 2019) = sum
  |W * dL/dW|; ``grasp`` (Wang et al. 2020) = sum -W * (H g) with g = dL/dW held constant
  and H the Hessian of L over the kernels; ``fisher`` (Theis et al. 2018, Turner et al.
  2020) = sum over layers and output channels k of |0.5 mean_n (sum_hw a * dL/da)^2| x the
  layer's fan-in, a being the conv / dense output (before BatchNorm), as the reference
  broadcasts each channel's value over its weights; ``synflow`` (Tanaka et al. 2020) = sum
  |W * dR/dW| with every parameter replaced by its absolute value, an all-ones input of
  batch 1, R = sum of the outputs, in float64, without BatchNorm; ``jacob_cov`` (Mellor et
  al. 2020, v1) = -sum_i [log(v_i + k) + 1 / (v_i + k)], k = 1e-5, v the eigenvalues of the
  correlation matrix of the per-example input gradients of sum(outputs); ``naswot``
  (Mellor et al. 2021) = log|det K| with K = sum over ReLUs of c c^T + (1 - c)(1 - c)^T,
  c the binary code (ReLU input > 0) of each example.

Departures, all forced by Flax (documented so the numbers compare): synflow's "without
BatchNorm" is BatchNorm in inference mode with its initial statistics (mean 0, variance 1:
a scale of 1/sqrt(1 + eps), which changes no ranking), since a Flax model cannot drop a
layer; the eigenvalues of jacob_cov come from ``eigvalsh`` (the matrix is symmetric; the
reference's general ``eig`` returns the same values); NASWOT's ReLUs are found in the
traced program (``jax.nn.relu`` calls), so activations written another way (hard-swish,
sign) give no codes, as the reference hooks only ``ReLU`` modules. A proxy a network does
not define (NASWOT without ReLUs, synflow through a quantizer that fixes float32, grasp's
Hessian through a sign) is NaN, and is left out of correlations.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from mcj.core import losses, registry
from mcj.nn import layers

# Modules whose outputs fisher perturbs: the layers that own a kernel.
_KERNEL_LAYERS = (nn.Conv, nn.Dense, layers.QuantConv, layers.QuantDense)


def _loss(model, variables, images, labels, num_classes):
  logits, _ = model.apply(variables, images, train=True, mutable=['batch_stats'],
                          rngs={'dropout': jax.random.key(0)})
  return losses.cross_entropy(logits, labels, num_classes).mean()


def _kernels(params) -> dict:
  """{path: kernel} of every conv / dense kernel."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {tuple(getattr(k, 'key', k) for k in path): leaf for path, leaf in flat
          if getattr(path[-1], 'key', None) == 'kernel'}


def _with_kernels(params, kernels):
  def swap(path, leaf):
    key = tuple(getattr(k, 'key', k) for k in path)
    return kernels.get(key, leaf)
  return jax.tree_util.tree_map_with_path(swap, params)


def _kernel_loss_fn(model, variables, images, labels, num_classes):
  """L as a function of the kernels alone (every other variable fixed)."""
  def loss(kernels):
    params = _with_kernels(variables['params'], kernels)
    return _loss(model, {**variables, 'params': params}, images, labels, num_classes)
  return loss


def _total(tree) -> float:
  return float(sum(float(jnp.sum(x)) for x in jax.tree.leaves(tree)))


def _kernel_grads(model, variables, images, labels, num_classes, hessian: bool = False):
  """(kernels, g = dL/dkernels, H g or None) in one jitted program, shared by grad_norm,
  snip and grasp (one compilation instead of three)."""
  kernels = _kernels(variables['params'])
  grad = jax.grad(_kernel_loss_fn(model, variables, images, labels, num_classes))

  def both(kernels):
    g = grad(kernels)
    if not hessian:
      return g, None
    return g, jax.jvp(grad, (kernels,), (jax.lax.stop_gradient(g),))[1]

  g, hg = jax.jit(both)(kernels)
  return kernels, g, hg


@registry.register('search_proxy', 'grad_norm')
def grad_norm(model, variables, images, labels, num_classes, grads=None) -> float:
  _, g, _ = grads or _kernel_grads(model, variables, images, labels, num_classes)
  return _total({k: jnp.linalg.norm(v.ravel()) for k, v in g.items()})


@registry.register('search_proxy', 'snip')
def snip(model, variables, images, labels, num_classes, grads=None) -> float:
  kernels, g, _ = grads or _kernel_grads(model, variables, images, labels, num_classes)
  return _total({k: jnp.abs(kernels[k] * g[k]) for k in g})


@registry.register('search_proxy', 'grasp')
def grasp(model, variables, images, labels, num_classes, grads=None) -> float:
  if grads is None or grads[2] is None:
    grads = _kernel_grads(model, variables, images, labels, num_classes, hessian=True)
  kernels, _, hg = grads  # hg: the Hessian-gradient product H g, g held constant
  return _total({k: -kernels[k] * hg[k] for k in kernels})


def _layer_outputs(model, variables, images):
  """{module path: output shape} of every kernel layer in a training-mode forward pass."""
  shapes = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and isinstance(context.module, _KERNEL_LAYERS):
      shapes[context.module.path] = out.shape
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                            rngs={'dropout': jax.random.key(0)}),
                   variables, images)
  return shapes


@registry.register('search_proxy', 'fisher')
def fisher(model, variables, images, labels, num_classes) -> float:
  shapes = _layer_outputs(model, variables, images)
  zeros = {path: jnp.zeros(shape, jnp.float32) for path, shape in shapes.items()}

  def loss(eps):
    def perturb(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == '__call__' and context.module.path in eps:
        out = out + eps[context.module.path].astype(out.dtype)
      return out

    activations = {}

    def keep(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == '__call__' and context.module.path in eps:
        activations[context.module.path] = out
      return out

    with nn.intercept_methods(perturb), nn.intercept_methods(keep):
      value = _loss(model, variables, images, labels, num_classes)
    return value, activations

  grads, acts = jax.jit(jax.grad(loss, has_aux=True))(zeros)
  params = variables['params']
  score = 0.0
  for path, grad in grads.items():
    act = acts[path].astype(jnp.float32)
    per_channel = (act * grad).reshape(act.shape[0], -1, act.shape[-1]).sum(axis=1)
    delta = 0.5 * jnp.mean(per_channel ** 2, axis=0)
    node = params
    for name in path:
      node = node[name]
    fan_in = int(np.prod(node['kernel'].shape[:-1]))
    score += float(jnp.sum(jnp.abs(delta))) * fan_in
  return score


def run_jaxpr(closed, args, hook):
  """Evaluates a closed jaxpr eqn by eqn (entering jitted calls), letting ``hook(eqn,
  inputs)`` see every eqn and replace its outputs (return a list) or not (return None).
  Custom-derivative calls are bound whole, so straight-through estimators keep working."""
  def run(jaxpr, consts, values):
    env = {}
    read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]
    for var, value in zip(jaxpr.constvars, consts):
      env[var] = value
    for var, value in zip(jaxpr.invars, values):
      env[var] = value
    for eqn in jaxpr.eqns:
      inputs = [read(v) for v in eqn.invars]
      outputs = hook(eqn, inputs)
      if outputs is None:
        if eqn.primitive.name in ('pjit', 'jit'):
          inner = eqn.params['jaxpr']
          outputs = run(inner.jaxpr, inner.consts, inputs)
        else:
          with eqn.ctx.manager:
            outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(eqn.params))
          if not eqn.primitive.multiple_results:
            outputs = [outputs]
      for var, value in zip(eqn.outvars, outputs):
        env[var] = value
    return [read(v) for v in jaxpr.outvars]

  return run(closed.jaxpr, closed.consts, args)


@registry.register('search_proxy', 'synflow')
def synflow(model, variables, images, labels, num_classes) -> float:
  with jax.enable_x64(True):
    # mcj models compute in their ``dtype`` (a module without one keeps its own).
    model64 = model.clone(dtype=jnp.float64) if hasattr(model, 'dtype') else model
    to64 = lambda tree: jax.tree.map(lambda x: jnp.abs(jnp.asarray(x, jnp.float64)), tree)
    params = to64(variables['params'])
    stats = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables.get('batch_stats', {}))
    ones = jnp.ones((1,) + tuple(images.shape[1:]), jnp.float64)
    forward = lambda p: model64.apply({'params': p, 'batch_stats': stats}, ones, train=False)
    closed = jax.make_jaxpr(forward)(params)

    def keep_float64(eqn, inputs):
      """Float32 stays out: casts to it (the logits' last) are skipped, and an op that
      meets a float32 value (a layer that fixes its own param dtype) gets it in float64."""
      if eqn.primitive.name == 'convert_element_type' and eqn.params['new_dtype'] == jnp.float32:
        return [jnp.asarray(inputs[0], jnp.float64)]
      dtypes = {getattr(x, 'dtype', None) for x in inputs}
      if jnp.float32 in dtypes and eqn.primitive.name not in ('pjit', 'jit'):
        up = [jnp.asarray(x, jnp.float64) if getattr(x, 'dtype', None) == jnp.float32 else x
              for x in inputs]
        params = eqn.primitive.get_bind_params(eqn.params)
        if 'preferred_element_type' in params and params['preferred_element_type'] is not None:
          params['preferred_element_type'] = jnp.float64
        with eqn.ctx.manager:
          out = eqn.primitive.bind(*up, **params)
        return out if eqn.primitive.multiple_results else [out]
      return None

    def total(p):
      out = run_jaxpr(closed, jax.tree.leaves(p), keep_float64)[0]
      return jnp.sum(out)

    try:
      g = jax.jit(jax.grad(total))(params)
    except TypeError:  # a quantizer's custom derivative fixes float32 inside: undefined
      return float('nan')
    kernels, grads = _kernels(params), _kernels(g)
    return float(sum(float(jnp.sum(jnp.abs(kernels[k] * grads[k]))) for k in kernels))


@registry.register('search_proxy', 'jacob_cov')
def jacob_cov(model, variables, images, labels, num_classes) -> float:
  def total(x):
    logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                            rngs={'dropout': jax.random.key(0)})
    return jnp.sum(logits)

  jacobian = np.asarray(jax.jit(jax.grad(total))(images), np.float64).reshape(images.shape[0], -1)
  return jacob_cov_score(jacobian)


def jacob_cov_score(jacobian, k: float = 1e-5) -> float:
  """-sum_i [log(v_i + k) + 1/(v_i + k)] over the eigenvalues of corrcoef(rows)."""
  with np.errstate(all='ignore'):
    corr = np.corrcoef(jacobian)
  if not np.all(np.isfinite(corr)):
    return float('nan')
  v = np.linalg.eigvalsh(corr)
  return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


def relu_inputs(model, variables, images) -> list:
  """The input of every ``jax.nn.relu`` call of a training-mode forward pass."""
  forward = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                     rngs={'dropout': jax.random.key(0)})[0]
  closed = jax.make_jaxpr(forward)(variables, images)

  def collect(leaves):
    found = []

    def record(eqn, inputs):
      if _is_relu(eqn):
        found.append(inputs[0])
      return None

    run_jaxpr(closed, leaves, record)
    return found

  return jax.jit(collect)(jax.tree.leaves((variables, images)))


def _is_relu(eqn) -> bool:
  """A ``jax.nn.relu`` call: a jit named relu, or the custom-derivative call around one."""
  if eqn.primitive.name in ('pjit', 'jit'):
    return eqn.params.get('name') == 'relu'
  if eqn.primitive.name == 'custom_jvp_call':
    inner = eqn.params['call_jaxpr'].jaxpr.eqns
    return len(inner) == 1 and inner[0].primitive.name in ('pjit', 'jit') and (
        inner[0].params.get('name') == 'relu')
  return False


@registry.register('search_proxy', 'naswot')
def naswot(model, variables, images, labels, num_classes) -> float:
  codes = [np.asarray(x > 0, np.float64).reshape(images.shape[0], -1)
           for x in relu_inputs(model, variables, images)]
  if not codes:
    return float('nan')
  return naswot_score(codes)


def naswot_score(codes) -> float:
  """log|det K|, K = sum over layers of c c^T + (1 - c)(1 - c)^T (Mellor et al. 2021)."""
  n = codes[0].shape[0]
  kernel = np.zeros((n, n))
  for c in codes:
    kernel += c @ c.T + (1 - c) @ (1 - c).T
  return float(np.linalg.slogdet(kernel)[1])


PROXIES = ('grad_norm', 'snip', 'grasp', 'fisher', 'synflow', 'jacob_cov', 'naswot')
