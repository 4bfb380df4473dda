"""Pretrained weights of other libraries in: a peer's checkpoint file -> an mcj run workdir.

Sources are registered as ``weights_source`` under ``'<library>:<architecture>'``; each
names the mcj model it fills, the layout that maps the peer's layer names onto it
(``torchvision.py``) and the peer's classifier layer (whose shape gives the number of
classes). ``python -m mcj.weights`` converts; ``convert.py`` fills and writes.
"""
import dataclasses
from typing import Callable

from mcj.core import registry
from mcj.weights import torchvision


@dataclasses.dataclass(frozen=True)
class Source:
  model: str                 # the registered mcj model
  layout: Callable           # mcj param paths -> [(peer prefix, mcj module, kind)]
  classifier: str            # the peer's last linear layer (its weight: (classes, features))
  reference: str = ''        # where the peer's weights and their published top-1 are


_TV = 'torchvision.models ({}, IMAGENET1K_V1 weights: top-1 {})'
SOURCES = {
    'torchvision:resnet18': Source('resnet18', torchvision.resnet, 'fc',
                                   _TV.format('resnet18', '69.758')),
    'torchvision:resnet34': Source('resnet34', torchvision.resnet, 'fc',
                                   _TV.format('resnet34', '73.314')),
    'torchvision:resnet50': Source('resnet50', torchvision.resnet, 'fc',
                                   _TV.format('resnet50', '76.130')),
    'torchvision:mobilenet_v2': Source('mobilenet_v2', torchvision.mobilenet_v2, 'classifier.1',
                                       _TV.format('mobilenet_v2', '71.878')),
    'torchvision:mobilenet_v3_large': Source(
        'mobilenet_v3_large', torchvision.mobilenet_v3, 'classifier.3',
        _TV.format('mobilenet_v3_large', '74.042')),
    'torchvision:mobilenet_v3_small': Source(
        'mobilenet_v3_small', torchvision.mobilenet_v3, 'classifier.3',
        _TV.format('mobilenet_v3_small', '67.668')),
}
registry.add_all('weights_source', SOURCES)
