"""Other libraries' tensors -> mcj variables, and a converted model -> an mcj run workdir.

A *layout* lists, for one architecture, which peer layer fills which mcj layer:
``[(peer prefix, mcj module path, kind), ...]`` with kind

- ``conv``: torch ``weight`` (O, I/groups, kh, kw) -> flax ``kernel`` (kh, kw, I/groups, O)
  (+ ``bias`` when the mcj layer has one);
- ``linear``: torch ``weight`` (out, in) -> ``kernel`` (in, out), ``bias``;
- ``bn``: ``weight``, ``bias`` -> params ``scale``, ``bias``; ``running_mean``,
  ``running_var`` -> batch_stats ``mean``, ``var`` (``num_batches_tracked`` is dropped);
- ``conv_as_linear``: a 1x1 conv weight (out, in, 1, 1) applied to a pooled 1x1 map ->
  a Dense ``kernel`` (in, out) (timm's MobileNetV3 ``conv_head``);
- Keras (larq-zoo), names ``<layer>/<weight>``: ``keras_conv`` / ``keras_dense`` (``kernel``
  as it is, ``bias``), ``keras_depthwise`` ((kh, kw, C, 1) -> (kh, kw, 1, C)), ``keras_bn``
  (``gamma``, ``beta`` when the layer has them, ``moving_mean``, ``moving_variance``),
  ``keras_prelu`` (``alpha`` (1, 1, C) -> the mcj param at the layout's path, (C,)),
  ``keras_grouped_conv`` (a tuple of Keras convs, one per group, as MeliusNet's stem splits
  its grouped convs: their kernels, concatenated on the output axis, are one grouped mcj
  kernel);
- ``tensor``: one peer tensor (the prefix is its full name) -> one mcj param (the path is
  its full path), the same shape (a ViT's ``cls_token`` and ``pos_embed``, BERT's embedding
  tables);
- ``layer_norm``: torch ``weight``, ``bias`` -> ``scale``, ``bias`` (``layer_norm_tf``: the
  ``gamma``, ``beta`` of checkpoints converted from TensorFlow);
- ``constant``: a peer layer whose weights mcj computes as a constant (QuickNet's frozen
  blur-pool kernel) or does not use (BERT's pre-training heads): its tensors are accepted
  and unused (the mcj path is None);
- ``fresh``: an mcj module the file does not hold (a pre-trained BERT's classifier): it
  keeps ``target``'s values, which must then be real arrays (an initialised model).

A layout function takes mcj's param paths and the file's tensor names (some peers number
their blocks by stage, which only the file tells).

Names and transposes only: the architectures themselves match the peer's (padding,
epsilon, activations), which the tests check by equal logits. ``fill`` checks the whole
file against the layout first and reports every missing, unexpected and wrongly shaped
tensor in one line.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mcj.core import checkpoint as checkpoint_lib
from mcj.core.config import ConfigError
from mcj.core import workdir as workdir_lib

_IGNORED_SUFFIXES = ('num_batches_tracked',)


def _conv(w):
  return np.transpose(w, (2, 3, 1, 0))


def _conv_shape(shape):
  kh, kw, i, o = shape
  return (o, i, kh, kw)


def _pointwise(w):
  return np.transpose(w[:, :, 0, 0])


def _pointwise_shape(shape):
  i, o = shape
  return (o, i, 1, 1)


def _reversed_shape(shape):
  return tuple(reversed(shape))


def _depthwise(w):  # Keras (kh, kw, C, 1) -> flax grouped conv (kh, kw, 1, C)
  return np.transpose(w, (0, 1, 3, 2))


def _depthwise_shape(shape):
  kh, kw, one, c = shape
  return (kh, kw, c, one)


# kind -> (peer weight -> mcj kernel, mcj kernel shape -> the peer's weight shape)
_WEIGHTS = {'conv': (_conv, _conv_shape), 'linear': (np.transpose, _reversed_shape),
            'conv_as_linear': (_pointwise, _pointwise_shape)}
# Keras layers (larq-zoo): kernels already (kh, kw, in, out) / (in, out), depthwise aside.
_KERAS_WEIGHTS = {'keras_conv': (None, tuple), 'keras_dense': (None, tuple),
                  'keras_depthwise': (_depthwise, _depthwise_shape)}


def _entries(prefix: str, path: str, kind: str, flat: dict):
  """[(peer name, collection, mcj path, transform, peer shape)] for one layer of a layout."""
  params = flat['params']
  join = lambda *a: '.'.join(x for x in a if x)
  if kind in _WEIGHTS:
    transform, peer_shape = _WEIGHTS[kind]
    out = [(join(prefix, 'weight'), 'params', f'{path}/kernel', transform, peer_shape)]
    if f'{path}/bias' in params:
      out.append((join(prefix, 'bias'), 'params', f'{path}/bias', None, tuple))
    return out
  if kind == 'bn':
    return [(join(prefix, 'weight'), 'params', f'{path}/scale', None, tuple),
            (join(prefix, 'bias'), 'params', f'{path}/bias', None, tuple),
            (join(prefix, 'running_mean'), 'batch_stats', f'{path}/mean', None, tuple),
            (join(prefix, 'running_var'), 'batch_stats', f'{path}/var', None, tuple)]
  if kind in _KERAS_WEIGHTS:
    transform, peer_shape = _KERAS_WEIGHTS[kind]
    kernel = f'{path}/conv/kernel' if kind == 'keras_depthwise' else f'{path}/kernel'
    weight = 'depthwise_kernel' if kind == 'keras_depthwise' else 'kernel'
    out = [(f'{prefix}/{weight}', 'params', kernel, transform, peer_shape)]
    if f'{path}/bias' in params:
      out.append((f'{prefix}/bias', 'params', f'{path}/bias', None, tuple))
    return out
  if kind == 'tensor':
    return [(prefix, 'params', path, None, tuple)]
  if kind in ('layer_norm', 'layer_norm_tf'):
    weight, bias = ('weight', 'bias') if kind == 'layer_norm' else ('gamma', 'beta')
    return [(f'{prefix}.{weight}', 'params', f'{path}/scale', None, tuple),
            (f'{prefix}.{bias}', 'params', f'{path}/bias', None, tuple)]
  if kind == 'keras_prelu':  # the mcj path names the slope param itself
    return [(f'{prefix}/alpha', 'params', path, lambda a: a.reshape(-1),
             lambda shape: (1, 1) + tuple(shape))]
  if kind == 'keras_grouped_conv':  # prefix: the groups' layers, in output-channel order
    split = lambda shape: tuple(shape[:-1]) + (shape[-1] // len(prefix),)
    return [(tuple(f'{p}/kernel' for p in prefix), 'params', f'{path}/kernel',
             lambda parts: np.concatenate(parts, axis=-1), split)]
  if kind == 'keras_bn':  # scale / center may be off (no gamma / beta in the file then)
    out = [(f'{prefix}/{keras}', 'params', f'{path}/{mcj}', None, tuple)
           for keras, mcj in (('gamma', 'scale'), ('beta', 'bias')) if f'{path}/{mcj}' in params]
    return out + [(f'{prefix}/moving_mean', 'batch_stats', f'{path}/mean', None, tuple),
                  (f'{prefix}/moving_variance', 'batch_stats', f'{path}/var', None, tuple)]
  raise ValueError(f'unknown layout kind {kind!r}')


def fill(tensors: dict, layout, target: dict, source: str) -> dict:
  """``target`` (abstract or real ``{'params', 'batch_stats'}``) filled from ``tensors``
  by ``layout`` (a function of the target's param paths and the file's names); a file that does not fit is one
  ConfigError listing what differs."""
  params = traverse_util.flatten_dict(dict(target['params']), sep='/')
  stats = traverse_util.flatten_dict(dict(target.get('batch_stats', {})), sep='/')
  flat = {'params': params, 'batch_stats': stats}
  layers = layout(list(params), list(tensors))
  constants = tuple(prefix + sep for prefix, _, kind in layers if kind == 'constant'
                    for sep in './')
  fresh = tuple(path + '/' for _, path, kind in layers if kind == 'fresh')
  entries = [e for prefix, path, kind in layers if kind not in ('constant', 'fresh')
             for e in _entries(prefix, path, kind, flat)]
  covered = {(c, p) for _, c, p, _, _ in entries}
  covered |= {(c, p) for c in flat for p in flat[c] if p.startswith(fresh or '\0')}
  uncovered = sorted(f'{c}/{p}' for c in flat for p in flat[c] if (c, p) not in covered)
  if uncovered:  # a layout bug, not a user error
    raise AssertionError(f'the layout leaves mcj entries unfilled: {uncovered[:8]}')
  names = lambda name: name if isinstance(name, tuple) else (name,)  # grouped: several
  wanted = {n: tuple(peer_shape(flat[c][p].shape)) for name, c, p, _, peer_shape in entries
            for n in names(name)}
  given = {n: tuple(v.shape) for n, v in tensors.items()
           if not n.endswith(_IGNORED_SUFFIXES) and not n.startswith(constants or '\0')
           and n + '.' not in constants}
  mismatch = checkpoint_lib.describe_mismatch(wanted, given)
  if mismatch:
    raise ConfigError(f'{source} does not fit the model: {mismatch}.')
  out = {c: {p: np.asarray(v) for p, v in flat[c].items() if p.startswith(fresh or '\0')}
         for c in flat}
  for name, collection, path, transform, _ in entries:
    value = [np.asarray(tensors[n], np.float32) for n in names(name)]
    value = value if isinstance(name, tuple) else value[0]
    out[collection][path] = np.ascontiguousarray(transform(value) if transform else value)
  return {c: traverse_util.unflatten_dict(v, sep='/') for c, v in out.items()}


def zero_as_plus_one(variables: dict, binary_mask) -> dict:
  """Latent binary kernels with exact zeros set to the smallest positive float: larq
  computes sign(0) as +1, mcj reads an exact 0 as a pruned weight (computing 0)."""
  tiny = np.float32(np.finfo(np.float32).tiny)
  params = jax.tree.map(lambda w, binary: np.where(w == 0, tiny, w) if binary else w,
                        variables['params'], binary_mask)
  return {**variables, 'params': params}


def abstract_variables(model, image_shape) -> dict:
  """The model's variable shapes (no compute): what a layout and ``fill`` check against."""
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def initial_variables(model, image_shape) -> dict:
  """The model's initialised variables (seed 0): the target when a layout leaves a module
  ``fresh``."""
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return jax.device_get(model.init(jax.random.key(0), x, train=False))


