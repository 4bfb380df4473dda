"""A small Vision Transformer on scikit-learn's offline `digits`: patch 2 on 8x8 images.

Commands:
  python -m mcj.train --config configs/digits/vit.py --workdir /tmp/mcj/digits_vit
  python -m mcj.train --config configs/digits/vit.py:bits=1 --workdir /tmp/mcj/digits_vit_b1
  python -m mcj.summary --config configs/digits/vit.py:bits=1
Data: `digits`, 1,437 train / 360 held-out test images (8x8 grey).
Hardware: any CPU; under two minutes a run on 2 cores.
Model: `vit_tiny_patch2` (timm / DeiT's ViT: 2x2 patches, so 16 patch tokens and a class
token; pre-LN blocks, learned position embedding, class-token head) narrowed to 4 blocks of
width 64 with 4 heads: ~0.2M params.
Precision (`bits`): 32 (default) is the float model. `bits=1` binarizes every block's
linear layers (ApproxSign inputs, sign weights x per-channel mean|W|) and both attention
products with BiT's two-set scheme (Liu et al. 2022): the signed Q, K and V through a
sign, the non-negative softmax probabilities to {0, s} with a learned s
(`lsq(bits=1, signed=False)`, BiT's elastic binarization without its shift); the patch
embedding and the head stay float. `bits=8`: LSQ 8-bit (Esser et al. 2020) weights,
activations and attention operands.
Recipe (DeiT's, scaled down): AdamW, lr 2e-3 with a 5-epoch warmup and cosine decay,
weight decay 0.05, label smoothing 0.1, dropout 0.1 and stochastic depth 0.1 (without
them the float model fits the training set and tests 2 points lower), 60 epochs at batch
128, digits' default augmentation.
Expected (seed 0, one run each): float 0.956 test accuracy, `bits=8` 0.964, `bits=1` 0.886
(196,608 binary params, 99.9% of the 3.5M MACs binary); the architecture is described in
mcj/models/transformers/vit.py.
`teacher=DIR`: Hinton KD from the float run in DIR (T = 4, weights 0.5 / 0.5), e.g.
  python -m mcj.train --config configs/digits/vit.py:bits=1,teacher=/tmp/mcj/digits_vit \
      --workdir /tmp/mcj/digits_vit_b1_kd
Variants: `:runlocal` trains for a few steps only (a smoke test).
"""
from mcj.core.config import ConfigError, parse_arg
from mcj.models.transformers import precision



def get_config(arg=None):
  arg = parse_arg(arg, bits=32, teacher='', runlocal=False)
  try:
    quantized = precision.options(arg.bits)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  config = {
      'seed': 0,
      'batch_size': 128,
      'total_epochs': 2.0 if arg.runlocal else 60.0,
      'model': {'name': 'vit_tiny_patch2', 'num_layers': 4, 'hidden_size': 64,
                'num_heads': 4, 'dropout_rate': 0.1, 'drop_path_rate': 0.1,
                **quantized},
      'data': {'name': 'digits'},
      'optimizer': {'name': 'adamw', 'lr': 2e-3, 'weight_decay': 0.05},
      'schedule': {'name': 'cosine', 'warmup_epochs': 5.0},
      'label_smoothing': 0.1,
      'log_every_steps': 10 if arg.runlocal else 100,
      'eval_every_steps': 0,
      'checkpoint_every_steps': 500,
  }
  if arg.teacher:
    config['distill'] = {'teachers': ({'init_from': arg.teacher},), 'label_weight': 0.5,
                         'logit_loss': 'kd', 'logit_weight': 0.5, 'temperature': 4.0}
  return config
