"""BERT (Devlin et al. 2019) for sequence classification, at the google-research/bert
sizes, built from mcj's quantized layers.

The architecture is HuggingFace's ``BertModel`` (with its pooler) plus the
``BertForSequenceClassification`` head:
- embeddings: word + position + token type, LayerNorm (epsilon 1e-12), dropout;
- ``num_layers`` post-LN encoder layers: self-attention (Q, K, V and output dense layers,
  ``num_heads`` heads) -> dropout -> LayerNorm(x + attention); FFN dense to
  ``intermediate_size`` (4 x hidden) -> exact (erf) GELU -> dense back -> dropout ->
  LayerNorm(x + FFN);
- pooler: dense + tanh on the [CLS] (first) token; dropout; classifier dense.
Dropout is 0.1 everywhere (``dropout_rate``, ``attention_dropout_rate`` on the attention
probabilities), active at ``train=True`` with the rng ``'dropout'`` (the trainer passes
one). Init as HF: normal(0, 0.02) kernels and tables, zero biases.

One input array, like every mcj model: token ids of shape (batch, length), ints or floats
(the trainer and the tools trace a model with float32 zeros of its input shape; ids are
rounded and cast to int32). From the ids alone the model derives
- the attention mask: ``ids != pad_token_id`` (default 0, HF's uncased vocab's [PAD]);
  padded keys get probability 0, so padding never changes the other tokens' outputs;
- the token types, for the layout ``[CLS] a [SEP] b [SEP] [PAD]...``: 0 up to and including
  the first ``sep_token_id`` (default 102, [SEP] in HF's uncased vocab), 1 after it, 0 for
  padding (as BERT's tokenizers write them).

Quantization (all float by default, None):
- ``input_quantizer`` / ``kernel_quantizer`` / ``kernel_scale``: every dense layer of the
  encoder (Q, K, V, attention output, both FFN layers);
- ``query_key_quantizer``, ``attention_quantizer``, ``value_quantizer``: the operands of
  Q.K^T and A.V (see ``layers.QuantDotProductAttention``);
- ``embedding_quantizer``: the word embedding table (the position and token-type tables
  stay float, as in TernaryBERT / BinaryBERT, whose embedding bit width is the word
  embedding's);
- the pooler and the classifier stay float unless ``quantize_head=True``, as in those
  papers and BiT, which quantize the encoder and the embeddings only.

Param names map one to one onto HF's: ``embeddings/{word,position,token_type}/kernel``
(``embeddings.*_embeddings.weight``), ``embeddings/norm``, ``layer_{i}/attention/{query,
key,value,output}`` (``encoder.layer.{i}.attention.self.*``, ``attention.output.dense``),
``layer_{i}/attention_norm`` (``attention.output.LayerNorm``), ``layer_{i}/intermediate``,
``layer_{i}/output``, ``layer_{i}/output_norm`` (``output.LayerNorm``), ``pooler``,
``classifier``; dense kernels are (in, out), HF's weights transposed.
"""
import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from mcj.core import registry
from mcj.nn import layers

init_normal = nn.initializers.normal(0.02)


def attention_mask(ids, pad_token_id: int):
  """(batch, 1, 1, length) booleans: True at the keys that are not padding."""
  return (ids != pad_token_id)[:, None, None, :]


def token_types(ids, pad_token_id: int, sep_token_id: int):
  """Token-type ids of ``[CLS] a [SEP] b [SEP] [PAD]...``: 0 up to and including the first
  [SEP], 1 after it, 0 at padding."""
  is_sep = (ids == sep_token_id).astype(jnp.int32)
  after_first_sep = (jnp.cumsum(is_sep, axis=-1) - is_sep) > 0
  return (after_first_sep & (ids != pad_token_id)).astype(jnp.int32)


class SelfAttention(nn.Module):
  """Multi-head self-attention: Q, K, V dense layers, the quantized products, the output
  dense layer (``dense`` and ``products``: the layers with their options bound)."""
  num_heads: int
  dense: Any
  products: Any

  @nn.compact
  def __call__(self, x, mask, train):
    hidden = x.shape[-1]
    if hidden % self.num_heads:
      raise ValueError(f'hidden size {hidden} does not split into {self.num_heads} heads.')
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, hidden // self.num_heads)
    q = split(self.dense(hidden, name='query')(x))
    k = split(self.dense(hidden, name='key')(x))
    v = split(self.dense(hidden, name='value')(x))
    out = self.products(name='dot_product')(q, k, v, mask, train=train)
    return self.dense(hidden, name='output')(out.reshape(x.shape))


