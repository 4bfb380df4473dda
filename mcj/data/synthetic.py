"""Random images (or token ids) and labels of any shape and class count, for benchmarks and
tests. With ``max_length`` set the examples are token ids, as the text datasets give them:
``[CLS]`` (101) then ``max_length - 1`` ids drawn from 104 .. ``vocab_size`` (default
30,522, BERT's uncased vocab), no padding: a BERT's full-length input.

A small pool of batches is drawn once from the seed and cycled, so producing data costs
nothing next to the train step being measured.
"""
import numpy as np

from mcj.core import registry
from mcj.data import base as data_lib

POOL_BATCHES = 4


@registry.register('dataset', 'synthetic')
class SyntheticDataset:
  """Options in ``config.data``: image_size, channels, num_classes (1: a regression task,
  standard-normal float labels), num_train_examples, num_eval_examples; max_length and
  vocab_size for token ids."""

  @staticmethod
  def dataset_info(data_config) -> data_lib.DatasetInfo:
    get = lambda key, default: data_config.get(key, None) or default  # None: unset
    size = get('image_size', 224)
    length = data_config.get('max_length', None)
    return data_lib.DatasetInfo(
        num_classes=get('num_classes', 1000),
        image_shape=(length,) if length else (size, size, get('channels', 3)),
        num_train_examples=get('num_train_examples', 1_281_167),
        num_eval_examples=get('num_eval_examples', 1024))

  def __init__(self, data_config, *, seed, process_index=0, process_count=1):
    self.info = self.dataset_info(data_config)
    self.vocab_size = data_config.get('vocab_size', None) or 30522
    self.seed, self.process_index, self.process_count = seed, process_index, process_count

  def _pool(self, batch_size, salt):
    rng = np.random.default_rng([self.seed, salt])
    rows = data_lib.host_slice(batch_size, self.process_index, self.process_count)
    shape = (batch_size,) + tuple(self.info.image_shape)

    def examples():
      if len(shape) == 2:  # (batch, length): token ids behind [CLS]
        ids = rng.integers(104, self.vocab_size, shape).astype(np.int32)
        ids[:, 0] = 101
        return ids
      return rng.standard_normal(shape, dtype=np.float32)

    def labels():  # num_classes 1: a regression task's float labels
      if self.info.num_classes == 1:
        return rng.standard_normal(batch_size).astype(np.float32)
      return rng.integers(0, self.info.num_classes, batch_size).astype(np.int32)

    return [{'image': examples()[rows], 'label': labels()[rows]} for _ in range(POOL_BATCHES)]

  def train_batches(self, start_step: int, global_batch_size: int):
    pool = self._pool(global_batch_size, salt=0)
    step = start_step
    while True:
      yield pool[step % POOL_BATCHES]
      step += 1

  def eval_batches(self, global_batch_size: int):
    pool = self._pool(global_batch_size, salt=1)
    n = self.info.num_eval_examples
    for i, start in enumerate(range(0, n, global_batch_size)):
      batch = dict(pool[i % POOL_BATCHES])
      rows = data_lib.host_slice(global_batch_size, self.process_index, self.process_count)
      batch['mask'] = (np.arange(start, start + global_batch_size)[rows] < n).astype(np.float32)
      yield batch
