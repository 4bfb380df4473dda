"""Regularized evolution and NSGA-II against random search at one evaluation budget, under
a latency limit measured on this machine's CPU.

Commands (README's strategy table: 3 strategies x 3 search seeds; the README's run is the
smaller `candidates=16,population=6,epochs=3,limit=0.85`, one search per core):
  for s in random evolution nsga2; do for seed in 0 1 2; do
    taskset -c 0 python -m mcj.search --config \
        configs/search/strategies.py:strategy=$s,seed=$seed,candidates=16,population=6,epochs=3,limit=0.85 \
        --workdir /tmp/mcj/strategies/${s}_$seed; done; done
  python -m mcj.search --report /tmp/mcj/strategies/*   # best accuracy, hypervolume per search
Data: `digits` (1,437 train / 360 held-out), 4 epochs a candidate (Adam 2e-3, cosine).
Space: Once-for-All's MobileNetV3 space, 'digits' variant.
Objectives: eval/accuracy (max) and batch-1 latency_ms (min, the compiled forward timed on
the first device: median of 20 runs after 3 warm-up calls); constraint latency_ms <=
`limit` (default 0.85 ms: about half of the space's networks on this 2-core x86 CPU, one
thread; set it for your device; candidates over it skip training). Budget: `candidates` (30).
Report: results.json's best accuracy within the limit and the Pareto front's hypervolume
(reference: accuracy 0, the latency limit).
Strategies: random; evolution (population 10, sample 3, Real et al. 2019); nsga2
(population 10, Deb et al. 2002); `population` and `epochs` (a candidate's training)
set a smaller run. Latency is measured: run one search per core (`taskset -c K`) on an
otherwise idle machine.
Variants: `:runlocal` (3 candidates, a few steps: a smoke test).
"""
from mcj.core.config import ConfigError, parse_arg

STRATEGIES = {'random': 'random', 'evolution': 'evolution(population={population}, sample=3)',
              'nsga2': 'nsga2(population={population})'}


def get_config(arg=None):
  arg = parse_arg(arg, strategy='evolution', seed=0, candidates=30, limit=0.85, population=10,
                  epochs=4.0, runlocal=False)
  if arg.strategy not in STRATEGIES:
    raise ConfigError(f'strategy must be one of {", ".join(STRATEGIES)}, got {arg.strategy!r}.')
  config = {
      'seed': arg.seed,
      'space': 'mobilenet_v3(variant="digits")',
      'strategy': STRATEGIES[arg.strategy].format(population=arg.population),
      'evaluators': ('complexity', 'latency(runs=20, throughput_batch=0)', 'train'),
      'objectives': ('eval/accuracy:max', 'latency_ms:min'),
      'constraints': {'latency_ms': arg.limit},
      'budget': {'evaluations': arg.candidates},
      'train': {'seed': 0, 'batch_size': 64, 'total_epochs': arg.epochs, 'data': {'name': 'digits'},
                'optimizer': {'name': 'adam', 'lr': 2e-3, 'weight_decay': 0.0},
                'schedule': {'name': 'cosine'}, 'checkpoint_every_steps': 200},
  }
  if arg.runlocal:
    config.update(space='mobilenet_v3(variant="digits", width_choices=(0.25,), depth_choices=(2,))',
                  budget={'evaluations': 3}, constraints={'latency_ms': 1000.0},
                  evaluators=('complexity', 'latency(runs=3, throughput_batch=0)', 'train'))
    config['train'].update(total_epochs=None, total_steps=3, batch_size=16)
    if arg.strategy != 'random':
      config['strategy'] = arg.strategy + '(population=2' + (', sample=2)' if arg.strategy == 'evolution' else ')')
  return config
