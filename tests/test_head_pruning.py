"""Attention-head pruning (Michel et al. 2019): the importance against finite differences of
the loss in the head mask, the per-layer normalisation, the global selection (with the
per-layer minimum and iterative steps), rebuilt BERT and ViT equal to the masked ones,
heads_per_layer param counts by formula, one-line errors, and the trainer's end-of-run
pruning (slow)."""
import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mcj.compress.prune import heads
from mcj.core.config import ConfigError
from mcj.models import get_model

from tests.helpers import tiny

TINY_BERT = dict(num_layers=2, hidden_size=16, num_heads=4, vocab_size=120,
                 max_position_embeddings=12)
TINY_VIT = dict(num_layers=2, hidden_size=24, num_heads=3)
IDS = np.array([[101, 5, 7, 9, 102, 11, 13, 102, 0, 0],
                [101, 20, 30, 102, 0, 0, 0, 0, 0, 0],
                [101, 3, 4, 5, 6, 102, 8, 9, 10, 102]])


def _random_variables(model, x, seed=0):
  """Params drawn with numpy (LayerNorm scales around 1), large enough that every head
  matters."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))['params']
  params = jax.tree_util.tree_map_with_path(
      lambda p, s: (1.0 * (p[-1].key == 'scale') + rng.normal(0, 0.3, s.shape)).astype(
          np.float32), shapes)
  return {'params': params}


def _bert():
  model = get_model('bert_tiny', 3, **TINY_BERT)
  return model, _random_variables(model, IDS)


def _vit():
  model = get_model('vit_tiny_patch2', 5, **TINY_VIT)
  images = np.random.default_rng(1).normal(size=(3, 8, 8, 1)).astype(np.float32)
  return model, _random_variables(model, images), images


def _bert_batches():
  labels = np.array([0, 2, 1], np.int32)
  return [{'image': IDS, 'label': labels},
          {'image': IDS[::-1].copy(), 'label': labels}]


def _count(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------ importance

def _finite_difference_importance(model, variables, batches, mask, per_example, eps=1e-2):
  """E |dL/dxi_h| by central differences of the loss in each head's mask entry."""
  losses = jax.jit(lambda b, m: heads.cross_entropy(
      model.apply(variables, b['image'], train=False, head_mask=m), b))
  shape = mask.shape
  total, count = np.zeros(shape), 0
  for batch in batches:
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    for layer, head in itertools.product(*map(range, shape)):
      step = np.zeros(shape, np.float32)
      step[layer, head] = eps
      up = np.asarray(losses(batch, mask + step), np.float64)
      down = np.asarray(losses(batch, mask - step), np.float64)
      d = (up - down) / (2 * eps)  # each example's derivative
      total[layer, head] += np.abs(d).sum() if per_example else abs(d.mean())
    count += len(batch['label']) if per_example else 1
  return total / count


@pytest.mark.parametrize('per_example', [True, False], ids=['per_example', 'per_batch'])
def test_importance_is_the_expected_absolute_gradient_in_the_head_mask(per_example):
  model, variables = _bert()
  batches = _bert_batches()
  got = heads.head_importance(model, variables, batches, normalize=False,
                              per_example=per_example)
  assert got.shape == (2, 4)
  want = _finite_difference_importance(model, variables, batches,
                                       np.ones((2, 4), np.float32), per_example)
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5)
  assert np.all(got > 1e-4)  # every head matters in this random model


def test_importance_with_heads_removed_is_taken_at_the_mask_and_scores_them_zero():
  model, variables = _bert()
  batches = _bert_batches()
  mask = np.array([[1, 0, 1, 1], [0, 1, 1, 1]], bool)
  got = heads.head_importance(model, variables, batches, mask=mask, normalize=False)
  want = _finite_difference_importance(model, variables, batches, mask.astype(np.float32),
                                       per_example=True)
  np.testing.assert_allclose(got[mask], want[mask], rtol=2e-3, atol=1e-5)
  assert np.all(got[~mask] == 0)


def test_importance_is_normalised_per_layer_by_its_l2_norm():
  model, variables = _bert()
  batches = _bert_batches()
  raw = heads.head_importance(model, variables, batches, normalize=False)
  normalised = heads.head_importance(model, variables, batches)
  np.testing.assert_allclose(normalised, raw / np.sqrt((raw ** 2).sum(1, keepdims=True)),
                             rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), [1.0, 1.0], rtol=1e-6)
  # The formula on a hand array: heads out of the mask are 0 and out of the norm.
  np.testing.assert_allclose(
      heads.normalize_by_layer([[3.0, 4.0, 9.0], [0.0, 0.0, 0.0]], [[1, 1, 0], [1, 1, 1]]),
      [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]])


