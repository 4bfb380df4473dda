"""The distillation losses a config names, registered with the one registry.

``distill.logit_loss`` names a ``'logit_loss'`` entry, ``distill.feature_loss`` a
``'feature_loss'`` entry; ``teachers.Distiller`` looks both up and has no per-loss code.
The formulas are in ``losses`` (pure functions, tested against numpy); an entry here reads
its options from the config block and calls them. Adding a loss is one function and its
``@registry.register``.

Logit losses: ``fn(student_logits, teacher_logits, config, axis_name) -> scalar``, with
``config`` the ``distill`` block and ``axis_name`` the device axis (None off pmap). Info:

* ``temperature``: the loss's own default temperature, used while ``distill.temperature``
  is None (an explicit value applies to whichever loss is chosen); None for a loss that
  takes no temperature (setting one then is a ConfigError).
* ``regression``: True for a loss that fits a one-output (regression) model; the others
  compare softmax distributions and are refused for it.

Feature losses: ``fn(student_stages, teacher_stages, *, config, adapters, teacher_index,
axis_name) -> scalar`` with the stage dicts of ``features.apply_with_features`` and
``adapters`` the trained adapter parameters (``Distiller.init_adapters``; keys
``teacher{k}_stage{j}``). Info:

* ``pairs``: it compares paired stages (``features.paired_stages``), so the models must
  share a grid (checked when the Distiller is built);
* ``layouts``: the tap layouts it applies to (``features.IMAGE``: NHWC maps,
  ``features.TOKENS``: (batch, tokens, features)); others are a ConfigError at build time;
* ``adapter``: ``(student_shape, teacher_shape) -> flax module`` for a trained adapter
  per paired stage (FitNets' regressor), or absent;
* ``plan``: ``(student_stages, teacher_stages, config, teacher_index) -> [(student_shape,
  teacher_shape)]``, for a loss that reads the sown transformer taps
  (``features.transformer_taps``) rather than paired grids: it checks that the two models
  fit the loss (a ConfigError otherwise) and returns the shapes of its adapters, one
  adapter per entry (``adapter_key(teacher_index, j)`` for the j-th).

Transformer distillation (``tinybert``, ``dmd``) pairs layers with TinyBERT's uniform
mapping ``g(m) = m N / M`` (``losses.uniform_layer_map``; M student and N teacher layers,
M dividing N): hidden state m (0: the embedding output) with the teacher's g(m), and the
per-layer tensors of student layer m with those of teacher layer g(m), the last of each
block of N / M layers. ``soft_ce`` is TinyBERT's prediction-layer loss.
"""
import jax
import jax.numpy as jnp

from mcj.compress.distill import features as features_lib
from mcj.compress.distill import losses
from mcj.core import registry
from mcj.core.config import ConfigError

BOTH = (features_lib.IMAGE, features_lib.TOKENS)


def temperature(config, name: str):
  """The temperature logit loss ``name`` uses: ``distill.temperature``, or the loss's own
  default (its ``temperature`` info) when that is None."""
  if config.temperature is not None:
    return config.temperature
  return registry.info('logit_loss', name)['temperature']


def adapter_key(teacher_index: int, stage_index: int) -> str:
  return f'teacher{teacher_index}_stage{stage_index}'


def pairs(student_stages, teacher_stages, config):
  """The (student, teacher) stage pairs the config selects."""
  return features_lib.paired_stages(student_stages, teacher_stages, config.feature_stages,
                                    config.feature_blocks)


# ----------------------------------------------------------------------------- logit losses
@registry.register('logit_loss', 'kd', temperature=4.0)
def kd(student_logits, teacher_logits, config, axis_name=None):
  """Hinton et al. 2015, at T = 4 unless ``distill.temperature`` is set."""
  del axis_name  # per-example
  return losses.hinton_kd(student_logits, teacher_logits,
                          temperature=temperature(config, 'kd'))


@registry.register('logit_loss', 'distribution', temperature=None)
def distribution(student_logits, teacher_logits, config, axis_name=None):
  """ReActNet's distributional loss (cross-entropy to the teacher's softmax, T = 1)."""
  del config, axis_name
  return losses.distribution_loss(student_logits, teacher_logits)


