"""Search spaces: published points with their exact counts, encodings, sizes, validity."""
import json

import numpy as np
import pytest

from mcj.analysis import summary
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.search import spaces


def _counts(overrides, num_classes, shape):
  block = dict(overrides['model'])
  model = get_model(block.pop('name'), num_classes=num_classes, **block)
  s = summary.summarize(model, shape)
  return s['params'], s['macs']


def test_mobilenet_v3_large_is_a_point_with_torchvision_counts():
  space = spaces.get_space('mobilenet_v3(expand_choices=(2.3, 2.5, 3, 4, 6))')
  space.validate(spaces.MOBILENET_V3_LARGE)
  # torchvision mobilenet_v3_large: 5,483,032 params, 216.6M MACs ("0.22 GFLOPS").
  assert _counts(space.overrides(spaces.MOBILENET_V3_LARGE), 1000, (224, 224, 3)) == (
      5_483_032, 216_589_760)
  # Its block table is exactly the registered model's.
  from mcj.models.cnn import mobilenet
  rows = space.settings(spaces.MOBILENET_V3_LARGE)
  assert [tuple(r) for r in rows] == [tuple(r) for r in mobilenet.V3_LARGE]


@pytest.mark.parametrize('width, params, macs', [
    # Once-for-All's own code (ofa_mbv3 set_max_net + get_active_subnet; MACs of its convs
    # and linears, SE included): see tests/fixtures/README.md.
    (1.0, 7_664_760, 566_170_656),
    pytest.param(1.2, 10_701_632, 843_101_040, marks=pytest.mark.slow),
])
def test_ofa_largest_subnet_counts(width, params, macs):
  space = spaces.get_space(f'mobilenet_v3(head="ofa", width_choices=({width},))')
  assert _counts(space.overrides(space.max_point()), 1000, (224, 224, 3)) == (params, macs)


def test_ofa_smallest_subnet_counts():
  space = spaces.get_space('mobilenet_v3(head="ofa", width_choices=(1.0,), depth_choices=(2,), '
                           'kernel_choices=(3,), expand_choices=(3,))')
  point = space.sample(np.random.default_rng(0))
  assert _counts(space.overrides(point), 1000, (224, 224, 3)) == (3_410_792, 121_278_672)


def test_mobilenet_v3_space_size_is_ofa_s():
  # OFA: (9^2 + 9^3 + 9^4)^5 ~ 2e19 subnets per width and resolution.
  space = spaces.get_space('mobilenet_v3(width_choices=(1.0,), resolution_choices=(224,))')
  assert space.size() == (81 + 729 + 6561) ** 5
  assert 2e19 < space.size() < 2.2e19


@pytest.mark.parametrize('ops, params, macs', [
    # NAS-Bench-201's TinyNetwork (xautodl), C=16, N=5, CIFAR-10, 32x32.
    (['nor_conv_3x3'] * 6, 1_531_546, 220_119_680),
    (['nor_conv_1x1'] * 6, 241_306, 31_376_000),
    (['none'] * 6, 73_306, 7_783_040),
    (['avg_pool_3x3'] * 6, 73_306, 7_783_040),
    (spaces.nb201_ops('|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|'
                      'nor_conv_3x3~1|skip_connect~2|'), 802_426, 113_951_360),
])
def test_nb201_counts(ops, params, macs):
  space = spaces.get_space('nb201')
  assert _counts(space.overrides({'ops': ops}), 10, (32, 32, 3)) == (params, macs)


def test_nb201_arch_strings_round_trip_and_size():
  space = spaces.get_space('nb201')
  assert space.size() == 15_625
  rng = np.random.default_rng(0)
  for _ in range(20):
    point = space.sample(rng)
    assert spaces.nb201_ops(space.describe(point)) == point['ops']
  assert spaces.nb201_arch_string(['a', 'b', 'c', 'd', 'e', 'f']) == '|a~0|+|b~0|c~1|+|d~0|e~1|f~2|'
  with pytest.raises(ConfigError, match='Not a NAS-Bench-201 arch string'):
    spaces.nb201_ops('|nor_conv_3x3~0|')


@pytest.mark.parametrize('spec', ['mobilenet_v3', 'mobilenet_v3(variant="mnist")',
                                  'mobilenet_v3(variant="digits")', 'nb201'])
