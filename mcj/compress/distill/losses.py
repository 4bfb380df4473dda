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
"""
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


# ----------------------------------------------------------------------------- feature plumbing
def pool_embedding(feature):
  """Global average over the grid: (N, H, W, C) or (N, T, C) -> (N, C) float32 (RKD's
  embedding; over H and W for a feature map, over the tokens for a token tensor)."""
  f = _f32(feature)
  return jnp.mean(f, axis=tuple(range(1, f.ndim - 1)))
