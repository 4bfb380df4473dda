"""Distillation in the trainer and multi-stage pipelines: teachers, ensembles, consecutive
teachers, feature losses end to end, device-count invariance, errors, kill and resume."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mcj.compress.distill import losses as distill
from mcj.train import pipeline
from mcj.compress.distill import teachers as teachers_lib
from mcj.core.config import ConfigError
from mcj.models import get_model
from mcj.train import default_config, train_and_evaluate
from tests.helpers import assert_trees_equal, final_params, run_cli, train_losses
from tests.helpers import start_cli as _start
from tests.helpers import wait_for_step as _wait_for_step

# Trains end to end or starts subprocesses: the full tier only.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHALLOW = {'name': 'resnet20', 'stage_sizes': (1, 1, 1)}


def tiny(steps=6, **overrides):
  config = {'seed': 0, 'batch_size': 32, 'total_steps': steps, 'model': dict(SHALLOW),
            'data': {'name': 'digits'}, 'log_every_steps': 1, 'checkpoint_every_steps': 0,
            'optimizer': {'name': 'sgd', 'lr': 0.02, 'momentum': 0.9},
            'schedule': {'name': 'constant'}}
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  """A shallow ResNet trained a few steps: a real workdir with config.json and checkpoints."""
  workdir = str(tmp_path_factory.mktemp('teacher'))
  train_and_evaluate(tiny(steps=8), workdir)
  return workdir


def distill_block(**kw):
  block = default_config().distill.to_dict()
  block.update(kw)
  return ml_collections.ConfigDict(block)


# ------------------------------------------------------------------ the objective

def _distiller(specs, **kw):
  place = lambda v: jax.tree.map(jnp.asarray, v)
  student = get_model('resnet20', num_classes=10, stage_sizes=(1, 1, 1))
  return teachers_lib.Distiller(
      distill_block(teachers=tuple(specs), **kw), get_model=get_model, image_shape=(8, 8, 1),
      num_classes=10, compute_dtype='float32', student=student, seed=0, place=place)


def _teacher_logits(d, k, images):
  return jax.jit(lambda v, x: d.models[k].apply(v, x, train=False))(d.variables[k], images)


def test_ensemble_is_weighted_mean_and_consecutive_teachers_switch():
  images = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  student_logits = jax.random.normal(jax.random.key(1), (16, 10))
  spec = {'init_from': 'random', 'model': SHALLOW}
  ensemble = _distiller([{**spec, 'weight': 1.0}, {**spec, 'weight': 3.0}])
  kd = [distill.hinton_kd(student_logits, _teacher_logits(ensemble, k, images), 4.0)
        for k in range(2)]
  assert abs(float(kd[0] - kd[1])) > 1e-3  # two different random teachers
  loss, _ = jax.jit(lambda: ensemble.loss(student_logits, {}, ensemble.variables, {}, images,
                                          0.3, None))()
  np.testing.assert_allclose(loss, (kd[0] + 3 * kd[1]) / 4, rtol=1e-5)

  consecutive = _distiller([{**spec, 'end': 0.5}, {**spec, 'start': 0.5}])
  step = jax.jit(lambda p: consecutive.loss(student_logits, {}, consecutive.variables, {},
                                            images, p, None)[0])
  for progress, k in ((0.0, 0), (0.49, 0), (0.5, 1), (0.99, 1)):
    loss = step(progress)
    expected = distill.hinton_kd(student_logits, _teacher_logits(consecutive, k, images), 4.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, err_msg=f'progress {progress}')


@pytest.mark.parametrize('logit_loss,temperature,expected', [
    ('dist', None, 1.0), ('kd', None, 4.0), ('dist', 4.0, 4.0), ('kd', 1.0, 1.0)])
def test_temperature_none_is_the_losses_own_default(logit_loss, temperature, expected):
  """dist without a temperature uses DIST's tau = 1 (not KD's 4); kd keeps 4; an explicit
  value applies to either."""
  images = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  student_logits = jax.random.normal(jax.random.key(1), (16, 10))
  d = _distiller([{'init_from': 'random', 'model': SHALLOW}], logit_loss=logit_loss,
                 temperature=temperature)
  loss, _ = jax.jit(lambda: d.loss(student_logits, {}, d.variables, {}, images, 0.0, None))()
  t_logits = _teacher_logits(d, 0, images)
  if logit_loss == 'dist':
    want = distill.dist_loss(student_logits, t_logits, temperature=expected)
  else:
    want = distill.hinton_kd(student_logits, t_logits, temperature=expected)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  other = 4.0 if expected == 1.0 else 1.0  # and the other temperature would differ
  fn = distill.dist_loss if logit_loss == 'dist' else distill.hinton_kd
  assert abs(float(fn(student_logits, t_logits, temperature=other)) - float(loss)) > 1e-4


def test_teacher_in_bfloat16_gives_nearly_the_float32_loss():
  images = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  student_logits = jax.random.normal(jax.random.key(1), (16, 10))
  spec = {'init_from': 'random', 'model': SHALLOW}
  losses = []
  for dtype in ('float32', 'bfloat16'):
    d = _distiller([{**spec, 'compute_dtype': dtype}])
    assert d.models[0].dtype == jnp.dtype(dtype)
    losses.append(jax.jit(lambda d=d: d.loss(student_logits, {}, d.variables, {}, images, 0.0,
                                             None)[0])())
  assert float(losses[0]) > 0
  np.testing.assert_allclose(losses[1], losses[0], rtol=5e-2)


def test_teacher_spec_errors(teacher_dir):
  with pytest.raises(ConfigError, match='init_from is not set'):
    teachers_lib.teacher_spec({'model': 'resnet20'}, 0)
  with pytest.raises(ConfigError, match=r'Unknown key config.distill.teachers\[1\].wieght. '
                     'Valid: init_from, model, weight'):
    teachers_lib.teacher_spec({'init_from': teacher_dir, 'wieght': 1}, 1)
  with pytest.raises(ConfigError, match='start < end'):
    teachers_lib.teacher_spec({'init_from': teacher_dir, 'start': 0.5, 'end': 0.5}, 0)
  # The model comes from the teacher's own config.json; a plain string is the init_from.
  assert teachers_lib.teacher_spec({'init_from': teacher_dir}, 0)['model']['name'] == 'resnet20'
  assert teachers_lib.teacher_spec(teacher_dir, 0) == teachers_lib.teacher_spec(
      {'init_from': teacher_dir}, 0)
  with pytest.raises(ConfigError, match=r'teachers\[0\] is 3: give a dict'):
    teachers_lib.teacher_spec(3, 0)
  with pytest.raises(ConfigError, match='Unknown distill.feature_loss'):
    _distiller([{'init_from': 'random', 'model': SHALLOW}], feature_loss='atention')
  with pytest.raises(ConfigError, match=r"^Unknown distill\.logit_loss 'kl'\. "
                     r"Valid: dist, distribution, kd, mse, soft_ce\.$"):
    _distiller([{'init_from': 'random', 'model': SHALLOW}], logit_loss='kl')
  with pytest.raises(ConfigError, match="logit_loss='distribution' takes no temperature"):
    _distiller([{'init_from': 'random', 'model': SHALLOW}], logit_loss='distribution',
               temperature=2.0)


def test_teacher_that_does_not_fit_lists_entries(teacher_dir, tmp_path):
  config = tiny(distill={'teachers': ({'init_from': teacher_dir,
                                       'model': {'name': 'resnet20'}},)})
  with pytest.raises(ConfigError, match=r'does not fit the model: missing \d+: layer1_1/'):
    train_and_evaluate(config, str(tmp_path))


# ------------------------------------------------------------------ the trainer

def test_distilled_student_learns_the_teacher_and_teacher_is_frozen(teacher_dir, tmp_path):
  """Only the KD term (no labels): the student moves towards the teacher's outputs."""
  config = tiny(steps=12, distill={'teachers': ({'init_from': teacher_dir},),
                                   'label_weight': 0.0, 'logit_loss': 'kd',
                                   'temperature': 1.0})
  before = {k: np.asarray(v) for k, v in
            jax.tree_util.tree_flatten_with_path(final_params(teacher_dir)[1])[0]}
  workdir = str(tmp_path)
  train_and_evaluate(config, workdir)
  metrics = [m for m in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))
             if 'distill/logit_loss' in m]
  assert metrics[-1]['distill/logit_loss'] < 0.7 * metrics[0]['distill/logit_loss']
  assert metrics[0]['train/loss'] == pytest.approx(metrics[0]['distill/logit_loss'], rel=1e-5)
  after = {k: np.asarray(v) for k, v in
           jax.tree_util.tree_flatten_with_path(final_params(teacher_dir)[1])[0]}
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])


