"""larq-zoo's Keras weight files for mcj's binary zoo.

Keras names layers by construction order (``quant_conv2d_3``, ``batch_normalization_5``),
not by role, so a larq layout pairs the file's weighted layers, in the model's layer order
(the file's ``layer_names``), with mcj's modules in network order. Two conventions of
larq survive the conversion (``__main__``): a latent binary weight that is exactly 0
computes as sign(0) = +1 in larq, where mcj reads an exact 0 as a pruned weight, so such
weights are stored as the smallest positive float; and kernels are already Keras's
(kh, kw, in, out) layout, depthwise kernels aside.
"""
import re

from mcj.weights.torchvision import _modules as _layers  # first-seen order of a/b of a/b/c


def _pair(mcj: list, peer: list) -> list:
  """(peer layer, mcj module, kind) in order; layers one side lacks show as missing /
  unexpected in ``fill``'s one-line error."""
  out = [(p, module, kind) for p, (module, kind) in zip(peer, mcj)]
  out += [(f'<absent layer {k}>', module, kind) for k, (module, kind) in
          enumerate(mcj[len(peer):], start=len(peer))]
  return out


def quicknet(paths, names) -> list:
  """larq-zoo ``QuickNet`` / ``QuickNetSmall`` / ``QuickNetLarge``: stem (conv, BN,
  depthwise, BN without scale and offset, pointwise, BN), per block an optional transition
  (its frozen blur-pool ``depthwise_conv2d`` is a constant in mcj: skipped; 1x1 conv, BN)
  and the binary conv + BN, then the dense classifier."""
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
