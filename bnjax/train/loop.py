"""The training loop, one for every way a run trains: a single run (one device,
``pmap`` or sharded) is a group of one, a vectorized group many members stepped
as one program.

:func:`run` steps a :class:`Program` from a step to the end and, for each member,
checks and logs every window of ``log_every`` steps (evaluating the test set every
``eval_every`` steps), checkpoints every ``checkpoint_every`` steps and at the end,
and writes the summary, reusing the loop's evaluation of the last step when there
is one. A member whose loss or state stops being finite is recorded as diverged
(:meth:`bnjax.train.run_files.RunFiles.diverged`) while the others go on.
"""

import dataclasses
import pathlib
import time
from typing import Iterator, List, Optional, Protocol

import jax
from absl import logging
from tqdm import tqdm

from bnjax.train import data
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config
from bnjax.train.inputs import RunData
from bnjax.train.run_files import NonFiniteLossError, RunFiles

__all__ = ['Member', 'Program', 'answered', 'run']


@dataclasses.dataclass
class Member:
  """One run of a program: its config, files and data.

  Attributes:
    config: the run's :class:`bnjax.train.config.Config`.
    files: its :class:`bnjax.train.run_files.RunFiles` (resumed).
    data: its :class:`bnjax.train.inputs.RunData`.
  """
  config: Config
  files: RunFiles
  data: RunData


class Program(Protocol):
  """What :func:`run` needs of the members' compiled program."""

  def step(self, state, batch):
    """``(state, metrics)`` after one step of every member."""

  def batches(self, start: int, stop: int) -> Iterator:
    """The members' training batches of global steps ``start .. stop - 1``."""

  def host(self, state):
    """A host copy of the state (every member's)."""

  def saveable(self, state, host):
    """What the members' checkpoints are written from (``host()``: the host copy)."""

  def member(self, tree, j: int):
    """Member ``j``'s part of a state or metrics tree."""

  def evaluate(self, host, members: List[int]) -> dict:
    """``{j: test metrics}`` of the members ``j`` in ``members``."""


def answered(workdir: pathlib.Path, wanted: dict, *, warn: bool = False) -> Optional[dict]:
  """The summary of a done run of ``wanted`` in ``workdir`` (None when not done).

  A ``summary.json`` answers only when it is a complete, finished (or diverged)
  summary of exactly this config (:func:`bnjax.train.workdir.summary_problem`);
  any other is left in place (``warn``: with a warning naming it and what is
  wrong, given by the check made under the workdir's lock), the run resumes from
  its checkpoint and its end overwrites it.

  Raises :class:`bnjax.train.workdir.ConfigMismatchError` for another config,
  :class:`bnjax.train.run_files.NonFiniteLossError` for a diverged run.
  """
  workdirs.check_config(workdir, wanted, Config.NON_RESULT_FIELDS)
  path = pathlib.Path(workdir) / workdirs.SUMMARY
  summary = workdirs.read_json(path)
  if summary is None:
    return None
  problem = workdirs.summary_problem(summary, wanted, Config.NON_RESULT_FIELDS)
  if problem is not None:
    if warn:
      logging.warning('%s is not a finished summary of this run (%s); the run resumes '
                      'from its last checkpoint and rewrites it.', path, problem)
    return None
  if summary['status'] == 'diverged':
    raise NonFiniteLossError(summary.get('error', 'the run diverged'))
  return summary


def run(program: Program, members: List[Member], state, step: int, *,
        progress: bool = False, stop_after: Optional[int] = None,
        main_process: bool = True) -> list:
  """Trains the members from ``step`` (all of them there) to the end.

  Args:
    program: the members' :class:`Program`.
    members: the :class:`Member` list, in the program's member order; they
      share every setting that shapes the loop (steps, ``log_every``,
      ``eval_every``, ``checkpoint_every``: the first member's).
    state: the members' device state at ``step``.
    step: the step every member resumes from.
    progress: show a tqdm progress bar.
    stop_after: end after that many total steps, as an interruption would (no
      extra log line or checkpoint, no summary).
    main_process: this process writes the files (multi-host runs: process 0).

  Returns:
    Per member: its summary dict; the :class:`NonFiniteLossError` it diverged
    with (its ``summary.json`` records it); or ``None`` when ``stop_after``
    ended the call first.
  """
  config = members[0].config
  steps_per_epoch = members[0].data.train_batches.steps_per_epoch
  total = config.num_steps or steps_per_epoch * config.num_epochs
  end = total if stop_after is None else min(total, stop_after)
  outcome: list = [None] * len(members)
  alive = list(range(len(members)))

  def each_alive(action):
    for j in list(alive):
      try:
        action(j)
      except NonFiniteLossError as e:
        alive.remove(j)
        outcome[j] = e

  fetched = {}  # step -> the host copy of the state at that step (read once per step)

  def host_state():
    if step not in fetched:
      fetched.clear()
      fetched[step] = program.host(state)
    return fetched[step]

  window, window_start = [], time.perf_counter()
  final_test = None  # the test metrics of the last step, when the loop evaluated it
  bar = tqdm(total=total, initial=step, disable=not (progress and main_process),
             unit='step', dynamic_ncols=True)
  try:
    for batch in data.prefetch(program.batches(step, end)):
      epoch = step // steps_per_epoch
      state, metrics = program.step(state, batch)
      step += 1
      window.append((step, metrics))
      bar.update(1)
      if step % config.log_every == 0 or step == total:
        host = jax.device_get([m for _, m in window])
        current = host_state()
        seconds = time.perf_counter() - window_start
        test = {}
        if config.eval_every and step % config.eval_every == 0:
          test = program.evaluate(current, alive)
          final_test = test if step == total else None

        def log(j):
          files, mine = members[j].files, program.member(current, j)
          lines = [program.member(m, j) for m in host]
          files.check_window([s for s, _ in window], lines, mine, step)
          line = files.write_line(step, epoch, lines, mine, seconds, test.get(j))
          if len(members) == 1:
            bar.set_postfix(loss=f'{line["loss"]:.4f}', img_s=f'{line["images_per_s"]:.0f}')

        each_alive(log)
        window, window_start = [], time.perf_counter()
      if step % config.checkpoint_every == 0 or step == total:
        saved = program.saveable(state, host_state)
        each_alive(lambda j: members[j].files.save(step, program.member(saved, j)))
      if not alive:
        break
  finally:
    bar.close()
  if step >= total and alive:
    final = host_state()
    results = program.evaluate(final, alive) if final_test is None else final_test

    def finish(j):
      outcome[j] = members[j].files.finish(step, program.member(final, j), results[j])

    each_alive(finish)
  return outcome