def test_encodings_round_trip_and_operators_stay_in_the_space(spec):
  space = spaces.get_space(spec)
  rng = np.random.default_rng(1)
  points = [space.sample(rng) for _ in range(30)]
  for a, b in zip(points, points[1:]):
    for point in (a, space.mutate(a, rng, 0.3), space.crossover(a, b, rng)):
      space.validate(point)
      again = json.loads(json.dumps(point))
      assert space.key(again) == space.key(point)
      assert space.overrides(again) == space.overrides(point)
  # Mutation with probability 1 changes something; with 0 nothing (nb201 always one op).
  assert space.mutate(points[0], rng, 1.0) != points[0] or spec == 'nb201'
  if spec != 'nb201':
    assert space.mutate(points[0], rng, 0.0) == points[0]
  assert space.mutate(points[0], rng, 0.0) != points[0] or spec != 'nb201'


@pytest.mark.slow
def test_small_input_variants_fit_their_inputs():
  for variant, shape in (('mnist', (28, 28, 1)), ('digits', (8, 8, 1))):
    space = spaces.get_space(f'mobilenet_v3(variant="{variant}")')
    params, macs = _counts(space.overrides(space.max_point()), 10, shape)
    assert params < 5_000_000 and macs < 50_000_000, (variant, params, macs)
    # Downsampling stops while the last stage still sees at least 2x2 positions.
    assert shape[0] / (space.stem_stride * np.prod(space.strides)) >= 2
    assert 'data' not in space.overrides(space.max_point())  # no resolution to search


def test_points_outside_the_space_are_one_line():
  space = spaces.get_space('mobilenet_v3')
  bad = json.loads(json.dumps(spaces.MOBILENET_V3_LARGE))  # expand 2.5 is not in {3,4,6}
  with pytest.raises(ConfigError, match=r"Not a point of search space 'mobilenet_v3'.*block"):
    space.validate(bad)
  with pytest.raises(ConfigError, match='Unknown search space'):
    spaces.get_space('mobilenetv3')
  with pytest.raises(ConfigError, match='Unknown mobilenet_v3 variant'):
    spaces.get_space('mobilenet_v3(variant="cifar")')
  with pytest.raises(ConfigError, match='Bad option for search space'):
    spaces.get_space('mobilenet_v3(depths=(1,))')


def test_binary_space_points_count_their_binary_parts_by_hand():
  space = spaces.get_space('binary(variant="digits")')
  point = {'stages': [[0.25, 1, 3, 1], [0.25, 1, 3, 2], [0.25, 1, 3, 4], [0.25, 1, 5, 1]],
           'downsample': 'float', 'stem': 'float', 'head': '8bit'}
  space.validate(point)
  block = dict(space.overrides(point)['model'])
  assert block['stages'] == [[16, 1, 3, 1], [32, 1, 3, 2], [64, 1, 3, 4], [128, 1, 5, 1]]
  assert block.pop('name') == 'binary_net'
  model = get_model('binary_net', num_classes=10, **block)
  s = summary.summarize(model, (8, 8, 1))
  # Binary kernels: kxk (Cin -> Cin, groups) and 1x1 (Cin -> Cout) of each block.
  # stage widths in/out: 16->16, 16->32, 32->64, 64->128; spatial 8, 4, 2, 1.
  kxk = [(3, 16, 16, 1, 8), (3, 16, 16, 2, 4), (3, 32, 32, 4, 2), (5, 64, 64, 1, 1)]
  pw = [(16, 16, 8), (16, 32, 4), (32, 64, 2), (64, 128, 1)]
  binary_params = (sum(k * k * c * o // g for k, c, o, g, _ in kxk)
                   + sum(c * o for c, o, _ in pw))
  assert s['binary_params'] == binary_params
  bops = (sum(k * k * (c // g) * o * hw * hw for k, c, o, g, hw in kxk)
          + sum(c * o * hw * hw for c, o, hw in pw))
  # The 8-bit classifier: 128 x 10 MACs at 8 x 8 bits.
  assert s['bops'] == bops + 128 * 10 * 64
  assert s['macs_by_precision'][8] == 128 * 10
  # Float: the stem (3x3x1x16 at 8x8) and the real 1x1 downsampling projections.
  assert s['flops'] == 9 * 16 * 64 + 16 * 32 * 16 + 32 * 64 * 4 + 64 * 128 * 1


def test_binary_space_keeps_groups_that_divide_and_round_trips():
  space = spaces.get_space('binary(variant="digits", width_choices=(0.25, 0.375))')
  rng = np.random.default_rng(3)
  for _ in range(40):
    point = space.mutate(space.sample(rng), rng, 0.5)
    space.validate(point)
    for (w, _, _, g) in space.overrides(point)['model']['stages']:
      assert w % g == 0
  assert space.size() > 10 ** 6
  with pytest.raises(ConfigError, match='groups in'):
    space.validate({'stages': [[0.25, 1, 3, 3]] * 4, 'downsample': 'float', 'stem': 'float',
                    'head': 'float'})
