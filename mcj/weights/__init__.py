"""Pretrained weights of other libraries in: a peer's checkpoint file -> an mcj run workdir.

Sources are registered as ``weights_source`` under ``'<library>:<architecture>'``; each
names the mcj model it fills (with the options that make it the peer's architecture), the
layout that maps the peer's layer names onto it (``torchvision.py``, ``timm.py``) and the
peer's classifier layer (whose shape gives the number of classes). ``python -m mcj.weights`` converts; ``convert.py`` fills and writes.
"""
import dataclasses
from typing import Callable

from mcj.core import registry
from mcj.weights import hf
from mcj.weights import larq
from mcj.weights import timm
from mcj.weights import torchvision


@dataclasses.dataclass(frozen=True)
class Source:
  model: str                 # the registered mcj model
  layout: Callable           # mcj param paths -> [(peer prefix, mcj module, kind)]
  classifier: str            # the peer's last linear layer (its weight: (classes, features));
                             # '' for Keras files: the last layer's kernel (features, classes)
  reference: str = ''        # where the peer's weights and their published top-1 are
  options: tuple = ()        # model options the peer's architecture needs: ((key, value),)
  zero_is_plus_one: bool = False  # larq: a latent binary weight 0 computes as sign(0) = +1
  text: bool = False         # a token model: its data block has no image_size
  weights_in: Callable | None = None    # a checkpoint folder -> its weights file
  read_options: Callable | None = None  # the checkpoint -> model options (HF config.json)
  vocab: Callable | None = None         # the checkpoint -> its vocab.txt (or None)

  def num_classes(self, tensors: dict):
    """The class count of the file's classifier (None when the file has none)."""
    if self.classifier:
      weight = tensors.get(f'{self.classifier}.weight')
      return None if weight is None else weight.shape[0]
    kernels = [v for k, v in tensors.items() if k.endswith('/kernel') and v.ndim == 2]
    return kernels[-1].shape[-1] if kernels else None


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
_TIMM = 'timm {} (model.safetensors from the Hugging Face hub; top-1 in timm\'s results table)'
_TIMM_BN = (('bn_epsilon', 1e-5),)  # timm's MobileNetV3: torch's default epsilon
SOURCES.update({
    'timm:resnet18': Source('resnet18', torchvision.resnet, 'fc', _TIMM.format('resnet18')),
    'timm:resnet34': Source('resnet34', torchvision.resnet, 'fc', _TIMM.format('resnet34')),
    'timm:resnet50': Source('resnet50', torchvision.resnet, 'fc', _TIMM.format('resnet50')),
    'timm:mobilenetv2_100': Source('mobilenet_v2', timm.mobilenet_v2, 'classifier',
                                   _TIMM.format('mobilenetv2_100')),
    'timm:mobilenetv3_large_100': Source('mobilenet_v3_large', timm.mobilenet_v3, 'classifier',
                                         _TIMM.format('mobilenetv3_large_100'), _TIMM_BN),
    'timm:mobilenetv3_small_100': Source('mobilenet_v3_small', timm.mobilenet_v3, 'classifier',
                                         _TIMM.format('mobilenetv3_small_100'), _TIMM_BN),
})
_LARQ = 'larq-zoo {} ({} of larq-zoo\'s releases; top-1 {})'
# larq-zoo's Keras versions pad with TensorFlow's 'same' and use Keras's BatchNorm epsilon
# where the papers' code does not (see mcj/models/bnn/binary_resnet.py).
_KERAS_BIREAL = (('padding', 'same'), ('bn_epsilon', 1e-3), ('bn_momentum', 0.8))
_KERAS_R2B = (('padding', 'same'), ('bn_epsilon', 1e-3), ('bn_momentum', 0.99))


def _larq(model, layout, peer, file, top1, options=()):
  return Source(model, layout, '', _LARQ.format(peer, file, top1), options,
                zero_is_plus_one=True)


SOURCES.update({
    'larq_zoo:quicknet_small': _larq('quicknet_small', larq.quicknet, 'QuickNetSmall',
                                     'quicknet_small_weights.h5', '59.4'),
    'larq_zoo:quicknet': _larq('quicknet', larq.quicknet, 'QuickNet', 'quicknet_weights.h5',
                               '63.3'),
    'larq_zoo:quicknet_large': _larq('quicknet_large', larq.quicknet, 'QuickNetLarge',
                                     'quicknet_large_weights.h5', '66.9'),
    'larq_zoo:birealnet18': _larq('birealnet18', larq.binary_resnet, 'BiRealNet',
                                  'birealnet_weights.h5', '57.47', _KERAS_BIREAL),
    'larq_zoo:binary_resnet_e18': _larq('binary_resnet_e18', larq.binary_resnet,
                                        'BinaryResNetE18', 'resnet_e_18_weights.h5', '58.32',
                                        (('padding', 'same'),)),
    'larq_zoo:real_to_binary': _larq('real_to_binary', larq.real_to_binary, 'RealToBinaryNet',
                                     'r2b_weights.h5', '65.01', _KERAS_R2B),
    'larq_zoo:binary_densenet28': _larq('binary_densenet28', larq.binary_densenet,
                                        'BinaryDenseNet28', 'binary_densenet_28_weights.h5',
                                        '60.91'),
    'larq_zoo:binary_densenet37': _larq('binary_densenet37', larq.binary_densenet,
                                        'BinaryDenseNet37', 'binary_densenet_37_weights.h5',
                                        '62.89'),
    'larq_zoo:binary_densenet37_dilated': _larq(
        'binary_densenet37_dilated', larq.binary_densenet, 'BinaryDenseNet37Dilated',
        'binary_densenet_37_dilated_weights.h5', '64.34'),
    'larq_zoo:binary_densenet45': _larq('binary_densenet45', larq.binary_densenet,
                                        'BinaryDenseNet45', 'binary_densenet_45_weights.h5',
                                        '64.59'),
    'larq_zoo:meliusnet22': _larq('meliusnet22', larq.meliusnet, 'MeliusNet22',
                                  'meliusnet22_weights.h5', '62.4'),
})
_TIMM_VIT = ('timm {} (model.safetensors from the Hugging Face hub; {}): patch 16, 224x224')
SOURCES.update({
    f'timm:{name}': Source(model, timm.vit, 'head', _TIMM_VIT.format(name, note))
    for name, model, note in [
        ('deit_tiny_patch16_224', 'vit_tiny', 'DeiT top-1 72.2, ImageNet mean/std inputs'),
        ('deit_small_patch16_224', 'vit_small', 'DeiT top-1 79.9, ImageNet mean/std inputs'),
        ('deit_base_patch16_224', 'vit_base', 'DeiT top-1 81.8, ImageNet mean/std inputs'),
        ('vit_tiny_patch16_224', 'vit_tiny', 'AugReg weights: inputs scaled to [-1, 1]'),
        ('vit_small_patch16_224', 'vit_small', 'AugReg weights: inputs scaled to [-1, 1]'),
        ('vit_base_patch16_224', 'vit_base', 'AugReg weights: inputs scaled to [-1, 1]')]})
SOURCES['hf:bert'] = Source(
    'bert_base', hf.bert, 'classifier', 'Hugging Face BERT checkpoint folder (config.json, '
    'model.safetensors or pytorch_model.bin, vocab.txt): bert-base-uncased, '
    'google/bert_uncased_L-*_H-*_A-* (BERT-Tiny ... Base), fine-tuned classifiers',
    text=True, weights_in=hf.weight_file, read_options=hf.config_options, vocab=hf.vocab_file)
registry.add_all('weights_source', SOURCES)
