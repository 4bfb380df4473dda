"""Run a config over a grid of its arguments and several seeds; print one table.

  python -m mcj.sweep --config configs/digits/bnn.py --grid twin=binary,float \\
      --seeds 0,1,2 --workdir /tmp/mcj/sweep

Each run is ``python -m mcj.train`` on ``<config>:<arg>`` with ``--config.seed=S`` in
``<workdir>/<arg>/seed<S>``; an argument given with the config (``--config c.py:a=1``)
applies to every run (finished runs are not repeated: rerunning resumes); a repeated
``--grid`` adds the runs of another product. The
table gives, per grid point, eval accuracy as mean +- sample std over seeds, and the
model's params, binary params, model size and compression ratio (from ``results.json``);
``--json`` prints the rows instead. ``--plot FILE.png`` draws accuracy against measured
kernel sparsity, one line per value of the first grid key (needs matplotlib).
"""
import argparse
import itertools
import json
import os
import statistics
import sys

from mcj.core import config as config_lib
from mcj.core import metrics as metrics_lib
from mcj.core.checkpoint import CheckpointError
from mcj.core.config import ConfigError


def grid_args(grid: list[str]) -> list[str]:
  """``['a=1,2', 'b=x']`` -> ``['a=1,b=x', 'a=2,b=x']`` (config argument strings)."""
  axes = []
  for item in grid:
    key, eq, values = item.partition('=')
    if not eq or not values:
      raise ConfigError(f'--grid takes key=value1,value2,...; got {item!r}.')
    axes.append([f'{key.strip()}={v.strip()}' for v in values.split(',')])
  return [','.join(combo) for combo in itertools.product(*axes)] or ['']


def run_dir_of(workdir: str, arg: str, seed: int) -> str:
  return os.path.join(workdir, arg.replace(',', '_').replace('=', '-') or 'default',
                      f'seed{seed}')


def point_configs(config_path: str, args: list[str], seeds: list[int], extra=()) -> dict:
  """``{(arg, seed): merged config}`` for every point, built (and so checked) before any
  trains: a bad grid value is found before the first run, not after the earlier ones."""
  from mcj.train.schema import apply_overrides, merge_config  # pylint: disable=g-import-not-at-top
  config_path, _, shared = config_path.partition(':')
  configs = {}
  for arg in args:
    both = ','.join(a for a in (shared, arg) if a)
    spec = f'{config_path}:{both}' if both else config_path
    for seed in seeds:
      try:
        config = merge_config(config_lib.load_config(spec))
        apply_overrides(config, [f'--config.seed={seed}', *extra], say=lambda *a: None)
      except ConfigError as e:
        raise ConfigError(f'grid point {arg or "default"!r}: {e}') from None
      configs[arg, seed] = config
  return configs


def run(config_path: str, args: list[str], seeds: list[int], workdir: str, extra=()):
  """Trains every (arg, seed) pair not finished yet and returns one row per arg, or None
  if a SIGTERM stopped it (rerunning resumes)."""
  from mcj.train import trainer  # pylint: disable=g-import-not-at-top
  configs = point_configs(config_path, args, seeds, extra)
  trainer.watch_preemption()
  rows = []
  for arg in args:
    results = []
    for seed in seeds:
      run_dir = run_dir_of(workdir, arg, seed)
      done = os.path.join(run_dir, 'results.json')
      if not os.path.exists(done):
        if trainer.preemption_requested():
          return None
        if trainer.train_and_evaluate(configs[arg, seed], run_dir).get('preempted'):
          return None
      with open(done) as f:
        results.append(json.load(f))
    # 'accuracies': each seed's main eval metric (eval/accuracy, or the task's: GLUE)
    metric = metrics_lib.headline(results[0])[0]
    accuracies = [metrics_lib.headline(r)[1] for r in results]
    first = results[0]
    rows.append({
        'arg': arg, 'seeds': seeds, 'metric': metric, 'accuracies': accuracies,
        'accuracy_mean': statistics.fmean(accuracies),
        'accuracy_std': statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        **{k: first.get(k) for k in ('model', 'params', 'binary_params', 'model_size_bytes',
                                     'compression_ratio', 'bops', 'flops', 'macs')},
        # Pruned runs: the mean over seeds (masks differ by seed).
        **{k: statistics.fmean(r[k] for r in results) for k in
           ('sparsity', 'nonzero_params', 'nonzero_macs') if all(k in r for r in results)}})
  return rows


