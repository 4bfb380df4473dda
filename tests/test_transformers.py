"""BERT and ViT: published param counts, a numpy forward of each (float and quantized),
the mask and token types BERT derives from its ids, attention counting in the summary,
and a train step through the trainer (the only test here marked slow)."""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from mcj import summary as summary_cli
from mcj.analysis import summary
from mcj.core import parallel
from mcj.models import get_model
from mcj.models.transformers import bert
from mcj.nn import layers
from mcj.train import trainer
from mcj.train.schema import merge_config

from tests.helpers import tiny

# Params without the classification head: HF BertModel (with its pooler).
BERT = {'bert_tiny': 4_385_920, 'bert_mini': 11_170_560, 'bert_small': 28_763_648,
        'bert_medium': 41_373_184, 'bert_base': 109_482_240}
# timm vit_*_patch16_224 with the 1000-class head.
VIT = {'vit_tiny': 5_717_416, 'vit_small': 22_050_664, 'vit_base': 86_567_656}
# The small-input variants: (input shape, width); 12 blocks, 10 classes.
VIT_SMALL_INPUTS = {'vit_tiny_patch4': ((28, 28, 1), 4), 'vit_tiny_patch2': ((8, 8, 1), 2)}

BINARY_ATTENTION = dict(query_key_quantizer='ste_sign', attention_quantizer='dorefa(k_bit=1)',
                        value_quantizer='ste_sign')


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _shapes(model, x):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _random_params(model, x, seed=0):
  """Params drawn with numpy (large enough that every op shows in the logits)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, s: (1.0 * (p[-1].key == 'scale') + rng.normal(0, 0.3, s.shape)).astype(
          np.float32), _shapes(model, x)['params'])


# ------------------------------------------------------------------ param counts

@pytest.mark.parametrize('name,expected', list(BERT.items()))
def test_bert_param_counts(name, expected):
  params = _shapes(get_model(name, 2), jnp.zeros((1, 8)))['params']
  assert _count(params) - _count(params['classifier']) == expected
  assert params['classifier']['kernel'].shape == (params['pooler']['kernel'].shape[0], 2)


@pytest.mark.parametrize('name,expected', list(VIT.items()))
def test_vit_param_counts(name, expected):
  params = _shapes(get_model(name, 1000), jnp.zeros((1, 224, 224, 3)))['params']
  assert _count(params) == expected
  assert params['pos_embed'].shape[1] == 1 + 14 * 14


@pytest.mark.parametrize('name', list(VIT_SMALL_INPUTS))
def test_small_input_vits_size_the_position_embedding_from_the_input(name):
  shape, patch = VIT_SMALL_INPUTS[name]
  params = _shapes(get_model(name, 10), jnp.zeros((1, *shape)))['params']
  tokens = 1 + (shape[0] // patch) * (shape[1] // patch)
  d, c = 192, shape[2]
  block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
  expected = (patch * patch * c * d + d) + d + tokens * d + 12 * block + 2 * d + (d * 10 + 10)
  assert params['pos_embed'].shape == (1, tokens, d)
  assert _count(params) == expected


@pytest.mark.parametrize('name,x', [('bert_tiny', jnp.zeros((2, 8))),
                                    ('vit_tiny_patch2', jnp.zeros((2, 8, 8, 1)))])
def test_bfloat16_compute_keeps_float32_params_and_logits(name, x):
  model = get_model(name, 4, dtype=jnp.bfloat16, **BINARY_ATTENTION)
  variables = _shapes(model, x)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  out = jax.eval_shape(lambda v: model.apply(v, x, train=True,
                                             rngs={'dropout': jax.random.key(0)}), variables)
  assert out.shape == (2, 4) and out.dtype == jnp.float32


def test_vit_refuses_sizes_that_are_not_patch_multiples():
  with pytest.raises(ValueError, match='multiple of patch_size 4'):
    _shapes(get_model('vit_tiny_patch4', 10), jnp.zeros((1, 30, 30, 1)))


# ------------------------------------------------------------------ numpy reference forwards

def _sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def _step01(p):  # dorefa(k_bit=1) on [0, 1]: round half to even
  return np.round(np.clip(p, 0, 1))


def _layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _gelu(x):
  """Exact GELU, x Phi(x), as the model's float32 one: with erfc (1 + erf(x / sqrt 2)
  cancels to 0 below about -8 in float64, where float32 GELU is still a tiny negative number),
  and 0 below float32's smallest normal number (about x < -13), where float32 GELU is -0.0,
  which a sign maps to +1."""
  y = 0.5 * x * special.erfc(-x / math.sqrt(2))
  return np.where(np.abs(y) < np.finfo(np.float32).tiny, 0.0, y)


def _dense(x, p, q=None):
  """x @ W + b, with ``q['input']`` / ``q['kernel']`` applied to x / W."""
  q = q or {}
  kernel = np.asarray(p['kernel'], np.float64)
  x = q['input'](x) if q.get('input') else x
  kernel = q['kernel'](kernel) if q.get('kernel') else kernel
  return x @ kernel + p['bias']


def _attention(q, k, v, heads, mask, quantizers):
  """(batch, length, hidden) q, k, v -> (batch, length, hidden); mask (batch, length)."""
  qk, a, vq = (quantizers.get(key) for key in ('query_key', 'attention', 'value'))
  b, n, d = q.shape
  split = lambda t: t.reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3)
  q, k, v = split(q), split(k), split(v)
  if qk:
    q, k = qk(q), qk(k)
  scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)
  if mask is not None:
    scores = np.where(mask[:, None, None, :], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs = probs / probs.sum(-1, keepdims=True)
  if a:
    probs = a(probs)
  if vq:
    v = vq(v)
  return (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)


def _numpy_bert(p, ids, heads, q):
  """HF BertForSequenceClassification's forward (eval), in float64, with the quantizers
  ``q`` (numpy functions by option name, without '_quantizer')."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  dq = q
  is_sep = (ids == 102).astype(int)
  types = (((np.cumsum(is_sep, -1) - is_sep) > 0) & (ids != 0)).astype(int)
  e = p['embeddings']
  word = q['embedding'](e['word']['kernel']) if q.get('embedding') else e['word']['kernel']
  x = word[ids] + e['position']['kernel'][:ids.shape[1]] + e['token_type']['kernel'][types]
  x = _layer_norm(x, e['norm'], 1e-12)
  n = 0
  while f'layer_{n}' in p:
    lp = p[f'layer_{n}']
    att = lp['attention']
    ctx = _attention(_dense(x, att['query'], dq), _dense(x, att['key'], dq),
                     _dense(x, att['value'], dq), heads, ids != 0, q)
    x = _layer_norm(x + _dense(ctx, att['output'], dq), lp['attention_norm'], 1e-12)
    y = _dense(_gelu(_dense(x, lp['intermediate'], dq)), lp['output'], dq)
    x = _layer_norm(x + y, lp['output_norm'], 1e-12)
    n += 1
  pooled = np.tanh(_dense(x[:, 0], p['pooler']))
  return _dense(pooled, p['classifier'])


