"""Frozen teachers and the distillation objective of the trainer's ``distill`` block.

A teacher is a registered model plus the weights of an mcj workdir (or checkpoint). The
trainer loads every teacher once, replicates its variables over the device mesh, and
calls ``Distiller.loss`` inside the same per-device train step as the student: the
teacher sees exactly the student's (augmented, possibly mixed) images, runs in eval mode
with its own compute dtype, and ``stop_gradient`` keeps gradients to the student (and to
FitNet adapters, which train with the student).

Several teachers are an ensemble: the distillation loss is the weighted mean of the loss
to each teacher. For the soft-target losses (``kd``, ``distribution``) this equals
distilling from the weighted mean of the teachers' probabilities, up to a constant.
``start`` / ``end`` (fractions of training) switch teachers on and off, which gives
consecutive teachers over training (BNext); a teacher that is off is not computed
(``lax.cond``).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mcj.core import checkpoint as checkpoint_lib
from mcj.core import registry
from mcj.compress.distill import features as features_lib
from mcj.compress.distill import objectives  # registers the losses
from mcj.core.config import ConfigError

TEACHER_KEYS = {'init_from': '', 'model': None, 'weight': 1.0, 'start': 0.0, 'end': 1.0,
                'compute_dtype': ''}


def teacher_spec(spec, index: int) -> dict:
  """One entry of ``distill.teachers`` with defaults filled in (a plain string is its
  ``init_from``); bad keys are ConfigErrors."""
  where = f'config.distill.teachers[{index}]'
  if isinstance(spec, str):
    spec = {'init_from': spec}
  if not hasattr(spec, 'keys'):
    raise ConfigError(f'{where} is {spec!r}: give a dict of {", ".join(TEACHER_KEYS)} or '
                      "the teacher's workdir.")
  spec = dict(spec)
  unknown = sorted(set(spec) - set(TEACHER_KEYS))
  if unknown:
    raise ConfigError(f'Unknown key {where}.{unknown[0]}. Valid: {", ".join(TEACHER_KEYS)}.')
  spec = {**TEACHER_KEYS, **spec}
  if not spec['init_from']:
    raise ConfigError(f'{where}.init_from is not set: give the teacher\'s mcj workdir or '
                      'checkpoint folder (or "random" for an untrained teacher in benchmarks).')
  if not 0.0 <= spec['start'] < spec['end']:
    raise ConfigError(f'{where}: need 0 <= start < end (fractions of training), got '
                      f'start={spec["start"]}, end={spec["end"]}.')
  if spec['compute_dtype'] not in ('', 'float32', 'bfloat16'):
    raise ConfigError(f'{where}.compute_dtype must be float32 or bfloat16, got '
                      f'{spec["compute_dtype"]!r}.')
  if spec['init_from'] != 'random' and '://' not in spec['init_from'] \
      and not os.path.exists(spec['init_from']):
    raise ConfigError(f'{where}.init_from: {spec["init_from"]} does not exist; give the '
                      'teacher\'s mcj workdir or checkpoint folder.')
  if spec['model'] is None:
    spec['model'] = _model_of_workdir(spec['init_from'], where)
  elif isinstance(spec['model'], str):
    spec['model'] = {'name': spec['model']}
  spec['model'] = dict(spec['model'])
  if not spec['model'].get('name'):
    raise ConfigError(f'{where}.model needs a name.')
  return spec


def _model_of_workdir(path: str, where: str) -> dict:
  """The model block of the run that wrote ``path`` (its workdir's config.json)."""
  if path == 'random':
    raise ConfigError(f'{where}: a random teacher needs its model, e.g. model="resnet34".')
  here = os.path.abspath(path)
  for _ in range(3):  # the workdir, its checkpoints folder, or one step folder
    candidate = os.path.join(here, 'config.json')
    if os.path.exists(candidate):
      with open(candidate) as f:
        return json.load(f)['model']
    here = os.path.dirname(here)
  raise ConfigError(f'{where}: no config.json found at or above {path}; set the teacher\'s '
                    'model, e.g. model={"name": "resnet34"}.')


def _check_layout(name, layouts, what, feature):
  """A ConfigError unless feature loss ``name`` applies to ``feature``'s layout."""
  got = features_lib.layout(feature)
  if got in layouts:
    return
  valid = [n for n in registry.names('feature_loss')
           if got in registry.info('feature_loss', n).get('layouts', ())]
  raise ConfigError(
      f'distill.feature_loss={name!r} applies to {" and ".join(layouts)} features only '
      f'("image": NHWC maps; "tokens": (batch, tokens, features)), but the {what} gives '
      f'{got} features of shape {tuple(feature.shape)}; use {" or ".join(valid)} there.')


class Distiller:
  """Teachers (models and replicated variables) plus the configured losses.

  ``loss`` is per-device code for the trainer's data-parallel step: it returns the
  distillation part of the objective (the label loss stays with the trainer).
  """

  def __init__(self, config, *, get_model, image_shape, num_classes, compute_dtype,
               student, seed, place):
    self.config = config
    # The registered losses (mcj.compress.distill.objectives); unknown names: ConfigError.
    self.logit_loss = registry.get('logit_loss', config.logit_loss) if config.logit_loss \
        else None
    self.feature_loss = registry.get('feature_loss', config.feature_loss) \
        if config.feature_loss else None
    self.feature_info = registry.info('feature_loss', config.feature_loss) \
        if config.feature_loss else {}
    if not (self.logit_loss or self.feature_loss):
      raise ConfigError('config.distill has teachers but no loss: set distill.logit_loss '
                        f'({", ".join(registry.names("logit_loss"))}) and/or '
                        f'distill.feature_loss ({", ".join(registry.names("feature_loss"))}).')
    if (self.logit_loss and config.temperature is not None
        and registry.info('logit_loss', config.logit_loss).get('temperature') is None):
      raise ConfigError(f'distill.temperature={config.temperature} is set but '
                        f'distill.logit_loss={config.logit_loss!r} takes no temperature; '
                        'unset it (None).')
    if (self.logit_loss and num_classes == 1
        and not registry.info('logit_loss', config.logit_loss).get('regression')):
      regression = [n for n in registry.names('logit_loss')
                    if registry.info('logit_loss', n).get('regression')]
      raise ConfigError(f'distill.logit_loss={config.logit_loss!r} compares class '
                        'distributions, and a one-output (regression) task has none: use '
                        f'{" or ".join(map(repr, regression))}.')
    self.needs_features = self.feature_loss is not None
    self.specs = [teacher_spec(s, i) for i, s in enumerate(config.teachers)]
    self.models, self.variables = [], []
    dummy = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
    for i, spec in enumerate(self.specs):
      options = {k: v for k, v in spec['model'].items() if k != 'name'}
      dtype = jnp.dtype(spec['compute_dtype'] or compute_dtype)
      try:
        model = get_model(spec['model']['name'], num_classes=num_classes, dtype=dtype,
                          **options)
      except TypeError as e:
        raise ConfigError(f'Bad option for teacher model {spec["model"]["name"]!r}: {e}.') \
            from None
      abstract = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x, train=False),
                                dummy)
      if spec['init_from'] == 'random':
        variables = jax.jit(lambda x, m=model, k=i: m.init(
            jax.random.fold_in(jax.random.key(seed), 1000 + k), x, train=False))(
                np.zeros(dummy.shape, np.float32))
        variables = jax.tree.map(np.asarray, dict(variables))
      else:
        try:
          loaded = checkpoint_lib.load_variables(spec['init_from'])
        except ConfigError as e:
          raise ConfigError(f'distill.teachers[{i}] ({spec["init_from"]}): {e}') from None
        variables = {'params': checkpoint_lib.fit_variables(
            abstract['params'], loaded['params'], spec['init_from'])}
        if 'batch_stats' in abstract:
          variables['batch_stats'] = checkpoint_lib.fit_variables(
              abstract['batch_stats'], loaded['batch_stats'], spec['init_from'])
      self.models.append(model)
      self.variables.append(place(variables))
    self.adapter_shapes = self._pair_shapes(student, dummy) if self.needs_features else []

  # ------------------------------------------------------------------ set-up helpers
  def _pair_shapes(self, student, dummy):
    """Per teacher, the (student, teacher) feature shapes of the paired stages."""
    def stages(model, variables):
      return features_lib.apply_with_features(model, variables, dummy_arr(dummy),
                                              train=False)[1]

    def dummy_arr(d):
      return jnp.zeros(d.shape, d.dtype)

    student_stages = jax.eval_shape(lambda: stages(
        student, student.init(jax.random.key(0), dummy_arr(dummy), train=False)))
    name, info = self.config.feature_loss, self.feature_info
    layouts = info.get('layouts', (features_lib.IMAGE,))
    shapes = []
    for i, (model, variables) in enumerate(zip(self.models, self.variables)):
      teacher_stages = jax.eval_shape(lambda m=model, v=variables: stages(m, v))
      if not (student_stages and teacher_stages):
        raise ConfigError(f'distill.feature_loss={name!r}: the student or teacher {i} has no '
                          'feature taps (top-level 4-D NHWC or 3-D token outputs).')
      if 'plan' in info:  # sown transformer taps: the loss checks the pair itself
        shapes.append(info['plan'](student_stages, teacher_stages, self.config, i))
        continue
      if info.get('pairs', True):
        pairs = objectives.pairs(student_stages, teacher_stages, self.config)
        if not pairs:
          raise ConfigError(
              f'distill.feature_loss={name!r}: student and teacher {i} share no feature '
              f'grid (student {sorted(student_stages)}, teacher {sorted(teacher_stages)}); '
              'use a logit loss only.')
      else:  # compares each model's deepest output (RKD's embedding)
        pairs = [(features_lib.last_stage(student_stages),
                  features_lib.last_stage(teacher_stages))]
      for s, t in pairs:
        _check_layout(name, layouts, 'student', s)
        _check_layout(name, layouts, f'teacher {i}', t)
      shapes.append([(s.shape, t.shape) for s, t in pairs] if info.get('pairs', True)
                    else [])
    return shapes

  def init_adapters(self, rng):
    """Trained adapters of the feature loss (FitNets' regressors: student channels ->
    teacher channels; TinyBERT's projections W_h), one per paired stage (or per entry of
    the loss's ``plan``); {} for losses without (``adapter`` info)."""
    make = self.feature_info.get('adapter')
    if make is None:
      return {}
    params = {}
    for i, pairs in enumerate(self.adapter_shapes):
      for j, (s_shape, t_shape) in enumerate(pairs):
        adapter = make(s_shape, t_shape)
        params[objectives.adapter_key(i, j)] = adapter.init(
            jax.random.fold_in(rng, 100 * i + j), jnp.zeros((1,) + tuple(s_shape[1:])))['params']
    return params

  # ------------------------------------------------------------------ per-device code
  def teacher_outputs(self, variables, images, k):
    """Teacher ``k``'s float32 logits (and stage features), with no gradient."""
    model = self.models[k]
    if self.needs_features:
      logits, stages = features_lib.apply_with_features(model, variables, images, train=False)
      if 'plan' not in self.feature_info:  # grid losses: the sown taps are not carried
        stages.pop(features_lib.SOWN, None)
    else:
      logits, stages = model.apply(variables, images, train=False), {}
    return jax.lax.stop_gradient((logits.astype(jnp.float32), jax.tree.map(
        lambda f: f.astype(jnp.float32), stages)))

  def loss(self, student_logits, student_stages, teacher_variables, adapter_params, images,
           progress, axis_name):
    """Weighted mean over the active teachers of the configured distillation losses.

    ``progress`` is the fraction of training done (a traced scalar); the result is a scalar
    and a dict of per-term metrics.
    """
    c = self.config
    total, weight_sum, terms = 0.0, 0.0, {}
    for k, spec in enumerate(self.specs):
      compute = lambda k=k: self.teacher_outputs(teacher_variables[k], images, k)
      if spec['start'] <= 0.0 and spec['end'] >= 1.0:
        weight, (t_logits, t_stages) = spec['weight'], compute()
      else:
        on = (progress >= spec['start']) & (progress < spec['end'])
        weight = on.astype(jnp.float32) * spec['weight']
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(compute))
        t_logits, t_stages = jax.lax.cond(on, compute, lambda z=zeros: z)
      loss_k = {}
      if self.logit_loss is not None:
        loss_k['distill/logit_loss'] = self.logit_loss(student_logits, t_logits, c, axis_name)
        total = total + weight * c.logit_weight * loss_k['distill/logit_loss']
      if self.feature_loss is not None:
        loss_k['distill/feature_loss'] = self.feature_loss(
            student_stages, t_stages, config=c, adapters=adapter_params, teacher_index=k,
            axis_name=axis_name)
        total = total + weight * c.feature_weight * loss_k['distill/feature_loss']
      for name, value in loss_k.items():
        terms[name] = terms.get(name, 0.0) + weight * value
      weight_sum = weight_sum + weight
    weight_sum = jnp.maximum(weight_sum, 1e-12)  # no teacher active: the loss is 0
    return total / weight_sum, {k: v / weight_sum for k, v in terms.items()}
