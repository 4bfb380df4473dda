"""torchvision's (and timm's, for ResNets) layer names for mcj's ResNets and MobileNets.

Each layout function takes mcj's flat param paths of the model (``'layer1_0/conv1/kernel'``,
...) and the file's tensor names (unused here) and returns ``[(torch prefix, mcj module path, kind)]`` (``convert.py``). mcj's
ResNet, MobileNetV2 and MobileNetV3 are torchvision's architectures (symmetric padding,
BN epsilon 1e-5 / 1e-3 for V3, ReLU6 / hardswish / hardsigmoid as torch defines them), so
names and transposes are all a conversion needs; ``tests/test_weights.py`` checks equal
logits against torchvision's own models.
"""
import re


def _modules(paths) -> list[str]:
  """Module paths (``a/b`` of ``a/b/kernel``) in first-seen order."""
  seen = []
  for p in paths:
    module = p.rsplit('/', 1)[0]
    if module not in seen:
      seen.append(module)
  return seen


def resnet(paths, names=()) -> list:
  """torchvision ``resnet18/34/50`` (and timm's ResNets, which keep the names): conv1 / bn1,
  ``layer{i}.{j}.conv{k}`` / ``bn{k}``, ``downsample.0`` / ``.1``, fc."""
  out = [('conv1', 'conv1', 'conv'), ('bn1', 'bn1', 'bn'), ('fc', 'fc', 'linear')]
  for module in _modules(paths):
    match = re.fullmatch(r'layer(\d+)_(\d+)/(conv\d|bn\d|downsample_conv|downsample_bn)',
                         module)
    if not match:
      continue
    stage, block, layer = match.groups()
    torch_layer = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(
        layer, layer)
    kind = 'bn' if 'bn' in layer else 'conv'
    out.append((f'layer{stage}.{block}.{torch_layer}', module, kind))
  return out


def _conv_bn(torch_prefix, mcj_prefix):
  return [(f'{torch_prefix}.0', f'{mcj_prefix}/conv', 'conv'),
          (f'{torch_prefix}.1', f'{mcj_prefix}/bn', 'bn')]


def _blocks(paths) -> list[int]:
  return sorted({int(m.group(1)) for p in paths for m in [re.match(r'block(\d+)/', p)] if m})


def mobilenet_v2(paths, names=()) -> list:
  """torchvision ``mobilenet_v2``: ``features.0`` the stem, ``features.{k+1}.conv`` block
  k (ConvBNReLU expand, ConvBNReLU depthwise, project conv, BN; no expand when t = 1),
  ``features.{n+1}`` the last 1x1 conv, ``classifier.1``."""
  blocks = _blocks(paths)
  out = _conv_bn('features.0', 'stem')
  for k in blocks:
    has_expand = any(p.startswith(f'block{k}/expand/') for p in paths)
    prefix, i = f'features.{k + 1}.conv', 0
    if has_expand:
      out += _conv_bn(f'{prefix}.0', f'block{k}/expand')
      i = 1
    out += _conv_bn(f'{prefix}.{i}', f'block{k}/dw')
    out += [(f'{prefix}.{i + 1}', f'block{k}/project/conv', 'conv'),
            (f'{prefix}.{i + 2}', f'block{k}/project/bn', 'bn')]
  out += _conv_bn(f'features.{len(blocks) + 1}', 'head')
  out.append(('classifier.1', 'classifier', 'linear'))
  return out


def mobilenet_v3(paths, names=()) -> list:
  """torchvision ``mobilenet_v3_large/small``: ``features.0`` the stem,
  ``features.{i+1}.block.{j}`` block i's expand / depthwise / SE (fc1, fc2) / project in
  order, ``features.{n+1}`` the last 1x1 conv, ``classifier.0`` and ``classifier.3``."""
  blocks = _blocks(paths)
  out = _conv_bn('features.0', 'stem')
  for i in blocks:
    j = 0
    for part in ('expand', 'dw', 'se', 'project'):
      if not any(p.startswith(f'block{i}/{part}/') for p in paths):
        continue
      prefix = f'features.{i + 1}.block.{j}'
      if part == 'se':
        out += [(f'{prefix}.fc1', f'block{i}/se/fc1', 'conv'),
                (f'{prefix}.fc2', f'block{i}/se/fc2', 'conv')]
      else:
        out += _conv_bn(prefix, f'block{i}/{part}')
      j += 1
  out += _conv_bn(f'features.{len(blocks) + 1}', 'head')
  out += [('classifier.0', 'classifier1', 'linear'), ('classifier.3', 'classifier2', 'linear')]
  return out
