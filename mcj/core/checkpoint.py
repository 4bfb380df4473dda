"""Checkpoints in ``<workdir>/checkpoints`` with orbax, and resume.

Orbax writes each step to a temporary folder and renames it when complete, so a kill
mid-save never leaves a half-written step that looks finished. If the newest finished step
still fails to restore (a damaged disk, a truncated copy), it is skipped with a warning and
the one before is used.
"""
import logging
import os
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util


class Checkpointer:
  """Saves the train state at the steps the trainer asks for; keeps the last ``keep``."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir) if '://' not in workdir else workdir,
                                  'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True))

  def latest_step(self):
    return self.manager.latest_step()

  def restore_latest(self, target):
    """Returns ``(state, step)`` from the newest readable step, or ``(None, None)``.

    ``target`` is the freshly initialised state: it fixes the tree, shapes, dtypes and
    shardings of what is restored.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return state, step
      except Exception as e:  # pylint: disable=broad-except
        warnings.warn(f'Checkpoint step {step} in {self.directory} could not be restored '
                      f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); trying the '
                      'previous one.')
    return None, None

  def save(self, step: int, state) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_variables(path: str) -> dict:
  """``{'params', 'batch_stats'}`` of the newest checkpoint under ``path``: an mcj workdir,
  its ``checkpoints`` folder, or one step's folder. Arrays land on this host's first device.
  """
  path = os.path.abspath(path) if '://' not in path else path
  step_dir = _find_step_dir(path)
  item = os.path.join(step_dir, 'default')
  checkpointer = ocp.StandardCheckpointer()
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # orbax warns that a step folder has no metadata file
  try:
    meta = checkpointer.metadata(item).item_metadata.tree
  finally:
    absl_logger.setLevel(level)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
  state = checkpointer.restore(item, abstract)
  return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}


def _find_step_dir(path: str) -> str:
  from mcj.core.config import ConfigError  # pylint: disable=g-import-not-at-top
  for candidate in (os.path.join(path, 'checkpoints'), path):
    if os.path.isdir(os.path.join(candidate, 'default')):
      return candidate
    if os.path.isdir(candidate):
      steps = [int(d) for d in os.listdir(candidate) if d.isdigit()
               and os.path.isdir(os.path.join(candidate, d, 'default'))]
      if steps:
        return os.path.join(candidate, str(max(steps)))
  raise ConfigError(f'No checkpoint found in {path}: give an mcj workdir (with checkpoints/), '
                    'its checkpoints folder, or one step folder.')


def fit_variables(target, loaded, source: str):
  """``loaded`` arranged as ``target`` (same tree, shapes, dtypes); a mismatch is one
  ConfigError listing the missing, unexpected and wrongly shaped entries."""
  from mcj.core.config import ConfigError  # pylint: disable=g-import-not-at-top
  flat_target = _flat(target)
  flat_loaded = _flat(loaded)
  missing = sorted(set(flat_target) - set(flat_loaded))
  unexpected = sorted(set(flat_loaded) - set(flat_target))
  reshaped = sorted(k for k in set(flat_target) & set(flat_loaded)
                    if flat_target[k] is not traverse_util.empty_node
                    and tuple(flat_target[k].shape) != tuple(flat_loaded[k].shape))
  if missing or unexpected or reshaped:
    def some(keys):
      return ', '.join(keys[:8]) + (f' (+{len(keys) - 8} more)' if len(keys) > 8 else '')
    parts = [f'missing {len(missing)}: {some(missing)}' if missing else '',
             f'unexpected {len(unexpected)}: {some(unexpected)}' if unexpected else '',
             'shape differs for ' + some([f'{k} {tuple(flat_loaded[k].shape)} vs model '
                                          f'{tuple(flat_target[k].shape)}' for k in reshaped])
             if reshaped else '']
    raise ConfigError(f'The checkpoint in {source} does not fit the model: '
                      + '; '.join(p for p in parts if p) + '.')
  # Host arrays: the caller places them (e.g. replicated over every device of every host).
  return traverse_util.unflatten_dict(
      {k: v if v is traverse_util.empty_node else np.asarray(flat_loaded[k]).astype(v.dtype)
       for k, v in flat_target.items()}, sep='/')


def _flat(tree) -> dict:
  """'a/b/kernel' -> array (flax's traverse_util)."""
  return traverse_util.flatten_dict(_plain(tree), keep_empty_nodes=True, sep='/')


def _plain(tree):
  """Nested plain dicts (FrozenDicts and orbax's restored mappings included)."""
  if hasattr(tree, 'items'):
    return {k: _plain(v) for k, v in tree.items()}
  return tree
