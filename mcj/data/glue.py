"""GLUE tasks from TensorFlow Datasets, as token ids for BERT-style models.

Names (``config.data.name``, optionally ``name:version``): glue/cola, glue/sst2,
glue/mrpc, glue/qqp, glue/stsb, glue/mnli, glue/qnli, glue/rte. TASKS lists each task's
text features (one text, or a pair encoded as ``[CLS] a [SEP] b [SEP]``), classes, eval
split and GLUE metrics:

=========  ========================  =======  ======================  ===================
task       text features             classes  eval split              metrics
=========  ========================  =======  ======================  ===================
cola       sentence                  2        validation              matthews_corrcoef
sst2       sentence                  2        validation              accuracy
mrpc       sentence1, sentence2      2        validation              f1, accuracy
qqp        question1, question2      2        validation              f1, accuracy
stsb       sentence1, sentence2      1        validation              pearson, spearman
mnli       premise, hypothesis       3        validation_matched      accuracy
qnli       question, sentence        2        validation              accuracy
rte        sentence1, sentence2      2        validation              accuracy
=========  ========================  =======  ======================  ===================

MNLI's mismatched validation set: ``--config.data.eval_split=validation_mismatched``.
GLUE's test splits hide their labels (-1) and are refused. f1 is the F1 of class 1
(paraphrase / duplicate); ``metrics(task, labels, outputs)`` computes a task's metrics.

STS-B is a regression task: its label is a float32 similarity in [0, 5] and it has one
output (``num_classes=1``). The trainer then fits the squared error of ``outputs[:, 0]``
(``mcj.core.losses.task_loss``; ``eval/loss`` is the eval split's mean squared error) and
reports the Pearson and Spearman correlations of the outputs with the labels over the
whole eval split in place of accuracy; distillation takes ``distill.logit_loss='mse'``.

Each split is read whole into memory on every host (text is small: MNLI's 393k training
pairs are about 70 MB) and tokenized there; the batches then come from
``base.InMemoryDataset`` (the deterministic host-sharded stream and the padded, masked
eval pass). Tokens: ``config.data.vocab_file`` (a BERT vocab.txt; needed to fine-tune a
pretrained BERT) or, when unset, a vocab learned from the task's train split (every text
feature) with ``config.data.vocab_size`` tokens (``mcj.data.text.train_vocab``; nothing is
cached). Learning and tokenizing take seconds for the small tasks; for qqp and mnli
(about 800k texts) expect under a minute (about 18 s to learn 8,000 tokens from 400k
texts of 133k distinct words, 8 s to tokenize them, on one CPU core). Other options:
max_length (default 128), data_dir (as for every TFDS dataset), train_split (default
train), eval_split. TensorFlow is imported only when a task is opened (through
``mcj.data.tfds``); the metrics are numpy.
"""
import dataclasses
import math

import numpy as np

from mcj.core.config import ConfigError
from mcj.data import base as data_lib
from mcj.data import text as text_lib

DEFAULT_MAX_LENGTH = 128
READ_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class Task:
  features: tuple  # the text features: one, or a pair
  num_classes: int  # 1: regression (float labels)
  eval_split: str
  metrics: tuple  # names in METRICS, the first GLUE's main one


TASKS = {
    'glue/cola': Task(('sentence',), 2, 'validation', ('matthews_corrcoef',)),
    'glue/sst2': Task(('sentence',), 2, 'validation', ('accuracy',)),
    'glue/mrpc': Task(('sentence1', 'sentence2'), 2, 'validation', ('f1', 'accuracy')),
    'glue/qqp': Task(('question1', 'question2'), 2, 'validation', ('f1', 'accuracy')),
    'glue/stsb': Task(('sentence1', 'sentence2'), 1, 'validation', ('pearson', 'spearman')),
    'glue/mnli': Task(('premise', 'hypothesis'), 3, 'validation_matched', ('accuracy',)),
    'glue/qnli': Task(('question', 'sentence'), 2, 'validation', ('accuracy',)),
    'glue/rte': Task(('sentence1', 'sentence2'), 2, 'validation', ('accuracy',)),
}


def task_name(name: str) -> str:
  """'glue/sst2:2.0.0' -> 'glue/sst2'."""
  return str(name).split(':')[0]


def is_glue(name) -> bool:
  return task_name(name) in TASKS


def get_task(name: str) -> Task:
  task = TASKS.get(task_name(name))
  if task is None:
    raise ConfigError(f'{name!r} is not a GLUE task of mcj: use one of {", ".join(TASKS)}.')
  return task


# -- metrics (numpy) ---------------------------------------------------------------------

