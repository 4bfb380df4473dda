"""A workdir is never lost: changed configs, two trainers, damaged checkpoints, NaN stops
with a save in flight, a full disk, a preempted sweep and a finished rerun."""
import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

from mcj.core import workdir as workdir_lib
from mcj.core.checkpoint import CheckpointError
from mcj.core.config import ConfigError
from mcj.train import train_and_evaluate

from tests.helpers import (ROOT, TINY, cpu_env, finished_checkpoints, run_cli, start_cli, tiny,
                           wait_for_step)


def snapshot(workdir) -> dict:
  """Every file under ``workdir`` with its bytes' hash and mtime."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = (hashlib.sha256(f.read()).hexdigest(),
                                               os.stat(path).st_mtime_ns)
  return out


def flip_bytes(step_dir, count=64):
  """Inverts ``count`` bytes in the middle of the largest data file of a checkpoint."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if f'{os.sep}d{os.sep}' in os.path.join(r, f)]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, 'rb').read())
  mid = len(data) // 2
  for i in range(count):
    data[mid + i] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(bytes(data))


# ------------------------------------------------------------------ unit level (fast)

def test_config_changes_name_keys_and_skip_safe_ones():
  saved = {'model': {'name': 'resnet20'}, 'batch_size': 32, 'log_every_steps': 1,
           'stages': [{'name': 'a', 'eval_every_steps': 5}]}
  new = {'model': {'name': 'resnet32'}, 'batch_size': 64, 'log_every_steps': 50,
         'stages': [{'name': 'a', 'eval_every_steps': 9}], 'added': 1}
  assert workdir_lib.config_changes(saved, new, defaults={'added': 1}) == [
      'batch_size 32 -> 64', 'model.name "resnet20" -> "resnet32"']
  assert workdir_lib.config_changes(saved, new)[0] == 'added unset -> 1'


def test_lock_refuses_a_second_holder_and_is_gone_after(tmp_path):
  with workdir_lib.WorkdirLock(str(tmp_path)):
    with pytest.raises(ConfigError, match=rf'{tmp_path} is in use by another trainer '
                       rf'\(pid {os.getpid()} on .*\): wait'):
      with workdir_lib.WorkdirLock(str(tmp_path)):
        pass
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)
  with workdir_lib.WorkdirLock(str(tmp_path)):  # free again
    pass


