"""Stopping on request, with no orphan: Ctrl-C and SIGTERM to a run or a study,
SIGKILL to a study's parent, processes sharing a study folder, an empty shard.

Each test drives the real binaries in subprocesses and sends real signals.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from _helpers import ROOT, binary
from bnjax.train import workdir as workdirs

STUDY = [sys.executable, '-m', 'experiments.teacher_student', '--preset=smoke']
RUNS = 16  # the smoke preset's runs
SHARD = ['--shard=0/4']  # 4 of them: the study tests train a quarter of the study


def _shard_runs():
  from bnjax.train.studies import study, teacher_student  # pylint: disable=g-import-not-at-top
  return study.shard_of(teacher_student.configs('smoke', 'none'), (0, 4))


def _wait_for(condition, timeout=300.0, every=0.02):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return True
    time.sleep(every)
  return False


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(')')[-1].split()[0] != 'Z'  # a zombie has ended
  except FileNotFoundError:
    return False


def _children(pid: int) -> list:
  out = subprocess.run(['ps', '-o', 'pid=', '--ppid', str(pid)], capture_output=True,
                       text=True)
  return [int(p) for p in out.stdout.split()]


@pytest.mark.parametrize('signum, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stops_at_once_with_one_line_and_resumes(tmp_path, signum, code):
  path = tmp_path / 'run'
  command = binary(path, num_epochs=20)
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  assert _wait_for(lambda: workdirs.checkpoint_steps(path) or proc.poll() is not None)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == code, err[-2000:]
  assert 'Traceback' not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert re.fullmatch(rf'stopped by {signal.Signals(signum).name}: 0 of 1 runs done; '
                      r'1 resumes from step \d+\. Rerun the same command to resume\.', last)
  step = int(re.search(r'from step (\d+)', last)[1])
  assert not (path / workdirs.SUMMARY).exists()

  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f'{path}: resuming from step {step}' in again.stderr
  third = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert third.returncode == 0
  assert f'{path}: already finished at step 320' in third.stderr
  assert third.stdout == again.stdout  # the same summary line


def _worker_holding_a_run(parent: int, workdir: pathlib.Path):
  """The pid of a worker of ``parent`` that holds a run's lock, once there is one."""
  found = []

  def holder():
    workers = set(_children(parent))
    for lock in workdir.glob('*/.lock'):
      text = lock.read_text().strip()
      if text.isdigit() and int(text) in workers:
        found.append(int(text))
        return True
    return False

  assert _wait_for(holder), 'no worker took a run'
  return found[0]


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGKILL])
def test_a_stopped_study_leaves_no_worker_and_resumes(tmp_path, signum):
  """Ctrl-C as a terminal sends it (to the whole process group: the workers leave
  it to the parent), and SIGKILL to the parent alone (the workers see it gone).
  SIGTERM takes the parent's SIGINT path (the run test covers its exit code)."""
  workdir = tmp_path / 'study'
  command = STUDY + SHARD + [f'--workdir={workdir}', '--workers=2', '--vectorize=off']
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  _worker_holding_a_run(proc.pid, workdir)
  workers = _children(proc.pid)
  assert workers
  if signum == signal.SIGINT:
    os.killpg(proc.pid, signum)
  else:
    proc.send_signal(signum)
  out, err = proc.communicate(timeout=60)
  assert _wait_for(lambda: not any(_alive(p) for p in workers), timeout=10), (
      'workers outlived their parent', [p for p in workers if _alive(p)])
  if signum == signal.SIGKILL:
    assert proc.returncode == -signal.SIGKILL
  else:
    assert proc.returncode == 128 + signum, err[-2000:]
    assert 'Traceback' not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.match(rf'stopped by {signal.Signals(signum).name}: \d of 4 runs done; ',
                    last), last
    assert last.endswith('Rerun the same command to resume.')
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f'shard 0/4 done; 4 of {RUNS} runs of the study finished' in again.stdout


def test_a_second_process_skips_the_runs_another_holds(tmp_path):
  """A run another live process holds is skipped, not an error; the rest train and
  the process says which runs are held and how to get the report."""
  workdir = tmp_path / 'study'
  names = _shard_runs()
  held = workdir / names[1]
  held.mkdir(parents=True)
  command = STUDY + SHARD + [f'--workdir={workdir}', '--workers=1']
  with workdirs.locked(held):
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert (f'1 run(s) are held by other processes: {names[1]}. When they are done: '
          f'--report_only --workdir={workdir}') in out.stdout
  done = sorted(p.parent.name for p in workdir.glob('*/summary.json'))
  assert done == sorted(set(names) - {names[1]})
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f'shard 0/4 done; 4 of {RUNS} runs of the study finished' in again.stdout


def test_a_shard_without_runs_exits_0(tmp_path):
  """--shard=20/32 of a 16-run study (a Slurm array larger than the sweep)."""
  out = subprocess.run(STUDY + [f'--workdir={tmp_path}', '--shard=20/32'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f'shard 20/32 has no runs: the study has {RUNS}' in out.stdout
  assert not list(tmp_path.iterdir())


def test_a_signal_inside_a_checkpoint_write_takes_effect_after_it():
  """In process: SIGINT during a deferred block (a checkpoint write) is raised as
  Stopped when the block ends, not inside it; the old handler comes back after."""
  from bnjax.train import stopping  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGINT)
  reached = []
  with pytest.raises(stopping.Stopped) as stopped:
    with stopping.stop_on_signals():
      with stopping.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler has run by now
        reached.append('end of the block')
      reached.append('after the block')
  assert reached == ['end of the block']
  assert stopped.value.exit_code == 130 and stopped.value.name == 'SIGINT'
  assert signal.getsignal(signal.SIGINT) is before
