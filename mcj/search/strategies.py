"""Search strategies: which architecture to evaluate next, from the results so far.

A strategy is registered as ``search_strategy`` and asked for one encoding at a time:
``ask(history, rng)``. It keeps no state of its own: everything it knows is ``history``
(the evaluated candidates in order, as ``candidates.jsonl`` holds them) and the generator
the search seeds from (seed, candidate index). So a killed search resumes exactly, and the
same seed gives the same search.

Each history entry is a dict with ``encoding``, ``objectives`` (a vector to minimise:
metrics to maximise are negated; NaN where an evaluation failed) and ``violation`` (0 for a
candidate within every constraint, else the summed relative excess; ``inf`` if it failed).
Constraints are handled as Deb (2000): a feasible candidate beats an infeasible one, of two
infeasible ones the smaller violation wins.

Pareto helpers (``dominates``, ``nondominated_sort``, ``crowding_distance``,
``hypervolume_2d``) are pure functions, tested on hand-made populations.
"""
import math

import numpy as np

from mcj.core import registry
from mcj.core.config import ConfigError


# --------------------------------------------------------------------------- Pareto helpers
def _feasible(entry) -> bool:
  return entry['violation'] == 0


def dominates(a, b) -> bool:
  """Constrained Pareto dominance (Deb et al. 2002, Sec. VI) of entry ``a`` over ``b``."""
  if _feasible(a) != _feasible(b):
    return _feasible(a)
  if not _feasible(a):
    return a['violation'] < b['violation']
  x, y = np.asarray(a['objectives'], float), np.asarray(b['objectives'], float)
  return bool(np.all(x <= y) and np.any(x < y))


def nondominated_sort(entries) -> list[list[int]]:
  """Fronts of indices into ``entries``: front 0 is dominated by none, front 1 only by
  front 0, ... (Deb et al. 2002's fast non-dominated sort)."""
  n = len(entries)
  dominated_by = [[] for _ in range(n)]  # i dominates these
  count = [0] * n                          # how many dominate i
  for i in range(n):
    for j in range(i + 1, n):
      if dominates(entries[i], entries[j]):
        dominated_by[i].append(j)
        count[j] += 1
      elif dominates(entries[j], entries[i]):
        dominated_by[j].append(i)
        count[i] += 1
  fronts, current = [], [i for i in range(n) if count[i] == 0]
  while current:
    fronts.append(current)
    following = []
    for i in current:
      for j in dominated_by[i]:
        count[j] -= 1
        if count[j] == 0:
          following.append(j)
    current = sorted(following)
  return fronts


def crowding_distance(objectives) -> np.ndarray:
  """Deb et al. 2002's crowding distance of each point of one front: the sum over
  objectives of the normalised gap between its two neighbours; boundary points infinite."""
  f = np.asarray(objectives, float)
  n, m = f.shape
  distance = np.zeros(n)
  if n <= 2:
    return np.full(n, np.inf)
  for k in range(m):
    order = np.argsort(f[:, k], kind='stable')
    lo, hi = f[order[0], k], f[order[-1], k]
    distance[order[0]] = distance[order[-1]] = np.inf
    if hi > lo:
      distance[order[1:-1]] += (f[order[2:], k] - f[order[:-2], k]) / (hi - lo)
  return distance


def hypervolume_2d(points, reference) -> float:
  """The area dominated by ``points`` (two objectives, both minimised) and bounded by
  ``reference``; points not better than the reference in both objectives add nothing."""
  pts = sorted((float(x), float(y)) for x, y in points
               if x < reference[0] and y < reference[1])
  area, best_y = 0.0, float(reference[1])
  for x, y in pts:
    if y < best_y:
      area += (reference[0] - x) * (best_y - y)
      best_y = y
  return area


def pareto_front(entries) -> list[int]:
  """Indices of the feasible, non-dominated entries (the search's Pareto front)."""
  feasible = [i for i, e in enumerate(entries) if _feasible(e)]
  if not feasible:
    return []
  front = nondominated_sort([entries[i] for i in feasible])[0]
  return [feasible[i] for i in front]


def rank_key(entry):
  """Single-objective order (lower is better): feasible first, then smaller violation,
  then the first objective."""
  first = entry['objectives'][0]
  first = math.inf if first is None or math.isnan(first) else first
  return (not _feasible(entry), entry['violation'], first)


# --------------------------------------------------------------------------- Strategies
class Strategy:
  """``ask(history, rng) -> encoding`` (see the module docstring)."""

  def __init__(self, space):
    self.space = space

  def ask(self, history: list[dict], rng) -> dict:
    raise NotImplementedError

  def describe(self) -> str:
    return type(self).__name__


