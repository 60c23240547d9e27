"""Faults: kills, torn lines, damaged checkpoints, concurrent processes, full disks, stale runs.

Each test states a promise of bnjax.train.workdir / bnjax.train and fails without
it: after any interruption the workdir resumes to exactly the numbers of an
uninterrupted run, with every metric line present once and valid JSON.
"""

import dataclasses
import errno
import os
import pathlib
import signal
import subprocess
import sys
import time
from unittest import mock

import chex
import jax
import numpy as np
import pytest

from bnjax.train import config, trainer, workdir
from bnjax.train.studies import study

from _helpers import ROOT, TS, binary, metrics as _metrics, strict_json as _strict


def _params(path):
  return jax.device_get(trainer.load_params(path))


def _summary(path):
  return {k: v for k, v in _strict((pathlib.Path(path) / 'summary.json').read_text())
          .items() if k != 'wall_time_s'}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  path = tmp_path_factory.mktemp('reference')
  trainer.train(TS, path, progress=False)
  return path


def _assert_same_run(path, reference):
  chex.assert_trees_all_equal(_params(path), _params(reference))
  assert _metrics(path) == _metrics(reference)
  assert _summary(path) == _summary(reference)


# ------------------------------------------------------------ interruptions


def test_interrupted_before_the_first_checkpoint(reference, tmp_path):
  trainer.train(TS, tmp_path, progress=False, stop_after=6)  # line 4 written, no checkpoint
  assert not list((tmp_path / 'checkpoints').iterdir())
  assert [l['step'] for l in _metrics(tmp_path)] == [4]
  trainer.train(TS, tmp_path, progress=False)
  _assert_same_run(tmp_path, reference)


def test_torn_metrics_line_is_dropped_and_redone(reference, tmp_path):
  trainer.train(TS, tmp_path, progress=False, stop_after=21)
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 24, "loss": 0.3')  # killed in the middle of a write
  trainer.train(TS, tmp_path, progress=False)
  _assert_same_run(tmp_path, reference)


@pytest.mark.parametrize('damage', ['deleted', 'garbage appended', 'truncated'])
def test_metrics_file_damaged_while_training_is_rewritten(reference, tmp_path, damage):
  """Someone deletes or edits metrics.jsonl while the run trains: the run notices at
  its next line, warns naming the file, and ends with the reference's lines."""
  real_write, calls = workdir.MetricsLog.write, []
  path = tmp_path / 'metrics.jsonl'

  def write(self, record):
    calls.append(record['step'])
    if len(calls) == 3:
      if damage == 'deleted':
        path.unlink()
      elif damage == 'garbage appended':
        with open(path, 'a') as f:
          f.write('{"step": 4, "loss": 0.1}\nnot json\n')
      else:
        path.write_text(path.read_text().splitlines()[0] + '\n')
    real_write(self, record)

  with mock.patch.object(workdir.MetricsLog, 'write', write), \
       mock.patch.object(workdir.logging, 'warning') as warning:
    trainer.train(TS, tmp_path, progress=False)
  assert [str(c.args[1]) for c in warning.call_args_list] == [str(path)]
  _assert_same_run(tmp_path, reference)


@pytest.fixture(scope='module')
def finished_study(tmp_path_factory):
  path = tmp_path_factory.mktemp('finished_study')
  study.run_sweep('teacher_student', 'smoke', {'a': TS}, path, workers=1)
  return path


