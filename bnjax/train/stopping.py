"""Stopping runs on request: Ctrl-C and SIGTERM end a run or a sweep at once, and
worker processes never outlive the process that started them.

* :func:`stop_on_signals` turns SIGINT and SIGTERM into :class:`Stopped` (a
  ``KeyboardInterrupt``) in the main thread, outside the blocks that write a
  checkpoint (:func:`deferred`); a binary catches it, says where
  its runs stand (:func:`where_runs_stand`) and exits ``128 + signal``
  (130, 143), as a shell reports a process its signal ended.
* A sweep's worker processes ignore SIGINT from their start (:func:`spawning`;
  the terminal sends it to the whole process group, the parent decides) and
  watch their parent
  (:func:`exit_with_parent`): when it is gone, whatever signal ended it, they
  exit within a second. Their workdir locks go with them (``flock``), and each
  run resumes from its last checkpoint.
"""

import contextlib
import os
import pathlib
import signal
import threading
from typing import Iterable, Optional

from bnjax.train import workdir as workdirs

__all__ = ['Stopped', 'deferred', 'exit_with_parent', 'spawning', 'stop_on_signals',
           'where_runs_stand']

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
  """A signal asked the process to stop.

  Attributes:
    signum: the signal's number.
    exit_code: ``128 + signum``, the shell's status of a process ended by it.

  Example:
    >>> import signal
    >>> from bnjax.train import stopping
    >>> e = stopping.Stopped(signal.SIGTERM)
    >>> e.name, e.exit_code
    ('SIGTERM', 143)
  """

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = int(signum)
    self.exit_code = 128 + self.signum
    self.name = signal.Signals(self.signum).name


_depth = 0  # how many deferred() blocks the main thread is in
_pending = None  # the signal that arrived inside one


def _raise_stopped(signum, frame):  # pylint: disable=unused-argument
  global _pending
  if _depth:
    _pending = signum
    return
  raise Stopped(signum)


@contextlib.contextmanager
def deferred():
  """A block a stop signal does not cut: one that arrives inside it raises
  :class:`Stopped` when the block has ended (a checkpoint is written whole, and
  orbax's writer threads are not torn down mid-write)."""
  global _depth, _pending
  _depth += 1
  try:
    yield
  finally:
    _depth -= 1
  if not _depth and _pending is not None:
    signum, _pending = _pending, None
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals():
  """SIGINT and SIGTERM raise :class:`Stopped` in the main thread inside the block
  (the previous handlers come back after it). Outside the main thread (where
  Python delivers no signal) it does nothing."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  global _pending
  previous = {s: signal.signal(s, _raise_stopped) for s in SIGNALS}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _pending = None


@contextlib.contextmanager
def spawning():
  """Around starting worker processes: SIGINT is ignored, so the workers start
  with it ignored (a disposition ``exec`` keeps, and Python then installs no
  ``KeyboardInterrupt`` handler) and a Ctrl-C to the process group during
  their start-up cannot interrupt their imports; a SIGTERM waits for the block's
  end (:func:`deferred`). A Ctrl-C in the block itself (milliseconds) is lost."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with deferred():
      yield
  finally:
    signal.signal(signal.SIGINT, previous)


def exit_with_parent(parent: int, poll_seconds: float = 0.5) -> None:
  """In a worker process: ignore SIGINT, and exit at once (status 1) when the
  process ``parent`` (the pid the parent passed, not ``os.getppid()`` read here:
  the parent may already be gone when a worker starts) is no longer its parent,
  checked every ``poll_seconds`` by a daemon thread."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)

  def watch():
    while True:
      if os.getppid() != parent:
        os._exit(1)  # pylint: disable=protected-access
      threading.Event().wait(poll_seconds)

  threading.Thread(target=watch, name='bnjax-parent-watch', daemon=True).start()


def run_state(path):
  """``'finished'`` or ``'diverged'`` for a done run folder, else the step its
  newest checkpoint holds (0: it starts over), from its files alone."""
  path = pathlib.Path(path)
  try:
    summary = workdirs.read_json(path / workdirs.SUMMARY)
  except ValueError:
    summary = None
  status = summary.get('status') if isinstance(summary, dict) else None
  if status in ('finished', 'diverged'):
    return status
  steps = workdirs.checkpoint_steps(path)
  return steps[-1] if steps else 0


def where_runs_stand(paths: Iterable, how: Optional[Stopped] = None) -> str:
  """One line: how many of the runs in ``paths`` are done, where each other one
  resumes, and that rerunning the same command resumes them.

  Example:
    >>> import tempfile
    >>> from bnjax.train import stopping
    >>> stopping.where_runs_stand([tempfile.mkdtemp()])
    'stopped: 0 of 1 runs done; 1 starts over. Rerun the same command to resume.'
  """
  states = [run_state(p) for p in paths]
  resume = sorted(s for s in states if isinstance(s, int))
  line = (f'stopped{f" by {how.name}" if how is not None else ""}: '
          f'{len(states) - len(resume)} of {len(states)} runs done')
  if not resume:
    return line + '.'
  parts = []
  for step in sorted(set(resume)):
    n = resume.count(step)
    verb = ('starts over' if n == 1 else 'start over') if step == 0 else (
        f'{"resumes" if n == 1 else "resume"} from step {step}')
    parts.append(f'{n} {verb}')
  return f'{line}; {", ".join(parts)}. Rerun the same command to resume.'
