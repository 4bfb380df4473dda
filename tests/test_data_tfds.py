"""TFDS input pipelines, on tiny datasets written to a temporary TFDS data_dir.

Most tests read real TFRecord shards prepared here (metadata plus a few dozen examples),
so split sharding per host, seeded file shuffling and skipping run through TFDS's own
reader; ``tfds.testing.mock_data`` stands in for the reader in one test. Nothing is
downloaded.
"""
import os
import pathlib
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')
from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top

from mcj import data as data_lib  # pylint: disable=g-import-not-at-top
from mcj.core.config import ConfigError  # pylint: disable=g-import-not-at-top
from mcj.data import tfds as tfds_data  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
EVAL_OFFSET = 1000  # mnist eval examples carry indices 1000.., train ones 0..
# name: ({split: shard lengths}, extra config). Two train shards so that files shuffle.
SPLITS = {
    'mnist': ({'train': [30, 20], 'test': [15]}, {}),
    'cifar10': ({'train': [20, 20], 'test': [10]}, {}),
    'imagenet2012': ({'train': [12, 12], 'validation': [10]}, {'image_size': 32}),
}


def _example(name, split, index, rng):
  """A random example; mnist stores its index in the first two pixels."""
  if name == 'mnist':
    image = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    index += EVAL_OFFSET if split == 'test' else 0
    image[0, 0, 0], image[0, 1, 0] = index % 256, index // 256
    return {'image': image, 'label': index % 10}
  if name == 'cifar10':
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return {'image': image, 'label': index % 10, 'id': f'{split}_{index}'}
  height, width = rng.integers(24, 64, 2)
  image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  return {'image': image, 'label': index % 1000, 'file_name': f'{split}_{index}.JPEG'}


def _prepare(data_dir, name):
  """Writes dataset_info.json, features.json and TFRecord shards, as TFDS would."""
  shards, _ = SPLITS[name]
  builder = tfds.builder(name, data_dir=data_dir)
  template = naming.ShardedFileTemplate(
      data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix='tfrecord')
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=0,
                          filename_template=template)
      for split, lengths in shards.items()]))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  features = builder.info.features
  serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
  rng = np.random.default_rng(0)
  for split in shards:
    info = builder.info.splits[split]
    index = 0
    for path, length in zip(info.filepaths, info.shard_lengths):
      with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for _ in range(length):
          example = features.encode_example(_example(name, split, index, rng))
          writer.write(serializer.serialize_example(example))
          index += 1


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  for name in SPLITS:
    _prepare(path, name)
  return str(path)


def _config(data_dir, name, **overrides):
  return ml_collections.ConfigDict(dict(name=name, data_dir=data_dir, **SPLITS[name][1],
                                        **overrides))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _mnist_index(images):
  """Recovers the indices stored in the first two pixels of standardised mnist images."""
  pixels = np.round((images[:, 0, :2, 0] * 0.3081 + 0.1307) * 255).astype(int)
  return pixels[:, 0] + 256 * pixels[:, 1]


def _value_bounds(name):
  mean, std = (np.array(v) for v in tfds_data._MEAN_STD[name])  # pylint: disable=protected-access
  return ((0 - mean) / std).min() - 1e-4, ((1 - mean) / std).max() + 1e-4


@pytest.mark.parametrize('name', list(SPLITS))
def test_info(data_dir, name):
  info = data_lib.get_dataset_info(_config(data_dir, name))
  shards, _ = SPLITS[name]
  train, eval_ = (sum(lengths) for lengths in shards.values())
  shape = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3), 'imagenet2012': (32, 32, 3)}[name]
  assert info == data_lib.DatasetInfo(
      num_classes=1000 if name == 'imagenet2012' else 10, image_shape=shape,
      num_train_examples=train, num_eval_examples=eval_)


