"""What a user watches of a run: TensorBoard events, --num_steps."""

import dataclasses
import math

import numpy as np
import optax
import pytest

from bnjax.train import trainer
from _helpers import TS, metrics

tb = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')


def _events(workdir):
  """Every event of the workdir's event files as TensorBoard reads them, without
  dropping a repeated step (purge_orphaned_data=False)."""
  reader = tb.EventAccumulator(str(workdir), size_guidance={'scalars': 0, 'histograms': 0},
                               purge_orphaned_data=False)
  reader.Reload()
  return reader


def _assert_events_mirror_metrics(workdir):
  lines = metrics(workdir)
  reader = _events(workdir)
  scalars = set(reader.Tags()['scalars'])
  histograms = set(reader.Tags()['histograms'])
  logged = {k for l in lines for k in l if k != 'step'}
  assert {k for k in logged if not k.startswith('per_unit/')} <= scalars
  assert {k for k in logged if k.startswith('per_unit/')} == histograms
  for key in sorted({'loss', 'weight_norm/dense', 'learning_rate', 'test_loss'} & logged):
    events = reader.Scalars(key)
    logged_steps = [l['step'] for l in lines if key in l]
    assert [e.step for e in events] == logged_steps  # each step once, in order
    np.testing.assert_allclose([e.value for e in events],
                               [l[key] for l in lines if key in l], rtol=1e-6)
  for event, line in zip(reader.Histograms('per_unit/weight_norm/dense'), lines):
    values = line['per_unit/weight_norm/dense']
    assert event.step == line['step']
    assert event.histogram_value.num == len(values)
    assert event.histogram_value.sum == pytest.approx(sum(values), rel=1e-6)
  return lines


def test_events_hold_the_metric_lines(tmp_path):
  cfg = dataclasses.replace(TS, eval_every=8)
  trainer.train(cfg, tmp_path, progress=False)
  lines = _assert_events_mirror_metrics(tmp_path)
  assert len(list(tmp_path.glob('events.out.tfevents.*'))) == 1
  assert len(lines) == cfg.total_steps() // cfg.log_every


def test_a_resumed_run_logs_each_step_once_in_the_events(tmp_path):
  """Killed after step 14 (checkpoint 8): the resumed run redoes steps 12 and 16;
  the events hold them once, as metrics.jsonl does, and the values are the
  uninterrupted run's."""
  cfg = dataclasses.replace(TS, eval_every=8)
  trainer.train(cfg, tmp_path / 'a', progress=False, stop_after=14)
  assert [e.step for e in _events(tmp_path / 'a').Scalars('loss')] == [4, 8, 12]
  trainer.train(cfg, tmp_path / 'a', progress=False)
  resumed = _assert_events_mirror_metrics(tmp_path / 'a')
  trainer.train(cfg, tmp_path / 'b', progress=False)
  whole = _events(tmp_path / 'b').Scalars('loss')
  assert [e.value for e in _events(tmp_path / 'a').Scalars('loss')] == [e.value for e in whole]
  assert [l['step'] for l in resumed] == [e.step for e in whole]


def test_event_file_deleted_while_training_is_written_again_whole(tmp_path, monkeypatch):
  """A user removes the run's event file (cleaning a logdir) before step 8's line:
  the next line writes it again with every line, so TensorBoard misses none."""
  from bnjax.train import events
  write = events.EventLog.write

  def delete_first(log, line):
    if line['step'] == 8:
      log.path.unlink()
    write(log, line)

  monkeypatch.setattr(events.EventLog, 'write', delete_first)
  trainer.train(TS, tmp_path, progress=False)
  assert len(list(tmp_path.glob('events.out.tfevents.*'))) == 1
  assert [e.step for e in _events(tmp_path).Scalars('loss')] == [
      l['step'] for l in _assert_events_mirror_metrics(tmp_path)]


def test_tensorboard_off_writes_no_events_and_is_not_a_result_field(tmp_path):
  """--notensorboard writes none; the same run resumed with events on is accepted
  (the flag changes no number) and writes them for every line so far."""
  cfg = dataclasses.replace(TS, tensorboard=False)
  trainer.train(cfg, tmp_path, progress=False, stop_after=8)
  assert not list(tmp_path.glob('events.out.tfevents.*'))
  trainer.train(TS, tmp_path, progress=False)
  _assert_events_mirror_metrics(tmp_path)


