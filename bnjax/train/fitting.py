"""Your own flax model and arrays through bnjax's training loop: :func:`fit`."""

import dataclasses
import functools
import hashlib
import pathlib
import threading
from typing import Optional

import jax
import numpy as np

from bnjax import masks
from bnjax.train import config as config_lib
from bnjax.train import data, executors, inputs, loop, programs, step_metrics, trainer
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config

__all__ = ['fit']


def _split(data_dict, name: str) -> data.Arrays:
  pair = data_dict.get(name)
  if not isinstance(pair, (tuple, list)) or len(pair) != 2:
    raise ValueError(f"data[{name!r}]: must be a pair (x, y) of arrays, got "
                     f"{type(pair).__name__}")
  x, y = (np.asarray(a) for a in pair)
  if x.ndim < 2 or y.ndim != 1:
    raise ValueError(f"data[{name!r}]: x must be (N, features...) and y (N,) labels, got "
                     f"shapes {x.shape} and {y.shape}")
  if len(x) != len(y):
    raise ValueError(f"data[{name!r}]: x has {len(x)} examples and y {len(y)}")
  if not len(y):
    raise ValueError(f"data[{name!r}]: no examples")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"data[{name!r}]: y must hold integer class labels, got dtype "
                     f"{y.dtype}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"data[{name!r}]: x must be floating point (scale your inputs), got "
                     f"dtype {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"data[{name!r}]: x holds non-finite values")
  return data.Arrays(x.astype(np.float32), y.astype(np.int32))


class _Stream:
  """Training batches from a user's iterable: step ``s`` trains on its ``s``-th item.

  Each item is a batch ``(x, y)`` (or ``{'x': x, 'y': y}``) of exactly
  ``batch_size`` examples, checked as it arrives. A resumed run (a later
  :func:`fit` call, with a new iterator) skips the items of the steps before
  its checkpoint, so a deterministic iterable resumes exactly. Precise batch
  norm statistics use its first ``keep`` batches (read ahead when needed).
  """

  def __init__(self, source, batch_size: int, num_steps: int, keep: int):
    try:
      self._items = iter(source)
    except TypeError:
      raise ValueError(f"data['train']: must be a pair (x, y) of arrays or an iterable of "
                       f"(x, y) batches, got {type(source).__name__}") from None
    self.batch_size, self.steps_per_epoch, self._keep = batch_size, num_steps, keep
    self._pulled, self._ahead, self._kept = 0, [], []
    self._first, self.classes = None, None
    self._lock = threading.Lock()  # the loop's prefetch thread and evaluation both read

  def _check(self, item, step: int) -> dict:
    where = f"data['train'], batch {step}"
    if isinstance(item, dict) and set(item) >= {'x', 'y'}:
      item = (item['x'], item['y'])
    if not isinstance(item, (tuple, list)) or len(item) != 2:
      raise ValueError(f'{where}: must be (x, y) or {{"x": x, "y": y}}, got '
                       f'{type(item).__name__}')
    x, y = np.asarray(item[0]), np.asarray(item[1])
    shape = None if self._first is None else self._first['x'].shape
    if x.ndim < 2 or y.shape != (self.batch_size,) or len(x) != self.batch_size or (
        shape is not None and x.shape != shape):
      same = f" as batch 0's {shape}" if shape else ''
      raise ValueError(f'{where}: x must be ({self.batch_size}, features...){same} and y '
                       f'({self.batch_size},) (config.batch_size), got {x.shape} and {y.shape}')
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f'{where}: y must hold integer class labels, got dtype {y.dtype}')
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f'{where}: x must be floating point (scale your inputs), got dtype '
                       f'{x.dtype}')
    if not np.all(np.isfinite(x)):
      raise ValueError(f'{where}: x holds non-finite values')
    if y.min() < 0 or (self.classes is not None and y.max() >= self.classes):
      raise ValueError(f'{where}: labels must be in [0, {self.classes or "classes"}), got '
                       f'{int(y.min())}..{int(y.max())}')
    return {'x': x.astype(np.float32), 'y': y.astype(np.int32)}

  def _pull(self) -> dict:
    try:
      item = next(self._items)
    except StopIteration:
      raise ValueError(f"data['train']: the iterator ended after {self._pulled} batches; "
                       f'config.num_steps asks for {self.steps_per_epoch}') from None
    batch = self._check(item, self._pulled)
    self._pulled += 1
    if len(self._kept) < self._keep:
      self._kept.append(batch['x'])
    return batch

  def first(self) -> dict:
    """Batch 0 (pulled once, then trained on at step 0)."""
    if self._first is None:
      self._first = self._pull()
      self._ahead.append(self._first)
    return self._first

  def _next(self) -> dict:
    with self._lock:
      return self._ahead.pop(0) if self._ahead else self._pull()

  def steps(self, start: int, stop: int):
    """The batches of steps ``start`` to ``stop`` (those before ``start`` skipped)."""
    with self._lock:
      step = self._pulled - len(self._ahead)  # the step the next batch is for
    if start < step:
      raise ValueError(f"data['train']: batch {start} was already consumed")
    for _ in range(start - step):  # a resumed run: its earlier steps' batches
      self._next()
    for _ in range(start, stop):
      yield self._next()

  def epoch(self, epoch: int):
    """The first ``keep`` batches' inputs (precise statistics), read ahead if needed."""
    del epoch
    with self._lock:
      while len(self._kept) < min(self._keep, self.steps_per_epoch) and (
          self._pulled < self.steps_per_epoch):
        self._ahead.append(self._pull())
      kept = list(self._kept)
    return ({'x': x} for x in kept)


