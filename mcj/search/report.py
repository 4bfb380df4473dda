"""What a search leaves in its workdir, besides ``candidates.jsonl``:

- ``pareto.json``: the feasible non-dominated candidates over the objectives (index,
  arch, encoding, model block, metrics), and the 2-objective hypervolume;
- ``best/config.py``: the trainer config of the best feasible candidate by the first
  objective (``python -m mcj.train --config DIR/best/config.py --workdir W`` trains it;
  distillation, pruning or binarization are added with the usual ``--config.`` keys);
- ``pareto_<metric>.png``: the first objective against each other measured cost metric
  with the Pareto front; ``proxy_<name>.png``: each proxy (and TSE) against the first
  objective with Spearman's rho;
- ``results.json`` (written last: the search is finished): counts, best, Pareto indices,
  hypervolume, ``correlations``: Spearman's rho of every proxy / convergence metric
  with the first objective over the candidates that have both, and ``latency_table``: the
  lookup table's error against measured latency (MAPE, share within +-10%) where both
  were evaluated.
"""
import importlib.util
import json
import math
import os
import pprint

import numpy as np

from mcj.core import workdir as workdir_lib
from mcj.search import latency as latency_lib
from mcj.search import parse_limit
from mcj.search import strategies

# Metrics whose rank correlation with the first objective a report gives.
PROXY_PREFIXES = ('proxy/', 'train/tse')
# Cost metrics the Pareto plots put on their x axis, when measured.
COST_METRICS = ('latency_ms', 'model_size_bytes', 'macs', 'bops', 'ops', 'params')


def spearman(x, y) -> float:
  """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x, y = np.asarray(x, float), np.asarray(y, float)
  keep = np.isfinite(x) & np.isfinite(y)
  if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
    return math.nan
  return float(stats.spearmanr(x[keep], y[keep]).statistic)


def correlations(history, metric: str) -> dict:
  """{proxy metric: rho with ``metric``} over the candidates measured on both."""
  names = sorted({k for r in history for k in r['metrics']
                  if k.startswith(PROXY_PREFIXES) and k != 'train/loss_curve'})
  out = {}
  for name in names:
    pairs = [(r['metrics'][name], r['metrics'][metric]) for r in history
             if isinstance(r['metrics'].get(name), (int, float))
             and isinstance(r['metrics'].get(metric), (int, float))]
    if pairs:
      out[name] = {'rho': spearman(*zip(*pairs)), 'n': len(pairs)}
  return out


def hypervolume_reference(search, history) -> list[float] | None:
  """The reference point of a 2-objective hypervolume (in minimised form): a constrained
  metric's limit, else 0 for a metric to maximise (accuracy), else the worst value seen."""
  if len(search.objectives) != 2:
    return None
  reference = []
  for k, (metric, direction) in enumerate(search.objectives):
    if metric in search.constraints:
      _, bound = parse_limit(metric, search.constraints[metric])
      reference.append(-bound if direction == 'max' else bound)
    elif direction == 'max':
      reference.append(0.0)
    else:
      values = [r['objectives'][k] for r in history if np.isfinite(r['objectives'][k])]
      reference.append(max(values) if values else 0.0)
  return reference


def _python_config(config: dict, record: dict, workdir: str) -> str:
  metrics = {k: v for k, v in record['metrics'].items() if not isinstance(v, list)}
  shown = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                    for k, v in sorted(metrics.items()))
  return (f'"""The best architecture of the search in {workdir}: candidate '
          f'#{record["index"]}, {record["arch"]}.\n\n'
          f'Measured in the search: {shown}.\n\n'
          f'Command: python -m mcj.train --config {os.path.join(workdir, "best", "config.py")}'
          f' --workdir WORKDIR\n'
          'Add distillation, pruning or binarization with the usual keys, e.g.\n'
          '--config.distill.teachers=... or --config.prune.algorithm=magnitude.\n"""\n'
          'import copy\n\n'
          f'CONFIG = {pprint.pformat(config, indent=1, width=96, sort_dicts=True)}\n\n\n'
          'def get_config(arg=None):\n'
          '  del arg\n'
          '  return copy.deepcopy(CONFIG)\n')


