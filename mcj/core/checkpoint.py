"""Checkpoints in ``<workdir>/checkpoints`` with orbax: verified saves and restores.

Orbax writes each step to a temporary folder and renames it when complete, so a kill
mid-save never leaves a half-written step that looks finished. Each save also records a
CRC32 of every array (in the step's orbax metadata, written with the step), so a restore
can tell a damaged checkpoint from a good one: a step that fails to read, whose arrays do
not match their checksums, or whose params are not finite is moved to
``<workdir>/checkpoints_damaged/`` (kept, never deleted) and the step before it is used,
with one line. A checkpoint whose arrays do not fit the model is an error, never a reason
to start over; so is a workdir whose every checkpoint is damaged.
"""
import logging
import os
import shutil
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mcj.core import parallel
from mcj.core.config import ConfigError

CHECKSUM_KEY = 'mcj_crc32'


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved or restored: printed as one line, exit code 1."""


class Checkpointer:
  """Saves the train state at the steps the trainer asks for; keeps the last ``keep``.

  Saves are asynchronous; ``close`` (call it on every exit path) waits for the one in
  flight. A save that failed in the background (a full disk) raises ``CheckpointError`` at
  the next ``save``, ``check`` or ``close``.
  """

  def __init__(self, workdir: str, keep: int = 3, say=print):
    root = os.path.abspath(workdir) if '://' not in workdir else workdir
    self.directory = os.path.join(root, 'checkpoints')
    self.damaged_directory = os.path.join(root, 'checkpoints_damaged')
    self.say = say
    self._in_flight = None  # the step being written in the background
    _mute_late_write_callbacks()
    _barriers_through_the_coordinator()
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True))

  def finished_steps(self) -> list[int]:
    """Steps whose save completed (orbax also lists the one still being written)."""
    return [s for s in self.manager.all_steps() if s != self._in_flight]

  def latest_step(self):
    steps = self.finished_steps()
    return max(steps) if steps else None

  def restore_latest(self, target):
    """Returns ``(state, step)`` from the newest good step, or ``(None, None)`` if there is
    no checkpoint.

    ``target`` is the freshly initialised state: it fixes the tree, shapes, dtypes and
    shardings of what is restored.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    damaged = []
    for step in steps:
      problem = self._misfit(step, target)
      state = None
      if not problem:
        try:
          state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # pylint: disable=broad-except
          problem = f'unreadable ({_first_line(e)})'
        else:
          problem = self._damage(step, state)
      if not problem:
        if damaged:
          self._set_aside([s for s, _ in damaged])
          self.say(f'mcj: checkpoint step {damaged[0][0]} in {self.directory} is damaged '
                   f'({damaged[0][1]}); moved to {self.damaged_directory}'
                   + (f' with {len(damaged) - 1} more' if len(damaged) > 1 else '')
                   + f'; resuming from step {step}.')
        return state, step
      damaged.append((step, problem))
    if damaged:
      raise CheckpointError(
          f'No checkpoint in {self.directory} can be restored (step {damaged[0][0]}: '
          f'{damaged[0][1]}' + (f'; {len(damaged) - 1} older ones too' if len(damaged) > 1
                                else '') + '). Nothing was changed: move that folder away '
          'to train from step 0.')
    return None, None

  def _misfit(self, step, target):
    """Why step's arrays cannot be this state (a ConfigError), or '' if they fit; a
    metadata file that cannot be read is damage, returned as the problem."""
    try:
      meta = self.manager.item_metadata(step)
      meta = getattr(meta, 'tree', meta)
      saved = {k: tuple(v.shape) for k, v in ocp.tree.to_flat_dict(meta).items()
               if hasattr(v, 'shape')}
    except Exception as e:  # pylint: disable=broad-except
      return f'unreadable metadata ({_first_line(e)})'
    if not saved:
      return 'no arrays in its metadata'
    wanted = {k: tuple(np.shape(v)) for k, v in ocp.tree.to_flat_dict(target).items()}
    description = describe_mismatch({'/'.join(map(str, k)): v for k, v in wanted.items()},
                                    {'/'.join(map(str, k)): v for k, v in saved.items()})
    if description:
      raise ConfigError(f'Checkpoint step {step} in {self.directory} does not fit this '
                        f'run\'s model and optimizer ({description}): use a new --workdir, '
                        'or init_from to take its params.')
    return ''

  def _damage(self, step, state) -> str:
    """'' if the restored arrays match the checksums saved with them and the params are
    finite; else what is wrong."""
    try:
      saved = (self.manager.metadata(step).custom_metadata or {}).get(CHECKSUM_KEY)
    except Exception:  # pylint: disable=broad-except
      saved = None
    if saved:
      now = checksums(state)
      bad = sorted(k for k in saved if now.get(k) != saved[k])
      if bad or set(now) != set(saved):
        return f'checksum differs for {", ".join(bad[:3]) or "the tree"}'
    params = parallel.fetch(state.get('params', {}))
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      if not np.isfinite(leaf).all():
        return f'params{jax.tree_util.keystr(path)} is not finite'
    return ''

  def _set_aside(self, steps):
    os.makedirs(self.damaged_directory, exist_ok=True)
    for step in steps:
      source = os.path.join(self.directory, str(step))
      dest = os.path.join(self.damaged_directory, str(step))
      n = 1
      while os.path.exists(dest):
        dest, n = os.path.join(self.damaged_directory, f'{step}.{n}'), n + 1
      shutil.move(source, dest)
    self.manager.reload()

  def save(self, step: int, state) -> None:
    """Starts writing ``state`` as ``step`` (in the background), with its checksums."""
    self.check()
    if step in self.manager.all_steps():
      return
    self._guard(lambda: self.manager.save(
        step, args=ocp.args.StandardSave(state),
        custom_metadata={CHECKSUM_KEY: checksums(state)}, force=True), step)
    self._in_flight = step

  def check(self) -> None:
    """Raises ``CheckpointError`` if the save in the background has failed."""
    if self._in_flight is not None:
      self._guard(self.manager.check_for_errors, self._in_flight)

  def wait(self) -> None:
    """Waits for the save in flight; ``CheckpointError`` if it failed."""
    if self._in_flight is not None:
      self._guard(self.manager.wait_until_finished, self._in_flight)
      self._in_flight = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._in_flight = None
      _quietly(self.manager.close)

  def _guard(self, fn, step):
    try:
      with _orbax_logs_silenced():
        return fn()
    except Exception as e:  # pylint: disable=broad-except
      if self._in_flight is not None:  # the background save failed, not this one
        step, self._in_flight = self._in_flight, None
      kept = self.latest_step()
      raise CheckpointError(
          f'Saving checkpoint step {step} in {self.directory} failed: {_root_cause(e)}. '
          + (f'The previous checkpoint (step {kept}) is kept.' if kept is not None
             else 'No earlier checkpoint exists.')) from None


