"""Knowledge-distillation losses, each following the paper (and official code) it cites.

Pure functions on jax arrays, written for the data-parallel step: the code sees one
device's share of the batch, and ``axis_name`` names the device axis. Per-example losses
(KD, the distribution loss, FitNets, attention transfer, Real-to-Binary) are means over the
local batch, so averaging the devices' gradients (the trainer's ``pmean``) gives the
global-batch gradient. The relational losses (DIST's intra-class term, RKD) compare
examples with each other; with ``axis_name`` they are computed over the global batch (all
devices), so value and averaged gradient do not depend on the number of devices. Logits and
features are cast to float32; feature maps are NHWC (FitNets and RKD also take token
tensors (N, T, C)); every loss is a float32 scalar. The teacher
side is not stopped here: the trainer's teacher outputs carry no gradient.

==================  =====================================================================
name                loss
==================  =====================================================================
kd                  Hinton et al. 2015: T^2 KL(softmax(t/T) || softmax(s/T))
distribution        ReActNet (Liu et al. 2020): cross-entropy to the teacher's softmax
dist                DIST (Huang et al. 2022): inter- and intra-class Pearson correlation
fitnet              FitNets (Romero et al. 2015): 1x1-conv regressor, mean squared error
at                  Zagoruyko & Komodakis 2017: attention maps, mean squared difference
real_to_binary      Martinez et al. 2020: attention matching, L2 distance per example
rkd                 Park et al. 2019: relational (distance- and angle-wise) distillation
==================  =====================================================================

Each formula is tested against an independent numpy implementation of the paper's in
``tests/test_distill.py``, the relational ones also for device-count invariance. The
names above are registered with the config (``distill.logit_loss`` / ``feature_loss``) in
``objectives``.

Transformer distillation (tested in ``tests/test_transformer_methods.py``; registered in
``objectives`` as the feature losses ``tinybert`` and ``dmd`` and the logit loss
``soft_ce``, reading the taps a BERT sows, ``features.transformer_taps``): TinyBERT's layer losses (``tinybert_attention_loss``, ``_hidden_loss``,
``_embedding_loss``, ``_prediction_loss``, ``_intermediate_loss``) and its
``uniform_layer_map``; BiBERT's ``direction_matching_loss`` (DMD, relational over the
batch: it takes ``axis_name``); DistilBERT's student initialisation (``distilbert_layers``,
``distilbert_init``).
"""
import re
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# F.normalize's epsilon (attention-transfer and RKD code): x / max(||x||_2, 1e-12).
_NORMALIZE_EPS = 1e-12
# DIST's epsilon (hunto/DIST_KD dist_kd.py): a.b / (||a|| ||b|| + 1e-8).
_DIST_EPS = 1e-8


# ----------------------------------------------------------------------------- helpers
def _f32(x):
  return jnp.asarray(x).astype(jnp.float32)


def _is_zero(weight):
  """True for a Python/numpy zero weight (a traced weight is never skipped)."""
  return isinstance(weight, (int, float)) and weight == 0


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _pmean(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _gather(x, axis_name):
  """The global batch: every device's rows, in device order (identity without an axis)."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _l2_normalize(x, axis=-1):
  """``x / max(||x||_2, 1e-12)`` (torch's F.normalize), with a finite gradient at 0."""
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _NORMALIZE_EPS ** 2))


def _safe_norm(x, axis=-1):
  """``||x||_2`` with gradient 0 (not NaN) where x = 0."""
  sq = jnp.sum(x * x, axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _smooth_l1(x, y):
  """Huber loss with delta 1, mean over elements (torch's F.smooth_l1_loss defaults)."""
  d = jnp.abs(x - y)
  return jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5))


