"""Training one configuration: state, steps, jit / pmap / sharded loops, checkpoints.

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

Parallel modes: ``none`` (``jax.jit`` on one device), ``pmap`` (batch split
over local devices; gradients and batch-norm statistics averaged with
``axis_name='batch'``) and ``sharded`` (``jax.jit`` over a
``jax.sharding.Mesh`` with the batch split on axis ``'data'``; XLA inserts
the collectives). All three compute the same global-batch step.
"""

import dataclasses
import functools
import math
import numbers
import pathlib
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from bnjax import data, dynamics, masks, models, transforms
from bnjax import workdir as workdirs
from bnjax.workdir import ConfigMismatchError, WorkdirLockedError, write_json_atomic  # noqa: F401

OPTIMIZERS = ('sgd', 'momentum', 'adam')
PARALLEL = ('none', 'pmap', 'sharded')
AXIS_NAME = 'batch'


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss or the updated state stops being finite."""


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run; field names are the flags of ``experiments.train``."""
  dataset: str = 'fashion_mnist'
  model: str = 'convnet'
  norm: str = 'batch'
  optimizer: str = 'momentum'
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  regularizer: str = 'l2'
  projection: bool = False
  gamma_decay: float = 0.0
  batch_size: int = 128
  num_epochs: int = 1
  train_subset: int = 0
  seed: int = 0
  parallel: str = 'none'
  virtual_batch_size: int = 32
  augment: bool = False
  activation: str = 'relu'
  width: int = 32
  input_dim: int = 100
  num_train: int = 1000
  num_test: int = 2000
  noise_std: float = 0.1
  log_every: int = 50
  checkpoint_every: int = 500
  eval_every: int = 0
  eval_batch_size: int = 1000

  # Fields that change neither the trained parameters nor any logged number
  # (checkpoint spacing, evaluation batching): a workdir accepts them changed.
  NON_RESULT_FIELDS = ('checkpoint_every', 'eval_batch_size')

  def validate(self, device_count: int = 1) -> 'Config':
    """Raises ValueError (TypeError for a wrong type) whose message starts with
    the offending ``--flag``."""
    def need(ok, flag, message):
      if not ok:
        raise ValueError(f'--{flag}: {message}')

    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      kind = {'int': int, 'float': float, 'bool': bool, 'str': str}[
          field.type if isinstance(field.type, str) else field.type.__name__]
      if kind is bool:
        ok = isinstance(value, (bool, np.bool_))
      elif kind is int:
        ok = isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
            value, (bool, np.bool_))
      elif kind is float:
        ok = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
            value, (bool, np.bool_))
      else:
        ok = isinstance(value, str)
      if not ok:
        raise TypeError(f'--{field.name}: must be {kind.__name__}, got {value!r} '
                        f'({type(value).__name__})')
      if kind is float:
        need(math.isfinite(value), field.name, f'must be finite, got {value}')

    need(self.dataset in data.DATASETS, 'dataset', f'must be one of {data.DATASETS}, '
         f'got {self.dataset!r}')
    need(self.model in models.MODELS, 'model', f'must be one of {models.MODELS}, '
         f'got {self.model!r}')
    need(self.norm in models.NORMS, 'norm', f'must be one of {models.NORMS}, '
         f'got {self.norm!r}')
    need(self.optimizer in OPTIMIZERS, 'optimizer', f'must be one of {OPTIMIZERS}, '
         f'got {self.optimizer!r}')
    need(self.regularizer in transforms.REGULARIZERS, 'regularizer',
         f'must be one of {transforms.REGULARIZERS}, got {self.regularizer!r}')
    need(self.parallel in PARALLEL, 'parallel', f'must be one of {PARALLEL}, '
         f'got {self.parallel!r}')
    need(self.learning_rate > 0, 'learning_rate', f'must be > 0, got {self.learning_rate}')
    need(0 <= self.momentum < 1, 'momentum', f'must be in [0, 1), got {self.momentum}')
    need(self.weight_decay >= 0, 'weight_decay', f'must be >= 0, got {self.weight_decay}')
    need(self.gamma_decay >= 0, 'gamma_decay', f'must be >= 0, got {self.gamma_decay}')
    need(self.gamma_decay == 0 or self.norm != 'none', 'gamma_decay',
         'acts on the normalization gains, and --norm=none has none; set it to 0')
    for flag in ('batch_size', 'num_epochs', 'log_every', 'checkpoint_every',
                 'eval_batch_size', 'virtual_batch_size', 'input_dim', 'num_train',
                 'num_test', 'width'):
      value = getattr(self, flag)
      need(value > 0, flag, f'must be a positive int, got {value!r}')
    need(self.train_subset >= 0, 'train_subset', f'must be >= 0 (0: all), got '
         f'{self.train_subset}')
    need(self.seed >= 0, 'seed', f'must be >= 0, got {self.seed}')
    need(self.noise_std >= 0, 'noise_std', f'must be >= 0, got {self.noise_std}')
    if self.dataset == 'teacher_student':
      examples, flag = self.num_train, 'num_train'
    else:
      examples, flag = self.train_subset, 'train_subset'
    need(not examples or self.batch_size <= examples, 'batch_size',
         f'{self.batch_size} exceeds the {examples} training examples of --{flag}')
    need(self.eval_every >= 0, 'eval_every', f'must be >= 0 (0: only at the end), got '
         f'{self.eval_every}')
    for flag in ('checkpoint_every', 'eval_every'):
      value = getattr(self, flag)
      need(value % self.log_every == 0, flag,
           f'must be a multiple of --log_every={self.log_every} (so a resumed run logs '
           f'the same windows), got {value}')
    need(self.width == Config.width or self.model == 'convnet', 'width',
         f'sets the ConvNet\'s widths; --model={self.model} has fixed widths')
    need(self.regularizer in ('l2', 'decoupled') or self.weight_decay == 0, 'weight_decay',
         f'has no effect with --regularizer={self.regularizer}; set it to 0')
    for flag, on in (('regularizer', self.regularizer == 'projection'),
                     ('projection', self.projection)):
      need(not on or self.norm in models.PER_UNIT_INVARIANT, flag,
           f'projection needs weights that are scale-invariant per unit; '
           f'--norm={self.norm} makes none (use one of {models.PER_UNIT_INVARIANT})')
    need((self.dataset == 'teacher_student') == (self.model == 'perceptron'), 'model',
         'the perceptron trains on --dataset=teacher_student, and teacher_student '
         'needs --model=perceptron')
    need(not (self.model == 'perceptron' and self.norm in ('layer', 'group')), 'norm',
         f'{self.norm} norm over the perceptron\'s single unit is constant')
    need(self.activation in ('linear', 'relu'), 'activation',
         f"must be 'linear' or 'relu', got {self.activation!r}")
    need(not self.augment or self.dataset == 'cifar10', 'augment',
         'crop-and-flip augmentation is for --dataset=cifar10')
    if self.parallel != 'none':
      need(self.batch_size % device_count == 0, 'batch_size',
           f'{self.batch_size} is not divisible by the {device_count} devices of '
           f'--parallel={self.parallel}')
    if self.norm == 'ghost':
      per_device = self.batch_size // (device_count if self.parallel == 'pmap' else 1)
      need(per_device % self.virtual_batch_size == 0, 'virtual_batch_size',
           f'{self.virtual_batch_size} must divide the per-device batch {per_device}')
    return self


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ------------------------------------------------------------ components