def write_workdir(workdir: str, config: dict, variables: dict, say=print,
                  files: dict | None = None) -> None:
  """An mcj run workdir holding only ``variables`` at step 0 and ``config`` (config.json):
  what ``init_from``, ``distill.teachers`` and ``mcj.summary --workdir`` read; ``files``
  ({name in the workdir: file to copy}) come along (a BERT's vocab.txt). A workdir that
  already holds a run or a checkpoint is refused (nothing is replaced)."""
  if os.path.exists(os.path.join(workdir, 'config.json')) or \
      os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise ConfigError(f'{workdir} already holds a run (config.json or checkpoints/); give a '
                      'new --workdir.')
  taken = [name for name in files or {} if os.path.exists(os.path.join(workdir, name))]
  if taken:
    raise ConfigError(f'{workdir} already holds {taken[0]}; give a new --workdir.')
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.WorkdirLock(workdir):
    for name, origin in (files or {}).items():
      with open(origin, encoding='utf-8') as f:  # text (a vocab)
        workdir_lib.write_atomically(os.path.join(workdir, name), f.read())
    checkpointer = checkpoint_lib.Checkpointer(workdir, keep=1)
    checkpointer.save(0, {'step': np.asarray(0, np.int32), **variables})
    checkpointer.close()
    # config.json last: a workdir with one holds a complete checkpoint.
    workdir_lib.write_atomically(os.path.join(workdir, 'config.json'),
                                 json.dumps(config, indent=2, sort_keys=True))
  say(f'mcj: wrote {workdir} (config.json + checkpoints/0).')
