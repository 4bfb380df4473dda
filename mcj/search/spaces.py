"""Search spaces: what an architecture is, as plain data, and the model block it trains as.

A space is registered as ``search_space`` and built from a spec (``'mobilenet_v3(variant=
"mnist")'``). An *encoding* is a JSON-able dict; the space samples, mutates and crosses
encodings, checks them (``validate``: one ConfigError line), gives each a canonical ``key``
(equal architectures, equal keys) and turns one into the config overrides ``mcj.train``
trains unchanged (``overrides``: a ``model`` block, plus ``data.image_size`` where the
resolution is searched). ``size()`` is the number of distinct points.

Randomness comes from the ``numpy.random.Generator`` the caller passes: a strategy seeds it
from (search seed, candidate index), so a search is reproducible and resumable.
"""
import json
import math

from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.models.cnn import mobilenet


def canonical(encoding: dict) -> str:
  """The key of an encoding: sorted JSON (equal architectures, equal keys)."""
  return json.dumps(encoding, sort_keys=True, separators=(',', ':'))


def _pick(rng, choices):
  """One of ``choices`` as a plain Python value (JSON-able)."""
  value = choices[int(rng.integers(len(choices)))]
  return value.item() if hasattr(value, 'item') else value


class SearchSpace:
  """The interface every space implements (see the module docstring)."""
  name = ''

  def sample(self, rng) -> dict:
    raise NotImplementedError

  def mutate(self, encoding: dict, rng, prob: float) -> dict:
    raise NotImplementedError

  def crossover(self, a: dict, b: dict, rng) -> dict:
    raise NotImplementedError

  def validate(self, encoding: dict) -> None:
    raise NotImplementedError

  def overrides(self, encoding: dict) -> dict:
    """Config overrides that make ``encoding`` a trainer config: ``{'model': {...}}``."""
    raise NotImplementedError

  def size(self) -> int:
    raise NotImplementedError

  def key(self, encoding: dict) -> str:
    return canonical(encoding)

  def describe(self, encoding: dict) -> str:
    """A short human-readable form for the console line."""
    return self.key(encoding)

  def _check(self, ok, encoding, what):
    if not ok:
      raise ConfigError(f'Not a point of search space {self.name!r}: {what} '
                        f'(encoding {canonical(encoding)}).')


# ------------------------------------------------------------------------- MobileNetV3
# Once-for-All's MobileNetV3 space (Cai et al. 2020, mit-han-lab/once-for-all ofa_mbv3):
# a fixed stem and first block, then 5 stages of inverted-residual blocks with the stage
# widths, strides, activations and SE of MobileNetV3-Large.
OFA_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)  # stem, first block, 5 stages, head
OFA_STAGE_ACTS = ('relu', 'relu', 'hardswish', 'hardswish', 'hardswish')
OFA_STAGE_SE = (False, True, False, True, True)
# Per variant: stem stride, the 5 stages' strides, resolutions, width multipliers.
MBV3_VARIANTS = {
    'imagenet': dict(stem_stride=2, strides=(2, 2, 2, 1, 2),
                     resolutions=(128, 144, 160, 176, 192, 208, 224), widths=(1.0, 1.2)),
    # 28x28 (MNIST): 14 -> 14 -> 7 -> 4 -> 4 -> 4; head narrowed with the width.
    'mnist': dict(stem_stride=2, strides=(1, 2, 2, 1, 1), resolutions=(),
                  widths=(0.25, 0.35, 0.5, 0.75)),
    # 8x8 (digits): 8 -> 8 -> 4 -> 4 -> 2 -> 2.
    'digits': dict(stem_stride=1, strides=(1, 2, 1, 2, 1), resolutions=(),
                   widths=(0.25, 0.35, 0.5)),
}


