"""The equilibrium and bn_regularization smoke presets on the real Fashion-MNIST.

Apart from test_real_data.py so that pytest-xdist (--dist loadfile) runs these
on another worker; the same skip/fail rule and a data folder of their own.
"""

import pytest

from test_real_data import _real_data_present, data_dir, pytestmark  # noqa: F401


@pytest.mark.parametrize('module,verdicts,plots', [
    ('equilibrium', 13, ('equilibrium.png', 'unit_norms.png')),
    # 7 always; a per-layer 1/M slope only where zeta > 0 at every M of the smoke run.
    ('bn_regularization', 7, ('curves.png', 'batch_size.png', 'gamma_decay.png')),
])
def test_study_smoke_preset_and_report(data_dir, tmp_path, module, verdicts, plots):
  from bnjax.train.studies import study
  mod = __import__(f'bnjax.train.studies.{module}', fromlist=['configs'])
  runs = study.run_sweep(module, 'smoke', mod.configs('smoke'), tmp_path, data_dir=data_dir,
                         workers=1)
  assert sorted(runs) == sorted(mod.configs('smoke'))
  text = mod.report(tmp_path).read_text()
  from bnjax.train.studies import verdicts as verdict_records
  found = verdict_records.read(tmp_path)
  assert text.count('**Verdict:') == len(found) >= verdicts, text
  if module == 'equilibrium':
    assert len(found) == verdicts
  for png in plots:
    assert (tmp_path / png).stat().st_size > 1000


def test_eval_mode_loss_is_the_trainers_test_loss(data_dir, tmp_path):
  """bn_regularization's eval-mode loss, run on the test split, is the number the
  trainer reported: the same model, statistics and objective."""
  from bnjax.train.studies import bn_regularization as bnr, study
  wanted = {n: c for n, c in bnr.configs('smoke').items() if n in ('batch_m32',
                                                                   'population_m32')}
  runs = study.run_sweep('bn_regularization', 'smoke', wanted, tmp_path, data_dir=data_dir,
                         workers=1)
  for run in runs.values():
    assert bnr.eval_mode_loss(tmp_path, run, 'test') == pytest.approx(
        run.summary['test_loss'], rel=1e-4)
    assert bnr.eval_mode_loss(tmp_path, run) > 0
