"""Per-unit projection of weights onto a sphere (van Laarhoven 2017's ||w|| = 1)."""

from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from bnjax import dynamics
from bnjax._validation import check_positive, unit_axes_of
from bnjax.transforms._common import Mask, _masked, _require_params, _require_projection_mask


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

  return _masked(optax.GradientTransformation(init_fn, update_fn), mask)
