"""``track_dynamics`` and ``track_gradients``: per-leaf weight norm, update norm,
angular update, effective learning rate and gradient at unit scale in the
optimizer state, read with :func:`bnjax.dynamics.read`."""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from bnjax import dynamics, theory
from bnjax.dynamics import (GradientDynamics, LeafDynamics, TrackDynamicsState,
                            TrackGradientsState)
from bnjax._validation import check_nonnegative, check_optimizer, check_unit_interval
from bnjax.transforms._common import Mask, ScalarOrSchedule, _at, _expanded, _require_params

TRACKED_OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'adam_l2')


def _live_mean(values, live):
  return jnp.sum(jnp.where(live, values, 0.0)) / jnp.maximum(jnp.sum(live), 1)


def _leaf_dynamics(w, update, learning_rate, optimizer: str, axis: int = -1) -> LeafDynamics:
  """Summarizes the step ``w -> w + update`` of one leaf (see :class:`LeafDynamics`)."""
  norms = dynamics.unit_norms(w, axis)
  live = dynamics.live_units(norms)  # a collapsed unit's lr/||w||^2 would dominate
  eff = theory.effective_learning_rate(learning_rate, jnp.where(live, norms, 1.0),
                                       optimizer)
  angles = dynamics.angular_update(w, w + update, axis)
  return LeafDynamics(
      weight_norm=jnp.mean(norms),
      update_norm=jnp.mean(dynamics.unit_norms(update, axis)),
      angular_update=jnp.mean(angles),
      angular_update_rms=jnp.sqrt(_live_mean(jnp.square(angles), live)),
      effective_lr=jnp.asarray(_live_mean(eff, live), jnp.float32),
  )


def _gradient_dynamics(w, grad, axis: int = -1) -> GradientDynamics:
  """The gradient at unit scale of one leaf (see :class:`GradientDynamics`)."""
  norms, grad_norms = dynamics.unit_norms(w, axis), dynamics.unit_norms(grad, axis)
  live = dynamics.live_units(norms) & (grad_norms > 0)
  return GradientDynamics(jnp.sqrt(_live_mean(jnp.square(grad_norms * norms), live)))


_ROOT_MEAN_SQUARES = ('angular_update_rms', 'grad_norm_at_unit_scale')


def _moving_average(previous, current, count, decay):
  r"""Bias-corrected exponential moving average of per-leaf summaries.

  ``previous`` holds the corrected average of ``count`` steps, ``current`` the
  step ``count + 1``; returns the corrected average of ``count + 1`` steps,
  :math:`\hat m_t = \big(d(1 - d^{t-1})\hat m_{t-1} + (1 - d)x_t\big)/(1 - d^t)`
  (Kingma and Ba 2015, Algorithm 1's correction), over the squares for the root
  mean squares.
  """
  if decay is None:
    return current
  t = (count + 1).astype(jnp.float32)
  kept = decay * (1.0 - decay ** (t - 1.0))
  total = 1.0 - decay ** t

  def average(old, new, field):
    if field in _ROOT_MEAN_SQUARES:
      return jnp.sqrt((kept * jnp.square(old) + (1.0 - decay) * jnp.square(new)) / total)
    return (kept * old + (1.0 - decay) * new) / total

  def leaf(old, new):
    if new is None:
      return None
    return type(new)(*(average(o, n, f) for o, n, f in zip(old, new, new._fields)))

  is_summary = lambda x: isinstance(x, (LeafDynamics, GradientDynamics))
  return jax.tree_util.tree_map(leaf, previous, current, is_leaf=lambda x: x is None
                                or is_summary(x))


