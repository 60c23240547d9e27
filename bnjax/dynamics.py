"""Per-unit weight norms, angular updates and effective learning rates.

A *unit* is one output feature: for a flax kernel ``(..., in, out)`` the
per-unit quantities reduce over every axis but ``axis`` (default -1).

:func:`bnjax.transforms.track_dynamics` keeps per-leaf summaries of these
(:class:`LeafDynamics`) in its optimizer state (:class:`TrackDynamicsState`);
:func:`read` pulls them out of any optax state.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bnjax._validation import path_str, unit_axes_of


def unit_norms(w, axis: int = -1):
  r"""L2 norm of each unit, in float32 or wider.

  .. math::
    \lVert w_j \rVert = \Big(\sum_{i} w_{ij}^2\Big)^{1/2}

  Args:
    w: a weight, units along ``axis``.
    axis: the unit axis (the last axis for flax kernels).

  Returns:
    An array of shape ``(w.shape[axis],)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import dynamics
    >>> dynamics.unit_norms(jnp.array([[3.0, 0.0], [4.0, 2.0]]))
    Array([5., 2.], dtype=float32)

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, eq. 7 (per-unit norm).
  """
  w = jnp.asarray(w)
  w = w.astype(jnp.promote_types(w.dtype, jnp.float32))
  return jnp.sqrt(jnp.sum(w * w, axis=unit_axes_of(w, axis)[1]))


# A unit whose norm fell below this fraction of its layer's median norm has
# collapsed (decayed away); its angle and effective LR are not the layer's.
COLLAPSED = 1e-2


def live_units(norms):
  r"""Which units have not collapsed: a norm above 0 and at least
  :data:`COLLAPSED` times the layer's median.

  .. math::
    \text{live}_j = [\lVert w_j \rVert > 0] \wedge
    [\lVert w_j \rVert \ge 10^{-2} \operatorname{median}_k \lVert w_k \rVert]

  Args:
    norms: the per-unit norms of one layer (:func:`unit_norms`).

  Returns:
    A bool array shaped like ``norms``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import dynamics
    >>> dynamics.live_units(jnp.array([1.0, 2.0, 1e-3, 0.0, 1.5]))
    Array([ True,  True, False, False,  True], dtype=bool)

  References:
    Lu et al., "Dying ReLU and Initialization", 2019, arXiv 1903.06733 (units
    that stop contributing); Wan et al. 2021, arXiv 2006.08419 (per-unit
    equilibria, which a collapsed unit does not reach).
  """
  norms = jnp.asarray(norms)
  return (norms > 0) & (norms >= COLLAPSED * jnp.median(norms))


def angular_update(w_old, w_new, axis: int = -1):
  r"""Angle in radians between each unit's old and new weight vector.

  .. math::
    \Delta\theta_j = 2 \operatorname{atan2}\big(\lVert \hat a_j - \hat b_j \rVert,
    \lVert \hat a_j + \hat b_j \rVert\big), \qquad \hat a_j = a_j / \lVert a_j \rVert

  This stays accurate for tiny angles (where ``arccos`` of a cosine does
  not). A unit of zero norm on either side gets angle 0.

  Args:
    w_old, w_new: weights of the same shape, units along ``axis``.
    axis: the unit axis.

  Returns:
    An array of shape ``(w_old.shape[axis],)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import dynamics
    >>> a = dynamics.angular_update(jnp.array([[1.0], [0.0]]), jnp.array([[1.0], [1.0]]))
    >>> round(float(a[0]), 4)  # pi / 4
    0.7854

  References:
    Kahan, "How Futile are Mindless Assessments of Roundoff in
    Floating-Point Computation?", 2006 (the atan2 form of the angle);
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419, eq. 5.
  """
  if jnp.shape(w_old) != jnp.shape(w_new):
    raise ValueError(f'w_old has shape {jnp.shape(w_old)} but w_new has '
                     f'{jnp.shape(w_new)}.')
  red = unit_axes_of(w_old, axis)[1]
  n_old, n_new = unit_norms(w_old, axis), unit_norms(w_new, axis)
  a = w_old / jnp.expand_dims(jnp.where(n_old > 0, n_old, 1.0), red)
  b = w_new / jnp.expand_dims(jnp.where(n_new > 0, n_new, 1.0), red)
  diff = jnp.sqrt(jnp.sum(jnp.square(a - b), axis=red))
  total = jnp.sqrt(jnp.sum(jnp.square(a + b), axis=red))
  return jnp.where((n_old > 0) & (n_new > 0), 2.0 * jnp.arctan2(diff, total), 0.0)


class LeafDynamics(NamedTuple):
  r"""One step of one weight leaf, each field a mean over its units.

  .. math::
    \Delta\theta_j = \angle(w_j, w_j + u_j), \qquad
    \Delta\theta_\mathrm{rms} = \Big(\frac{1}{|L|}\sum_{j \in L}\Delta\theta_j^2\Big)^{1/2},
    \qquad
    \eta_{\mathrm{eff}, j} = \eta / \lVert w_j \rVert^2 \ (\text{SGD}),\ \eta / \lVert w_j \rVert \ (\text{Adam})

  With ``track_dynamics(..., ema_decay=d)`` each field is instead a
  bias-corrected moving average over steps (``angular_update_rms``: the root
  of the average of the squares).

  Attributes:
    weight_norm: per-unit norm of the weight before the step.
    update_norm: per-unit norm of the update.
    angular_update: per-unit angle (radians) between the weight before and
      after, mean over all units.
    angular_update_rms: the root mean square of the per-unit angles over the
      live units :math:`L` (:func:`live_units`, the units ``effective_lr`` is
      averaged over): what :func:`bnjax.theory.equilibrium_angular_update`
      predicts. The mean is biased low by the spread over units.
    effective_lr: per-unit effective learning rate at the weight before the
      step (:func:`bnjax.theory.effective_learning_rate`), mean over the live
      units.

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
  angular_update_rms: jax.Array
  effective_lr: jax.Array