@pytest.mark.parametrize('damage, problem', [
    ('missing', 'metrics.jsonl is missing'),
    ('garbage', r'metrics.jsonl, line 3: not JSON'),
    ('duplicate', r'metrics.jsonl, line 13: step 48 again after step 48'),
    ('no step', r'metrics.jsonl, line 2: no integer "step"'),
])
def test_the_loader_names_a_damaged_metrics_file_and_line(finished_study, tmp_path, damage,
                                                         problem):
  """A study's loader refuses a damaged metrics file naming the file and line, and
  never counts a step twice; --report_only exits 1 with one line naming it."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(finished_study, tmp_path, dirs_exist_ok=True)
  path = tmp_path / 'a' / 'metrics.jsonl'
  lines = path.read_text().splitlines()
  if damage == 'missing':
    path.unlink()
  elif damage == 'garbage':
    path.write_text('\n'.join(lines[:2] + ['{"step": 12, "lo'] + lines[2:]) + '\n')
  elif damage == 'duplicate':
    path.write_text('\n'.join(lines + lines[-1:]) + '\n')
  else:
    path.write_text('\n'.join(lines[:1] + [json.dumps({'loss': 1.0})] + lines[1:]) + '\n')
  with pytest.raises(workdir.DamagedFileError, match=problem):
    study.load_runs(tmp_path)
  if damage != 'garbage':
    return
  out = subprocess.run([sys.executable, '-m', 'experiments.teacher_student',
                        f'--workdir={tmp_path}', '--report_only'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and str(path) in errors[0], out.stderr[-2000:]


def test_damaged_latest_checkpoint_falls_back_with_one_warning(reference, tmp_path):
  trainer.train(TS, tmp_path, progress=False, stop_after=21)  # checkpoints 8 and 16
  latest = tmp_path / 'checkpoints' / '16'
  damaged = [p for p in latest.rglob('*') if p.is_file()]
  assert damaged
  for p in damaged:
    p.write_bytes(b'\x00garbage')
  with mock.patch.object(workdir.logging, 'warning') as warning:
    trainer.train(TS, tmp_path, progress=False)
  assert warning.call_count == 1
  message = warning.call_args[0][0] % warning.call_args[0][1:]
  assert 'step 16' in message and 'damaged' in message
  assert [p.name.split('-')[0] for p in (tmp_path / 'checkpoints_damaged').iterdir()] == ['16']
  _assert_same_run(tmp_path, reference)


def _kill_when(path, ready, **fields):
  proc = subprocess.Popen(binary(path, **fields), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not ready(path):
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (path / 'summary.json').exists(), 'the run finished before the kill'


def test_kill_9_before_the_first_checkpoint(tmp_path):
  """A real kill while lines but no checkpoint exist; the rerun holds each step once."""
  fields = dict(num_epochs=40, checkpoint_every=400)

  def has_lines(path):
    m = path / 'metrics.jsonl'
    return m.exists() and m.read_text().count('\n') >= 3

  killed, clean = tmp_path / 'killed', tmp_path / 'clean'
  _kill_when(killed, has_lines, **fields)
  assert not [p for p in (killed / 'checkpoints').iterdir() if p.name.isdigit()]
  for path in (killed, clean):
    out = subprocess.run(binary(path, **fields), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
  _assert_same_run(killed, clean)


# ------------------------------------------------------------------ locking


def test_second_process_is_refused_naming_the_holder(tmp_path):
  with workdir.locked(tmp_path):
    with pytest.raises(workdir.WorkdirLockedError, match=f'pid {os.getpid()}'):
      trainer.train(TS, tmp_path, progress=False)
  assert not (tmp_path / 'metrics.jsonl').exists()


def test_concurrent_binary_refused_within_seconds(tmp_path):
  path = tmp_path / 'run'
  first = subprocess.Popen(binary(path, num_epochs=200), cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and not (path / 'metrics.jsonl').exists():
      time.sleep(0.05)
    start = time.time()
    second = subprocess.run(binary(path, num_epochs=200), cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert time.time() - start < 30
    assert second.returncode == 2
    assert f'in use by another process (pid {first.pid})' in second.stderr
  finally:
    first.kill()
    first.wait()
  lines = _metrics(path)  # one writer only: each step once, strictly increasing
  assert lines


def test_stale_lock_of_a_dead_process_is_taken_over(reference, tmp_path):
  (tmp_path / '.lock').write_text('999999\n')  # left behind by a killed process
  trainer.train(TS, tmp_path, progress=False)
  _assert_same_run(tmp_path, reference)


# ---------------------------------------------------------------- disk full


def test_disk_full_then_resume(reference, tmp_path):
  real_write = workdir.MetricsLog.write
  calls = []

  def failing_write(self, record):
    calls.append(record['step'])
    if len(calls) == 5:
      raise OSError(errno.ENOSPC, 'No space left on device')
    real_write(self, record)

  with mock.patch.object(workdir.MetricsLog, 'write', failing_write):
    with pytest.raises(OSError, match='No space left'):
      trainer.train(TS, tmp_path, progress=False)
  assert not (tmp_path / 'summary.json').exists()
  trainer.train(TS, tmp_path, progress=False)
  _assert_same_run(tmp_path, reference)


def test_disk_full_binary_prints_one_clear_line(tmp_path):
  script = (
      'import errno, sys\n'
      'from absl import app\n'
      'from bnjax.train import workdir\n'
      'from bnjax.train.binaries import train\n'
      'def full(self, record):\n'
      '  raise OSError(errno.ENOSPC, "No space left on device")\n'
      'workdir.MetricsLog.write = full\n'
      'sys.argv[0] = "train"\n'
      'app.run(train.main)\n')
  cmd = binary(tmp_path / 'run')
  out = subprocess.run([sys.executable, '-c', script, *cmd[3:]], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert 'Traceback' not in out.stderr, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'no space left' in errors[0] and 'resumes' in errors[0]


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 300 KiB tmpfs (root only; skipped where mounting is not allowed)."""
  folder = tmp_path / 'tmpfs'
  folder.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=300k', 'tmpfs', str(folder)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  try:
    yield folder
  finally:
    subprocess.run(['umount', '-l', str(folder)], check=False)


