"""Entry points end to end: shipped configs' :runlocal variants and the benchmark."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from mcj import bench
from mcj.core import config as config_lib
from mcj.train import train_and_evaluate

# Trains end to end or starts subprocesses: the full tier only.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(
    os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if os.path.basename(os.path.dirname(p)) != 'search')
SEARCH_CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(
    os.path.join(ROOT, 'configs', 'search', '*.py')))


@pytest.mark.parametrize('path', [
    p if p == os.path.join('configs', 'quickstart.py') else pytest.param(p, marks=pytest.mark.configs)
    for p in CONFIGS])
def test_every_config_runlocal_trains(tmp_path, path):
  """Every shipped config's default `:runlocal` variant trains end to end on this CPU (the
  quickstart in the full suite, the others in the configs tier: ``--configs``)."""
  config = config_lib.load_config(os.path.join(ROOT, path) + ':runlocal')
  results = train_and_evaluate(config, str(tmp_path))
  assert results['step'] >= 2 and 0.0 <= results['eval/accuracy'] <= 1.0
  assert np.isfinite(results['eval/loss']) and results['params'] > 0


@pytest.mark.configs
@pytest.mark.parametrize('path', SEARCH_CONFIGS)
def test_every_search_config_runlocal_searches(tmp_path, path):
  """Every search config's `:runlocal` variant searches end to end and leaves a best/
  config."""
  from mcj import search as search_lib
  from mcj.search import runner
  config = search_lib.merge_config(config_lib.load_config(os.path.join(ROOT, path) + ':runlocal'))
  results = runner.run(config, str(tmp_path), say=lambda *a: None)
  assert results['evaluated'] >= 1 and (tmp_path / 'results.json').exists()
  assert results['best'] is None or (tmp_path / 'best' / 'config.py').exists()


def test_bop_run_leaves_binary_kernels_at_plus_minus_one(tmp_path):
  from mcj.core import checkpoint
  config = config_lib.load_config(os.path.join(ROOT, 'configs/digits/bnn.py:runlocal'))
  config.total_epochs, config.total_steps = None, 4
  config.binary = {'optimizer': 'bop', 'bop_threshold': 1e-6, 'bop_gamma': 1e-2}
  train_and_evaluate(config, str(tmp_path))
  params = checkpoint.load_variables(str(tmp_path))['params']
  kernel = np.asarray(params['layer2_0']['conv1']['kernel'])
  np.testing.assert_allclose(np.abs(kernel), 1.0, rtol=1e-6)
  assert np.abs(np.asarray(params['stem_conv']['kernel'])).max() < 1.0  # float: Adam


def test_bench_stdout_is_json_only():
  """Users pipe the benchmark into scripts: the trainer's log goes to stderr."""
  import subprocess
  import sys
  from tests.helpers import cpu_env
  proc = subprocess.run([sys.executable, '-m', 'mcj.bench', '--model', 'resnet20',
                         '--image_size', '8', '--num_classes', '10', '--batch_size', '8',
                         '--steps', '3', '--compute_dtype', 'float32'], env=cpu_env(1),
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1 and json.loads(lines[0])['img_per_sec'] > 0, proc.stdout
  assert 'mcj: ' in proc.stderr


def test_bench_reports_throughput():
  result = bench.measure('resnet20', batch_size=16, image_size=8, num_classes=10,
                         compute_dtype='float32', steps=6)
  assert result['img_per_sec'] > 0 and result['devices'] == 4 and result['steps_timed'] == 2


def test_bench_measures_a_binary_bert_on_token_ids():
  """--seq_len feeds synthetic token ids ([CLS] then random ids, no padding); --bits 1 is the
  binary precision of mcj/models/transformers/precision.py."""
  from mcj import data as data_lib  # pylint: disable=g-import-not-at-top
  from mcj.models.transformers import precision  # pylint: disable=g-import-not-at-top
  tiny_bert = {'num_layers': 1, 'hidden_size': 32, 'vocab_size': 300,
               'max_position_embeddings': 16}
  result = bench.measure('bert_tiny', batch_size=8, image_size=0, num_classes=2,
                         compute_dtype='float32', steps=3, seq_len=16,
                         model_options={**tiny_bert, **precision.options(1)})
  assert result['img_per_sec'] > 0 and result['seq_len'] == 16
  assert result['model_options']['kernel_quantizer'] == 'ste_sign'
  import ml_collections  # pylint: disable=g-import-not-at-top
  ds = data_lib.get_dataset(ml_collections.ConfigDict(
      {'name': 'synthetic', 'max_length': 16, 'vocab_size': 300, 'num_classes': 2}), seed=0)
  ids = next(ds.train_batches(0, 8))['image']
  assert ds.info.image_shape == (16,) and ids.dtype == np.int32
  assert (ids[:, 0] == 101).all() and ids[:, 1:].min() >= 104 and ids.max() < 300


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


def test_sweep_grid_seeds_table_and_resume(tmp_path, capsys):
  from mcj import sweep
  assert sweep.grid_args(['a=1,2', 'b=x']) == ['a=1,b=x', 'a=2,b=x']
  assert sweep.grid_args([]) == ['']
  tiny = os.path.join(ROOT, 'tests', 'tiny_config.py')
  rows = sweep.run(tiny, ['steps=2,shallow=true'], [0, 1], str(tmp_path))
  assert len(rows) == 1 and len(rows[0]['accuracies']) == 2
  assert rows[0]['accuracy_mean'] == pytest.approx(sum(rows[0]['accuracies']) / 2)
  assert rows[0]['compression_ratio'] == 1.0 and rows[0]['model'] == 'resnet20'
  assert sorted(p.parent.name for p in tmp_path.glob('*/*/results.json')) == ['seed0', 'seed1']
  capsys.readouterr()
  # A rerun finds the finished runs: no training output, only the table.
  argv = ['--config', tiny, '--grid', 'steps=2', 'shallow=true', '--seeds', '0,1',
          '--workdir', str(tmp_path)]
  assert sweep.main(argv) == 0
  table = capsys.readouterr().out.strip().splitlines()
  assert len(table) == 3 and table[0].startswith('| run | model | accuracy')
  assert table[2].startswith('| steps=2,shallow=true | resnet20 | ') and '| 1.00x |' in table[2]
  assert sweep.main(['--config', tiny, '--grid', 'steps', '--workdir', str(tmp_path)]) == 2
  # A repeated --grid adds another product; sparse runs add the sparsity columns.
  rows = sweep.run(tiny, ['steps=2,shallow=true', 'steps=3,shallow=true'], [0], str(tmp_path),
                   ['--config.prune.algorithm=magnitude', '--config.prune.sparsity=0.5',
                    '--config.prune.schedule=one_shot'])
  assert [r['sparsity'] > 0.3 for r in rows] == [False, True]  # the first run was dense
  table = sweep.format_rows(rows).splitlines()
  assert table[0].endswith('| sparsity | non-zero params | non-zero MACs |')
  assert table[3].split('|')[9].strip() == f"{rows[1]['sparsity']:.1%}"


def test_bench_distillation_reports_teacher_overhead():
  result = bench.measure_distillation('resnet20', 'resnet20', batch_size=16, image_size=8,
                                      num_classes=10, compute_dtype='float32', steps=6)
  assert result['student_img_per_sec'] > 0 and result['distill_img_per_sec'] > 0
  assert result['teacher_forward_img_per_sec'] > 0
  assert (result['model'], result['teacher'], result['devices']) == ('resnet20', 'resnet20', 4)