def checksums(state) -> dict:
  """``{tree path: CRC32 of the array's bytes}`` over ``state`` (this host's copy)."""
  return {jax.tree_util.keystr(path): zlib.crc32(np.ascontiguousarray(leaf).tobytes())
          for path, leaf in jax.tree_util.tree_flatten_with_path(parallel.fetch(state))[0]}


def _first_line(e) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:160]}' if text else type(e).__name__


def _root_cause(e) -> str:
  """The innermost OSError's message (e.g. 'No space left on device'), else the first
  line of ``e`` (tensorstore reports a full disk as RESOURCE_EXHAUSTED)."""
  seen, stack = set(), [e]
  while stack:
    x = stack.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    if isinstance(x, OSError) and x.strerror:
      return x.strerror
    if 'RESOURCE_EXHAUSTED' in str(x):
      return 'no space left on the device (RESOURCE_EXHAUSTED)'
    stack += [x.__cause__, x.__context__] + [a for a in getattr(x, 'args', ())
                                              if isinstance(a, BaseException)]
  return _first_line(e)


_MUTED = False


def _barriers_through_the_coordinator():
  """Several hosts: orbax's barriers wait on jax.distributed's coordinator, not on a
  device collective. By default a barrier is a ``psum`` (``sync_global_devices``), and orbax
  runs some from its background threads (asynchronous directory creation, finalisation);
  there they can take a different place among the training step's collectives on each
  host, and the hosts deadlock (seen as a Gloo all-reduce timeout on CPU)."""
  if jax.process_count() == 1:
    return
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag = flags.FLAGS['experimental_orbax_use_distributed_barrier']
  if not flag.present:
    flag.parse('true')


