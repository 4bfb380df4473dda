"""Test-session setup: four CPU devices (forced, whatever XLA_FLAGS the user has), CPU
collectives that wait out a loaded machine, a compilation cache shared by the session's
workers and subprocesses (many tests compile the same tiny programs), and the ``slow``
marker for the full tier.

  python -m pytest -q -n 2 -m "not slow" tests    # fast tier
  python -m pytest -q -n 2 tests                  # full suite
  python -m pytest -q -n 2 --configs -m configs tests   # every shipped config trains
"""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Set before jax is imported (it reads these once); children inherit them. A cache dir the
# user exports persists across sessions; by default each session starts empty.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='mcj-test-xla-cache-')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

from tests import helpers  # noqa: E402  pylint: disable=g-import-not-at-top

os.environ['XLA_FLAGS'] = helpers.xla_flags(4, os.environ.get('XLA_FLAGS', ''))
os.environ['JAX_PLATFORMS'] = 'cpu'


def pytest_addoption(parser):
  parser.addoption('--configs', action='store_true',
                   help='also run the configs tier: every shipped config\'s :runlocal trains')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: trains end to end or runs subprocesses; '
                          'deselect with -m "not slow" for the fast tier')
  config.addinivalue_line('markers', 'configs: trains a shipped config\'s :runlocal '
                          '(ImageNet-size networks compile for minutes on a CPU); skipped '
                          'unless --configs')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--configs'):
    return
  import pytest  # pylint: disable=g-import-not-at-top
  skip = pytest.mark.skip(reason='configs tier: run with --configs')
  for item in items:
    if 'configs' in item.keywords:
      item.add_marker(skip)
