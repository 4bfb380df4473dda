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
from mcj.core import registry
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
      # With init_from: its encoder layers layer_{i} for i in this list become the model's
      # layer_0, layer_1, ... (DistilBERT's student from every other teacher layer).
      'init_from_layers': (),
      # With init_from: params the source lacks keep their fresh init and source params
      # the model lacks are dropped (a float run initialising a model with learned
      # quantizer scales); shared params must still have the same shapes.
      'init_from_partial': False,
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


def merge_config(user, *, path: str = 'config', need_model: bool = True
                 ) -> ml_collections.ConfigDict:
  """Defaults overlaid with ``user``; unknown keys and wrong types are ConfigErrors. The
  result is locked (ml_collections): code that sets a key the schema lacks fails too.
  ``path`` names the block in error messages (a search's ``config.train``); a search's
  train block has no model yet (``need_model=False``)."""
  config = default_config()
  _merge_into(config, user, path)
  if need_model and not config.model.name and not config.stages:
    raise ConfigError('config.model.name is not set.')
  validate(config)
  config.lock()
  return config


def validate(config) -> None:
  """Settings that would crash later or train nonsense silently: one ConfigError line each,
  saying what to set."""
  def need(ok, message):
    if not ok:
      raise ConfigError(message)

  def positive_int(key, value, allow_none=False):
    if value is None and allow_none:
      return
    need(isinstance(value, int) and value >= 1,
         f'config.{key} must be a positive integer, got {value!r}.')

  if config.compute_dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'compute_dtype must be float32 or bfloat16, got {config.compute_dtype!r}.')
  positive_int('batch_size', config.batch_size)
  positive_int('eval_batch_size', config.eval_batch_size, allow_none=True)
  positive_int('total_steps', config.total_steps, allow_none=True)
  need(config.total_epochs is None or config.total_epochs > 0,
       f'config.total_epochs must be positive, got {config.total_epochs}.')
  positive_int('log_every_steps', config.log_every_steps)
  for key in ('eval_every_steps', 'checkpoint_every_steps'):
    need(config[key] >= 0, f'config.{key} must be >= 0 (0: only at the end), got {config[key]}.')
  need(config.keep_checkpoints >= 1,
       f'config.keep_checkpoints must be at least 1 (a rerun resumes from the newest '
       f'checkpoint), got {config.keep_checkpoints}.')
  need(config.optimizer.lr >= 0, f'config.optimizer.lr must be >= 0, got {config.optimizer.lr}.')
  quantizer_lr = config.optimizer.get('quantizer_lr', None)
  need(quantizer_lr is None or quantizer_lr >= 0,
       f'config.optimizer.quantizer_lr must be >= 0 (None: the weights\' lr), got '
       f'{quantizer_lr}.')
  need(config.mixup_alpha >= 0, f'config.mixup_alpha must be >= 0 (0: no mixup), got '
       f'{config.mixup_alpha}.')
  need(0 <= config.label_smoothing < 1,
       f'config.label_smoothing must be in [0, 1), got {config.label_smoothing}.')
  temperature = config.distill.temperature
  need(temperature is None or temperature > 0,
       f'config.distill.temperature must be positive (or None for the loss\'s default), got '
       f'{temperature}.')
  layers = config.init_from_layers
  need(all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers),
       f'config.init_from_layers lists teacher layer indices (ints >= 0), got {tuple(layers)}.')
  need(config.init_from or not (layers or config.init_from_partial),
       'config.init_from_layers / init_from_partial are set but config.init_from is not: set '
       'init_from to the run (workdir or checkpoint) whose params the model starts from.')
  prune = config.prune
  need(0 <= prune.sparsity < 1, f'config.prune.sparsity must be in [0, 1), got {prune.sparsity}.')
  need(prune.algorithm or not prune.sparsity,
       f'config.prune.sparsity={prune.sparsity} is set but no pruning algorithm is: set '
       f'config.prune.algorithm ({", ".join(registry.names("prune_algorithm"))}).')
  for key in ('heads_fraction', 'heads_step'):
    need(0 <= prune[key] < 1, f'config.prune.{key} must be in [0, 1), got {prune[key]}.')
  for key in ('heads_batches', 'heads_min_per_layer'):
    need(prune[key] >= 0, f'config.prune.{key} must be >= 0, got {prune[key]}.')


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



