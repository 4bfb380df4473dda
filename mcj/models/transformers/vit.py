"""Vision Transformer (Dosovitskiy et al. 2021) at DeiT's sizes (Touvron et al. 2021), as timm
builds ``vit_{tiny,small,base}_patch16_224``, from mcj's quantized layers.

Patch embedding: a ``patch_size`` x ``patch_size`` conv with stride ``patch_size`` and a
bias; a learned class token in front; a learned position embedding over the class token
and every patch; ``num_layers`` pre-LN blocks x + Attention(LN(x)), x + MLP(LN(x))
(LayerNorm epsilon 1e-6; one fused ``qkv`` dense with bias, ``num_heads`` heads, output
``proj``; MLP ``fc1`` to ``mlp_ratio`` x hidden, exact (erf) GELU, ``fc2``); a final
LayerNorm and the classifier ``head`` on the class token. Init as timm: truncated
normal(0.02) dense kernels and position embedding, normal(1e-6) class token, zero biases.

Input: NHWC float images whose sides are multiples of ``patch_size``. The position
embedding has one row per patch of the input it is initialised with (plus the class
token's), so ``image_size`` follows from the input shape: 224 with patch 16 (196 patches),
28 with ``patch_size=4`` (49), 8 with ``patch_size=2`` (16).

Dropout (timm's ``drop_rate``, ``attn_drop_rate``, ``drop_path_rate``, all 0 by default as
in timm's definitions): ``dropout_rate`` after the position embedding, after each
projection and before the head; ``attention_dropout_rate`` on the attention probabilities;
``drop_path_rate`` stochastic depth rising linearly over the blocks from 0 (DeiT trains
with 0.1). All use the rng ``'dropout'`` at ``train=True``.

Quantization (all float by default, None): ``input_quantizer`` / ``kernel_quantizer`` /
``kernel_scale`` on every dense layer of the blocks (qkv, proj, fc1, fc2);
``query_key_quantizer``, ``attention_quantizer``, ``value_quantizer`` on the operands of
Q.K^T and A.V (``layers.QuantDotProductAttention``). The patch embedding and the head stay
float unless ``quantize_first_last=True``, as binary and low-bit ViTs (BiViT, BinaryViT,
Q-ViT) keep the first and last layers full precision.

Param names follow timm's: ``patch_embed`` (``patch_embed.proj``), ``cls_token``,
``pos_embed``, ``block_{i}/{norm1,attn/qkv,attn/proj,norm2,mlp/fc1,mlp/fc2}``
(``blocks.{i}.*``), ``norm``, ``head``; dense kernels are (in, out) and the conv kernel
HWIO, timm's weights transposed; ``qkv``'s outputs are ordered (3, heads, head_dim) as
timm's.

Attention heads, as in ``bert``: ``heads_per_layer`` (None: ``num_heads`` in every block)
gives each block's heads of ``hidden_size // num_heads`` features, so ``qkv`` has ``3 * h *
head_dim`` outputs (still ordered (3, heads, head_dim)) and ``proj`` ``h * head_dim`` inputs;
a block with 0 heads adds only ``block_{i}/attn/proj/bias`` (the attention of a block whose
every head outputs zero) to its residual. The call argument ``head_mask`` (None, (num_layers,
num_heads) or (batch, num_layers, num_heads)) multiplies each head's output before ``proj``.

Distillation taps, as ``bert``'s: when ``'intermediates'`` is mutable
(``features.apply_with_features``) the model sows ``hidden_states`` (the embedded tokens,
then each block's output) and its attention products sow Q, K, V and the pre-softmax
scores, so TinyBERT's layer loss (``feature_loss='tinybert'``) distils ViTs too.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mcj.core import registry
from mcj.models.transformers import bert
from mcj.models.transformers.bert import (OutputBias, check_head_mask, head_columns,
                                          layer_heads, scale_heads)
from mcj.nn import layers

trunc_normal = nn.initializers.truncated_normal(0.02)


class DropPath(nn.Module):
  """Stochastic depth: drops a residual branch per example with probability ``rate`` and
  scales the kept ones by 1 / (1 - rate)."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with a fused ``qkv`` dense layer and an output ``proj``
  (``num_heads`` heads of ``head_dim`` features; 0 heads: the ``proj`` bias only)."""
  num_heads: int
  dense: Any
  products: Any
  dropout_rate: float = 0.0
  head_dim: int | None = None  # None: hidden size // num_heads
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train, head_mask=None):
    hidden = x.shape[-1]
    if self.num_heads and self.head_dim is None and hidden % self.num_heads:
      raise ValueError(f'hidden size {hidden} does not split into {self.num_heads} heads.')
    if self.num_heads == 0:
      out = OutputBias(hidden, self.dtype, name='proj')(x)
    else:
      head_dim = self.head_dim or hidden // self.num_heads
      width = self.num_heads * head_dim
      qkv = self.dense(3 * width, name='qkv')(x)
      qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, head_dim)
      q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
      out = scale_heads(self.products(name='dot_product')(q, k, v, train=train), head_mask)
      out = self.dense(hidden, name='proj')(out.reshape(*x.shape[:-1], width))
    return nn.Dropout(self.dropout_rate, deterministic=not train)(out)


class MLP(nn.Module):
  hidden_features: int
  dense: Any
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train):
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    y = drop(nn.gelu(self.dense(self.hidden_features, name='fc1')(x), approximate=False))
    return drop(self.dense(x.shape[-1], name='fc2')(y))


class Block(nn.Module):
  """A pre-LN block: x + Attention(LN(x)), then x + MLP(LN(x))."""
  num_heads: int
  mlp_features: int
  dense: Any
  products: Any
  epsilon: float
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  head_dim: int | None = None  # None: hidden size // num_heads

  @nn.compact
  def __call__(self, x, train, head_mask=None):
    norm = functools.partial(nn.LayerNorm, epsilon=self.epsilon, dtype=self.dtype,
                             use_fast_variance=False)
    drop_path = DropPath(self.drop_path_rate)
    x = x + drop_path(Attention(self.num_heads, self.dense, self.products, self.dropout_rate,
                                self.head_dim, self.dtype, name='attn')(
                                    norm(name='norm1')(x), train, head_mask), train)
    return x + drop_path(MLP(self.mlp_features, self.dense, self.dropout_rate, name='mlp')(
        norm(name='norm2')(x), train), train)


def _slice_vit_heads(attn, kept, count, head_dim):
  columns = head_columns(kept, head_dim, groups=3, heads=count)  # the fused qkv
  attn['qkv']['kernel'] = attn['qkv']['kernel'][:, columns]
  attn['qkv']['bias'] = attn['qkv']['bias'][columns]
  attn['proj']['kernel'] = attn['proj']['kernel'][head_columns(kept, head_dim), :]
  return attn


class VisionTransformer(nn.Module):
  """ViT with a class-token head; see the module docstring. With every quantizer None
  (the default) it is the float model. ``heads_per_layer`` and the call's ``head_mask``:
  see the module docstring."""
  num_classes: int = 1000
  patch_size: int = 16
  num_layers: int = 12
  hidden_size: int = 192
  num_heads: int = 3
  mlp_ratio: float = 4.0
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  input_quantizer: Any = None
  kernel_quantizer: Any = None
  kernel_scale: str = 'none'
  query_key_quantizer: Any = None
  attention_quantizer: Any = None
  value_quantizer: Any = None
  quantize_first_last: bool = False
  heads_per_layer: Any = None  # None: num_heads in every block; else one count per block
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm: kept for the trainer's common options

  def layer_heads(self) -> tuple[int, ...]:
    """Each block's number of attention heads."""
    return layer_heads(self.heads_per_layer, self.num_layers, self.num_heads)

  def shrink_heads(self, variables, keep):
    """``(smaller model, its variables)`` without the heads where ``keep`` (booleans of
    shape (num_layers, num_heads); block i reads its first ``layer_heads()[i]`` columns) is
    False: ``qkv`` loses those heads' Q, K and V output columns, ``proj`` those rows. Its
    outputs equal this model's with ``head_mask=keep``."""
    return bert.shrink_heads(self, variables, keep, lambda i: (f'block_{i}', 'attn'),
                             lambda a: {'proj': {'bias': a['proj']['bias']}}, _slice_vit_heads)

  @nn.compact
  def __call__(self, images, train: bool = False, head_mask=None):
    if images.ndim != 4:
      raise ValueError(f'ViT takes NHWC images, got shape {images.shape}.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden size {self.hidden_size} does not split into {self.num_heads} '
                       'heads.')
    heads = self.layer_heads()
    if head_mask is not None:
      head_mask = check_head_mask(head_mask, images.shape[0], self.num_layers, self.num_heads)
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f'image size {images.shape[1]}x{images.shape[2]} is not a multiple '
                       f'of patch_size {p}.')
    quantized = dict(input_quantizer=self.input_quantizer,
                     kernel_quantizer=self.kernel_quantizer, kernel_scale=self.kernel_scale)
    ends = quantized if self.quantize_first_last else {}
    dense = functools.partial(layers.QuantDense, kernel_init=trunc_normal, dtype=self.dtype,
                              **quantized)
    products = functools.partial(
        layers.QuantDotProductAttention, query_key_quantizer=self.query_key_quantizer,
        attention_quantizer=self.attention_quantizer, value_quantizer=self.value_quantizer,
        dropout_rate=self.attention_dropout_rate, dtype=self.dtype)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)

    x = layers.QuantConv(self.hidden_size, p, p, 'VALID', use_bias=True,
                         kernel_init=layers.dense_init, dtype=self.dtype, name='patch_embed',
                         **ends)(images.astype(self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, self.hidden_size)
    cls = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, self.hidden_size),
                     jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.hidden_size)),
                         x], axis=1)
    pos = self.param('pos_embed', trunc_normal, (1, x.shape[1], self.hidden_size), jnp.float32)
    x = drop(x + pos.astype(self.dtype))
    layers.sow_taps(self, hidden_states=x)  # distillation taps, as BERT's (features.py)
    rates = np.linspace(0.0, self.drop_path_rate, self.num_layers) if self.num_layers else []
    for i in range(self.num_layers):
      x = Block(heads[i], int(self.hidden_size * self.mlp_ratio), dense, products,
                self.layer_norm_epsilon, self.dropout_rate, float(rates[i]), self.dtype,
                self.hidden_size // self.num_heads, name=f'block_{i}')(
                    x, train, None if head_mask is None else head_mask[..., i, :heads[i]])
      layers.sow_taps(self, hidden_states=x)
    x = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                     use_fast_variance=False, name='norm')(x)
    head = layers.QuantDense(self.num_classes, kernel_init=trunc_normal, dtype=self.dtype,
                             name='head', **ends)
    return head(drop(x[:, 0])).astype(jnp.float32)


def _vit(hidden_size, num_heads, patch_size=16, **options):
  return functools.partial(VisionTransformer, hidden_size=hidden_size, num_heads=num_heads,
                           patch_size=patch_size, **options)


# DeiT / timm vit_*_patch16_224 (12 blocks); the patch-4 and patch-2 variants are the same
# networks for 28x28 (MNIST-sized) and 8x8 (digits) inputs.
MODELS = {
    'vit_tiny': _vit(192, 3),
    'vit_small': _vit(384, 6),
    'vit_base': _vit(768, 12),
    'vit_tiny_patch4': _vit(192, 3, patch_size=4),
    'vit_tiny_patch2': _vit(192, 3, patch_size=2),
}
registry.add_all('model', MODELS)
