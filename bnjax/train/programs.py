"""A run's compiled programs: the model, the optimizer, init, step and eval.

:func:`build_model` and :func:`build_optimizer` turn a :class:`Config` into
flax and optax objects. The optimizer's values (learning rate, momentum,
weight decay, gamma decay) can be arrays instead of the config's floats
(:func:`hyperparameters`) held in the optimizer state
(``optax.inject_hyperparams``), so one compiled step serves every run that
differs only in them and in the seed (:func:`program_key`): :func:`programs`
keeps the compiled init, step and eval of the last few keys in the process,
and :mod:`bnjax.train.vectorized` vmaps the same step over a group's values.
"""

import collections
import functools
import itertools
import json
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from bnjax.train import config as config_lib
from bnjax import bn_eval, layers, masks, models, transforms
from bnjax.train import executors
from bnjax.train.config import Config

__all__ = [
    'HYPERPARAMETERS',
    'VALUE_FIELDS',
    'build_model',
    'build_optimizer',
    'eval_batch_stats',
    'learning_rate_schedule',
    'hyperparameters',
    'init_state',
    'program_key',
    'programs',
]

# The config fields the optimizer state holds as values (optax.inject_hyperparams).
HYPERPARAMETERS = ('learning_rate', 'momentum', 'weight_decay', 'gamma_decay')
# Fields that change no compiled program: runs differing only in these share
# one (the values are arguments), and vectorized groups vmap over them.
VALUE_FIELDS = HYPERPARAMETERS + ('seed', 'init_scale')


def hyperparameters(config: Config) -> dict:
  """The config's optimizer values as float32 arrays, for ``build_optimizer(hyper=)``.

  Momentum and gamma decay are left out when 0: then they are not transforms of
  the chain at all.

  Args:
    config: a run's config.

  Returns:
    A dict of scalar float32 arrays.

  Example:
    >>> from bnjax.train import programs
    >>> from bnjax.train.config import Config
    >>> sorted(programs.hyperparameters(Config(momentum=0.9, gamma_decay=0.0)))
    ['learning_rate', 'momentum', 'weight_decay']

  References:
    Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization",
    JMLR 2012.
  """
  return {k: jnp.asarray(getattr(config, k), jnp.float32) for k in HYPERPARAMETERS
          if not (k in ('momentum', 'gamma_decay') and getattr(config, k) == 0)}


def program_key(config: Config) -> str:
  """Runs with equal keys share compiled programs (and can be one vmapped group).

  Every field but :data:`VALUE_FIELDS` and ``Config.NON_RESULT_FIELDS`` must
  match, and so must whether momentum and gamma decay are on (which
  transforms the optimizer chains).

  Args:
    config: a run's config.

  Returns:
    A string key.

  Example:
    >>> from bnjax.train import programs
    >>> from bnjax.train.config import Config
    >>> programs.program_key(Config(seed=1)) == programs.program_key(Config(seed=2))
    True
    >>> programs.program_key(Config()) == programs.program_key(Config(momentum=0.0))
    False

  References:
    Bradbury et al., JAX (2018): ``jax.jit`` compiles once per input shapes.
  """
  record = config_lib.record(config)
  for field in VALUE_FIELDS + Config.NON_RESULT_FIELDS:
    record.pop(field)
  record['momentum_on'] = config.momentum != 0
  record['gamma_decay_on'] = config.gamma_decay != 0
  return json.dumps(record, sort_keys=True)


_PROGRAMS: 'collections.OrderedDict[str, tuple]' = collections.OrderedDict()


