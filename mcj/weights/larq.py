"""larq-zoo's Keras weight files for mcj's binary zoo.

Keras names the layers of most larq-zoo models by construction order (``quant_conv2d_3``,
``batch_normalization_5``), not by role, and its file lists them in the model's
topological order, which is not the order they were made in where a block has a branch
(Bi-Real's shortcut). So these layouts read a layer's place from its name: within one
layer type the counter is the construction order, and each layout lists mcj's modules in
the order larq-zoo's code constructs them (``_in_construction_order``). Real-to-Binary
and MeliusNet name their layers by role, and are mapped by name.

Two conventions of larq survive the conversion (``__main__``): a latent binary weight that
is exactly 0 computes as sign(0) = +1 in larq, where mcj reads an exact 0 as a pruned
weight, so such weights are stored as the smallest positive float; and kernels are already
Keras's (kh, kw, in, out) layout, depthwise kernels aside. Architecture options the Keras
versions need (TensorFlow's 'same' padding, Keras's BatchNorm epsilon) are the sources'
``options`` in ``__init__``.
"""
import re

from mcj.weights.torchvision import _modules as _layers  # first-seen order of a/b of a/b/c


def _pair(mcj: list, peer: list) -> list:
  """(peer layer, mcj module, kind) in order; layers one side lacks show as missing /
  unexpected in ``fill``'s one-line error."""
  out = [(p, module, kind) for p, (module, kind) in zip(peer, mcj)]
  out += [(f'<no file layer for {module}>', module, kind) for module, kind in mcj[len(peer):]]
  return out


def _counter(layer: str) -> tuple:
  """('quant_conv2d', 3) for 'quant_conv2d_3'; ('dense', 0) for 'dense'."""
  m = re.fullmatch(r'(.*?)(?:_(\d+))?', layer)
  return m.group(1), int(m.group(2) or 0)


def _in_construction_order(mcj: list, names) -> list:
  """Pairs ``mcj`` ([(module, Keras layer type, kind)] in larq-zoo's construction order)
  with the file's layers of each type, sorted by their counter."""
  by_type = {}
  for layer in sorted(_layers(names), key=lambda n: _counter(n)[1]):
    by_type.setdefault(_counter(layer)[0], []).append(layer)
  out = []
  for keras_type in dict.fromkeys(t for _, t, _ in mcj):
    ours = [(module, kind) for module, t, kind in mcj if t == keras_type]
    out += _pair(ours, by_type.pop(keras_type, []))
  return out  # layers of a type mcj lacks stay out: ``fill`` reports them as unexpected


def _blocks(paths, pattern) -> list:
  """The block prefixes matching ``pattern`` (groups are ints), in numeric order."""
  found = {m.group(0): tuple(int(g) for g in m.groups()) for p in paths
           for m in [re.match(pattern, p)] if m}
  return sorted(found, key=found.get)


def _has(paths, module) -> bool:
  return any(p.startswith(module + '/') for p in paths)


def binary_resnet(paths, names) -> list:
  """larq-zoo ``BiRealNet`` and ``BinaryResNetE18``: float stem conv + BN (ResNetE: a
  second BN after the max-pool), per block an optional downsampling shortcut (1x1 conv, BN:
  made first) and the binary conv + BN, then the dense classifier."""
  mcj = [('stem_conv', 'conv2d', 'keras_conv'), ('stem_bn', 'batch_normalization', 'keras_bn')]
  if _has(paths, 'stem_bn2'):
    mcj.append(('stem_bn2', 'batch_normalization', 'keras_bn'))
  for block in _blocks(paths, r'layer(\d+)_(\d+)'):
    if _has(paths, f'{block}/shortcut_conv'):
      mcj += [(f'{block}/shortcut_conv', 'conv2d', 'keras_conv'),
              (f'{block}/shortcut_bn', 'batch_normalization', 'keras_bn')]
    mcj += [(f'{block}/conv', 'quant_conv2d', 'keras_conv'),
            (f'{block}/bn', 'batch_normalization', 'keras_bn')]
  mcj.append(('fc', 'dense', 'keras_dense'))
  return _in_construction_order(mcj, names)


def binary_densenet(paths, names) -> list:
  """larq-zoo ``BinaryDenseNet28/37/45`` (and 37-dilated): stem conv (+ BN for inputs of
  50 pixels and more), per block BN + binary conv, per transition BN + 1x1 conv, final BN,
  dense."""
  mcj = [('stem_conv', 'conv2d', 'keras_conv')]
  if _has(paths, 'stem_bn'):
    mcj.append(('stem_bn', 'batch_normalization', 'keras_bn'))
  for s in range(len(_blocks(paths, r'section(\d+)_block0_'))):
    for block in _blocks(paths, rf'section{s}_block(\d+)'):
      mcj += [(f'{block}_bn', 'batch_normalization', 'keras_bn'),
              (f'{block}_conv', 'quant_conv2d', 'keras_conv')]
    if _has(paths, f'transition{s}_bn'):
      mcj += [(f'transition{s}_bn', 'batch_normalization', 'keras_bn'),
              (f'transition{s}_conv', 'conv2d', 'keras_conv')]
  mcj += [('final_bn', 'batch_normalization', 'keras_bn'), ('fc', 'dense', 'keras_dense')]
  return _in_construction_order(mcj, names)


