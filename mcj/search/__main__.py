"""``python -m mcj.search --config FILE.py[:ARG] --workdir DIR [--config.key=value ...]``."""
import argparse
import sys

from mcj import search as search_lib
from mcj.core import checkpoint
from mcj.core import config as config_lib
from mcj.core import parallel
from mcj.core.config import ConfigError
from mcj.search import remote
from mcj.search import runner


def apply_overrides(config, argv) -> None:
  """``--config.key=value`` on a merged search config (``train.`` keys are the trainer's);
  the result is checked again."""
  from mcj.train import schema  # pylint: disable=g-import-not-at-top
  train_args = []
  for key, text in config_lib.split_overrides(argv):
    if key.startswith('train.'):
      train_args.append(f'--config.{key[len("train."):]}={text}')
      continue
    *parents, leaf = key.split('.')
    if parents == ['constraints']:
      with config.constraints.ignore_type():
        config.constraints[leaf] = config_lib.parse_value(text, None, f'config.{key}')
      continue
    config_lib.override(config, key, text)
  if train_args:
    with config.train.unlocked():
      schema.apply_overrides(config.train, train_args, say=lambda *a: None)
  search_lib.validate(config)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mcj.search', allow_abbrev=False,
      description='Search architectures from a config; rerun to resume.',
      epilog='Override config fields with --config.key=value (trainer keys as '
      '--config.train.key=value).')
  parser.add_argument('--config', help='path.py[:arg] defining get_config(arg)')
  parser.add_argument('--workdir', help='candidates, report and best/ go here')
  parser.add_argument('--report', nargs='+', metavar='WORKDIR',
                      help="print Spearman's rho of every proxy with --metric over the "
                      'candidates of these search workdirs (e.g. several seeds) and each '
                      "search's best feasible --metric and hypervolume, as JSON")
  parser.add_argument('--metric', default='eval/accuracy', help='what --report ranks against')
  parser.add_argument('--allow_config_change', action='store_true',
                      help='resume a workdir whose search had another config')
  parser.add_argument('--coordinator_address', default=None, help='HOST:PORT of process 0')
  parser.add_argument('--num_processes', type=int, default=None)
  parser.add_argument('--process_id', type=int, default=None)
  args, overrides = parser.parse_known_args(argv)
  if args.report:
    return _report(args.report, args.metric)
  if not args.config or not args.workdir:
    parser.error('--config and --workdir are required (or --report WORKDIR ...).')
  try:
    config = search_lib.merge_config(config_lib.load_config(args.config))
    apply_overrides(config, overrides)
    parallel.initialize_hosts(args.coordinator_address, args.num_processes, args.process_id)
    results = runner.run(config, args.workdir, allow_config_change=args.allow_config_change)
  except ConfigError as e:
    print(f'mcj.search: error: {e}', file=sys.stderr)
    return 2
  except (FloatingPointError, checkpoint.CheckpointError, remote.RemoteError) as e:
    print(f'mcj.search: error: {e}', file=sys.stderr)
    return 1
  except OSError as e:
    where = f' ({e.filename})' if e.filename else ''
    print(f'mcj.search: error: {e.strerror or e}{where}.', file=sys.stderr)
    return 1
  return 0 if results is not None else 1


def _report(workdirs, metric) -> int:
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from mcj.search import report  # pylint: disable=g-import-not-at-top
  history, searches = [], []
  for workdir in workdirs:
    path = os.path.join(workdir, runner.CANDIDATES)
    if not os.path.exists(path):
      print(f'mcj.search: error: {path} does not exist: name search workdirs.', file=sys.stderr)
      return 2
    records = runner.read_history(path)
    history += records
    searches.append(report.search_summary(workdir, records, metric))
  print(json.dumps({'candidates': len(history), 'metric': metric,
                    'correlations': report.correlations(history, metric),
                    'searches': searches}, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