def programs(config: Config) -> tuple:
  """``(initial, executor, eval_step)`` of the config's :func:`program_key`, compiled
  once per process.

  A worker trains later runs of the same shape without compiling again (the
  optimizer values live in the optimizer state: :func:`build_optimizer`), and
  evaluates runs of the same model with one eval step. The last four keys are kept.

  Args:
    config: a run's config (any run of the key: it fixes the structure).

  Returns:
    ``initial(rng, x, hyper, init_scale) -> TrainState`` (jitted; ``hyper`` the
    run's :func:`hyperparameters`, which the optimizer state then holds), an
    :class:`bnjax.train.executors.Executor` of the config's optimizer, and the
    jitted eval step.

  Example:
    >>> from bnjax.train import programs
    >>> from bnjax.train.config import Config
    >>> a = programs.programs(Config(learning_rate=0.1))
    >>> all(x is y for x, y in zip(programs.programs(Config(learning_rate=0.3, seed=1)), a))
    True
    >>> programs.programs(Config(optimizer='adam'))[2] is a[2]  # the same model's eval step
    True

  References:
    Bradbury et al., JAX (2018): ``jax.jit`` compiles once per input shapes.
  """
  regression = config.dataset == 'teacher_student'
  host_model = build_model(config, host=True)

  def build():
    tx_of = functools.partial(build_optimizer, config)
    return (_initializer(host_model, tx_of, _start(config)),
            executors.Executor(config.parallel, build_model(config), build_optimizer(config),
                               regression))

  # The eval step depends on the model alone: runs of other optimizers share it
  # (flax modules compare by their fields).
  eval_step = _cached(_EVAL_STEPS, (host_model, regression),
                      lambda: executors.make_eval_step(host_model, regression))
  return (*_cached(_PROGRAMS, program_key(config), build), eval_step)


def _cached(cache: collections.OrderedDict, key, build):
  """``cache[key]``, built on a miss; the 4 most recently used keys are kept."""
  if key not in cache:
    cache[key] = build()
    while len(cache) > 4:
      cache.popitem(last=False)
  cache.move_to_end(key)
  return cache[key]


_STATS_UPDATES: 'collections.OrderedDict[object, object]' = collections.OrderedDict()
_EVAL_STEPS: 'collections.OrderedDict[object, object]' = collections.OrderedDict()


def _stats_update(config: Config):
  """The model's training-mode forward returning its new ``batch_stats`` (one
  function per model, so its compiled program is reused)."""
  model = build_model(config, host=True)
  return _cached(_STATS_UPDATES, model, lambda: stats_forward(model))


def stats_forward(model):
  """``(params, batch_stats, x) -> batch_stats``: a model's training-mode forward
  returning its updated batch statistics (:func:`bnjax.bn_eval.precise`'s
  ``update_fn``), for a linen model or one that answers linen's ``apply``."""
  return lambda params, stats, x: model.apply(
      {'params': params, 'batch_stats': stats}, x, train=True,
      mutable=['batch_stats'])[1]['batch_stats']


def eval_batch_stats(config: Config, state: executors.TrainState, train_batches,
                     stats_update=None):
  """The ``batch_stats`` a run evaluates with, as ``config.bn_eval`` says.

  ``'running'``: the state's own; ``'debiased'``: :func:`bnjax.bn_eval.debiased`
  with ``state.step`` updates; ``'precise'``: :func:`bnjax.bn_eval.precise`
  over the first ``config.bn_eval_batches`` batches of the first epoch, at most
  the whole epoch (the training set once), with the state's weights.

  Args:
    config: the run's config.
    state: a single-copy host :class:`bnjax.train.executors.TrainState`.
    train_batches: the run's training :class:`bnjax.train.data.Batches`.
    stats_update: ``(params, batch_stats, x) -> batch_stats``, the model's
      training-mode forward (default: the config's model's).

  Returns:
    A ``batch_stats`` collection.

  Example:
    >>> import jax
    >>> from bnjax.train import data, programs
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, input_dim=4, bn_eval='debiased')
    >>> split = data.teacher_student(32, 8, config.input_dim, seed=0)['train']
    >>> batches = data.Batches(split, 8, seed=0)
    >>> initial = programs.programs(config)[0]
    >>> state = initial(jax.random.key(0), batches.batch(0, 0)['x'],
    ...                 programs.hyperparameters(config))
    >>> stats = programs.eval_batch_stats(config, state, batches)  # step 0: unchanged
    >>> bool((stats['dense_norm']['var'] == state.batch_stats['dense_norm']['var']).all())
    True

  References:
    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, arXiv 2105.07576,
    section 3.
  """
  momentum = layers.BatchNormBase.momentum
  if config.bn_eval == 'running' or not state.batch_stats:
    return state.batch_stats
  if config.bn_eval == 'debiased':
    return bn_eval.debiased(state.batch_stats, int(state.step), momentum=momentum)
  inputs = (b['x'] for b in train_batches.epoch(0))
  return bn_eval.precise(stats_update or _stats_update(config), state.params,
                        state.batch_stats,
                         itertools.islice(inputs, config.bn_eval_batches),
                         momentum=momentum)