def meliusnet(paths, names) -> list:
  """larq-zoo ``MeliusNet22`` (layers named by role). Its grouped stem convs are one Keras
  conv per group (``stem_s1_groupconv_conv0..3``): they fill one grouped mcj kernel."""
  groups = lambda stem: tuple(sorted((n for n in _layers(names)
                                      if n.startswith(f'stem_{stem}_groupconv_conv')),
                                     key=lambda n: int(n.rsplit('conv', 1)[1])))
  out = [('stem_s0_conv', 'stem_conv0', 'keras_conv'), ('stem_s0_bn', 'stem_bn0', 'keras_bn'),
         (groups('s1') or ('<absent stem_s1 groups>',), 'stem_conv1', 'keras_grouped_conv'),
         ('stem_s1_bn', 'stem_bn1', 'keras_bn'),
         (groups('s2') or ('<absent stem_s2 groups>',), 'stem_conv2', 'keras_grouped_conv'),
         ('stem_s2_bn', 'stem_bn2', 'keras_bn')]
  for block in _blocks(paths, r'section(\d+)_block(\d+)'):
    s, b = re.match(r'section(\d+)_block(\d+)', block).groups()
    for part in ('dense', 'improve'):
      out += [(f'section_{s}_block_{b}_{part}_bn', f'{block}_{part}_bn', 'keras_bn'),
              (f'section_{s}_block_{b}_{part}_binconv', f'{block}_{part}_conv', 'keras_conv')]
  for t in _blocks(paths, r'transition(\d+)'):
    s = t[len('transition'):]
    out += [(f'section_{s}_transition_bn', f'{t}_bn', 'keras_bn'),
            (f'section_{s}_transition_pw', f'{t}_conv', 'keras_conv')]
  return out + [('head_bn', 'final_bn', 'keras_bn'), ('head_dense', 'fc', 'keras_dense')]


def real_to_binary(paths, names) -> list:
  """larq-zoo ``RealToBinaryNet`` (``r2b_bnn_block_<b><half>_<layer>``, b = 2..9: two
  blocks per stage): stem conv, BN, PReLU; per unit BN, binary conv, the scaling's two dense
  layers, PReLU and the optional shortcut (1x1 conv, BN); ``block_10_logits``."""
  found = [m.group(1) for n in names for m in [re.match(r'(.*)_block_1_conv2d/', n)] if m]
  p = found[0] if found else 'r2b_bnn'
  out = [(f'{p}_block_1_conv2d', 'stem_conv', 'keras_conv'),
         (f'{p}_block_1_batch_norm', 'stem_bn', 'keras_bn'),
         (f'{p}_block_1_prelu', 'stem_prelu_slope', 'keras_prelu')]
  for unit in _blocks(paths, r'layer(\d+)_(\d+)[ab]'):
    stage, block, half = re.fullmatch(r'layer(\d+)_(\d+)([ab])', unit).groups()
    keras = f'{p}_block_{2 * int(stage) + int(block)}{half}'
    out += [(f'{keras}_batch_norm', f'{unit}/bn', 'keras_bn'),
            (f'{keras}_conv2d', f'{unit}/conv', 'keras_conv'),
            (f'{keras}_scaling_dense_reduce', f'{unit}/scale_reduce', 'keras_dense'),
            (f'{keras}_scaling_dense_expand', f'{unit}/scale_expand', 'keras_dense'),
            (f'{keras}_prelu', f'{unit}/prelu_slope', 'keras_prelu')]
    if _has(paths, f'{unit}/shortcut_conv'):
      out += [(f'{keras}_shortcut_conv2d', f'{unit}/shortcut_conv', 'keras_conv'),
              (f'{keras}_shortcut_batch_norm', f'{unit}/shortcut_bn', 'keras_bn')]
  return out + [(f'{p}_block_10_logits', 'fc', 'keras_dense')]


def quicknet(paths, names) -> list:
  """larq-zoo ``QuickNet`` / ``QuickNetSmall`` / ``QuickNetLarge``: stem (conv, BN,
  depthwise, BN without scale and offset, pointwise, BN), per block an optional transition
  (its frozen blur-pool ``depthwise_conv2d`` is a constant in mcj: skipped; 1x1 conv, BN)
  and the binary conv + BN, then the dense classifier. No branch is made out of order, so
  the file's order is the pairing."""
  mcj = [('stem_conv', 'keras_conv'), ('stem_bn', 'keras_bn'),
         ('stem_depthwise', 'keras_depthwise'), ('stem_depthwise_bn', 'keras_bn'),
         ('stem_pointwise', 'keras_conv'), ('stem_pointwise_bn', 'keras_bn')]
  blocks = sorted({(int(m.group(1)), int(m.group(2))) for p in paths
                   for m in [re.match(r'section(\d+)_block(\d+)_', p)] if m})
  for s, b in blocks:
    name = f'section{s}_block{b}'
    if any(p.startswith(f'{name}_transition_conv/') for p in paths):
      mcj += [(f'{name}_transition_conv', 'keras_conv'), (f'{name}_transition_bn', 'keras_bn')]
    mcj += [(f'{name}_conv', 'keras_conv'), (f'{name}_bn', 'keras_bn')]
  mcj.append(('fc', 'keras_dense'))
  layers = _layers(names)
  blur = [(layer, None, 'constant') for layer in layers if layer.startswith('depthwise_conv2d')]
  return _pair(mcj, [layer for layer in layers if not layer.startswith('depthwise_conv2d')]) + blur
