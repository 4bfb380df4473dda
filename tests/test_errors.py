"""Every mistake is one line that says what to do: the command-line entry points called
in-process (nothing trains), and overrides of pipelines and model options."""
import json
import os
import re
import subprocess
import sys

import pytest

from mcj import bench, summary, sweep
from mcj.core import config as config_lib
from mcj.core.config import ConfigError
from mcj.train import __main__ as train_main
from mcj.train import merge_config
from mcj.train.schema import apply_overrides

from tests.helpers import ROOT, TINY

QUICKSTART = os.path.join(ROOT, 'configs', 'quickstart.py')


def one_error_line(capsys, prefix):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(prefix) and 'Traceback' not in err[0], err
  return err[0]


@pytest.mark.parametrize('args, message', [
    # Tracebacks before.
    (['--config.batch_size=0'], r'config.batch_size must be a positive integer, got 0\.'),
    (['--config.batch_size=-8'], r'config.batch_size must be a positive integer, got -8\.'),
    (['--config.log_every_steps=0'], r'config.log_every_steps must be a positive integer'),
    (['--config.keep_checkpoints=-1'], r'keep_checkpoints must be at least 1'),
    # Silent nonsense before.
    (['--config.total_steps=0'], r'config.total_steps must be a positive integer, got 0'),
    (['--config.total_steps=-5'], r'config.total_steps must be a positive integer, got -5'),
    (['--config.keep_checkpoints=0'], r'keep_checkpoints must be at least 1 \(a rerun resumes'),
    (['--config.optimizer.lr=-1'], r'config.optimizer.lr must be >= 0, got -1.0'),
    (['--config.distill.temperature=0'], r'config.distill.temperature must be positive'),
    (['--config.mixup_alpha=-1'], r'config.mixup_alpha must be >= 0'),
    (['--config.label_smoothing=1.5'], r'config.label_smoothing must be in \[0, 1\)'),
    (['--config.prune.sparsity=0.9'], r'no pruning algorithm is: set config.prune.algorithm '
     r'\(channel, .*magnitude'),
    (['--config.data.data_dir=/tmp'], r"Dataset 'digits' is built in and reads no data_dir"),
    (['--config.batch_size=ten'], r'config.batch_size expects an int, got'),
    # Model options are settable; an unknown one is named against the model's real ones.
    (['--config.model.name=mobilenet_v1', '--config.model.width_mult=0.5'],
     r'Unknown config key config.model.width_mult. Valid: .*name.*width_multiplier'),
])
def test_train_cli_mistakes_are_one_line(tmp_path, capsys, args, message):
  rc = train_main.main(['--config', TINY, '--workdir', str(tmp_path / 'run'), *args])
  assert rc == 2
  line = one_error_line(capsys, 'mcj.train: error: ')
  assert re.search(message, line), line
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.parametrize('config_text, spec_arg, message', [
    ('def get_config(:\n  return {}\n', '', r'has a syntax error at line 1'),
    ('def get_config():\n  return {"model": {"name": "resnet20"}}\n', ':foo',
     r'get_config\(\) takes no argument; drop ":foo"'),
    ('def get_config(arg=None):\n  x = 1\n  return {"a": 1 / 0}\n', '',
     r'get_config\(\) failed at line 3: ZeroDivisionError'),
    ('import no_such_module_here\n', '', r'failed to load at line 1: ModuleNotFoundError'),
    ('def get_config():\n  return 3\n', '', r'must return a dict or ConfigDict, got int'),
])
def test_config_file_mistakes_are_one_line(tmp_path, capsys, config_text, spec_arg, message):
  path = tmp_path / 'cfg.py'
  path.write_text(config_text)
  assert train_main.main(['--config', f'{path}{spec_arg}', '--workdir', str(tmp_path)]) == 2
  line = one_error_line(capsys, 'mcj.train: error: ')
  assert re.search(message, line), line


def test_config_folder_points_to_a_file(capsys):
  assert train_main.main(['--config', os.path.join(ROOT, 'configs'), '--workdir', '/tmp/x']) == 2
  line = one_error_line(capsys, 'mcj.train: error: ')
  assert 'is a folder: give a .py file such as' in line and line.endswith('.py.')


def test_model_option_not_in_the_config_file_is_settable():
  config = merge_config({'model': {'name': 'mobilenet_v1'}, 'total_steps': 1})
  apply_overrides(config, ['--config.model.width_multiplier=0.5'])
  assert config.model.width_multiplier == 0.5
  with pytest.raises(ConfigError, match=r'Valid: .*(?<!num_classes, )name.*width_multiplier'):
    apply_overrides(config, ['--config.model.dtype=float16'])  # the trainer's, not the user's


