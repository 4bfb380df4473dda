"""scikit-learn's ``digits``: 1,797 real 8x8 handwritten digits that ship inside the wheel.

The default offline dataset: it needs no download. A fixed stratified split holds out 20%
(360 images) as the test set. Pixels 0..16 are scaled to [0, 1] and standardised with the
training split's mean and standard deviation.
"""
import numpy as np

from mcj.core import registry
from mcj.data import base as data_lib

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _load_splits():
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  images = (digits.images.astype(np.float32) / 16.0)[..., None]  # (1797, 8, 8, 1)
  labels = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
  mean, std = x_train.mean(), x_train.std()
  return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


@registry.register('dataset', 'digits')
class DigitsDataset(data_lib.InMemoryDataset):
  """8x8x1 grey images, 10 classes, 1,437 train / 360 test."""

  @staticmethod
  def dataset_info(data_config=None) -> data_lib.DatasetInfo:
    return data_lib.DatasetInfo(num_classes=10, image_shape=(8, 8, 1),
                                num_train_examples=1437, num_eval_examples=360)

  def __init__(self, data_config, *, seed, process_index=0, process_count=1):
    self.x_train, self.y_train, self.x_test, self.y_test = _load_splits()
    self.info = self.dataset_info(data_config)
    assert len(self.y_train) == self.info.num_train_examples
    self._keep(seed, process_index, process_count)