# ------------------------------------------------------------------ selection

IMPORTANCE = np.array([[0.9, 0.1, 0.5],
                       [0.2, 0.8, 0.05]])


def test_prune_heads_removes_the_globally_least_important():
  keep = heads.prune_heads(IMPORTANCE, 0.5)  # 3 of 6: 0.05, 0.1, 0.2
  np.testing.assert_array_equal(keep, [[1, 0, 1], [0, 1, 0]])
  assert heads.prune_heads(IMPORTANCE, 0.0).all()
  # floor(fraction * heads): 0.34 * 6 = 2.04 -> 2; 0.8 * 6 = 4.8 -> 4.
  assert (~heads.prune_heads(IMPORTANCE, 0.34)).sum() == 2
  assert (~heads.prune_heads(IMPORTANCE, 0.8)).sum() == 4
  # Heads already removed count toward the fraction and stay removed.
  done = np.array([[1, 1, 1], [1, 0, 1]], bool)
  np.testing.assert_array_equal(heads.prune_heads(IMPORTANCE, 0.34, done),
                                [[1, 1, 1], [1, 0, 0]])
  # Ties go by position.
  np.testing.assert_array_equal(heads.prune_heads(np.ones((2, 2)), 0.5), [[0, 0], [1, 1]])


def test_min_heads_per_layer_protects_each_layers_best_heads():
  low_layer = np.array([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
  np.testing.assert_array_equal(heads.prune_heads(low_layer, 0.5), [[0, 0, 0], [1, 1, 1]])
  np.testing.assert_array_equal(heads.prune_heads(low_layer, 0.5, min_heads_per_layer=1),
                                [[0, 0, 1], [1, 1, 0]])
  # A minimum that forbids the fraction removes what it allows.
  keep = heads.prune_heads(low_layer, 0.9, min_heads_per_layer=2)
  np.testing.assert_array_equal(keep.sum(1), [2, 2])


def test_iterative_pruning_recomputes_the_importance_after_each_step():
  model, variables, images = _vit()
  batches = [{'image': images, 'label': np.array([0, 3, 4], np.int32)}]
  keep, rounds = heads.prune_iteratively(model, variables, batches, 0.5, step=0.2)
  # 6 heads; targets 0.2, 0.4, 0.5: floor(1.2) = 1, floor(2.4) = 2, floor(3.0) = 3 removed.
  assert [r['fraction'] for r in rounds] == pytest.approx([0.2, 0.4, 0.5])
  assert [int((~r['kept']).sum()) for r in rounds] == [1, 2, 3]
  assert (~keep).sum() == 3
  for before, after in zip(rounds, rounds[1:]):
    assert np.all(after['kept'] <= before['kept'])  # masks only shrink
    np.testing.assert_allclose(  # each round's importance is taken at the mask so far
        after['importance'],
        heads.head_importance(model, variables, batches, mask=before['kept']), rtol=1e-6)
    assert np.all(after['importance'][~before['kept']] == 0)
  one_shot, single = heads.prune_iteratively(model, variables, batches, 0.5)
  assert len(single) == 1
  np.testing.assert_array_equal(one_shot, heads.prune_heads(single[0]['importance'], 0.5))


# ------------------------------------------------------------------ rebuild

BERT_PER_HEAD = lambda d, hidden: 3 * (hidden * d + d) + d * hidden  # Q, K, V + output rows
VIT_PER_HEAD = BERT_PER_HEAD  # qkv (3 x (kernel columns + bias)) + proj rows


def test_rebuilt_bert_equals_the_masked_one():
  model, variables = _bert()
  keep = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool)  # the second layer loses every head
  masked = model.apply(variables, IDS, head_mask=keep.astype(np.float32))
  assert np.abs(masked - model.apply(variables, IDS)).max() > 1e-2
  small_model, small_variables = heads.rebuild(model, variables, keep)
  assert small_model.heads_per_layer == (2, 0)
  np.testing.assert_allclose(small_model.apply(small_variables, IDS), masked, rtol=1e-5,
                             atol=1e-5)
  removed = 6 * BERT_PER_HEAD(4, 16)
  assert heads.param_count(variables) - heads.param_count(small_variables) == removed
  assert list(small_variables['params']['layer_1']['attention']) == ['output']  # its bias
  # The rebuilt model's own init has exactly the rebuilt variables' shapes.
  shapes = jax.eval_shape(lambda: small_model.init(jax.random.key(0), IDS))['params']
  assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, small_variables['params'])
  # Rebuilding again: the mask indexes the rebuilt model's heads (layer i: first h_i).
  again = np.array([[0, 1, 0, 0], [0, 0, 0, 0]], bool)
  smaller, smaller_variables = heads.rebuild(small_model, small_variables, again)
  assert smaller.heads_per_layer == (1, 0)
  np.testing.assert_allclose(
      smaller.apply(smaller_variables, IDS),
      model.apply(variables, IDS, head_mask=np.array([[0, 0, 1, 0], [0, 0, 0, 0]], np.float32)),
      rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(heads.present_heads(small_model), [[1, 1, 0, 0], [0, 0, 0, 0]])


@pytest.mark.slow  # compiles a BERT / ViT: the full tier
def test_rebuilt_vit_equals_the_masked_one():
  model, variables, images = _vit()
  keep = np.array([[1, 0, 1], [0, 0, 0]], bool)
  masked = model.apply(variables, images, head_mask=keep)
  small_model, small_variables = heads.rebuild(model, variables, keep)
  assert small_model.heads_per_layer == (2, 0)
  np.testing.assert_allclose(small_model.apply(small_variables, images), masked, rtol=1e-5,
                             atol=1e-5)
  assert heads.param_count(variables) - heads.param_count(small_variables) == (
      4 * VIT_PER_HEAD(8, 24))
  assert small_variables['params']['block_0']['attn']['qkv']['kernel'].shape == (24, 3 * 16)
  # A per-example head mask: each example its own heads.
  per_example = np.stack([np.ones((2, 3)), keep, keep]).astype(np.float32)
  out = model.apply(variables, images, head_mask=per_example)
  np.testing.assert_allclose(out[1:], masked[1:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[:1], model.apply(variables, images[:1]), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize('heads_per_layer', [(11,) * 12, (0,) + (12,) * 11],
                         ids=['one_per_layer', 'one_layer_empty'])
def test_bert_base_heads_per_layer_param_count(heads_per_layer):
  """12 heads fewer in all: 12 x (Q, K, V: 3 x (768 x 64 + 64); output: 64 x 768) fewer
  params, however they are spread (an empty layer keeps its output bias)."""
  count = lambda **kw: _count(jax.eval_shape(lambda: get_model('bert_base', 2, **kw).init(
      jax.random.key(0), jnp.zeros((1, 8))))['params'])
  assert count() - count(heads_per_layer=heads_per_layer) == 12 * (4 * 64 * 768 + 3 * 64)


def test_vit_tiny_heads_per_layer_param_count():
  count = lambda **kw: _count(jax.eval_shape(lambda: get_model('vit_tiny', 1000, **kw).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3))))['params'])
  assert count(heads_per_layer=(2, 1) + (3,) * 10) == 5_717_416 - 3 * VIT_PER_HEAD(64, 192)