@registry.register('search_space', 'mobilenet_v3')
class MobileNetV3Space(SearchSpace):
  """Once-for-All's MobileNetV3 space: per stage depth {2,3,4}; per block kernel {3,5,7}
  and expand ratio {3,4,6} (of the block's input channels, rounded to a multiple of 8 as
  OFA does); a width multiplier; the resolution (224-class variant only). SE and activation
  per stage as MobileNetV3-Large. Encoding::

    {'stages': [[[kernel, expand], ...] x depth] x 5, 'width': 1.0, 'resolution': 224}

  ``variant``: 'imagenet' (OFA's strides and resolutions 128-224), 'mnist' (28x28) or
  'digits' (8x8): the same stages with fewer downsamplings and narrower widths.
  ``bn_momentum``: None is MobileNetV3's 0.99 on 'imagenet' and 0.9 on the small-input
  variants (short trainings). ``head``: 'torchvision' (the classifier's first Dense has a bias, as torchvision's
  MobileNetV3) or 'ofa' (no bias, OFA's feature-mix conv: ``last_channel`` params fewer;
  OFA's BN eps 1e-5 / momentum 0.1 differ from torchvision's 1e-3 / 0.01 used here, which
  changes no count). Published points: MobileNetV3-Large is
  ``MOBILENET_V3_LARGE`` in the space with ``expand_choices`` extended by 2.3 and 2.5 (its
  stage-3 blocks expand 80 to 200 and 184 channels), with torchvision's exact counts; OFA's
  largest subnet is ``max_point()`` with ``head='ofa'``.
  """
  name = 'mobilenet_v3'

  def __init__(self, variant: str = 'imagenet', depth_choices=(2, 3, 4),
               kernel_choices=(3, 5, 7), expand_choices=(3, 4, 6), width_choices=None,
               resolution_choices=None, head: str = 'torchvision', last_channel=None,
               dropout_rate: float = 0.2, bn_momentum=None):
    if variant not in MBV3_VARIANTS:
      raise ConfigError(f'Unknown mobilenet_v3 variant {variant!r}. Valid: '
                        f'{", ".join(MBV3_VARIANTS)}.')
    if head not in ('torchvision', 'ofa'):
      raise ConfigError(f'mobilenet_v3 head must be torchvision or ofa, got {head!r}.')
    spec = MBV3_VARIANTS[variant]
    self.variant, self.head, self.dropout_rate = variant, head, dropout_rate
    self.stem_stride, self.strides = spec['stem_stride'], spec['strides']
    self.depths = tuple(depth_choices)
    self.kernels = tuple(kernel_choices)
    self.expands = tuple(expand_choices)
    self.widths = tuple(width_choices or spec['widths'])
    self.resolutions = tuple(spec['resolutions'] if resolution_choices is None
                             else resolution_choices)
    self.last_channel = last_channel
    # Short search trainings on small inputs: running statistics must settle in fewer steps.
    self.bn_momentum = bn_momentum or (0.99 if variant == 'imagenet' else 0.9)
    for name, values in (('depth_choices', self.depths), ('kernel_choices', self.kernels),
                         ('expand_choices', self.expands), ('width_choices', self.widths)):
      if not values:
        raise ConfigError(f'mobilenet_v3 {name} is empty: give at least one value.')
    if any(k % 2 == 0 or k < 1 for k in self.kernels):
      raise ConfigError(f'mobilenet_v3 kernel_choices must be odd, got {self.kernels}.')

  # ---- encodings
  def _block(self, rng):
    return [_pick(rng, self.kernels), _pick(rng, self.expands)]

  def sample(self, rng) -> dict:
    stages = [[self._block(rng) for _ in range(_pick(rng, self.depths))] for _ in range(5)]
    encoding = {'stages': stages, 'width': _pick(rng, self.widths)}
    if self.resolutions:
      encoding['resolution'] = _pick(rng, self.resolutions)
    return encoding

  def max_point(self) -> dict:
    """The largest network of the space (OFA's ``set_max_net``)."""
    encoding = {'stages': [[[max(self.kernels), max(self.expands)]] * max(self.depths)] * 5,
                'width': max(self.widths)}
    if self.resolutions:
      encoding['resolution'] = max(self.resolutions)
    return json.loads(json.dumps(encoding))

  def mutate(self, encoding, rng, prob):
    """Each gene (a stage's depth, a block's kernel and expand ratio, width, resolution)
    is resampled with probability ``prob``; a deeper stage gets new random blocks."""
    out = json.loads(json.dumps(encoding))
    for blocks in out['stages']:
      if rng.random() < prob:
        depth = _pick(rng, self.depths)
        del blocks[depth:]
        blocks.extend(self._block(rng) for _ in range(depth - len(blocks)))
      for block in blocks:
        if rng.random() < prob:
          block[0] = _pick(rng, self.kernels)
        if rng.random() < prob:
          block[1] = _pick(rng, self.expands)
    if rng.random() < prob:
      out['width'] = _pick(rng, self.widths)
    if self.resolutions and rng.random() < prob:
      out['resolution'] = _pick(rng, self.resolutions)
    return out

  def crossover(self, a, b, rng):
    """Uniform crossover: each stage's depth, each block position and each scalar from
    either parent (a block only one parent has comes from it)."""
    stages = []
    for sa, sb in zip(a['stages'], b['stages']):
      depth = len(sa) if rng.random() < 0.5 else len(sb)
      stages.append([list((sa if (rng.random() < 0.5 and j < len(sa)) or j >= len(sb)
                           else sb)[j]) for j in range(depth)])
    out = {'stages': stages, 'width': a['width'] if rng.random() < 0.5 else b['width']}
    if self.resolutions:
      out['resolution'] = a['resolution'] if rng.random() < 0.5 else b['resolution']
    return out

  def validate(self, encoding):
    self._check(isinstance(encoding, dict) and isinstance(encoding.get('stages'), list)
                and len(encoding['stages']) == 5, encoding, 'needs 5 stages')
    for i, blocks in enumerate(encoding['stages']):
      self._check(len(blocks) in self.depths, encoding,
                  f'stage {i} has {len(blocks)} blocks, choices {self.depths}')
      for block in blocks:
        self._check(len(block) == 2 and block[0] in self.kernels and block[1] in self.expands,
                    encoding, f'block {block} needs [kernel in {self.kernels}, expand in '
                    f'{self.expands}]')
    self._check(encoding.get('width') in self.widths, encoding,
                f'width {encoding.get("width")} not in {self.widths}')
    if self.resolutions:
      self._check(encoding.get('resolution') in self.resolutions, encoding,
                  f'resolution {encoding.get("resolution")} not in {self.resolutions}')
    extra = set(encoding) - {'stages', 'width', 'resolution'}
    self._check(not extra and (self.resolutions or 'resolution' not in encoding), encoding,
                f'unexpected keys {sorted(extra) or ["resolution"]}')

  def size(self) -> int:
    per_stage = sum((len(self.kernels) * len(self.expands)) ** d for d in self.depths)
    return per_stage ** 5 * len(self.widths) * max(1, len(self.resolutions))

  # ---- the network
  def channels(self, width: float) -> dict:
    """Stem, first-block, stage, head and last widths at ``width`` (OFA's rule:
    make_divisible(base x width, 8); the last layer is widened, never narrowed, on
    'imagenet', and scaled on the small-input variants)."""
    div = mobilenet.make_divisible
    stem, first, *stages, head, last = [div(c * width) for c in OFA_WIDTHS]
    if self.last_channel:
      last = self.last_channel
    elif self.variant == 'imagenet' and width <= 1.0:
      last = OFA_WIDTHS[-1]
    return {'stem': stem, 'first': first, 'stages': stages, 'head': head, 'last': last}

  def settings(self, encoding) -> list[list]:
    """The MobileNetV3 block table (kernel, expanded, out, SE, activation, stride)."""
    c = self.channels(encoding['width'])
    rows = [[3, c['first'], c['first'], False, 'relu', 1]]
    cin = c['first']
    for i, blocks in enumerate(encoding['stages']):
      for j, (kernel, expand) in enumerate(blocks):
        expanded = mobilenet.make_divisible(round(cin * expand))
        rows.append([kernel, expanded, c['stages'][i], OFA_STAGE_SE[i], OFA_STAGE_ACTS[i],
                     self.strides[i] if j == 0 else 1])
        cin = c['stages'][i]
    return rows

  def overrides(self, encoding) -> dict:
    self.validate(encoding)
    c = self.channels(encoding['width'])
    model = {'name': 'mobilenet_v3', 'settings': self.settings(encoding),
             'stem_channels': c['stem'], 'stem_stride': self.stem_stride,
             'head_channels': c['head'], 'last_channel': c['last'],
             'head_bias': self.head == 'torchvision', 'dropout_rate': self.dropout_rate,
             'bn_momentum': self.bn_momentum}
    out = {'model': model}
    if 'resolution' in encoding:
      out['data'] = {'image_size': encoding['resolution']}
    return out

  def describe(self, encoding) -> str:
    """'w1.0 r224 33/43 555/333 ...': per stage its kernels / expand ratios."""
    stages = ' '.join(''.join(str(k) for k, _ in blocks) + '/' +
                      ''.join(_fmt_ratio(e) for _, e in blocks) for blocks in encoding['stages'])
    res = f' r{encoding["resolution"]}' if 'resolution' in encoding else ''
    return f'w{encoding["width"]}{res} {stages}'