def test_a_full_tmpfs_under_a_checkpoint_write_is_one_line_and_resumes(small_tmpfs,
                                                                     tmp_path):
  """A real ENOSPC from tensorstore inside orbax's checkpoint write: one error line
  naming the folder, exit 1; with space again the run resumes to the result of a
  run that never stopped. The tmpfs holds the run's other files and one and a half
  checkpoints (measured on the uninterrupted run, in tmpfs pages), so the second
  checkpoint's write fills it."""
  fields = dict(input_dim=4000)
  run, clean = small_tmpfs / 'run', tmp_path / 'clean'
  first = subprocess.run(binary(clean, **fields), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  # Space as tmpfs counts it (whole 4 KiB pages per file): every file but the
  # checkpoints (metrics, events, config), one checkpoint and half of the next.
  pages = lambda files: sum(-(-f.stat().st_size // 4096) * 4096 for f in files if f.is_file())
  one = pages((clean / 'checkpoints' / '48').rglob('*'))
  rest = pages(f for f in clean.rglob('*') if 'checkpoints' not in f.parts)
  size = rest + one + one // 2 + 64 * 1024
  subprocess.run(['mount', '-o', f'remount,size={size}', str(small_tmpfs)], check=True)
  out = subprocess.run(binary(run, **fields), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 1, (one, out.stderr[-2000:])
  assert out.stderr.strip().count('\n') == 0, out.stderr[-3000:]  # one line, nothing else
  assert out.stderr.startswith('error: no space left on the device') and str(run) in out.stderr
  assert workdir.checkpoint_steps(run), 'no checkpoint was written before the disk filled'
  subprocess.run(['mount', '-o', 'remount,size=20m', str(small_tmpfs)], check=True)
  again = subprocess.run(binary(run, **fields), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resuming from step' in again.stderr, again.stderr[-2000:]
  _assert_same_run(run, clean)


# ------------------------------------------------------------ config record


def test_finished_workdir_refuses_another_config_before_work(reference):
  before = {p: p.stat().st_mtime_ns for p in reference.rglob('*') if p.is_file()}
  with pytest.raises(workdir.ConfigMismatchError,
                     match=r'learning_rate: was 0\.05, now 0\.1.*seed: was 0, now 3'):
    trainer.train(dataclasses.replace(TS, learning_rate=0.1, seed=3), reference,
                progress=False)
  assert {p: p.stat().st_mtime_ns for p in reference.rglob('*') if p.is_file()} == before
  # Fields that change no number may differ; the finished run answers unchanged.
  again = trainer.train(dataclasses.replace(TS, eval_batch_size=7, checkpoint_every=16),
                      reference, progress=False)
  assert {k: v for k, v in again.items() if k != 'wall_time_s'} == _summary(reference)


def test_binary_refuses_another_config_on_a_finished_workdir(reference):
  out = subprocess.run(binary(reference, learning_rate=0.1), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert 'learning_rate: was 0.05, now 0.1' in out.stderr


# ----------------------------------------------------------------- diverged


def test_update_that_overflows_is_not_checkpointed(tmp_path):
  """A huge lr for one step: the loss before the update is finite, the state is not."""
  cfg = dataclasses.replace(TS, norm='none', optimizer='momentum', regularizer='none',
                            weight_decay=0.0, learning_rate=1e38, batch_size=512,
                            noise_std=100.0, num_epochs=1, log_every=1, checkpoint_every=1)
  with pytest.raises(trainer.NonFiniteLossError, match='state became non-finite by step 1'):
    trainer.train(cfg, tmp_path, progress=False)
  summary = _strict((tmp_path / 'summary.json').read_text())
  assert summary['status'] == 'diverged' and summary['test_loss'] is None
  manager = workdir.Checkpoints(tmp_path).manager
  for step in manager.all_steps():
    state = manager.restore(step)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
    assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == 'f'), step
  for line in (tmp_path / 'metrics.jsonl').read_text().splitlines():
    _strict(line)
  # The finished, diverged workdir answers the same way again (no retraining).
  with pytest.raises(trainer.NonFiniteLossError):
    trainer.train(cfg, tmp_path, progress=False)


def test_binary_exits_1_on_divergence(tmp_path):
  out = subprocess.run(binary(tmp_path / 'run', norm='none', regularizer='none',
                               weight_decay=0.0, learning_rate=1e38, batch_size=512,
                               noise_std=100.0, num_epochs=2, log_every=1,
                               checkpoint_every=1),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert 'error: the run diverged' in out.stderr and 'Traceback' not in out.stderr


# ------------------------------------------------------------------ sweeps


def test_sweep_never_reuses_a_run_of_another_config(tmp_path):
  quick = dataclasses.replace(TS, num_epochs=1)
  configs = {'a': quick, 'b': dataclasses.replace(quick, seed=1)}
  study.run_sweep('demo', 'smoke', configs, tmp_path, workers=1)
  changed = {'a': quick, 'b': dataclasses.replace(quick, seed=1, learning_rate=0.1)}
  with pytest.raises(study.StaleRunsError, match=r'b: learning_rate 0\.05 -> 0\.1'):
    study.run_sweep('demo', 'smoke', changed, tmp_path, workers=1)
  runs = study.run_sweep('demo', 'smoke', changed, tmp_path, rerun_stale=True,
                         workers=1)
  assert runs['b'].config['learning_rate'] == 0.1
  assert runs['a'].config == config.record(quick)
  assert len(list((tmp_path / 'stale').iterdir())) == 1  # the old run kept, not lost


def test_study_binary_refuses_a_folder_of_another_study_before_any_work(tmp_path):
  workdir.write_json_atomic(tmp_path / 'study.json', {
      'study': 'teacher_student', 'preset': 'standard', 'runs': ['a']})
  out = subprocess.run([sys.executable, '-m', 'experiments.teacher_student', '--preset=smoke',
                        f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode != 0 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert "--workdir" in out.stderr and "holds study 'teacher_student' preset 'standard'" in \
      out.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['study.json']


def test_report_loader_reads_a_study_of_an_older_config_format(tmp_path):
  """A study folder written before config format 5 (study.json and the runs' records
  both format 4) is read as it meant: --report_only finds every run."""
  quick = dataclasses.replace(TS, num_epochs=1)
  study.run_sweep('demo', 'smoke', {'a': quick}, tmp_path, workers=1)
  def older(record):
    record = {k: v for k, v in record.items() if k not in config.MEANT[4]}
    return dict(record, config_version=4)
  meta = _strict((tmp_path / 'study.json').read_text())
  meta['configs'] = {name: older(c) for name, c in meta['configs'].items()}
  workdir.write_json_atomic(tmp_path / 'study.json', meta)
  summary = _strict((tmp_path / 'a' / 'summary.json').read_text())
  workdir.write_json_atomic(tmp_path / 'a' / 'summary.json',
                            dict(summary, config=older(summary['config'])))
  assert list(study.load_runs(tmp_path)) == ['a']


def test_report_loader_leaves_out_runs_of_other_configs(tmp_path):
  quick = dataclasses.replace(TS, num_epochs=1)
  study.run_sweep('demo', 'smoke', {'a': quick}, tmp_path, workers=1)
  meta = _strict((tmp_path / 'study.json').read_text())
  meta['configs']['a']['learning_rate'] = 0.5  # study.json asks for another config
  workdir.write_json_atomic(tmp_path / 'study.json', meta)
  assert study.load_runs(tmp_path) == {}


def test_record_of_an_older_format_is_refused_not_resumed(tmp_path):
  """Format 1 (no config_version) let --optimizer=sgd ignore --momentum; resuming
  such a run under the new meaning would silently change it."""
  trainer.train(TS, tmp_path, progress=False, stop_after=8)
  old = _strict((tmp_path / 'config.json').read_text())
  del old['config_version']
  workdir.write_json_atomic(tmp_path / 'config.json', old)
  with pytest.raises(workdir.ConfigMismatchError, match=f'config_version: was None, now {config.CONFIG_VERSION}'):
    trainer.train(TS, tmp_path, progress=False)


def test_format_2_record_resumes_as_running_statistics(tmp_path):
  """Format 2 had no bn_eval: its runs evaluated with running statistics, so such
  a workdir resumes (and ends as an uninterrupted run), while the same workdir
  asked for another bn_eval is refused."""
  trainer.train(TS, tmp_path / 'a', progress=False, stop_after=8)
  old = _strict((tmp_path / 'a' / 'config.json').read_text())
  for key in ('bn_eval', 'bn_eval_batches'):
    del old[key]
  old['config_version'] = 2
  workdir.write_json_atomic(tmp_path / 'a' / 'config.json', old)
  with pytest.raises(workdir.ConfigMismatchError, match="bn_eval: was 'running', now 'debiased'"):
    trainer.train(dataclasses.replace(TS, bn_eval='debiased'), tmp_path / 'a', progress=False)
  resumed = trainer.train(TS, tmp_path / 'a', progress=False)
  whole = trainer.train(TS, tmp_path / 'b', progress=False)
  assert resumed['test_loss'] == whole['test_loss']


@pytest.mark.parametrize('version, field, changed', [
    (3, 'head_weight_decay', 0.0),  # format 3: the head decayed with --weight_decay
    (4, 'rest_learning_rate', 0.01),  # format 4: one learning rate for every parameter
    (4, 'init_scale', 2.0),  # format 4: the initializers' own scale
    (5, 'num_steps', 48),  # format 5: the run's length in epochs
])
def test_older_record_resumes_with_the_values_it_meant(tmp_path, version, field, changed):
  trainer.train(TS, tmp_path / 'a', progress=False, stop_after=8)
  old = _strict((tmp_path / 'a' / 'config.json').read_text())
  for key in config.MEANT[version]:
    del old[key]
  old['config_version'] = version
  workdir.write_json_atomic(tmp_path / 'a' / 'config.json', old)
  meant = config.MEANT[version][field]
  with pytest.raises(workdir.ConfigMismatchError, match=f'{field}: was {meant}, now {changed}'):
    asked = dict({field: changed}, **({'num_epochs': 1} if field == 'num_steps' else {}))
    trainer.train(dataclasses.replace(TS, **asked), tmp_path / 'a', progress=False)
  resumed = trainer.train(TS, tmp_path / 'a', progress=False)
  whole = trainer.train(TS, tmp_path / 'b', progress=False)
  assert resumed['test_loss'] == whole['test_loss']


# ------------------------------------------------------- summaries trusted only when valid


def _tampered(summary: dict, case: str) -> dict:
  if case == 'running':
    return {**summary, 'status': 'running', 'test_loss': 99.0,
            'config': {**summary['config'], 'learning_rate': 0.3}}
  if case == 'another_run':
    return {**summary, 'config': {**summary['config'], 'seed': 5}}
  if case == 'unknown_status':
    return {**summary, 'status': 'paused'}
  if case == 'incomplete':
    return {k: v for k, v in summary.items() if k != 'test_loss'}
  return ['not', 'an', 'object']


@pytest.mark.parametrize('case', ['running', 'another_run', 'unknown_status', 'incomplete',
                                  'not_an_object'])
def test_a_tampered_summary_is_not_the_runs_answer(reference, tmp_path, case):
  """A summary answers for a run only when it is a complete, finished summary of exactly
  this config; any other is rewritten by resuming from the run's last checkpoint."""
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
  path = tmp_path / 'summary.json'
  original = _strict(path.read_text())
  path.write_text(__import__('json').dumps(_tampered(original, case)))
  summary = trainer.train(TS, tmp_path, progress=False)
  expected = {k: v for k, v in original.items() if k != 'wall_time_s'}
  assert {k: v for k, v in summary.items() if k != 'wall_time_s'} == expected
  _assert_same_run(tmp_path, reference)


def test_a_study_trains_again_a_run_whose_summary_is_not_its_own(tmp_path):
  """In a study, a run whose summary belongs to another run is neither reported as
  finished nor left untrained: the sweep finishes it again from its checkpoint."""
  import json  # pylint: disable=g-import-not-at-top
  configs = {'a': TS, 'b': dataclasses.replace(TS, seed=1)}
  study.run_sweep('test', 'smoke', configs, tmp_path, workers=1)
  good = _strict((tmp_path / 'a' / 'summary.json').read_text())
  foreign = _strict((tmp_path / 'b' / 'summary.json').read_text())
  (tmp_path / 'a' / 'summary.json').write_text(json.dumps(foreign))
  assert sorted(study.load_runs(tmp_path)) == ['b']  # not counted as a's result
  runs = study.run_sweep('test', 'smoke', configs, tmp_path, workers=1)
  assert sorted(runs) == ['a', 'b']
  again = _strict((tmp_path / 'a' / 'summary.json').read_text())
  assert {k: v for k, v in again.items() if k != 'wall_time_s'} == {
      k: v for k, v in good.items() if k != 'wall_time_s'}


@pytest.mark.parametrize('content, problem', [
    ('{}', 'no study name'), ('[1, 2]', 'a JSON list, not an object'),
    ('{"study": "effective_lr"}', 'no list of run names'), ('{"study": ', 'not valid JSON')])
def test_a_damaged_study_record_is_named(tmp_path, content, problem):
  """A damaged study.json is named with what is wrong, by the loader, the sweep and
  the report binary (an exit naming --workdir, no traceback)."""
  (tmp_path / 'study.json').write_text(content)
  for call in (lambda: study.load_study(tmp_path),
               lambda: study.run_sweep('effective_lr', 'smoke', {'a': TS}, tmp_path,
                                       workers=1)):
    with pytest.raises(ValueError, match=f'study.json.*{problem}'):
      call()
  assert not (tmp_path / 'a').exists()
  out = subprocess.run([sys.executable, '-m', 'experiments.report', f'--workdir={tmp_path}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert '--workdir' in out.stderr and 'study.json' in out.stderr


def test_damaged_run_files_are_named_or_set_aside(reference, tmp_path):
  """A garbage progress.json (wall-time bookkeeping) is set aside with a warning and
  the run resumes exactly; a garbage config.json makes the binary exit 1 with one
  line naming it, before any work."""
  trainer.train(TS, tmp_path / 'run', progress=False, stop_after=21)
  (tmp_path / 'run' / 'progress.json').write_text('{"16": ')
  with mock.patch.object(workdir.logging, 'warning') as warning:
    trainer.train(TS, tmp_path / 'run', progress=False)
  assert any('progress.json' in str(c.args[1]) for c in warning.call_args_list)
  _assert_same_run(tmp_path / 'run', reference)
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'config.json').write_text('{"seed": 0, ')
  out = subprocess.run(binary(bad), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().startswith('error:') and 'config.json' in out.stderr
  assert sorted(p.name for p in bad.iterdir()) == ['config.json']


def _without(tree, field):
  if isinstance(tree, dict):
    return {k: _without(v, field) for k, v in tree.items() if k != field}
  if isinstance(tree, list):
    return [_without(v, field) for v in tree]
  return tree


def test_checkpoint_from_before_a_tracked_field_resumes_not_retrains(reference, tmp_path):
  # A checkpoint written before track_dynamics had angular_update_rms (the same
  # state less that field, as orbax wrote it) resumes from its step: it is
  # neither set aside as damaged nor the run retrained from step 0.
  trainer.train(TS, tmp_path, progress=False, stop_after=21)  # checkpoints 8 and 16
  ckpt = workdir.Checkpoints(tmp_path)
  for step in ckpt.manager.all_steps():
    old = _without(ckpt.manager.restore(step, args=workdir.ocp.args.StandardRestore()),
                   'angular_update_rms')
    ckpt.manager.delete(step)
    ckpt.save(step, old)
  with mock.patch.object(workdir.logging, 'warning') as warning:
    trainer.train(TS, tmp_path, progress=False)
  message = warning.call_args[0][0] % warning.call_args[0][1:]
  assert warning.call_count == 1 and 'step 16' in message, message
  assert 'has no angular_update_rms' in message and 'damaged' not in message
  assert not (tmp_path / 'checkpoints_damaged').exists()
  _assert_same_run(tmp_path, reference)


def _with_old_weight_norm_gains(tree):
  """The tree as bnjax wrote it before its WeightNorm took flax's gain names."""
  if isinstance(tree, dict):
    return {('scale' if k == 'layer_instance/kernel/scale' else k): _with_old_weight_norm_gains(v)
            for k, v in tree.items()}
  if isinstance(tree, list):
    return [_with_old_weight_norm_gains(v) for v in tree]
  return tree


def test_checkpoint_with_the_earlier_weight_norm_gain_names_resumes(tmp_path):
  # bnjax's WeightNorm called its gain `scale` before it took flax's
  # `layer_instance/kernel/scale`: such checkpoints (params and the optimizer's
  # momentum both) resume from their step and end equal to an unbroken run.
  wn = dataclasses.replace(TS, norm='weight', optimizer='momentum')
  trainer.train(wn, tmp_path / 'unbroken', progress=False)
  trainer.train(wn, tmp_path / 'run', progress=False, stop_after=21)
  ckpt = workdir.Checkpoints(tmp_path / 'run')
  for step in ckpt.manager.all_steps():
    new = ckpt.manager.restore(step, args=workdir.ocp.args.StandardRestore())
    old = _with_old_weight_norm_gains(new)
    assert old != new and 'scale' in old['params']['dense']
    ckpt.manager.delete(step)
    ckpt.save(step, old)
  assert 'layer_instance/kernel/scale' in workdir.Checkpoints(
      tmp_path / 'run').latest_state()['params']['dense']  # the reports' reader too
  with mock.patch.object(workdir.logging, 'warning') as warning:
    trainer.train(wn, tmp_path / 'run', progress=False)
  message = warning.call_args[0][0] % warning.call_args[0][1:]
  assert warning.call_count == 1 and 'step 16' in message, message
  assert 'WeightNorm gains' in message and 'damaged' not in message
  assert not (tmp_path / 'run' / 'checkpoints_damaged').exists()
  _assert_same_run(tmp_path / 'run', tmp_path / 'unbroken')


def test_restore_by_name_fills_only_derived_fields():
  template = {'params': {'w': np.zeros(2, np.float32)},
              'tracked': {'weight_norm': np.zeros(()), 'angular_update_rms': np.zeros(())}}
  tracked = {'weight_norm': np.ones(())}
  state, missing = workdir.restore_by_name(
      {'params': {'w': np.ones(2)}, 'tracked': tracked}, template)
  assert missing == {'angular_update_rms'}
  assert state['params']['w'].dtype == np.float32 and float(state['params']['w'][0]) == 1.0
  assert float(state['tracked']['weight_norm']) == 1.0
  assert float(state['tracked']['angular_update_rms']) == 0.0
  with pytest.raises(KeyError, match=r"\['params'\]\['w'\] is not in the checkpoint"):
    workdir.restore_by_name({'params': {}, 'tracked': tracked}, template)
  with pytest.raises(ValueError, match=r"has shape \(3,\) in the checkpoint, \(2,\) in"):
    workdir.restore_by_name({'params': {'w': np.ones(3)}, 'tracked': tracked}, template)
  with pytest.raises(ValueError, match='holds 1 leaves the run does not'):
    workdir.restore_by_name({'params': {'w': np.ones(2), 'v': np.ones(1)},
                             'tracked': tracked}, template)
