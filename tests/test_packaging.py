"""Packaging and layout: the core imports without the experiments extra, one config
declaration serves the flags, one optimizer spelling, the study CLI."""

import dataclasses
import subprocess
import sys

import pytest
from absl import flags

from bnjax import config, data
from experiments import cli, study

CORE = ('bnjax', 'bnjax.norms', 'bnjax.layers', 'bnjax.transforms', 'bnjax.theory',
        'bnjax.dynamics', 'bnjax.masks', 'bnjax.models', 'bnjax.folding')
# What the experiments and test extras add (absl and orbax come with flax itself).
EXTRA = ('tensorflow_datasets', 'array_record', 'tqdm', 'matplotlib', 'pytest')

_BLOCKER = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in {extra!r}:
      raise ImportError(f'No module named {{name!r}} (blocked)')
sys.meta_path.insert(0, Block())
'''.format(extra=EXTRA)


def _python(code):
  return subprocess.run([sys.executable, '-c', _BLOCKER + code], capture_output=True,
                        text=True, timeout=120)


def test_core_imports_without_the_experiments_extra():
  out = _python(f'import {", ".join(CORE)}\nprint("ok")')
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


@pytest.mark.parametrize('module', ['bnjax.data', 'bnjax.trainer'])
def test_extra_modules_name_the_extra(module):
  out = _python(f'import {module}')
  assert out.returncode != 0
  assert "pip install 'bnjax[experiments]'" in out.stderr, out.stderr[-2000:]


def test_every_config_field_is_one_flag():
  values = flags.FlagValues()
  config.define_flags(values)
  names = [f.name for f in dataclasses.fields(config.Config)]
  assert set(names) <= set(values)
  values(['prog', '--learning_rate=0.2', '--optimizer=adam', '--noprojection',
          '--batch_size=64'])
  assert config.from_flags(values) == config.Config(learning_rate=0.2, optimizer='adam',
                                                    batch_size=64)
  with pytest.raises(flags.IllegalFlagValueError, match='norm'):
    values(['prog', '--norm=dropout'])


def test_momentum_is_an_alias_of_sgd():
  a = config.Config(optimizer='momentum', momentum=0.9)
  assert a == config.Config(optimizer='sgd', momentum=0.9)
  assert dataclasses.asdict(a)['optimizer'] == 'sgd'


def test_config_names_match_the_modules():
  assert set(config.DATASETS) == set(data.BUILDERS) | {'teacher_student'}


def test_study_cli_refuses_an_unknown_study(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.run(['bnjax-study', 'imagenet'])
  assert exit_info.value.code == 2
  assert 'bnjax-study {' in capsys.readouterr().err
  assert set(study.STUDIES) == {'effective_lr', 'equilibrium', 'bn_regularization',
                                'teacher_student', 'rotational'}
  for name in study.STUDIES:
    module = study.study_module(name)
    assert callable(module.configs) and callable(module.report)
