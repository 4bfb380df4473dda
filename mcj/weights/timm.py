"""timm's layer names for mcj's MobileNetV2 and MobileNetV3 (timm's ResNets keep
torchvision's names: ``torchvision.resnet`` serves them).

timm builds its MobileNets from stages: ``blocks.{stage}.{j}``, a depthwise-separable
block first (``conv_dw``/``bn1``, SE, ``conv_pw``/``bn2``), then inverted residuals
(``conv_pw``/``bn1`` expand, ``conv_dw``/``bn2``, SE ``se.conv_reduce``/``conv_expand``,
``conv_pwl``/``bn3``). mcj numbers its blocks straight through, so the layouts read the
stage numbering from the file's names. The architectures are torchvision's with two
differences, both options of mcj's MobileNetV3 that the timm sources set: BatchNorm
epsilon 1e-5 (torch's default, against torchvision's 1e-3), and the last MobileNetV3 1x1
conv after pooling (``conv_head``, a Dense on the pooled features in mcj).
"""
import re

from mcj.weights.torchvision import _blocks


def _peer_blocks(names) -> list[str]:
  """``blocks.{s}.{j}`` prefixes of the file, in network order."""
  found = {(int(m.group(1)), int(m.group(2))) for n in names
           for m in [re.match(r'blocks\.(\d+)\.(\d+)\.', n)] if m}
  return [f'blocks.{s}.{j}' for s, j in sorted(found)]


def _block(prefix: str, mcj: str, paths) -> list:
  """One mcj inverted residual (``block{k}``) from a timm block at ``prefix``."""
  has = lambda part: any(p.startswith(f'{mcj}/{part}/') for p in paths)
  if has('expand'):
    out = [(f'{prefix}.conv_pw', f'{mcj}/expand/conv', 'conv'),
           (f'{prefix}.bn1', f'{mcj}/expand/bn', 'bn'),
           (f'{prefix}.conv_dw', f'{mcj}/dw/conv', 'conv'),
           (f'{prefix}.bn2', f'{mcj}/dw/bn', 'bn')]
    project, project_bn = 'conv_pwl', 'bn3'
  else:
    out = [(f'{prefix}.conv_dw', f'{mcj}/dw/conv', 'conv'),
           (f'{prefix}.bn1', f'{mcj}/dw/bn', 'bn')]
    project, project_bn = 'conv_pw', 'bn2'
  if has('se'):
    out += [(f'{prefix}.se.conv_reduce', f'{mcj}/se/fc1', 'conv'),
            (f'{prefix}.se.conv_expand', f'{mcj}/se/fc2', 'conv')]
  return out + [(f'{prefix}.{project}', f'{mcj}/project/conv', 'conv'),
                (f'{prefix}.{project_bn}', f'{mcj}/project/bn', 'bn')]


def _numbered(names, count: int) -> list[str]:
  """The file's first ``count`` block prefixes; blocks the file lacks get a name that
  shows as missing in ``fill``'s one-line error."""
  peer = _peer_blocks(names)
  return peer[:count] + [f'blocks.<absent {k}>' for k in range(len(peer), count)]


def mobilenet_v2(paths, names) -> list:
  """timm ``mobilenetv2_*``: ``conv_stem``/``bn1``, the blocks, ``conv_head``/``bn2``,
  ``classifier``."""
  blocks = _blocks(paths)
  out = [('conv_stem', 'stem/conv', 'conv'), ('bn1', 'stem/bn', 'bn')]
  for k, prefix in zip(blocks, _numbered(names, len(blocks))):
    out += _block(prefix, f'block{k}', paths)
  return out + [('conv_head', 'head/conv', 'conv'), ('bn2', 'head/bn', 'bn'),
                ('classifier', 'classifier', 'linear')]


def mobilenet_v3(paths, names) -> list:
  """timm ``mobilenetv3_large/small_*``: ``conv_stem``/``bn1``, the blocks, the last
  stage's 1x1 ``conv``/``bn1`` (mcj's ``head``), ``conv_head`` (mcj's ``classifier1``),
  ``classifier``."""
  blocks = _blocks(paths)
  prefixes = _numbered(names, len(blocks) + 1)
  out = [('conv_stem', 'stem/conv', 'conv'), ('bn1', 'stem/bn', 'bn')]
  for k, prefix in zip(blocks, prefixes):
    out += _block(prefix, f'block{k}', paths)
  last = prefixes[len(blocks)]
  return out + [(f'{last}.conv', 'head/conv', 'conv'), (f'{last}.bn1', 'head/bn', 'bn'),
                ('conv_head', 'classifier1', 'conv_as_linear'),
                ('classifier', 'classifier2', 'linear')]


def vit(paths, names=()) -> list:
  """timm ``vit_*`` / ``deit_*`` (``VisionTransformer``): ``patch_embed.proj``,
  ``cls_token``, ``pos_embed``, ``blocks.{i}`` (``norm1``, ``attn.qkv``, ``attn.proj``,
  ``norm2``, ``mlp.fc1``, ``mlp.fc2``), ``norm``, ``head``; mcj's names are timm's."""
  out = [('patch_embed.proj', 'patch_embed', 'conv'), ('cls_token', 'cls_token', 'tensor'),
         ('pos_embed', 'pos_embed', 'tensor')]
  for i in sorted({int(m.group(1)) for p in paths for m in [re.match(r'block_(\d+)/', p)] if m}):
    out += [(f'blocks.{i}.{x}', f'block_{i}/{x.replace(".", "/")}',
             'layer_norm' if x.startswith('norm') else 'linear')
            for x in ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2')]
  return out + [('norm', 'norm', 'layer_norm'), ('head', 'head', 'linear')]
