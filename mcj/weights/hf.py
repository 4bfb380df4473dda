"""Hugging Face BERT checkpoints (``BertModel``, ``BertForSequenceClassification``,
``BertForPreTraining``) for mcj's ``bert`` models.

A checkpoint is the folder ``save_pretrained`` writes (or the hub's download): config.json,
``model.safetensors`` or ``pytorch_model.bin``, and vocab.txt. config.json gives the model
options (``config_options``); vocab.txt is copied into the workdir and becomes the run's
``data.vocab_file``, so the converted run tokenizes as the checkpoint was trained. mcj's
param names map one to one onto HF's (see ``mcj/models/transformers/bert.py``). A file
without a classifier (a pre-trained encoder) leaves mcj's classifier at its initialisation,
sized by the dataset's classes: the start of a fine-tuning run. Pre-training heads
(``cls.*``) and the ``position_ids`` buffer are read and unused.
"""
import json
import os
import re

from mcj.core.config import ConfigError

WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def bert(paths, names) -> list:
  """BERT: embeddings, ``encoder.layer.{i}`` (self-attention Q/K/V, output dense and
  LayerNorm, intermediate, output dense and LayerNorm), pooler, classifier."""
  prefix = 'bert.' if any(n.startswith('bert.') for n in names) else ''
  norm = 'layer_norm_tf' if any(n.endswith('LayerNorm.gamma') for n in names) else 'layer_norm'
  e = f'{prefix}embeddings.'
  out = [(f'{e}word_embeddings.weight', 'embeddings/word/kernel', 'tensor'),
         (f'{e}position_embeddings.weight', 'embeddings/position/kernel', 'tensor'),
         (f'{e}token_type_embeddings.weight', 'embeddings/token_type/kernel', 'tensor'),
         (f'{e}LayerNorm', 'embeddings/norm', norm),
         (f'{e}position_ids', None, 'constant'), ('cls', None, 'constant')]
  layers = sorted({int(m.group(1)) for p in paths for m in [re.match(r'layer_(\d+)/', p)] if m})
  for i in layers:
    hf, ours = f'{prefix}encoder.layer.{i}.', f'layer_{i}/'
    out += [(f'{hf}attention.self.{x}', f'{ours}attention/{x}', 'linear')
            for x in ('query', 'key', 'value')]
    out += [(f'{hf}attention.output.dense', f'{ours}attention/output', 'linear'),
            (f'{hf}attention.output.LayerNorm', f'{ours}attention_norm', norm),
            (f'{hf}intermediate.dense', f'{ours}intermediate', 'linear'),
            (f'{hf}output.dense', f'{ours}output', 'linear'),
            (f'{hf}output.LayerNorm', f'{ours}output_norm', norm)]
  out.append((f'{prefix}pooler.dense', 'pooler', 'linear'))
  has_classifier = any(n.startswith('classifier.') for n in names)
  return out + [('classifier', 'classifier', 'linear' if has_classifier else 'fresh')]


def weight_file(path: str) -> str:
  """The weights of a checkpoint folder (or ``path`` itself, a file)."""
  if not os.path.isdir(path):
    return path
  for name in WEIGHT_FILES:
    if os.path.isfile(os.path.join(path, name)):
      return os.path.join(path, name)
  raise ConfigError(f'{path} holds none of {", ".join(WEIGHT_FILES)}: give the checkpoint '
                    'folder save_pretrained wrote, or its weights file.')


def config_options(path: str) -> dict:
  """mcj ``bert`` options from the checkpoint's config.json (next to the weights file);
  an architecture mcj does not build is one ConfigError line."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  file = os.path.join(folder, 'config.json')
  if not os.path.isfile(file):
    raise ConfigError(f'{folder} has no config.json: a BERT checkpoint needs the '
                      'config.json saved with it (it gives layers, widths and vocab).')
  with open(file) as f:
    config = json.load(f)
  if config.get('model_type', 'bert') != 'bert':
    raise ConfigError(f'{file} is a {config["model_type"]!r} model; mcj imports BERT '
                      "(model_type 'bert').")
  act, position = config.get('hidden_act', 'gelu'), config.get('position_embedding_type',
                                                                  'absolute')
  if act != 'gelu' or position != 'absolute':
    raise ConfigError(f'{file}: mcj builds BERT with the exact GELU and absolute position '
                      f'embeddings, not hidden_act={act!r}, position_embedding_type='
                      f'{position!r}.')
  keys = {'num_hidden_layers': 'num_layers', 'hidden_size': 'hidden_size',
          'num_attention_heads': 'num_heads', 'intermediate_size': 'intermediate_size',
          'vocab_size': 'vocab_size', 'max_position_embeddings': 'max_position_embeddings',
          'type_vocab_size': 'type_vocab_size', 'layer_norm_eps': 'layer_norm_epsilon',
          'pad_token_id': 'pad_token_id'}
  return {ours: config[theirs] for theirs, ours in keys.items()
          if config.get(theirs) is not None}


def vocab_file(path: str):
  """The checkpoint's vocab.txt, or None."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  file = os.path.join(folder, 'vocab.txt')
  return file if os.path.isfile(file) else None
