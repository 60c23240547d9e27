"""The training loop of one configuration: build, resume, step, log, checkpoint, summarize.

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
  gain, and every ``eval_every`` steps ``test_loss`` and ``test_accuracy``;
* ``checkpoints/`` -- orbax checkpoints every ``checkpoint_every`` steps and
  at the end; a rerun resumes from the latest and ends with the same numbers;
* ``summary.json`` -- written atomically at the end: ``status`` (``finished``
  or ``diverged``), test loss and accuracy, steps, wall time, ``fan_in``
  (weights per unit of every kernel), config. A workdir with a summary is
  done: rerunning the same config returns it (a diverged one raises again).

Lock, resume, fallback past a damaged checkpoint and strict JSON are
:mod:`bnjax.train.workdir`'s.

The steps and parallel modes are :mod:`bnjax.train.executors`'s, the metrics
:mod:`bnjax.train.step_metrics`'s, the config :mod:`bnjax.train.config`'s.
"""

import functools
import pathlib
import time
from typing import Any, Optional

import jax
from tqdm import tqdm

from bnjax.train import data, executors
from bnjax.train import workdir as workdirs
from bnjax.train import config as config_lib
from bnjax.train.config import Config
from bnjax.train.programs import (build_model, build_optimizer, eval_batch_stats,
                            hyperparameters, init_state, programs)
from bnjax.train.run_files import NonFiniteLossError, RunFiles
from bnjax.train.workdir import write_json_atomic

__all__ = [
    'NonFiniteLossError',
    'build_model',
    'build_optimizer',
    'init_state',
    'load_data',
    'load_params',
    'train',
]


# ------------------------------------------------------------ components

@functools.lru_cache(maxsize=2)
def _cached_image_dataset(name: str, data_dir: Optional[str]) -> dict:
  """One read per process: a sweep trains many configurations on one dataset."""
  return data.load_image_dataset(name, data_dir)


def load_data(config: Config, data_dir: Optional[str] = None) -> dict:
  """``{'train': Arrays, 'test': Arrays}``, train cut to ``train_subset``.

  Args:
    config: the run's :class:`bnjax.train.config.Config`.
    data_dir: tfds data dir for image datasets (default ``$BNJAX_DATA_DIR``).

  Returns:
    A dict of two :class:`bnjax.train.data.Arrays`.

  Example:
    >>> from bnjax.train import trainer
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> len(trainer.load_data(config)['train'])
    32

  References:
    Luo et al. 2019, arXiv 1809.00846, section 3 (teacher-student data);
    Xiao et al. 2017, arXiv 1708.07747 (Fashion-MNIST).
  """
  if config.dataset == 'teacher_student':
    splits = data.teacher_student(config.num_train, config.num_test, config.input_dim,
                                  activation=config.activation,
                                  noise_std=config.noise_std, seed=config.seed)
  else:
    splits = _cached_image_dataset(config.dataset, data_dir)
  return {'train': splits['train'].take(config.train_subset or None),
          'test': splits['test']}


@functools.lru_cache(maxsize=4)
def _cached_normalization(name: str, data_dir: Optional[str], subset: int):
  """One pass per process over a dataset's (subset of) training images."""
  return data.normalization_stats(_cached_image_dataset(name, data_dir)['train'].take(
      subset or None).x)


def input_normalization(config: Config, data_dir: Optional[str] = None):
  """``(mean, std)`` per channel of the run's training images (the
  :func:`load_data` split); ``(None, None)`` for teacher-student data."""
  if config.dataset == 'teacher_student':
    return None, None
  return _cached_normalization(config.dataset, data_dir, config.train_subset)


# ------------------------------------------------------------- driver


def _answered(workdir: pathlib.Path, wanted: dict) -> Optional[dict]:
  """The summary of a done run of ``wanted`` in ``workdir`` (None when not done).

  Raises ConfigMismatchError for another config, NonFiniteLossError for a
  diverged run.
  """
  workdirs.check_config(workdir, wanted, Config.NON_RESULT_FIELDS)
  summary = workdirs.read_json(workdir / workdirs.SUMMARY)
  if summary is not None and summary.get('status') == 'diverged':
    raise NonFiniteLossError(summary.get('error', 'the run diverged'))
  return summary


