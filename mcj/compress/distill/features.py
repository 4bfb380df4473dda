"""Intermediate features of any model, taken without rewriting it.

Feature-based distillation (FitNets, attention transfer, Real-to-Binary, RKD) needs the
output of each stage of the student and the teacher. Every mcj model is a Flax module
whose top-level children are its blocks (or, for the DenseNet-style nets, its layers), so a
method interceptor records each top-level child's 4-D output in call order, grouped by
spatial resolution; the last output at each resolution is that stage's output. Teacher and
student see the same images, so their stages pair up by resolution, whatever their
architectures; within a stage, block outputs pair up from the last one backwards.
"""
import flax.linen as nn


def apply_with_features(model, variables, images, **apply_kwargs):
  """``(model.apply(...), stages)``: stages maps (H, W) to the list of 4-D outputs of
  top-level children at that resolution, in call order. (jax orders dict keys itself, so
  the functions below sort resolutions by size.)"""
  outputs = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == '__call__' and len(context.module.path) == 1
        and getattr(out, 'ndim', 0) == 4):
      outputs.append(out)
    return out

  with nn.intercept_methods(record):
    result = model.apply(variables, images, **apply_kwargs)
  stages = {}
  for out in outputs:
    stages.setdefault(tuple(out.shape[1:3]), []).append(out)
  return result, stages


def _by_size(resolutions):
  return sorted(resolutions, key=lambda hw: -hw[0] * hw[1])  # highest resolution first


def paired_stages(student_stages: dict, teacher_stages: dict, count: int,
                  blocks: bool = False):
  """(student, teacher) feature pairs at the ``count`` deepest resolutions both models
  have (``count`` <= 0: all), shallow to deep: each stage's last output, or with
  ``blocks`` n evenly spaced outputs ending with the last, n the smaller of the two models'
  counts there (a Bi-Real stage's 4 conv outputs pair with a ResNet stage's 2 blocks as
  2nd and 4th)."""
  shared = _by_size(k for k in student_stages if k in teacher_stages)
  if count > 0:
    shared = shared[-count:]
  pairs = []
  for k in shared:
    s, t = student_stages[k], teacher_stages[k]
    n = min(len(s), len(t)) if blocks else 1
    pairs.extend(zip(_spaced(s, n), _spaced(t, n)))
  return pairs


def _spaced(outputs, n):
  return [outputs[round((j + 1) * len(outputs) / n) - 1] for j in range(n)]


def last_stage(stages: dict):
  """The model's deepest 4-D output (what its classifier pools)."""
  return stages[_by_size(stages)[-1]][-1]