def track_dynamics(learning_rate: ScalarOrSchedule, optimizer: str = 'sgd',
                   mask: Mask = None, *, axis: int = -1,
                   ema_decay: Optional[float] = None) -> optax.GradientTransformation:
  r"""Records per-leaf weight dynamics; leaves the updates unchanged.

  Put it last in the chain so it sees the final update ``u`` of each step.
  Its state (:class:`TrackDynamicsState`) holds, for each
  tracked leaf, the mean over units of the weight norm before the step, the
  update norm, the angular update ``angle(w, w + u)`` in radians, and, over
  the live units (:func:`bnjax.dynamics.live_units`: a collapsed unit's would
  dominate), the root mean square angle (what
  :func:`bnjax.theory.equilibrium_angular_update` predicts) and the effective
  learning rate (``lr/||w||^2`` for SGD, ``lr/||w||`` for Adam; van Laarhoven
  2017). Read it with :func:`bnjax.dynamics.read`. With ``ema_decay`` each is
  a bias-corrected moving average over steps, so reading every few hundred
  steps (one device-to-host transfer) still sees all of them. The gradient at
  unit scale, which SGD's equilibrium norm needs, is
  :func:`track_gradients`' (first in the chain).

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
    ema_decay: ``None`` (the last step's values) or the decay ``d`` in
      ``[0, 1)`` of a bias-corrected exponential moving average over steps
      (time constant about ``1 / (1 - d)`` steps).

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
    >>> {k: round(float(v), 4) for k, v in dynamics.read(state).items()}  # doctest: +NORMALIZE_WHITESPACE
    {'w/weight_norm': 2.0, 'w/update_norm': 0.1, 'w/angular_update': 0.05,
     'w/angular_update_rms': 0.05, 'w/effective_lr': 0.025}

  References:
    van Laarhoven 2017, arXiv 1706.05350, eq. 9 and 13; Kosson et al.,
    "Rotational Equilibrium", 2024, arXiv 2305.17212, section 3.
  """
  check_optimizer('optimizer', optimizer, TRACKED_OPTIMIZERS)
  check_nonnegative('learning_rate', learning_rate)
  _check_ema_decay(ema_decay)
  kind = 'sgd' if optimizer in ('sgd', 'momentum') else 'adam'

  def init_fn(params):
    first = jnp.asarray(_at(learning_rate, jnp.zeros([], jnp.int32)), jnp.float32)
    return TrackDynamicsState(jnp.zeros([], jnp.int32),
                              _zero_summaries(LeafDynamics, mask, params), first)

  def update_fn(updates, state, params=None):
    _require_params(params, 'track_dynamics')
    lr = _at(learning_rate, state.count)
    metrics = jax.tree_util.tree_map(
        lambda on, u, w: _leaf_dynamics(w, u, lr, kind, axis) if on else None,
        _expanded(mask, params), updates, params)
    metrics = _moving_average(state.metrics, metrics, state.count, ema_decay)
    return updates, TrackDynamicsState(
        optax.safe_increment(state.count), metrics, jnp.asarray(lr, jnp.float32))

  return optax.GradientTransformation(init_fn, update_fn)


def track_gradients(mask: Mask = None, *, axis: int = -1,
                    ema_decay: Optional[float] = None) -> optax.GradientTransformation:
  r"""Records each leaf's gradient norm at unit weight scale; leaves the updates unchanged.

  Put it first in the chain (before any weight decay or scaling) so it sees
  the loss's gradient ``g``. Its state (:class:`TrackGradientsState`) holds,
  for each tracked leaf, the root mean square over the live units (a
  gradient reaches them, their norm has not collapsed:
  :func:`bnjax.dynamics.live_units`) of
  :math:`\lVert g_j\rVert\lVert w_j\rVert`: for a scale-invariant unit,
  the norm its gradient would have at unit weight norm, ``grad_norm`` of
  :func:`bnjax.theory.equilibrium_norm` (SGD and Adam + L2 need it; the
  angle and norm of :func:`track_dynamics` then have a prediction to meet).
  :func:`bnjax.dynamics.read` returns it as ``<leaf>/grad_norm_at_unit_scale``.

  .. math::
    \lVert \tilde g \rVert = \Big(\frac{1}{|L|}\sum_{j \in L}
    \lVert g_j \rVert^2 \lVert w_j \rVert^2\Big)^{1/2}

  Args:
    mask: which leaves to track (``None``: every leaf).
    axis: the unit axis.
    ema_decay: ``None`` (the last step's value) or the decay in ``[0, 1)`` of
      a bias-corrected exponential moving average of the squares over steps.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`TrackGradientsState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import dynamics, theory, transforms
    >>> tx = optax.chain(transforms.track_gradients(), optax.sgd(0.1),
    ...                  transforms.track_dynamics(0.1, 'sgd'))
    >>> params = {'w': jnp.array([[2.0], [0.0]])}
    >>> _, state = tx.update({'w': jnp.array([[0.0], [1.0]])}, tx.init(params), params)
    >>> g = float(dynamics.read(state)['w/grad_norm_at_unit_scale'])  # 1 * 2
    >>> g, round(theory.equilibrium_norm('sgd', 0.1, 5e-4, fan_in=2, grad_norm=g), 2)
    (2.0, 4.47)

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419,
    Theorem 1; van Laarhoven 2017, arXiv 1706.05350, eq. 9.
  """
  _check_ema_decay(ema_decay)

  def init_fn(params):
    return TrackGradientsState(jnp.zeros([], jnp.int32),
                               _zero_summaries(GradientDynamics, mask, params))

  def update_fn(updates, state, params=None):
    _require_params(params, 'track_gradients')
    metrics = jax.tree_util.tree_map(
        lambda on, g, w: _gradient_dynamics(w, g, axis) if on else None,
        _expanded(mask, params), updates, params)
    metrics = _moving_average(state.metrics, metrics, state.count, ema_decay)
    return updates, TrackGradientsState(optax.safe_increment(state.count), metrics)

  return optax.GradientTransformation(init_fn, update_fn)


def _zero_summaries(kind, mask, params):
  zero = jnp.zeros([], jnp.float32)
  return jax.tree_util.tree_map(
      lambda on, _: kind(*(zero for _ in kind._fields)) if on else None,
      _expanded(mask, params), params)


def _check_ema_decay(ema_decay):
  if ema_decay is None:
    return
  if callable(ema_decay):
    raise TypeError(f'ema_decay must be a number in [0, 1) or None, got {ema_decay!r}.')
  check_unit_interval('ema_decay', ema_decay, include_one=False)
