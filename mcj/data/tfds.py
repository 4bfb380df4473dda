"""TensorFlow Datasets image classification: mnist, cifar10/100, imagenet2012 and others.

Each host reads its own shard of a split (``tfds.split_for_jax_process``). Training walks
the data one epoch at a time: epoch ``e``'s file order and shuffle are seeded from
(seed, e, host), and augmentation uses stateless random ops keyed by (seed, e, host, the
example's position in the epoch). Batch ``k`` is therefore a pure function of (seed, k) for
a given batch size and host count, and resuming at ``start_step`` skips the consumed
examples of the current epoch (before decoding them) and continues exactly.

Options in ``config.data``: name (TFDS name, optionally ``name:version``), data_dir
(default: $TFDS_DATA_DIR, then the TFDS default; ``gs://`` works), train_split, eval_split,
image_size (imagenet2012 and variable-size datasets; default 224), shuffle_buffer (default
50,000 encoded examples: a full shuffle of mnist or cifar; for imagenet2012 about 5 GB of
JPEGs per host, on top of shuffling its 1,024 files; lower it if host memory is short) and
augment (default True; training only).

Preprocessing (float32 NHWC):

* mnist: [0, 1], standardised with mean 0.1307 and std 0.3081; no augmentation.
* cifar10/cifar100: train pads 4 pixels by reflection, takes a random 32x32 crop and flips
  horizontally; normalised with the per-channel mean and std of the training set.
* imagenet2012: train takes an Inception-style random resized crop (8%-100% of the area,
  aspect 3/4-4/3, decoded straight from the JPEG) to ``image_size`` and flips; eval resizes
  the shorter side to ``image_size / 0.875`` and takes the centre crop; ImageNet mean/std.
* others: [0, 1]; variable-size images are resized and centre-cropped like imagenet eval;
  no augmentation.

Each epoch starts a fresh pipeline, so its first batch waits for the shuffle buffer to fill.
TensorFlow only reads data here: GPUs are hidden from it so that it never takes
accelerator memory, which also keeps the stateless random ops on the CPU's algorithm.
"""
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mcj.data import base as data_lib
from mcj.core.config import ConfigError

try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF already initialised its devices (it then saw no GPU or kept it).
  pass