def _fmt_ratio(e):
  return str(int(e)) if float(e).is_integer() else f'({e})'


# torchvision's MobileNetV3-Large as an encoding of
# ``mobilenet_v3(expand_choices=(2.3, 2.5, 3, 4, 6))``: depths 2,3,4,2,3.
MOBILENET_V3_LARGE = {
    'stages': [[[3, 4], [3, 3]], [[5, 3], [5, 3], [5, 3]],
               [[3, 6], [3, 2.5], [3, 2.3], [3, 2.3]], [[3, 6], [3, 6]],
               [[5, 6], [5, 6], [5, 6]]],
    'width': 1.0, 'resolution': 224}


# ------------------------------------------------------------------------- binary networks
BINARY_BASE_WIDTHS = (64, 128, 256, 512)
# Per variant: stem channels and stride (the 3 later stages downsample by 2 each).
BINARY_VARIANTS = {'imagenet': dict(stem=32, stem_stride=2), 'mnist': dict(stem=16, stem_stride=1),
                   'digits': dict(stem=16, stem_stride=1)}


@registry.register('search_space', 'binary')
class BinarySpace(SearchSpace):
  """Binary networks of ReActNet / Bi-Real-style blocks (model ``binary_net``): per stage
  (4 stages of base widths 64-128-256-512) a width multiplier, depth, kernel and groups of
  the binary kxk conv; for the whole network the downsampling shortcut's precision (float,
  8-bit, binary) and whether the stem and the classifier stay float or go 8-bit. Encoding::

    {'stages': [[width_mult, depth, kernel, groups]] x 4, 'downsample': 'float',
     'stem': 'float', 'head': 'float'}

  Score it with ``complexity``'s BOPs, OPs and model sizes (binary weights at 1 bit).
  ``groups`` choices are kept only where they divide the stage width.
  """
  name = 'binary'

  def __init__(self, variant: str = 'imagenet', width_choices=(0.25, 0.5, 0.75, 1.0),
               depth_choices=(1, 2, 3), kernel_choices=(3, 5), group_choices=(1, 2, 4),
               downsample_choices=('float', '8bit', 'binary'), stem_choices=('float', '8bit'),
               head_choices=('float', '8bit')):
    if variant not in BINARY_VARIANTS:
      raise ConfigError(f'Unknown binary variant {variant!r}. Valid: '
                        f'{", ".join(BINARY_VARIANTS)}.')
    self.variant = variant
    self.widths, self.depths = tuple(width_choices), tuple(depth_choices)
    self.kernels, self.groups = tuple(kernel_choices), tuple(group_choices)
    self.downsamples, self.stems, self.heads = (tuple(downsample_choices), tuple(stem_choices),
                                                tuple(head_choices))
    for name, values in (('width_choices', self.widths), ('depth_choices', self.depths),
                         ('kernel_choices', self.kernels), ('group_choices', self.groups),
                         ('downsample_choices', self.downsamples),
                         ('stem_choices', self.stems), ('head_choices', self.heads)):
      if not values:
        raise ConfigError(f'binary {name} is empty: give at least one value.')

  def _width(self, stage, mult):
    return max(8, int(round(BINARY_BASE_WIDTHS[stage] * mult / 8)) * 8)

  def _stage(self, rng, stage):
    mult = _pick(rng, self.widths)
    groups = [g for g in self.groups if self._width(stage, mult) % g == 0] or [1]
    return [mult, _pick(rng, self.depths), _pick(rng, self.kernels), _pick(rng, groups)]

  def sample(self, rng):
    return {'stages': [self._stage(rng, i) for i in range(4)],
            'downsample': _pick(rng, self.downsamples), 'stem': _pick(rng, self.stems),
            'head': _pick(rng, self.heads)}

  def mutate(self, encoding, rng, prob):
    out = json.loads(json.dumps(encoding))
    for i, stage in enumerate(out['stages']):
      fresh = self._stage(rng, i)
      for j in range(4):
        if rng.random() < prob:
          stage[j] = fresh[j]
      if self._width(i, stage[0]) % stage[3]:
        stage[3] = 1
    for key, choices in (('downsample', self.downsamples), ('stem', self.stems),
                         ('head', self.heads)):
      if rng.random() < prob:
        out[key] = _pick(rng, choices)
    return out

  def crossover(self, a, b, rng):
    stages = [list(x if rng.random() < 0.5 else y) for x, y in zip(a['stages'], b['stages'])]
    out = {'stages': stages}
    for key in ('downsample', 'stem', 'head'):
      out[key] = a[key] if rng.random() < 0.5 else b[key]
    return out

  def validate(self, encoding):
    ok = isinstance(encoding, dict) and isinstance(encoding.get('stages'), list) and len(
        encoding['stages']) == 4
    self._check(ok, encoding, 'needs 4 stages')
    for i, stage in enumerate(encoding['stages']):
      self._check(len(stage) == 4 and stage[0] in self.widths and stage[1] in self.depths
                  and stage[2] in self.kernels and stage[3] in self.groups
                  and self._width(i, stage[0]) % stage[3] == 0, encoding,
                  f'stage {i} {stage} needs [width in {self.widths}, depth in {self.depths}, '
                  f'kernel in {self.kernels}, groups in {self.groups} dividing the width]')
    for key, choices in (('downsample', self.downsamples), ('stem', self.stems),
                         ('head', self.heads)):
      self._check(encoding.get(key) in choices, encoding, f'{key} not in {choices}')
    self._check(set(encoding) == {'stages', 'downsample', 'stem', 'head'}, encoding,
                'unexpected keys')

  def size(self):
    per_stage = [sum(1 for g in self.groups if self._width(i, w) % g == 0) * len(self.depths)
                 * len(self.kernels) for i in range(4) for w in self.widths]
    total = 1
    for i in range(4):
      total *= sum(per_stage[i * len(self.widths):(i + 1) * len(self.widths)])
    return total * len(self.downsamples) * len(self.stems) * len(self.heads)

  def overrides(self, encoding):
    self.validate(encoding)
    spec = BINARY_VARIANTS[self.variant]
    return {'model': {
        'name': 'binary_net',
        'stages': [[self._width(i, w), d, k, g] for i, (w, d, k, g) in
                   enumerate(encoding['stages'])],
        'stem_channels': spec['stem'], 'stem_stride': spec['stem_stride'],
        'stem_precision': encoding['stem'], 'downsample': encoding['downsample'],
        'head_precision': encoding['head']}}

  def describe(self, encoding):
    stages = ' '.join(f'{self._width(i, w)}x{d}k{k}g{g}'
                      for i, (w, d, k, g) in enumerate(encoding['stages']))
    return f'{stages} ds:{encoding["downsample"]} stem:{encoding["stem"]} head:{encoding["head"]}'


