"""Configs: python files with ``get_config(arg)``, plus command-line overrides.

``--config path.py[:arg]`` imports the file and calls ``get_config(arg)``; ``arg`` is a
string such as ``'runlocal,variant=b'`` that ``parse_arg`` turns into typed fields.
``--config.key.sub=value`` then overrides fields; the value is parsed to the type the
field already has, and unknown keys or wrong types are a ``ConfigError``.
"""
import ast
import importlib.util
import inspect
import os
import traceback

import ml_collections


class ConfigError(ValueError):
  """A user-facing mistake (bad name, key, setting or missing data): printed as one line."""


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses ``'runlocal,variant=b,steps=10'`` into fields typed by ``defaults``.

  A bare word sets a boolean default to True. Words not in ``defaults`` are an error.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f'Unknown config argument {key!r}. Valid: {", ".join(sorted(defaults))}.')
    if not eq:
      value = 'True'
    out[key] = parse_value(value.strip(), defaults[key], key)
  return out


def parse_value(text: str, current, key: str):
  """Parses ``text`` into the type of ``current`` (bool, int, float, str, tuple, None)."""
  if isinstance(current, bool):
    if text.lower() in ('1', 'true', 'yes', 'on'):
      return True
    if text.lower() in ('0', 'false', 'no', 'off'):
      return False
    raise ConfigError(f'{key} expects true or false, got {text!r}.')
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text  # an unset field takes a plain string
    raise ConfigError(f'{key} expects {article(type(current).__name__)}, got {text!r}.') from None
  if current is None:
    return value
  if isinstance(current, float) and isinstance(value, int):
    return float(value)
  if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(current)(value)
  if type(value) is not type(current):
    raise ConfigError(f'{key} expects {article(type(current).__name__)}, got {text!r}.')
  return value


def article(type_name: str) -> str:
  """'an int', 'a float': for messages that name a type."""
  return f'an {type_name}' if type_name[0] in 'aeiou' else f'a {type_name}'


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Imports ``path.py[:arg]`` and returns ``get_config(arg)``; a missing file, a folder, a
  syntax error or an argument ``get_config`` does not take is one ConfigError line."""
  path, _, arg = spec.partition(':')
  if os.path.isdir(path):
    examples = sorted(f for f in os.listdir(path) if f.endswith('.py'))[:3]
    raise ConfigError(f'Config {path!r} is a folder: give a .py file'
                      + (f' such as {os.path.join(path, examples[0])}' if examples else '')
                      + '.')
  if not os.path.isfile(path):
    raise ConfigError(f'Config file {path!r} does not exist.')
  module_spec = importlib.util.spec_from_file_location('mcj_user_config', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f'Config file {path!r} has a syntax error at line {e.lineno}: '
                      f'{e.msg}.') from None
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'Config file {path!r} failed to load{_line_in(e, path)}: '
                      f'{type(e).__name__}: {e}') from None
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'Config file {path!r} defines no get_config(arg).')
  takes_arg = bool(inspect.signature(module.get_config).parameters)
  if arg and not takes_arg:
    raise ConfigError(f'{path}: get_config() takes no argument; drop ":{arg}".')
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'{path}: get_config({repr(arg) if arg else ""}) failed{_line_in(e, path)}: '
                      f'{type(e).__name__}: {e}') from None
  if not isinstance(config, (dict, ml_collections.ConfigDict)):
    raise ConfigError(f'{path}: get_config() must return a dict or ConfigDict, got '
                      f'{type(config).__name__}.')
  return ml_collections.ConfigDict(config)


def _line_in(e: BaseException, path: str) -> str:
  """' at line N' of the innermost frame of ``path`` in ``e``'s traceback, if any."""
  lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
           if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f' at line {lines[-1]}' if lines else ''


def override(config: ml_collections.ConfigDict, dotted_key: str, text: str,
             open_blocks: dict | None = None) -> None:
  """Sets ``config.a.b = text`` parsed to the field's type; unknown keys list valid ones.

  ``open_blocks`` maps a block's path (e.g. ``'config.model'``) to a function of that block
  returning the keys it also accepts (a model's own options): such a key is set even when
  the config file did not set it; a key it does not accept lists them.
  """
  *parents, leaf = dotted_key.split('.')
  node, path = config, 'config'
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f'Unknown config key {path}.{part}. Valid: {_keys(node)}.')
    node, path = node[part], f'{path}.{part}'
  if leaf not in node:
    extra = (open_blocks or {}).get(path)
    accepted = sorted(extra(node)) if extra else []
    if leaf not in accepted:
      valid = ', '.join(sorted(set(node.keys()) | set(accepted)))
      raise ConfigError(f'Unknown config key {path}.{leaf}. Valid: {valid}.')
    with node.ignore_type():
      node[leaf] = parse_value(text, None, f'{path}.{leaf}')
    return
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ConfigError(f'{path}.{leaf} is a block: set one of its keys ({_keys(node[leaf])}).')
  with node.ignore_type():
    node[leaf] = parse_value(text, node[leaf], f'{path}.{leaf}')


def _keys(node) -> str:
  return ', '.join(sorted(node.keys()))


def split_overrides(argv: list[str]) -> list[tuple[str, str]]:
  """``--config.key=value`` (or ``--config.key value``) arguments as ``(key, text)``."""
  out, i = [], 0
  while i < len(argv):
    item = argv[i]
    if not item.startswith('--config.'):
      raise ConfigError(f'Unexpected argument {item!r}; overrides look like --config.key=value.')
    key, eq, value = item[len('--config.'):].partition('=')
    if not eq:
      if i + 1 >= len(argv):
        raise ConfigError(f'--config.{key} needs a value.')
      i, value = i + 1, argv[i + 1]
    out.append((key, value))
    i += 1
  return out


def parse_overrides(config, argv: list[str], open_blocks: dict | None = None) -> None:
  """Applies ``--config.key=value`` arguments in order (``override``)."""
  for key, value in split_overrides(argv):
    override(config, key, value, open_blocks)


def runlocal_overrides(*, image_size: int, num_classes: int, num_train_examples: int,
                       batch_size: int = 8, steps: int = 2) -> dict:
  """What a config's ``:runlocal`` variant changes: a few steps on synthetic data of the
  real input shape, float32, no periodic eval; for a laptop or a smoke test."""
  return {'batch_size': batch_size, 'total_epochs': None, 'total_steps': steps,
          'log_every_steps': 1, 'eval_every_steps': 0, 'compute_dtype': 'float32',
          'data': {'name': 'synthetic', 'image_size': image_size, 'num_classes': num_classes,
                   'num_train_examples': num_train_examples, 'num_eval_examples': 2 * batch_size}}
