"""A run's workdir is never lost: one trainer at a time, and a changed config never
replaces the run that is there.

``WorkdirLock`` is an advisory ``flock`` on ``<workdir>/.lock``: the kernel drops it when
its process dies, so a killed trainer never leaves a workdir locked. ``check_config``
compares a new config with the ``config.json`` of a workdir that already holds work
(checkpoints or results): keys in ``SAFE_TO_CHANGE`` may differ; any other difference is a
``ConfigError`` naming the keys, unless the caller allows the change, in which case the
earlier ``config.json`` and ``results.json`` are kept under a time-stamped name.
"""
import contextlib
import datetime
import json
import os
import socket

from mcj.core.config import ConfigError
from mcj.core import metrics as metrics_lib

LOCK_NAME = '.lock'
# Keys that change how a run is observed or stored, not what it computes.
SAFE_TO_CHANGE = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                  'keep_checkpoints', 'eval_batch_size', 'data.data_dir')


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds the workdir for this process; a second trainer
  gets one ConfigError line naming the holder."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.fd = None

  def __enter__(self):
    if '://' in self.workdir:  # object stores have no flock: no lock
      return self
    import fcntl  # pylint: disable=g-import-not-at-top
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        holder = os.read(fd, 200).decode(errors='replace').strip() or 'another process'
        os.close(fd)
        raise ConfigError(f'{self.workdir} is in use by another trainer ({holder}): wait for '
                          'it to end, or use another --workdir.') from None
      # The holder before us may have removed the file after we opened it: lock anew.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    started = datetime.datetime.now().isoformat(timespec='seconds')
    os.ftruncate(fd, 0)
    os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}, since {started}'.encode())
    self.fd = fd
    return self

  def __exit__(self, *exc):
    if self.fd is not None:
      try:
        os.unlink(self.path)
      except OSError:
        pass
      os.close(self.fd)  # closing drops the flock
      self.fd = None


def has_work(workdir: str) -> bool:
  """Whether ``workdir`` holds results or a finished checkpoint (its own or a stage's)."""
  if not os.path.isdir(workdir):
    return False
  if os.path.exists(os.path.join(workdir, 'results.json')):
    return True
  checkpoints = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints)):
    return True
  return any(has_work(os.path.join(workdir, d)) for d in os.listdir(workdir)
             if os.path.isfile(os.path.join(workdir, d, 'config.json')))


def config_changes(saved: dict, new: dict, defaults: dict | None = None) -> list[str]:
  """``'key: old -> new'`` for each key that differs, except ``SAFE_TO_CHANGE``; a key
  only one side has counts as its value in ``defaults`` (a key added by a newer mcj)."""
  old_flat, new_flat = _flatten(saved), _flatten(new)
  default_flat = _flatten(defaults or {})
  missing = object()
  changes = []
  for key in sorted(set(old_flat) | set(new_flat)):
    if key in SAFE_TO_CHANGE or key.endswith(tuple('.' + k for k in SAFE_TO_CHANGE)):
      continue
    old = old_flat.get(key, default_flat.get(key, missing))
    value = new_flat.get(key, default_flat.get(key, missing))
    if old != value:
      def show(v):
        return 'unset' if v is missing else json.dumps(v)
      changes.append(f'{key} {show(old)} -> {show(value)}')
  return changes


def check_config(workdir: str, config: dict, *, allow_change: bool = False,
                 defaults: dict | None = None, say=print) -> None:
  """Refuses (ConfigError) to run ``config`` in a workdir whose work came from another
  config; with ``allow_change`` the old ``config.json`` / ``results.json`` are kept as
  ``config.<time>.json`` / ``results.<time>.json`` and the run resumes with the new one."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path) or not has_work(workdir):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} cannot be read ({e}); it describes the run in this workdir: '
                      'restore it, or use a new --workdir.') from None
  changes = config_changes(saved, json.loads(json.dumps(config)), defaults)
  if not changes:
    return
  shown = ', '.join(changes[:4]) + (f' (+{len(changes) - 4} more)' if len(changes) > 4 else '')
  if not allow_change:
    raise ConfigError(f'{workdir} holds a run of another config ({shown}): use a new '
                      '--workdir, or pass --allow_config_change to resume it with these '
                      'values.')
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  for name in ('config', 'results'):
    old = os.path.join(workdir, f'{name}.json')
    if os.path.exists(old):
      os.replace(old, os.path.join(workdir, f'{name}.{stamp}.json'))
  say(f'mcj: resuming {workdir} with a changed config ({shown}); the earlier config is kept '
      f'as config.{stamp}.json.')


def _flatten(tree, prefix='') -> dict:
  """``{'a.b': 1, 'stages[0].name': 'x'}`` for nested dicts and lists."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
  elif isinstance(tree, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in tree):
    for i, v in enumerate(tree):
      out.update(_flatten(v, f'{prefix}[{i}]'))
  else:
    out[prefix] = list(tree) if isinstance(tree, tuple) else tree
  return out


@contextlib.contextmanager
def open_run(workdir: str, config: dict, config_json: str, *, allow_change: bool = False,
             is_main: bool = True, defaults: dict | None = None, say=print):
  """Holds ``workdir`` for one run (``WorkdirLock``), refuses a changed config
  (``check_config``) and yields the earlier results if the run is finished, else None
  after writing ``config.json``. An unwritable workdir is one ConfigError line."""
  if is_main:
    try:
      os.makedirs(workdir, exist_ok=True)
      probe = os.path.join(workdir, f'.write_test-{os.getpid()}')
      with open(probe, 'w'):
        pass
      os.remove(probe)
    except OSError as e:
      raise ConfigError(f'Cannot write to --workdir {workdir} ({e.strerror}): choose a '
                        'writable folder.') from None
  with WorkdirLock(workdir) if is_main else contextlib.nullcontext():
    check_config(workdir, config, allow_change=allow_change and is_main, defaults=defaults,
                 say=say)
    results_path = os.path.join(workdir, 'results.json')
    if os.path.exists(results_path):
      with open(results_path) as f:
        results = json.load(f)
      metric, value = metrics_lib.headline(results)
      say(f'mcj: {workdir} is finished (step {results.get("step")}'
          + (f', {metric} {value:.4f}' if isinstance(value, float) else '')
          + '); its results.json is left as it was. Use a new --workdir to train again.')
      yield results
      return
    config_path = os.path.join(workdir, 'config.json')
    if is_main and not _holds(config_path, config_json):
      write_atomically(config_path, config_json)
    yield None


def _holds(path: str, text: str) -> bool:
  try:
    with open(path) as f:
      return f.read() == text
  except OSError:
    return False


def write_atomically(path: str, text: str) -> None:
  """Writes a temporary file and renames it over ``path``: a kill or a full disk leaves
  the old file or the new one, never half of one."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