@registry.register('logit_loss', 'dist', temperature=1.0)
def dist(student_logits, teacher_logits, config, axis_name=None):
  """DIST (Huang et al. 2022): tau = 1 (the paper's ImageNet setting) unless
  ``distill.temperature`` is set (CIFAR-100 uses 4); ``dist_beta`` / ``dist_gamma``."""
  return losses.dist_loss(student_logits, teacher_logits,
                          temperature=temperature(config, 'dist'), beta=config.dist_beta,
                          gamma=config.dist_gamma, axis_name=axis_name)


@registry.register('logit_loss', 'soft_ce', temperature=1.0)
def soft_ce(student_logits, teacher_logits, config, axis_name=None):
  """TinyBERT's prediction-layer loss (eq. 9): ``CE(softmax(z^T / t), softmax(z^S / t))``,
  no ``t^2`` factor, t = 1 unless ``distill.temperature`` is set (BiT and BiBERT use it at
  t = 1; their codes' ``soft_cross_entropy`` also averages over the classes, i.e. divides
  this by the number of classes)."""
  del axis_name  # per-example
  return losses.tinybert_prediction_loss(student_logits, teacher_logits,
                                         temperature=temperature(config, 'soft_ce'))


@registry.register('logit_loss', 'mse', temperature=None, regression=True)
def mse(student_logits, teacher_logits, config, axis_name=None):
  """Mean squared error of the logits (TinyBERT's prediction-layer loss for a regression
  task such as STS-B: the one output against the teacher's); also usable on classes."""
  del config, axis_name  # per-example
  return losses.logit_mse(student_logits, teacher_logits)


# ----------------------------------------------------------------------------- feature losses
def _fitnet_adapter(student_shape, teacher_shape):
  del student_shape
  return losses.FitNetAdapter(features=teacher_shape[-1])


@registry.register('feature_loss', 'fitnet', pairs=True, layouts=BOTH,
                   adapter=_fitnet_adapter)
def fitnet(student_stages, teacher_stages, *, config, adapters, teacher_index,
           axis_name=None):
  """FitNets: each paired student stage through its regressor, MSE to the teacher's,
  summed over the pairs."""
  del axis_name  # per-example
  total = 0.0
  for j, (s, t) in enumerate(pairs(student_stages, teacher_stages, config)):
    adapter = _fitnet_adapter(s.shape, t.shape)
    adapted = adapter.apply({'params': adapters[adapter_key(teacher_index, j)]}, s)
    total = total + losses.fitnet_loss(adapted, t)
  return total


@registry.register('feature_loss', 'at', pairs=True, layouts=(features_lib.IMAGE,))
def at(student_stages, teacher_stages, *, config, adapters, teacher_index, axis_name=None):
  """Attention transfer on the paired stages (beta = 1000, p = 2)."""
  del adapters, teacher_index, axis_name
  students, teachers = zip(*pairs(student_stages, teacher_stages, config))
  return losses.attention_transfer(students, teachers)


@registry.register('feature_loss', 'real_to_binary', pairs=True,
                   layouts=(features_lib.IMAGE,))
def real_to_binary(student_stages, teacher_stages, *, config, adapters, teacher_index,
                   axis_name=None):
  """Real-to-Binary attention matching on the paired stages."""
  del adapters, teacher_index, axis_name
  students, teachers = zip(*pairs(student_stages, teacher_stages, config))
  return losses.real_to_binary_attention(students, teachers)


@registry.register('feature_loss', 'rkd', pairs=False, layouts=BOTH)
def rkd(student_stages, teacher_stages, *, config, adapters, teacher_index, axis_name=None):
  """RKD on each model's pooled deepest output (its embedding; no shared grid needed),
  relations over the global batch."""
  del adapters, teacher_index
  s = losses.pool_embedding(features_lib.last_stage(student_stages))
  t = losses.pool_embedding(features_lib.last_stage(teacher_stages))
  return losses.rkd_loss(s, t, distance_weight=config.rkd_distance_weight,
                         angle_weight=config.rkd_angle_weight, axis_name=axis_name)


# ----------------------------------------------------------------------------- transformer layers
PROJECTIONS = ('layer', 'shared', 'none')


