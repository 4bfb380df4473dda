"""``python -m mcj.evaluate --workdir DIR [--config.data.name=... --config.data.eval_split=...]``:
a run's accuracy on a dataset split, without training.

DIR is a run mcj trained or one ``python -m mcj.weights`` converted: its ``config.json``
gives the model and the data, the newest checkpoint the weights. ``--config.key=value``
overrides (typically the data: ``--config.data.name=imagenet2012
--config.data.eval_split=validation``, TFDS's ImageNet validation split) so that a
conversion is checked against the peer's published top-1 before compute is spent on it.
The evaluation runs data-parallel over every device, as the trainer's does (same eval
step, same batches); the result is printed as one JSON line and appended to
``DIR/evaluations.jsonl`` (earlier lines are kept).
"""
import argparse
import sys

from mcj.core.config import ConfigError
from mcj.train.evaluation import EVALUATIONS, evaluate_workdir


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mcj.evaluate', allow_abbrev=False,
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a trained or converted run')
  parser.add_argument('--no_record', action='store_true',
                      help=f'do not append the result to DIR/{EVALUATIONS}')
  args, overrides = parser.parse_known_args(argv)
  try:
    evaluate_workdir(args.workdir, overrides, record=not args.no_record)
  except ConfigError as e:
    print(f'mcj.evaluate: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