# The initializer runs once per run, so its program is compiled without XLA's
# backend optimizations: on CPU, LLVM spends about 1 s on each threefry random
# draw (a width-8 ConvNet's init: 5.3 s to compile, 0.8 s unoptimized). The
# values can differ from the optimized program's in the last bit.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def _start(config: Config, invariant=masks.scale_invariant_kernels):
  """The map ``(params, init_scale) -> params`` from initialized params to a run's
  start: the scale-invariant kernels (``invariant``) times ``init_scale``, and the
  rotational optimizer's units centred (:func:`bnjax.transforms.center_units`, as
  Kosson et al.'s reference code starts)."""
  def start(params, init_scale):
    marks = invariant(params) if callable(invariant) else invariant
    params = jax.tree_util.tree_map(lambda w, on: w * init_scale if on else w,
                                    params, marks)
    if config.regularizer == 'rotational':
      params = transforms.center_units(params, mask=marks)
    return params
  return start


def _initializer(model, tx_of, start):
  """``initial(rng, x, hyper, init_scale=1.0) -> TrainState`` as one jitted
  program: run op by op, initialization compiles each initializer and normalizer
  op on its own (measured: 10 s of a 12 s ConvNet run). ``start`` maps the
  initialized params and ``init_scale`` to the trained ones' start
  (:func:`_start`)."""

  def initial(rng, x, hyper, init_scale=1.0):
    variables = model.init(rng, x, train=True)
    params = start(variables['params'], init_scale)
    return executors.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                                batch_stats=variables.get('batch_stats', {}),
                                opt_state=tx_of(hyper).init(params))

  try:
    return jax.jit(initial, compiler_options=INIT_COMPILER_OPTIONS)
  except TypeError:  # a jax.jit without compiler_options
    return jax.jit(initial)


def build_model(config: Config, *, host: bool = False):
  """The configured model; ``host=True``: without the pmap axis (init, evaluation).

  Args:
    config: the run's :class:`bnjax.train.config.Config`.
    host: build without the ``pmap`` axis name.

  Returns:
    An unbound flax.linen module (:func:`bnjax.models.build`).

  Example:
    >>> from bnjax.train import programs
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> type(programs.build_model(config)).__name__
    'Perceptron'

  References:
    See :func:`bnjax.models.build`.
  """
  pmapped = config.parallel == 'pmap' and not host
  return models.build(config.model, config.norm, axis_name=executors.AXIS_NAME if pmapped else None,
                      virtual_batch_size=config.virtual_batch_size,
                      activation=config.activation, width=config.width,
                      epsilon=None if config.norm_epsilon == -1 else config.norm_epsilon)


def build_optimizer(config: Config, hyper: Optional[dict] = None,
                    invariant=masks.scale_invariant_kernels) -> optax.GradientTransformation:
  r"""bnjax's sgd (with ``momentum``), adam, adamp or sgdp with the configured
  regularizer, tracked.

  .. math::
    \text{tx} = \text{chain}(\text{gamma decay}?,\ \text{opt}(\eta, \lambda),\
    \text{projection}?,\ \text{track\_dynamics})

  L2 and decoupled decay act on every kernel (``kernel_mask``), or, with
  ``head_weight_decay >= 0``, with ``weight_decay`` on the scale-invariant
  kernels and ``head_weight_decay`` on the others (the head); the
  projection (``regularizer='projection'``, or ``projection=True`` after any
  regularizer) on the scale-invariant kernels only
  (:func:`bnjax.masks.scale_invariant_kernels`). ``gamma_decay`` = zeta adds
  Luo et al.'s (2019) explicit penalty ``zeta * gamma^2`` on every
  normalization gain (:func:`bnjax.masks.gain_mask`), before the optimizer.
  ``rest_learning_rate`` > 0 trains every parameter outside the
  scale-invariant kernels at that peak rate (parameter groups: their steps
  scaled by ``rest_learning_rate / learning_rate``).
  ``adamp``/``sgdp`` (Heo et al. 2021) decay and test every kernel with their
  own decoupled decay (``regularizer='decoupled'``; none for ``'none'``);
  ``regularizer='rotational'`` wraps sgd, or adam as AdamW, in
  :func:`bnjax.transforms.rotational` (Kosson et al. 2024) on the
  scale-invariant kernels, the other kernels decayed. Dynamics are tracked
  on every kernel.

  The values (``learning_rate`` at its peak, ``momentum``, ``weight_decay``,
  ``gamma_decay``: :func:`hyperparameters`) are ``optax.inject_hyperparams``
  hyperparameters: they live in the optimizer state, which is how one
  compiled step serves every run that differs only in them (each state holds
  its own) and how :mod:`bnjax.train.vectorized` trains a group (the states
  are stacked). The learning rate a step used is read back from the state
  (:func:`bnjax.dynamics.tracked_learning_rate`).

  Args:
    config: the run's :class:`bnjax.train.config.Config`.
    hyper: values (arrays, possibly traced) that replace the config's in the
      initial state; the config still decides which transforms are chained
      (e.g. whether ``gamma_decay`` is on).
    invariant: the scale-invariant kernels, a mask as optax's (a pytree of bools
      or a callable of the params): :func:`bnjax.masks.scale_invariant_kernels`
      for :mod:`bnjax.models`; a user's model passes its measured mask
      (:func:`bnjax.train.fit`).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> from bnjax.train import programs
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> import jax.numpy as jnp
    >>> tx = programs.build_optimizer(config)
    >>> state = tx.init({'dense': {'kernel': jnp.ones((4, 1))}})
    >>> sorted(state.hyperparams), round(float(state.hyperparams['learning_rate']), 6)
    (['learning_rate', 'momentum', 'weight_decay'], 0.05)

  References:
    van Laarhoven 2017, arXiv 1706.05350, eq. 6-9; Luo et al. 2019, arXiv
    1809.00846, section 2 (gamma decay).
  """
  values = hyperparameters(config)
  values.update(hyper or {})

  # A closure, not functools.partial: inject_hyperparams would take a bound
  # callable keyword for a schedule of the step count.
  def chain(learning_rate, weight_decay, momentum=None, gamma_decay=None):
    return _chain(config, learning_rate, weight_decay, momentum, gamma_decay,
                  invariant=invariant)

  return optax.inject_hyperparams(chain)(**values)


