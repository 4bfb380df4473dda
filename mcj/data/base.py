"""The dataset interface every dataset implements, and the helpers that make streams
deterministic and host-sharded (see ``mcj.data`` for the interface)."""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple  # (height, width, channels) of the model input
  num_train_examples: int
  num_eval_examples: int
  metrics: tuple = ()  # eval metrics beyond accuracy the task is scored by (GLUE: f1, ...)


def host_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """This host's rows of a global batch; the batch must split evenly over hosts."""
  if global_batch_size % process_count:
    raise ValueError(
        f'Global batch size {global_batch_size} is not divisible by the {process_count} '
        'hosts: choose a batch size that is a multiple of the number of devices.')
  per_host = global_batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the examples in one epoch: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def stream_indices(num_examples: int, seed: int, step: int, batch_size: int) -> np.ndarray:
  """Example indices of global batch ``step`` in the endless, epoch-shuffled stream."""
  start = step * batch_size
  positions = np.arange(start, start + batch_size)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = epoch_permutation(num_examples, seed, int(epoch))[offsets[sel]]
  return out


def padded_eval_batches(images, labels, global_batch_size, process_index, process_count):
  """One pass over in-memory arrays; the last global batch is padded and masked."""
  rows = host_slice(global_batch_size, process_index, process_count)
  n = len(labels)
  for start in range(0, n, global_batch_size):
    idx = np.arange(start, start + global_batch_size)[rows]
    mask = idx < n
    idx = np.where(mask, idx, 0)
    yield {'image': images[idx], 'label': labels[idx], 'mask': mask.astype(np.float32)}


def mixup(rng, images, alpha: float):
  """Mixup (Zhang et al. 2018) of one device's batch, inside the jitted step: returns
  ``(lam * x + (1 - lam) * x[partner], partner, lam)`` with one lam ~ Beta(alpha, alpha)
  per batch; the label loss is mixed with the same ``lam`` and ``partner``."""
  import jax  # pylint: disable=g-import-not-at-top
  lam_rng, perm_rng = jax.random.split(rng)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  partner = jax.random.permutation(perm_rng, images.shape[0])
  return lam * images + (1 - lam) * images[partner], partner, lam


class InMemoryDataset:
  """A dataset held as arrays (``x_train``, ``y_train``, ``x_test``, ``y_test``): the
  deterministic host-sharded train stream and the padded eval pass every in-memory dataset
  shares. Subclasses set the arrays and ``info`` in ``__init__`` and call ``_keep``."""

  def _keep(self, seed, process_index, process_count):
    self.seed, self.process_index, self.process_count = seed, process_index, process_count

  def train_batches(self, start_step: int, global_batch_size: int):
    rows = host_slice(global_batch_size, self.process_index, self.process_count)
    step = start_step
    while True:
      idx = stream_indices(len(self.y_train), self.seed, step, global_batch_size)[rows]
      yield {'image': self.x_train[idx], 'label': self.y_train[idx]}
      step += 1

  def eval_batches(self, global_batch_size: int):
    return padded_eval_batches(self.x_test, self.y_test, global_batch_size,
                               self.process_index, self.process_count)
