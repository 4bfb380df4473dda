"""python -m mcj.evaluate: a run's accuracy on a split, equal to the trainer's own eval."""
import json
import os

import pytest

from helpers import tiny
from mcj.evaluate import EVALUATIONS, evaluate_workdir, main
from mcj.train import train_and_evaluate

quiet = lambda *a: None


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  results = train_and_evaluate(tiny('steps=12,ckpt=0,shallow=True'), workdir)
  return workdir, results


def test_evaluation_equals_the_trainers_final_eval(trained):
  workdir, results = trained
  out = evaluate_workdir(workdir, say=quiet)
  assert out['eval/accuracy'] == pytest.approx(results['eval/accuracy'], abs=1e-6)
  assert out['eval/loss'] == pytest.approx(results['eval/loss'], rel=1e-5)
  assert out['examples'] == 360 and out['data'] == 'digits'
  lines = open(os.path.join(workdir, EVALUATIONS)).read().splitlines()
  assert json.loads(lines[-1])['eval/accuracy'] == out['eval/accuracy']


def test_each_evaluation_is_appended(trained):
  workdir, _ = trained
  before = len(open(os.path.join(workdir, EVALUATIONS)).read().splitlines()) if \
      os.path.exists(os.path.join(workdir, EVALUATIONS)) else 0
  evaluate_workdir(workdir, say=quiet)
  evaluate_workdir(workdir, record=False, say=quiet)
  after = len(open(os.path.join(workdir, EVALUATIONS)).read().splitlines())
  assert after == before + 1


def test_overridden_data_that_does_not_fit_is_one_line(trained, capsys):
  workdir, _ = trained
  assert main(['--workdir', workdir, '--no_record', '--config.data.name=synthetic',
               '--config.data.num_classes=7', '--config.data.image_size=8',
               '--config.data.channels=1']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'does not fit the model' in err[0], err


def test_other_data_of_the_same_shape_evaluates(trained):
  workdir, _ = trained
  out = evaluate_workdir(workdir, ['--config.data.name=synthetic', '--config.data.num_classes=10',
                                   '--config.data.image_size=8', '--config.data.channels=1',
                                   '--config.data.num_eval_examples=64'], record=False, say=quiet)
  assert out['data'] == 'synthetic' and out['examples'] == 64
  assert 0.0 <= out['eval/accuracy'] <= 0.3  # random labels: about chance


def test_not_a_run(tmp_path, capsys):
  assert main(['--workdir', str(tmp_path)]) == 2
  assert 'no config.json' in capsys.readouterr().err
