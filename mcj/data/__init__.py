"""Datasets by name behind one interface.

``get_dataset(config.data, seed=..., process_index=..., process_count=...)`` returns a
dataset object with:

* ``info``: a ``DatasetInfo`` (classes, image shape, split sizes);
* ``train_batches(start_step, global_batch_size)``: an endless iterator of this host's
  part of each global batch, ``{'image': float32 NHWC, 'label': int32}``, whose order is a
  pure function of (seed, step): resuming at ``start_step`` continues exactly where an
  uninterrupted run would be;
* ``eval_batches(global_batch_size)``: one pass over the eval split, padded so every host
  yields the same number of batches, with ``'mask'`` (1 real, 0 padding).

``digits`` and ``synthetic`` never import TensorFlow; every other name is a TFDS dataset,
and TensorFlow is imported only then.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple  # (height, width, channels) of the model input
  num_train_examples: int
  num_eval_examples: int


LOCAL_DATASETS = ('digits', 'synthetic')


def _builder(name):
  if name == 'digits':
    from mcj.data import digits
    return digits.DigitsDataset
  if name == 'synthetic':
    from mcj.data import synthetic
    return synthetic.SyntheticDataset
  from mcj.data import tfds
  return tfds.TfdsDataset


def get_dataset(data_config, *, seed: int, process_index: int = 0, process_count: int = 1):
  """Returns the dataset named by ``data_config.name`` (see the module docstring)."""
  return _builder(data_config.name)(
      data_config, seed=seed, process_index=process_index, process_count=process_count)


def get_dataset_info(data_config) -> DatasetInfo:
  """Shape and size facts of a dataset, without reading its examples."""
  return _builder(data_config.name).dataset_info(data_config)


# What the model sees for well-known TFDS datasets: (classes, input shape or None for
# image_size x image_size x 3). Lets `mcj.summary --config` work without the data.
KNOWN_INPUTS = {'mnist': (10, (28, 28, 1)), 'cifar10': (10, (32, 32, 3)),
                'cifar100': (100, (32, 32, 3)), 'imagenet2012': (1000, None)}


def model_input(data_config) -> tuple:
  """(num_classes, image_shape) of the model input; well-known datasets need no data."""
  known = KNOWN_INPUTS.get(data_config.name.split(':')[0])
  if known:
    size = data_config.get('image_size', None) or 224
    return known[0], known[1] or (size, size, 3)
  info = get_dataset_info(data_config)
  return info.num_classes, tuple(info.image_shape)


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