def _mute_late_write_callbacks():
  """After a failed async save, tensorstore's remaining writes call back into orbax's
  closed event loop and print a traceback each ('Event loop is closed', and asyncio's
  'exception was never retrieved'); the failure is reported in one line (``_guard``), so those are dropped. Installed once per process."""
  import sys  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  global _MUTED
  if _MUTED:
    return
  _MUTED = True

  def closed_loop(exc):
    return isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)

  def wrap(hook, get_exc):
    def muted(*args):
      if not closed_loop(get_exc(*args)):
        hook(*args)
    return muted
  class NeverRetrieved(logging.Filter):
    """asyncio logs each of those writes' failures again when the task is collected."""

    def filter(self, record):
      return 'exception was never retrieved' not in str(record.msg)
  logging.getLogger('asyncio').addFilter(NeverRetrieved())

  class BackgroundFailure(logging.Filter):
    """Orbax's writer threads log their failure (a traceback per thread) before the
    future re-raises it in the main thread, at any time during training: not only
    inside ``_guard``'s quiet window."""

    def filter(self, record):
      return not (record.levelno >= logging.ERROR and 'orbax' in record.pathname
                  and threading.current_thread() is not threading.main_thread())
  logging.getLogger('absl').addFilter(BackgroundFailure())
  sys.excepthook = wrap(sys.excepthook, lambda t, v, tb: v)
  sys.unraisablehook = wrap(sys.unraisablehook, lambda u: u.exc_value)
  threading.excepthook = wrap(threading.excepthook, lambda a: a.exc_value)


class _orbax_logs_silenced:
  """Orbax logs a failed background save as pages of tracebacks before raising it; the
  caller turns the exception into one line instead."""

  def __enter__(self):
    self.logger = logging.getLogger('absl')
    self.level = self.logger.level
    self.logger.setLevel(logging.CRITICAL)

  def __exit__(self, *exc):
    self.logger.setLevel(self.level)


def _quietly(fn):
  try:
    with _orbax_logs_silenced():
      fn()
  except Exception:  # pylint: disable=broad-except
    pass


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


def describe_mismatch(wanted: dict, saved: dict) -> str:
  """'' if ``saved`` has exactly ``wanted``'s keys and shapes (``{path: shape}``), else the
  missing, unexpected and wrongly shaped entries, for one line."""
  missing = sorted(set(wanted) - set(saved))
  unexpected = sorted(set(saved) - set(wanted))
  reshaped = sorted(k for k in set(wanted) & set(saved) if wanted[k] != saved[k])

  def some(keys):
    return ', '.join(keys[:8]) + (f' (+{len(keys) - 8} more)' if len(keys) > 8 else '')
  parts = [f'missing {len(missing)}: {some(missing)}' if missing else '',
           f'unexpected {len(unexpected)}: {some(unexpected)}' if unexpected else '',
           'shape differs for ' + some([f'{k} {saved[k]} vs model {wanted[k]}'
                                        for k in reshaped]) if reshaped else '']
  return '; '.join(p for p in parts if p)


def fit_variables(target, loaded, source: str):
  """``loaded`` arranged as ``target`` (same tree, shapes, dtypes); a mismatch is one
  ConfigError listing the missing, unexpected and wrongly shaped entries."""
  flat_target = _flat(target)
  flat_loaded = _flat(loaded)

  def shapes(flat):
    return {k: None if v is traverse_util.empty_node else tuple(v.shape)
            for k, v in flat.items()}
  description = describe_mismatch(shapes(flat_target), shapes(flat_loaded))
  if description:
    raise ConfigError(f'The checkpoint in {source} does not fit the model: {description}.')
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
