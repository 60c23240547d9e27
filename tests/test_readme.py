"""README and the docs' Python examples run as written; README is a user's page of at
most 12,000 bytes; its results summary and docs/results.md's table are generated from
the committed verdicts."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
PAGES = [README, ROOT / 'docs' / 'guide.md']
BLOCKS = [(page.name, i, block) for page in PAGES
          for i, block in enumerate(re.findall(r'```python\n(.*?)```', page.read_text(), re.S))]
STUDIES = ('effective_lr', 'equilibrium', 'bn_regularization', 'teacher_student', 'rotational',
           'timescale')


def test_pages_have_examples():
  assert sum(name == 'README.md' for name, _, _ in BLOCKS) >= 2
  assert sum(name == 'guide.md' for name, _, _ in BLOCKS) >= 3


@pytest.mark.parametrize('page,index,block', BLOCKS, ids=[f'{n}[{i}]' for n, i, _ in BLOCKS])
def test_example_runs(page, index, block):
  if 'from flax import nnx' in block:
    from flax import nnx  # pylint: disable=g-import-not-at-top
    if not hasattr(nnx, 'as_pure'):
      pytest.skip('the flax.nnx examples need flax >= 0.11 (nnx.as_pure, '
                  'nnx.Optimizer(wrt=)), as README says')
  exec(compile(block, f'{page}[python block {index}]', 'exec'), {'__name__': '__main__'})


def test_the_many_runs_example_runs_as_a_script(tmp_path):
  """Saved as a script and run (worker processes on a multi-core CPU), the guide's
  train_many example works: it carries the __main__ guard that spawned workers need."""
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  block, = [b for n, _, b in BLOCKS if 'sweep.train_many' in b]
  (tmp_path / 'many.py').write_text(block)
  out = subprocess.run([sys.executable, 'many.py'], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env={**os.environ, 'PYTHONPATH': str(ROOT)})
  assert out.returncode == 0, out.stderr[-2000:]
  assert len(eval(out.stdout.strip().splitlines()[-1])) == 4  # pylint: disable=eval-used


def test_readme_is_a_users_page():
  text = README.read_text()
  assert len(text.encode()) <= 12_000
  assert not re.search(r'this round|last round|the audit|the contract|seed paper', text, re.I)
  for needed in ('pip install bnjax', "pip install 'bnjax[experiments]'", 'make test',
                 'make study', 'scale_invariant_mask', 'dynamics.read', '--num_steps',
                 'tensorboard --logdir', 'bnjax-plot', 'from bnjax.train import Config, fit'):
    assert needed in text, needed
  for link in re.findall(r'\]\(([^)#]+)\)', text):
    assert (ROOT / link).exists(), f'README links to a missing {link}'


def test_results_are_generated_from_the_committed_verdicts():
  from bnjax.train.studies import verdicts  # pylint: disable=g-import-not-at-top
  reports = ROOT / 'docs' / 'reports'
  folders = [reports / s for s in STUDIES]
  args = ' '.join(f'docs/reports/{s}' for s in STUDIES)
  assert verdicts.summary_table(folders) in README.read_text(), (
      f'README is out of date; regenerate its summary with python -m experiments.verdicts '
      f'--summary {args}')
  assert verdicts.results_table(folders) in (ROOT / 'docs' / 'results.md').read_text(), (
      f'docs/results.md is out of date; regenerate its table with python -m '
      f'experiments.verdicts {args}')


def test_every_claim_link_of_the_results_table_reaches_its_anchor():
  """docs/results.md links claims by id to an <a id> in their report (Sphinx's myst
  does not index raw anchors, so this is the check)."""
  text = (ROOT / 'docs' / 'results.md').read_text()
  links = re.findall(r'\]\((reports/[a-z_]+/report\.md)#([^)]+)\)', text)
  assert links, 'no claim links in docs/results.md'
  for report, anchor in links:
    assert f'<a id="{anchor}"></a>' in (ROOT / 'docs' / report).read_text(), (report, anchor)
