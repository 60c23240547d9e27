"""Packaging and layout: every library module imports without the experiments extra,
bnjax.train names the extra, the wheel holds only bnjax, one config declaration serves
the flags, one optimizer spelling, the study CLI."""

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
from absl import flags

from bnjax.train import config, data
from bnjax.train.studies import study
from bnjax.train.binaries import study as cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every module of the library: bnjax's modules outside bnjax.train, from the tree.
CORE = sorted('.'.join(p.relative_to(ROOT).with_suffix('').parts).replace('.__init__', '')
              for p in (ROOT / 'bnjax').rglob('*.py') if 'train' not in p.parts)
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
  assert {'bnjax.implicit', 'bnjax.nnx', 'bnjax.transforms.rotation'} <= set(CORE)
  out = _python(f'import {", ".join(CORE)}\nprint("ok")')
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


@pytest.mark.parametrize('module', ['bnjax.train', 'bnjax.train.data', 'bnjax.train.trainer'])
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


def test_a_flag_file_configures_a_run_and_the_command_line_overrides_it(tmp_path):
  """absl's --flagfile (one flag per line) is the configuration file of bnjax-train,
  as flax's examples use ml_collections config files."""
  path = tmp_path / 'run.flags'
  path.write_text('# a run\n--optimizer=adam\n--learning_rate=0.001\n--num_steps=200\n')
  values = flags.FlagValues()
  config.define_flags(values)
  values(['prog', f'--flagfile={path}', '--learning_rate=0.003'])
  assert config.from_flags(values) == config.Config(optimizer='adam', learning_rate=0.003,
                                                    num_steps=200)


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
  assert "unknown study 'imagenet'" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    cli.run(['bnjax-study', '--help'])
  assert exit_info.value.code == 0
  listing = capsys.readouterr().out
  assert all(name in listing for name in study.STUDIES)
  assert all(preset in listing for preset in study.PRESETS)
  assert set(study.STUDIES) == {'effective_lr', 'equilibrium', 'bn_regularization',
                                'teacher_student', 'rotational', 'timescale'}
  for name in study.STUDIES:
    module = study.study_module(name)
    assert callable(module.configs) and callable(module.report)


def test_the_wheel_holds_only_bnjax(tmp_path):
  source = tmp_path / 'source'  # a copy: setuptools' build/ folder would keep stale modules
  for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
    source.mkdir(exist_ok=True)
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(ROOT / 'bnjax', source / 'bnjax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  shutil.copytree(ROOT / 'experiments', source / 'experiments',
                  ignore=shutil.ignore_patterns('__pycache__'))
  out = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                        '--quiet', '-w', str(tmp_path), str(source)], capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  wheel, = tmp_path.glob('bnjax-*.whl')
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split('/')[0] for n in names if not n.split('/')[0].endswith('.dist-info')}
  assert tops == {'bnjax'}
  assert 'bnjax/train/binaries/study.py' in names
  assert 'bnjax/train/studies/effective_lr/report.py' in names
  entry_points, = [n for n in names if n.endswith('entry_points.txt')]
  scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
  assert 'bnjax-train = bnjax.train.binaries.train:run' in scripts
  assert 'bnjax-study = bnjax.train.binaries.study:run' in scripts
  # Unpacked into a folder of its own (what pip does with a pure-Python wheel; its
  # dependencies are this venv's), the console scripts' targets run from any folder,
  # importing bnjax from the wheel.
  site = tmp_path / 'site'
  zipfile.ZipFile(wheel).extractall(site)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {**os.environ, 'PYTHONPATH': str(site)}
  for binary, expected in (('study', 'effective_lr'), ('train', '--learning_rate')):
    code = (f'import sys, bnjax; print(bnjax.__file__)\n'
            f'from bnjax.train.binaries.{binary} import run\nrun(["bnjax-{binary}", "--help"])')
    out = subprocess.run([sys.executable, '-c', code], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0].startswith(str(site)) and expected in out.stdout


def test_every_config_field_has_one_help_topic():
  listed = [name for names in config.TOPICS.values() for name in names]
  assert sorted(listed) == sorted(f.name for f in dataclasses.fields(config.Config))


def test_train_help_groups_bnjax_flags_by_topic():
  out = subprocess.run([sys.executable, '-m', 'experiments.train', '--help'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  headings = [l[:-1] for l in out.stdout.splitlines() if l.endswith(':') and ' ' not in l]
  assert headings == list(config.TOPICS) + ['run']
  for f in dataclasses.fields(config.Config):
    assert f'--{f.name}:' in out.stdout
  assert '--xla_' not in out.stdout and '--jax_' not in out.stdout  # absl's and JAX's: --helpfull
