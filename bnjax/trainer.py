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
  :func:`unit_scale_grad_sq`), ``gamma_sq/<layer>`` for every normalization
  gain, and every ``eval_every`` steps ``test_loss`` and ``test_accuracy``;
* ``checkpoints/`` -- orbax checkpoints every ``checkpoint_every`` steps and
  at the end; a rerun resumes from the latest and ends with the same numbers;
* ``summary.json`` -- written atomically at the end: ``status`` (``finished``
  or ``diverged``), test loss and accuracy, steps, wall time, ``fan_in``
  (weights per unit of every kernel), config. A workdir with a summary is
  done: rerunning the same config returns it (a diverged one raises again).

Lock, resume, fallback past a damaged checkpoint and strict JSON are
:mod:`bnjax.workdir`'s.

The steps and parallel modes are :mod:`bnjax.executors`'s, the metrics
:mod:`bnjax.step_metrics`'s, the config :mod:`bnjax.config`'s.
"""

import functools
import pathlib
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from bnjax import _extras
from bnjax import data, executors, masks, models, transforms
from bnjax import workdir as workdirs
from bnjax import config as config_lib
from bnjax.config import Config
from bnjax.run_files import NonFiniteLossError, RunFiles
from bnjax.workdir import write_json_atomic

__all__ = [
    'NonFiniteLossError',
    'build_model',
    'build_optimizer',
    'init_state',
    'load_data',
    'load_params',
    'train',
]

tqdm = _extras.require('tqdm').tqdm


# ------------------------------------------------------------ components

# The config fields build_optimizer takes as values (see its ``hyper``).
HYPERPARAMETERS = ('learning_rate', 'momentum', 'weight_decay', 'gamma_decay')


@functools.lru_cache(maxsize=2)
def _cached_image_dataset(name: str, data_dir: Optional[str]) -> dict:
  """One read per process: a sweep trains many configurations on one dataset."""
  return data.load_image_dataset(name, data_dir)


def load_data(config: Config, data_dir: Optional[str] = None) -> dict:
  """``{'train': Arrays, 'test': Arrays}``, train cut to ``train_subset``.

  Args:
    config: the run's :class:`bnjax.config.Config`.
    data_dir: tfds data dir for image datasets (default ``$BNJAX_DATA_DIR``).

  Returns:
    A dict of two :class:`bnjax.data.Arrays`.

  Example:
    >>> from bnjax import trainer
    >>> from bnjax.config import Config
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


def build_model(config: Config, *, host: bool = False):
  """The configured model; ``host=True``: without the pmap axis (init, evaluation).

  Args:
    config: the run's :class:`bnjax.config.Config`.
    host: build without the ``pmap`` axis name.

  Returns:
    An unbound flax.linen module (:func:`bnjax.models.build`).

  Example:
    >>> from bnjax import trainer
    >>> from bnjax.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> type(trainer.build_model(config)).__name__
    'Perceptron'

  References:
    See :func:`bnjax.models.build`.
  """
  pmapped = config.parallel == 'pmap' and not host
  return models.build(config.model, config.norm, axis_name=executors.AXIS_NAME if pmapped else None,
                      virtual_batch_size=config.virtual_batch_size,
                      activation=config.activation, width=config.width)


def build_optimizer(config: Config, hyper: Optional[dict] = None
                    ) -> optax.GradientTransformation:
  r"""bnjax's sgd (with ``momentum``) or adam with the configured regularizer, tracked.

  .. math::
    \text{tx} = \text{chain}(\text{gamma decay}?,\ \text{opt}(\eta, \lambda),\
    \text{projection}?,\ \text{track\_dynamics})

  L2 and decoupled decay act on every kernel (``kernel_mask``); the
  projection (``regularizer='projection'``, or ``projection=True`` after any
  regularizer) on the scale-invariant kernels only
  (:func:`bnjax.masks.scale_invariant_kernels`). ``gamma_decay`` = zeta adds
  Luo et al.'s (2019) explicit penalty ``zeta * gamma^2`` on every
  normalization gain (:func:`bnjax.masks.gain_mask`), before the optimizer.
  Dynamics are tracked on every kernel.

  Args:
    config: the run's :class:`bnjax.config.Config`.
    hyper: values (arrays, possibly traced) that replace the config's
      ``learning_rate``, ``momentum``, ``weight_decay`` and ``gamma_decay``;
      the config still decides which transforms are chained (e.g. whether
      ``gamma_decay`` is on). :mod:`bnjax.vectorized` vmaps over them.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> from bnjax import trainer
    >>> from bnjax.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> tx = trainer.build_optimizer(config)
    >>> callable(tx.update)
    True

  References:
    van Laarhoven 2017, arXiv 1706.05350, eq. 6-9; Luo et al. 2019, arXiv
    1809.00846, section 2 (gamma decay).
  """
  h = {k: getattr(config, k) for k in HYPERPARAMETERS}
  h.update(hyper or {})
  if config.regularizer == 'projection':
    mask = masks.scale_invariant_kernels
  else:
    mask = masks.kernel_mask
  common = dict(regularizer=config.regularizer, weight_decay=h['weight_decay'],
                mask=mask, track=False)
  if config.optimizer == 'adam':
    base, kind = transforms.adam(h['learning_rate'], **common), 'adam'
  else:
    base, kind = transforms.sgd(h['learning_rate'], h['momentum'], **common), 'sgd'
  parts = [base]
  if config.gamma_decay:
    # The penalty zeta * gamma^2 of Luo et al. (2019), so gradient 2 * zeta * gamma.
    parts.insert(0, transforms.l2_regularization(2 * h['gamma_decay'], masks.gain_mask))
  if config.projection and config.regularizer != 'projection':
    parts.append(transforms.unit_norm_projection(masks.scale_invariant_kernels))
  parts.append(transforms.track_dynamics(h['learning_rate'], kind, masks.kernel_mask))
  return optax.chain(*parts)


