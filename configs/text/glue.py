"""GLUE fine-tuning of a pretrained BERT (Devlin et al. 2019), float, 8-bit (Q8BERT-style,
Zafrir et al. 2019) or 1-bit (BiT-style encoder), from a Hugging Face checkpoint.

Reported, BERT-base fine-tuned, GLUE dev (facebookresearch/bit README, ../shared/REFERENCE.md):
MNLI-m/mm 84.9/85.5, QQP 91.4, QNLI 92.1, SST-2 93.2, CoLA 59.7, STS-B 90.1, MRPC 86.3,
RTE 72.2 (average 83.9); Q8BERT reports 8-bit within 1% of float; BiT W1-E1-A1 73.5.
Commands (the checkpoint and the TFDS data are prepared where there is internet):
  tfds build glue/sst2 --data_dir=$TFDS_DATA_DIR
  python -m mcj.weights --from hf:bert --file /ckpt/bert-base-uncased --data glue/sst2 \\
      --workdir /tmp/mcj/bert_base_sst2
  python -m mcj.train --config configs/text/glue.py:task=sst2,checkpoint=/tmp/mcj/bert_base_sst2 \\
      --workdir /tmp/mcj/glue_sst2
  python -m mcj.train --config configs/text/glue.py:task=sst2,checkpoint=...,bits=8 --workdir ...
The checkpoint is a workdir of `python -m mcj.weights --from hf:bert` converted for the same
task (`--data glue/<task>`: its classifier has the task's outputs, fresh when the file has
none; 1 for the regression glue/stsb); its model block (the HF config.json's sizes) and its
vocab.txt (`data.vocab_file`) are used. Without a checkpoint the model is a BERT-Tiny
trained from scratch on the task with a vocab learned from it (a baseline needing no
download; far below the numbers above).
Recipe (BERT's fine-tuning): AdamW lr 2e-5, 10% linear warmup then linear decay to 0,
weight decay 0.01 (kernels), dropout as the checkpoint (0.1), batch 32, 128 tokens, 3
epochs; `bits=8` / `bits=1` quantize the encoder as configs/text/bert.py (LSQ 8-bit; BiT-
style binary), the learned quantizer scales starting fresh (`init_from_partial`).
Metric per task (mcj/data/glue.py): accuracy, F1 (MRPC, QQP), Matthews (CoLA), Pearson /
Spearman (STS-B, trained on the squared error); `results.json` names it (`metric`).
Variants: `:task=` one of cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte; `:bits=32|8|1`,
`:embeddings=True` (8-bit word embeddings too), `:epochs=`, `:lr=`; `:runlocal` trains two
steps on synthetic token ids of the task's shape (a smoke test, no data needed).
"""
import json
import os

from mcj.core.config import ConfigError, parse_arg, runlocal_overrides
from mcj.data import glue
from mcj.models.transformers import precision

SCRATCH = {'name': 'bert_tiny', 'vocab_size': 8000, 'max_position_embeddings': 128}


def _checkpoint_blocks(path: str, task: str):
  """(model block, data block) of a converted checkpoint workdir, checked against the task:
  its vocab file and its sequence length (128 unless converted with another)."""
  config_path = os.path.join(path, 'config.json')
  if not os.path.exists(config_path):
    raise ConfigError(f'checkpoint={path} holds no config.json: give the workdir written by '
                      f'python -m mcj.weights --from hf:bert --data {task}.')
  with open(config_path) as f:
    converted = json.load(f)
  data = converted.get('data', {})
  if glue.task_name(data.get('name', '')) != task:
    raise ConfigError(f'checkpoint={path} was converted for {data.get("name")!r}, not {task}: '
                      f'convert it again with --data {task} (the classifier has that many '
                      'outputs).')
  return dict(converted['model']), {'name': task, 'max_length': data.get('max_length') or 128,
                                    'vocab_file': data.get('vocab_file') or ''}


def get_config(arg=None):
  arg = parse_arg(arg, task='sst2', checkpoint='', bits=32, embeddings=False, epochs=3.0,
                  lr=2e-5, runlocal=False)
  task = f'glue/{arg.task}'
  if task not in glue.TASKS:
    raise ConfigError(f'task={arg.task!r} is not a GLUE task: use one of '
                      f'{", ".join(t.split("/")[1] for t in glue.TASKS)}.')
  try:
    quantized = precision.options(arg.bits, embeddings=arg.embeddings)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if arg.checkpoint:
    model, data = _checkpoint_blocks(arg.checkpoint, task)
  else:
    model, data = dict(SCRATCH), {'name': task, 'max_length': 128, 'vocab_size': 8000}
  config = {
      'seed': 0,
      'batch_size': 32,
      'total_epochs': arg.epochs,
      'model': {**model, **quantized},
      'data': data,
      'optimizer': {'name': 'adamw', 'lr': arg.lr, 'weight_decay': 0.01},
      'schedule': {'name': 'linear', 'warmup_epochs': 0.1 * arg.epochs},
      'log_every_steps': 100,
      'eval_every_steps': 0,
      'checkpoint_every_steps': 1000,
  }
  if arg.checkpoint:
    config.update(init_from=arg.checkpoint, init_from_partial=arg.bits != 32)
  if arg.runlocal:
    task_info = glue.get_task(task)
    config.update(runlocal_overrides(image_size=0, num_classes=task_info.num_classes,
                                     num_train_examples=64))
    config['data'].update(max_length=16, vocab_size=config['model']['vocab_size'])
    config['data'].pop('image_size')
    config['schedule'] = {'name': 'linear', 'warmup_steps': 1}
  return config
