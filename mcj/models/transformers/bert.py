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
  papers, which quantize the encoder and the embeddings only; ``quantize_pooler`` (None:
  as ``quantize_head``) sets the pooler apart from the classifier: BiT's and BiBERT's codes
  quantize the pooler dense layer (``QuantizeLinear``) and keep the classifier float;
- ``ffn_input_quantizer``: the input quantizer of the FFN's second dense layer
  (``layer_{i}/output``, after the activation); None: ``input_quantizer``. BiT quantizes
  that input with a non-negative quantizer (``bit_elastic(signed=False, ...)``: its input
  is a ReLU's output);
- ``attention_score_quantizer``: attention weights from the scores instead of the softmax
  (``layers.QuantDotProductAttention.score_quantizer``): BiBERT's Bi-Attention with
  ``'bibert_bool'``, {0, 1} weights ``bool(Q K^T / sqrt(d))`` (masked keys 0).

``hidden_act``: the FFN's activation, ``'gelu'`` (exact, erf; BERT's) or ``'relu'`` (BiT's
binary students, whose FFN output input is then non-negative).

Taps for distillation (``mcj.compress.distill.features.transformer_taps``): when the
collection ``'intermediates'`` is mutable (``features.apply_with_features`` makes it so),
the model sows ``hidden_states``, the embedding output (after its dropout: what layer 0
reads) and each layer's output, (batch, length, hidden) each, and every layer's attention
products sow their Q, K, V before their quantizers and the pre-softmax (scaled, masked)
scores (see ``layers.QuantDotProductAttention``): TinyBERT's, BiT's and BiBERT's
distillation read them. Nothing is sown at ``init`` or in a plain ``apply``.

Param names map one to one onto HF's: ``embeddings/{word,position,token_type}/kernel``
(``embeddings.*_embeddings.weight``), ``embeddings/norm``, ``layer_{i}/attention/{query,
key,value,output}`` (``encoder.layer.{i}.attention.self.*``, ``attention.output.dense``),
``layer_{i}/attention_norm`` (``attention.output.LayerNorm``), ``layer_{i}/intermediate``,
``layer_{i}/output``, ``layer_{i}/output_norm`` (``output.LayerNorm``), ``pooler``,
``classifier``; dense kernels are (in, out), HF's weights transposed.