@functools.lru_cache(maxsize=2)
def _cached_image_dataset(name: str, data_dir: Optional[str]) -> dict:
  """One read per process: a sweep trains many configurations on one dataset."""
  return data.load_image_dataset(name, data_dir)


def load_data(config: Config, data_dir: Optional[str] = None) -> dict:
  """``{'train': Arrays, 'test': Arrays}``, train cut to ``train_subset``."""
  if config.dataset == 'teacher_student':
    splits = data.teacher_student(config.num_train, config.num_test, config.input_dim,
                                  activation=config.activation,
                                  noise_std=config.noise_std, seed=config.seed)
  else:
    splits = _cached_image_dataset(config.dataset, data_dir)
  return {'train': splits['train'].take(config.train_subset or None),
          'test': splits['test']}


def build_model(config: Config, *, host: bool = False):
  """The configured model; ``host=True``: without the pmap axis (init, evaluation)."""
  pmapped = config.parallel == 'pmap' and not host
  return models.build(config.model, config.norm, axis_name=AXIS_NAME if pmapped else None,
                      virtual_batch_size=config.virtual_batch_size,
                      activation=config.activation, width=config.width)


def build_optimizer(config: Config) -> optax.GradientTransformation:
  """bnjax's sgd/adam with the configured regularizer; tracking on every kernel.

  L2 and decoupled decay act on every kernel (``kernel_mask``); the
  projection (``regularizer='projection'``, or ``projection=True`` after any
  regularizer) on the scale-invariant kernels only
  (:func:`models.scale_invariant_kernels`). ``gamma_decay`` = zeta adds
  Luo et al.'s (2019) explicit penalty ``zeta * gamma^2`` on every
  normalization gain (:func:`bnjax.masks.gain_mask`), before the optimizer.
  """
  if config.regularizer == 'projection':
    mask = models.scale_invariant_kernels
  else:
    mask = masks.kernel_mask
  common = dict(regularizer=config.regularizer, weight_decay=config.weight_decay,
                mask=mask, track=False)
  if config.optimizer == 'adam':
    base, kind = transforms.adam(config.learning_rate, **common), 'adam'
  else:
    momentum = config.momentum if config.optimizer == 'momentum' else 0.0
    base, kind = transforms.sgd(config.learning_rate, momentum, **common), 'sgd'
  parts = [base]
  if config.gamma_decay:
    # The penalty zeta * gamma^2 of Luo et al. (2019), so gradient 2 * zeta * gamma.
    parts.insert(0, transforms.l2_regularization(2 * config.gamma_decay, masks.gain_mask))
  if config.projection and config.regularizer != 'projection':
    parts.append(transforms.unit_norm_projection(models.scale_invariant_kernels))
  parts.append(transforms.track_dynamics(config.learning_rate, kind, masks.kernel_mask))
  return optax.chain(*parts)


