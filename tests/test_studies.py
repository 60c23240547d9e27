"""Study infrastructure and reports on fixed inputs (no training)."""

import dataclasses
import json
import math

import numpy as np
import pytest

from bnjax import train
from experiments import effective_lr, study


def test_line_spread_on_hand_grids():
  # Constant along anti-diagonals (value = i + j): no spread along, spread across.
  along, across = study.line_spread(np.add.outer(np.arange(3), np.arange(3)))
  assert along == 0.0
  assert across == pytest.approx(np.std([0, 1, 2, 3, 4]))
  # Constant along diagonals (value = i - j): spread along, means all 0 across.
  along, across = study.line_spread(np.subtract.outer(np.arange(3), np.arange(3)))
  assert along == pytest.approx(np.mean([np.std([-1, 1]), np.std([-2, 0, 2]),
                                         np.std([-1, 1])]))
  assert across == 0.0
  with pytest.raises(ValueError, match='square'):
    study.line_spread(np.zeros((2, 3)))


def test_verdict_line():
  assert study.verdict(True, 'a claim', 'x 1') == '**Verdict: holds**: a claim (x 1).'
  assert 'does not hold' in study.verdict(False, 'c', 'n')


@pytest.mark.parametrize('preset', list(effective_lr.PRESETS))
def test_effective_lr_grid_holds_effective_lr_on_anti_diagonals(preset):
  cfgs = effective_lr.configs(preset)
  n = effective_lr.PRESETS[preset]['grid']
  for name, power in (('sgd', 1), ('adam', 2)):
    for k in range(2 * n - 1):
      cells = [cfgs[f'{name}_l2_lr{i}_wd{k - i}'] for i in range(n) if 0 <= k - i < n]
      values = [c.learning_rate ** power * c.weight_decay for c in cells]
      assert max(values) == pytest.approx(min(values), rel=1e-9)
  for c in cfgs.values():
    c.validate()
  assert sum(c.projection for c in cfgs.values()) == 2 * n
  assert cfgs['sgd_none'].regularizer == 'none' and cfgs['adam_none'].optimizer == 'adam'


def _fake_study(tmp_path, errors, norm_growth=True):
  """A finished smoke study whose test errors come from ``errors(name, config)``."""
  cfgs = effective_lr.configs('smoke')
  train.write_json_atomic(tmp_path / 'study.json', {'study': 'effective_lr',
                                                    'preset': 'smoke', 'runs': sorted(cfgs)})
  for name, cfg in cfgs.items():
    folder = tmp_path / name
    folder.mkdir()
    train.write_json_atomic(folder / 'summary.json', {
        'test_accuracy': 1.0 - errors(name, cfg), 'test_loss': 0.5, 'steps': 8,
        'config': dataclasses.asdict(cfg)})
    sign = 1 if norm_growth else -1
    lines = [{'step': s, 'loss': 1.0, 'weight_norm/conv2': 1.0 + sign * 0.1 * s,
              'effective_lr/conv2': cfg.learning_rate / (1.0 + sign * 0.1 * s) ** 2}
             for s in (2, 4, 6, 8)]
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))


def _verdicts(report_path):
  return [l for l in report_path.read_text().splitlines() if l.startswith('**Verdict')]


def test_effective_lr_report_when_the_claims_hold(tmp_path):
  def errors(name, cfg):
    p = 1 if name.startswith('sgd') else 2
    if cfg.projection:
      return 0.2
    return 0.2 + 0.01 * abs(math.log(cfg.learning_rate ** p * cfg.weight_decay + 1e-12))

  _fake_study(tmp_path, errors)
  path = effective_lr.report(tmp_path)
  verdicts = _verdicts(path)
  assert len(verdicts) == 6 and all('holds**' in v and 'not' not in v for v in verdicts)
  for png in ('heatmaps.png', 'projection.png', 'dynamics.png'):
    assert (tmp_path / png).stat().st_size > 1000


def test_effective_lr_report_when_the_claims_fail(tmp_path):
  def errors(name, cfg):
    if cfg.projection:  # projection makes lambda matter more
      return 0.1 + 100 * cfg.weight_decay
    if cfg.regularizer == 'none':
      return 0.1
    # Constant along diagonals (lr and lambda up together): across, not along.
    p = 1 if name.startswith('sgd') else 2
    return 0.1 + 0.01 * abs(math.log(cfg.learning_rate ** p / cfg.weight_decay))

  _fake_study(tmp_path, errors, norm_growth=False)
  verdicts = _verdicts(effective_lr.report(tmp_path))
  assert len(verdicts) == 6
  assert all('does not hold' in v for v in verdicts), verdicts


def test_report_binary_regenerates(tmp_path):
  from experiments import report
  _fake_study(tmp_path, lambda name, cfg: 0.3)
  path = report.report(tmp_path)
  assert path.name == 'report.md' and _verdicts(path)
  (tmp_path / 'study.json').unlink()
  with pytest.raises(Exception, match='no study.json'):
    report.report(tmp_path)