# ----------------------------------------------------------------------------- logit losses
def hinton_kd(student_logits, teacher_logits, temperature: float = 4.0):
  """Hinton et al. 2015, "Distilling the knowledge in a neural network".

  ``T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))``. The T^2 factor keeps the
  gradient, ``T (softmax(s/T) - softmax(t/T)) / N``, of the same order for any T (the
  paper's section 2). Mixing with the label loss is the caller's (e.g.
  ``(1 - a) CE + a KD``).
  """
  t = _f32(temperature)
  log_ps = jax.nn.log_softmax(_f32(student_logits) / t, axis=-1)
  log_pt = jax.nn.log_softmax(_f32(teacher_logits) / t, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return t * t * jnp.mean(kl)


def distribution_loss(student_logits, teacher_logits):
  """ReActNet's distributional loss (Liu et al. ECCV 2020; ``DistributionLoss`` in
  liuzechun/ReActNet utils/KD_loss.py).

  ``mean_i -sum_c softmax(t_i)_c log softmax(s_i)_c``: the cross-entropy to the teacher's
  soft labels, as the official code computes it. The paper writes the KL divergence, i.e.
  ``hinton_kd`` at T = 1; the two differ by the teacher's entropy, so the gradient is the
  same. ReActNet trains with this loss alone, without labels.
  """
  log_ps = jax.nn.log_softmax(_f32(student_logits), axis=-1)
  pt = jax.nn.softmax(_f32(teacher_logits), axis=-1)
  return jnp.mean(-jnp.sum(pt * log_ps, axis=-1))


def _pearson_rows(a, b):
  """Pearson correlation of each row of ``a`` with the same row of ``b`` (DIST's form)."""
  a = a - jnp.mean(a, axis=-1, keepdims=True)
  b = b - jnp.mean(b, axis=-1, keepdims=True)
  norms = jnp.sqrt(jnp.sum(a * a, axis=-1)) * jnp.sqrt(jnp.sum(b * b, axis=-1))
  return jnp.sum(a * b, axis=-1) / (norms + _DIST_EPS)


def _pearson_columns(a, b, axis_name):
  """Pearson correlation of each column (class) of ``a`` and ``b`` over the global batch.

  Two passes of sums over the batch, each ``psum``-ed over devices: the means, then the
  centred (co)variances; exactly the full-batch computation, and better conditioned in
  float32 than one pass of raw moments.
  """
  count = _psum(jnp.float32(a.shape[0]), axis_name)
  a = a - _psum(jnp.sum(a, axis=0), axis_name) / count
  b = b - _psum(jnp.sum(b, axis=0), axis_name) / count
  ab = _psum(jnp.sum(a * b, axis=0), axis_name)
  aa = _psum(jnp.sum(a * a, axis=0), axis_name)
  bb = _psum(jnp.sum(b * b, axis=0), axis_name)
  return ab / (jnp.sqrt(aa) * jnp.sqrt(bb) + _DIST_EPS)


def dist_loss(student_logits, teacher_logits, temperature: float = 1.0, beta: float = 1.0,
              gamma: float = 1.0, axis_name=None):
  """DIST (Huang et al. NeurIPS 2022, "Knowledge distillation from a stronger teacher").

  With ``p = softmax(logits / T)`` and ``rho`` the Pearson correlation,
  ``T^2 (beta * mean_i [1 - rho(p_s[i, :], p_t[i, :])]
  + gamma * mean_c [1 - rho(p_s[:, c], p_t[:, c])])``: inter-class relations (each
  example's class ranking) and intra-class relations (each class's ranking of the batch).
  ``rho`` is ``a.b / (||a|| ||b|| + 1e-8)`` on centred vectors; T = beta = gamma = 1 by
  default, the T^2 scaling and epsilon as in hunto/DIST_KD (``dist_kd.py``).

  The intra-class term is relational over the batch: with ``axis_name`` it uses the global
  batch (sums ``psum``-ed over devices), and the inter-class mean is ``pmean``-ed, so the
  value is the full-batch value on every device. Gradients: under pmap autodiff the
  transpose of ``psum`` is ``psum``, so each device's gradient is n times the full-batch
  loss's gradient through its own rows, and the trainer's ``pmean`` of per-device gradients
  gives exactly the full-batch gradient (tested); no rescaling is needed.
  """
  t = _f32(temperature)
  ps = jax.nn.softmax(_f32(student_logits) / t, axis=-1)
  pt = jax.nn.softmax(_f32(teacher_logits) / t, axis=-1)
  inter = _pmean(1.0 - jnp.mean(_pearson_rows(ps, pt)), axis_name)
  intra = 1.0 - jnp.mean(_pearson_columns(ps, pt, axis_name))
  return t * t * (beta * inter + gamma * intra)


# ----------------------------------------------------------------------------- feature losses
class FitNetAdapter(nn.Module):
  """FitNets' regressor (Romero et al. 2015): a 1x1 convolution from the student's
  channels to the teacher's ``features``, trained with the student. On token tensors
  (batch, tokens, features) it is the same per-position linear map as a Dense layer on
  the feature axis (kernel (C_in, C_out) instead of (1, 1, C_in, C_out)).

  The kernel starts LeCun-normal (variance 1/fan_in, flax's default), which keeps the
  scale of the student's features, so the first hint losses are of the order of the
  features themselves; the bias starts at 0.
  """
  features: int

  @nn.compact
  def __call__(self, x):
    if x.ndim == 3:
      return nn.Dense(self.features, use_bias=True, dtype=jnp.float32,
                      param_dtype=jnp.float32, name='regressor')(_f32(x))
    return nn.Conv(self.features, (1, 1), use_bias=True, dtype=jnp.float32,
                   param_dtype=jnp.float32, name='regressor')(_f32(x))


def fitnet_loss(adapted_student_feature, teacher_feature):
  """FitNets' hint loss: mean squared error over all elements.

  The paper's ``1/2 ||u_h - r(v_g)||^2`` normalised by the number of elements (without
  the 1/2), as ``nn.MSELoss()`` with its default mean reduction computes it (RepDistiller's
  ``HintLoss``), so the weight does not depend on the feature size. torchdistill's sample
  FitNet config sums instead (``MSELoss`` with ``reduction='sum'``): its loss is this one
  times the number of elements (batch x H x W x C), so weights do not carry over between
  the two without that factor.
  """
  d = _f32(adapted_student_feature) - _f32(teacher_feature)
  return jnp.mean(d * d)


def _channel_power(feature, p):
  f = _f32(feature)
  return f * f if p == 2 else jnp.abs(f) ** p


def attention_map(feature, p: int = 2):
  """Activation-based attention map (Zagoruyko & Komodakis 2017, official ``at()``).

  ``Q = normalize(mean_c |A_c|^p)``: the channel mean of the p-th power, flattened over
  H*W and L2-normalised per example (F.normalize, epsilon 1e-12). (N, H, W, C) -> (N, H*W).
  """
  q = jnp.mean(_channel_power(feature, p), axis=-1)
  return _l2_normalize(q.reshape(q.shape[0], -1))


def attention_transfer(student_features: Sequence, teacher_features: Sequence,
                       beta: float = 1e3, p: int = 2):
  """Attention transfer (Zagoruyko & Komodakis ICLR 2017), as the official code computes it.

  ``beta * sum_j mean((Q_s^j - Q_t^j)^2)`` over the listed (student, teacher) pairs, with
  ``Q = attention_map(A, p)`` and the mean over batch and positions
  (szagoruyko/attention-transfer: ``at_loss`` in utils.py, ``opt.beta * sum(loss_groups)``
  in cifar.py/imagenet.py with ``--beta 1e+3``; RepDistiller's AT also uses beta = 1000).
  The paper's eq. 2 writes ``beta/2 sum_j ||Q_s^j/||Q_s^j|| - Q_t^j/||Q_t^j|| ||_p``, a
  non-squared norm, and explains beta = 1e3 as "divided by the number of elements in the
  attention map and batch size", which is the mean here; the factor 1/2 is not in the code.
  Pairs must share N, H and W (``features.paired_stages`` pairs by resolution).
  """
  _check_pairs(student_features, teacher_features)
  total = jnp.float32(0.0)
  for s, t in zip(student_features, teacher_features):
    d = attention_map(s, p) - attention_map(t, p)
    total = total + jnp.mean(d * d)
  return beta * total


def real_to_binary_attention(student_features: Sequence, teacher_features: Sequence):
  """Real-to-Binary attention matching (Martinez et al. ICLR 2020, section 4.2).

  ``sum_j mean_i || Q_s^j / ||Q_s^j||_2 - Q_t^j / ||Q_t^j||_2 ||_2`` with
  ``Q^j = sum_c |A_c^j|^2`` per example, flattened over H*W: an L2 distance (not squared)
  between normalised attention maps, summed over the matched block outputs, averaged over
  the batch. No weight is applied here: the paper adds it to the cross-entropy and the KD
  term with its own weight, applied by the caller; larq zoo's reproduction
  (larq_zoo/training/multi_stage_experiments.py) uses 30 for attention matching with 3
  for the logit KD. Pairs must share N, H and W (``features.paired_stages`` pairs by
  resolution).
  """
  _check_pairs(student_features, teacher_features)
  total = jnp.float32(0.0)
  for s, t in zip(student_features, teacher_features):
    qs = jnp.sum(_channel_power(s, 2), axis=-1)
    qt = jnp.sum(_channel_power(t, 2), axis=-1)
    qs = _l2_normalize(qs.reshape(qs.shape[0], -1))
    qt = _l2_normalize(qt.reshape(qt.shape[0], -1))
    total = total + jnp.mean(_safe_norm(qs - qt, axis=-1))
  return total


def _check_pairs(student_features, teacher_features):
  if len(student_features) != len(teacher_features):
    raise ValueError(f'{len(student_features)} student features but {len(teacher_features)} '
                     'teacher features: they pair one to one.')
  for s, t in zip(student_features, teacher_features):
    if s.ndim != 4 or t.ndim != 4 or s.shape[:3] != t.shape[:3]:
      raise ValueError(f'Attention losses pair NHWC features of equal N, H, W; got student '
                       f'{tuple(s.shape)} and teacher {tuple(t.shape)}.')


# ----------------------------------------------------------------------------- RKD
def _pairwise_distances(e):
  """Euclidean distances between rows, as the RKD code's ``pdist``: from the Gram matrix,
  squared distances clamped at 1e-12 before the square root, diagonal set to 0."""
  sq = jnp.sum(e * e, axis=-1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * (e @ e.T)
  d = jnp.sqrt(jnp.maximum(d2, 1e-12))
  return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, d)


def _normalized_distances(e):
  """Distances divided by the mean of the positive ones (RKD's scale normalisation)."""
  d = _pairwise_distances(e)
  positive = d > 0
  mean = jnp.sum(jnp.where(positive, d, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
  return d / mean


def _angles(e):
  """``cos`` of the angle at anchor i between j and k, for all (i, j, k): (N, N, N).

  Differences are normalised with F.normalize (so j = i gives a 0 vector and cosine 0), as
  the RKD code does. Memory is O(N^2 D + N^3) for N embeddings of size D.
  """
  diff = _l2_normalize(e[None, :, :] - e[:, None, :], axis=-1)  # [i, j] = e_j - e_i
  return jnp.einsum('ijd,ikd->ijk', diff, diff)


def rkd_distance(student_embedding, teacher_embedding, axis_name=None):
  """RKD distance-wise loss (Park et al. CVPR 2019, psi_D; ``RkdDistance`` in
  lenscloth/RKD metric/loss.py).

  ``smooth_l1(psi_D(s), psi_D(t))``, mean over all N^2 pairs, where ``psi_D`` is the
  pairwise Euclidean distance divided by the mean distance over distinct pairs. (N, D)
  embeddings; student and teacher D may differ. With ``axis_name`` over the global batch
  (``all_gather``), so the value and the ``pmean``-ed gradient are the full-batch ones.
  """
  s = _gather(_f32(student_embedding), axis_name)
  t = _gather(_f32(teacher_embedding), axis_name)
  return _smooth_l1(_normalized_distances(s), _normalized_distances(t))


def rkd_angle(student_embedding, teacher_embedding, axis_name=None):
  """RKD angle-wise loss (Park et al. CVPR 2019, psi_A; ``RKdAngle`` in lenscloth/RKD).

  ``smooth_l1(psi_A(s), psi_A(t))``, mean over all N^3 triplets, with ``psi_A`` the cosine
  of the angle at the anchor between the normalised difference vectors. With
  ``axis_name`` over the global batch (``all_gather``).
  """
  s = _gather(_f32(student_embedding), axis_name)
  t = _gather(_f32(teacher_embedding), axis_name)
  return _smooth_l1(_angles(s), _angles(t))


def rkd_loss(student_embedding, teacher_embedding, distance_weight: float = 25.0,
             angle_weight: float = 50.0, axis_name=None):
  """Relational knowledge distillation (Park et al. CVPR 2019).

  ``distance_weight * rkd_distance + angle_weight * rkd_angle`` on (N, D) embeddings (the
  caller pools features, see ``pool_embedding``). The weights 25 and 50 are the
  classification defaults of RepDistiller's ``RKDLoss`` (distiller_zoo/RKD.py), the
  common benchmark setting on pooled CNN features; the official lenscloth/RKD
  metric-learning scripts use 1 and 2 on learned embeddings. With ``axis_name`` the
  relations span the global batch (``all_gather``), so the result does not depend on the
  number of devices.
  """
  s = _gather(_f32(student_embedding), axis_name)
  t = _gather(_f32(teacher_embedding), axis_name)
  loss = jnp.float32(0.0)
  if not _is_zero(distance_weight):
    loss = loss + distance_weight * rkd_distance(s, t)
  if not _is_zero(angle_weight):  # the O(N^3) part: skipped when switched off
    loss = loss + angle_weight * rkd_angle(s, t)
  return loss


# ----------------------------------------------------------------------------- transformer layers
# TinyBERT (Jiao et al., Findings of EMNLP 2020; huawei-noah/Pretrained-Language-Model
# TinyBERT/task_distill.py), BiBERT's DMD (Qin et al. ICLR 2022; htqin/BiBERT
# quant_task_glue.py) and DistilBERT's initialisation (Sanh et al. 2019; HF transformers
# examples/research_projects/distillation/scripts/extract_distilbert.py).
# TinyBERT's code zeroes attention scores at or below -100 (the additive -10000 mask).
_MASKED_SCORE = -1e2


def uniform_layer_map(student_layers: int, teacher_layers: int):
  """TinyBERT's uniform layer mapping ``g(m) = m N / M`` for m = 0 .. M (section 3.1, "the
  uniform strategy"; 4 of 12 layers: g(m) = 3m), ``(g(0), ..., g(M))``.

  Layer numbers count from 1, with 0 the embedding layer (g(0) = 0; the prediction layer
  M + 1 maps to N + 1). So hidden states (index 0 the embedding output, index m the output
  of layer m) pair as ``student[m] <-> teacher[g(m)]``, and per-layer tensors indexed from 0
  (attention scores; BiBERT's Q, K, V) as ``student[m - 1] <-> teacher[g(m) - 1]``: the
  last layer of each block of N / M, the official codes' ``i * k + k - 1``. M must divide N
  (the codes assert it).
  """
  if not (isinstance(student_layers, int) and isinstance(teacher_layers, int)
          and 0 < student_layers <= teacher_layers and teacher_layers % student_layers == 0):
    raise ValueError(f'the uniform mapping needs 0 < M <= N with M dividing N, got '
                     f'M={student_layers} student and N={teacher_layers} teacher layers.')
  step = teacher_layers // student_layers
  return tuple(m * step for m in range(student_layers + 1))


def _check_same_shapes(what, student, teacher):
  if tuple(student.shape) != tuple(teacher.shape):
    raise ValueError(f'{what} pairs tensors of equal shape (same heads and tokens); got '
                     f'student {tuple(student.shape)} and teacher {tuple(teacher.shape)}.')


def tinybert_attention_loss(student_scores, teacher_scores):
  """TinyBERT's attention loss for one layer pair (eq. 6):
  ``L_attn = 1/h sum_i MSE(A_i^S, A_i^T)`` on the unnormalised attention scores ``A = Q K^T
  / sqrt(d_k)`` (before the softmax), shape (batch, heads, queries, keys).

  The mean over heads of per-head MSEs is the MSE over all elements, as the code computes
  it (``MSELoss()``). As the code, scores at or below -100 (masked keys: mcj sets them to
  the float32 minimum, the code adds -10000) are set to 0 on both sides first, so padding
  adds nothing.
  """
  s, t = _f32(student_scores), _f32(teacher_scores)
  _check_same_shapes('tinybert_attention_loss', s, t)
  s = jnp.where(s <= _MASKED_SCORE, 0.0, s)
  t = jnp.where(t <= _MASKED_SCORE, 0.0, t)
  return jnp.mean((s - t) ** 2)


def _projected_mse(student, teacher, kernel, bias):
  projected = _f32(student) @ _f32(kernel)
  if bias is not None:
    projected = projected + _f32(bias)
  t = _f32(teacher)
  _check_same_shapes('the projected student', projected, t)
  return jnp.mean((projected - t) ** 2)


def tinybert_hidden_loss(student_hidden, teacher_hidden, kernel, bias=None):
  """TinyBERT's hidden-state loss for one layer pair (eq. 7): ``MSE(H^S W_h, H^T)`` with the
  learned projection ``W_h`` (``kernel``, shape (d_student, d_teacher)); (batch, tokens,
  d) hidden states. The code's projection (``fit_dense``, a Linear layer) has a ``bias``
  too; None leaves it out (the paper's formula)."""
  return _projected_mse(student_hidden, teacher_hidden, kernel, bias)


def tinybert_embedding_loss(student_embeddings, teacher_embeddings, kernel, bias=None):
  """TinyBERT's embedding-layer loss (eq. 8): ``MSE(E^S W_e, E^T)`` with the learned
  projection ``W_e`` (``kernel``, (d_student, d_teacher)) on the embedding-layer outputs.
  The paper learns W_e apart from W_h; the code uses its one ``fit_dense`` for both (the
  embedding output is hidden state 0), i.e. the same ``kernel`` and ``bias`` here."""
  return _projected_mse(student_embeddings, teacher_embeddings, kernel, bias)


def logit_mse(student_logits, teacher_logits):
  """``mean_i mean_c (z^S_ic - z^T_ic)^2``: TinyBERT's task-distillation loss for a
  regression head (its code: ``MSELoss(student_logits.view(-1), teacher_logits.view(-1))``)."""
  return jnp.mean(jnp.square(_f32(student_logits) - _f32(teacher_logits)))


def tinybert_prediction_loss(student_logits, teacher_logits, temperature: float = 1.0):
  """TinyBERT's prediction-layer loss (eq. 9): ``CE(z^T / t, z^S / t) = mean_i -sum_c
  softmax(z^T_i / t)_c log softmax(z^S_i / t)_c``, with no ``t^2`` factor; t = 1 in the
  paper's experiments (the code's default ``--temperature 1``).

  The code's ``soft_cross_entropy`` takes ``.mean()`` over examples and classes, i.e. this
  loss divided by the number of classes (BiBERT and BiT use the same function); at t = 1
  this is ``distribution_loss``.
  """
  t = _f32(temperature)
  log_ps = jax.nn.log_softmax(_f32(student_logits) / t, axis=-1)
  pt = jax.nn.softmax(_f32(teacher_logits) / t, axis=-1)
  return jnp.mean(-jnp.sum(pt * log_ps, axis=-1))


def tinybert_intermediate_loss(student_scores: Sequence, teacher_scores: Sequence,
                               student_hidden: Sequence, teacher_hidden: Sequence, kernel,
                               bias=None, embedding_kernel=None, embedding_bias=None):
  """TinyBERT's intermediate-layer objective (eq. 10 for m = 0 .. M, lambda_m = 1, as the
  code's ``att_loss + rep_loss``) under the uniform mapping ``g``:

    sum_{m=1..M} L_attn(student_scores[m-1], teacher_scores[g(m)-1])
    + L_embd(student_hidden[0], teacher_hidden[0])
    + sum_{m=1..M} L_hidn(student_hidden[m], teacher_hidden[g(m)])

  ``*_scores``: one (batch, heads, T, T) array per layer (M and N of them); ``*_hidden``:
  the embedding output then every layer's output (M + 1 and N + 1). The hidden states share
  ``kernel`` / ``bias`` (the code's one ``fit_dense``) unless ``embedding_kernel`` (and
  ``embedding_bias``) give the embedding layer its own W_e (the paper).
  """
  m_layers, n_layers = len(student_scores), len(teacher_scores)
  if len(student_hidden) != m_layers + 1 or len(teacher_hidden) != n_layers + 1:
    raise ValueError(f'hidden states are the embedding output plus one per layer: got '
                     f'{len(student_hidden)} student and {len(teacher_hidden)} teacher hidden '
                     f'states for {m_layers} and {n_layers} layers.')
  g = uniform_layer_map(m_layers, n_layers)
  if embedding_kernel is None:
    embedding_kernel, embedding_bias = kernel, bias
  total = tinybert_embedding_loss(student_hidden[0], teacher_hidden[0], embedding_kernel,
                                  embedding_bias)
  for m in range(1, m_layers + 1):
    total = total + tinybert_attention_loss(student_scores[m - 1], teacher_scores[g[m] - 1])
    total = total + tinybert_hidden_loss(student_hidden[m], teacher_hidden[g[m]], kernel, bias)
  return total


def similarity_matrix(feature):
  """BiBERT's similarity pattern of an activation per head: ``F F^T`` over the tokens.
  (batch, tokens, heads, head_dim) -> (batch, heads, tokens, tokens); a (batch, tokens,
  features) tensor is one head. (The code also divides by sqrt(head_dim), which the
  normalisation in ``direction_matching_loss`` cancels.)"""
  f = _f32(feature)
  if f.ndim == 3:
    f = f[:, :, None, :]
  if f.ndim != 4:
    raise ValueError(f'similarity_matrix takes (batch, tokens, heads, head_dim) or (batch, '
                     f'tokens, features), got shape {tuple(f.shape)}.')
  return jnp.einsum('bqhd,bkhd->bhqk', f, f)


def direction_matching_loss(student_features: Sequence, teacher_features: Sequence,
                            axis_name=None):
  """BiBERT's Direction-Matching Distillation (Qin et al. 2022, section 3.3), as the code
  computes it (``direction_matching_distillation`` / ``att_loss_r2b``).

  ``sum_j || P_s^j / ||P_s^j|| - P_t^j / ||P_t^j|| ||`` over the listed (student, teacher)
  pairs, with ``P = F F^T`` per head (``similarity_matrix``) and ``||.||`` the l2
  (Frobenius) norm of the whole tensor (batch, heads, tokens, tokens): normalised over
  the batch, not per row or per example, and the difference norm not squared. BiBERT
  pairs ``F`` in {Q, K, V} of each student layer with the teacher layer mapped to it (the
  last of each block, see ``uniform_layer_map``), the activations before they are
  binarized; the caller lists the pairs (e.g. ``[q_s1, k_s1, v_s1, q_s2, ...]``). Student
  and teacher must have the same number of heads and tokens. Padded tokens are included,
  as in the code.

  The norms span the batch, so with ``axis_name`` they are over the global batch (sums of
  squares ``psum``-ed over devices): the value is the full-batch value on every device,
  and the ``pmean`` of per-device gradients is the full-batch gradient (tested). A zero
  matrix is divided by 1e-12 instead of 0 (the code divides by its norm directly), and the
  difference norm has gradient 0, not NaN, at 0.
  """
  if len(student_features) != len(teacher_features):
    raise ValueError(f'{len(student_features)} student features but {len(teacher_features)} '
                     'teacher features: they pair one to one.')
  total = jnp.float32(0.0)
  for s, t in zip(student_features, teacher_features):
    ps, pt = similarity_matrix(s), similarity_matrix(t)
    _check_same_shapes('direction_matching_loss', ps, pt)
    ps = ps * jax.lax.rsqrt(jnp.maximum(_psum(jnp.sum(ps * ps), axis_name),
                                        _NORMALIZE_EPS ** 2))
    pt = pt * jax.lax.rsqrt(jnp.maximum(_psum(jnp.sum(pt * pt), axis_name),
                                        _NORMALIZE_EPS ** 2))
    d2 = _psum(jnp.sum((ps - pt) ** 2), axis_name)
    positive = d2 > 0
    total = total + jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)
  return total


# ----------------------------------------------------------------------------- student init
_LAYER_KEY = re.compile(r'layer_(\d+)$')


def distilbert_layers(teacher_layers: int, student_layers: int | None = None):
  """The teacher layers (0-based) a DistilBERT student starts from: one layer out of two
  (Sanh et al. 2019, section 3), counted from both ends so the first and last are kept, as
  the official script's hard-coded ``[0, 2, 4, 7, 9, 11]`` for 12 -> 6: the first
  ``ceil(M/2)`` are 0, 2, 4, ..., the other ``floor(M/2)`` end at N - 1 in steps of 2.
  ``student_layers`` defaults to N // 2 and may be at most (N + 2) // 2."""
  n = teacher_layers
  m = n // 2 if student_layers is None else student_layers
  if not (isinstance(n, int) and isinstance(m, int) and 0 < m and 2 * m <= n + 2):
    raise ValueError(f'one layer out of two needs 0 < M <= (N + 2) / 2, got M={m} student and '
                     f'N={n} teacher layers; pass the layers to keep explicitly.')
  first = (m + 1) // 2
  return tuple(range(0, 2 * first, 2)) + tuple(range(n - 1 - 2 * (m - first - 1), n, 2))


def distilbert_init(teacher_params, student_layers: int | None = None,
                    layers: Sequence[int] | None = None):
  """Student params from a BERT teacher's, as DistilBERT initialises its student
  (extract_distilbert.py): the encoder layers ``layers`` (default
  ``distilbert_layers(N, student_layers)``: [0, 2, 4, 7, 9, 11] of 12) become the student's
  ``layer_0``, ``layer_1``, ...; everything else (``embeddings``, ``pooler``,
  ``classifier``, any other top-level entry) is copied as it is. DistilBERT itself drops
  the token-type embeddings and the pooler; an mcj BERT student keeps both.

  ``teacher_params`` is the ``params`` collection (keys ``layer_{i}``, as
  ``mcj.models.transformers.bert`` names them), or variables holding it under ``params``
  (the result then has the same form). The student is the same model with ``num_layers =
  len(layers)`` (and, for a head-pruned teacher, those layers' ``heads_per_layer``).
  Arrays are shared with the teacher, not copied.
  """
  if not any(_LAYER_KEY.match(str(k)) for k in teacher_params) and 'params' in teacher_params:
    inner = distilbert_init(teacher_params['params'], student_layers, layers)
    return {**dict(teacher_params), 'params': inner}
  found = sorted(int(_LAYER_KEY.match(str(k)).group(1)) for k in teacher_params
                 if _LAYER_KEY.match(str(k)))
  if found != list(range(len(found))) or not found:
    raise ValueError(f'teacher params need encoder layers layer_0 .. layer_{{N-1}}, got '
                     f'{sorted(teacher_params)}.')
  if layers is None:
    layers = distilbert_layers(len(found), student_layers)
  layers = [int(i) for i in layers]
  if not all(0 <= i < len(found) for i in layers):
    raise ValueError(f'layers {layers} are not all among the teacher\'s {len(found)} layers.')
  student = {k: v for k, v in teacher_params.items() if not _LAYER_KEY.match(str(k))}
  for j, i in enumerate(layers):
    student[f'layer_{j}'] = teacher_params[f'layer_{i}']
  return student


# ----------------------------------------------------------------------------- feature plumbing
def pool_embedding(feature):
  """Global average over the grid: (N, H, W, C) or (N, T, C) -> (N, C) float32 (RKD's
  embedding; over H and W for a feature map, over the tokens for a token tensor)."""
  f = _f32(feature)
  return jnp.mean(f, axis=tuple(range(1, f.ndim - 1)))
