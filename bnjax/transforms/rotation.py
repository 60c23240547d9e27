"""Rotational optimizers (Kosson, Messmer & Jaggi 2024): per-unit angular
updates held at the inner optimizer's equilibrium from the first step."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnjax import masks, theory
from bnjax._validation import check_bool, check_positive, check_unit_interval, path_str
from bnjax.transforms._common import (Mask, ScalarOrSchedule, _at, _expanded,
                                      _require_float_params, _require_params,
                                      _require_projection_mask)


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


def center_units(params, mask: Mask):
  r"""``params`` with every unit (last axis) of the leaves in ``mask`` moved to zero
  mean: :math:`w_{:,j} \leftarrow w_{:,j} - \bar w_{:,j}`.

  :func:`rotational` with ``center=True`` keeps units at zero mean; a network
  whose units start elsewhere spends its first update on the move (measured:
  step-1 angles 3.5x to 18.5x the equilibrium angle for fan-ins 288 to 9).
  Centring the initial weights first, as Kosson et al.'s reference code does
  (``zero_mean_on_init``), makes the first update an equilibrium one.

  Args:
    params: a pytree of parameters.
    mask: the rotated leaves, as :func:`rotational`'s ``mask`` (a tree of bools or
      a callable).

  Returns:
    The centred params (the other leaves unchanged).

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import transforms
    >>> p = transforms.center_units({'k': jnp.array([[1.0, 2.0], [3.0, 6.0]])},
    ...                             {'k': True})
    >>> p['k'].tolist()
    [[-1.0, -2.0], [1.0, 2.0]]

  References:
    Kosson, Messmer & Jaggi 2024, arXiv 2305.17212, section 4; reference code
    epfml/REQ (``RotationalWrapper``, ``zero_mean_on_init=True``).
  """
  _require_projection_mask(mask, 'center_units')
  on = masks.expand_mask(mask, params)
  return jax.tree_util.tree_map(lambda w, r: _centred(w) if r else w, params, on)


def _check_rotatable(path, w, norm):
  """A rotated leaf needs units (its last axis) of at least two weights each and,
  where its values are known, a non-zero norm per unit: a unit of one weight or
  of zero norm has no direction to rotate (its update would be NaN)."""
  name = path_str(path)
  if w.ndim < 2 or w.size // w.shape[-1] < 2:
    raise ValueError(
        f'rotational rotates units (the last axis) of at least two weights; '
        f'{name!r} has shape {w.shape}. Leave it out of mask (e.g. '
        f'bnjax.masks.scale_invariant_kernels leaves biases and gains out).')
  if not isinstance(norm, jax.core.Tracer):
    zero = int(jnp.sum(norm == 0.0))
    if zero:
      raise ValueError(
          f'rotational: {zero} unit(s) of {name!r} have zero norm (a zero or, with '
          f'center=True, constant unit), which has no direction to rotate; '
          f'initialize them randomly or leave the leaf out of mask.')


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
  unit_angle = theory.equilibrium_angular_update(optimizer, 1.0, 1.0, momentum=momentum,
                                                 b1=b1)

  def rotated(params):
    return masks.expand_mask(mask, params)

  def decayed(params):
    return _expanded(decay_mask, params)

  def init_fn(params):
    _require_float_params(params, 'rotational')
    on = rotated(params)

    def unit_norm(path, w, r):
      if not r:
        return None
      norm = jnp.sqrt(_unit_sum(jnp.square(_centred(w) if center else w)))
      _check_rotatable(path, w, norm)
      return norm

    norm = jax.tree_util.tree_map_with_path(unit_norm, params, on)
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
    # The equilibrium angle is sqrt(lr * lam) times its value at lr = lam = 1, which
    # stays defined (0) where a schedule reaches 0.
    eta_r = jnp.sqrt(lr * lam) * unit_angle
    debias = 1.0 - update_norm_decay ** count

    def leaf(u, w, r, d, norm, nu):
      if not r:
        step = u + lam * w if optimizer == 'adamw' and d else u
        return (-lr * step).astype(w.dtype), None
      dtype = jnp.promote_types(w.dtype, jnp.float32)
      u, start = u.astype(dtype), w.astype(dtype)
      live = norm > 0.0  # False only for a zero-norm unit init could not refuse
      safe = lambda a: jnp.where(live, a, 1.0)
      if center:  # a no-op after the first step, whose updates are centred
        start = _centred(start)
        start = start * norm / safe(jnp.sqrt(_unit_sum(jnp.square(start))))
      u = u - start * _unit_sum(u * start) / safe(jnp.square(norm))
      if center:
        u = _centred(u)
      nu = update_norm_decay * nu + (1.0 - update_norm_decay) * _unit_sum(jnp.square(u))
      moved = start - eta_r * norm * u / (jnp.sqrt(nu / debias) + eps)
      moved = moved * norm / safe(jnp.sqrt(_unit_sum(jnp.square(moved))))
      step = jnp.where(live, moved - w.astype(dtype), 0.0)
      return step.astype(w.dtype), nu

    out = jax.tree_util.tree_map(leaf, u, params, on, decay, state.norm,
                                 state.update_norm_sq)
    updates = jax.tree_util.tree_map(lambda _, o: o[0], params, out)
    nus = jax.tree_util.tree_map(lambda _, o: o[1], params, out)
    return updates, RotationalState(count, inner_state, state.norm, nus)

  return optax.GradientTransformation(init_fn, update_fn)
