"""Latency: the per-block lookup table (blocks, reuse, prediction, error figures) and the
measured-latency evaluator's statistics."""
import json

import numpy as np
import pytest

from mcj.models import get_model
from mcj.search import evaluators, latency


def _nb201(**kw):
  return get_model('nb201', 10, channels=2, cells_per_stage=2,
                   ops=['nor_conv_3x3', 'skip_connect', 'nor_conv_1x1', 'avg_pool_3x3', 'none',
                        'nor_conv_3x3'], **kw)


def test_blocks_are_the_direct_children_and_equal_blocks_share_a_key():
  blocks = latency.blocks_of(_nb201(), (8, 8, 3))
  names = [type(b.module).__name__ for b in blocks]
  # stem conv, stem BN, 2 cells, reduction, 2 cells, reduction, 2 cells, last BN, classifier.
  assert names == ['Conv', 'BatchNorm', 'Cell', 'Cell', 'ResidualReduction', 'Cell', 'Cell',
                   'ResidualReduction', 'Cell', 'Cell', 'BatchNorm', 'Dense']
  keys = [b.key for b in blocks]
  assert keys[2] == keys[3] and keys[5] == keys[6] and keys[2] != keys[5]  # shapes differ
  assert len(set(keys)) == 9


def test_table_predicts_the_sum_measures_each_block_once_and_persists(tmp_path):
  path = str(tmp_path / 'table.json')
  table = latency.LatencyTable(path)
  measured = []

  def fake_measure(block):  # a deterministic "latency" per block
    measured.append(block.key)
    return 1.0 + len(block.key) % 5

  model = _nb201()
  blocks = latency.blocks_of(model, (8, 8, 3))
  predicted, new = table.predict(model, (8, 8, 3), device_kind='cpu', measure=fake_measure,
                                 measure_overhead=lambda shape: 0.5)
  per_block = {b.key: 1.0 + len(b.key) % 5 for b in blocks}
  assert predicted == pytest.approx(sum(per_block[b.key] - 0.5 for b in blocks) + 0.5)
  assert new == len(set(measured)) + 1 and len(measured) == len(set(measured)) == 9
  # A second network sharing blocks measures only the new ones; the file keeps them all.
  again = latency.LatencyTable(path)
  _, new = again.predict(model, (8, 8, 3), device_kind='cpu', measure=fake_measure,
                         measure_overhead=lambda shape: 0.5)
  assert new == 0
  with open(path) as f:
    assert len(json.load(f)['cpu']) == 10


def test_prediction_error_is_nn_meter_s_figures():
  err = latency.prediction_error([1.0, 2.2, 2.7, 5.0], [1.0, 2.0, 3.0, 4.0])
  assert err['n'] == 4
  assert err['mape'] == pytest.approx((0 + 0.1 + 0.1 + 0.25) / 4)
  assert err['within_10pct'] == pytest.approx(0.75)  # 0, 0.1 and 0.1 are within


@pytest.mark.slow
def test_measured_latency_of_a_real_block_and_network():
  model = _nb201()
  blocks = latency.blocks_of(model, (8, 8, 3))
  ms = latency.measure_block(blocks[2], warmup=1, runs=3, time_call=latency.time_call)
  assert 0 < ms < 1000
  import jax
  variables = jax.jit(lambda r: model.init(r, np.zeros((1, 8, 8, 3), np.float32)))(
      jax.random.key(0))
  out = evaluators.measure_forward(model, variables, (8, 8, 3), warmup=1, runs=5)
  assert len(out['runs_ms']) == 5 and out['iqr_ms'] >= 0
  assert out['median_ms'] == pytest.approx(float(np.median(out['runs_ms'])))
  assert out['device'] == jax.devices()[0].device_kind
