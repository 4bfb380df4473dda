"""What many test files share: the tiny config, running the CLI in a subprocess, waiting
for a step, reading a run's outputs, and exact tree comparisons."""
import json
import os
import random
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp

from mcj.core import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'tiny_config.py')
# XLA's CPU collectives abort after 40 s of waiting by default; on a loaded 2-core machine a
# 4-device all-reduce can wait longer than that, so tests allow 10 minutes.
COLLECTIVE_TIMEOUTS = ('--xla_cpu_collective_call_terminate_timeout_seconds=600 '
                       '--xla_cpu_collective_call_warn_stuck_timeout_seconds=120 '
                       '--xla_cpu_collective_timeout_seconds=600')


def xla_flags(devices: int, existing: str = '') -> str:
  """``existing`` XLA flags with the host device count forced to ``devices`` (replacing any
  count already there) and the collective time-outs above."""
  kept = [f for f in existing.split() if not f.startswith(
      ('--xla_force_host_platform_device_count', '--xla_cpu_collective'))]
  return ' '.join(kept + [f'--xla_force_host_platform_device_count={devices}',
                          COLLECTIVE_TIMEOUTS])


def cpu_env(devices: int = 1, **extra) -> dict:
  """The environment of a CPU subprocess with ``devices`` host devices."""
  return dict(os.environ, XLA_FLAGS=xla_flags(devices, os.environ.get('XLA_FLAGS', '')),
              JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **extra)


def tiny(arg='', **overrides):
  """tests/tiny_config.py (with ``arg``), then dotted-key ``overrides``."""
  config = config_lib.load_config(f'{TINY}:{arg}' if arg else TINY)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def train_losses(workdir):
  return {m['step']: m['train/loss'] for m in read_metrics(workdir) if 'train/loss' in m}


def losses_on_devices(args, tmp_path, devices=(1, 4)) -> dict:
  """{device count: {step: train/loss}} of ``python -m mcj.train ARGS`` run once per
  device count (each in ``tmp_path/d<count>``)."""
  out = {}
  for count in devices:
    workdir = str(tmp_path / f'd{count}')
    proc = run_cli(list(args) + ['--workdir', workdir], devices=count)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out[count] = train_losses(workdir)
  return out


def run_cli(args, devices=1, module='mcj.train', **kwargs):
  """``python -m mcj.train ARGS`` in a subprocess, waited for."""
  return subprocess.run([sys.executable, '-m', module, *args], env=cpu_env(devices),
                        cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)


def start_cli(args, workdir, devices=1):
  """``python -m mcj.train ARGS --workdir DIR`` started in the background."""
  return subprocess.Popen([sys.executable, '-m', 'mcj.train', *args, '--workdir', workdir],
                          env=cpu_env(devices), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finished_checkpoints(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  return [d for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []


def wait_for_step(workdir, step, proc, timeout=300, need_checkpoint=False):
  """Waits until ``metrics.jsonl`` reaches ``step`` (and, optionally, a checkpoint is
  finished); fails if the process ends first."""
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError('finished before it could be interrupted:\n' + proc.stdout.read())
    if need_checkpoint and not finished_checkpoints(workdir):
      time.sleep(0.05)
      continue
    if os.path.exists(path):
      with open(path) as f:
        lines = [json.loads(l) for l in f if l.strip()]
      if lines and lines[-1]['step'] >= step:
        return lines[-1]['step']
    time.sleep(0.05)
  raise AssertionError(f'step {step} not reached in {timeout}s')


def kill_step(low: int, high: int, name: str) -> int:
  """A step in [low, high] for a kill test, seeded by ``MCJ_TEST_SEED`` (default 0) and
  the test's name: reproducible, and printed so a failure can be rerun as it was."""
  seed = int(os.environ.get('MCJ_TEST_SEED', '0'))
  step = random.Random(f'{seed}:{name}').randint(low, high)
  print(f'{name}: killing at step {step} (MCJ_TEST_SEED={seed})')
  return step


def final_params(workdir):
  """``(step, params)`` of the newest checkpoint, as host numpy arrays."""
  directory = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  path = os.path.join(directory, str(step), 'default')
  checkpointer = ocp.StandardCheckpointer()
  # A target placed on one local device: the checkpoint may come from another topology.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  restored = checkpointer.restore(path, target)
  return step, jax.tree.map(np.asarray, restored['params'])


def assert_trees_equal(a, b):
  """Same structure and bitwise-equal leaves (a structure mismatch fails)."""
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_equal(a, b)


def assert_trees_close(a, b, **tolerances):
  """Same structure and leaves close within ``tolerances`` (rtol, atol)."""
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_close(a, b, **tolerances)