# Keys that say the same thing two ways: setting one clears the other where it is set.
EXCLUSIVE = {'total_steps': 'total_epochs', 'total_epochs': 'total_steps'}


def _model_option_names(block) -> list[str]:
  """A model's own options, less those the trainer sets (classes, dtype, BN's axis)."""
  from mcj.models import model_options  # pylint: disable=g-import-not-at-top
  if not block.get('name'):
    return []
  return [k for k in model_options(block['name'])
          if k not in ('num_classes', 'dtype', 'bn_axis_name')]


OPEN_BLOCK_OPTIONS = {'config.model': _model_option_names}


def apply_overrides(config: ml_collections.ConfigDict, argv: list[str], say=print) -> None:
  """``--config.key=value`` arguments on a merged config, pipelines included.

  A model's own options may be set even where the config file did not set them
  (``--config.model.width_multiplier=0.5``). On a pipeline (``config.stages``) an override
  applies to the shared config and to every stage that sets the key (said in one line);
  ``--config.stages.<name>.key=value`` overrides one stage only. ``total_steps`` and
  ``total_epochs`` replace each other.
  """
  from mcj.core import config as config_lib  # pylint: disable=g-import-not-at-top
  for key, text in config_lib.split_overrides(argv):
    if key.startswith('stages.'):
      _, _, rest = key.partition('.')
      name, _, stage_key = rest.partition('.')
      stages = {s.get('name'): s for s in config.stages}
      if name not in stages or not stage_key:
        raise ConfigError(f'--config.{key}: give --config.stages.<name>.<key>=value with a '
                          f'stage name of config.stages ({", ".join(map(str, stages)) or "none"}).')
      _set_in_stage(config, stages[name], stage_key, text, create=True)
      continue
    with config.unlocked():
      config_lib.override(config, key, text, OPEN_BLOCK_OPTIONS)
      _clear_exclusive(config, key)
    touched = [s['name'] for s in config.stages
               if _set_in_stage(config, s, key, text, create=False)]
    if touched:
      say(f'mcj: --config.{key}={text} applies to stage(s) {", ".join(touched)} too '
          f'(one stage only: --config.stages.<name>.{key}=...).')
  validate(config)


def _clear_exclusive(node, key):
  other = EXCLUSIVE.get(key)
  if other and node.get(key) is not None and other in node:
    node[other] = None


def _set_in_stage(config, stage: dict, key: str, text: str, create: bool) -> bool:
  """Sets ``key`` in the stage dict (typed like the stage's value, or the shared config's)
  if the stage sets it (or its ``EXCLUSIVE`` twin), or always if ``create``; returns
  whether it did."""
  from mcj.core import config as config_lib  # pylint: disable=g-import-not-at-top
  *parents, leaf = key.split('.')
  node = stage
  for part in parents:
    if not isinstance(node.get(part), dict):
      if not create:
        return False
      node[part] = {}
    node = node[part]
  twin = EXCLUSIVE.get(leaf) if not parents else None
  if not create and leaf not in node and twin not in node:
    return False
  # The type a value must have: the stage's own, else the shared config's (which also
  # rejects unknown keys); a model option the shared config lacks is checked by name.
  shared = config
  for part in parents:
    shared = shared.get(part) if hasattr(shared, 'get') else None
  if leaf in node:
    current = node[leaf]
  elif shared is not None and hasattr(shared, 'keys') and leaf in shared:
    current = shared[leaf]
  else:
    probe = ml_collections.ConfigDict(copy.deepcopy(
        {**(config.to_dict()), **{p: v for p, v in stage.items() if p == 'model'}}))
    config_lib.override(probe, key, text, OPEN_BLOCK_OPTIONS)  # raises for an unknown key
    current = None
  value = config_lib.parse_value(text, current, f'config.stages.{stage.get("name")}.{key}')
  node[leaf] = value
  if twin and value is not None and twin in node:
    node[twin] = None
  return True