def _numpy_vit(p, images, heads, patch, q):
  """timm VisionTransformer's forward (eval), in float64, with the quantizers ``q``."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  dq = q
  b, h, w, c = images.shape
  patches = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)
  kernel = p['patch_embed']['kernel']
  x = patches @ kernel.reshape(-1, kernel.shape[-1]) + p['patch_embed']['bias']
  x = np.concatenate([np.broadcast_to(p['cls_token'], (b, 1, x.shape[-1])), x], 1)
  x = x + p['pos_embed']
  n = 0
  while f'block_{n}' in p:
    bp = p[f'block_{n}']
    y = _dense(_layer_norm(x, bp['norm1'], 1e-6), bp['attn']['qkv'], dq)
    ctx = _attention(*np.split(y, 3, axis=-1), heads, None, dq)
    x = x + _dense(ctx, bp['attn']['proj'], dq)
    y = _dense(_layer_norm(x, bp['norm2'], 1e-6), bp['mlp']['fc1'], dq)
    x = x + _dense(_gelu(y), bp['mlp']['fc2'], dq)
    n += 1
  return _dense(_layer_norm(x, p['norm'], 1e-6)[:, 0], p['head'])


IDS = np.array([[101, 5, 7, 9, 102, 11, 13, 102, 0, 0],    # a pair, padded
                [101, 20, 30, 102, 0, 0, 0, 0, 0, 0],      # one sentence, padded
                [101, 3, 4, 5, 6, 102, 8, 9, 10, 102]])    # a pair, no padding
TINY_BERT = dict(num_layers=2, hidden_size=16, num_heads=2, vocab_size=120,
                 max_position_embeddings=12)
QUANTIZED = dict(input_quantizer='ste_sign', kernel_quantizer='ste_sign', **BINARY_ATTENTION)
CASES = {'float': {}, 'dense': dict(input_quantizer='ste_sign', kernel_quantizer='ste_sign'),
         'attention': BINARY_ATTENTION, 'binary': QUANTIZED}
NUMPY_QUANTIZERS = {'ste_sign': _sign, 'dorefa(k_bit=1)': _step01}


def _numpy_quantizers(options):
  return {k.removesuffix('_quantizer'): NUMPY_QUANTIZERS[v] for k, v in options.items()}


@pytest.mark.parametrize('case', [*CASES, 'embedding'])
def test_bert_matches_a_numpy_forward(case):
  options = CASES.get(case, {'embedding_quantizer': 'ste_sign'})
  model = get_model('bert_tiny', 3, **TINY_BERT, **options)
  params = _random_params(model, jnp.zeros(IDS.shape))
  got = model.apply({'params': params}, IDS.astype(np.float32), train=False)
  assert got.dtype == jnp.float32 and got.shape == (3, 3)
  want = _numpy_bert(params, IDS, 2, _numpy_quantizers(options))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Integer ids give the same logits as float ones (the form tools trace with).
  np.testing.assert_array_equal(got, model.apply({'params': params}, IDS, train=False))


@pytest.mark.parametrize('case', list(CASES))
def test_vit_matches_a_numpy_forward(case):
  model = get_model('vit_tiny_patch2', 5, num_layers=2, hidden_size=24, num_heads=3,
                    **CASES[case])
  images = np.random.default_rng(1).normal(size=(2, 8, 8, 1)).astype(np.float32)
  params = _random_params(model, jnp.zeros(images.shape))
  got = model.apply({'params': params}, images, train=False)
  assert got.dtype == jnp.float32 and got.shape == (2, 5)
  want = _numpy_vit(params, images, 3, 2, _numpy_quantizers(CASES[case]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_quantizers_are_applied_where_the_options_say():
  """Binary attention operands change the logits; the float ends stay float."""
  float_model = get_model('bert_tiny', 3, **TINY_BERT)
  params = _random_params(float_model, jnp.zeros(IDS.shape))
  logits = {}
  for key, options in {'float': {}, 'qk': {'query_key_quantizer': 'ste_sign'},
                       'attention': {'attention_quantizer': 'dorefa(k_bit=1)'},
                       'value': {'value_quantizer': 'ste_sign'}}.items():
    logits[key] = np.asarray(float_model.clone(**options).apply({'params': params}, IDS))
  for key in ('qk', 'attention', 'value'):
    assert np.abs(logits[key] - logits['float']).max() > 1e-3, key
  s = summary.summarize(float_model.clone(**QUANTIZED), (10,))
  precision = {layer['name']: layer['params_by_bits'] for layer in s['layers']}
  assert precision['layer_0/attention/query'] == {1: 16 * 16, 32: 16}
  assert precision['pooler'] == {32: 16 * 16 + 16} and precision['classifier'] == {32: 51}
  assert precision['embeddings/word'] == {32: 120 * 16}
  # A learned attention quantizer is a child of the products.
  lsq = _shapes(float_model.clone(attention_quantizer='lsq(bits=1, signed=False)'),
                jnp.zeros(IDS.shape))['params']
  assert lsq['layer_0']['attention']['dot_product']['LSQ_0']['step'].shape == ()


# ------------------------------------------------------------------ BERT's single input

def test_mask_and_token_types_from_the_ids():
  ids = jnp.asarray(IDS)
  np.testing.assert_array_equal(bert.token_types(ids, 0, 102), [
      [0, 0, 0, 0, 0, 1, 1, 1, 0, 0],
      [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
  mask = bert.attention_mask(ids, 0)
  assert mask.shape == (3, 1, 1, 10)
  np.testing.assert_array_equal(mask[:, 0, 0], IDS != 0)


@pytest.mark.slow  # compiles a BERT / ViT: the full tier
@pytest.mark.parametrize('quantized', [False, True], ids=['float', 'binary'])
def test_padding_does_not_change_the_cls_output(quantized):
  model = get_model('bert_tiny', 3, **TINY_BERT, **(QUANTIZED if quantized else {}))
  params = _random_params(model, jnp.zeros((1, 10)), seed=2)
  short = np.array([[101, 5, 7, 9, 102, 11, 13, 102]])
  padded = np.concatenate([short, np.zeros((1, 4), int)], 1)
  np.testing.assert_allclose(model.apply({'params': params}, padded),
                             model.apply({'params': params}, short), rtol=1e-6, atol=1e-6)


def test_bert_refuses_sequences_longer_than_its_positions():
  with pytest.raises(ValueError, match='longer than max_position_embeddings 12'):
    _shapes(get_model('bert_tiny', 2, **TINY_BERT), jnp.zeros((1, 13)))


# ------------------------------------------------------------------ attention in the summary

def test_summary_counts_binary_attention_products():
  """Q.K^T and A.V: L^2 d MACs each per example and layer, 1-bit x 1-bit (BOPs)."""
  length, d, num_layers = 16, 32, 2
  model = get_model('bert_tiny', 2, num_layers=num_layers, hidden_size=d, num_heads=2,
                    vocab_size=50, **BINARY_ATTENTION)
  s = summary.summarize(model, (length,))
  rows = {layer['name']: layer for layer in s['layers']}
  for i in range(num_layers):
    row = rows[f'layer_{i}/attention/dot_product']
    assert row['type'] == 'QuantDotProductAttention' and row['params'] == 0
    assert row['macs_by_precision'] == {1: 2 * length ** 2 * d}
    assert row['input_precision'] == 1
  assert s['macs_by_precision'][1] == num_layers * 2 * length ** 2 * d  # the dense layers: float
  assert s['bops'] == s['macs_by_precision'][1]
  assert s['macs'] == sum(layer['macs'] for layer in s['layers'])
  # A float V: A.V counts at 32 bits, Q.K^T stays binary.
  half = summary.summarize(model.clone(value_quantizer=None), (length,))
  row = next(l for l in half['layers'] if l['name'] == 'layer_0/attention/dot_product')
  assert row['macs_by_precision'] == {1: length ** 2 * d, 32: length ** 2 * d}


def test_summary_cli_takes_a_sequence_length(capsys):
  assert summary_cli.main(['--model', 'bert_tiny', '--seq_len', '16', '--num_classes', '2',
                           '--json']) == 0
  s = json.loads(capsys.readouterr().out)
  assert s['input_shape'] == [16] and s['params'] == 4_385_920 + 128 * 2 + 2
  attention = [l['macs'] for l in s['layers'] if l['name'].endswith('dot_product')]
  assert attention == [2 * 16 ** 2 * 128] * 2
  dense = 2 * 16 * (4 * 128 * 128 + 2 * 128 * 512) + 128 * 128 + 128 * 2
  assert s['macs'] == sum(attention) + dense
  with pytest.raises(SystemExit):
    summary_cli.main(['--model', 'resnet20', '--seq_len', '16'])


def test_vit_summary_counts_attention_over_every_token():
  model = get_model('vit_tiny_patch2', 10, num_layers=1, hidden_size=16, num_heads=2)
  s = summary.summarize(model, (8, 8, 1))
  tokens, d = 17, 16
  row = next(l for l in s['layers'] if l['name'] == 'block_0/attn/dot_product')
  assert row['macs'] == 2 * tokens ** 2 * d
  patch = 16 * 4 * d
  block = tokens * (d * 3 * d + d * d + 2 * d * 4 * d)
  assert s['macs'] == patch + block + row['macs'] + d * 10


# ------------------------------------------------------------------ training

@pytest.mark.slow
def test_one_train_step_through_the_trainer():
  """A binary BERT with dropout on a batch of float token ids, through the trainer's
  data-parallel train step (4 devices): its dropout rng reaches the model, gradients pass
  every quantizer, and the params move (no weight decay: only through gradients)."""
  config = tiny('steps=2,batch=8', **{'optimizer.weight_decay': 0.0,
                                      'schedule.warmup_steps': 0})
  exp = trainer.build(merge_config(config), say=lambda *a: None)
  model = get_model('bert_tiny', exp.info.num_classes, **TINY_BERT, **QUANTIZED,
                    bn_axis_name='data')
  exp = dataclasses.replace(exp, model=model,
                            info=dataclasses.replace(exp.info, image_shape=(10,)))
  params = _random_params(model, jnp.zeros((1, 10)))  # numpy: no init to compile
  state = jax.device_put({'step': jnp.zeros((), jnp.int32), 'params': params,
                          'batch_stats': {}, 'opt_state': exp.tx.init(params)},
                         parallel.replicated(exp.mesh))
  train_step, _ = trainer.exp_steps(exp)
  batch = {'image': np.tile(IDS, (3, 1))[:8].astype(np.float32),
           'label': np.arange(8, dtype=np.int32) % exp.info.num_classes}
  new, metrics = train_step(state, parallel.shard_batch(exp.mesh, batch), [])
  metrics = jax.device_get(metrics)
  assert np.isfinite(metrics['train/loss']) and 0.0 <= metrics['train/accuracy'] <= 1.0
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), params,
                         jax.device_get(new['params']))
  # Unseen words and positions past the sequence get no gradient; everything else does.
  for key in ('layer_0', 'layer_1', 'pooler', 'classifier'):
    assert all(jax.tree.leaves(changed[key])), changed[key]
  variables = {'params': params}
  dropped = model.apply(variables, IDS, train=True, rngs={'dropout': jax.random.key(0)})
  assert np.abs(dropped - model.apply(variables, IDS, train=False)).max() > 1e-3


def test_layers_helpers_compute_what_they_say():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 6, 3, 4))
  got = layers.quant_matmul('...qhd,...khd->...hqk', a, b, 'ste_sign', None)
  np.testing.assert_allclose(got, np.einsum('bqhd,bkhd->bhqk', _sign(a), b), rtol=1e-5,
                             atol=1e-5)
  table = rng.normal(size=(7, 3)).astype(np.float32)
  embed = layers.QuantEmbed(7, 3, embedding_quantizer='ste_sign')
  out = embed.apply({'params': {'kernel': table}}, jnp.array([[0, 6, 6]]))
  np.testing.assert_array_equal(out, _sign(table)[[[0, 6, 6]]])