def init_state(config: Config, model, tx, sample_x) -> TrainState:
  variables = model.init(jax.random.key(config.seed), sample_x, train=True)
  params = variables['params']
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params))


def objective(outputs, targets, regression: bool):
  """Mean loss and metrics: cross-entropy and accuracy, or squared error."""
  if regression:
    loss = jnp.mean(jnp.square(outputs - targets))
    return loss, {'loss': loss}
  loss = optax.softmax_cross_entropy_with_integer_labels(outputs, targets).mean()
  return loss, {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(outputs, -1) == targets)}


def make_train_step(model, tx, regression: bool, axis_name: Optional[str] = None):
  """``step(state, batch) -> (state, metrics)``; with ``axis_name`` under pmap."""

  def step(state: TrainState, batch):
    def loss_fn(params):
      out, updated = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                 batch['x'], train=True, mutable=['batch_stats'])
      loss, metrics = objective(out, batch['y'], regression)
      return loss, (metrics, updated.get('batch_stats', state.batch_stats))

    (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    if axis_name is not None:  # before any metric of the gradient: it is the global one
      grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
    metrics = {**metrics, **unit_scale_grad_sq(grads, state.params)}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1,
                         params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state), metrics

  return step


def layer_name(path) -> str:
  """``conv2/layer_instance/kernel`` -> ``conv2``: the module path of a leaf."""
  keys = [getattr(k, 'key', str(k)) for k in path]
  return '/'.join(k for k in keys[:-1] if k != 'layer_instance')


