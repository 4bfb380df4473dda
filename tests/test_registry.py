"""The one registry: lookup by name or spec string, one error line with a close match."""
import pytest

from mcj.core import registry
from mcj.core.config import ConfigError


def test_register_get_build_and_spec_strings():
  @registry.register('test_thing', 'scaled')
  def scaled(factor=1.0, offset=0):
    return ('scaled', factor, offset)

  assert registry.get('test_thing', 'scaled') is scaled
  assert registry.build('test_thing', 'scaled(factor=2.5, offset=-1)') == ('scaled', 2.5, -1)
  assert registry.build('test_thing', {'name': 'scaled', 'offset': 3}) == ('scaled', 1.0, 3)
  assert registry.build('test_thing', 'scaled', factor=4) == ('scaled', 4, 0)
  assert 'scaled' in registry.names('test_thing')


def test_unknown_name_is_one_line_with_close_match_and_valid_names():
  registry.add('test_kind', 'ste_sign', object())
  registry.add('test_kind', 'approx_sign', object())
  with pytest.raises(ConfigError) as e:
    registry.get('test_kind', 'ste_sgn')
  message = str(e.value)
  assert message == ("Unknown test_kind 'ste_sgn'. Did you mean 'ste_sign'? "
                     "Valid: approx_sign, ste_sign.")
  with pytest.raises(ConfigError) as e:
    registry.get('test_kind', 'zzz')
  assert 'Did you mean' not in str(e.value) and '\n' not in str(e.value)


def test_bad_options_and_bad_specs_name_the_entry():
  registry.add('test_opts', 'f', lambda a=1: a)
  with pytest.raises(ConfigError, match=r"Bad option for test_opts 'f': .*'b'"):
    registry.build('test_opts', 'f(b=2)')
  with pytest.raises(ConfigError, match='expected name\\(key=value, ...\\)'):
    registry.build('test_opts', 'f(1)')
  with pytest.raises(ConfigError, match='literal values'):
    registry.build('test_opts', 'f(a=abs)')
  with pytest.raises(ConfigError, match='expected name'):
    registry.build('test_opts', 'f(a=1')


def test_a_name_registered_twice_is_an_error():
  registry.add('test_twice', 'x', 1)
  with pytest.raises(ValueError, match='registered twice'):
    registry.add('test_twice', 'x', 2)


def test_every_kind_is_populated_by_its_module():
  import mcj.data  # noqa: F401  pylint: disable=g-import-not-at-top
  import mcj.models  # noqa: F401  pylint: disable=g-import-not-at-top
  import mcj.quant.quantizers  # noqa: F401  pylint: disable=g-import-not-at-top
  import mcj.train.optim  # noqa: F401  pylint: disable=g-import-not-at-top
  assert {'digits', 'synthetic'} <= set(registry.names('dataset'))
  assert {'resnet20', 'birealnet18', 'mobilenet_v2', 'quicknet'} <= set(registry.names('model'))
  assert {'ste_sign', 'approx_sign', 'dorefa', 'lsq'} <= set(registry.names('quantizer'))
  assert registry.names('optimizer') == ['adam', 'adamw', 'lamb', 'sgd']
  assert registry.names('schedule') == ['constant', 'cosine', 'linear', 'step']
