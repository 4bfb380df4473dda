"""The trainer end to end: outputs, resume, errors, devices, hosts, kills and preemption.

In-process tests run on the four CPU devices set up in conftest.py; tests that need a
different device count, several processes or a kill run ``python -m mcj.train`` in
subprocesses.
"""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from mcj.core.config import ConfigError
from mcj.train import train_and_evaluate

from tests.helpers import (ROOT, TINY, assert_trees_equal, final_params, kill_step,  # noqa: F401
                           losses_on_devices, read_metrics, run_cli, start_cli, tiny, train_losses, wait_for_step)

# Trains end to end or starts subprocesses: the full tier only.
pytestmark = pytest.mark.slow


# ------------------------------------------------------------------ outputs and resume

def test_outputs_and_resume(tmp_path, capsys):
  workdir = str(tmp_path)
  config = tiny('steps=6,ckpt=4,log=2', eval_every_steps=3)
  results = train_and_evaluate(config, workdir)
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json', 'metrics.jsonl',
                                         'results.json', 'tensorboard']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '6']
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['model']['name'] == 'resnet20' and saved['total_steps'] == 6
  metrics = read_metrics(workdir)
  train = [m for m in metrics if 'train/loss' in m]
  assert [m['step'] for m in train] == [2, 4, 6]
  for m in train:
    assert {'train/loss', 'train/accuracy', 'lr', 'img_per_sec', 'eta_seconds'} <= set(m)
  evals = [m for m in metrics if 'eval/accuracy' in m]
  assert [m['step'] for m in evals] == [3, 6]
  assert 'eval/top5_accuracy' not in evals[0]  # 10 classes: top-1 only
  on_disk = json.load(open(os.path.join(workdir, 'results.json')))
  assert on_disk['step'] == 6 and on_disk['params'] == 269_434
  assert on_disk['eval/accuracy'] == pytest.approx(results['eval/accuracy'])
  assert 0.0 <= on_disk['eval/accuracy'] <= 1.0 and on_disk['train_seconds'] > 0
  out = capsys.readouterr().out
  assert 'step       2/6 | loss' in out and 'img/s | ETA' in out

  # The same command again: the run is finished, its results are left as they were.
  before = open(os.path.join(workdir, 'results.json')).read()
  again = train_and_evaluate(config, workdir)
  assert f'{workdir} is finished (step 6' in capsys.readouterr().out
  assert again == json.loads(before)
  assert open(os.path.join(workdir, 'results.json')).read() == before
  assert read_metrics(workdir) == metrics


def test_longer_run_resumes_and_truncates_stale_metrics(tmp_path):
  workdir = str(tmp_path)
  train_and_evaluate(tiny('steps=4,ckpt=2,log=1'), workdir)
  # Extend the run (an explicit config change): it restarts from step 4 and continues the
  # data stream; the first run's config and results are kept beside the new ones.
  train_and_evaluate(tiny('steps=8,ckpt=2,log=1'), workdir, allow_config_change=True)
  steps = [m['step'] for m in read_metrics(workdir) if 'train/loss' in m]
  assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
  kept = sorted(f for f in os.listdir(workdir) if f.count('.') == 2)
  assert [f.split('.')[0] for f in kept] == ['config', 'results'], kept
  assert json.load(open(os.path.join(workdir, kept[0])))['total_steps'] == 4
  assert json.load(open(os.path.join(workdir, kept[1])))['step'] == 4


# ------------------------------------------------------------------ clear errors

@pytest.mark.parametrize('overrides, message', [
    ({'model.name': 'resnet7'}, r"Unknown model 'resnet7'. Did you mean .*Valid: .*resnet20"),
    ({'data.name': 'no_such_dataset'}, r'no_such_dataset.*digits, synthetic'),
    ({'optimizer.name': 'adagrad'}, r"Unknown optimizer 'adagrad'. Valid: adam, adamw, lamb, sgd"),
    ({'schedule.name': 'exp'}, r"Unknown schedule 'exp'"),
    ({'batch_size': 6}, r'batch_size=6 is not divisible by the 4 devices.*multiple of 4'),
])
def test_bad_settings_are_clear_errors(tmp_path, overrides, message):
  with pytest.raises(ConfigError, match=message):
    train_and_evaluate(tiny('steps=1', **overrides), str(tmp_path))


