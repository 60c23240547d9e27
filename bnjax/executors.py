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

from bnjax import data
from bnjax.step_metrics import unit_scale_grad_sq

AXIS_NAME = 'batch'


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


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