def _fingerprint(split: data.Arrays) -> str:
  digest = hashlib.sha256(np.ascontiguousarray(split.x).tobytes())
  digest.update(np.ascontiguousarray(split.y).tobytes())
  return f'{split.x.shape}:{digest.hexdigest()[:16]}'


class _NnxModel:
  """A flax.nnx model called through flax.linen's ``init`` / ``apply`` (params and
  batch statistics as pure dicts), so the loop trains it as it trains linen.

  ``init`` returns the model's current weights (an nnx model is built
  initialized); ``apply(..., train=...)`` merges the weights into the model and
  calls ``model(x)`` in train or eval mode (``Module.train()`` / ``eval()``).
  """

  def __init__(self, model):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    self.nnx = nnx
    self.graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    self.params, self.stats = params.to_pure_dict(), stats.to_pure_dict()
    self.rest = nnx.as_pure(rest)

  def init(self, rng, x, train: bool = True):
    del rng, x, train
    return {'params': self.params, 'batch_stats': self.stats}

  def apply(self, variables, x, train: bool = False, mutable=()):
    m = self.nnx.merge(self.graphdef, variables['params'],
                       variables.get('batch_stats', self.stats), self.rest)
    m.train() if train else m.eval()  # pylint: disable=expression-not-assigned
    out = m(x)
    if mutable:
      return out, {'batch_stats': self.nnx.state(m, self.nnx.BatchStat).to_pure_dict()}
    return out