def unit_scale_grad_sq(grads, params) -> dict:
  """``grad_sq_at_unit_norm/<layer>``: per-unit ``||g||^2 ||w||^2`` of every kernel.

  For a scale-invariant unit that is ``||g~||^2``, the squared gradient at
  unit weight norm that sets the SGD equilibrium norm
  (:func:`bnjax.theory.equilibrium_norm`); mean over units.
  """
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, w), g in zip(flat, jax.tree_util.tree_leaves(grads)):
    if jnp.ndim(w) >= 2:
      out[f'grad_sq_at_unit_norm/{layer_name(path)}'] = jnp.mean(
          jnp.square(dynamics.unit_norms(g) * dynamics.unit_norms(w)))
  return out


def fan_ins(params) -> dict:
  """``{layer: C}``: the weights per unit (all kernel axes but the last) of every kernel."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {layer_name(path): int(np.prod(np.shape(w)[:-1]))
          for path, w in flat if np.ndim(w) >= 2}


def gain_metrics(params) -> dict:
  """``gamma_sq/<layer>``: mean squared normalization gain (``scale``) per layer."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  on = jax.tree_util.tree_leaves(masks.gain_mask(params))
  return {f'gamma_sq/{layer_name(path)}': float(np.mean(np.square(w)))
          for (path, w), m in zip(flat, on) if m}


def make_eval_step(model, regression: bool):
  """Sums of loss (and correct predictions) over a batch, with running statistics."""

  @jax.jit
  def step(params, batch_stats, x, y):
    out = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
    if regression:
      return {'loss': jnp.sum(jnp.square(out - y))}
    return {'loss': jnp.sum(optax.softmax_cross_entropy_with_integer_labels(out, y)),
            'correct': jnp.sum(jnp.argmax(out, -1) == y)}

  return step


def evaluate(eval_step, state: TrainState, split: data.Arrays, batches: data.Batches
             ) -> dict:
  totals = {}
  for batch in batches.epoch(0):
    out = eval_step(state.params, state.batch_stats, batch['x'], batch['y'])
    for k, v in jax.device_get(out).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  n = len(split)
  result = {'test_loss': totals['loss'] / n}
  if 'correct' in totals:
    result['test_accuracy'] = totals['correct'] / n
  return result


# ----------------------------------------------------------- executors


class Executor:
  """Places state and batches and runs the step for one parallel mode."""

  def __init__(self, mode: str, model, tx, regression: bool):
    self.mode = mode
    if mode == 'pmap':
      self.devices = jax.local_devices()
      self._step = jax.pmap(make_train_step(model, tx, regression, AXIS_NAME),
                            axis_name=AXIS_NAME, donate_argnums=0)
    elif mode == 'sharded':
      mesh = Mesh(np.asarray(jax.devices()), ('data',))
      self._replicated = NamedSharding(mesh, PartitionSpec())
      self._split = NamedSharding(mesh, PartitionSpec('data'))
      self._step = jax.jit(make_train_step(model, tx, regression),
                           in_shardings=(self._replicated, self._split),
                           out_shardings=(self._replicated, self._replicated),
                           donate_argnums=0)
    else:
      self._step = jax.jit(make_train_step(model, tx, regression), donate_argnums=0)

  def put_state(self, state: TrainState):
    if self.mode == 'pmap':  # one copy per device, split on a leading axis
      d = len(self.devices)
      copies = NamedSharding(Mesh(np.asarray(self.devices), ('d',)), PartitionSpec('d'))
      return jax.device_put(
          jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (d,) + jnp.shape(a)), state),
          copies)
    if self.mode == 'sharded':
      return jax.device_put(state, self._replicated)
    return jax.device_put(state)

  def get_state(self, state) -> TrainState:
    """The state as one (host-transferable) copy."""
    if self.mode == 'pmap':
      return jax.tree_util.tree_map(lambda a: a[0], state)
    return state

  def put_batch(self, batch: dict):
    if self.mode == 'pmap':
      d = len(self.devices)
      return {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in batch.items()}
    if self.mode == 'sharded':
      # Every process holds the same global batch and supplies its own shards.
      return {k: jax.make_array_from_callback(v.shape, self._split, lambda i, v=v: v[i])
              for k, v in batch.items()}
    return batch

  def step(self, state, batch):
    state, metrics = self._step(state, self.put_batch(batch))
    if self.mode == 'pmap':
      metrics = jax.tree_util.tree_map(lambda a: a[0], metrics)
    return state, metrics


