"""Coupled L2 regularization and decoupled weight decay (optionally scheduled)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnjax._validation import check_nonnegative
from bnjax.transforms._common import (Mask, ScalarOrSchedule, _masked, _needs_params,
                                      _require_params)


class ScheduledScaleState(NamedTuple):
  r"""State of a scheduled weight-decay term: the step count the schedule reads.

  .. math::
    u_t \leftarrow u_t \pm \eta(t)\, w_t

  Attributes:
    count: number of updates so far (int32 scalar).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import transforms
    >>> tx = transforms.decoupled_weight_decay(optax.constant_schedule(0.1))
    >>> state = tx.init({'w': jnp.ones(2)})
    >>> int(optax.tree_utils.tree_get(state, 'count'))
    0

  References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
    arXiv 1711.05101, Algorithm 2 line 12 (schedule multiplier).
  """
  count: jax.Array


def _add_scaled_params(rate: ScalarOrSchedule, sign: float, mask: Mask, name: str
                       ) -> optax.GradientTransformation:
  """``u <- u + sign * rate * w``; a schedule is read at the transform's own count
  (optax.add_decayed_weights takes schedules only from optax 0.2.6 on)."""
  if not callable(rate):
    return _needs_params(_masked(optax.add_decayed_weights(sign * rate), mask), name)

  def init_fn(params):
    del params
    return ScheduledScaleState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _require_params(params, name)
    r = sign * rate(state.count)
    updates = jax.tree_util.tree_map(lambda u, w: (u + r * w).astype(u.dtype), updates,
                                     params)
    return updates, ScheduledScaleState(optax.safe_increment(state.count))

  tx = optax.GradientTransformation(init_fn, update_fn)
  return _masked(tx, mask)


def l2_regularization(weight_decay: ScalarOrSchedule, mask: Mask = None
                      ) -> optax.GradientTransformation:
  r"""Coupled L2 regularization: ``u <- u + lambda * w``.

  The gradient of the penalty ``lambda/2 * ||w||^2``. Put it *before* the
  optimizer (``optax.chain(l2_regularization(l), optax.adam(lr))``) so the
  penalty's gradient goes through the optimizer's scaling: that is what
  "Adam + L2" means. For weights feeding a normalization it has no
  regularizing effect; it shrinks ``||w||`` and so raises the effective
  learning rate (van Laarhoven 2017, arXiv 1706.05350).

  Args:
    weight_decay: lambda >= 0, a float or a schedule.
    mask: which leaves to regularize (default: all).

  .. math::
    u_t' = u_t + \lambda\, w_t

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import transforms
    >>> tx = optax.chain(transforms.l2_regularization(0.1), optax.sgd(1.0))
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> updates, _ = tx.update({'w': jnp.zeros(2)}, tx.init(params), params)
    >>> updates['w']
    Array([-0.1, -0.2], dtype=float32)

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight Normalization",
    2017, arXiv 1706.05350, eq. 2-5.
  """
  check_nonnegative('weight_decay', weight_decay)
  return _add_scaled_params(weight_decay, 1.0, mask, 'l2_regularization')


def decoupled_weight_decay(rate: ScalarOrSchedule, mask: Mask = None
                           ) -> optax.GradientTransformation:
  r"""Decoupled weight decay: ``u <- u - rate * w``, placed *after* the optimizer.

  Loshchilov & Hutter (2019, arXiv 1711.05101). ``rate`` is the full
  per-step shrink factor, i.e. ``learning_rate * weight_decay``:
  ``optax.chain(optax.adam(lr), decoupled_weight_decay(lr * wd))`` equals
  ``optax.adamw(lr, weight_decay=wd)`` (with a schedule, pass
  ``lambda t: schedule(t) * wd``).

  Args:
    rate: shrink factor >= 0 per step, a float or a schedule.
    mask: which leaves to decay (default: all).

  .. math::
    u_t' = u_t - \eta_t \lambda\, w_t

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import transforms
    >>> tx = optax.chain(optax.adam(1e-3), transforms.decoupled_weight_decay(1e-4))
    >>> params = {'w': jnp.ones(3)}
    >>> updates, _ = tx.update({'w': jnp.zeros(3)}, tx.init(params), params)
    >>> [round(float(u), 6) for u in updates['w']]  # -lambda * w
    [-0.0001, -0.0001, -0.0001]

  References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
    arXiv 1711.05101, Algorithm 2 line 12.
  """
  check_nonnegative('rate', rate)
  return _add_scaled_params(rate, -1.0, mask, 'decoupled_weight_decay')