def format_rows(rows: list[dict]) -> str:
  """A Markdown table; runs that report sparsity add kernel sparsity and non-zero params
  and MACs."""
  sparse = all('sparsity' in r for r in rows) and any(r['sparsity'] > 0 for r in rows)
  metric = rows[0].get('metric', 'eval/accuracy')[5:] if rows else 'accuracy'
  lines = [f'| run | model | {metric} (mean +- std) | seeds | params | binary params | '
           'model size | compression |' + (' sparsity | non-zero params | non-zero MACs |'
                                          if sparse else ''),
           '|---|---|---|---|---|---|---|---|' + ('---|---|---|' if sparse else '')]
  for r in rows:
    size = r['model_size_bytes']
    line = (f"| {r['arg'] or 'default'} | {r['model']} | {r['accuracy_mean']:.4f} +- "
            f"{r['accuracy_std']:.4f} | {len(r['seeds'])} | {r['params']:,} | "
            f"{r['binary_params'] or 0:,} | {size / 1024:.1f} KiB | {r['compression_ratio']:.2f}x |")
    if sparse:
      line += (f" {r['sparsity']:.1%} | {round(r['nonzero_params']):,} | "
               f"{round(r['nonzero_macs']):,} |")
    lines.append(line)
  return '\n'.join(lines)


def plot_rows(rows: list[dict], path: str) -> None:
  """Accuracy (mean +- std) vs kernel sparsity, one line per value of the first grid key
  (e.g. ``method=``); a value with a single run is a marker, or a dashed line if dense."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError('--plot needs matplotlib: pip install matplotlib.') from None
  series = {}
  for r in rows:
    label = (r['arg'] or 'default').split(',')[0]
    series.setdefault(label, []).append(r)
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
  markers = iter('sD^vP*Xo' * 4)
  for label, points in series.items():
    points = sorted(points, key=lambda r: r.get('sparsity', 0.0))
    name = label.partition('=')[2] or label
    if len(points) == 1 and not points[0].get('sparsity'):  # a dense reference: a line
      r = points[0]
      ax.axhline(r['accuracy_mean'], color='k', linestyle='--', linewidth=1,
                 label=f'{name} ({r["accuracy_mean"]:.4f})')
      continue
    ax.errorbar([100 * r.get('sparsity', 0.0) for r in points],
                [r['accuracy_mean'] for r in points], [r['accuracy_std'] for r in points],
                marker='o' if len(points) > 1 else next(markers), markersize=7,
                linestyle='-' if len(points) > 1 else 'none', capsize=3, label=name)
  ax.set_xlabel('kernel sparsity (%)')
  ax.set_ylabel('test accuracy')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mcj.sweep', description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True,
                      help='config file, optionally with :arg shared by every run')
  parser.add_argument('--grid', nargs='*', action='append', default=[],
                      help='key=v1,v2 config arguments (their product); repeat --grid to '
                      'add another product')
  parser.add_argument('--seeds', default='0', help='comma-separated seeds')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--json', action='store_true', help='print the rows as JSON')
  parser.add_argument('--plot', default='', help='also draw accuracy vs sparsity to FILE.png')
  args, extra = parser.parse_known_args(argv)
  try:
    try:
      seeds = [int(s) for s in args.seeds.split(',')]
    except ValueError:
      raise ConfigError(f'--seeds takes comma-separated integers such as 0,1,2; got '
                        f'{args.seeds!r}.') from None
    points = [arg for grid in (args.grid or [[]]) for arg in grid_args(grid)]
    rows = run(args.config, points, seeds, args.workdir, extra)
    if rows is None:
      print('mcj.sweep: stopped by SIGTERM; rerun the same command to resume the sweep.',
            file=sys.stderr)
      return 0
    if args.plot:
      plot_rows(rows, args.plot)
  except ConfigError as e:
    print(f'mcj.sweep: error: {e}', file=sys.stderr)
    return 2
  except (FloatingPointError, CheckpointError) as e:
    print(f'mcj.sweep: error: {e}', file=sys.stderr)
    return 1
  print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