# ------------------------------------------------------------ metrics


def layer_metrics(opt_state) -> dict:
  """``dynamics.read`` keys ``<path>/kernel/<metric>`` as ``<metric>/<layer>``."""
  out = {}
  for key, value in dynamics.read(opt_state).items():
    *path, metric = key.split('/')
    out[f'{metric}/{layer_name(path)}'] = float(value)
  return out


def _trained_state(state: TrainState) -> dict:
  """What training carries forward: params, batch stats and optimizer state, without
  the tracked dynamics (a dead unit's effective LR is legitimately infinite)."""
  opt_state = jax.tree_util.tree_map(
      lambda s: None if isinstance(s, dynamics.TrackDynamicsState) else s,
      state.opt_state, is_leaf=lambda s: isinstance(s, dynamics.TrackDynamicsState))
  return {'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': opt_state}


def _nonfinite(tree) -> list:
  """Paths of the leaves of a host tree holding a NaN or an infinity."""
  return [jax.tree_util.keystr(path) for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]
          if np.issubdtype(np.asarray(leaf).dtype, np.inexact)
          and not np.all(np.isfinite(leaf))]


# ------------------------------------------------------------- driver


def _diverged(workdir, wanted, message, step, last_checkpoint, main_process):
  """Records a diverged run (strict JSON) and raises :class:`NonFiniteLossError`."""
  if main_process:
    write_json_atomic(pathlib.Path(workdir) / workdirs.SUMMARY, {
        'status': 'diverged', 'error': message, 'steps': step,
        'last_checkpoint': last_checkpoint, 'test_loss': None, 'test_accuracy': None,
        'config': wanted})
  raise NonFiniteLossError(message)


def _last_good(step) -> str:
  return ('There is no checkpoint yet.' if step is None
          else f'The last good checkpoint is step {step}.')