@pytest.mark.parametrize('feature_loss', ['fitnet', 'at', 'real_to_binary'])
def test_feature_losses_train_end_to_end(teacher_dir, tmp_path, feature_loss):
  """Features come from the unmodified models; FitNet adapters are trained and saved."""
  student = {'name': 'binary_resnet20', 'input_quantizer': 'approx_sign',
             'kernel_quantizer': 'ste_sign', 'stage_sizes': (1, 1, 1)}
  config = tiny(steps=3, model=student, checkpoint_every_steps=3,
                distill={'teachers': ({'init_from': teacher_dir},), 'logit_loss': '',
                         'feature_loss': feature_loss, 'feature_weight': 1.0})
  results = train_and_evaluate(config, str(tmp_path))
  losses = [m['distill/feature_loss'] for m in
            map(json.loads, open(tmp_path / 'metrics.jsonl')) if 'distill/feature_loss' in m]
  assert len(losses) == 3 and all(np.isfinite(losses)) and losses[0] > 0
  assert results['model'] == 'binary_resnet20'
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  saved = ocp.StandardCheckpointer().metadata(str(tmp_path / 'checkpoints' / '3' / 'default'))
  assert ('adapters' in saved.item_metadata.tree) == (feature_loss == 'fitnet')


def test_one_and_four_devices_give_the_same_distillation_losses(teacher_dir, tmp_path):
  """DIST's intra-class term and RKD are relational over the global batch: 1 and 4 devices
  must agree (with mixup off and BN statistics synchronised)."""
  overrides = ['--config.distill.logit_loss=dist', '--config.distill.feature_loss=rkd',
               f'--config.distill.teachers=({{"init_from": "{teacher_dir}"}},)']
  args = ['--config', os.path.join(ROOT, 'tests', 'tiny_config.py') + ':steps=8,shallow,lr=0.01',
          *overrides]
  one = run_cli(args + ['--workdir', str(tmp_path / 'one')], devices=1)
  four = run_cli(args + ['--workdir', str(tmp_path / 'four')], devices=4)
  assert one.returncode == 0, one.stderr[-2000:]
  assert four.returncode == 0, four.stderr[-2000:]
  a, b = train_losses(str(tmp_path / 'one')), train_losses(str(tmp_path / 'four'))
  assert sorted(a) == sorted(b) == list(range(1, 9))
  for step in a:
    assert b[step] == pytest.approx(a[step], rel=1e-4), step