def accuracy(labels, predictions) -> float:
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  return float(np.mean(labels == predictions))


def f1(labels, predictions, positive=1) -> float:
  """F1 of class ``positive``: 2 TP / (2 TP + FP + FN); 0 when there is none of it."""
  labels, predictions = np.asarray(labels) == positive, np.asarray(predictions) == positive
  tp = np.sum(labels & predictions)
  wrong = np.sum(labels != predictions)
  return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def matthews_corrcoef(labels, predictions) -> float:
  """Matthews correlation of two labelings, any number of classes (Gorodkin 2004):
  (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) with t, p the true / predicted counts per
  class, c the correct ones and s all; 0 when a labeling is constant."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  classes, both = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  k = len(classes)
  confusion = np.zeros((k, k), np.float64)
  np.add.at(confusion, (both[:len(labels)], both[len(labels):]), 1)
  return matthews_of_confusion(confusion)


def matthews_of_confusion(confusion) -> float:
  """Matthews correlation of a confusion matrix (rows true, columns predicted)."""
  confusion = np.asarray(confusion, np.float64)
  t, p = confusion.sum(axis=1), confusion.sum(axis=0)
  c, s = np.trace(confusion), confusion.sum()
  denominator = math.sqrt((s * s - p @ p) * (s * s - t @ t))
  return float((c * s - t @ p) / denominator) if denominator else 0.0


def confusion_metrics(confusion, names) -> dict:
  """``names`` (of accuracy, f1, matthews_corrcoef) from a confusion matrix summed over
  the eval split (rows true, columns predicted; F1 of class 1): what the trainer's eval
  step can add up over devices and batches."""
  confusion = np.asarray(confusion, np.float64)
  tp = confusion[1, 1] if len(confusion) > 1 else 0.0
  wrong = confusion[1].sum() + confusion[:, 1].sum() - 2 * tp if len(confusion) > 1 else 0.0
  found = {'accuracy': lambda: float(np.trace(confusion) / max(confusion.sum(), 1.0)),
           'f1': lambda: float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0,
           'matthews_corrcoef': lambda: matthews_of_confusion(confusion)}
  return {name: found[name]() for name in names if name in found}


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  return float(x @ y / math.sqrt((x @ x) * (y @ y)))


def ranks(x) -> np.ndarray:
  """1-based ranks, ties given their average rank."""
  x = np.asarray(x)
  order = np.argsort(x, kind='stable')
  ordered = x[order]
  starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
  ends = np.append(starts[1:], len(x))
  group_rank = (starts + ends + 1) / 2  # mean of the 1-based positions start+1 .. end
  out = np.empty(len(x), np.float64)
  out[order] = np.repeat(group_rank, ends - starts)
  return out


def spearman(x, y) -> float:
  return pearson(ranks(x), ranks(y))


METRICS = {'accuracy': accuracy, 'f1': f1, 'matthews_corrcoef': matthews_corrcoef,
           'pearson': pearson, 'spearman': spearman}


def metrics(name: str, labels, outputs, mask=None) -> dict:
  """The GLUE metrics of task ``name``: ``outputs`` are logits (B, classes), class ids
  (B,) or, for stsb, scores (B,) or (B, 1); rows with ``mask`` 0 are left out."""
  task = get_task(name)
  labels, outputs = np.asarray(labels), np.asarray(outputs)
  if task.num_classes == 1:
    outputs = outputs.reshape(len(labels))
  elif outputs.ndim == 2:
    outputs = outputs.argmax(axis=-1)
  if mask is not None:
    keep = np.asarray(mask) > 0
    labels, outputs = labels[keep], outputs[keep]
  return {metric: METRICS[metric](labels, outputs) for metric in task.metrics}


# -- loading -----------------------------------------------------------------------------

def _tfds():
  from mcj.data import tfds as tfds_data  # pylint: disable=g-import-not-at-top
  return tfds_data


def _first_lines(error) -> str:
  return _tfds()._first_lines(error)  # pylint: disable=protected-access


def _open_builder(data_config):
  """The prepared TFDS builder of the task; never downloads."""
  tfds_data = _tfds()
  tfds = tfds_data.tfds
  name = data_config.get('name')
  data_dir = tfds_data._data_dir(data_config)  # pylint: disable=protected-access
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except (tfds.core.DatasetNotFoundError, AssertionError, ValueError) as e:
    raise ConfigError(f'Cannot open TFDS dataset {name!r}: {_first_lines(e)}') from None
  if not builder.is_prepared():
    root = str(builder.data_dir_root)
    raise ConfigError(
        f'TFDS dataset {name!r} is not prepared in {root} (no {builder.data_dir}/'
        f'dataset_info.json). Prepare it with: tfds build {task_name(name)} '
        f'--data_dir={root}; select the directory with --config.data.data_dir=DIR or the '
        'TFDS_DATA_DIR environment variable.')
  return builder


def _splits(builder, data_config) -> tuple:
  task = get_task(data_config.get('name'))
  train = data_config.get('train_split', None) or 'train'
  eval_ = data_config.get('eval_split', None) or task.eval_split
  for split in (train, eval_):
    if split.startswith('test'):
      raise ConfigError(f'{task_name(data_config.get("name"))} split {split!r}: GLUE test '
                        'labels are hidden (-1); evaluate on a validation split.')
    try:
      builder.info.splits[split]
    except (KeyError, ValueError, AssertionError) as e:
      raise ConfigError(
          f'Split {split!r} of {builder.name}: {_first_lines(e)} Prepared '
          f'splits: {", ".join(sorted(builder.info.splits))}.') from None
  return train, eval_


def read_split(builder, split: str, task: Task) -> tuple:
  """(texts per feature, labels) of a whole split, in file order."""
  tfds = _tfds().tfds
  read_config = tfds.ReadConfig(options=_tfds()._options())  # pylint: disable=protected-access
  ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
  columns = {key: [] for key in task.features}
  labels = []
  for batch in tfds.as_numpy(ds.batch(READ_BATCH)):
    for key in task.features:
      columns[key].extend(value.decode('utf-8') for value in batch[key])
    labels.append(batch['label'])
  dtype = np.float32 if task.num_classes == 1 else np.int32
  labels = np.concatenate(labels).astype(dtype) if labels else np.zeros(0, dtype)
  return tuple(columns[key] for key in task.features), labels


def info_of(data_config, num_train: int, num_eval: int) -> data_lib.DatasetInfo:
  task = get_task(data_config.get('name'))
  length = text_lib.max_length(data_config, DEFAULT_MAX_LENGTH)
  return data_lib.DatasetInfo(num_classes=task.num_classes, image_shape=(length,),
                              num_train_examples=num_train, num_eval_examples=num_eval,
                              metrics=task.metrics)


class GlueDataset(data_lib.InMemoryDataset):
  """A prepared TFDS GLUE task as token ids (see the module docstring). ``tokenizer`` and
  ``vocab_size`` (the embedding rows a model needs) come with it."""

  @staticmethod
  def dataset_info(data_config) -> data_lib.DatasetInfo:
    builder = _open_builder(data_config)
    train, eval_ = _splits(builder, data_config)
    return info_of(data_config, builder.info.splits[train].num_examples,
                   builder.info.splits[eval_].num_examples)

  @staticmethod
  def model_input(data_config) -> tuple:
    """(num_classes, input shape) without reading anything."""
    task = get_task(data_config.get('name'))
    return task.num_classes, (text_lib.max_length(data_config, DEFAULT_MAX_LENGTH),)

  def __init__(self, data_config, *, seed, process_index=0, process_count=1):
    self.task = get_task(data_config.get('name'))
    builder = _open_builder(data_config)
    train, eval_ = _splits(builder, data_config)
    train_texts, self.y_train = read_split(builder, train, self.task)
    eval_texts, self.y_test = read_split(builder, eval_, self.task)
    if self.task.num_classes > 1:
      for split, labels in ((train, self.y_train), (eval_, self.y_test)):
        if len(labels) and (labels.min() < 0 or labels.max() >= self.task.num_classes):
          raise ConfigError(f'{builder.name} {split} has labels outside 0..'
                            f'{self.task.num_classes - 1} (hidden test labels are -1): '
                            'use a labelled split.')
    self.info = info_of(data_config, len(self.y_train), len(self.y_test))
    path = text_lib.vocab_file(data_config)
    if path:
      self.tokenizer = text_lib.WordPieceTokenizer.from_file(path)
    else:
      tokens = text_lib.train_vocab((t for column in train_texts for t in column),
                                    text_lib.vocab_size(data_config))
      self.tokenizer = text_lib.WordPieceTokenizer(tokens, name='learned vocab')
    self.vocab_size = self.tokenizer.vocab_size
    length = self.info.image_shape[0]
    self.x_train = self._encode(train_texts, length)
    self.x_test = self._encode(eval_texts, length)
    self._keep(seed, process_index, process_count)

  def _encode(self, columns, length):
    pairs = columns[1] if len(columns) > 1 else None
    return self.tokenizer.encode_batch(columns[0], pairs, max_length=length)