# ------------------------------------------------------------------------- NAS-Bench-201
NB201_OPS = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
# Edge order of the cell (NAS-Bench-201's arch string): 0->1, 0->2, 1->2, 0->3, 1->3, 2->3.
NB201_EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


def nb201_arch_string(ops) -> str:
  """NAS-Bench-201's arch string, e.g. '|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|'."""
  nodes = [[], [], []]
  for op, (i, j) in zip(ops, NB201_EDGES):
    nodes[j - 1].append(f'{op}~{i}')
  return '+'.join('|' + '|'.join(n) + '|' for n in nodes)


def nb201_ops(arch: str) -> list[str]:
  """The inverse of ``nb201_arch_string``: the 6 ops in edge order."""
  try:
    by_edge = {}
    for j, node in enumerate(arch.split('+'), start=1):
      for item in node.strip('|').split('|'):
        op, _, i = item.partition('~')
        by_edge[(int(i), j)] = op
    ops = [by_edge[e] for e in NB201_EDGES]
  except (ValueError, KeyError):
    raise ConfigError(f'Not a NAS-Bench-201 arch string: {arch!r}.') from None
  return ops


@registry.register('search_space', 'nb201')
class NB201Space(SearchSpace):
  """NAS-Bench-201's cell space (Dong & Yang 2020): one of 5 operations on each of the 6
  edges of a 4-node cell, 5^6 = 15,625 cells, stacked as the benchmark's network (model
  ``nb201``: C=16, 5 cells per stage). Encoding: ``{'ops': [6 op names in edge order]}``;
  ``describe`` gives the benchmark's arch string, so results can be looked up there."""
  name = 'nb201'

  def __init__(self, channels: int = 16, cells_per_stage: int = 5):
    self.channels, self.cells_per_stage = channels, cells_per_stage

  def sample(self, rng):
    return {'ops': [_pick(rng, NB201_OPS) for _ in NB201_EDGES]}

  def mutate(self, encoding, rng, prob):
    """Each edge's op is resampled with probability ``prob``; at least one edge changes
    to another op (Real et al.'s op mutation), so a child differs from its parent."""
    ops = list(encoding['ops'])
    for i in range(len(ops)):
      if rng.random() < prob:
        ops[i] = _pick(rng, NB201_OPS)
    if ops == encoding['ops']:
      i = int(rng.integers(len(ops)))
      ops[i] = _pick(rng, [o for o in NB201_OPS if o != ops[i]])
    return {'ops': ops}

  def crossover(self, a, b, rng):
    return {'ops': [x if rng.random() < 0.5 else y for x, y in zip(a['ops'], b['ops'])]}

  def validate(self, encoding):
    ops = encoding.get('ops') if isinstance(encoding, dict) else None
    self._check(isinstance(ops, list) and len(ops) == 6 and all(o in NB201_OPS for o in ops)
                and set(encoding) == {'ops'}, encoding,
                f'needs {{"ops": [6 of {", ".join(NB201_OPS)}]}}')

  def size(self):
    return len(NB201_OPS) ** len(NB201_EDGES)

  def overrides(self, encoding):
    self.validate(encoding)
    return {'model': {'name': 'nb201', 'ops': list(encoding['ops']),
                      'channels': self.channels, 'cells_per_stage': self.cells_per_stage}}

  def describe(self, encoding):
    return nb201_arch_string(encoding['ops'])


def get_space(spec) -> SearchSpace:
  """The space of a spec (``'mobilenet_v3(variant="mnist")'``); bad options are one line."""
  return registry.build('search_space', spec)


def log10_size(space: SearchSpace) -> float:
  return math.log10(space.size())