# ------------------------------------------------------------------ errors

def _one_line(error):
  message = str(error.value)
  assert '\n' not in message
  return message


@pytest.mark.parametrize('fraction', [1.0, -0.1, 1.5, 'half'])
def test_fractions_outside_zero_one_are_one_line_errors(fraction):
  with pytest.raises(ValueError, match=r'in \[0, 1\)') as error:
    heads.prune_heads(IMPORTANCE, fraction)
  _one_line(error)


def test_bad_masks_and_options_are_one_line_errors():
  model, variables = _bert()
  cases = [
      (lambda: heads.prune_heads(IMPORTANCE, 0.5, np.ones((3, 2), bool)), r'shape .*\(2, 3\)'),
      (lambda: heads.rebuild(model, variables, np.ones((2, 3), bool)), r'\(2, 4\), got \(2, 3\)'),
      (lambda: heads.head_importance(model, variables, _bert_batches(), mask=np.ones(4)),
       r'\(2, 4\)'),
      (lambda: model.apply(variables, IDS, head_mask=np.ones((4, 2))), 'head_mask must have'),
      (lambda: model.clone(heads_per_layer=(4,)).init(jax.random.key(0), IDS),
       r'2 counts in \[0, 4\]'),
      (lambda: model.clone(heads_per_layer=(5, 4)).init(jax.random.key(0), IDS),
       r'2 counts in \[0, 4\]'),
      (lambda: heads.prune_iteratively(model, variables, iter(_bert_batches()), 0.5, step=0.25),
       'not an iterator'),
      (lambda: heads.prune_heads(IMPORTANCE, 0.5, min_heads_per_layer=-1), 'min_heads'),
      (lambda: heads.head_importance(get_model('resnet20', 10), {}, []), 'no attention heads'),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      call()
    _one_line(error)


def test_bad_prune_heads_config_is_a_one_line_config_error():
  from mcj.train.schema import merge_config  # pylint: disable=g-import-not-at-top
  for key, value, message in [('heads_fraction', 1.0, r'heads_fraction must be in \[0, 1\)'),
                              ('heads_step', -0.1, r'heads_step must be in \[0, 1\)'),
                              ('heads_batches', -1, 'heads_batches must be >= 0')]:
    config = tiny()
    config.prune = ml_collections.ConfigDict({key: value})
    with pytest.raises(ConfigError, match=message) as error:
      merge_config(config)
    _one_line(error)
  prune = merge_config(tiny()).prune
  with pytest.raises(ConfigError, match='needs a model with attention heads') as error:
    heads.HeadPruner(prune, get_model('resnet20', 10))
  _one_line(error)


# ------------------------------------------------------------------ in the trainer

@pytest.mark.slow
def test_trainer_prunes_heads_at_the_end_and_saves_the_rebuilt_model(tmp_path):
  from mcj.core import checkpoint  # pylint: disable=g-import-not-at-top
  from mcj.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = tiny('steps=4,ckpt=4,log=2,model=vit_tiny_patch2')
  config.model.update(num_layers=2, hidden_size=16, num_heads=4)
  config.prune = ml_collections.ConfigDict({'heads_fraction': 0.5, 'heads_step': 0.25,
                                            'heads_batches': 2})
  results = train_and_evaluate(config, str(tmp_path))
  assert (results['heads_total'], results['heads_kept']) == (8, 4)
  per_head = VIT_PER_HEAD(4, 16)
  assert results['rebuilt_params'] == results['params'] - 4 * per_head
  assert results['rebuilt_macs'] < results['macs']
  record = json.loads((tmp_path / 'heads.json').read_text())
  assert len(record['rounds']) == 2 and record['batches'] == 2
  keep = np.array(record['kept'], bool)
  assert list(results['rebuilt_model']['heads_per_layer']) == keep.sum(1).tolist()
  rebuilt_config = json.loads((tmp_path / 'rebuilt' / 'config.json').read_text())
  assert rebuilt_config['prune']['heads_fraction'] == 0.0
  small_model = get_model('vit_tiny_patch2', 10, **{
      k: v for k, v in rebuilt_config['model'].items() if k != 'name'})
  big_model = get_model('vit_tiny_patch2', 10, num_layers=2, hidden_size=16, num_heads=4)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  big = checkpoint.load_variables(str(tmp_path))
  np.testing.assert_allclose(
      small_model.apply(checkpoint.load_variables(str(tmp_path / 'rebuilt')), x),
      big_model.apply({'params': big['params']}, x, head_mask=keep), rtol=1e-5, atol=1e-5)
  assert os.path.isdir(tmp_path / 'rebuilt' / 'checkpoints')


@pytest.mark.slow
def test_prune_heads_curve_of_a_trained_vit(tmp_path, capsys):
  """python -m mcj.prune_heads on a trained ViT run: fraction 0 rebuilds the run itself
  (its accuracy is the run's), 0.5 keeps half the heads with fewer params."""
  from mcj import prune_heads  # pylint: disable=g-import-not-at-top
  from mcj.core import config as config_lib  # pylint: disable=g-import-not-at-top
  from mcj.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, 'configs/digits/vit.py:runlocal'))
  config.model.num_layers, config.model.hidden_size = 2, 32
  workdir = str(tmp_path / 'vit')
  results = train_and_evaluate(config, workdir)
  assert prune_heads.main(['--workdir', workdir, '--fractions', '0,0.5', '--batches', '2']) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
          if line.startswith('{"fraction"')]
  assert [r['fraction'] for r in rows] == [0.0, 0.5]
  assert rows[0]['eval/accuracy'] == pytest.approx(results['eval/accuracy'])
  assert rows[0]['heads_kept'] == 8 and rows[1]['heads_kept'] == 4
  assert rows[1]['params'] < rows[0]['params']
  assert json.load(open(os.path.join(workdir, 'heads_curve.json'))) == rows
  assert prune_heads.main(['--workdir', workdir, '--fractions', '1.0']) == 2