def test_num_steps_sets_the_length_schedule_and_evaluation(tmp_path):
  """20 steps of 16 per epoch: the run crosses into a second epoch, step s takes
  optax's cosine schedule over 20 steps at count s - 1, and it logs test metrics
  every 8 steps (the final evaluation is the summary's)."""
  cfg = dataclasses.replace(TS, num_epochs=1, num_steps=20, schedule='cosine', eval_every=8)
  assert cfg.validate().total_steps() == 20
  summary = trainer.train(cfg, tmp_path, progress=False)
  lines = metrics(tmp_path)
  assert summary['steps'] == 20
  assert [l['step'] for l in lines] == [4, 8, 12, 16, 20]
  assert [l['epoch'] for l in lines] == [0, 0, 0, 0, 1]
  reference = optax.cosine_decay_schedule(cfg.learning_rate, 20)
  np.testing.assert_allclose([l['learning_rate'] for l in lines],
                             [float(reference(l['step'] - 1)) for l in lines], atol=1e-7)
  assert [l['step'] for l in lines if 'test_loss' in l] == [8, 16]
  assert math.isfinite(summary['test_loss'])


# ------------------------------------------------------------------ bnjax-plot


def test_plot_overlays_runs_with_theorys_angle(tmp_path):
  """Two runs (one still training: interrupted after 8 steps) in one PNG; the
  dashed theory line is the closed form of each run's optimizer at the logged
  learning rate (SGD + momentum + L2: sqrt(2 lr lambda / (1 + a)), van Laarhoven
  2017 / Wan et al. 2021), and none for projection."""
  from bnjax.train.binaries import plot
  trainer.train(TS, tmp_path / 'sgd', progress=False)
  trainer.train(dataclasses.replace(TS, optimizer='adam', regularizer='decoupled',
                                    learning_rate=1e-3, weight_decay=0.1),
                tmp_path / 'adamw', progress=False, stop_after=8)
  out = plot.plot_runs([tmp_path / 'sgd', tmp_path / 'adamw'], tmp_path / 'both.png')
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 10_000
  run = plot.read_run(tmp_path / 'sgd')
  line = run['lines'][-1]
  lr, lam, a = line['learning_rate'], TS.weight_decay, TS.momentum
  assert plot._theory_angle(run, 'dense', line) == pytest.approx(
      math.sqrt(2 * lr * lam / (1 + a)), rel=1e-6)
  assert plot.equilibrium_kind(dict(run['config'], optimizer='adam',
                                    regularizer='decoupled')) == 'adamw'
  # Theory's other answers, by hand: a projected unit turns by
  # atan(lr ||g~|| / sqrt(1 - a^2)) (SGD; ||g~||^2 logged), a rotational one by
  # atan of the inner optimizer's equilibrium angle, SGDP by
  # sqrt(2 lr lambda wd_ratio / (1 - a)) (wd_ratio 0.1); no decay has none.
  g2 = line['grad_sq_at_unit_norm/dense']
  as_ = lambda **kw: dict(run, config=dict(run['config'], **kw))
  assert plot._theory_angle(as_(regularizer='projection', weight_decay=0.0), 'dense',
                            line) == pytest.approx(
      math.atan(lr * math.sqrt(g2) / math.sqrt(1 - a * a)), rel=1e-6)
  assert plot._theory_angle(as_(regularizer='rotational'), 'dense', line) == \
      pytest.approx(math.atan(math.sqrt(2 * lr * lam / (1 + a))), rel=1e-6)
  assert plot._theory_angle(as_(optimizer='sgdp', regularizer='decoupled'), 'dense',
                            line) == pytest.approx(math.sqrt(2 * lr * lam * 0.1 / (1 - a)),
                                                   rel=1e-6)
  assert plot.equilibrium_kind(dict(run['config'], weight_decay=0.0)) is None
  assert plot.default_output([tmp_path / 'sgd', tmp_path / 'adamw']) == \
      tmp_path.resolve() / 'plot.png'


def test_plot_refuses_what_is_not_a_run_before_writing(tmp_path):
  from bnjax.train.binaries import plot
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='holds no config.json'):
    plot.plot_runs([tmp_path / 'empty'], tmp_path / 'p.png')
  with pytest.raises(ValueError, match='is not a folder'):
    plot.plot_runs([tmp_path / 'missing'], tmp_path / 'p.png')
  with pytest.raises(ValueError, match='--output: must end in .png'):
    plot.plot_runs([tmp_path / 'empty'], tmp_path / 'p.pdf')
  with pytest.raises(ValueError, match='--output: folder .* does not exist'):
    plot.plot_runs([tmp_path / 'empty'], tmp_path / 'no' / 'p.png')
  (tmp_path / 'damaged').mkdir()
  (tmp_path / 'damaged' / 'config.json').write_text('{"learning_rate": ')
  with pytest.raises(ValueError, match='config.json'):
    plot.plot_runs([tmp_path / 'damaged'], tmp_path / 'p.png')
  assert not (tmp_path / 'p.png').exists()


def test_plot_binary_exits_non_zero_naming_the_folder(tmp_path):
  import subprocess
  import sys
  from _helpers import ROOT
  (tmp_path / 'empty').mkdir()
  out = subprocess.run([sys.executable, '-m', 'experiments.plot', str(tmp_path / 'empty')],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert 'holds no config.json' in out.stderr
  assert not list(tmp_path.rglob('*.png'))