class Embeddings(nn.Module):
  """Word + position + token-type embeddings (types derived from the ids), LayerNorm."""
  vocab_size: int
  max_positions: int
  type_vocab_size: int
  features: int
  pad_token_id: int
  sep_token_id: int
  epsilon: float
  embedding_quantizer: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    length = ids.shape[1]
    if length > self.max_positions:
      raise ValueError(f'sequence length {length} is longer than max_position_embeddings '
                       f'{self.max_positions}.')
    embed = functools.partial(layers.QuantEmbed, features=self.features,
                              embedding_init=init_normal, dtype=self.dtype)
    x = (embed(self.vocab_size, embedding_quantizer=self.embedding_quantizer,
               name='word')(ids)
         + embed(self.max_positions, name='position')(jnp.arange(length)[None])
         + embed(self.type_vocab_size, name='token_type')(
             token_types(ids, self.pad_token_id, self.sep_token_id)))
    return nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype, use_fast_variance=False,
                        name='norm')(x)


class BertLayer(nn.Module):
  """A post-LN encoder layer: LN(x + Attention(x)), then LN(x + FFN(x))."""
  num_heads: int
  intermediate_size: int
  dropout_rate: float
  epsilon: float
  dense: Any
  products: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train):
    norm = functools.partial(nn.LayerNorm, epsilon=self.epsilon, dtype=self.dtype,
                             use_fast_variance=False)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    y = SelfAttention(self.num_heads, self.dense, self.products, name='attention')(
        x, mask, train)
    x = norm(name='attention_norm')(x + drop(y))
    y = self.dense(self.intermediate_size, name='intermediate')(x)
    y = nn.gelu(y, approximate=False)
    y = self.dense(x.shape[-1], name='output')(y)
    return norm(name='output_norm')(x + drop(y))


class Bert(nn.Module):
  """BERT with a classification head on the pooled [CLS] output; see the module docstring.

  ``input_quantizer=None, kernel_quantizer=None`` (and the attention quantizers None) is
  the float model.
  """
  num_classes: int = 2
  num_layers: int = 12
  hidden_size: int = 768
  num_heads: int = 12
  intermediate_size: int | None = None  # None: 4 x hidden_size
  vocab_size: int = 30522
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  pad_token_id: int = 0
  sep_token_id: int = 102
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-12
  input_quantizer: Any = None
  kernel_quantizer: Any = None
  kernel_scale: str = 'none'
  query_key_quantizer: Any = None
  attention_quantizer: Any = None
  value_quantizer: Any = None
  embedding_quantizer: Any = None
  quantize_head: bool = False
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm: kept for the trainer's common options

  input_is_tokens: ClassVar[bool] = True  # tools build (batch, length) inputs for it

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    ids = jnp.asarray(tokens)
    if ids.ndim != 2:
      raise ValueError(f'BERT takes token ids of shape (batch, length), got {ids.shape}.')
    if jnp.issubdtype(ids.dtype, jnp.floating):
      ids = jnp.round(ids)
    ids = ids.astype(jnp.int32)
    dense = functools.partial(layers.QuantDense, kernel_init=init_normal, dtype=self.dtype)
    encoder_dense = functools.partial(
        dense, input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
        kernel_scale=self.kernel_scale)
    head_dense = encoder_dense if self.quantize_head else dense
    products = functools.partial(
        layers.QuantDotProductAttention, query_key_quantizer=self.query_key_quantizer,
        attention_quantizer=self.attention_quantizer, value_quantizer=self.value_quantizer,
        dropout_rate=self.attention_dropout_rate, dtype=self.dtype)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)

    x = Embeddings(self.vocab_size, self.max_position_embeddings, self.type_vocab_size,
                   self.hidden_size, self.pad_token_id, self.sep_token_id,
                   self.layer_norm_epsilon, self.embedding_quantizer, self.dtype,
                   name='embeddings')(ids)
    x = drop(x)
    mask = attention_mask(ids, self.pad_token_id)
    for i in range(self.num_layers):
      x = BertLayer(self.num_heads, self.intermediate_size or 4 * self.hidden_size,
                    self.dropout_rate, self.layer_norm_epsilon, encoder_dense, products,
                    self.dtype, name=f'layer_{i}')(x, mask, train)
    pooled = jnp.tanh(head_dense(self.hidden_size, name='pooler')(x[:, 0]))
    logits = head_dense(self.num_classes, name='classifier')(drop(pooled))
    return logits.astype(jnp.float32)


def _bert(num_layers, hidden_size, num_heads):
  return functools.partial(Bert, num_layers=num_layers, hidden_size=hidden_size,
                           num_heads=num_heads)


# google-research/bert's released sizes (BERT-Tiny .. BERT-Base; Turc et al. 2019).
MODELS = {
    'bert_tiny': _bert(2, 128, 2),
    'bert_mini': _bert(4, 256, 4),
    'bert_small': _bert(4, 512, 8),
    'bert_medium': _bert(8, 512, 8),
    'bert_base': _bert(12, 768, 12),
}
registry.add_all('model', MODELS)
