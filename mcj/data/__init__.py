"""Datasets by name behind one interface.

``get_dataset(config.data, seed=..., process_index=..., process_count=...)`` returns a
dataset object with:

* ``info``: a ``DatasetInfo`` (classes, image shape, split sizes);
* ``train_batches(start_step, global_batch_size)``: an endless iterator of this host's
  part of each global batch, ``{'image': float32 NHWC, 'label': int32}``, whose order is a
  pure function of (seed, step): resuming at ``start_step`` continues exactly where an
  uninterrupted run would be. For text (``rotten_tomatoes``, ``glue/*``; ``mcj.data.text``)
  ``'image'`` holds int32 token ids ``(B, max_length)``, ``[CLS] a [SEP] (b [SEP])`` padded
  with 0, ``info.image_shape`` is ``(max_length,)`` and the dataset's ``vocab_size`` bounds
  the ids; glue/stsb's labels are float32 (a regression task);
* ``eval_batches(global_batch_size)``: one pass over the eval split, padded so every host
  yields the same number of batches, with ``'mask'`` (1 real, 0 padding).

``digits``, ``mnist5k``, ``rotten_tomatoes`` and ``synthetic`` never import TensorFlow;
every other name is a TFDS dataset, and TensorFlow is imported only then: the GLUE tasks
(``glue/sst2``, ...) are read by ``mcj.data.glue`` as text, any other name by
``mcj.data.tfds`` as images.
"""
from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.data import digits, mnist5k, synthetic  # noqa: F401  (they register themselves)
from mcj.data import glue, rotten_tomatoes  # noqa: F401  (rotten_tomatoes registers itself)
from mcj.data.base import (DatasetInfo, epoch_permutation, host_slice, mixup,  # noqa: F401
                           padded_eval_batches, stream_indices)

# The `data` config block: what every dataset may read (each reads what it needs).
DEFAULTS = {'name': 'digits', 'data_dir': None, 'train_split': None, 'eval_split': None,
            'image_size': None, 'channels': None, 'num_classes': None,
            'num_train_examples': None, 'num_eval_examples': None,
            'shuffle_buffer': None, 'augment': True,
            # Text datasets (mcj.data.text): tokens per example (None: the dataset's default,
            # 64 for rotten_tomatoes, 128 for GLUE), a BERT vocab.txt, or the size of the
            # vocab learned from the training split when there is no file (None: 8000).
            'max_length': None, 'vocab_file': None, 'vocab_size': None}


def _builder(name, data_config=None):
  """A registered dataset (``digits``, ``synthetic``, ...); any other name is a TFDS
  dataset (a GLUE task: text, else images), and only then is TensorFlow imported. A
  ``data_dir`` given to a dataset that reads none is an error, not ignored."""
  if glue.is_glue(name):
    return glue.GlueDataset
  if registry.contains('dataset', name):
    if data_config is not None and data_config.get('data_dir', None):
      raise ConfigError(f'Dataset {name!r} is built in and reads no data_dir: unset '
                        'config.data.data_dir, or name a TFDS dataset.')
    return registry.get('dataset', name)
  from mcj.data import tfds  # pylint: disable=g-import-not-at-top
  return tfds.TfdsDataset


def get_dataset(data_config, *, seed: int, process_index: int = 0, process_count: int = 1):
  """Returns the dataset named by ``data_config.name`` (see the module docstring)."""
  return _builder(data_config.name, data_config)(
      data_config, seed=seed, process_index=process_index, process_count=process_count)


def get_dataset_info(data_config) -> DatasetInfo:
  """Shape and size facts of a dataset, without reading its examples."""
  return _builder(data_config.name, data_config).dataset_info(data_config)


# What the model sees for well-known TFDS datasets: (classes, input shape or None for
# image_size x image_size x 3). Lets `mcj.summary --config` work without the data.
KNOWN_INPUTS = {'mnist': (10, (28, 28, 1)), 'cifar10': (10, (32, 32, 3)),
                'cifar100': (100, (32, 32, 3)), 'imagenet2012': (1000, None)}


def model_input(data_config) -> tuple:
  """(num_classes, image_shape) of the model input; well-known datasets need no data."""
  if glue.is_glue(data_config.name):
    return glue.GlueDataset.model_input(data_config)
  known = KNOWN_INPUTS.get(data_config.name.split(':')[0])
  if known:
    size = data_config.get('image_size', None) or 224
    return known[0], known[1] or (size, size, 3)
  info = get_dataset_info(data_config)
  return info.num_classes, tuple(info.image_shape)
