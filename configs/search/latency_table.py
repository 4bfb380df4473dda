"""The per-block latency lookup table against measured latency on this machine's CPU
(nn-Meter's figures: mean absolute percentage error and the share within +-10%).

Command (README's latency-table figures):
  python -m mcj.search --config configs/search/latency_table.py --workdir /tmp/mcj/lut
Space: Once-for-All's MobileNetV3 space, 'digits' variant (`:variant=mnist` for 28x28).
Each of `candidates` (default 30) random networks is measured whole (the compiled batch-1
inference forward: median of 20 runs after 3 warm-up calls) and predicted from the table
(each distinct block measured once, the same way; the fixed cost of one call counted
once). results.json's `latency_table` holds MAPE and the share within 10%. No training.
Reference: nn-Meter (kernel-level predictors) reports 99.0% within +-10% on a Cortex-A76
CPU. Run it on an otherwise idle machine: latency is measured.
Variants: `:runlocal` (3 networks of a narrow slice, few runs: a smoke test).
"""
from mcj.core.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, candidates=30, variant='digits', runs=20, runlocal=False)
  runs = 3 if arg.runlocal else arg.runs
  space = f'mobilenet_v3(variant="{arg.variant}")'
  if arg.runlocal:
    space = 'mobilenet_v3(variant="digits", width_choices=(0.25,), depth_choices=(2,))'
  return {
      'space': space,
      'strategy': 'random',
      'evaluators': ('complexity', f'latency(runs={runs}, throughput_batch=0)',
                     f'latency_table(runs={runs})'),
      'objectives': ('latency_ms:min',),
      'budget': {'evaluations': 3 if arg.runlocal else arg.candidates},
      'train': {'data': {'name': 'mnist5k' if arg.variant == 'mnist' else 'digits'}},
  }