def test_cli_error_is_one_line_with_exit_code_2(tmp_path):
  proc = run_cli(['--config', TINY, '--workdir', str(tmp_path), '--config.model.name=nope'])
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.startswith('mcj.train: error:')]
  assert len(lines) == 1 and 'Valid: ' in lines[0] and 'Traceback' not in proc.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = tiny('steps=30,ckpt=1,log=1,lr=1e30')
  with pytest.raises(FloatingPointError, match=r'train/loss is (nan|inf) at step \d+') as e:
    train_and_evaluate(config, workdir)
  step, params = final_params(workdir)
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params)), step
  # The checkpoint it names is a finished one (the save in flight has landed).
  assert f'last good checkpoint (step {step})' in str(e.value)
  assert not [d for d in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in d]


# ------------------------------------------------------------------ devices and hosts

def test_one_and_four_devices_give_the_same_losses(tmp_path):
  """Same config and global batch: per-device step + pmean == one big step."""
  args = ['--config', f'{TINY}:steps=50,batch=64,ckpt=0,lr=0.002,shallow']
  losses = losses_on_devices(args, tmp_path)
  assert sorted(losses[1]) == list(range(1, 51))
  a, b = np.array(list(losses[1].values())), np.array(list(losses[4].values()))
  np.testing.assert_allclose(b, a, rtol=1e-4)
  assert a[-1] < a[0]  # it trained


def test_two_processes_match_one_process(tmp_path):
  """2 processes x 2 CPU devices (launch/local.py) == 1 process x 4 devices."""
  args = ['--config', f'{TINY}:steps=20,batch=64,ckpt=10,lr=0.002,shallow']
  one = str(tmp_path / 'one')
  assert run_cli(args + ['--workdir', one], devices=4).returncode == 0
  two = str(tmp_path / 'two')
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'local.py'), '--num_processes', '2',
       '--devices_per_process', '2', '--', *args, '--workdir', two],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert '[0] mcj: 2 host(s), 4 cpu device(s)' in proc.stdout
  a, b = train_losses(one), train_losses(two)
  assert sorted(a) == sorted(b) == list(range(1, 21))
  np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=1e-4)
  ra = json.load(open(os.path.join(one, 'results.json')))
  rb = json.load(open(os.path.join(two, 'results.json')))
  assert rb['eval/accuracy'] == pytest.approx(ra['eval/accuracy'], abs=1 / 360)
  assert final_params(two)[0] == 20


# ------------------------------------------------------------------ kills and preemption