Attention heads (``mcj.compress.prune.heads`` prunes them):
- ``heads_per_layer`` (None: ``num_heads`` in every layer): the number of heads of each
  layer, e.g. a model rebuilt after head pruning. ``head_dim`` stays ``hidden_size //
  num_heads``, so a layer with h heads has Q, K, V of ``h * head_dim`` outputs and an
  attention output dense layer of ``h * head_dim`` inputs; its heads are the kept heads in
  their original order (HF's ``prune_heads`` slices the same rows and columns). A layer
  with 0 heads has no Q, K, V and no attention products: the attention adds only the output
  bias ``layer_{i}/attention/output/bias`` (the only param left under ``output``) before
  ``attention_norm``. That is what the attention computes when every head's output is zero,
  and what HF keeps: its ``prune_heads`` leaves zero-size Q, K, V and output kernels and the
  output bias, so LayerNorm(x + bias) there too.
- ``head_mask`` (a call argument, default None): floats of shape (num_layers, num_heads), or
  (batch, num_layers, num_heads) for one mask per example, that multiply each head's output
  Att_h(x) = softmax(q k^T / sqrt(d)) v before the attention output layer (Michel et al.
  2019's xi_h; HF multiplies the attention probabilities per head, which is the same
  product). Layer i reads the first ``heads_per_layer[i]`` columns of row i. A 0 there is
  the head removed exactly where the attention output layer is float; a quantized one maps
  the 0 input to q(0) (sign(0) = +1) and scales its kernel over every input row (``xnor``),
  so the rebuilt model only approximates the masked one.
"""
import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mcj.core import registry
from mcj.core import tree as tree_lib
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


class OutputBias(nn.Module):
  """The attention output layer of a layer without heads: its bias alone."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    return jnp.broadcast_to(bias.astype(self.dtype), x.shape[:-1] + (self.features,))


def scale_heads(out, head_mask):
  """``out`` (batch, length, heads, head_dim) with head h multiplied by ``head_mask[..., h]``
  (shape (heads,) or (batch, heads)); None leaves it unchanged."""
  if head_mask is None:
    return out
  return out * jnp.asarray(head_mask)[..., None, :, None].astype(out.dtype)


def check_head_mask(head_mask, batch: int, num_layers: int, num_heads: int):
  """``head_mask`` as an array of shape (num_layers, num_heads) or (batch, num_layers,
  num_heads); a ValueError otherwise."""
  head_mask = jnp.asarray(head_mask)
  if head_mask.shape not in ((num_layers, num_heads), (batch, num_layers, num_heads)):
    raise ValueError(f'head_mask must have shape (num_layers, num_heads) = ({num_layers}, '
                     f'{num_heads}) or (batch, num_layers, num_heads) = ({batch}, '
                     f'{num_layers}, {num_heads}), got {head_mask.shape}.')
  return head_mask


def layer_heads(heads_per_layer, num_layers: int, num_heads: int) -> tuple[int, ...]:
  """Each layer's number of heads: ``heads_per_layer``, or ``num_heads`` everywhere (None);
  a ValueError for a wrong length or a count outside [0, num_heads]."""
  if heads_per_layer is None:
    return (num_heads,) * num_layers
  heads = tuple(int(h) for h in heads_per_layer)
  if len(heads) != num_layers or any(not 0 <= h <= num_heads for h in heads):
    raise ValueError(f'heads_per_layer must hold {num_layers} counts in [0, {num_heads}] (one '
                     f'per layer), got {tuple(heads_per_layer)}.')
  return heads


def head_columns(kept, head_dim: int, groups: int = 1, heads: int = 0):
  """The feature indices of the heads ``kept`` in a layer whose features are ordered
  (groups, heads, head_dim) (``groups`` 3 and ``heads`` the layer's count: a fused QKV)."""
  kept = np.asarray(kept, int)
  return np.concatenate([(g * heads + kept[:, None]) * head_dim + np.arange(head_dim)
                         for g in range(groups)], axis=None).astype(int)


def shrink_heads(model, variables, keep, attention_of, without_heads, slice_heads):
  """What a model's ``shrink_heads`` does, for BERT and ViT alike: ``(smaller model, its
  variables)`` without the heads where ``keep`` (booleans (num_layers, num_heads); layer i
  reads its first ``model.layer_heads()[i]`` columns) is False. ``attention_of(i)`` is the
  (parent, name) of layer i's attention params, ``without_heads(attention)`` what is left
  of them with no head (the output bias), ``slice_heads(attention, kept, count, head_dim)``
  them with only the ``kept`` of ``count`` heads."""
  heads, head_dim = model.layer_heads(), model.hidden_size // model.num_heads
  keep = np.asarray(keep, bool)
  if keep.shape != (model.num_layers, model.num_heads):
    raise ValueError(f'the head mask must have shape (num_layers, num_heads) = '
                     f'({model.num_layers}, {model.num_heads}), got {keep.shape}.')
  params = tree_lib.numpy_tree(variables['params'])
  new_heads = []
  for i, count in enumerate(heads):
    kept = np.flatnonzero(keep[i, :count])
    new_heads.append(len(kept))
    if count == 0:
      continue
    parent, name = attention_of(i)
    attention = params[parent][name]
    params[parent][name] = (slice_heads(attention, kept, count, head_dim) if len(kept)
                            else without_heads(attention))
  return model.clone(heads_per_layer=tuple(new_heads)), {**variables, 'params': params}


def _slice_bert_heads(attention, kept, count, head_dim):
  columns = head_columns(kept, head_dim)
  for name in ('query', 'key', 'value'):
    attention[name]['kernel'] = attention[name]['kernel'][:, columns]
    attention[name]['bias'] = attention[name]['bias'][columns]
  attention['output']['kernel'] = attention['output']['kernel'][columns, :]
  return attention


class SelfAttention(nn.Module):
  """Multi-head self-attention: Q, K, V dense layers, the quantized products, the output
  dense layer (``dense`` and ``products``: the layers with their options bound), with
  ``num_heads`` heads of ``head_dim`` features (0 heads: the output bias only)."""
  num_heads: int
  dense: Any
  products: Any
  head_dim: int | None = None  # None: hidden size // num_heads
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train, head_mask=None):
    hidden = x.shape[-1]
    if self.num_heads and self.head_dim is None and hidden % self.num_heads:
      raise ValueError(f'hidden size {hidden} does not split into {self.num_heads} heads.')
    if self.num_heads == 0:
      return OutputBias(hidden, self.dtype, name='output')(x)
    head_dim = self.head_dim or hidden // self.num_heads
    width = self.num_heads * head_dim
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)
    q = split(self.dense(width, name='query')(x))
    k = split(self.dense(width, name='key')(x))
    v = split(self.dense(width, name='value')(x))
    out = scale_heads(self.products(name='dot_product')(q, k, v, mask, train=train), head_mask)
    return self.dense(hidden, name='output')(out.reshape(*x.shape[:-1], width))


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


ACTIVATIONS = {'gelu': functools.partial(nn.gelu, approximate=False), 'relu': nn.relu}


def activation(name: str):
  """The FFN activation ``name`` (``ACTIVATIONS``); a ValueError for any other."""
  if name not in ACTIVATIONS:
    raise ValueError(f'hidden_act must be one of {", ".join(ACTIVATIONS)}, got {name!r}.')
  return ACTIVATIONS[name]


