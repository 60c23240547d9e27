"""The real Fashion-MNIST, where a local copy exists (CI installs Debian's package).

The study smoke runs on real data are in test_real_data_studies.py, so that
pytest-xdist (--dist loadfile) runs them on the other worker; each file
prepares the data once into its own folder (about 30 s).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bnjax.train import data

MISSING = data.fashion_mnist_dir() is None
# CI sets BNJAX_REQUIRE_REAL_DATA=1: there a missing copy fails, never skips.
REQUIRED = bool(os.environ.get('BNJAX_REQUIRE_REAL_DATA'))
pytestmark = pytest.mark.skipif(
    MISSING and not REQUIRED,
    reason='no local Fashion-MNIST (apt-get install dataset-fashion-mnist, or set '
           'BNJAX_FASHION_MNIST_DIR); tests never download')


@pytest.fixture(autouse=True)
def _real_data_present():
  if MISSING:
    pytest.fail('BNJAX_REQUIRE_REAL_DATA is set but no local Fashion-MNIST was found '
                '(scripts/install_fashion_mnist.sh --require installs it)')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def test_fashion_mnist_is_complete_and_balanced(data_dir):
  splits = data.load_image_dataset('fashion_mnist', data_dir)
  assert splits['train'].x.shape == (60000, 28, 28, 1)
  assert splits['test'].x.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(splits['train'].y), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(splits['test'].y), [1000] * 10)
  # The same (image, label) pairs as the IDX files; tfds stores them in its own
  # (deterministic, key-hashed) order.
  folder = data.fashion_mnist_dir()
  raw_x = data.read_idx(f'{folder}/{data.IDX_FILES["test_images"]}')
  raw_y = data.read_idx(f'{folder}/{data.IDX_FILES["test_labels"]}')
  pairs = lambda xs, ys: sorted(x.tobytes() + bytes([int(y)]) for x, y in zip(xs, ys))
  assert pairs(splits['test'].x[..., 0], splits['test'].y) == pairs(raw_x, raw_y)


def test_train_binary_on_real_data(data_dir, tmp_path):
  cmd = [sys.executable, '-m', 'experiments.train', '--dataset=fashion_mnist',
         '--model=convnet', '--norm=batch', '--optimizer=momentum', '--regularizer=l2',
         '--weight_decay=5e-4', '--learning_rate=0.05', '--batch_size=128',
         '--train_subset=3840', '--num_epochs=1', '--log_every=10',
         '--checkpoint_every=30', f'--data_dir={data_dir}', f'--workdir={tmp_path}',
         '--noprogress']
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['steps'] == 30
  assert 0.0 <= summary['test_accuracy'] <= 1.0
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [l['step'] for l in lines] == [10, 20, 30]
  for layer in ('conv1', 'conv2', 'conv3', 'head'):
    for metric in ('weight_norm', 'angular_update') + (('effective_lr',) if layer != 'head'
                                                       else ()):
      assert np.isfinite(lines[-1][f'{metric}/{layer}'])
  assert 'effective_lr/head' not in lines[-1]  # no norm after the head: not invariant
  # Learning happened: training loss fell.
  assert lines[-1]['loss'] < lines[0]['loss']


def test_effective_lr_smoke_preset_and_report(data_dir, tmp_path):
  from bnjax.train.studies import effective_lr, study, verdicts
  from bnjax.train.binaries import report
  runs = study.run_sweep('effective_lr', 'smoke', effective_lr.configs('smoke'), tmp_path,
                         data_dir=data_dir, workers=1)
  assert len(runs) == len(effective_lr.configs('smoke'))
  text = effective_lr.report(tmp_path).read_text()
  # The projection, AdamW and no-decay verdicts always; the line tests only on
  # cells past FAR time constants, which 32 smoke steps give too few of.
  claims = {v.claim for v in verdicts.read(tmp_path)}
  assert {'sgd: with unit-norm projection, test error depends less on lambda',
          'adam: with unit-norm projection, test error depends less on lambda',
          'sgd without decay: the conv2 weight norm grows and its effective learning rate '
          'decays'} <= claims
  assert any(c.startswith('adamw: with unit-norm projection') for c in claims)
  # The exact symmetry on real training runs: the rule keeps every direction (BN's
  # and Adam's epsilons at 1e-30, factors powers of 4: bit for bit on CPU), the
  # control's lambda moves them.
  exact = {v.id: v for v in verdicts.read(tmp_path) if 'exact-symmetry' in v.id}
  for name in ('sgd', 'adam'):
    assert exact[f'effective_lr/{name}-l2-exact-symmetry-directions'].value < (
        effective_lr.EXACT_DIRECTION)
    assert exact[f'effective_lr/{name}-l2-exact-symmetry-error'].value < effective_lr.EXACT_ERROR
    assert exact[f'effective_lr/{name}-l2-exact-symmetry-control'].value > (
        100 * effective_lr.EXACT_DIRECTION)
  assert '(left out) |' in text and text.count('**Verdict:') == len(claims)
  for png in ('heatmaps.png', 'projection.png', 'dynamics.png'):
    assert (tmp_path / png).stat().st_size > 1000
  # A rerun skips every finished configuration, and the report regenerates.
  first = (tmp_path / 'sgd_none' / 'summary.json').read_text()
  study.run_sweep('effective_lr', 'smoke', effective_lr.configs('smoke'), tmp_path,
                  data_dir=data_dir, workers=1)
  assert (tmp_path / 'sgd_none' / 'summary.json').read_text() == first
  (tmp_path / 'report.md').unlink()
  assert report.report(tmp_path).exists()