def test_pipeline_overrides_reach_every_stage_that_sets_them():
  config = merge_config(config_lib.load_config(QUICKSTART))
  said = []
  apply_overrides(config, ['--config.total_steps=30', '--config.optimizer.lr=0.5',
                           '--config.stages.student.optimizer.lr=0.01'], say=said.append)
  teacher, student = config.stages
  assert teacher['total_steps'] == student['total_steps'] == 30
  assert teacher['total_epochs'] is None and student['total_epochs'] is None
  assert teacher['optimizer']['lr'] == 0.5 and student['optimizer']['lr'] == 0.01
  assert config.optimizer.lr == 0.5
  assert said[0].startswith('mcj: --config.total_steps=30 applies to stage(s) teacher, '
                            'student too (one stage only: --config.stages.<name>.total_steps')
  merged = [merge_config(c) for _, _, c in __import__('mcj.train.pipeline', fromlist=['x'])
            .stage_configs(config, '/tmp/p')]
  assert [c.total_steps for c in merged] == [30, 30]


def test_pipeline_model_override_and_stage_errors():
  config = merge_config(config_lib.load_config(QUICKSTART))
  apply_overrides(config, ['--config.model.name=resnet56'], say=lambda *a: None)
  assert [s['model']['name'] for s in config.stages] == ['resnet56', 'resnet56']
  with pytest.raises(ConfigError, match=r'stage name of config.stages \(teacher, student\)'):
    apply_overrides(config, ['--config.stages.techer.optimizer.lr=1'])
  with pytest.raises(ConfigError, match=r'Unknown config key config.optimizer.l. Valid: .*lr'):
    apply_overrides(config, ['--config.stages.student.optimizer.l=1'])
  with pytest.raises(ConfigError, match='config.total_steps must be a positive integer'):
    apply_overrides(config, ['--config.total_steps=0'], say=lambda *a: None)


def test_summary_mistakes_are_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    summary.main(['--model', 'resnet20', '--num_classes', '0'])
  assert e.value.code == 2
  assert '--num_classes must be at least 1, got 0' in capsys.readouterr().err
  # A pipeline config: its final stage's model.
  assert summary.main(['--config', QUICKSTART, '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert out['model'] == merge_config(config_lib.load_config(QUICKSTART)).stages[-1]['model'][
      'name']


def test_sweep_mistakes_are_one_line_and_nothing_trains(tmp_path, capsys):
  assert sweep.main(['--config', TINY, '--seeds', 'a,b', '--workdir', str(tmp_path)]) == 2
  assert "--seeds takes comma-separated integers such as 0,1,2; got 'a,b'" in one_error_line(
      capsys, 'mcj.sweep: error: ')
  # The bad value is the second grid point: found before the first trains.
  assert sweep.main(['--config', TINY, '--grid', 'steps=1,x', '--workdir',
                     str(tmp_path / 'grid')]) == 2
  assert "grid point 'steps=x': steps expects an int, got 'x'" in one_error_line(
      capsys, 'mcj.sweep: error: ')
  assert not os.path.exists(tmp_path / 'grid')


@pytest.mark.slow
def test_bench_batch_too_large_for_host_memory_is_one_line(capsys):
  for extra in ([], ['--max_batch']):
    rc = bench.main(['--model', 'resnet20', '--image_size', '224', '--batch_size', str(2 ** 24),
                     '--steps', '3', *extra])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out == ''
    err = captured.err.strip().splitlines()[-1]
    assert err == (f'mcj.bench: error: batch {2 ** 24} does not fit in memory (MemoryError): '
                   'use a smaller --batch_size.')


@pytest.mark.parametrize('flag', ['--devices_per_process', '--num_processes'])
def test_launcher_refuses_zero(flag):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'local.py'), flag, '0',
                         '--', '--config', TINY, '--workdir', '/tmp/never'],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and f'{flag} must be at least 1, got 0.' in proc.stderr
  assert 'Traceback' not in proc.stderr and not os.path.exists('/tmp/never')


def test_teacher_path_mistakes_name_the_teacher(tmp_path):
  from mcj.compress.distill import teachers
  with pytest.raises(ConfigError, match=r'distill.teachers\[0\].init_from: .*/nope does not '
                     'exist'):
    teachers.teacher_spec({'init_from': str(tmp_path / 'nope')}, 0)
  # Inside an existing run's folder, a typo is still "does not exist" (not the parent's model).
  (tmp_path / 'config.json').write_text(json.dumps({'model': {'name': 'resnet20'}}))
  with pytest.raises(ConfigError, match='does not exist'):
    teachers.teacher_spec({'init_from': str(tmp_path / 'teachr')}, 0)


def test_teacher_from_a_failed_run_is_named(tmp_path):
  from mcj.train import train_and_evaluate
  failed = tmp_path / 'failed'  # a run that stopped before its first checkpoint
  failed.mkdir()
  (failed / 'config.json').write_text(json.dumps({'model': {'name': 'resnet20'}}))
  config = config_lib.load_config(f'{TINY}:steps=1')
  config['distill'] = {'teachers': ({'init_from': str(failed)},)}
  with pytest.raises(ConfigError, match=r'distill.teachers\[0\] \(.*failed\): No checkpoint '
                     r'found in .*failed'):
    train_and_evaluate(config, str(tmp_path / 'student'))
