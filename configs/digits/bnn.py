"""A Bi-Real-style binary ResNet-20 and its float twin on scikit-learn's offline `digits`.

Commands (one run; the README table comes from the sweep over both twins and 3 seeds):
  python -m mcj.train --config configs/digits/bnn.py --workdir /tmp/mcj/digits_bnn
  python -m mcj.train --config configs/digits/bnn.py:twin=float --workdir /tmp/mcj/digits_float
  python -m mcj.sweep --config configs/digits/bnn.py --grid twin=binary,float --seeds 0,1,2 \\
      --workdir /tmp/mcj/digits_sweep
Data: `digits`, 1,437 train / 360 held-out test images (8x8 grey).
Hardware: any CPU; about a minute a run on 2 cores.
Model: `binary_resnet20` (the 16-32-64 CIFAR ResNet-20 with a real-valued shortcut around
every 3x3 conv, as Bi-Real Net, Liu et al. 2018) with Bi-Real's quantizers: ApproxSign
activations and magnitude-aware sign weights (sign(W) x per-channel mean|W|); the first
conv and the classifier stay float. `twin=float` is the same network with both quantizers
off: same params, 32-bit everything.
Recipe (both twins): Adam, lr 2e-3 with a 2-epoch warmup and cosine decay, no weight decay
(binary latent weights are not decayed in the Bi-Real / ReActNet recipes), 60 epochs at
batch 128.
Expected: see README ("Binary vs float on digits") for the measured table.
Variants: `:runlocal` trains for a few steps only (a smoke test).
"""
from mcj.core.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, twin='binary', runlocal=False)
  if arg.twin not in ('binary', 'float'):
    from mcj.core.config import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f'twin must be binary or float, got {arg.twin!r}.')
  binary = arg.twin == 'binary'
  return {
      'seed': 0,
      'batch_size': 128,
      'total_epochs': 2.0 if arg.runlocal else 60.0,
      'model': {'name': 'binary_resnet20',
                'input_quantizer': 'approx_sign' if binary else None,
                'kernel_quantizer': 'ste_sign' if binary else None,
                'kernel_scale': 'xnor' if binary else 'none'},
      'data': {'name': 'digits'},
      'optimizer': {'name': 'adam', 'lr': 2e-3, 'weight_decay': 0.0},
      'schedule': {'name': 'cosine', 'warmup_epochs': 2.0},
      'log_every_steps': 10 if arg.runlocal else 100,
      'eval_every_steps': 0,
      'checkpoint_every_steps': 500,
  }