class GradientDynamics(NamedTuple):
  r"""One step's gradient of one weight leaf at unit weight norm.

  .. math::
    \lVert \tilde g \rVert = \Big(\frac{1}{|L|}\sum_{j \in L}
    \lVert g_j \rVert^2 \lVert w_j \rVert^2\Big)^{1/2}

  over the live units :math:`L` (:func:`live_units`, and a gradient reaches
  the unit). For a scale-invariant unit :math:`\lVert g_j\rVert\lVert w_j\rVert`
  is the norm its gradient would have at unit weight norm; the root mean
  square is ``grad_norm`` of :func:`bnjax.theory.equilibrium_norm`. With
  ``track_gradients(..., ema_decay=d)`` it is the root of a bias-corrected
  moving average of the squares.

  Attributes:
    grad_norm_at_unit_scale: the root mean square above.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import transforms
    >>> tx = transforms.track_gradients()
    >>> params = {'kernel': jnp.array([[2.0], [0.0]])}
    >>> _, state = tx.update({'kernel': jnp.array([[0.0], [3.0]])}, tx.init(params), params)
    >>> float(state.metrics['kernel'].grad_norm_at_unit_scale)  # 3 * 2
    6.0

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419,
    Theorem 1; van Laarhoven 2017, arXiv 1706.05350, eq. 9.
  """
  grad_norm_at_unit_scale: jax.Array


class TrackGradientsState(NamedTuple):
  r"""State of :func:`bnjax.transforms.track_gradients`.

  .. math::
    \text{metrics}_t = \mathrm{GradientDynamics}(w_t, g_t)

  Attributes:
    count: number of updates so far.
    metrics: a pytree with the structure of the params: a
      :class:`GradientDynamics` for each tracked leaf, ``None`` for the others.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import transforms
    >>> state = transforms.track_gradients().init({'kernel': jnp.ones((2, 2))})
    >>> int(state.count), type(state.metrics['kernel']).__name__
    (0, 'GradientDynamics')

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419, Theorem 1.
  """
  count: jax.Array
  metrics: Any


