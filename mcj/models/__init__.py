"""Models by registered name (``registry.get('model', name)``).

``cnn/`` holds the float networks (ResNets, MobileNets), ``bnn/`` the binary zoo,
``transformers/`` BERT and ViT. Each model file registers a table of named variants,
``{'name': constructor}``; a constructor takes ``num_classes`` plus keyword options and
returns a Flax linen module called as ``model.apply(variables, images, train=bool)`` that
returns float32 logits (BERT takes token ids instead of images).
"""
import dataclasses

from mcj.core import registry
from mcj.core.config import ConfigError
from mcj.models.bnn import (binary_densenet, binary_net, binary_resnet, bnext, meliusnet,  # noqa: F401
                            quicknet, reactnet)
from mcj.models.cnn import mobilenet, nb201, resnet  # noqa: F401
from mcj.models.transformers import bert, vit  # noqa: F401


def get_model(name: str, num_classes: int, **options):
  """The registered model ``name``; an unknown name or option is one ConfigError line that
  lists the valid names or the model's real options."""
  build = registry.get('model', name)
  try:
    return build(num_classes=num_classes, **options)
  except TypeError:
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
      raise ConfigError(f'Unknown option {unknown[0]!r} for model {name!r}. '
                        f'Valid: {", ".join(valid)}.') from None
    raise


def model_options(name: str) -> list[str]:
  """The keyword options model ``name`` takes (its module's fields, except Flax's own)."""
  build = registry.get('model', name)
  cls = getattr(build, 'func', build)
  fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ('parent', 'name')]
  return sorted(fields)
