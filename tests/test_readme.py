"""README's Python examples run as written, and its verdict table is generated."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'
BLOCKS = re.findall(r'```python\n(.*?)```', README.read_text(), re.S)


def test_readme_has_examples():
  assert len(BLOCKS) >= 2


@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_example_runs(index):
  if 'nnx.as_pure' in BLOCKS[index]:
    from flax import nnx  # pylint: disable=g-import-not-at-top
    if not hasattr(nnx, 'as_pure'):
      pytest.skip('the flax.nnx example needs flax >= 0.11 (nnx.as_pure, '
                  'nnx.Optimizer(wrt=)), as README says')
  exec(compile(BLOCKS[index], f'README.md[python block {index}]', 'exec'), {})


STUDIES = ('effective_lr', 'equilibrium', 'bn_regularization', 'teacher_student', 'rotational')


def test_verdict_table_is_generated_from_the_committed_verdicts():
  """README's table of verdicts is verdicts.json of docs/reports, as generated."""
  from experiments import verdicts  # pylint: disable=g-import-not-at-top
  reports = README.parent / 'docs' / 'reports'
  table = verdicts.readme_table([reports / s for s in STUDIES])
  assert table in README.read_text(), (
      'README is out of date; regenerate its table with python -m experiments.verdicts '
      + ' '.join(f'docs/reports/{s}' for s in STUDIES))
