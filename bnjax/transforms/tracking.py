"""``track_dynamics``: per-leaf weight norm, update norm, angular update and
effective learning rate in the optimizer state, read with :func:`bnjax.dynamics.read`."""

import jax
import jax.numpy as jnp
import optax

from bnjax import dynamics, theory
from bnjax.dynamics import LeafDynamics, TrackDynamicsState
from bnjax._validation import check_nonnegative, check_optimizer
from bnjax.transforms._common import Mask, ScalarOrSchedule, _at, _expanded, _require_params

TRACKED_OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'adam_l2')


def _leaf_dynamics(w, update, learning_rate, optimizer: str, axis: int = -1) -> LeafDynamics:
  """Summarizes the step ``w -> w + update`` of one leaf (see :class:`LeafDynamics`)."""
  norms = dynamics.unit_norms(w, axis)
  live = dynamics.live_units(norms)  # a collapsed unit's lr/||w||^2 would dominate
  eff = theory.effective_learning_rate(learning_rate, jnp.where(live, norms, 1.0),
                                       optimizer)
  eff = jnp.sum(jnp.where(live, eff, 0.0)) / jnp.maximum(jnp.sum(live), 1)
  return LeafDynamics(
      weight_norm=jnp.mean(norms),
      update_norm=jnp.mean(dynamics.unit_norms(update, axis)),
      angular_update=jnp.mean(dynamics.angular_update(w, w + update, axis)),
      effective_lr=jnp.asarray(eff, jnp.float32),
  )


def track_dynamics(learning_rate: ScalarOrSchedule, optimizer: str = 'sgd',
                   mask: Mask = None, *, axis: int = -1) -> optax.GradientTransformation:
  r"""Records per-leaf weight dynamics; leaves the updates unchanged.

  Put it last in the chain so it sees the final update ``u`` of each step.
  Its state (:class:`TrackDynamicsState`) holds, for each
  tracked leaf, the mean over units of the weight norm before the step, the
  update norm, the angular update ``angle(w, w + u)`` in radians, and the
  effective learning rate (``lr/||w||^2`` for SGD, ``lr/||w||`` for Adam;
  van Laarhoven 2017) over the live units (:func:`bnjax.dynamics.live_units`:
  a collapsed unit's would dominate the mean). Read it with
  :func:`bnjax.dynamics.read`.

  A norm that moves faster than batch norm's running averages follow (about
  :math:`1/(1-m)` steps, 100 at flax's momentum 0.99; weight decay's own time
  constant is :func:`bnjax.theory.equilibrium_time_constant`) leaves those
  averages stale: evaluate with :func:`bnjax.bn_eval.precise` (linen) or
  :func:`bnjax.bn_eval.precise_nnx` (nnx) rather than conclude from the
  running statistics that the decay hurt.

  Args:
    learning_rate: the optimizer's learning rate, a float or the same schedule.
    optimizer: ``'sgd'`` (with or without momentum; ``'momentum'`` is an
      alias) or ``'adam'`` (``'adamw'``, ``'adam_l2'`` alike): the names of
      :mod:`bnjax.theory`.
    mask: which leaves to track (``None``: every leaf; for a model's layers
      pass ``bnjax.masks.kernel_mask``).
    axis: the unit axis.

  .. math::
    \Delta\theta_j = \angle(w_j, w_j + u_j), \qquad
    \eta_\text{eff} = \eta / \lVert w_j \rVert^2 \ \text{(SGD)}, \
    \eta / \lVert w_j \rVert \ \text{(Adam)}

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`TrackDynamicsState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import dynamics, transforms
    >>> tx = optax.chain(optax.sgd(0.1), transforms.track_dynamics(0.1, 'sgd'))
    >>> params = {'w': jnp.array([[2.0], [0.0]])}
    >>> _, state = tx.update({'w': jnp.array([[0.0], [1.0]])}, tx.init(params), params)
    >>> {k: round(float(v), 4) for k, v in dynamics.read(state).items()}
    {'w/weight_norm': 2.0, 'w/update_norm': 0.1, 'w/angular_update': 0.05, 'w/effective_lr': 0.025}

  References:
    van Laarhoven 2017, arXiv 1706.05350, eq. 9 and 13; Kosson et al.,
    "Rotational Equilibrium", 2024, arXiv 2305.17212, section 3.
  """
  check_optimizer('optimizer', optimizer, TRACKED_OPTIMIZERS)
  check_nonnegative('learning_rate', learning_rate)
  kind = 'sgd' if optimizer in ('sgd', 'momentum') else 'adam'

  tracked = lambda params: _expanded(mask, params)

  def init_fn(params):
    zero = jnp.zeros([], jnp.float32)
    metrics = jax.tree_util.tree_map(
        lambda on, _: LeafDynamics(zero, zero, zero, zero) if on else None,
        tracked(params), params)
    first = jnp.asarray(_at(learning_rate, jnp.zeros([], jnp.int32)), jnp.float32)
    return TrackDynamicsState(jnp.zeros([], jnp.int32), metrics, first)

  def update_fn(updates, state, params=None):
    _require_params(params, 'track_dynamics')
    lr = _at(learning_rate, state.count)
    metrics = jax.tree_util.tree_map(
        lambda on, u, w: _leaf_dynamics(w, u, lr, kind, axis) if on else None,
        tracked(params), updates, params)
    return updates, TrackDynamicsState(
        optax.safe_increment(state.count), metrics, jnp.asarray(lr, jnp.float32))

  return optax.GradientTransformation(init_fn, update_fn)
