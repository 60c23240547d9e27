"""optax GradientTransformations for weights that feed a normalization.

Every transform here is an ordinary ``optax.GradientTransformation`` and can
be used in any ``optax.chain``, inside ``optax.masked``,
``optax.inject_hyperparams`` or ``optax.MultiSteps``.

``mask`` means one thing in every transform, as in optax: a pytree of bools
(or a prefix of the params), or a callable that returns one from the params,
saying which leaves the transform acts on; ``mask=None`` means *every leaf*
(like ``optax.add_decayed_weights`` and ``optax.adamw``). The projection
(:func:`unit_norm_projection`, ``regularizer='projection'``) has no default:
projecting a leaf that is not scale-invariant (a classifier head, a bias)
changes the function the network computes, so it needs an explicit mask,
e.g. ``bnjax.masks.scale_invariant_kernels`` (structural) or
``bnjax.masks.scale_invariant_mask`` (measured). For decay restricted to
kernels, pass ``bnjax.masks.kernel_mask``.

Where a rate appears it may be a float or an optax schedule (a function of
the step count, the count starting at 0 and advancing once per update).
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from bnjax import dynamics, masks, theory
from bnjax._validation import (check_bool, check_nonnegative, check_optimizer, check_positive,
                               check_unit_interval, concrete_float, unit_axes_of)

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]
Mask = Optional[Union[Any, Callable[[Any], Any]]]

REGULARIZERS = ('none', 'l2', 'decoupled', 'projection')
TRACKED_OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'adam_l2')


def _require_projection_mask(mask, where: str):
  if mask is None:
    raise ValueError(
        f'{where} needs an explicit mask: projecting a leaf that is not scale-invariant '
        f'(a classifier head, a bias) changes the function the network computes. Pass '
        f'bnjax.masks.scale_invariant_kernels (structural) or a measured '
        f'bnjax.masks.scale_invariant_mask(loss_fn, params, ...).')


def _require_params(params, name):
  if params is None:
    raise ValueError(f'{name} needs the current params: call '
                     f'update(updates, state, params).')


def _needs_params(tx: optax.GradientTransformation, name: str
                  ) -> optax.GradientTransformation:
  """``tx`` whose update raises a ValueError naming ``name`` when params are missing."""

  def update_fn(updates, state, params=None):
    _require_params(params, name)
    return tx.update(updates, state, params)

  return optax.GradientTransformation(tx.init, update_fn)


def _expanded(mask: 'Mask', params):
  """The mask as a full tree of bools; ``None`` means every leaf."""
  if mask is None:
    return jax.tree_util.tree_map(lambda _: True, params)
  return masks.expand_mask(mask, params)


def _at(rate, count):
  return rate(count) if callable(rate) else rate


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
    return _needs_params(optax.add_decayed_weights(sign * rate, mask), name)

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
  return tx if mask is None else optax.masked(tx, mask)


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


class UnitNormProjectionState(NamedTuple):
  r"""State of :func:`unit_norm_projection`: the per-unit target radii.

  .. math::
    w_j \leftarrow r_j \, \frac{w_j}{\lVert w_j \rVert}

  Attributes:
    radius: a pytree of per-unit norms ``r_j`` taken at init
      (``radius='init'``) or ``None`` (a fixed radius).

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import masks, transforms
    >>> tx = transforms.unit_norm_projection(masks.kernel_mask, radius='init')
    >>> state = tx.init({'kernel': jnp.array([[3.0], [4.0]])})
    >>> [float(v) for v in state.inner_state.radius['kernel'].ravel()]
    [5.0]

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, section 4.
  """
  radius: Any


def unit_norm_projection(mask: Mask = None, *, axis: int = -1,
                         radius: Union[float, str] = 1.0, epsilon: float = 1e-12
                         ) -> optax.GradientTransformation:
  r"""Projects each unit of the updated weight onto the sphere of ``radius``.

  Put it last in the chain. It returns ``u' = P(w + u) - w`` with
  ``P(v)_j = radius * v_j / ||v_j||`` per unit j (every axis but ``axis``),
  so ``w + u'`` has per-unit norm ``radius`` (the "last in chain" pattern of
  ``optax.keep_params_nonnegative``). This is van Laarhoven's proposal
  (2017, arXiv 1706.05350, section 4): for scale-invariant weights, fixing
  ``||w||`` removes weight decay as a hyperparameter and fixes the effective
  learning rate at
  ``lr / radius^2`` (SGD) or ``lr / radius`` (Adam). A unit whose updated
  weight is zero stays zero (no NaN).

  Args:
    mask: which leaves to project; required (no default, see the module
      docstring): ``bnjax.masks.scale_invariant_kernels`` or a measured
      ``bnjax.masks.scale_invariant_mask``. Pass ``lambda p: jax.tree.map(lambda
      _: True, p)`` to project every leaf on purpose (a 1-D leaf's units are
      its single entries).
    axis: the unit axis.
    radius: finite target norm > 0, or ``'init'`` to keep each unit's norm at
      ``init`` time.
    epsilon: guards the division for near-zero units.

  .. math::
    u' = r\, \frac{w + u}{\lVert w + u \rVert_j} - w \quad \text{per unit } j

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import masks, transforms
    >>> tx = optax.chain(optax.sgd(0.5),
    ...                  transforms.unit_norm_projection(masks.kernel_mask))
    >>> params = {'kernel': jnp.array([[3.0, 0.0], [4.0, 2.0]]), 'bias': jnp.ones(2)}
    >>> grads = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> new = optax.apply_updates(params, updates)
    >>> [round(float(n), 4) for n in jnp.linalg.norm(new['kernel'], axis=0)]
    [1.0, 1.0]
    >>> new['bias']  # not in the mask: plain SGD
    Array([0.5, 0.5], dtype=float32)

  References:
    van Laarhoven 2017, arXiv 1706.05350, section 4 ("force ||w|| = 1").
  """
  _require_projection_mask(mask, 'unit_norm_projection')
  if isinstance(radius, str):
    if radius != 'init':
      raise ValueError(f"radius must be a finite number > 0 or 'init', got {radius!r}.")
  else:
    check_positive('radius', radius)
  check_positive('epsilon', epsilon)

  def keepdims_norms(w):
    return jnp.expand_dims(dynamics.unit_norms(w, axis),
                           unit_axes_of(w, axis)[1]).astype(jnp.result_type(w))

  def init_fn(params):
    if radius == 'init':
      return UnitNormProjectionState(jax.tree_util.tree_map(keepdims_norms, params))
    return UnitNormProjectionState(None)

  def update_fn(updates, state, params=None):
    _require_params(params, 'unit_norm_projection')

    def project(u, w, r):
      new = w + u
      return (new * (r / jnp.maximum(keepdims_norms(new), epsilon)) - w).astype(u.dtype)

    radii = (state.radius if radius == 'init'
             else jax.tree_util.tree_map(lambda _: radius, params))
    return jax.tree_util.tree_map(project, updates, params, radii), state

  return optax.masked(optax.GradientTransformation(init_fn, update_fn), mask)


class LeafDynamics(NamedTuple):
  r"""One step of one weight leaf, each field a mean over its units.

  .. math::
    \Delta\theta_j = \angle(w_j, w_j + u_j), \qquad
    \eta_{\mathrm{eff}, j} = \eta / \lVert w_j \rVert^2 \ (\text{SGD}),\ \eta / \lVert w_j \rVert \ (\text{Adam})

  Attributes:
    weight_norm: per-unit norm of the weight before the step.
    update_norm: per-unit norm of the update.
    angular_update: per-unit angle (radians) between the weight before and after.
    effective_lr: per-unit effective learning rate at the weight before the
      step (:func:`bnjax.theory.effective_learning_rate`); units of zero norm
      are left out of the mean.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import transforms
    >>> tx = optax.chain(optax.sgd(0.5), transforms.track_dynamics(0.5, 'sgd'))
    >>> params = {'kernel': jnp.array([[1.0], [0.0]])}
    >>> _, state = tx.update({'kernel': jnp.array([[0.0], [-2.0]])}, tx.init(params), params)
    >>> leaf = state[1].metrics['kernel']
    >>> round(float(leaf.angular_update), 4), float(leaf.effective_lr)  # pi / 4, 0.5 / 1
    (0.7854, 0.5)

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, eq. 9 (effective learning rate).
  """
  weight_norm: jax.Array
  update_norm: jax.Array
  angular_update: jax.Array
  effective_lr: jax.Array


class TrackDynamicsState(NamedTuple):
  r"""State of :func:`bnjax.transforms.track_dynamics`.

  .. math::
    \text{metrics}_t = \mathrm{LeafDynamics}(w_t, u_t)

  Attributes:
    count: number of updates so far.
    metrics: a pytree with the structure of the params: a :class:`LeafDynamics`
      for each tracked leaf, ``None`` for the others.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import transforms
    >>> state = transforms.track_dynamics(0.1, 'sgd').init({'kernel': jnp.ones((2, 2))})
    >>> int(state.count), type(state.metrics['kernel']).__name__
    (0, 'LeafDynamics')

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, section 3.
  """
  count: jax.Array
  metrics: Any


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
    return TrackDynamicsState(jnp.zeros([], jnp.int32), metrics)

  def update_fn(updates, state, params=None):
    _require_params(params, 'track_dynamics')
    lr = _at(learning_rate, state.count)
    metrics = jax.tree_util.tree_map(
        lambda on, u, w: _leaf_dynamics(w, u, lr, kind, axis) if on else None,
        tracked(params), updates, params)
    return updates, TrackDynamicsState(
        optax.safe_increment(state.count), metrics)

  return optax.GradientTransformation(init_fn, update_fn)


# -------------------------------------------------------------- optimizers


def _regularized(base: optax.GradientTransformation, learning_rate, *, regularizer: str,
                 weight_decay, mask, track: bool, kind: str
                 ) -> optax.GradientTransformation:
  if regularizer not in REGULARIZERS:
    raise ValueError(f'regularizer must be one of {REGULARIZERS}, got {regularizer!r}.')
  check_nonnegative('weight_decay', weight_decay)
  if regularizer in ('none', 'projection') and concrete_float(
      weight_decay, 'weight_decay') not in (None, 0.0):
    raise ValueError(f"weight_decay={weight_decay} has no effect with "
                     f"regularizer='{regularizer}'; pass weight_decay=0.")
  if regularizer == 'projection':
    _require_projection_mask(mask, "regularizer='projection'")
  parts = []
  if regularizer == 'l2':
    parts.append(l2_regularization(weight_decay, mask))
  parts.append(base)
  if regularizer == 'decoupled':
    if callable(learning_rate) or callable(weight_decay):
      rate = lambda count: _at(learning_rate, count) * _at(weight_decay, count)
    else:
      rate = learning_rate * weight_decay
    parts.append(decoupled_weight_decay(rate, mask))
  if regularizer == 'projection':
    parts.append(unit_norm_projection(mask))
  if track:
    parts.append(track_dynamics(learning_rate, kind, mask))
  return optax.chain(*parts)


def sgd(learning_rate: ScalarOrSchedule, momentum: float = 0.0, *, nesterov: bool = False,
        regularizer: str = 'none', weight_decay: ScalarOrSchedule = 0.0,
        mask: Mask = None, track: bool = True) -> optax.GradientTransformation:
  r"""SGD (with optional momentum) with a regularizer for scale-invariant weights.

  .. math::
    g_t = \nabla L(w_t) + \lambda w_t \ (\text{l2}), \quad
    v_t = a\, v_{t-1} + g_t, \quad
    w_{t+1} = w_t - \eta\, v_t - \eta\lambda w_t \ (\text{decoupled})

  With ``'projection'`` each masked unit is then put back on the unit sphere.

  Args:
    learning_rate: ``lr``, a float or an optax schedule.
    momentum: heavy-ball momentum ``a`` in [0, 1) (``optax.sgd``'s meaning).
    nesterov: Nesterov momentum.
    regularizer: ``'none'``; ``'l2'`` (coupled, before the optimizer);
      ``'decoupled'`` (``lr * weight_decay * w`` subtracted after it); or
      ``'projection'`` (per-unit unit-norm projection last).
    weight_decay: ``lambda``, a float or an optax schedule; 0 for ``'none'``
      and ``'projection'``.
    mask: which leaves are regularized and tracked, as ``optax.masked``
      (``None``: every leaf, as in ``optax.adamw``; ``bnjax.masks.kernel_mask``
      for kernels only); required for ``'projection'``.
    track: append :func:`track_dynamics` (read it with :func:`bnjax.dynamics.read`).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import dynamics, masks, transforms
    >>> tx = transforms.sgd(0.1, 0.9, regularizer='l2', weight_decay=5e-4,
    ...                     mask=masks.kernel_mask)
    >>> params = {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2)}
    >>> updates, state = tx.update({'kernel': jnp.zeros((4, 2)), 'bias': jnp.zeros(2)},
    ...                            tx.init(params), params)
    >>> [round(float(u), 8) for u in updates['kernel'][0]]  # -lr * lambda * w
    [-5e-05, -5e-05]
    >>> sorted(dynamics.read(state))[:2]
    ['kernel/angular_update', 'kernel/effective_lr']

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, eq. 6-9; Loshchilov & Hutter,
    "Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101,
    Algorithm 1 (decoupled).
  """
  check_positive('learning_rate', learning_rate)
  momentum = 0.0 if momentum is None else momentum  # optax.sgd's "no momentum"
  check_unit_interval('momentum', momentum, include_one=False)
  check_bool('nesterov', nesterov)
  no_momentum = concrete_float(momentum, 'momentum') == 0.0  # traced: vmapped momenta
  base = optax.sgd(learning_rate, momentum=None if no_momentum else momentum,
                   nesterov=nesterov)
  return _regularized(base, learning_rate, regularizer=regularizer,
                      weight_decay=weight_decay, mask=mask, track=track, kind='sgd')


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, *, regularizer: str = 'none',
         weight_decay: ScalarOrSchedule = 0.0, mask: Mask = None, track: bool = True
         ) -> optax.GradientTransformation:
  r"""Adam with a regularizer; ``regularizer='decoupled'`` is AdamW.

  .. math::
    g_t = \nabla L(w_t) + \lambda w_t \ (\text{l2}), \quad
    w_{t+1} = w_t - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
              - \eta\lambda w_t \ (\text{decoupled})

  ``'l2'`` is "Adam + L2" (the penalty's gradient goes through Adam's
  normalization); ``'decoupled'`` equals ``optax.adamw(lr, b1, b2, eps,
  weight_decay)`` on the masked leaves.

  Args:
    learning_rate: ``lr``, a float or an optax schedule.
    b1, b2: decay rates of the first and second moment estimates.
    eps: added to the root of the second moment.
    regularizer, weight_decay, mask, track: as :func:`sgd`.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import transforms
    >>> ours = transforms.adam(1e-3, regularizer='decoupled', weight_decay=0.1,
    ...                        track=False)
    >>> ref = optax.adamw(1e-3, weight_decay=0.1)
    >>> params, grads = {'w': jnp.array([1.0, -2.0])}, {'w': jnp.array([0.5, 0.5])}
    >>> a, _ = ours.update(grads, ours.init(params), params)
    >>> b, _ = ref.update(grads, ref.init(params), params)
    >>> bool(jnp.allclose(a['w'], b['w']))
    True

  References:
    Kingma & Ba, "Adam", ICLR 2015, arXiv 1412.6980, Algorithm 1; Loshchilov
    & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv
    1711.05101, Algorithm 2.
  """
  check_positive('learning_rate', learning_rate)
  check_unit_interval('b1', b1, include_one=False)
  check_unit_interval('b2', b2, include_one=False)
  check_nonnegative('eps', eps)
  base = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  return _regularized(base, learning_rate, regularizer=regularizer,
                      weight_decay=weight_decay, mask=mask, track=track, kind='adam')


# ------------------------------------------------------- AdamP / SGDP


class AdamPState(NamedTuple):
  """State of :func:`adamp`: step count and Adam's two moments.

  Attributes:
    count: updates so far (int32 scalar).
    mu, nu: first and second moment estimates, shaped like the params.
  """
  count: jax.Array
  mu: Any
  nu: Any


class SGDPState(NamedTuple):
  """State of :func:`sgdp`: step count and the momentum buffer.

  Attributes:
    count: updates so far (int32 scalar).
    momentum: the momentum buffer, shaped like the params.
  """
  count: jax.Array
  momentum: Any


def _cosine(a, b, axes, eps):
  """``|<a, b>| / (max(||a||, eps) max(||b||, eps))`` over ``axes`` (float32+)."""
  dot = jnp.sum(a * b, axes)
  na = jnp.sqrt(jnp.sum(jnp.square(a), axes))
  nb = jnp.sqrt(jnp.sum(jnp.square(b), axes))
  return jnp.abs(dot) / (jnp.maximum(na, eps) * jnp.maximum(nb, eps))


def _radial_projection(w, g, step, *, delta, wd_ratio, eps):
  """Heo et al.'s projection test and projection for one leaf of ndim > 1.

  First per unit (all axes but the last), then over the whole leaf: when every
  unit's (or the leaf's) cosine between gradient and weight is below
  ``delta / sqrt(dim)``, the weight-direction component of ``step`` is
  removed and the decay is scaled by ``wd_ratio``. Returns ``(step, ratio)``.
  """
  dtype = jnp.promote_types(w.dtype, jnp.float32)
  w, g, step = (a.astype(dtype) for a in (w, g, step))
  unit = tuple(range(w.ndim - 1))
  every = tuple(range(w.ndim))
  per_unit = jnp.max(_cosine(g, w, unit, eps)) < delta / jnp.sqrt(w.size / w.shape[-1])
  per_leaf = _cosine(g, w, every, eps) < delta / jnp.sqrt(w.size)

  def remove_radial(axes):
    w_n = w / (jnp.sqrt(jnp.sum(jnp.square(w), axes, keepdims=True)) + eps)
    return step - w_n * jnp.sum(w_n * step, axes, keepdims=True)

  projected = jnp.where(per_unit, remove_radial(unit),
                        jnp.where(per_leaf, remove_radial(every), step))
  ratio = jnp.where(per_unit | per_leaf, wd_ratio, 1.0)
  return projected, ratio


def _float32_zeros(params):
  """Optimizer moments: zeros like ``params``, in float32 or wider."""
  return jax.tree_util.tree_map(
      lambda w: jnp.zeros_like(w, jnp.promote_types(w.dtype, jnp.float32)), params)


def _check_projection_args(weight_decay, delta, wd_ratio, eps, nesterov):
  check_nonnegative('weight_decay', weight_decay)
  check_positive('delta', delta)
  check_unit_interval('wd_ratio', wd_ratio, include_one=True)
  check_positive('eps', eps)
  check_bool('nesterov', nesterov)


def _projected_updates(step, grads, params, mask, lr, decay_scale, *, delta, wd_ratio,
                       eps):
  """``-(lr decay_scale ratio) w - step'`` per leaf, with Heo et al.'s projection on
  the leaves of ndim > 1 in ``mask`` (``None``: every leaf is decayed)."""
  on = _expanded(mask, params)

  def leaf(s, g, w, active):
    if not active:
      return (-s).astype(w.dtype)
    ratio = 1.0
    if w.ndim > 1:
      s, ratio = _radial_projection(w, g, s, delta=delta, wd_ratio=wd_ratio, eps=eps)
    return (-s - lr * decay_scale * ratio * w).astype(w.dtype)

  return jax.tree_util.tree_map(leaf, step, grads, params, on)


def adamp(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, *, weight_decay: ScalarOrSchedule = 0.0, delta: float = 0.1,
          wd_ratio: float = 0.1, nesterov: bool = False, mask: Mask = None
          ) -> optax.GradientTransformation:
  r"""AdamP (Heo et al. 2021): Adam without the radial part of the step on
  scale-invariant weights.

  .. math::
    p_t = \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}, \qquad
    p_t \leftarrow p_t - \hat w\,\langle \hat w, p_t\rangle
    \ \text{ if } \max \cos(g_t, w_t) < \frac{\delta}{\sqrt{d}}, \qquad
    w_{t+1} = w_t (1 - \eta\lambda r) - \eta\, p_t

  with the test and the projection per unit first (:math:`\hat w` the unit's
  direction, :math:`d` its fan-in) and then over the whole leaf, and
  :math:`r` = ``wd_ratio`` when projected, else 1 (decay is decoupled, as in
  AdamW). As the published reference code runs it, with units along the
  last axis (flax's layout): bias-corrected moments, ``eps`` outside the
  root, the Nesterov step :math:`(\beta_1 m_t + (1-\beta_1) g_t)` in place
  of :math:`m_t`, the cosine :math:`|\langle g, w\rangle| / (\max(\|g\|,
  \epsilon)\max(\|w\|, \epsilon))`.

  Args:
    learning_rate: :math:`\eta`, a float or an optax schedule.
    b1, b2: moment decay rates in [0, 1).
    eps: :math:`\epsilon`, > 0.
    weight_decay: :math:`\lambda` (decoupled; 0 for none), float or schedule.
    delta: the cosine threshold's :math:`\delta` (0.1 in the paper).
    wd_ratio: decay multiplier on projected leaves, in [0, 1].
    nesterov: Nesterov momentum.
    mask: leaves that are decayed and tested for projection (tested only if
      ndim > 1); the others take the plain Adam step. ``None``: every leaf,
      as the reference code.

  Returns:
    An ``optax.GradientTransformation`` (``update`` needs ``params``).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import transforms
    >>> tx = transforms.adamp(0.1)
    >>> w = {'kernel': jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> g = {'kernel': jnp.array([[0.0, 1.0], [1.0, 0.0]])}   # orthogonal to w
    >>> u, _ = tx.update(g, tx.init(w), w)
    >>> float(jnp.sum(u['kernel'] * w['kernel']))  # no radial component: 0
    0.0

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021, arXiv 2006.08217, Algorithm 2;
    reference code clovaai/AdamP.
  """
  check_positive('learning_rate', learning_rate)
  check_unit_interval('b1', b1, include_one=False)
  check_unit_interval('b2', b2, include_one=False)
  _check_projection_args(weight_decay, delta, wd_ratio, eps, nesterov)

  def init_fn(params):
    zeros = _float32_zeros(params)
    return AdamPState(jnp.zeros([], jnp.int32), zeros, zeros)

  def update_fn(grads, state, params=None):
    _require_params(params, 'adamp')
    count = optax.safe_increment(state.count)
    t = count  # b ** t in the default float type, as optax's bias correction
    mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g),
                                state.nu, grads)
    lr = _at(learning_rate, state.count)
    step_size = lr / (1 - b1 ** t)

    def step(m, v, g):
      denom = jnp.sqrt(v) / jnp.sqrt(1 - b2 ** t) + eps
      return step_size * ((b1 * m + (1 - b1) * g) if nesterov else m) / denom

    steps = jax.tree_util.tree_map(step, mu, nu, grads)
    updates = _projected_updates(steps, grads, params, mask, lr,
                                 _at(weight_decay, state.count), delta=delta,
                                 wd_ratio=wd_ratio, eps=eps)
    return updates, AdamPState(count, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def sgdp(learning_rate: ScalarOrSchedule, momentum: float = 0.0, *, dampening: float = 0.0,
         weight_decay: ScalarOrSchedule = 0.0, nesterov: bool = False, eps: float = 1e-8,
         delta: float = 0.1, wd_ratio: float = 0.1, mask: Mask = None
         ) -> optax.GradientTransformation:
  r"""SGDP (Heo et al. 2021): SGD with momentum without the radial part of the
  step on scale-invariant weights.

  .. math::
    b_t = \mu\, b_{t-1} + (1 - \text{dampening})\, g_t, \qquad
    p_t = b_t \ (\text{or } g_t + \mu b_t \text{ with Nesterov}),

  :math:`p_t` projected as in :func:`adamp`, and
  :math:`w_{t+1} = w_t (1 - \eta\lambda r / (1 - \mu)) - \eta\, p_t`
  (the reference code's decay, scaled by :math:`1/(1-\mu)`).

  Args:
    learning_rate: :math:`\eta`, a float or an optax schedule.
    momentum: :math:`\mu` in [0, 1).
    dampening: in [0, 1].
    weight_decay: :math:`\lambda` (decoupled; 0 for none), float or schedule.
    nesterov: Nesterov momentum.
    eps, delta, wd_ratio, mask: as :func:`adamp`.

  Returns:
    An ``optax.GradientTransformation`` (``update`` needs ``params``).

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import transforms
    >>> tx = transforms.sgdp(0.1, momentum=0.9)
    >>> w = {'kernel': jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> g = {'kernel': jnp.array([[0.0, 1.0], [1.0, 0.0]])}
    >>> u, _ = tx.update(g, tx.init(w), w)
    >>> [[round(float(v), 3) + 0.0 for v in row] for row in u['kernel']]
    [[0.0, -0.1], [-0.1, 0.0]]

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021, arXiv 2006.08217, Algorithm 1;
    reference code clovaai/AdamP.
  """
  check_positive('learning_rate', learning_rate)
  check_unit_interval('momentum', momentum, include_one=False)
  check_unit_interval('dampening', dampening, include_one=True)
  _check_projection_args(weight_decay, delta, wd_ratio, eps, nesterov)

  def init_fn(params):
    return SGDPState(jnp.zeros([], jnp.int32), _float32_zeros(params))

  def update_fn(grads, state, params=None):
    _require_params(params, 'sgdp')
    buf = jax.tree_util.tree_map(lambda b, g: momentum * b + (1 - dampening) * g,
                                 state.momentum, grads)
    lr = _at(learning_rate, state.count)
    steps = jax.tree_util.tree_map(
        lambda b, g: lr * ((g + momentum * b) if nesterov else b), buf, grads)
    updates = _projected_updates(steps, grads, params, mask, lr,
                                 _at(weight_decay, state.count) / (1 - momentum),
                                 delta=delta, wd_ratio=wd_ratio, eps=eps)
    return updates, SGDPState(optax.safe_increment(state.count), buf)

  return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------ rotational wrapper


class RotationalState(NamedTuple):
  """State of :func:`rotational`.

  Attributes:
    count: updates so far (int32 scalar).
    inner: the inner optimizer's state (``optax.scale_by_adam`` or
      ``optax.trace``).
    norm: per-unit target norms of the rotated leaves (their initial norms,
      after centring), ``None`` elsewhere.
    update_norm_sq: exponential average of the squared per-unit norm of the
      projected inner update, ``None`` outside the mask.
  """
  count: jax.Array
  inner: Any
  norm: Any
  update_norm_sq: Any


ROTATIONAL_INNER = ('sgd', 'adamw')


def _unit_sum(a):
  return jnp.sum(a, tuple(range(a.ndim - 1)), keepdims=True)


def _centred(a):
  return a - jnp.mean(a, tuple(range(a.ndim - 1)), keepdims=True)


def rotational(optimizer: str, learning_rate: ScalarOrSchedule,
               weight_decay: ScalarOrSchedule, *, momentum: float = 0.0, b1: float = 0.9,
               b2: float = 0.999, eps: float = 1e-8, mask: Mask = None,
               decay_mask: Mask = None, update_norm_decay: float = 0.9,
               center: bool = True) -> optax.GradientTransformation:
  r"""Rotational optimizer (Kosson, Messmer & Jaggi 2024): every unit rotates at
  its inner optimizer's equilibrium angular update from the first step.

  Builds the inner optimizer (``'sgd'`` with ``momentum``, or ``'adamw'``)
  and, per unit (output feature, the last axis) of the leaves in ``mask``:

  .. math::
    u \leftarrow u - w\,\frac{\langle u, w\rangle}{r^2}, \quad
    u \leftarrow u - \bar u\ (\text{center}), \quad
    \nu_t = \beta \nu_{t-1} + (1-\beta)\|u\|^2, \quad
    w' = w - \eta_r\, r\, \frac{u}{\sqrt{\nu_t / (1-\beta^t)} + \epsilon},
    \quad w_{t+1} = r\,\frac{w'}{\|w'\|}

  with :math:`u` the inner update without learning rate and decay (AdamW's
  :math:`\hat m/(\sqrt{\hat v}+\epsilon)`, SGD's momentum buffer),
  :math:`r` the unit's initial norm (of the centred weights with ``center``),
  :math:`\beta` = ``update_norm_decay`` and
  :math:`\eta_r` = :func:`bnjax.theory.equilibrium_angular_update` at the
  current (scheduled) learning rate. The norm never changes; the angle per
  step is :math:`\arctan(\eta_r \|u\| / \sqrt{\hat\nu})`, :math:`\eta_r` on
  average. With ``center`` the first update also moves each unit to zero
  mean (at its norm :math:`r`), as Kosson et al. centre at initialization.
  Leaves outside the mask take the inner optimizer's whole update (AdamW
  with decoupled decay; SGD with momentum on :math:`g + \lambda w`), the
  decay only on those in ``decay_mask``.

  Args:
    optimizer: ``'sgd'`` or ``'adamw'``.
    learning_rate: :math:`\eta`, a float or an optax schedule.
    weight_decay: :math:`\lambda` > 0, which sets :math:`\eta_r`.
    momentum: SGD's momentum in [0, 1).
    b1, b2, eps: AdamW's.
    mask: the rotated leaves, explicitly (as the projection, see the module
      docstring): e.g. ``bnjax.masks.scale_invariant_kernels``.
    decay_mask: the leaves outside ``mask`` that are decayed, like
      ``optax.adamw``'s mask (``None``: all of them); e.g.
      ``bnjax.masks.kernel_mask`` to spare biases and gains.
    update_norm_decay: :math:`\beta` in [0, 1).
    center: zero-mean units.

  Returns:
    An ``optax.GradientTransformation`` (``update`` needs ``params``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import dynamics, theory, transforms
    >>> w = {'kernel': jax.random.normal(jax.random.key(0), (16, 4))}
    >>> g = {'kernel': jax.random.normal(jax.random.key(1), (16, 4))}
    >>> tx = transforms.rotational('sgd', 0.1, 5e-4, momentum=0.9, mask={'kernel': True},
    ...                            center=False)
    >>> u, _ = tx.update(g, tx.init(w), w)
    >>> new = w['kernel'] + u['kernel']
    >>> bool(jnp.allclose(dynamics.unit_norms(new), dynamics.unit_norms(w['kernel'])))
    True
    >>> angle = dynamics.angular_update(w['kernel'], new)
    >>> target = theory.equilibrium_angular_update('sgd', 0.1, 5e-4, momentum=0.9)
    >>> bool(jnp.allclose(angle, target, rtol=1e-3))
    True

  References:
    Kosson, Messmer & Jaggi, "Rotational Equilibrium: How Weight Decay
    Balances Learning Across Neural Networks", ICML 2024, arXiv 2305.17212,
    section 4 and Algorithm 1; reference code epfml/REQ
    (``RotationalWrapper``).
  """
  if optimizer not in ROTATIONAL_INNER:
    raise ValueError(f'optimizer must be one of {ROTATIONAL_INNER}, got {optimizer!r}.')
  check_positive('learning_rate', learning_rate)
  check_positive('weight_decay', weight_decay)
  check_unit_interval('momentum', momentum, include_one=False)
  check_unit_interval('b1', b1, include_one=False)
  check_unit_interval('b2', b2, include_one=False)
  check_positive('eps', eps)
  check_unit_interval('update_norm_decay', update_norm_decay, include_one=False)
  check_bool('center', center)
  _require_projection_mask(mask, 'rotational')
  inner = (optax.scale_by_adam(b1, b2, eps) if optimizer == 'adamw'
           else optax.trace(momentum))

  def rotated(params):
    return masks.expand_mask(mask, params)

  def decayed(params):
    return _expanded(decay_mask, params)

  def init_fn(params):
    on = rotated(params)
    norm = jax.tree_util.tree_map(
        lambda w, r: jnp.sqrt(_unit_sum(jnp.square(_centred(w) if center else w)))
        if r else None, params, on)
    zeros = jax.tree_util.tree_map(lambda n: None if n is None else jnp.zeros_like(n),
                                   norm)
    return RotationalState(jnp.zeros([], jnp.int32), inner.init(params), norm, zeros)

  def update_fn(grads, state, params=None):
    _require_params(params, 'rotational')
    on, decay = rotated(params), decayed(params)
    lr = _at(learning_rate, state.count)
    lam = _at(weight_decay, state.count)
    count = optax.safe_increment(state.count)
    if optimizer == 'sgd':  # the L2 term rides in the momentum, as in REQ's SGDM
      grads = jax.tree_util.tree_map(
          lambda g, w, r, d: g + lam * w if d and not r else g, grads, params, on, decay)
    u, inner_state = inner.update(grads, state.inner, params)
    eta_r = theory.equilibrium_angular_update(optimizer, lr, lam, momentum=momentum, b1=b1)
    debias = 1.0 - update_norm_decay ** count

    def leaf(u, w, r, d, norm, nu):
      if not r:
        step = u + lam * w if optimizer == 'adamw' and d else u
        return (-lr * step).astype(w.dtype), None
      dtype = jnp.promote_types(w.dtype, jnp.float32)
      u, start = u.astype(dtype), w.astype(dtype)
      if center:  # a no-op after the first step, whose updates are centred
        start = _centred(start)
        start = start * norm / jnp.sqrt(_unit_sum(jnp.square(start)))
      u = u - start * _unit_sum(u * start) / jnp.square(norm)
      if center:
        u = _centred(u)
      nu = update_norm_decay * nu + (1.0 - update_norm_decay) * _unit_sum(jnp.square(u))
      moved = start - eta_r * norm * u / (jnp.sqrt(nu / debias) + eps)
      moved = moved * norm / jnp.sqrt(_unit_sum(jnp.square(moved)))
      return (moved - w.astype(dtype)).astype(w.dtype), nu

    out = jax.tree_util.tree_map(leaf, u, params, on, decay, state.norm,
                                 state.update_norm_sq)
    updates = jax.tree_util.tree_map(lambda _, o: o[0], params, out)
    nus = jax.tree_util.tree_map(lambda _, o: o[1], params, out)
    return updates, RotationalState(count, inner_state, state.norm, nus)

  return optax.GradientTransformation(init_fn, update_fn)