_MEAN_STD = {
    'mnist': ((0.1307,), (0.3081,)),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_AUGMENTED = ('cifar10', 'cifar100', 'imagenet2012')
EVAL_CROP_FRACTION = 0.875
CIFAR_PAD = 4
DEFAULT_SHUFFLE_BUFFER = 50_000


def _family(name: str) -> str:
  """'cifar10:3.0.2' -> 'cifar10'; datasets without their own preprocessing -> 'generic'."""
  base = name.split(':')[0].split('/')[0]
  if base == 'imagenet2012_subset':  # 1% or 10% of the imagenet2012 train split
    return 'imagenet2012'
  return base if base in _MEAN_STD else 'generic'


def _data_dir(data_config):
  return data_config.get('data_dir', None) or os.environ.get('TFDS_DATA_DIR') or None


def _first_lines(error: Exception) -> str:
  """The gist of a TFDS error: its first line plus any 'Did you mean' hint."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  gist = lines[:1] + [line for line in lines[1:] if line.startswith('Did you mean')]
  return ' '.join(gist) or type(error).__name__


def _open_builder(data_config):
  """The TFDS builder for ``data_config.name``, checked to be prepared; never downloads."""
  name = data_config.get('name', None)
  data_dir = _data_dir(data_config)
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except tfds.core.DatasetNotFoundError as e:
    raise ConfigError(
        f'Unknown dataset {name!r}: use digits, synthetic or any TensorFlow Datasets image '
        f'classification name (e.g. mnist, cifar10, cifar100, imagenet2012). TFDS says: '
        f'{_first_lines(e)}') from None
  except (AssertionError, ValueError) as e:  # e.g. a version TFDS does not have
    raise ConfigError(f'Cannot open TFDS dataset {name!r}: {_first_lines(e)}') from None
  features = builder.info.features
  if ('image' not in features or 'label' not in features
      or not isinstance(features['label'], tfds.features.ClassLabel)):
    raise ConfigError(f'TFDS dataset {name!r} is not an image classification dataset: it '
                      f'needs "image" and "label" features, it has {sorted(features)}.')
  if not builder.is_prepared():
    root = str(builder.data_dir_root)
    manual = ''
    if _family(name) == 'imagenet2012':
      manual = (f' after placing ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in '
                f'{root}/downloads/manual (they cannot be downloaded automatically)')
    raise ConfigError(
        f'TFDS dataset {name!r} is not prepared in {root} (no {builder.data_dir}/'
        'dataset_info.json). Prepare it with '
        f'python -c "import tensorflow_datasets as tfds; tfds.builder(\'{name}\', '
        f'data_dir=\'{root}\').download_and_prepare()"{manual}; select the directory with '
        '--config.data.data_dir=DIR or the TFDS_DATA_DIR environment variable.')
  return builder


def _splits(builder, data_config):
  """(train_split, eval_split) names, checked against the prepared splits."""
  train = data_config.get('train_split', None) or 'train'
  eval_ = data_config.get('eval_split', None)
  if not eval_:
    prepared = builder.info.splits
    use_test = 'test' in prepared and _family(builder.name) != 'imagenet2012'
    eval_ = 'test' if use_test else 'validation'
  for split in (train, eval_):
    try:
      builder.info.splits[split]
    except (KeyError, ValueError, AssertionError) as e:
      raise ConfigError(
          f'Split {split!r} of {builder.name}: {_first_lines(e)} Prepared splits: '
          f'{", ".join(sorted(builder.info.splits))}.') from None
  return train, eval_


def _image_size(data_config) -> int:
  return int(data_config.get('image_size', None) or 224)


def _output_shape(builder, data_config) -> tuple:
  """Shape of one preprocessed image, (height, width, channels)."""
  family = _family(builder.name)
  height, width, channels = builder.info.features['image'].shape
  if family == 'imagenet2012':
    return (_image_size(data_config),) * 2 + (3,)
  channels = channels or 3
  if height is None or width is None:
    return (_image_size(data_config),) * 2 + (channels,)
  return (height, width, channels)


def _dataset_info(builder, data_config) -> data_lib.DatasetInfo:
  train, eval_ = _splits(builder, data_config)
  return data_lib.DatasetInfo(
      num_classes=builder.info.features['label'].num_classes,
      image_shape=_output_shape(builder, data_config),
      num_train_examples=builder.info.splits[train].num_examples,
      num_eval_examples=builder.info.splits[eval_].num_examples)


def _seed_words(*words, n: int) -> list:
  """``n`` 32-bit integers derived from ``words`` (seed, epoch, host, ...)."""
  entropy = [int(w) % 2**64 for w in words]
  return [int(x) for x in np.random.SeedSequence(entropy).generate_state(n, np.uint32)]


def _options():
  options = tf.data.Options()
  options.deterministic = True
  return options


def _resize_center_crop(image, size: int):
  """Resizes the shorter side to ``size / 0.875`` and crops the central size x size."""
  shape = tf.shape(image)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = round(size / EVAL_CROP_FRACTION) / tf.minimum(height, width)
  new_h = tf.cast(tf.round(height * scale), tf.int32)
  new_w = tf.cast(tf.round(width * scale), tf.int32)
  image = tf.image.resize(image, tf.stack([new_h, new_w]), antialias=True)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size]


def _random_resized_crop(encoded, size: int, key):
  """Inception-style crop, decoding only the cropped part of the JPEG, resized to size."""
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.image.extract_jpeg_shape(encoded),
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4)),
      seed=key,
      min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)  # after 10 misses: the whole image
  window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
  image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
  return tf.image.resize(image, (size, size), antialias=True)


class TfdsDataset:
  """A prepared TFDS image classification dataset (see the module docstring)."""

  @staticmethod
  def dataset_info(data_config) -> data_lib.DatasetInfo:
    return _dataset_info(_open_builder(data_config), data_config)

  def __init__(self, data_config, *, seed, process_index=0, process_count=1):
    self._builder = _open_builder(data_config)
    self.info = _dataset_info(self._builder, data_config)
    self._train_split, self._eval_split = _splits(self._builder, data_config)
    self._family = _family(self._builder.name)
    self._image_feature = self._builder.info.features['image']
    self._shape = tuple(self.info.image_shape)
    self._augment = bool(data_config.get('augment', True))
    self._shuffle_buffer = int(data_config.get('shuffle_buffer', None) or DEFAULT_SHUFFLE_BUFFER)
    self.seed, self.process_index, self.process_count = seed, process_index, process_count
    mean, std = _MEAN_STD.get(self._family, (None, None))
    self._mean = None if mean is None else tf.constant(mean, tf.float32)
    self._std = None if std is None else tf.constant(std, tf.float32)
    self._eval_datasets = {}  # by global batch size; reused so TFDS's auto-cache can help

  def _host_split(self, split):
    return tfds.split_for_jax_process(
        split, process_index=self.process_index, process_count=self.process_count)

  def _per_host(self, global_batch_size: int) -> int:
    rows = data_lib.host_slice(global_batch_size, self.process_index, self.process_count)
    return rows.stop - rows.start

  def _read(self, split, *, shuffle_seed=None, cache=False):
    """Undecoded images (``SkipDecoding``) so that skipped examples cost no decoding."""
    read_config = tfds.ReadConfig(
        options=_options(), shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False,
        try_autocache=cache)
    return self._builder.as_dataset(
        split=self._host_split(split), shuffle_files=shuffle_seed is not None,
        decoders={'image': tfds.decode.SkipDecoding()}, read_config=read_config)

  # -- preprocessing ---------------------------------------------------------------------

  def _normalise(self, image):
    """uint8-range float pixels -> float32 model input."""
    image = tf.cast(image, tf.float32) / 255.0
    if self._mean is not None:
      image = (image - self._mean) / self._std
    return tf.ensure_shape(image, self._shape)

  def _preprocess(self, encoded, key=None):
    """One encoded image -> float32 ``self._shape``; ``key`` (a stateless seed) augments."""
    size = self._shape[0]
    if self._family == 'imagenet2012' and key is not None:
      crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
      image = _random_resized_crop(encoded, size, crop_key)
      return self._normalise(tf.image.stateless_random_flip_left_right(image, flip_key))
    image = self._image_feature.decode_example(encoded)
    if self._family in ('cifar10', 'cifar100') and key is not None:
      crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
      pad = [[CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]]
      image = tf.image.stateless_random_crop(tf.pad(image, pad, mode='REFLECT'),
                                             self._shape, crop_key)
      image = tf.image.stateless_random_flip_left_right(image, flip_key)
    elif self._family == 'imagenet2012' or tuple(image.shape[:2]) != self._shape[:2]:
      image = _resize_center_crop(image, size)
    return self._normalise(image)

  # -- iterators -------------------------------------------------------------------------

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Full global batches per epoch, the same on every host (the remainder is dropped)."""
    steps = self.info.num_train_examples // global_batch_size
    if steps == 0:
      raise ConfigError(
          f'Global batch size {global_batch_size} exceeds the {self.info.num_train_examples} '
          f'examples of {self._builder.name} {self._train_split}.')
    return steps

  def _train_epoch(self, epoch: int, first_step: int, global_batch_size: int):
    """This host's batches of one epoch from its ``first_step``-th on."""
    per_host = self._per_host(global_batch_size)
    steps = self.steps_per_epoch(global_batch_size)
    file_seed, shuffle_seed, key0, key1 = _seed_words(
        self.seed, epoch, self.process_index, n=4)
    augment_key = tf.constant([key0, key1], tf.int64)
    augment = self._augment and self._family in _AUGMENTED

    def preprocess(position, example):
      key = (tf.random.experimental.stateless_fold_in(augment_key, position)
             if augment else None)
      return {'image': self._preprocess(example['image'], key),
              'label': tf.cast(example['label'], tf.int32)}

    ds = self._read(self._train_split, shuffle_seed=file_seed)
    ds = ds.shuffle(self._shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(steps * per_host).enumerate()  # position within this host's epoch
    ds = ds.skip(first_step * per_host)  # before decoding: resuming is cheap
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(per_host, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())

  def train_batches(self, start_step: int, global_batch_size: int):
    """Endless ``{'image', 'label'}`` numpy batches of this host, from ``start_step`` on."""
    steps = self.steps_per_epoch(global_batch_size)
    epoch, step = divmod(int(start_step), steps)
    while True:
      yield from self._train_epoch(epoch, step, global_batch_size).as_numpy_iterator()
      epoch, step = epoch + 1, 0

  def eval_batches(self, global_batch_size: int):
    """One pass over this host's shard of the eval split, padded with ``mask`` 0.

    Hosts' shards differ by at most one example; every host pads to the batch count of
    the largest, since the eval step is a collective that all hosts must enter together.
    """
    if global_batch_size not in self._eval_datasets:
      self._eval_datasets[global_batch_size] = self._eval_dataset(global_batch_size)
    return self._eval_datasets[global_batch_size].as_numpy_iterator()

  def _eval_dataset(self, global_batch_size: int):
    per_host = self._per_host(global_batch_size)
    largest_shard = math.ceil(self.info.num_eval_examples / self.process_count)
    num_batches = math.ceil(largest_shard / per_host)

    def preprocess(example):
      return {'image': self._preprocess(example['image']),
              'label': tf.cast(example['label'], tf.int32),
              'mask': tf.constant(1.0, tf.float32)}

    padding = {'image': tf.zeros(self._shape, tf.float32), 'label': tf.constant(0, tf.int32),
               'mask': tf.constant(0.0, tf.float32)}
    ds = self._read(self._eval_split, cache=True)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    ds = ds.take(num_batches * per_host).batch(per_host, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
