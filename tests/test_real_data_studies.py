"""The equilibrium and bn_regularization smoke presets on the real Fashion-MNIST.

Apart from test_real_data.py so that pytest-xdist (--dist loadfile) runs these
on another worker; the same skip/fail rule and a data folder of their own.
"""

import pytest

from test_real_data import _real_data_present, data_dir, pytestmark  # noqa: F401


@pytest.mark.parametrize('module,verdicts,plots', [
    ('equilibrium', 10, ('equilibrium.png', 'unit_norms.png')),
    ('bn_regularization', 5, ('curves.png', 'batch_size.png', 'gamma_decay.png')),
])
def test_study_smoke_preset_and_report(data_dir, tmp_path, module, verdicts, plots):
  from experiments import study
  mod = __import__(f'experiments.{module}', fromlist=['configs'])
  runs = study.run_sweep(module, 'smoke', mod.configs('smoke'), tmp_path, data_dir=data_dir,
                         workers=1)
  assert sorted(runs) == sorted(mod.configs('smoke'))
  text = mod.report(tmp_path).read_text()
  assert text.count('**Verdict:') == verdicts, text
  for png in plots:
    assert (tmp_path / png).stat().st_size > 1000