def _layers(name, student_stages, teacher_stages, need):
  """``(student taps, teacher taps, g)``: both models' ``features.transformer_taps`` and
  the uniform layer map; a ConfigError when a model lacks the taps ``need`` in every layer
  or the layer counts do not map."""
  taps = []
  for who, stages in (('student', student_stages), ('teacher', teacher_stages)):
    t = features_lib.transformer_taps(stages)
    layers = len(t['hidden']) - 1
    if layers < 1 or any(len(t[k]) != layers for k in need):
      raise ConfigError(
          f'distill.feature_loss={name!r} needs transformers that sow their hidden states '
          f'and every layer\'s {", ".join(need)} (mcj\'s bert_* models, every layer with '
          f'heads); the {who} sows {len(t["hidden"])} hidden states and '
          + ', '.join(f'{len(t[k])} {k}' for k in need) + '.')
    taps.append(t)
  try:
    g = losses.uniform_layer_map(len(taps[0]['hidden']) - 1, len(taps[1]['hidden']) - 1)
  except ValueError as e:
    raise ConfigError(f'distill.feature_loss={name!r}: {e}') from None
  return taps[0], taps[1], g


def _same_shape(name, what, s, t, axes, meaning):
  if tuple(s.shape[a] for a in axes) != tuple(t.shape[a] for a in axes):
    raise ConfigError(f'distill.feature_loss={name!r} compares {what} of the same {meaning}; '
                      f'got student {tuple(s.shape)} and teacher {tuple(t.shape)}.')


def _tinybert_plan(student_stages, teacher_stages, config, teacher_index):
  del teacher_index
  if config.tinybert_projection not in PROJECTIONS:
    raise ConfigError(f'distill.tinybert_projection must be one of {", ".join(PROJECTIONS)}, '
                      f'got {config.tinybert_projection!r}.')
  need = ('scores',) if config.tinybert_attention_weight else ()
  s, t, g = _layers('tinybert', student_stages, teacher_stages, need)
  pairs = [(s['hidden'][m], t['hidden'][g[m]]) for m in range(len(g))]
  if need:
    for m in range(1, len(g)):
      _same_shape('tinybert', 'attention scores', s['scores'][m - 1], t['scores'][g[m] - 1],
                  (1, 2, 3), 'heads and tokens (or set distill.tinybert_attention_weight=0)')
  if config.tinybert_projection == 'none':
    for hs, ht in pairs:
      _same_shape('tinybert', 'hidden states without a projection', hs, ht, (1, 2),
                  "tokens and width (or set distill.tinybert_projection='layer')")
    return []
  return [(hs.shape, ht.shape) for hs, ht in
          (pairs if config.tinybert_projection == 'layer' else pairs[:1])]


def _projection(adapters, teacher_index, j):
  """(kernel, bias) of adapter j: W_h and its bias (the code's ``fit_dense``)."""
  regressor = adapters[adapter_key(teacher_index, j)]['regressor']
  return regressor['kernel'], regressor['bias']


@registry.register('feature_loss', 'tinybert', adapter=_fitnet_adapter, plan=_tinybert_plan)
def tinybert(student_stages, teacher_stages, *, config, adapters, teacher_index,
             axis_name=None):
  """TinyBERT's intermediate-layer distillation (Jiao et al. 2020, eq. 6-8 and 10 with
  lambda = 1) under the uniform mapping g:

    L_embd(E^S W_0, E^T) + sum_{m=1..M} [ w_attn L_attn(A^S_m, A^T_g(m))
                                          + L_hidn(H^S_m W_m, H^T_g(m)) ]

  with L_attn the MSE of the pre-softmax scores (``losses.tinybert_attention_loss``: padded
  keys set to 0 on both sides), L_hidn / L_embd the MSE after the learned projection
  (``losses.tinybert_hidden_loss`` / ``_embedding_loss``), ``w_attn =
  distill.tinybert_attention_weight``. Projections (``distill.tinybert_projection``):
  ``'layer'`` a W (with bias) per hidden-state pair (W_0 is the paper's W_e); ``'shared'``
  one for all, the official code's ``fit_dense`` (the paper's eq. 7 writes one W_h for the
  layers and a W_e of its own); ``'none'`` no projection, equal widths: with
  ``tinybert_attention_weight=0`` it is BiT's ``distill_rep`` loss, the sum of the hidden
  states' MSEs (its student has the teacher's depth, so g is the identity). Per example:
  the per-device means average to the global batch's (``pmean``), so no ``axis_name``."""
  del axis_name
  c = config
  s, t, g = _layers('tinybert', student_stages, teacher_stages,
                    ('scores',) if c.tinybert_attention_weight else ())

  def hidden(m):
    if c.tinybert_projection == 'none':
      return losses.fitnet_loss(s['hidden'][m], t['hidden'][g[m]])
    kernel, bias = _projection(adapters, teacher_index,
                               m if c.tinybert_projection == 'layer' else 0)
    fn = losses.tinybert_embedding_loss if m == 0 else losses.tinybert_hidden_loss
    return fn(s['hidden'][m], t['hidden'][g[m]], kernel, bias)

  total = hidden(0)
  for m in range(1, len(g)):
    total = total + hidden(m)
    if c.tinybert_attention_weight:
      total = total + c.tinybert_attention_weight * losses.tinybert_attention_loss(
          s['scores'][m - 1], t['scores'][g[m] - 1])
  return total