@registry.register('search_strategy', 'random')
class RandomSearch(Strategy):
  """Uniform samples of the space (the baseline every strategy must beat)."""

  def ask(self, history, rng):
    return self.space.sample(rng)

  def describe(self):
    return 'random search'


@registry.register('search_strategy', 'evolution')
class AgingEvolution(Strategy):
  """Regularized (aging) evolution, Real et al. 2019 (Algorithm 1): the first
  ``population`` candidates are random; then each child mutates the best of ``sample``
  candidates drawn from the ``population`` most recent ones, and joins the population while
  its oldest member leaves (the population is always the newest ``population`` entries).
  Fitness is the first objective, constraints first (``rank_key``)."""

  def __init__(self, space, population: int = 20, sample: int = 5,
               mutation_prob: float = 0.1):
    super().__init__(space)
    if not 1 <= sample <= population:
      raise ConfigError(f'evolution needs 1 <= sample <= population, got sample={sample}, '
                        f'population={population}.')
    if not 0 < mutation_prob <= 1:
      raise ConfigError(f'evolution mutation_prob must be in (0, 1], got {mutation_prob}.')
    self.population, self.sample, self.mutation_prob = population, sample, mutation_prob

  def current_population(self, history):
    """The living population: the ``population`` most recent entries (aging)."""
    return history[-self.population:]

  def parent(self, history, rng):
    alive = self.current_population(history)
    picks = rng.choice(len(alive), size=self.sample, replace=False)
    return min((alive[i] for i in picks), key=rank_key)

  def ask(self, history, rng):
    if len(history) < self.population:
      return self.space.sample(rng)
    return self.space.mutate(self.parent(history, rng)['encoding'], rng, self.mutation_prob)

  def describe(self):
    return f'aging evolution (population {self.population}, sample {self.sample})'


@registry.register('search_strategy', 'nsga2')
class NSGA2(Strategy):
  """NSGA-II, Deb et al. 2002, over every objective of the search: generation 0 is
  ``population`` random candidates; each next generation of ``population`` children comes
  from the current parents by binary tournament (lower front, then larger crowding
  distance), uniform crossover (probability ``crossover_prob``) and mutation; the next
  parents are the best ``population`` of parents + children by front and crowding
  distance. Generation g's parents are recomputed from the history, so nothing is stored.
  """

  def __init__(self, space, population: int = 20, crossover_prob: float = 0.9,
               mutation_prob: float = 0.1):
    super().__init__(space)
    if population < 2:
      raise ConfigError(f'nsga2 population must be at least 2, got {population}.')
    self.population, self.crossover_prob, self.mutation_prob = (
        population, crossover_prob, mutation_prob)

  def select(self, entries) -> list[dict]:
    """The best ``population`` entries by front, then crowding distance (Deb's
    environmental selection); ties keep history order."""
    chosen = []
    for front in nondominated_sort(entries):
      if len(chosen) + len(front) <= self.population:
        chosen.extend(front)
        continue
      distance = crowding_distance([entries[i]['objectives'] for i in front])
      order = sorted(range(len(front)), key=lambda k: -distance[k])
      chosen.extend(front[k] for k in order[:self.population - len(chosen)])
      break
    return [entries[i] for i in chosen]

  def parents(self, history, generation: int) -> list[dict]:
    """The parents that generation ``generation`` (>= 1) is bred from."""
    n = self.population
    parents = history[:n]
    for g in range(1, generation):
      parents = self.select(parents + history[g * n:(g + 1) * n])
    return parents

  def _ranks(self, parents):
    rank, crowd = {}, {}
    for r, front in enumerate(nondominated_sort(parents)):
      distance = crowding_distance([parents[i]['objectives'] for i in front])
      for i, d in zip(front, distance):
        rank[i], crowd[i] = r, d
    return rank, crowd

  def ask(self, history, rng):
    generation = len(history) // self.population
    if generation == 0:
      return self.space.sample(rng)
    parents = self.parents(history, generation)
    rank, crowd = self._ranks(parents)

    def tournament():
      i, j = rng.choice(len(parents), size=2, replace=False)
      return i if (rank[i], -crowd[i]) <= (rank[j], -crowd[j]) else j

    a, b = parents[tournament()]['encoding'], parents[tournament()]['encoding']
    child = self.space.crossover(a, b, rng) if rng.random() < self.crossover_prob else a
    return self.space.mutate(child, rng, self.mutation_prob)

  def describe(self):
    return f'NSGA-II (population {self.population})'


def get_strategy(spec, space) -> Strategy:
  return registry.build('search_strategy', spec, space=space)