# ------------------------------------------------------------------ pipelines

def pipeline_config(student_steps=20, finetune=True):
  return {
      'seed': 0, 'batch_size': 32, 'data': {'name': 'digits'}, 'log_every_steps': 1,
      'checkpoint_every_steps': 4, 'schedule': {'name': 'constant'},
      'optimizer': {'name': 'sgd', 'lr': 0.02, 'momentum': 0.9},
      'stages': (
          {'name': 'teacher', 'total_steps': 6, 'model': dict(SHALLOW)},
          {'name': 'student', 'total_steps': student_steps,
           'model': {'name': 'binary_resnet20', 'stage_sizes': (1, 1, 1)},
           'distill': {'teachers': ({'init_from': 'teacher'},), 'label_weight': 0.5,
                       'logit_weight': 0.5}},
          {'name': 'finetune', 'total_steps': 3, 'init_from': 'student',
           'model': {'name': 'binary_resnet20', 'stage_sizes': (1, 1, 1)}},
      )[:3 if finetune else 2],
  }


def test_pipeline_stage_names_resolve_and_errors():
  config = default_config()
  config.update(pipeline_config())
  stages = pipeline.stage_configs(config, '/w')
  assert [(n, d) for n, d, _ in stages] == [('teacher', '/w/teacher'), ('student', '/w/student'),
                                            ('finetune', '/w/finetune')]
  assert stages[1][2]['distill']['teachers'][0]['init_from'] == '/w/teacher'
  assert stages[2][2]['init_from'] == '/w/student'
  assert stages[2][2]['model'] == {'name': 'binary_resnet20', 'stage_sizes': (1, 1, 1)}
  assert stages[0][2]['optimizer']['lr'] == 0.02  # shared keys reach every stage
  bad = dict(pipeline_config())
  bad['stages'] = (bad['stages'][0], {**bad['stages'][2], 'init_from': 'studnet'})
  config.stages = bad['stages']
  with pytest.raises(ConfigError, match=r"init_from='studnet' is neither an earlier stage "
                     r'\(teacher\)'):
    pipeline.stage_configs(config, '/w')
  config.stages = (bad['stages'][0], bad['stages'][0])
  with pytest.raises(ConfigError, match='used twice'):
    pipeline.stage_configs(config, '/w')


def _write_config(tmp_path, config):
  path = tmp_path / 'pipeline_config.py'
  path.write_text(f'def get_config(arg=None):\n  return {config!r}\n')
  return str(path)


def test_pipeline_killed_mid_stage_and_rerun_ends_as_uninterrupted(tmp_path):
  config_path = _write_config(tmp_path, pipeline_config(student_steps=24, finetune=False))
  straight = str(tmp_path / 'straight')
  done = run_cli(['--config', config_path, '--workdir', straight])
  assert done.returncode == 0, done.stderr[-2000:]
  results = json.load(open(os.path.join(straight, 'results.json')))
  assert [s['name'] for s in results['stages']] == ['teacher', 'student']
  for key in ('eval/accuracy', 'params', 'model_size_bytes', 'compression_ratio'):
    assert results[key] == results['stages'][-1][key]
  assert results['compression_ratio'] > 5  # the binary student

  killed = str(tmp_path / 'killed')
  proc = _start(['--config', config_path], killed)
  _wait_for_step(os.path.join(killed, 'student'), 9, proc, need_checkpoint=True)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, 'student', 'results.json'))
  rerun = run_cli(['--config', config_path, '--workdir', killed])
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'teacher: finished earlier' in rerun.stdout
  assert 'resumed from step' in rerun.stdout
  for stage in ('teacher', 'student'):
    _, a = final_params(os.path.join(straight, stage))
    _, b = final_params(os.path.join(killed, stage))
    assert_trees_equal(a, b)
  assert (train_losses(os.path.join(straight, 'student'))
          == train_losses(os.path.join(killed, 'student')))
