"""The trainer's config schema: every key a run reads, with its default.

Each method owns its block's defaults next to its code (``mcj.data.DEFAULTS``,
``optim.OPTIMIZER_DEFAULTS`` / ``SCHEDULE_DEFAULTS``, ``mcj.compress.binary.DEFAULTS``,
``mcj.compress.distill.DEFAULTS``, ``mcj.compress.prune.DEFAULTS``); this module assembles
them with the run's own keys. A key missing from the defaults is an error, by design.
"""
import copy

import ml_collections

from mcj import data as data_lib
from mcj.compress import binary as binary_lib
from mcj.compress import distill as distill_lib
from mcj.compress import prune as prune_lib
from mcj.core.config import ConfigError, article
from mcj.train import optim

# Blocks whose keys are passed on as keyword options (a model's own options).
OPEN_BLOCKS = ('model',)


def default_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with its default. A config sets what it needs."""
  blocks = {'data': data_lib.DEFAULTS, 'optimizer': optim.OPTIMIZER_DEFAULTS,
            'schedule': optim.SCHEDULE_DEFAULTS, 'binary': binary_lib.DEFAULTS,
            'distill': distill_lib.DEFAULTS, 'prune': prune_lib.DEFAULTS}
  return ml_collections.ConfigDict({
      'seed': 0,
      'batch_size': 128,             # global, over all devices and hosts
      'eval_batch_size': None,       # None: batch_size
      'total_steps': None,           # set exactly one of total_steps and total_epochs
      'total_epochs': None,
      'model': {'name': ''},         # other keys are the model's keyword options
      **copy.deepcopy(blocks),
      'init_from': '',               # a workdir or checkpoint folder to take params from
      'mixup_alpha': 0.0,            # > 0: mixup (Zhang et al. 2018) inside the step
      # A pipeline (mcj/train/pipeline.py): dicts with a name and the keys that stage
      # overrides; each stage trains in <workdir>/<name>; init_from may name an earlier stage.
      'stages': (),
      'label_smoothing': 0.0,
      'compute_dtype': 'float32',    # or 'bfloat16'; params stay float32
      'log_every_steps': 50,
      'eval_every_steps': 0,         # 0: evaluate only at the end
      'checkpoint_every_steps': 1000,
      'keep_checkpoints': 3,
  })


def merge_config(user) -> ml_collections.ConfigDict:
  """Defaults overlaid with ``user``; unknown keys and wrong types are ConfigErrors. The
  result is locked (ml_collections): code that sets a key the schema lacks fails too."""
  config = default_config()
  _merge_into(config, user, 'config')
  if not config.model.name and not config.stages:
    raise ConfigError('config.model.name is not set.')
  if config.compute_dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'compute_dtype must be float32 or bfloat16, got {config.compute_dtype!r}.')
  config.lock()
  return config


def _merge_into(node, user, path):
  for key, value in user.items():
    here = f'{path}.{key}'
    if key not in node:
      if path.split('.')[-1] in OPEN_BLOCKS:
        with node.ignore_type():
          node[key] = value
        continue
      raise ConfigError(f'Unknown config key {here}. Valid: {", ".join(sorted(node.keys()))}.')
    if isinstance(node[key], ml_collections.ConfigDict):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f'{here} is a block of keys ({", ".join(sorted(node[key]))}).')
      _merge_into(node[key], value, here)
      continue
    current = node[key]
    ok = (current is None or value is None or isinstance(value, type(current))
          or (isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool))
          or (isinstance(current, (tuple, list)) and isinstance(value, (tuple, list))))
    if not ok or (isinstance(current, (int, float)) and isinstance(value, bool)
                  and not isinstance(current, bool)):
      raise ConfigError(f'{here} expects {article(type(current).__name__)}, got {value!r}.')
    with node.ignore_type():
      node[key] = float(value) if isinstance(current, float) and value is not None else value

