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

Feature losses: ``fn(student_stages, teacher_stages, *, config, adapters, teacher_index,
axis_name) -> scalar`` with the stage dicts of ``features.apply_with_features`` and
``adapters`` the trained adapter parameters (``Distiller.init_adapters``; keys
``teacher{k}_stage{j}``). Info:

* ``pairs``: it compares paired stages (``features.paired_stages``), so the models must
  share a grid (checked when the Distiller is built);
* ``layouts``: the tap layouts it applies to (``features.IMAGE``: NHWC maps,
  ``features.TOKENS``: (batch, tokens, features)); others are a ConfigError at build time;
* ``adapter``: ``(student_shape, teacher_shape) -> flax module`` for a trained adapter
  per paired stage (FitNets' regressor), or absent.
"""
from mcj.compress.distill import features as features_lib
from mcj.compress.distill import losses
from mcj.core import registry

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
