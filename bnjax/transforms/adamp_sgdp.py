"""AdamP and SGDP (Heo et al. 2021): the radial part of updates removed for
scale-invariant weights."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnjax._validation import check_bool, check_nonnegative, check_positive, check_unit_interval
from bnjax.transforms.tracking import track_dynamics
from bnjax.transforms._common import (Mask, ScalarOrSchedule, _at, _expanded,
                                      _require_float_params, _require_params)


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
          wd_ratio: float = 0.1, nesterov: bool = False, mask: Mask = None,
          track: bool = False) -> optax.GradientTransformation:
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
    track: append :func:`track_dynamics` on ``mask`` (read it with
      :func:`bnjax.dynamics.read`), as :func:`adam`'s ``track``; off by
      default, so the state is the reference code's.

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
    _require_float_params(params, 'adamp')
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

  return _tracked(optax.GradientTransformation(init_fn, update_fn), track, learning_rate,
                  'adam', mask)


def _tracked(tx, track: bool, learning_rate, kind: str, mask):
  """``tx``, followed by :func:`track_dynamics` when ``track``."""
  check_bool('track', track)
  return optax.chain(tx, track_dynamics(learning_rate, kind, mask)) if track else tx


def sgdp(learning_rate: ScalarOrSchedule, momentum: float = 0.0, *, dampening: float = 0.0,
         weight_decay: ScalarOrSchedule = 0.0, nesterov: bool = False, eps: float = 1e-8,
         delta: float = 0.1, wd_ratio: float = 0.1, mask: Mask = None,
         track: bool = False) -> optax.GradientTransformation:
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
    eps, delta, wd_ratio, mask, track: as :func:`adamp`.

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
    _require_float_params(params, 'sgdp')
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

  return _tracked(optax.GradientTransformation(init_fn, update_fn), track, learning_rate,
                  'sgd', mask)