class TrackDynamicsState(NamedTuple):
  r"""State of :func:`bnjax.transforms.track_dynamics`.

  .. math::
    \text{metrics}_t = \mathrm{LeafDynamics}(w_t, u_t)

  Attributes:
    count: number of updates so far.
    metrics: a pytree with the structure of the params: a :class:`LeafDynamics`
      for each tracked leaf, ``None`` for the others.
    learning_rate: the learning rate of the last update (float32; before the
      first update, the one the first will use), read by
      :func:`tracked_learning_rate`.

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
  learning_rate: jax.Array


def _tracking_states(opt_state, kinds=(TrackDynamicsState,)) -> list:
  """Every state of the types ``kinds`` in ``opt_state`` (nnx states made pure first)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if hasattr(nnx, 'as_pure'):  # nnx.Optimizer keeps its state in nnx Variables
    opt_state = nnx.as_pure(opt_state)
  return [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, kinds)) if isinstance(s, kinds)]


def tracked_learning_rate(opt_state):
  r"""The learning rate of the last update, as the tracking state recorded it.

  .. math::
    \eta_{t} \ \text{of the update } w_{t} \to w_{t+1}

  With a schedule it is the scheduled value the optimizer used, read from the
  state rather than recomputed.

  Args:
    opt_state: an optax (or ``nnx.Optimizer``) state holding a
      :func:`bnjax.transforms.track_dynamics` state.

  Returns:
    A float32 scalar array, or ``None`` when nothing is tracked.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import dynamics, transforms
    >>> lr = optax.linear_schedule(0.0, 0.1, 10)
    >>> tx = optax.chain(optax.sgd(lr), transforms.track_dynamics(lr, 'sgd'))
    >>> params = {'kernel': jnp.ones((2, 2))}
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   _, state = tx.update({'kernel': jnp.ones((2, 2))}, state, params)
    >>> round(float(dynamics.tracked_learning_rate(state)), 4)  # lr(2)
    0.02

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, eq. 9 (the effective learning
    rate it scales).
  """
  found = _tracking_states(opt_state)
  return found[0].learning_rate if found else None


def read(opt_state) -> dict:
  r"""Flat ``{'<leaf path>/<metric>': value}`` from every tracking state in ``opt_state``.

  .. math::
    \text{read}(s) = \{\, p/f : \mathrm{LeafDynamics}_p.f \,\}

  Works on any optax state holding a :func:`bnjax.transforms.track_dynamics`
  or :func:`bnjax.transforms.track_gradients` state (inside ``optax.chain``, ``optax.masked``, ``optax.inject_hyperparams``,
  ``optax.MultiSteps``, ``flax.nnx.Optimizer.opt_state``, ...). Paths join
  the params' keys with ``/``, e.g. ``'Conv_0/kernel/angular_update'``.

  Args:
    opt_state: an optax (or ``nnx.Optimizer``) optimizer state.

  Returns:
    A dict of scalar arrays, empty when nothing is tracked.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import dynamics, transforms
    >>> tx = optax.chain(optax.sgd(0.1), transforms.track_dynamics(0.1, 'sgd'))
    >>> params = {'kernel': jnp.ones((2, 2))}
    >>> _, state = tx.update({'kernel': jnp.ones((2, 2))}, tx.init(params), params)
    >>> sorted(dynamics.read(state))  # doctest: +NORMALIZE_WHITESPACE
    ['kernel/angular_update', 'kernel/angular_update_rms', 'kernel/effective_lr',
     'kernel/update_norm', 'kernel/weight_norm']

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, section 3.
  """
  kinds = (LeafDynamics, GradientDynamics)
  field_sets = [set(kind._fields) for kind in kinds]

  def summary(x):  # a summary, or the mapping nnx.Optimizer turns it into
    if isinstance(x, kinds):
      return x._asdict()
    if hasattr(x, 'keys') and set(x.keys()) in field_sets:
      return dict(x)
    return None

  out = {}
  for state in _tracking_states(opt_state, (TrackDynamicsState, TrackGradientsState)):
    flat, _ = jax.tree_util.tree_flatten_with_path(
        state.metrics, is_leaf=lambda x: summary(x) is not None)
    for path, leaf in flat:
      values = summary(leaf)
      if values is None:
        continue
      name = path_str(path)
      for field, value in values.items():  # a bare array as params: just the field
        out[f'{name}/{field}' if name else field] = value
  return out
