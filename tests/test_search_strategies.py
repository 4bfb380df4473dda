"""Search strategies: NSGA-II's ranks and crowding, aging, constraints, reproducibility."""
import math

import numpy as np
import pytest

from mcj.core.config import ConfigError
from mcj.search import spaces
from mcj.search import strategies as st


def _e(*objectives, violation=0.0, encoding=None):
  return {'objectives': list(objectives), 'violation': violation,
          'encoding': encoding or {'ops': ['none'] * 6}}


def test_nondominated_sort_on_a_hand_made_population():
  pop = [_e(1, 5), _e(2, 3), _e(4, 1), _e(3, 4), _e(5, 5), _e(2, 2), _e(6, 0.5, violation=0.2)]
  # Front 0: (1,5), (2,2), (4,1). Front 1: (2,3) (dominated by (2,2) only). Front 2: (3,4)
  # (by (2,3) too). Front 3: (5,5). The infeasible one is last whatever its objectives.
  assert st.nondominated_sort(pop) == [[0, 2, 5], [1], [3], [4], [6]]


def test_constrained_domination():
  assert st.dominates(_e(9, 9), _e(0, 0, violation=0.1))      # feasible beats infeasible
  assert st.dominates(_e(9, 9, violation=0.1), _e(0, 0, violation=0.5))
  assert not st.dominates(_e(1, 2), _e(2, 1)) and not st.dominates(_e(2, 1), _e(1, 2))
  assert not st.dominates(_e(1, 1), _e(1, 1))


def test_crowding_distance_by_hand():
  # Points on a front: (0,4), (1,2), (3,1), (4,0); objective ranges 4 and 4.
  d = st.crowding_distance([[0, 4], [1, 2], [3, 1], [4, 0]])
  assert math.isinf(d[0]) and math.isinf(d[3])
  assert d[1] == pytest.approx((3 - 0) / 4 + (4 - 1) / 4)
  assert d[2] == pytest.approx((4 - 1) / 4 + (2 - 0) / 4)
  assert np.all(np.isinf(st.crowding_distance([[0, 1], [1, 0]])))


def test_hypervolume_2d_by_hand():
  # Staircase under reference (4, 4): (1,3) adds 3x1, (2,1) adds 2x2: total 7.
  assert st.hypervolume_2d([[1, 3], [2, 1], [3, 3.5]], [4, 4]) == pytest.approx(7.0)
  assert st.hypervolume_2d([[5, 1]], [4, 4]) == 0.0
  assert st.hypervolume_2d([], [1, 1]) == 0.0


def test_nsga2_selection_keeps_fronts_then_the_least_crowded():
  space = spaces.get_space('nb201')
  nsga = st.NSGA2(space, population=4)
  pop = [_e(0, 4), _e(1, 2), _e(1.1, 1.9), _e(3, 1), _e(4, 0), _e(5, 5)]
  chosen = nsga.select(pop)
  # Front 0 has 5 points; the 4 kept are the two boundary points (infinite distance) and
  # the two of larger crowding distance: (1.1, 1.9) is the most crowded and goes.
  assert [c['objectives'] for c in chosen] == [[0, 4], [4, 0], [3, 1], [1, 2]]


def test_aging_evolution_population_is_the_newest_and_the_oldest_leaves():
  space = spaces.get_space('nb201')
  evo = st.AgingEvolution(space, population=3, sample=2)
  history = [_e(i, encoding={'ops': [spaces.NB201_OPS[i % 5]] * 6}) for i in range(5)]
  alive = evo.current_population(history)
  assert [e['objectives'][0] for e in alive] == [2, 3, 4]
  grown = history + [_e(-1)]
  assert [e['objectives'][0] for e in evo.current_population(grown)] == [3, 4, -1]  # 2 left
  # The parent is the best (lowest) of the sample; with sample = population it is the best.
  evo_all = st.AgingEvolution(space, population=3, sample=3)
  assert evo_all.parent(grown, np.random.default_rng(0))['objectives'] == [-1]
  # Before the population is full, candidates are random samples.
  rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
  assert evo.ask(history[:2], rng_a) == space.sample(rng_b)


def test_strategies_are_reproducible_from_the_history_and_seed():
  space = spaces.get_space('mobilenet_v3(variant="digits")')
  rng = np.random.default_rng(0)
  history = [_e(float(i % 7), float(-i % 5), encoding=space.sample(rng)) for i in range(12)]
  for strategy in (st.RandomSearch(space), st.AgingEvolution(space, population=6, sample=3),
                   st.NSGA2(space, population=4)):
    a = strategy.ask(history, np.random.default_rng([0, 12, 0]))
    b = strategy.ask(history, np.random.default_rng([0, 12, 0]))
    assert a == b
    space.validate(a)


def test_rank_key_orders_feasible_first():
  entries = [_e(0.1, violation=0.5), _e(0.9), _e(0.3), _e(math.nan)]
  assert sorted(range(4), key=lambda i: st.rank_key(entries[i])) == [2, 1, 3, 0]


def test_bad_strategy_options_are_one_line():
  space = spaces.get_space('nb201')
  with pytest.raises(ConfigError, match='sample <= population'):
    st.get_strategy('evolution(population=3, sample=5)', space)
  with pytest.raises(ConfigError, match='Unknown search strategy'):
    st.get_strategy('regularized', space)
  with pytest.raises(ConfigError, match='Bad option for search strategy'):
    st.get_strategy('random(size=3)', space)