def _chain(config: Config, learning_rate, weight_decay, momentum=None, gamma_decay=None,
           *, invariant=masks.scale_invariant_kernels) -> optax.GradientTransformation:
  """The optimizer chain of :func:`build_optimizer` at the given values (the
  ``optax.inject_hyperparams`` factory: the values come from the state). Momentum
  and gamma decay are ``None`` when off (not hyperparameters: not in the chain)."""
  momentum = 0.0 if momentum is None else momentum
  head_decay = config.head_weight_decay >= 0
  if config.regularizer == 'projection' or head_decay:
    mask = invariant
  else:
    mask = masks.kernel_mask
  common = dict(regularizer=config.regularizer, weight_decay=weight_decay,
                mask=mask, track=False)
  lr = learning_rate_schedule(config, learning_rate)
  kind = 'adam' if config.optimizer in ('adam', 'adamp') else 'sgd'
  decay = weight_decay if config.regularizer == 'decoupled' else 0.0
  if config.regularizer == 'rotational':
    base = transforms.rotational(
        'adamw' if kind == 'adam' else 'sgd', lr, weight_decay, momentum=momentum,
        eps=config.adam_eps, mask=invariant, decay_mask=masks.kernel_mask)
  elif config.optimizer == 'adamp':
    base = transforms.adamp(lr, eps=config.adam_eps, weight_decay=decay,
                            mask=masks.kernel_mask)
  elif config.optimizer == 'sgdp':
    base = transforms.sgdp(lr, momentum, weight_decay=decay, mask=masks.kernel_mask)
  elif config.optimizer == 'adam':
    base = transforms.adam(lr, eps=config.adam_eps, **common)
  else:
    base = transforms.sgd(lr, momentum, **common)
  parts = [base]
  head_kernels, rest = _outside(invariant, kernels_only=True), _outside(invariant)
  if head_decay and config.regularizer == 'l2':
    parts.insert(0, transforms.l2_regularization(config.head_weight_decay, head_kernels))
  elif head_decay:
    parts.append(transforms.decoupled_weight_decay(
        _scaled(lr, config.head_weight_decay), head_kernels))
  if config.gamma_decay:
    # The penalty zeta * gamma^2 of Luo et al. (2019), so gradient 2 * zeta * gamma.
    parts.insert(0, transforms.l2_regularization(2 * gamma_decay, masks.gain_mask))
  if config.rest_learning_rate != -1:
    # Every step of the rest is proportional to the learning rate (gradient steps
    # and decoupled decay alike), so rescaling it trains the rest at its own rate.
    parts.append(optax.masked(optax.scale(config.rest_learning_rate / learning_rate),
                              rest))
  if config.projection and config.regularizer != 'projection':
    parts.append(transforms.unit_norm_projection(invariant))
  parts.append(transforms.track_dynamics(lr, kind, masks.kernel_mask))
  return optax.chain(*parts)


