"""Config files, string arguments and command-line overrides."""
import ml_collections
import pytest

from mcj.core import config as config_lib
from mcj.core.config import ConfigError
from mcj.train import merge_config


def test_parse_arg_types_and_flags():
  arg = config_lib.parse_arg('runlocal,steps=7,lr=0.5,name=b', runlocal=False, steps=1,
                             lr=0.1, name='a')
  assert arg.runlocal is True and arg.steps == 7 and arg.lr == 0.5 and arg.name == 'b'
  assert config_lib.parse_arg(None, steps=3).steps == 3


def test_parse_arg_unknown_word_lists_valid():
  with pytest.raises(ConfigError, match='Valid: runlocal, steps'):
    config_lib.parse_arg('variant=x', runlocal=False, steps=1)


def test_parse_arg_wrong_type():
  with pytest.raises(ConfigError, match='expects an int'):
    config_lib.parse_arg('steps=ten', steps=1)


def test_overrides_parse_to_field_type():
  config = merge_config({'model': {'name': 'resnet20'}, 'total_steps': 5})
  config_lib.parse_overrides(config, ['--config.batch_size=64', '--config.optimizer.lr', '1',
                                      '--config.optimizer.nesterov=true',
                                      '--config.schedule.step_epochs=(30, 60)',
                                      '--config.data.data_dir=gs://bucket/tfds'])
  assert config.batch_size == 64
  assert config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)
  assert config.optimizer.nesterov is True
  assert tuple(config.schedule.step_epochs) == (30, 60)
  assert config.data.data_dir == 'gs://bucket/tfds'


@pytest.mark.parametrize('argv, message', [
    (['--config.batchsize=3'], r'Unknown config key config.batchsize. Valid: .*batch_size'),
    (['--config.optimizer.learning_rate=3'], r'Unknown config key config.optimizer.learning_rate'),
    (['--config.batch_size=big'], r'config.batch_size expects an int'),
    (['--config.optimizer.nesterov=maybe'], r'expects true or false'),
    (['--config.optimizer=adam'], r'is a block'),
    (['--config.seed'], r'needs a value'),
    (['--seed=3'], r'overrides look like --config.key=value'),
])
def test_bad_overrides_are_clear(argv, message):
  config = merge_config({'model': {'name': 'resnet20'}, 'total_steps': 5})
  with pytest.raises(ConfigError, match=message):
    config_lib.parse_overrides(config, argv)


def test_unknown_key_in_config_file_is_an_error():
  with pytest.raises(ConfigError, match='Unknown config key config.totl_steps'):
    merge_config({'model': {'name': 'resnet20'}, 'totl_steps': 5})
  with pytest.raises(ConfigError, match='config.batch_size expects an int'):
    merge_config({'model': {'name': 'resnet20'}, 'batch_size': '8'})


def test_model_block_passes_options_through():
  config = merge_config({'model': {'name': 'mobilenet_v2', 'width_multiplier': 0.5}})
  assert config.model.width_multiplier == 0.5


def test_load_config_with_arg(tmp_path):
  path = tmp_path / 'c.py'
  path.write_text('from mcj.core.config import parse_arg\n'
                  'def get_config(arg=None):\n'
                  '  a = parse_arg(arg, runlocal=False)\n'
                  '  return {"model": {"name": "resnet20"}, "total_steps": 1 if a.runlocal else 9}\n')
  assert config_lib.load_config(f'{path}:runlocal').total_steps == 1
  assert config_lib.load_config(str(path)).total_steps == 9
  assert isinstance(config_lib.load_config(str(path)), ml_collections.ConfigDict)
  with pytest.raises(ConfigError, match='does not exist'):
    config_lib.load_config(str(tmp_path / 'missing.py'))


def test_every_shipped_config_loads_and_merges():
  import glob
  import os
  root = os.path.dirname(os.path.dirname(__file__))
  paths = sorted(glob.glob(os.path.join(root, 'configs', '**', '*.py'), recursive=True))
  assert paths
  from mcj.train import pipeline
  for path in paths:
    if os.sep + 'search' + os.sep in path:
      continue  # search configs: test_every_search_config_loads_and_builds
    for arg in ('', ':runlocal'):
      config = merge_config(config_lib.load_config(path + arg))
      if config.stages:  # a pipeline: every stage must merge on its own
        for _, _, stage in pipeline.stage_configs(config, '/tmp/w'):
          assert merge_config(stage).model.name, path
      else:
        assert config.model.name, path


def test_tinybert_stages_have_the_papers_objectives():
  """configs/text/tinybert.py: the intermediate stage is the layer losses alone (TinyBERT
  eq. 10 without the prediction term; no labels, no logit loss), the prediction stage soft
  cross-entropy to the teacher's logits alone (eq. 9, t = 1)."""
  import os
  from mcj.train import pipeline
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'text',
                      'tinybert.py')
  config = merge_config(config_lib.load_config(path + ':teacher=/tmp/t'))
  stages = {name: merge_config(stage).distill
            for name, _, stage in pipeline.stage_configs(config, '/tmp/w')}
  assert sorted(stages) == ['intermediate', 'prediction']
  inter, pred = stages['intermediate'], stages['prediction']
  assert (inter.label_weight, inter.logit_weight) == (0.0, 0.0)
  assert (inter.feature_loss, inter.feature_weight, inter.tinybert_projection) == (
      'tinybert', 1.0, 'layer')
  assert (pred.label_weight, pred.logit_loss, pred.logit_weight, pred.temperature) == (
      0.0, 'soft_ce', 1.0, 1.0)
  assert not pred.feature_loss


def test_every_search_config_loads_and_builds(tmp_path):
  """configs/search/*.py merge with the search schema and build (space, strategy,
  evaluators, metrics of objectives and constraints, a sampled trainer config)."""
  import glob
  import os
  from mcj import search as search_lib
  from mcj.search import runner
  root = os.path.dirname(os.path.dirname(__file__))
  paths = sorted(glob.glob(os.path.join(root, 'configs', 'search', '*.py')))
  assert paths
  for path in paths:
    for arg in ('', ':runlocal'):
      config = search_lib.merge_config(config_lib.load_config(path + arg))
      runner.Search(config, str(tmp_path), say=lambda *a: None)
