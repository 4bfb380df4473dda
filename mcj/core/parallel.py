"""Hosts, devices and the data-parallel step.

mcj follows the pmap programming model: the step is written for ONE device and its share of
the batch, and collectives (``lax.pmean``) over the named axis ``'data'`` average gradients
and BatchNorm statistics. ``jax.shard_map`` over a 1-D mesh of every device of every host
runs it; params are replicated, batches split along their first axis.
"""
import glob
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mcj.core.config import ConfigError

AXIS = 'data'


def initialize_hosts(coordinator_address=None, num_processes=None, process_id=None):
  """Joins a multi-host job: explicit flags, or auto-detected on a Cloud TPU VM."""
  if coordinator_address or num_processes:
    if not (coordinator_address and num_processes is not None and process_id is not None):
      raise ConfigError('Multi-host runs need all of --coordinator_address HOST:PORT, '
                        '--num_processes N and --process_id I.')
    # Several CPU processes exchange collectives through gloo; other platforms ignore this.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _on_multi_host_tpu_vm():
    jax.distributed.initialize()


def _on_multi_host_tpu_vm() -> bool:
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')) and ',' in hosts


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all hosts, ordered host by host."""
  return jax.sharding.Mesh(np.asarray(jax.devices()), (AXIS,))


def check_batch_size(global_batch_size: int, what: str = 'batch_size') -> int:
  """Returns the per-device batch; an indivisible global batch is a ConfigError."""
  n, hosts = jax.device_count(), jax.process_count()
  if global_batch_size % n:
    lower = max(n, global_batch_size // n * n)
    raise ConfigError(
        f'{what}={global_batch_size} is not divisible by the {n} devices ({hosts} host(s) x '
        f'{jax.local_device_count()}): use a multiple of {n}, e.g. {what}={lower} or '
        f'{lower + n}.')
  return global_batch_size // n


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(mesh, host_batch: dict) -> dict:
  """Assembles each host's rows into global arrays split over the mesh's devices."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}


def data_parallel(per_device_fn, mesh, *, in_specs, out_specs, donate_argnums=()):
  """jit(shard_map(fn)): ``fn`` sees one device's share; ``'data'`` names the device axis.

  ``check_vma=False`` keeps pmap's autodiff semantics, which the explicit ``pmean`` of
  gradients relies on. With ``check_vma=True`` the gradient of a replicated parameter is
  already summed over devices, and a further ``pmean`` would leave it n times too large.
  """
  return jax.jit(jax.shard_map(per_device_fn, mesh=mesh, in_specs=in_specs,
                               out_specs=out_specs, check_vma=False),
                 donate_argnums=donate_argnums)


BATCH = P(AXIS)
REPLICATED = P()


def fetch(tree):
  """Device values to host numpy (replicated arrays: this host's copy)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                      else np.asarray(x), tree)