class BertLayer(nn.Module):
  """A post-LN encoder layer: LN(x + Attention(x)), then LN(x + FFN(x)); the FFN's second
  dense layer is ``output_dense`` (None: ``dense``), its activation ``hidden_act``."""
  num_heads: int
  intermediate_size: int
  dropout_rate: float
  epsilon: float
  dense: Any
  products: Any
  dtype: Any = jnp.float32
  head_dim: int | None = None  # None: hidden size // num_heads
  output_dense: Any = None
  hidden_act: str = 'gelu'

  @nn.compact
  def __call__(self, x, mask, train, head_mask=None):
    norm = functools.partial(nn.LayerNorm, epsilon=self.epsilon, dtype=self.dtype,
                             use_fast_variance=False)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    y = SelfAttention(self.num_heads, self.dense, self.products, self.head_dim, self.dtype,
                      name='attention')(x, mask, train, head_mask)
    x = norm(name='attention_norm')(x + drop(y))
    y = self.dense(self.intermediate_size, name='intermediate')(x)
    y = activation(self.hidden_act)(y)
    y = (self.output_dense or self.dense)(x.shape[-1], name='output')(y)
    return norm(name='output_norm')(x + drop(y))


class Bert(nn.Module):
  """BERT with a classification head on the pooled [CLS] output; see the module docstring.

  ``input_quantizer=None, kernel_quantizer=None`` (and the attention quantizers None) is
  the float model. ``heads_per_layer`` and the call's ``head_mask``, ``hidden_act``,
  ``ffn_input_quantizer``, ``attention_score_quantizer``, ``quantize_pooler`` and the
  distillation taps: see the module docstring.
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
  heads_per_layer: Any = None  # None: num_heads in every layer; else one count per layer
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm: kept for the trainer's common options
  hidden_act: str = 'gelu'       # or 'relu' (BiT's students)
  ffn_input_quantizer: Any = None  # layer_{i}/output's input; None: input_quantizer
  attention_score_quantizer: Any = None  # weights from the scores, no softmax (BiBERT)
  quantize_pooler: bool | None = None  # None: quantize_head

  input_is_tokens: ClassVar[bool] = True  # tools build (batch, length) inputs for it

  def layer_heads(self) -> tuple[int, ...]:
    """Each encoder layer's number of attention heads."""
    return layer_heads(self.heads_per_layer, self.num_layers, self.num_heads)

  def shrink_heads(self, variables, keep):
    """``(smaller model, its variables)`` without the heads where ``keep`` (booleans of
    shape (num_layers, num_heads); layer i reads its first ``layer_heads()[i]`` columns) is
    False: Q, K, V lose those heads' output columns, the attention output those rows. Its
    outputs equal this model's with ``head_mask=keep``."""
    return shrink_heads(self, variables, keep, lambda i: (f'layer_{i}', 'attention'),
                        lambda a: {'output': {'bias': a['output']['bias']}},
                        _slice_bert_heads)

  @nn.compact
  def __call__(self, tokens, train: bool = False, head_mask=None):
    ids = jnp.asarray(tokens)
    if ids.ndim != 2:
      raise ValueError(f'BERT takes token ids of shape (batch, length), got {ids.shape}.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden size {self.hidden_size} does not split into {self.num_heads} '
                       'heads.')
    heads = self.layer_heads()
    if head_mask is not None:
      head_mask = check_head_mask(head_mask, ids.shape[0], self.num_layers, self.num_heads)
    if jnp.issubdtype(ids.dtype, jnp.floating):
      ids = jnp.round(ids)
    ids = ids.astype(jnp.int32)
    dense = functools.partial(layers.QuantDense, kernel_init=init_normal, dtype=self.dtype)
    encoder_dense = functools.partial(
        dense, input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
        kernel_scale=self.kernel_scale)
    head_dense = encoder_dense if self.quantize_head else dense
    quantize_pooler = self.quantize_head if self.quantize_pooler is None else self.quantize_pooler
    pooler_dense = encoder_dense if quantize_pooler else dense
    output_dense = None if self.ffn_input_quantizer is None else functools.partial(
        encoder_dense, input_quantizer=self.ffn_input_quantizer)
    activation(self.hidden_act)  # an unknown name fails here, before any layer
    products = functools.partial(
        layers.QuantDotProductAttention, query_key_quantizer=self.query_key_quantizer,
        attention_quantizer=self.attention_quantizer, value_quantizer=self.value_quantizer,
        dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
        score_quantizer=self.attention_score_quantizer)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)

    x = Embeddings(self.vocab_size, self.max_position_embeddings, self.type_vocab_size,
                   self.hidden_size, self.pad_token_id, self.sep_token_id,
                   self.layer_norm_epsilon, self.embedding_quantizer, self.dtype,
                   name='embeddings')(ids)
    x = drop(x)
    layers.sow_taps(self, hidden_states=x)
    mask = attention_mask(ids, self.pad_token_id)
    for i in range(self.num_layers):
      x = BertLayer(heads[i], self.intermediate_size or 4 * self.hidden_size,
                    self.dropout_rate, self.layer_norm_epsilon, encoder_dense, products,
                    self.dtype, self.hidden_size // self.num_heads, output_dense,
                    self.hidden_act, name=f'layer_{i}')(
                        x, mask, train,
                        None if head_mask is None else head_mask[..., i, :heads[i]])
      layers.sow_taps(self, hidden_states=x)
    pooled = jnp.tanh(pooler_dense(self.hidden_size, name='pooler')(x[:, 0]))
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
