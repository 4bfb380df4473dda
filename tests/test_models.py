"""Model registry: published parameter counts, shapes, dtypes, BatchNorm."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcj.core import registry
from mcj.models import get_model
from tests.helpers import assert_trees_close

# Trainable params (BN scale/bias included, running stats excluded).
IMAGENET = {
    'resnet18': 11_689_512, 'resnet34': 21_797_672, 'resnet50': 25_557_032,
    'mobilenet_v1': 4_231_976, 'mobilenet_v2': 3_504_872,
    'mobilenet_v3_large': 5_483_032, 'mobilenet_v3_small': 2_542_856,
    'mobilenet_v3': 5_483_032,  # any block table; its default is Large's
}
CIFAR10 = {
    'resnet20': 269_722, 'resnet32': 464_154, 'resnet44': 658_586,
    'resnet56': 853_018, 'resnet110': 1_727_962, 'resnet18_cifar': 11_173_962,
}


def _init_shapes(model, size):
  x = jnp.zeros((1, size, size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _random_variables(model, x):
  """Variables drawn with numpy: much faster to set up than model.init here."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes['params'])
  stats = jax.tree_util.tree_map_with_path(
      lambda p, s: np.full(s.shape, p[-1].key == 'var', np.float32),
      shapes['batch_stats'])
  return {'params': params, 'batch_stats': stats}


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_every_model_has_a_published_count():
  """Float models are counted here; every binary family in tests/test_zoo_*.py; search-space
  models (nb201) in tests/test_search_spaces.py; BERT and ViT in tests/test_transformers.py."""
  from mcj.models.cnn import mobilenet, resnet
  assert set(resnet.MODELS) | set(mobilenet.MODELS) == set(IMAGENET) | set(CIFAR10)
  import pathlib
  here = pathlib.Path(__file__).parent
  zoo_tests = ''.join(p.read_text() for p in [*here.glob('test_zoo_*.py'),
                                                here / 'test_search_spaces.py',
                                                here / 'test_transformers.py'])
  missing = [n for n in registry.names('model') if n not in IMAGENET and n not in CIFAR10
             and f"'{n}'" not in zoo_tests]
  assert not missing, f'models without a count test: {missing}'



@pytest.mark.parametrize('name,expected', list(IMAGENET.items()))
def test_imagenet_param_counts(name, expected):
  assert _count(_init_shapes(get_model(name, 1000), 224)['params']) == expected


@pytest.mark.parametrize('name,expected', list(CIFAR10.items()))
def test_cifar10_param_counts(name, expected):
  assert _count(_init_shapes(get_model(name, 10), 32)['params']) == expected


@pytest.mark.parametrize('name,size', [
    *[(n, 32) for n in IMAGENET], *[(n, 8) for n in CIFAR10]])
def test_small_inputs_give_float32_logits(name, size):
  model = get_model(name, 7)
  variables = _init_shapes(model, size)
  x = jnp.zeros((3, size, size, 3))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (3, 7) and out.dtype == jnp.float32


@pytest.mark.parametrize('name', ['resnet18', 'mobilenet_v2',
                                  'mobilenet_v3_small'])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  model = get_model(name, 10, dtype=jnp.bfloat16)
  variables = _init_shapes(model, 32)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  x = jnp.zeros((2, 32, 32, 3))
  out, _ = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, mutable=['batch_stats'],
                            rngs={'dropout': jax.random.key(1)}), variables)
  assert out.shape == (2, 10) and out.dtype == jnp.float32


@pytest.mark.slow
def test_train_step_updates_batch_stats():
  model = get_model('resnet20', 10, stage_sizes=(1, 1, 1))  # Shallow: fast.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 3)))
  variables = _random_variables(model, x)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=['batch_stats'])
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  old, new = variables['batch_stats'], updates['batch_stats']
  assert jax.tree.structure(old) == jax.tree.structure(new)
  mean = new['bn1']['mean']  # momentum 0.9: 0.1 * batch mean of the stem.
  assert not np.allclose(mean, old['bn1']['mean'])
  # Running stats stay put in eval mode.
  _, same = model.apply(variables, x, train=False, mutable=['batch_stats'])
  assert jax.tree.all(jax.tree.map(np.array_equal, same['batch_stats'], old))


@pytest.mark.slow
def test_bn_axis_name_averages_stats_across_devices():
  """Per-device BN stats under a named axis equal full-batch stats."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 3)))
  plain = get_model('resnet20', 10, stage_sizes=(1, 1, 1))
  sharded = plain.clone(bn_axis_name='data')
  variables = _random_variables(plain, x)
  _, want = plain.apply(variables, x, train=True, mutable=['batch_stats'])
  _, got = jax.vmap(
      lambda xs: sharded.apply(variables, xs, train=True,
                               mutable=['batch_stats']),
      axis_name='data')(x.reshape(2, 2, 8, 8, 3))
  for device in (0, 1):
    assert_trees_close(jax.tree.map(lambda g: g[device], got), want, rtol=1e-4, atol=1e-5)


def test_dropout_needs_rng_and_rate_is_configurable():
  x = jnp.zeros((2, 32, 32, 3))
  model = get_model('mobilenet_v2', 10, dropout_rate=0.5)
  assert model.dropout_rate == 0.5
  variables = _init_shapes(model, 32)
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(lambda v: model.apply(v, x, train=True,
                                         mutable=['batch_stats']), variables)


@pytest.mark.parametrize('name', ['mobilenet_v1', 'mobilenet_v2',
                                  'mobilenet_v3_large', 'mobilenet_v3_small'])
def test_width_multiplier_shrinks_mobilenets(name):
  full = _count(_init_shapes(get_model(name, 1000), 32)['params'])
  half = _count(_init_shapes(get_model(name, 1000, width_multiplier=0.5),
                             32)['params'])
  assert half < full


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='resnet18_cifar') as e:
    get_model('resnet19', 10)
  assert all(name in str(e.value) for name in registry.names('model'))