def _model_fingerprint(model, params) -> str:
  """``Net(147 parameters in 4 leaves, shapes 3f2a...)``: the model's class and its
  parameters' paths and shapes, so another model in a workdir is told apart."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  shapes = ';'.join(f'{jax.tree_util.keystr(path)}{tuple(np.shape(w))}' for path, w in flat)
  count = sum(int(np.size(w)) for _, w in flat)
  return (f'{type(model).__name__}({count} parameters in {len(flat)} leaves, shapes '
          f'{hashlib.sha256(shapes.encode()).hexdigest()[:12]})')


def _invariant_kernels(model, params, batch_stats, x, y, rtol: float):
  """The kernels (``ndim >= 2``) the training loss is invariant to rescaling per
  unit (:func:`bnjax.masks.scale_invariant_mask` on one batch, training mode)."""
  def loss(p):
    out, _ = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                         mutable=['batch_stats'])
    return executors.objective(out, y, False)[0]
  measured = masks.scale_invariant_mask(loss, params, rtol=rtol)
  return jax.tree_util.tree_map(lambda k, m: bool(k) and bool(m),
                                masks.kernel_mask(params), measured)


def fit(model, data_dict: dict, config: Optional[Config] = None, *, workdir,
        progress: bool = True, stop_after: Optional[int] = None,
        invariance_rtol: float = 1e-3) -> dict:
  r"""Trains your flax.linen model on your arrays through bnjax's training loop.

  The run is :func:`bnjax.train.train`'s in every way but the model and data:
  the same files in ``workdir`` (``config.json``, ``metrics.jsonl`` with the
  tracked dynamics, TensorBoard events, checkpoints, ``summary.json``), exact
  resume from the last checkpoint, the workdir lock, the divergence record
  and the evaluation (``config.bn_eval``). Which kernels are scale-invariant
  (what decay, projection, rotation and the effective learning rate act on)
  is measured on the model at initialization, on the first training batch
  (:func:`bnjax.masks.scale_invariant_mask` with ``invariance_rtol``, kernels
  only), and recorded: ``config.json`` holds the model's class and parameter
  shapes, the measured layers and the data's fingerprint, so a workdir holding
  another model or data is refused.

  .. math::
    \min_\theta \frac{1}{B}\sum_b -\log\operatorname{softmax}(f_\theta(x_b))_{y_b}

  Args:
    model: a ``flax.linen.Module`` called as ``model(x, train=bool)`` returning
      logits ``(B, classes)``, batch statistics in the ``batch_stats``
      collection (as ``flax.linen.BatchNorm`` and ``bnjax.layers`` keep them);
      or a ``flax.nnx.Module`` (flax >= 0.11) called as ``model(x)`` in its
      ``train()`` / ``eval()`` mode: its current weights are the start, and
      it ends holding the run's last weights and statistics.
    data_dict: ``{'train': (x, y), 'test': (x, y)}``: float inputs, integer
      labels in ``[0, classes)``. ``'train'`` may instead be an iterable of
      ``(x, y)`` batches of ``config.batch_size`` examples (a generator, a
      ``tf.data`` or grain pipeline as NumPy): step ``s`` trains on its
      ``s``-th batch, ``config.num_steps`` of them; each batch is checked as
      it arrives (a bad one raises a ValueError naming it). A resumed call
      skips the batches before its checkpoint, so a deterministic iterable
      resumes exactly; ``epoch`` in ``metrics.jsonl`` is then 0.
    config: the optimizer, schedule, batch size, length (``num_epochs`` or
      ``num_steps``), logging and evaluation (a
      :class:`bnjax.train.config.Config`; default ``Config()``). Its
      ``norm`` names your model's normalization kind (``bn_eval`` and the
      projection's checks read it); ``dataset``, ``model`` and the data sizes
      are set from the arguments, bnjax's model fields (``width``) unused.
    workdir: the run's folder.
    progress: show a progress bar.
    stop_after: end the call after that many total steps, as an interruption
      would (the next call resumes).
    invariance_rtol: tolerance of the invariance measurement.

  Returns:
    The summary dict (also ``summary.json``); ``{}`` when ``stop_after`` ended
    the call.

  Raises:
    ValueError: naming the argument, before anything is written: a malformed
      ``data_dict`` (or first batch), an iterable without ``config.num_steps``,
      labels out of range, a model whose output is not
      ``(batch, classes)`` with more classes than the largest label, a
      ``config`` that does not validate, ``parallel='pmap'`` (a user's model
      has no pmap axis for its batch statistics).
    TypeError: ``model`` is not a ``flax.linen.Module``, or ``config`` not a
      ``Config``.

  Example:
    >>> import tempfile, numpy as np, flax.linen as nn
    >>> from bnjax import layers
    >>> from bnjax.train import Config, fit
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train):
    ...     x = nn.relu(layers.BatchNorm(use_running_average=not train)(nn.Dense(16)(x)))
    ...     return nn.Dense(3, name='head')(x)
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(96, 5)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1)
    >>> summary = fit(Net(), {'train': (x[:64], y[:64]), 'test': (x[64:], y[64:])},
    ...               Config(batch_size=16, num_steps=8, log_every=4, checkpoint_every=8,
    ...                      tensorboard=False), workdir=tempfile.mkdtemp(), progress=False)
    >>> summary['status'], summary['steps']
    ('finished', 8)

  References:
    van Laarhoven 2017, arXiv 1706.05350, section 3 (the scale-invariant
    weights); flax.linen, https://flax.readthedocs.io.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  user_model = model
  if isinstance(model, nnx.Module):
    if not hasattr(nnx, 'as_pure'):
      raise ValueError('model: fit trains a flax.nnx model with flax >= 0.11 (nnx.as_pure)')
    model = _NnxModel(model)
  elif not isinstance(model, nn.Module):
    raise TypeError(f'model: must be a flax.linen.Module or a flax.nnx.Module, got '
                    f'{type(model).__name__}')
  config = Config() if config is None else config
  if not isinstance(config, Config):
    raise TypeError(f'config: must be a bnjax.train.Config, got {type(config).__name__}')
  if not isinstance(data_dict, dict) or set(data_dict) != {'train', 'test'}:
    raise ValueError("data_dict: must be {'train': (x, y), 'test': (x, y)}, got "
                     f"{sorted(data_dict) if isinstance(data_dict, dict) else data_dict!r}")
  streamed = not isinstance(data_dict['train'], (tuple, list))
  splits = {'test': _split(data_dict, 'test')}
  if not streamed:
    splits['train'] = _split(data_dict, 'train')
  elif not config.num_steps:
    raise ValueError("config.num_steps: training on an iterator of batches needs num_steps "
                     "(an iterator has no epochs)")
  if config.parallel == 'pmap':
    raise ValueError('config.parallel: fit runs parallel="none" or "sharded"; under pmap a '
                     'model\'s batch norm needs the pmap axis name, which bnjax\'s models '
                     'take and yours may not')
  config = dataclasses.replace(config, dataset=config_lib.USER_DATASET,
                               model=config_lib.USER_MODEL, width=Config.width,
                               num_train=(config.num_steps * config.batch_size if streamed
                                          else len(splits['train'])),
                               num_test=len(splits['test']))
  config.validate(jax.device_count())

  if streamed:
    train_batches = _Stream(data_dict['train'], config.batch_size, config.num_steps,
                            config.bn_eval_batches if config.bn_eval == 'precise' else 0)
    first = train_batches.first()
  else:
    train_batches = data.Batches(splits['train'], config.batch_size, seed=config.seed)
    first = train_batches.batch(0, 0)
  if first['x'].shape[1:] != splits['test'].x.shape[1:]:
    raise ValueError(f"data_dict: train and test inputs differ in shape: "
                     f"{first['x'].shape[1:]} and {splits['test'].x.shape[1:]}")
  run_data = inputs.RunData(splits, train_batches,
                            data.Batches(splits['test'], config.eval_batch_size,
                                         shuffle=False))
  try:
    init = model.init if model is not user_model else jax.jit(
        functools.partial(model.init, train=True))
    variables = init(jax.random.key(config.seed), first['x'])
    logits = model.apply(variables, first['x'], train=False)
  except Exception as e:  # the user's model on the user's inputs: say which failed
    call = 'model(x) in train() / eval() mode' if model is not user_model else \
        'model(x, train=...)'
    raise ValueError(f'model: could not be initialized and applied on a training batch of '
                     f'shape {first["x"].shape} as {call}: {e}') from e
  classes = int(max(first['y'].max() if streamed else splits['train'].y.max(),
                    splits['test'].y.max())) + 1
  if np.shape(logits) != (config.batch_size, np.shape(logits)[-1]) or \
     np.shape(logits)[-1] < classes:
    raise ValueError(f'model: must return logits (batch, classes) with at least {classes} '
                     f'classes (the largest label is {classes - 1}), got shape '
                     f'{np.shape(logits)}')
  if streamed:
    train_batches.classes = int(np.shape(logits)[-1])
  for name, split in splits.items():
    if split.y.min() < 0:
      raise ValueError(f"data_dict[{name!r}]: labels must be in [0, classes), got "
                       f"{int(split.y.min())}")

  params, stats = variables['params'], variables.get('batch_stats', {})
  invariant = _invariant_kernels(model, params, stats, first['x'], first['y'],
                                 invariance_rtol)
  layers = step_metrics.invariant_layers(params, invariant)
  wanted = dict(config_lib.record(config), user_model=_model_fingerprint(user_model, params),
                invariant_layers=sorted(layers),
                data={'train': 'iterator, batch 0 ' + _fingerprint(data.Arrays(**first))
                      if streamed else _fingerprint(splits['train']),
                      'test': _fingerprint(splits['test'])})
  workdir = workdirs.folder(workdir)
  summary = loop.answered(workdir, wanted)
  if summary is not None:
    return _returned(summary, user_model, model, workdir)

  tx_of = functools.partial(programs.build_optimizer, config, invariant=invariant)
  initial = programs._initializer(model, tx_of, programs._start(config, invariant))  # pylint: disable=protected-access
  executor = executors.Executor(config.parallel, model,
                                programs.build_optimizer(config, invariant=invariant), False)
  eval_step = executors.make_eval_step(model, False)
  state = initial(jax.random.key(config.seed), first['x'], programs.hyperparameters(config),
                  config.init_scale)
  summary = trainer.run_one(config, pathlib.Path(workdir), wanted, run_data, state, executor,
                            eval_step, progress=progress, stop_after=stop_after,
                            stats_update=jax.jit(programs.stats_forward(model)),
                            invariant=layers)
  return _returned(summary, user_model, model, workdir)


def _returned(summary: dict, user_model, model, workdir) -> dict:
  """``summary``, after an nnx model took the run's last checkpointed weights."""
  if model is not user_model and workdirs.checkpoint_steps(workdir):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    last = workdirs.Checkpoints(workdir).latest_state()
    nnx.update(user_model, last['params'])
    if last.get('batch_stats'):
      nnx.update(user_model, last['batch_stats'])
  return summary
