"""Models by registered name.

Each model file exports ``MODELS``, a dict from name to a constructor that takes
``num_classes`` plus keyword options and returns a Flax linen module called as
``model.apply(variables, images, train=bool)`` and returning float32 logits.
"""
from mcj.config import ConfigError
from mcj.models import (binary_densenet, binary_resnet, bnext, meliusnet, mobilenet, quicknet,
                        reactnet, resnet)

MODELS = {**resnet.MODELS, **mobilenet.MODELS, **binary_resnet.MODELS, **binary_densenet.MODELS,
          **meliusnet.MODELS, **quicknet.MODELS, **reactnet.MODELS, **bnext.MODELS}


def get_model(name: str, num_classes: int, **kwargs):
  """Returns the registered model ``name``; unknown names list the valid ones."""
  if name not in MODELS:
    raise ConfigError(f"Unknown model {name!r}. Available: {', '.join(sorted(MODELS))}.")
  return MODELS[name](num_classes=num_classes, **kwargs)
