"""One run of a configuration: refuse, build, lock, resume, then train through the one
loop (:func:`bnjax.train.loop.run`, a run being a group of one) and summarize.

:func:`train` runs a :class:`Config` in a workdir and leaves there

* ``config.json`` -- the configuration (a rerun with a config that differs in a
  field outside ``Config.NON_RESULT_FIELDS`` is refused before any work);
* ``metrics.jsonl`` -- one JSON object per logged step: ``step``, ``epoch``,
  ``loss`` and ``accuracy`` (means since the previous line), ``learning_rate``,
  ``images_per_s``, ``time_s`` and, for every kernel, ``weight_norm/<layer>``,
  ``angular_update/<layer>``, ``effective_lr/<layer>`` and ``update_norm/<layer>``
  (from :func:`bnjax.transforms.track_dynamics`, always on; the values of the
  logged step), ``grad_sq_at_unit_norm/<layer>`` (window mean, see
  :func:`unit_scale_grad_sq`), ``angular_update_sq/<layer>`` and
  ``dead_units/<layer>`` (window means of the squared per-unit angle over the
  live units and of the fraction of dead or collapsed units, see
  :func:`bnjax.train.step_metrics.unit_angle_metrics`), ``gamma_sq/<layer>`` for every normalization
  gain, every ``eval_every`` steps ``test_loss`` and ``test_accuracy``, and
  ``per_unit/grad_sq_at_unit_norm/<layer>`` and ``per_unit/weight_norm/<layer>``
  (lists: each unit's window mean);
* ``events.out.tfevents.*`` -- the same lines as TensorBoard events
  (:mod:`bnjax.train.events`; ``tensorboard=False`` leaves them out);
* ``checkpoints/`` -- orbax checkpoints every ``checkpoint_every`` steps and
  at the end; a rerun resumes from the latest and ends with the same numbers;
* ``summary.json`` -- written atomically at the end: ``status`` (``finished``
  or ``diverged``), test loss and accuracy, steps, wall time, ``fan_in``
  (weights per unit of every kernel), config. A workdir with a summary is
  done: rerunning the same config returns it (a diverged one raises again).

Lock, resume, fallback past a damaged checkpoint and strict JSON are
:mod:`bnjax.train.workdir`'s.

The loop is :mod:`bnjax.train.loop`'s, the data :mod:`bnjax.train.inputs`'s, the
steps and parallel modes :mod:`bnjax.train.executors`'s, the metrics
:mod:`bnjax.train.step_metrics`'s, the config :mod:`bnjax.train.config`'s.
"""

from typing import Any, Optional

import jax

from bnjax.train import config as config_lib
from bnjax.train import executors, inputs, loop
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config
from bnjax.train.inputs import input_normalization, load_data
from bnjax.train.programs import (build_model, build_optimizer, eval_batch_stats,
                                  hyperparameters, init_state, programs)
from bnjax.train.run_files import NonFiniteLossError, RunFiles
from bnjax.train.workdir import write_json_atomic

__all__ = [
    'NonFiniteLossError',
    'build_model',
    'build_optimizer',
    'init_state',
    'input_normalization',
    'load_data',
    'load_params',
    'train',
]