def test_lock_of_a_killed_process_is_released(tmp_path):
  code = ('import sys, time; sys.path.insert(0, sys.argv[1]); from mcj.core import workdir; '
          'workdir.WorkdirLock(sys.argv[2]).__enter__(); print("locked", flush=True); '
          'time.sleep(600)')
  proc = subprocess.Popen([sys.executable, '-c', code, ROOT, str(tmp_path)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'locked'
  with pytest.raises(ConfigError, match=f'pid {proc.pid}'):
    with workdir_lib.WorkdirLock(str(tmp_path)):
      pass
  proc.kill()
  proc.wait()
  with workdir_lib.WorkdirLock(str(tmp_path)):  # the kernel dropped the dead one's lock
    pass


def test_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(ConfigError, match=r'Cannot write to --workdir .*a_file/run \(Not a '
                     r'directory\): choose a writable folder'):
    train_and_evaluate(tiny('steps=1'), str(blocker / 'run'))


# ------------------------------------------------------------------ runs (full tier)

@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished 4-step run (checkpoints at 2 and 4); tests copy it before changing it."""
  workdir = str(tmp_path_factory.mktemp('finished'))
  results = train_and_evaluate(tiny('steps=4,ckpt=2'), workdir)
  return workdir, results


def copy_of(finished_run, tmp_path):
  import shutil
  dest = str(tmp_path / 'run')
  shutil.copytree(finished_run[0], dest)
  return dest


@pytest.mark.slow
@pytest.mark.parametrize('overrides, changed', [
    ({'model.name': 'resnet32'}, 'model.name "resnet20" -> "resnet32"'),
    ({'optimizer.name': 'adam'}, 'optimizer.name "sgd" -> "adam"'),
    ({'batch_size': 16}, 'batch_size 32 -> 16'),
])
def test_changed_config_is_refused_and_nothing_changes(finished_run, tmp_path, overrides,
                                                       changed):
  workdir = copy_of(finished_run, tmp_path)
  os.remove(os.path.join(workdir, 'results.json'))  # unfinished: it would resume
  before = snapshot(workdir)
  with pytest.raises(ConfigError, match=rf'holds a run of another config \({changed}\): use '
                     r'a new --workdir, or pass --allow_config_change'):
    train_and_evaluate(tiny('steps=4,ckpt=2', **overrides), workdir)
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_rerun_of_finished_run_changes_nothing_even_with_safe_keys(finished_run, tmp_path,
                                                                   capsys):
  workdir = copy_of(finished_run, tmp_path)
  before = snapshot(workdir)
  results = train_and_evaluate(tiny('steps=4,ckpt=2,log=2', eval_every_steps=1), workdir)
  assert 'is finished (step 4, eval/accuracy' in capsys.readouterr().out
  assert results == finished_run[1]
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_is_an_error_not_a_restart(finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  os.remove(os.path.join(workdir, 'results.json'))
  before = snapshot(workdir)
  with pytest.raises(ConfigError, match=r'Checkpoint step 4 .* does not fit this run\'s model '
                     r'and optimizer \(missing \d+: .*layer1_3'):
    train_and_evaluate(tiny('steps=4,ckpt=2', **{'model.name': 'resnet32'}), workdir,
                       allow_config_change=True)
  changed = {k for k in set(before) | set(snapshot(workdir))
             if before.get(k) != snapshot(workdir).get(k)}
  # Only the config bookkeeping moved: the earlier config is kept under a time stamp.
  assert all(k.startswith('config.') for k in changed), changed
  assert any(k.startswith('config.2') for k in changed)


@pytest.mark.slow
def test_flipped_bytes_in_newest_checkpoint_fall_back_with_one_line(finished_run, tmp_path,
                                                                    capsys):
  workdir = copy_of(finished_run, tmp_path)
  os.remove(os.path.join(workdir, 'results.json'))
  flip_bytes(os.path.join(workdir, 'checkpoints', '4'))
  results = train_and_evaluate(tiny('steps=4,ckpt=2'), workdir)
  out = capsys.readouterr().out
  lines = [l for l in out.splitlines() if 'damaged' in l]
  assert len(lines) == 1 and 'checkpoint step 4' in lines[0] and 'resuming from step 2' in \
      lines[0], out
  assert 'resumed from step 2' in out
  assert os.listdir(os.path.join(workdir, 'checkpoints_damaged')) == ['4']  # kept, not lost
  # Retraining steps 3-4 from step 2 gives the uninterrupted run's result exactly.
  assert results['eval/accuracy'] == finished_run[1]['eval/accuracy']
  assert results['eval/loss'] == finished_run[1]['eval/loss']


@pytest.mark.slow
def test_every_checkpoint_damaged_is_refused_and_nothing_moves(finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  os.remove(os.path.join(workdir, 'results.json'))
  for step in ('2', '4'):
    flip_bytes(os.path.join(workdir, 'checkpoints', step))
  before = snapshot(workdir)
  with pytest.raises(CheckpointError, match=r'No checkpoint in .* can be restored \(step 4: '
                     r'.*; 1 older ones too\)\. Nothing was changed'):
    train_and_evaluate(tiny('steps=4,ckpt=2'), workdir)
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_second_trainer_on_a_busy_workdir_is_refused(tmp_path):
  workdir = str(tmp_path)
  proc = start_cli(['--config', f'{TINY}:steps=100000,ckpt=100000,log=1'], workdir)
  try:
    wait_for_step(workdir, 2, proc)
    before = open(os.path.join(workdir, 'config.json')).read()
    second = run_cli(['--config', f'{TINY}:steps=5,lr=0.1', '--workdir', workdir])
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f'mcj.train: error: {workdir} is in use by another trainer (pid {proc.pid} on '), lines
    assert open(os.path.join(workdir, 'config.json')).read() == before
  finally:
    proc.kill()
    proc.wait()
  steps = [json.loads(l)['step'] for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert steps == sorted(set(steps))  # each step once: the second trainer wrote nothing


@pytest.mark.slow
def test_nan_stop_with_saves_in_flight_names_a_real_checkpoint_without_tracebacks(tmp_path):
  proc = run_cli(['--config', f'{TINY}:steps=30,ckpt=1,log=1,lr=1e30',
                  '--workdir', str(tmp_path)])
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr and 'orbax' not in proc.stderr.lower(), proc.stderr
  errors = proc.stderr.strip().splitlines()
  assert len(errors) == 1 and errors[0].startswith('mcj.train: error: train/loss is'), errors
  named = int(errors[0].split('checkpoint (step ')[1].split(')')[0])
  assert str(named) in finished_checkpoints(str(tmp_path))
  assert max(map(int, finished_checkpoints(str(tmp_path)))) == named


@pytest.mark.slow
def test_nan_stop_before_any_checkpoint_says_so(tmp_path):
  with pytest.raises(FloatingPointError, match='No checkpoint was saved before it'):
    train_and_evaluate(tiny('steps=30,ckpt=1000,log=1,lr=1e30'), str(tmp_path))


def _small_tmpfs(path):
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(path)],
                           capture_output=True)
  if mounted.returncode:
    pytest.skip('needs a 3 MB tmpfs (mount as root)')


@pytest.mark.slow
def test_full_disk_stops_at_the_failed_save_with_one_line(tmp_path):
  disk = tmp_path / 'disk'
  _small_tmpfs(disk)
  try:
    workdir = str(disk / 'run')  # one tiny-ResNet checkpoint is ~2 MB: the second fails
    proc = run_cli(['--config', f'{TINY}:steps=12,ckpt=2,log=1', '--workdir', workdir])
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith('mcj.train: error: Saving checkpoint step 4 in ')
    assert 'no space left' in errors[0].lower() and 'previous checkpoint (step 2) is kept' in \
        errors[0]
    assert finished_checkpoints(workdir) == ['2']
    steps = [json.loads(l)['step'] for l in open(os.path.join(workdir, 'metrics.jsonl'))]
    assert max(steps) < 12  # it stopped; it did not train on without checkpoints
  finally:
    subprocess.run(['umount', str(disk)], check=False)


@pytest.mark.slow
def test_sigterm_during_sweep_stops_cleanly_and_rerun_completes(tmp_path):
  workdir = str(tmp_path)
  args = [sys.executable, '-m', 'mcj.sweep', '--config', f'{TINY}:steps=30,ckpt=1000,log=1',
          '--grid', 'lr=0.05,0.1', '--workdir', workdir, '--json']
  proc = subprocess.Popen(args, env=cpu_env(1), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  first = os.path.join(workdir, 'lr-0.05', 'seed0')
  wait_for_step(first, 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert 'Traceback' not in out and 'stopped by SIGTERM; rerun the same command' in out, out
  assert not os.path.exists(os.path.join(first, 'results.json'))
  rerun = subprocess.run(args, env=cpu_env(1), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stderr
  assert 'resumed from step' in rerun.stdout
  rows = json.loads(rerun.stdout[rerun.stdout.index('[\n'):])
  assert [r['arg'] for r in rows] == ['lr=0.05', 'lr=0.1']


def test_checkpointer_sets_aside_non_finite_params_and_verifies_checksums(tmp_path):
  """Unit level: a step whose params are not finite (saved that way, checksums and all) is
  set aside; the step before is restored."""
  import jax.numpy as jnp
  import numpy as np
  from mcj.core import checkpoint
  said = []
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, say=said.append)
  good = {'step': jnp.asarray(1), 'params': {'w': jnp.ones((3,))}}
  bad = {'step': jnp.asarray(2), 'params': {'w': jnp.asarray([1.0, np.nan, 1.0])}}
  ckpt.save(1, good)
  ckpt.save(2, bad)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, say=said.append)
  state, step = ckpt.restore_latest(good)
  ckpt.close()
  assert step == 1 and np.asarray(state['params']['w']).tolist() == [1.0, 1.0, 1.0]
  assert len(said) == 1 and "params['w'] is not finite" in said[0]
  assert os.listdir(tmp_path / 'checkpoints_damaged') == ['2']
  assert sorted(checkpoint.checksums(good)) == ["['params']['w']", "['step']"]