def _outside(invariant, kernels_only: bool = False):
  """The mask (a callable of the params) of every parameter outside ``invariant``
  (head, gains, biases), or with ``kernels_only`` every kernel outside it (the
  head)."""
  def mask(params):
    marks = invariant(params) if callable(invariant) else invariant
    kernels = masks.kernel_mask(params) if kernels_only else jax.tree_util.tree_map(
        lambda _: True, params)
    return jax.tree_util.tree_map(lambda k, inv: bool(k) and not inv, kernels, marks)
  return mask


def _scaled(lr, factor: float):
  """``factor * lr``, for a constant or a schedule."""
  return (lambda count: factor * lr(count)) if callable(lr) else factor * lr


def learning_rate_schedule(config: Config, learning_rate=None):
  r"""The run's learning rate: a constant, or an optax schedule of the step count.

  .. math::
    \eta_t = \eta\,\frac{t}{T_w}\ (t < T_w), \qquad
    \eta_t = \eta\, s\!\left(\frac{t - T_w}{T - T_w}\right)\ (t \ge T_w)

  with :math:`T_w` = ``warmup_steps``, :math:`T` = ``config.total_steps()``
  and :math:`s` 1 (``'constant'``), :math:`\tfrac12(1 + \cos \pi x)`
  (``'cosine'``) or 0.1 per milestone at 50% and 75% of the run (``'step'``).
  A constant schedule without warmup is the plain value, so such runs compile
  the programs they always did.

  Args:
    config: the run's config.
    learning_rate: the peak value (default ``config.learning_rate``; an array
      or a traced value in vectorized groups).

  Returns:
    ``learning_rate`` itself, or a schedule ``count -> lr``.

  Example:
    >>> from bnjax.train import programs
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=10,
    ...                 num_train=100, num_epochs=2, learning_rate=0.1,
    ...                 schedule='cosine', warmup_steps=5)
    >>> lr = programs.learning_rate_schedule(config)
    >>> [round(float(lr(t)), 4) for t in (0, 5, 12, 19)]
    [0.0, 0.1, 0.0552, 0.0011]

  References:
    Goyal et al., "Accurate, Large Minibatch SGD", 2017, arXiv 1706.02677,
    section 2.2 (warmup); Loshchilov & Hutter, "SGDR", ICLR 2017, arXiv
    1608.03983, eq. 5 (cosine); He et al., "Deep Residual Learning", CVPR
    2016, section 3.4 (step decay).
  """
  lr = config.learning_rate if learning_rate is None else learning_rate
  if config.schedule == 'constant' and not config.warmup_steps:
    return lr
  total, warmup = config.total_steps(), config.warmup_steps
  rest = total - warmup
  if config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, rest)
  elif config.schedule == 'step':
    main = optax.piecewise_constant_schedule(
        lr, {int(0.5 * total) - warmup: 0.1, int(0.75 * total) - warmup: 0.1})
  else:
    main = optax.constant_schedule(lr)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def init_state(config: Config, model, tx, sample_x) -> executors.TrainState:
  """The initial :class:`bnjax.train.executors.TrainState` of ``config``'s seed.

  Args:
    config: the run's :class:`bnjax.train.config.Config` (its ``seed``).
    model: from :func:`build_model` with ``host=True``.
    tx: from :func:`build_optimizer`.
    sample_x: a batch of inputs (its shape sets the parameters').

  Returns:
    A :class:`bnjax.train.executors.TrainState` at step 0.

  Example:
    >>> from bnjax.train import programs
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> import jax.numpy as jnp
    >>> model, tx = programs.build_model(config, host=True), programs.build_optimizer(config)
    >>> state = programs.init_state(config, model, tx, jnp.ones((8, 4)))
    >>> int(state.step), state.params['dense']['kernel'].shape
    (0, (4, 1))

  References:
    LeCun, Bottou, Orr & Mueller, "Efficient BackProp", 1998, section 4.6
    (flax's default kernel initialization, ``lecun_normal``).
  """
  return _initializer(model, lambda _: tx, _start(config))(jax.random.key(config.seed),
                                                         sample_x, None, config.init_scale)