def train(config: Config, workdir, *, data_dir: Optional[str] = None,
          progress: bool = True, stop_after: Optional[int] = None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if possible); returns the summary.

  Everything that can be refused is refused before the workdir is created or
  written: the config (:meth:`Config.validate`), a workdir holding another
  config (:class:`bnjax.train.workdir.ConfigMismatchError`), the data
  (:func:`bnjax.train.inputs.prepare`) and the model. Then the workdir is
  locked (:class:`bnjax.train.workdir.WorkdirLockedError` when another process
  holds it) and the run resumes from its newest intact checkpoint and trains
  through :func:`bnjax.train.loop.run` as a group of one. A finished workdir
  answers with its summary without training.

  Args:
    config: the run's :class:`bnjax.train.config.Config`.
    workdir: the run's folder (config.json, metrics.jsonl, checkpoints/,
      summary.json).
    data_dir: tfds data dir for image datasets.
    progress: show a tqdm progress bar.
    stop_after: end the call after that many total steps, as an interruption
      would (no extra log line or checkpoint, no summary); the next call
      resumes from the last checkpoint.

  Returns:
    The summary dict (also ``summary.json``); ``{}`` when ``stop_after``
    ended the call.

  Raises:
    NonFiniteLossError: the loss or the updated state stopped being finite;
      nothing non-finite is checkpointed and ``summary.json`` records
      ``status: "diverged"``.

  Example:
    >>> from bnjax.train import trainer
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> import tempfile
    >>> summary = trainer.train(config, tempfile.mkdtemp(), progress=False)
    >>> summary['status'], summary['steps']
    ('finished', 4)

  References:
    van Laarhoven 2017, arXiv 1706.05350, section 5 (the training setup).
  """
  workdir = workdirs.folder(workdir)
  config.validate(jax.device_count())
  wanted = config_lib.record(config)
  main_process = jax.process_index() == 0
  summary = loop.answered(workdir, wanted)
  if summary is not None:
    return summary
  run_data = inputs.prepare(config, data_dir)
  initial, executor, eval_step = programs(config)
  state = initial(jax.random.key(config.seed), run_data.train_batches.batch(0, 0)['x'],
                  hyperparameters(config), config.init_scale)
  return run_one(config, workdir, wanted, run_data, state, executor, eval_step,
                 progress=progress, stop_after=stop_after)


def run_one(config: Config, workdir, wanted: dict, run_data, state, executor, eval_step, *,
            progress: bool = True, stop_after: Optional[int] = None,
            stats_update=None, invariant=None) -> dict:
  """Locks ``workdir``, resumes and trains one run built by the caller (:func:`train`,
  :func:`bnjax.train.fit`) through the loop; returns its summary (``{}`` when
  ``stop_after`` ended the call).

  ``stats_update`` is the model's training-mode forward returning its new
  ``batch_stats`` (``bn_eval='precise'``; default: the config's model's) and
  ``invariant`` the names of its scale-invariant layers (default: the
  config's model's, :func:`bnjax.train.step_metrics.invariant_layers`).
  """
  main_process = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  with workdirs.locked(workdir, enabled=main_process):
    # Asked again under the lock: another process may have finished meanwhile.
    summary = loop.answered(workdir, wanted, warn=True)
    if summary is not None:
      return summary
    if main_process and not (workdir / workdirs.CONFIG).exists():
      write_json_atomic(workdir / workdirs.CONFIG, wanted)
    files = RunFiles(config, workdir, wanted, main_process, invariant=invariant)
    try:
      state = executor.put_state(files.resume(state))
      member = loop.Member(config, files, run_data)
      program = _SingleRun(executor, eval_step, member, stats_update)
      outcome, = loop.run(program, [member], state,
                          int(executor.get_state(state).step), progress=progress,
                          stop_after=stop_after, main_process=main_process)
    finally:
      files.close()
  if isinstance(outcome, NonFiniteLossError):
    raise outcome
  return outcome or {}


class _SingleRun:
  """One run's program for :func:`bnjax.train.loop.run`: jit, pmap or sharded."""

  def __init__(self, executor, eval_step, member: loop.Member, stats_update=None):
    self.executor, self.eval_step, self.member_data = executor, eval_step, member
    self.stats_update = stats_update

  def step(self, state, batch):
    return self.executor.step(state, batch)

  def batches(self, start: int, stop: int):
    return self.member_data.data.train_batches.steps(start, stop)

  def host(self, state):
    return jax.device_get(self.executor.get_state(state))

  def saveable(self, state, host):
    del host  # orbax writes the (possibly sharded) device state itself
    return self.executor.get_state(state)

  def member(self, tree, j: int):
    del j
    return tree

  def evaluate(self, host, members) -> dict:
    m = self.member_data
    return {j: _evaluate(m.config, self.eval_step, host, m.data.splits['test'],
                         m.data.test_batches, m.data.train_batches, self.stats_update)
            for j in members}


def _evaluate(config, eval_step, state, test_split, test_batches, train_batches,
              stats_update=None) -> dict:
  """Test metrics of ``state`` with the batch-norm statistics of ``config.bn_eval``."""
  stats = eval_batch_stats(config, state, train_batches, stats_update)
  return executors.evaluate(eval_step, state.replace(batch_stats=stats), test_split,
                            test_batches)


def load_params(workdir) -> Any:
  """The params of the latest checkpoint in ``workdir`` (as nested dicts).

  Args:
    workdir: a run's folder.

  Returns:
    The params pytree.

  Example:
    >>> from bnjax.train import trainer
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = trainer.train(config, d, progress=False)
    >>> trainer.load_params(d)['dense']['kernel'].shape
    (4, 1)

  References:
    orbax-checkpoint, https://orbax.readthedocs.io.
  """
  return workdirs.Checkpoints(workdir).latest_params()
