"""Test-session setup: four CPU devices (forced, whatever XLA_FLAGS the user has), CPU
collectives that wait out a loaded machine, and the ``slow`` marker for the full tier.

  python -m pytest -q -n 2 -m "not slow" tests    # fast tier
  python -m pytest -q -n 2 tests                  # full suite
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tests import helpers  # noqa: E402  pylint: disable=g-import-not-at-top

os.environ['XLA_FLAGS'] = helpers.xla_flags(4, os.environ.get('XLA_FLAGS', ''))
os.environ['JAX_PLATFORMS'] = 'cpu'


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: trains end to end or runs subprocesses; '
                          'deselect with -m "not slow" for the fast tier')