@pytest.mark.parametrize('name', list(SPLITS))
def test_batches(data_dir, name):
  ds = data_lib.get_dataset(_config(data_dir, name), seed=0)
  low, high = _value_bounds(name)
  for batch in _take(ds.train_batches(0, 4), 2):
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (4,) + ds.info.image_shape
    assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
    assert low <= batch['image'].min() < batch['image'].max() <= high
    assert ((0 <= batch['label']) & (batch['label'] < ds.info.num_classes)).all()
  evals = list(ds.eval_batches(4))
  assert len(evals) == -(-ds.info.num_eval_examples // 4)
  for batch in evals:
    assert batch['image'].shape == (4,) + ds.info.image_shape
    assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
    assert batch['mask'].dtype == np.float32
    assert low <= batch['image'].min() <= batch['image'].max() <= high
  assert sum(b['mask'].sum() for b in evals) == ds.info.num_eval_examples


def test_two_hosts_disjoint_and_even(data_dir):
  config = _config(data_dir, 'mnist')
  hosts = [data_lib.get_dataset(config, seed=3, process_index=i, process_count=2)
           for i in range(2)]
  steps = 50 // 10  # one epoch of global batches of 10
  seen = []
  for ds in hosts:
    batches = _take(ds.train_batches(0, 10), steps)
    assert all(b['image'].shape[0] == 5 for b in batches)
    seen.append(np.concatenate([_mnist_index(b['image']) for b in batches]))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(50))

  evals = [list(ds.eval_batches(4)) for ds in hosts]  # host shards of 8 and 7 examples
  assert len(evals[0]) == len(evals[1]) == 4
  assert all(b['image'].shape[0] == 2 for host in evals for b in host)
  masks = np.concatenate([b['mask'] for host in evals for b in host])
  assert masks.sum() == 15 and set(masks) == {0.0, 1.0}
  real = np.concatenate([_mnist_index(b['image'])[b['mask'] == 1]
                         for host in evals for b in host])
  assert sorted(real) == list(range(EVAL_OFFSET, EVAL_OFFSET + 15))


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_resume_is_exact(data_dir, name):
  ds = data_lib.get_dataset(_config(data_dir, name), seed=7)
  batch = 6 if name == 'cifar10' else 4  # 6 steps per epoch: steps 5..9 cross into epoch 1
  assert ds.steps_per_epoch(batch) == 6
  full = _take(ds.train_batches(0, batch), 10)
  resumed = _take(ds.train_batches(5, batch), 5)
  again = _take(data_lib.get_dataset(_config(data_dir, name), seed=7).train_batches(5, batch), 5)
  for a, b, c in zip(full[5:], resumed, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(b['image'], c['image'])
  # Epochs are reshuffled: epoch 1 is not a replay of epoch 0.
  assert any((full[i]['label'] != full[i + 6]['label']).any() for i in range(4))


def test_augmentation_follows_the_seed(data_dir):
  def first_batch(seed, augment=True):
    ds = data_lib.get_dataset(_config(data_dir, 'cifar10', augment=augment), seed=seed)
    return next(ds.train_batches(0, 8))

  a, b = first_batch(1), first_batch(1)
  np.testing.assert_array_equal(a['image'], b['image'])
  plain = first_batch(1, augment=False)
  np.testing.assert_array_equal(a['label'], plain['label'])  # same order, different pixels
  assert not np.array_equal(a['image'], plain['image'])
  assert not np.array_equal(a['image'], first_batch(2)['image'])


def test_mock_data(data_dir):
  """``mock_data`` needs the metadata written above (the pip package ships none)."""
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=data_dir):
    for name in SPLITS:
      config = _config('/unused/by/mock_data', name)
      info = data_lib.get_dataset_info(config)
      ds = data_lib.get_dataset(config, seed=0)
      batch = next(ds.train_batches(0, 4))
      assert batch['image'].shape == (4,) + info.image_shape
      assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
      # The mock yields 12 examples whatever the split; the batch count follows the metadata.
      evals = list(ds.eval_batches(4))
      assert len(evals) == -(-info.num_eval_examples // 4)
      assert sum(b['mask'].sum() for b in evals) == min(12, 4 * len(evals))


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('network access attempted')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', refuse)


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_not_prepared_is_one_line(tmp_path, no_network, name):
  with pytest.raises(ConfigError) as error:
    data_lib.get_dataset_info(_config(str(tmp_path), name))
  message = str(error.value)
  assert '\n' not in message
  assert 'download_and_prepare' in message and str(tmp_path) in message
  assert 'TFDS_DATA_DIR' in message and '--config.data.data_dir' in message
  assert ('downloads/manual' in message) == (name == 'imagenet2012')


def test_unknown_name(tmp_path, no_network):
  with pytest.raises(ConfigError) as error:
    data_lib.get_dataset_info(ml_collections.ConfigDict(
        {'name': 'cifar11', 'data_dir': str(tmp_path)}))
  message = str(error.value)
  assert '\n' not in message
  assert 'digits, synthetic' in message and 'cifar11' in message


def test_wrong_kind_or_split(data_dir, no_network):
  with pytest.raises(ConfigError, match='not an image classification dataset'):
    data_lib.get_dataset_info(ml_collections.ConfigDict(
        {'name': 'imdb_reviews', 'data_dir': data_dir}))
  with pytest.raises(ConfigError, match="'validation' of mnist.*Prepared splits: test, train"):
    data_lib.get_dataset_info(_config(data_dir, 'mnist', eval_split='validation'))


def test_local_datasets_do_not_import_tensorflow():
  code = '\n'.join([
      'import sys, ml_collections',
      'from mcj import data',
      "for name in ('digits', 'mnist5k', 'synthetic'):",
      '  config = ml_collections.ConfigDict({"name": name, "image_size": 8})',
      '  ds = data.get_dataset(config, seed=0)',
      '  next(ds.train_batches(0, 8)); next(iter(ds.eval_batches(8)))',
      "loaded = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]",
      'assert not loaded, loaded',
  ])
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('split', ['test', 'train'])
def test_converted_checkpoint_evaluates_on_a_tfds_split(data_dir, tmp_path, split):
  """``mcj.evaluate`` on a torchvision checkpoint converted by ``mcj.weights``, over a TFDS
  split read from disk: its accuracy is the argmax of the model's own logits on that
  split's examples (every example once, none padded in)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mcj.core import checkpoint  # pylint: disable=g-import-not-at-top
  from mcj.models import get_model  # pylint: disable=g-import-not-at-top
  from mcj.train.evaluation import evaluate_workdir  # pylint: disable=g-import-not-at-top
  from mcj.weights.__main__ import convert_file  # pylint: disable=g-import-not-at-top
  fixtures = REPO / 'tests' / 'fixtures' / 'torchvision'
  workdir = str(tmp_path / 'run')
  options = {'widths': [8, 16, 24, 32]}  # the narrow fixture's (its index.json)
  convert_file('torchvision:resnet18', str(fixtures / 'resnet18.pth'), workdir,
               data='cifar10', options=options, say=lambda *a: None)
  out = evaluate_workdir(workdir, [f'--config.data.data_dir={data_dir}',
                                   f'--config.data.eval_split={split}'],
                         record=False, say=lambda *a: None)
  data = _config(data_dir, 'cifar10', eval_split=split)
  ds = data_lib.get_dataset(data, seed=0)
  model = get_model('resnet18', num_classes=10, **options)
  variables = checkpoint.load_variables(workdir)
  correct = total = 0
  for batch in ds.eval_batches(8):
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, batch['image']))
    hit = (logits.argmax(-1) == batch['label']) & batch['mask'].astype(bool)
    correct, total = correct + hit.sum(), total + batch['mask'].sum()
  assert out['examples'] == total == sum(SPLITS['cifar10'][0][split])
  assert 0 < correct < total  # the narrow random model gets some right, not all
  assert out['eval/accuracy'] == pytest.approx(correct / total, abs=1e-6)