def _finished(summary: dict) -> dict:
  if summary.get('status') == 'diverged':
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
  checkpoint.

  Raises :class:`NonFiniteLossError` when the loss or the updated state
  stops being finite; nothing non-finite is checkpointed, and
  ``summary.json`` records ``status: "diverged"``.

  ``stop_after`` ends the call after that many total steps, as an
  interruption would (no extra log line or checkpoint, no summary); the next
  call resumes from the last checkpoint.
  """
  config.validate(jax.device_count())
  workdir = pathlib.Path(workdir)
  wanted = dataclasses.asdict(config)
  main_process = jax.process_index() == 0
  workdirs.check_config(workdir, wanted, Config.NON_RESULT_FIELDS)
  summary = workdirs.read_json(workdir / workdirs.SUMMARY)
  if summary is not None:
    return _finished(summary)

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
  eval_step = make_eval_step(host_model, regression)
  state = init_state(config, host_model, tx, train_batches.batch(0, 0)['x'])
  executor = Executor(config.parallel, model, tx, regression)

  workdir.mkdir(parents=True, exist_ok=True)
  with workdirs.locked(workdir, enabled=main_process):
    # Checked again under the lock: another process may have finished meanwhile.
    workdirs.check_config(workdir, wanted, Config.NON_RESULT_FIELDS)
    summary = workdirs.read_json(workdir / workdirs.SUMMARY)
    if summary is not None:
      return _finished(summary)
    if main_process and not (workdir / workdirs.CONFIG).exists():
      write_json_atomic(workdir / workdirs.CONFIG, wanted)
    return _run(config, workdir, wanted, state, executor, eval_step, splits,
                train_batches, test_batches, progress=progress, stop_after=stop_after,
                main_process=main_process)


def _run(config, workdir, wanted, state, executor, eval_step, splits, train_batches,
         test_batches, *, progress, stop_after, main_process) -> dict:
  """The training loop of a locked workdir: resume, steps, logging, checkpoints."""
  checkpoints = workdirs.Checkpoints(workdir)
  progress_path = workdir / workdirs.PROGRESS
  restored, last_checkpoint = checkpoints.restore_latest(state)
  elapsed = 0.0
  if restored is not None:
    state = restored
    elapsed = (workdirs.read_json(progress_path) or {}).get(str(last_checkpoint), 0.0)
  log = workdirs.MetricsLog(workdir, last_checkpoint or 0, enabled=main_process)
  step = int(state.step)
  steps_per_epoch = train_batches.steps_per_epoch
  total = steps_per_epoch * config.num_epochs
  end = total if stop_after is None else min(total, stop_after)
  state = executor.put_state(state)

  def save(step):
    nonlocal last_checkpoint
    checkpoints.save(step, executor.get_state(state))
    last_checkpoint = step
    if main_process:
      write_json_atomic(progress_path, {str(step): elapsed + time.perf_counter() - start})

  start = time.perf_counter()
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
          # Before anything is written: every loss of the window and the whole
          # updated state must be finite, or the run ends as diverged.
          for (s, _), m in zip(window, host):
            if not math.isfinite(float(m['loss'])):
              _diverged(workdir, wanted, f'the training loss became {float(m["loss"])} '
                        f'at step {s}; stopped without saving it. '
                        f'{_last_good(last_checkpoint)}', s, last_checkpoint, main_process)
          bad = _nonfinite(_trained_state(current))
          if bad:
            _diverged(workdir, wanted, f'the state became non-finite by step {step} '
                      f'(in {", ".join(bad[:3])}); stopped without saving it. '
                      f'{_last_good(last_checkpoint)}', step, last_checkpoint, main_process)
          seconds = time.perf_counter() - window_start
          line = {'step': step, 'epoch': epoch,
                  'learning_rate': config.learning_rate,
                  'images_per_s': len(window) * config.batch_size / seconds,
                  'time_s': elapsed + time.perf_counter() - start}
          for key in host[0]:
            line[key] = float(np.mean([m[key] for m in host]))
          line.update(layer_metrics(current.opt_state))
          line.update(gain_metrics(current.params))
          if config.eval_every and step % config.eval_every == 0:
            line.update(evaluate(eval_step, current, splits['test'], test_batches))
          log.write(line)
          bar.set_postfix(loss=f'{line["loss"]:.4f}', img_s=f'{line["images_per_s"]:.0f}')
          window, window_start = [], time.perf_counter()
        if step % config.checkpoint_every == 0 or step == total:
          save(step)
  finally:
    bar.close()
    log.close()
  if step < total:
    return {}

  final = executor.get_state(state)
  result = evaluate(eval_step, jax.device_get(final), splits['test'], test_batches)
  if not all(math.isfinite(v) for v in result.values()):
    _diverged(workdir, wanted, f'the trained model\'s test metrics are not finite '
              f'({result}) after {step} steps.', step, last_checkpoint, main_process)
  summary = dict(result, status='finished', steps=step,
                 wall_time_s=elapsed + time.perf_counter() - start,
                 fan_in=fan_ins(final.params), config=wanted)
  if main_process:
    write_json_atomic(workdir / workdirs.SUMMARY, summary)
  return summary


def load_params(workdir) -> Any:
  """The params of the latest checkpoint in ``workdir`` (as nested dicts)."""
  return workdirs.Checkpoints(workdir).latest_params()