def direction_distance(student, teacher, axis_name=None):
  """BiBERT's code's ``att_loss_r2b`` on raw tensors: ``|| S / ||S|| - T / ||T|| ||``, the
  l2 (Frobenius) norms over the whole tensors, the batch included (so with ``axis_name``
  over the global batch: sums of squares ``psum``-ed), the difference norm not squared; a
  zero tensor is divided by 1e-12, and the norm of a zero difference has gradient 0. Its
  hidden-state term (``--intermediate_distill``) on (batch, tokens, d) tensors of equal
  shape."""
  def psum(x):
    return x if axis_name is None else jax.lax.psum(x, axis_name)

  def unit(x):
    x = jnp.asarray(x).astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(psum(jnp.sum(x * x)), 1e-24))

  d2 = psum(jnp.sum((unit(student) - unit(teacher)) ** 2))
  positive = d2 > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def _dmd_plan(student_stages, teacher_stages, config, teacher_index):
  del teacher_index
  s, t, g = _layers('dmd', student_stages, teacher_stages, ('query', 'key', 'value'))
  for m in range(1, len(g)):
    for name in ('query', 'key', 'value'):
      _same_shape('dmd', f'{name} similarity matrices', s[name][m - 1], t[name][g[m] - 1],
                  (1, 2), 'tokens and heads')
  if config.dmd_hidden_weight:
    for m in range(len(g)):
      _same_shape('dmd', 'hidden-state directions', s['hidden'][m], t['hidden'][g[m]],
                  (1, 2), 'tokens and width (or set distill.dmd_hidden_weight=0)')
  return []


@registry.register('feature_loss', 'dmd', plan=_dmd_plan)
def dmd(student_stages, teacher_stages, *, config, adapters, teacher_index, axis_name=None):
  """BiBERT's Direction-Matching Distillation (Qin et al. 2022, section 3.3; the official
  code's ``--query_distill --key_distill --value_distill``) under the uniform mapping g:

    sum_{m=1..M} sum_{F in Q, K, V} || P^S_m(F) / ||P^S_m(F)|| - P^T_g(m)(F) / ||P^T_g(m)(F)|| ||
    + w_hid sum_{m=0..M} direction_distance(H^S_m, H^T_g(m))

  with ``P(F) = F F^T`` per head over the tokens (``losses.direction_matching_loss``), F the
  activations before they are binarized, and ``w_hid = distill.dmd_hidden_weight`` the
  code's hidden-state term (``--intermediate_distill``, on in its scripts). The norms span
  the batch: with ``axis_name`` over the global batch, so the value does not depend on the
  device count."""
  del adapters, teacher_index
  s, t, g = _layers('dmd', student_stages, teacher_stages, ('query', 'key', 'value'))
  students = [s[name][m - 1] for m in range(1, len(g)) for name in ('query', 'key', 'value')]
  teachers = [t[name][g[m] - 1] for m in range(1, len(g)) for name in ('query', 'key', 'value')]
  total = losses.direction_matching_loss(students, teachers, axis_name=axis_name)
  if config.dmd_hidden_weight:
    for m in range(len(g)):
      total = total + config.dmd_hidden_weight * direction_distance(
          s['hidden'][m], t['hidden'][g[m]], axis_name)
  return total
