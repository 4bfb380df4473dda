"""The house: packages in layers, imports only downward, no import circle, one registry.

Every ``import`` of an mcj module anywhere in a file (module level or inside a function)
counts. A module may import its own package and the layers below its own.
"""
import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'mcj'

# Lowest first. Packages on one layer must not import each other.
LAYERS = [
    {'mcj.core'},
    {'mcj.data', 'mcj.quant'},
    {'mcj.nn'},
    {'mcj.models'},
    {'mcj.analysis'},
    {'mcj.compress'},
    {'mcj.train'},
    {'mcj.search', 'mcj.weights'},  # search composes the trainer; weights: peers' files in
    {'mcj.summary', 'mcj.sweep', 'mcj.bench', 'mcj.latency_server', 'mcj.evaluate',
     'mcj.prune_heads'},  # the apps
]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _unit(module: str) -> str:
  """The layered unit a module belongs to: 'mcj.core', 'mcj.summary', ..."""
  return '.'.join(module.split('.')[:2])


def _layer(unit: str) -> int:
  for i, units in enumerate(LAYERS):
    if unit in units:
      return i
  raise AssertionError(f'{unit} is in no layer of tests/test_architecture.py: place it.')


def _imports(path: pathlib.Path) -> set[str]:
  """Every mcj module the file imports (``from pkg import sub`` is ``pkg.sub`` when that
  is a module, else ``pkg``)."""
  tree = ast.parse(path.read_text(), str(path))
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('mcj')}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('mcj'):
      for alias in node.names:
        sub = f'{node.module}.{alias.name}'
        found.add(sub if sub in _all_modules() else node.module)
  found.discard('mcj')
  return found


def _all_modules() -> set[str]:
  if not _MODULES:
    _MODULES.update(_module_name(p) for p in PACKAGE.rglob('*.py'))
  return _MODULES


_MODULES: set[str] = set()


def _graph() -> dict[str, set[str]]:
  return {_module_name(p): _imports(p) for p in PACKAGE.rglob('*.py')}


def test_every_package_has_a_layer():
  units = {_unit(m) for m in _graph() if m != 'mcj'}
  for unit in units:
    _layer(unit)


def test_imports_only_point_downward():
  wrong = []
  for module, imported in _graph().items():
    if module == 'mcj':
      continue
    here = _unit(module)
    for target in imported:
      there = _unit(target)
      if there == here:
        continue
      if _layer(there) >= _layer(here):
        wrong.append(f'{module} imports {target}')
  assert not wrong, 'imports that do not point downward:\n' + '\n'.join(sorted(wrong))


def test_no_import_circle_between_modules():
  graph = _graph()
  modules = set(graph)

  def resolve(target):  # 'mcj.nn' may name a package; keep edges to known modules only
    return target if target in modules else None

  edges = {m: {t for t in map(resolve, graph[m]) if t and t != m} for m in graph}
  # A package's __init__ importing its own submodules is not a circle in practice
  # unless a submodule imports the package back; only module -> module cycles count here.
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for t in edges[m]:
      if state.get(t) == 'open':
        cycle = stack[stack.index(t):] + [t]
        if not _is_package_reexport(cycle):
          raise AssertionError('import circle: ' + ' -> '.join(cycle))
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = 'done'

  for m in sorted(edges):
    if m not in state:
      visit(m)


def _is_package_reexport(cycle):
  """pkg/__init__ -> pkg.sub -> pkg (for a constant the package defines, e.g. DEFAULTS) is
  allowed only when the submodule imports nothing that imports it back; we allow the
  two-step form ``pkg -> pkg.sub -> pkg``."""
  return len(cycle) == 3 and cycle[0] == cycle[2] and cycle[1].startswith(cycle[0] + '.')


@pytest.mark.parametrize('name', ['registry'])
def test_one_registry_and_no_hand_written_available_lists(name):
  """Dispatch goes through mcj.core.registry: no module writes its own
  'Unknown ... Available:' message."""
  offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob('*.py')
               if 'Available:' in p.read_text()]
  assert not offenders, offenders
  assert (PACKAGE / 'core' / f'{name}.py').exists()


def test_tensorflow_only_in_the_tfds_module():
  offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob('*.py')
               if 'import tensorflow' in p.read_text() and p.name != 'tfds.py']
  assert not offenders, offenders


def test_methods_never_import_the_trainer():
  for path in (PACKAGE / 'compress').rglob('*.py'):
    assert not any(t.startswith('mcj.train') for t in _imports(path)), path


def test_layers_listed_here_exist():
  for units in LAYERS:
    for unit in units:
      rel = unit.replace('.', os.sep)
      assert (ROOT / rel).is_dir() or (ROOT / f'{rel}.py').exists(), unit
