"""Checkpoints in ``<workdir>/checkpoints`` with orbax, and resume.

Orbax writes each step to a temporary folder and renames it when complete, so a kill
mid-save never leaves a half-written step that looks finished. If the newest finished step
still fails to restore (a damaged disk, a truncated copy), it is skipped with a warning and
the one before is used.
"""
import os
import warnings

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves the train state every ``every_steps`` steps and at the end; keeps the last ``keep``."""

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

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