def train(config: Config, workdir, *, data_dir: Optional[str] = None,
          progress: bool = True, stop_after: Optional[int] = None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if possible); returns the summary.

  Everything that can be refused is refused before the workdir is created or
  written: the config (:meth:`Config.validate`), a workdir holding another
  config (:class:`bnjax.train.workdir.ConfigMismatchError`), the data and the
  model. Then the workdir is locked (:class:`bnjax.train.workdir.WorkdirLockedError`
  when another process holds it) and the run resumes from its newest intact
  checkpoint. A finished workdir answers with its summary without training.

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
    The summary dict (also ``summary.json``); ``None`` when ``stop_after``
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
  config.validate(jax.device_count())
  workdir = pathlib.Path(workdir)
  wanted = config_lib.record(config)
  main_process = jax.process_index() == 0
  summary = _answered(workdir, wanted)
  if summary is not None:
    return summary

  splits = load_data(config, data_dir)
  if len(splits['train']) < config.batch_size:
    raise ValueError(f'--batch_size: {config.batch_size} exceeds the '
                     f'{len(splits["train"])} training examples of {config.dataset}')
  if len(splits['train']) != config.train_examples() and (
      config.schedule != 'constant' or config.warmup_steps):
    raise ValueError(f'--schedule: the schedule was laid out for '
                     f'{config.train_examples()} training examples, but '
                     f'{config.dataset} has {len(splits["train"])} here')
  mean, std = input_normalization(config, data_dir)
  train_batches = data.Batches(splits['train'], config.batch_size, seed=config.seed,
                               augment=config.augment, mean=mean, std=std)
  test_batches = data.Batches(splits['test'], config.eval_batch_size, shuffle=False,
                              mean=mean, std=std)
  initial, executor, eval_step = programs(config)
  hyper = hyperparameters(config)
  state = initial(jax.random.key(config.seed), train_batches.batch(0, 0)['x'], hyper)

  workdir.mkdir(parents=True, exist_ok=True)
  with workdirs.locked(workdir, enabled=main_process):
    # Asked again under the lock: another process may have finished meanwhile.
    summary = _answered(workdir, wanted)
    if summary is not None:
      return summary
    if main_process and not (workdir / workdirs.CONFIG).exists():
      write_json_atomic(workdir / workdirs.CONFIG, wanted)
    return _run(config, workdir, wanted, state, executor, eval_step, splits,
                train_batches, test_batches, hyper, progress=progress,
                stop_after=stop_after, main_process=main_process)


def _run(config, workdir, wanted, state, executor, eval_step, splits, train_batches,
         test_batches, hyper, *, progress, stop_after, main_process) -> dict:
  """The training loop of a locked workdir: resume, steps, logging, checkpoints."""
  files = RunFiles(config, workdir, wanted, main_process)
  state = executor.put_state(files.resume(state))
  step = int(executor.get_state(state).step)
  steps_per_epoch = train_batches.steps_per_epoch
  total = steps_per_epoch * config.num_epochs
  end = total if stop_after is None else min(total, stop_after)
  window, window_start = [], time.perf_counter()
  final_test = None  # the test metrics of the last step, when the loop evaluated it
  bar = tqdm(total=total, initial=step, disable=not (progress and main_process),
             unit='step', dynamic_ncols=True)
  try:
    for batch in data.prefetch(train_batches.steps(step, end)):
      epoch = step // steps_per_epoch
      state, metrics = executor.step(state, batch, hyper)
      step += 1
      window.append((step, metrics))
      bar.update(1)
      if step % config.log_every == 0 or step == total:
        host = jax.device_get([m for _, m in window])
        current = jax.device_get(executor.get_state(state))
        files.check_window([s for s, _ in window], host, current, step)
        test = None
        if config.eval_every and step % config.eval_every == 0:
          test = _evaluate(config, eval_step, current, splits['test'], test_batches,
                           train_batches)
          final_test = test if step == total else None
        line = files.write_line(step, epoch, host, current,
                                time.perf_counter() - window_start, test)
        bar.set_postfix(loss=f'{line["loss"]:.4f}', img_s=f'{line["images_per_s"]:.0f}')
        window, window_start = [], time.perf_counter()
      if step % config.checkpoint_every == 0 or step == total:
        files.save(step, executor.get_state(state))
  finally:
    bar.close()
    files.close()
  if step < total:
    return {}
  final = jax.device_get(executor.get_state(state))
  if final_test is None:
    final_test = _evaluate(config, eval_step, final, splits['test'], test_batches,
                           train_batches)
  return files.finish(step, final, final_test)


def _evaluate(config, eval_step, state, test_split, test_batches, train_batches) -> dict:
  """Test metrics of ``state`` with the batch-norm statistics of ``config.bn_eval``."""
  stats = eval_batch_stats(config, state, train_batches)
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
