"""The one registry: every named thing a config can ask for, registered next to its code.

Models, datasets, quantizers, optimizers, schedules, distillation losses, pruning
algorithms, schedules and distributions, search spaces, strategies and evaluators are looked up here by kind and name::

  @registry.register('quantizer', 'ste_sign')
  def ste_sign(clip_value=1.0): ...

  registry.get('quantizer', 'ste_sign')                         # the object itself
  registry.build('quantizer', 'ste_sign(clip_value=1.5)')       # called with the options

A spec is a name, ``'name(key=value, ...)'`` with Python literals, or a dict with a
``name`` key. An unknown name is one ``ConfigError`` line that lists the valid names and
suggests the closest one; bad options name the thing they were given to.

A kind's entries exist once the module defining them is imported; the layer that looks a
kind up imports that module (``mcj.models`` imports every model file, the trainer imports
the optimizers, the pruner its algorithms), so this module never imports upward.
"""
import ast
import difflib
from typing import Any, Callable

from mcj.core.config import ConfigError

# What the error messages call each kind.
_LABELS = {'model': 'model', 'dataset': 'dataset', 'quantizer': 'quantizer',
           'optimizer': 'optimizer', 'schedule': 'schedule',
           'binary_optimizer': 'binary optimizer', 'logit_loss': 'distill.logit_loss',
           'feature_loss': 'distill.feature_loss', 'prune_algorithm': 'prune.algorithm',
           'prune_schedule': 'prune.schedule', 'prune_distribution': 'prune.distribution',
           'search_space': 'search space', 'search_strategy': 'search strategy',
           'search_evaluator': 'search evaluator', 'search_proxy': 'zero-cost proxy'}

_ENTRIES: dict[str, dict[str, Any]] = {}
_INFO: dict[tuple[str, str], dict] = {}


def register(kind: str, name: str, **info) -> Callable:
  """Decorator: registers the object under ``kind``/``name``; ``info`` is free metadata
  (read back with ``info(kind, name)``). A name registered twice is an error."""

  def add(obj):
    entries = _ENTRIES.setdefault(kind, {})
    if name in entries and entries[name] is not obj:
      raise ValueError(f'{kind} {name!r} is registered twice.')
    entries[name] = obj
    _INFO[(kind, name)] = info
    return obj

  return add


def add(kind: str, name: str, obj, **info):
  """``register(kind, name, **info)(obj)``: for objects made by a call (partials)."""
  return register(kind, name, **info)(obj)


def add_all(kind: str, entries: dict) -> dict:
  """Registers every ``name: object`` of ``entries`` (a model file's table of variants)."""
  for name, obj in entries.items():
    add(kind, name, obj)
  return entries


def _load(kind: str) -> dict[str, Any]:
  return _ENTRIES.get(kind, {})


def names(kind: str) -> list[str]:
  """The registered names of ``kind``, sorted."""
  return sorted(_load(kind))


def contains(kind: str, name: str) -> bool:
  return name in _load(kind)


def unknown_name_error(kind: str, name, valid) -> ConfigError:
  """One line: the unknown name, the closest valid one, every valid one."""
  label = _LABELS.get(kind, kind)
  close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
  hint = f' Did you mean {close[0]!r}?' if close else ''
  return ConfigError(f'Unknown {label} {name!r}.{hint} Valid: {", ".join(sorted(valid))}.')


def get(kind: str, name: str):
  """The object registered as ``kind``/``name``; unknown names are one ConfigError."""
  entries = _load(kind)
  if name not in entries:
    raise unknown_name_error(kind, name, entries)
  return entries[name]


def info(kind: str, name: str) -> dict:
  """The metadata given to ``register`` for this entry."""
  get(kind, name)
  return _INFO.get((kind, name), {})


def parse_spec(spec, kind: str = '') -> tuple[str, dict]:
  """``'name(k=v, ...)'`` (or a dict with ``name``) -> ``(name, {k: v})``."""
  what = f'{_LABELS.get(kind, kind)} spec' if kind else 'spec'
  if isinstance(spec, dict) or hasattr(spec, 'items'):
    options = dict(spec)
    if 'name' not in options:
      raise ConfigError(f'A spec needs a name, got {options!r}.')
    return options.pop('name'), options
  if not isinstance(spec, str):
    raise ConfigError(f'Expected a name such as "ste_sign(clip_value=1.5)", got {spec!r}.')
  text = spec.strip()
  name, paren, rest = text.partition('(')
  options = {}
  if paren:
    if not rest.endswith(')'):
      raise ConfigError(f'Bad {what} {spec!r}: expected name(key=value, ...).')
    try:
      call = ast.parse(f'f({rest}', mode='eval').body
      if call.args:
        raise ValueError('use key=value')
      options = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError):
      raise ConfigError(f'Bad {what} {spec!r}: expected name(key=value, ...) with literal '
                        'values (numbers, quoted strings, True/False, None).') from None
  return name.strip(), options


def build(kind: str, spec, **extra):
  """Calls the entry named by ``spec`` with the spec's options plus ``extra``; options
  the entry does not take are one ConfigError naming the entry."""
  name, options = parse_spec(spec, kind)
  factory = get(kind, name)
  try:
    return factory(**options, **extra)
  except TypeError as e:
    raise ConfigError(f'Bad option for {_LABELS.get(kind, kind)} {name!r}: {e}.') from None
