"""``python -m mcj.train --config FILE.py[:ARG] --workdir DIR [--config.key=value ...]``."""
import argparse
import sys

from mcj.core import checkpoint
from mcj.core import config as config_lib
from mcj.core import parallel
from mcj.core.config import ConfigError
from mcj.train.schema import apply_overrides, merge_config
from mcj.train.trainer import train_and_evaluate


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mcj.train', allow_abbrev=False,
      description='Train and evaluate a model from a config; rerun to resume.',
      epilog='Override config fields with --config.key=value (e.g. --config.batch_size=256).')
  parser.add_argument('--config', required=True, help='path.py[:arg] defining get_config(arg)')
  parser.add_argument('--workdir', required=True, help='checkpoints, metrics and results go here')
  parser.add_argument('--allow_config_change', action='store_true',
                      help='resume a workdir whose run had another config (the earlier '
                      'config.json is kept)')
  parser.add_argument('--coordinator_address', default=None, help='HOST:PORT of process 0')
  parser.add_argument('--num_processes', type=int, default=None)
  parser.add_argument('--process_id', type=int, default=None)
  args, overrides = parser.parse_known_args(argv)
  try:
    config = merge_config(config_lib.load_config(args.config))
    apply_overrides(config, overrides)
    parallel.initialize_hosts(args.coordinator_address, args.num_processes, args.process_id)
    train_and_evaluate(config, args.workdir, allow_config_change=args.allow_config_change)
  except ConfigError as e:
    print(f'mcj.train: error: {e}', file=sys.stderr)
    return 2
  except (FloatingPointError, checkpoint.CheckpointError) as e:
    print(f'mcj.train: error: {e}', file=sys.stderr)
    return 1
  except OSError as e:  # e.g. a full disk while writing metrics
    where = f' ({e.filename})' if e.filename else ''
    print(f'mcj.train: error: {e.strerror or e}{where}.', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
