"""What runs on the devices: the train and eval steps, and their placement per parallel mode.

Parallel modes: ``none`` (``jax.jit`` on one device), ``pmap`` (batch split
over local devices; gradients and batch-norm statistics averaged with
``axis_name='batch'``) and ``sharded`` (``jax.jit`` over a
``jax.sharding.Mesh`` with the batch split on axis ``'data'``; XLA inserts
the collectives). All three compute the same global-batch step, and every
metric of the step is computed from the global-batch gradient.
"""

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnjax.models import objective
from bnjax.train import data
from bnjax.train.step_metrics import unit_angle_metrics, unit_scale_grad_sq

__all__ = [
    'Executor',
    'TrainState',
    'evaluate',
    'make_eval_step',
    'make_train_step',
    'objective',
]

AXIS_NAME = 'batch'


@flax.struct.dataclass
class TrainState:
  """Everything a training step carries: step, params, batch stats, optimizer state.

  Attributes:
    step: number of steps taken (int32 scalar).
    params: the model's parameters.
    batch_stats: the running statistics (``{}`` without batch norm).
    opt_state: the optax state.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax.train.executors import TrainState
    >>> params = {'w': jnp.ones(2)}
    >>> state = TrainState(jnp.int32(0), params, {}, optax.sgd(0.1).init(params))
    >>> int(state.replace(step=state.step + 1).step)
    1

  References:
    flax.training.train_state.TrainState (the same fields, without
    ``apply_fn``, so the state is a plain pytree to checkpoint).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def make_train_step(model, tx, regression: bool, axis_name: Optional[str] = None):
  r"""One SGD step of the model's objective: ``step(state, batch) -> (state, metrics)``.

  .. math::
    g = \nabla_w L(w; \text{batch}), \qquad w \leftarrow w + \text{tx}(g)

  With ``axis_name`` (under ``pmap``) the gradient and metrics are averaged
  over devices before any metric of the gradient is taken.

  Args:
    model: a flax.linen model called as ``model.apply(v, x, train=True)``.
    tx: an optax transform (with ``optax.inject_hyperparams`` its values
      live in the state, so one compiled step serves runs that differ only
      in them).
    regression: the loss of :func:`objective`.
    axis_name: the pmap axis, or ``None``.

  Returns:
    The step function ``step(state, batch)`` (not jitted).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from bnjax import models
    >>> from bnjax.train import executors
    >>> model, tx = models.Perceptron(norm='none'), optax.sgd(0.1)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros(4)
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> state = executors.TrainState(jnp.int32(0), params, {}, tx.init(params))
    >>> state, metrics = jax.jit(executors.make_train_step(model, tx, True))(
    ...     state, {'x': x, 'y': y})
    >>> int(state.step), sorted(k for k in metrics if not k.startswith('per_unit/'))
    (1, ['angular_update_sq/dense', 'dead_units/dense', 'grad_sq_at_unit_norm/dense', 'loss'])

  References:
    Robbins & Monro, "A Stochastic Approximation Method", 1951.
  """

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
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, **unit_scale_grad_sq(grads, state.params),
               **unit_angle_metrics(state.params, params, grads)}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics

  return step


def make_eval_step(model, regression: bool):
  r"""Sums of loss (and correct predictions) over a batch, with running statistics.

  .. math::
    \Big(\sum_b \ell(o_b, y_b),\ \sum_b [\arg\max o_b = y_b]\Big)

  Args:
    model: a flax.linen model called as ``model.apply(v, x, train=False)``.
    regression: squared error (True) or cross-entropy (False).

  Returns:
    A jitted ``step(params, batch_stats, x, y) -> dict`` of sums.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import models
    >>> from bnjax.train import executors
    >>> model = models.Perceptron(norm='none')
    >>> params = model.init(jax.random.key(0), jnp.ones((2, 3)))['params']
    >>> sorted(executors.make_eval_step(model, True)(params, {}, jnp.ones((2, 3)),
    ...                                               jnp.zeros(2)))
    ['loss']

  References:
    Ioffe & Szegedy 2015, arXiv 1502.03167, Algorithm 2 (inference with
    population statistics).
  """

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
  r"""Mean test loss (and accuracy) of ``state`` over a whole split.

  .. math::
    L_{\text{test}} = \frac{1}{N}\sum_{n=1}^{N} \ell(o_n, y_n)

  Args:
    eval_step: from :func:`make_eval_step`.
    state: a single-copy :class:`TrainState`.
    split: the :class:`bnjax.train.data.Arrays` to evaluate.
    batches: unshuffled :class:`bnjax.train.data.Batches` of ``split``.

  Returns:
    ``{'test_loss': ...}`` and, for classification, ``'test_accuracy'``.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from bnjax import models
    >>> from bnjax.train import data, executors
    >>> model = models.Perceptron(norm='none')
    >>> split = data.Arrays(np.ones((5, 3), np.float32), np.zeros(5, np.float32))
    >>> params = model.init(jax.random.key(0), split.x)['params']
    >>> state = executors.TrainState(jnp.int32(0), params, {}, None)
    >>> batches = data.Batches(split, 2, shuffle=False)
    >>> sorted(executors.evaluate(executors.make_eval_step(model, True), state, split,
    ...                           batches))
    ['test_loss']

  References:
    Ioffe & Szegedy 2015, arXiv 1502.03167, Algorithm 2.
  """
  totals = {}
  for batch in batches.epoch(0):
    out = eval_step(state.params, state.batch_stats, batch['x'], batch['y'])
    for k, v in jax.device_get(out).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return eval_metrics(totals, len(split))


def eval_metrics(totals: dict, n: int) -> dict:
  """``test_loss`` (and ``test_accuracy``) from :func:`make_eval_step`'s sums over ``n``
  examples."""
  result = {'test_loss': totals['loss'] / n}
  if 'correct' in totals:
    result['test_accuracy'] = totals['correct'] / n
  return result


# ----------------------------------------------------------- executors


class Executor:
  """Places state and batches and runs the jitted step for one parallel mode.

  Modes: ``'none'`` (``jax.jit`` on one device), ``'pmap'`` (one replica per
  local device, batch split on a leading axis, gradients ``pmean``-ed) and
  ``'sharded'`` (``jax.jit`` over a 1-D device mesh: state replicated, batch
  split). Every mode computes the same step on the global batch.

  Args:
    mode: ``'none'``, ``'pmap'`` or ``'sharded'``.
    model, tx, regression: as :func:`make_train_step`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from bnjax import models
    >>> from bnjax.train import executors
    >>> model, tx = models.Perceptron(norm='none'), optax.sgd(0.1)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros(4)
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> ex = executors.Executor('sharded', model, tx, True)
    >>> state = ex.put_state(executors.TrainState(jnp.int32(0), params, {}, tx.init(params)))
    >>> state, metrics = ex.step(state, {'x': x, 'y': y})
    >>> int(ex.get_state(state).step)
    1

  References:
    Goyal et al., "Accurate, Large Minibatch SGD", 2017, arXiv 1706.02677
    (data-parallel SGD on the global batch).
  """

  def __init__(self, mode: str, model, tx, regression: bool):
    self.mode = mode
    if mode == 'pmap':
      self.devices = jax.local_devices()
      self._step = jax.pmap(make_train_step(model, tx, regression, AXIS_NAME),
                            axis_name=AXIS_NAME, donate_argnums=0, in_axes=(0, 0))
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
    """One step on the global ``batch``."""
    state, metrics = self._step(state, self.put_batch(batch))
    if self.mode == 'pmap':
      metrics = jax.tree_util.tree_map(lambda a: a[0], metrics)
    return state, metrics
