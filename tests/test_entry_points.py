"""Entry points end to end: shipped configs' :runlocal variants and the benchmark."""
import os

import jax
import pytest

from mcj import bench
from mcj import config as config_lib
from mcj.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('spec', ['configs/quickstart.py:runlocal',
                                  'configs/cifar10/resnet.py:depth=20,runlocal'])
def test_runlocal_config_trains(tmp_path, spec):
  config = config_lib.load_config(os.path.join(ROOT, spec))
  results = train_and_evaluate(config, str(tmp_path))
  assert results['step'] >= 2 and 0.0 <= results['eval/accuracy'] <= 1.0


def test_bench_reports_throughput():
  result = bench.measure('resnet20', batch_size=16, image_size=8, num_classes=10,
                         compute_dtype='float32', steps=6)
  assert result['img_per_sec'] > 0 and result['devices'] == 4 and result['steps_timed'] == 2


def test_bfloat16_compute_and_top5_eval(tmp_path):
  """bf16 compute keeps float32 params; more than 10 classes adds top-5 accuracy."""
  config = {'batch_size': 16, 'total_steps': 2, 'compute_dtype': 'bfloat16',
            'model': {'name': 'resnet20'}, 'log_every_steps': 1, 'checkpoint_every_steps': 0,
            'data': {'name': 'synthetic', 'image_size': 8, 'num_classes': 20,
                     'num_eval_examples': 40}}
  results = train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= results['eval/accuracy'] <= results['eval/top5_accuracy'] <= 1.0
  import orbax.checkpoint as ocp
  meta = ocp.StandardCheckpointer().metadata(str(tmp_path / 'checkpoints' / '2' / 'default'))
  dtypes = {str(m.dtype) for m in jax.tree.leaves(meta.item_metadata.tree['params'])}
  assert dtypes == {'float32'}