def _plot(path, xs, ys, xlabel, ylabel, front=None, title=''):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.scatter(xs, ys, s=14, alpha=0.7, label='candidates')
  if front:
    fx, fy = zip(*sorted(front))
    ax.step(fx, fy, where='post', color='C3', label='Pareto front')
    ax.scatter(fx, fy, s=24, color='C3')
    ax.legend(fontsize=8)
  if xlabel in ('macs', 'bops', 'ops', 'params', 'model_size_bytes', 'proxy/synflow'):
    ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plots(search, history) -> list[str]:
  """The PNG plots (see the module docstring); returns their names."""
  if importlib.util.find_spec('matplotlib') is None:
    return []
  first = search.objectives[0][0]
  made = []
  scored = [r for r in history if isinstance(r['metrics'].get(first), (int, float))]
  feasible = [r for r in scored if r['feasible']]
  for cost in COST_METRICS:
    points = [(r['metrics'][cost], r['metrics'][first]) for r in scored
              if isinstance(r['metrics'].get(cost), (int, float))]
    if len(points) < 2 or cost == first or not any(x > 0 for x, _ in points):
      continue
    maximise = dict(search.objectives)[first] == 'max'
    front_entries = [{'objectives': [r['metrics'][cost], -r['metrics'][first] if maximise
                                     else r['metrics'][first]], 'violation': 0}
                     for r in feasible if isinstance(r['metrics'].get(cost), (int, float))]
    front = [(e['objectives'][0], -e['objectives'][1] if maximise else e['objectives'][1])
             for i, e in enumerate(front_entries)
             if i in strategies.pareto_front(front_entries)]
    name = f'pareto_{cost}.png'
    _plot(os.path.join(search.workdir, name), *zip(*points), cost, first, front,
          f'{len(points)} candidates')
    made.append(name)
  for proxy, corr in correlations(history, first).items():
    points = [(r['metrics'][proxy], r['metrics'][first]) for r in scored
              if isinstance(r['metrics'].get(proxy), (int, float))
              and np.isfinite(r['metrics'][proxy])]
    if len(points) < 2:
      continue
    name = f'proxy_{proxy.split("/")[-1]}.png'
    _plot(os.path.join(search.workdir, name), *zip(*points), proxy, first,
          title=f'Spearman rho {corr["rho"]:.3f} over {corr["n"]} candidates')
    made.append(name)
  return made


def write(search, history, *, is_main: bool = True) -> dict:
  """pareto.json, best/config.py, plots and results.json (last)."""
  entries = [search.entry(r) for r in history]
  front = strategies.pareto_front(entries)
  feasible = [r for r in history if r['feasible']]
  best = min(feasible, key=lambda r: strategies.rank_key(search.entry(r))) if feasible else None
  reference = hypervolume_reference(search, history)
  hypervolume = (strategies.hypervolume_2d([history[i]['objectives'] for i in front], reference)
                 if reference is not None else None)
  first = search.objectives[0][0]
  results = {
      'evaluated': len(history), 'feasible': len(feasible),
      'objectives': [f'{m}:{d}' for m, d in search.objectives],
      'constraints': dict(search.constraints),
      'best': None if best is None else {k: best[k] for k in ('index', 'arch', 'encoding',
                                                              'metrics')},
      'pareto': front, 'hypervolume': hypervolume, 'hypervolume_reference': reference,
      'correlations': correlations(history, first),
      'search_seconds': sum(r['seconds'] for r in history),
  }
  pairs = [(r['metrics']['latency_pred_ms'], r['metrics']['latency_ms']) for r in history
           if 'latency_pred_ms' in r['metrics'] and 'latency_ms' in r['metrics']]
  if pairs:
    results['latency_table'] = latency_lib.prediction_error(*zip(*pairs))
  if not is_main:
    return results
  workdir = search.workdir
  pareto = {'objectives': results['objectives'], 'hypervolume': hypervolume,
            'hypervolume_reference': reference,
            'front': [{k: history[i][k] for k in ('index', 'arch', 'encoding', 'model',
                                                  'metrics')} for i in front]}
  workdir_lib.write_atomically(os.path.join(workdir, 'pareto.json'),
                               json.dumps(pareto, indent=2, sort_keys=True))
  if best is not None:
    os.makedirs(os.path.join(workdir, 'best'), exist_ok=True)
    config = search.train_config(best['encoding'])
    workdir_lib.write_atomically(os.path.join(workdir, 'best', 'config.py'),
                                 _python_config(config, best, workdir))
    results['best_config'] = os.path.join(workdir, 'best', 'config.py')
  results['plots'] = plots(search, history)
  workdir_lib.write_atomically(os.path.join(workdir, 'results.json'),
                               json.dumps(results, indent=2, sort_keys=True))
  return results


def search_summary(workdir: str, history, metric: str) -> dict:
  """One search at a glance (strategies compared over seeds): its strategy, evaluated and
  feasible counts, the best feasible ``metric`` and the hypervolume of its results.json
  (None while it runs)."""
  feasible = [r['metrics'][metric] for r in history
              if r.get('feasible') and isinstance(r['metrics'].get(metric), (int, float))]
  results_path = os.path.join(workdir, 'results.json')
  hypervolume = None
  if os.path.exists(results_path):
    with open(results_path) as f:
      hypervolume = json.load(f).get('hypervolume')
  return {'workdir': workdir, 'strategy': history[-1].get('strategy') if history else None,
          'evaluated': len(history), 'feasible': len(feasible),
          f'best_{metric}': max(feasible) if feasible else None, 'hypervolume': hypervolume}


def summary_line(results: dict) -> str:
  best = results.get('best')
  text = (f'mcj.search: done, {results["evaluated"]} candidate(s), {results["feasible"]} '
          f'feasible, {len(results["pareto"])} on the Pareto front')
  if results.get('hypervolume') is not None:
    text += f', hypervolume {results["hypervolume"]:.4g}'
  if best:
    first = results['objectives'][0].rsplit(':', 1)[0]
    value = best['metrics'].get(first)
    text += f'; best #{best["index"]} {first} {value:.4g}' if isinstance(value, float) else (
        f'; best #{best["index"]}')
    if results.get('best_config'):
      text += f' -> {results["best_config"]}'
  elif results['evaluated']:
    text += '; no candidate met every constraint'
  return text + '.'