def test_sigkill_at_random_step_then_rerun_is_bitwise_identical(tmp_path):
  args = ['--config', f'{TINY}:steps=60,batch=32,ckpt=7,log=1']
  straight = str(tmp_path / 'straight')
  assert run_cli(args + ['--workdir', straight]).returncode == 0

  killed = str(tmp_path / 'killed')
  kill_at = kill_step(8, 50, 'sigkill')
  proc = start_cli(args, killed)
  # A random step once a checkpoint has been finished, so the rerun really resumes.
  kill_at = wait_for_step(killed, kill_at, proc, need_checkpoint=True)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rerun = run_cli(args + ['--workdir', killed])
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'resumed from step' in rerun.stdout, f'kill at step {kill_at}: {rerun.stdout}'

  step_a, params_a = final_params(straight)
  step_b, params_b = final_params(killed)
  assert step_a == step_b == 60
  assert_trees_equal(params_a, params_b)
  assert train_losses(straight) == train_losses(killed)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path)
  proc = start_cli(['--config', f'{TINY}:steps=100000,ckpt=100000,log=1'], workdir)
  wait_for_step(workdir, 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert 'stopped by SIGTERM' in out
  step, params = final_params(workdir)
  assert 3 <= step < 100000
  assert f'stopped by SIGTERM at step {step}' in out


# ------------------------------------------------------------------ init_from

def test_init_from_copies_params_and_mismatch_lists_entries(tmp_path):
  from mcj.core import checkpoint as checkpoint_lib
  first = str(tmp_path / 'first')
  train_and_evaluate(tiny('steps=3,shallow'), first)
  # lr 0: one step changes only the BN statistics, so params must equal the source's.
  second = str(tmp_path / 'second')
  config = tiny('steps=1,shallow,lr=0.0', init_from=first)
  config.optimizer.weight_decay = 0.0
  train_and_evaluate(config, second)
  source = checkpoint_lib.load_variables(first)['params']
  copied = checkpoint_lib.load_variables(second)['params']
  assert_trees_equal(jax.tree.map(np.asarray, source), jax.tree.map(np.asarray, copied))
  with pytest.raises(ConfigError, match=r'does not fit the model: missing \d+: layer1_1/'):
    train_and_evaluate(tiny('steps=1', init_from=first), str(tmp_path / 'deeper'))
  with pytest.raises(ConfigError, match='No checkpoint found'):
    train_and_evaluate(tiny('steps=1', init_from=str(tmp_path / 'nothing')), str(tmp_path / 'x'))


# ----------------------------------------------------------------------------- data-dependent init
LSQ_VIT = {'seed': 0, 'batch_size': 48, 'total_steps': 1, 'log_every_steps': 1,
           'checkpoint_every_steps': 0, 'eval_every_steps': 0, 'data': {'name': 'digits'},
           'model': {'name': 'vit_tiny_patch2', 'num_layers': 1, 'hidden_size': 16,
                     'num_heads': 2, 'mlp_ratio': 2, 'input_quantizer': 'lsq(bits=8)',
                     'kernel_quantizer': 'lsq(bits=8)',
                     'query_key_quantizer': 'lsq(bits=8)', 'value_quantizer': 'lsq(bits=8)'}}


def _lsq_inputs(model, variables, x):
  """{module path: the input each LSQ quantizer sees} in one forward pass."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from mcj.quant.quantizers import LSQ  # pylint: disable=g-import-not-at-top

  def forward(variables, x):
    seen = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, LSQ) and context.method_name == '__call__':
        seen['/'.join(context.module.path)] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      model.apply(variables, x, train=False)
    return seen

  return {k: np.asarray(v, np.float64) for k, v in jax.jit(forward)(variables, x).items()}


def _steps(params):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return {k[:-len('/step')]: float(v) for k, v in
          traverse_util.flatten_dict(params, sep='/').items() if k.endswith('/step')}


def _assert_lsq_init(model, params, x):
  """Every LSQ step is the paper's 2 mean|x| / sqrt(Qp) of what it sees on ``x``."""
  seen, steps = _lsq_inputs(model, {'params': params}, x), _steps(params)
  assert sorted(seen) == sorted(steps) and len(steps) >= 8
  for path, inputs in seen.items():
    assert steps[path] == pytest.approx(2 * np.abs(inputs).mean() / np.sqrt(127), rel=1e-4), path


def test_learned_scales_start_from_the_first_training_batch():
  """LSQ's activation steps are initialised on the first training batch (its first 32
  examples, whatever the device count), not on the all-zero example: on it the patch
  embedding's output is 0 and the step would fall back to a constant."""
  from mcj.train import trainer  # pylint: disable=g-import-not-at-top
  from mcj.train.schema import merge_config  # pylint: disable=g-import-not-at-top
  exp = trainer.build(merge_config(LSQ_VIT), say=lambda *a: None)
  inputs = trainer.first_inputs(exp)
  first = next(exp.dataset.train_batches(0, 48))['image']
  np.testing.assert_array_equal(inputs, first[:32])
  params = jax.device_get(trainer.init_state(exp, inputs)['params'])
  _assert_lsq_init(exp.model, params, inputs)  # on zeros the steps take the fallback


@pytest.mark.slow
def test_partial_init_from_initialises_scales_with_the_loaded_weights(tmp_path):
  """A quantized student started from a float run (``init_from_partial``): its LSQ steps
  are computed on the first batch by the model carrying the float weights (LSQ and BiT
  fine-tune so), not kept from the random model's init."""
  from mcj.core import checkpoint  # pylint: disable=g-import-not-at-top
  from mcj.train import trainer  # pylint: disable=g-import-not-at-top
  from mcj.train.schema import merge_config  # pylint: disable=g-import-not-at-top
  float_model = {k: v for k, v in LSQ_VIT['model'].items() if 'quantizer' not in k}
  train_and_evaluate({**LSQ_VIT, 'model': float_model}, str(tmp_path / 'float'))
  exp = trainer.build(merge_config({**LSQ_VIT, 'init_from': str(tmp_path / 'float'),
                                    'init_from_partial': True}), say=lambda *a: None)
  inputs = trainer.first_inputs(exp)
  checkpointer = checkpoint.Checkpointer(str(tmp_path / 'q8'), say=lambda *a: None)
  try:
    state = trainer.restore(exp, trainer.init_state(exp, inputs), checkpointer,
                            say=lambda *a: None, inputs=inputs)
  finally:
    checkpointer.close()
  params = jax.device_get(state['params'])
  loaded = checkpoint.load_variables(str(tmp_path / 'float'))['params']
  assert_trees_equal(params['head'], loaded['head'])
  _assert_lsq_init(exp.model, params, inputs)