def init_state(config: Config, model, tx, sample_x) -> executors.TrainState:
  """The initial :class:`bnjax.executors.TrainState` of ``config``'s seed.

  Args:
    config: the run's :class:`bnjax.config.Config` (its ``seed``).
    model: from :func:`build_model` with ``host=True``.
    tx: from :func:`build_optimizer`.
    sample_x: a batch of inputs (its shape sets the parameters').

  Returns:
    A :class:`bnjax.executors.TrainState` at step 0.

  Example:
    >>> from bnjax import trainer
    >>> from bnjax.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> import jax.numpy as jnp
    >>> model, tx = trainer.build_model(config, host=True), trainer.build_optimizer(config)
    >>> state = trainer.init_state(config, model, tx, jnp.ones((8, 4)))
    >>> int(state.step), state.params['dense']['kernel'].shape
    (0, (4, 1))

  References:
    He et al., "Delving Deep into Rectifiers", ICCV 2015, arXiv 1502.01852
    (flax's default kernel initialization scale).
  """
  variables = model.init(jax.random.key(config.seed), sample_x, train=True)
  params = variables['params']
  return executors.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params))


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
  config (:class:`bnjax.workdir.ConfigMismatchError`), the data and the
  model. Then the workdir is locked (:class:`bnjax.workdir.WorkdirLockedError`
  when another process holds it) and the run resumes from its newest intact
  checkpoint. A finished workdir answers with its summary without training.

  Args:
    config: the run's :class:`bnjax.config.Config`.
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
    >>> from bnjax import trainer
    >>> from bnjax.config import Config
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
  regression = config.dataset == 'teacher_student'
  if len(splits['train']) < config.batch_size:
    raise ValueError(f'--batch_size: {config.batch_size} exceeds the '
                     f'{len(splits["train"])} training examples of {config.dataset}')
  mean = std = None
  if not regression:
    mean, std = data.normalization_stats(splits['train'].x)
  train_batches = data.Batches(splits['train'], config.batch_size, seed=config.seed,
                               augment=config.augment, mean=mean, std=std)
  test_batches = data.Batches(splits['test'], config.eval_batch_size, shuffle=False,
                              mean=mean, std=std)
  model, tx = build_model(config), build_optimizer(config)
  host_model = build_model(config, host=True)
  eval_step = executors.make_eval_step(host_model, regression)
  state = init_state(config, host_model, tx, train_batches.batch(0, 0)['x'])
  executor = executors.Executor(config.parallel, model, tx, regression)

  workdir.mkdir(parents=True, exist_ok=True)
  with workdirs.locked(workdir, enabled=main_process):
    # Asked again under the lock: another process may have finished meanwhile.
    summary = _answered(workdir, wanted)
    if summary is not None:
      return summary
    if main_process and not (workdir / workdirs.CONFIG).exists():
      write_json_atomic(workdir / workdirs.CONFIG, wanted)
    return _run(config, workdir, wanted, state, executor, eval_step, splits,
                train_batches, test_batches, progress=progress, stop_after=stop_after,
                main_process=main_process)


def _run(config, workdir, wanted, state, executor, eval_step, splits, train_batches,
         test_batches, *, progress, stop_after, main_process) -> dict:
  """The training loop of a locked workdir: resume, steps, logging, checkpoints."""
  files = RunFiles(config, workdir, wanted, main_process)
  state = executor.put_state(files.resume(state))
  step = int(executor.get_state(state).step)
  steps_per_epoch = train_batches.steps_per_epoch
  total = steps_per_epoch * config.num_epochs
  end = total if stop_after is None else min(total, stop_after)
  window, window_start = [], time.perf_counter()
  bar = tqdm(total=total, initial=step, disable=not (progress and main_process),
             unit='step', dynamic_ncols=True)
  try:
    while step < end:
      epoch, index = divmod(step, steps_per_epoch)
      stop = min(steps_per_epoch, index + end - step)
      for batch in data.prefetch(train_batches.epoch(epoch, index, stop)):
        state, metrics = executor.step(state, batch)
        step += 1
        window.append((step, metrics))
        bar.update(1)
        if step % config.log_every == 0 or step == total:
          host = jax.device_get([m for _, m in window])
          current = jax.device_get(executor.get_state(state))
          files.check_window([s for s, _ in window], host, current, step)
          test = None
          if config.eval_every and step % config.eval_every == 0:
            test = executors.evaluate(eval_step, current, splits['test'], test_batches)
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
  return files.finish(step, final, executors.evaluate(eval_step, final, splits['test'],
                                                      test_batches))


def load_params(workdir) -> Any:
  """The params of the latest checkpoint in ``workdir`` (as nested dicts).

  Args:
    workdir: a run's folder.

  Returns:
    The params pytree.

  Example:
    >>> from bnjax import trainer
    >>> from bnjax.config import Config
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
