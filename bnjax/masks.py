"""Which parameters are scale-invariant: by structure and by measurement.

Masks are pytrees of bools with the structure of the params, usable as the
``mask`` of optax and bnjax transforms.
"""

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._validation import path_str


def kernel_mask(params):
  """``True`` for leaves with ``ndim >= 2`` (kernels), ``False`` for biases and scales.

  The usual "decay the weights, not the biases and norm parameters" mask
  (timm's ``param_groups_weight_decay``).

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import masks
    >>> masks.kernel_mask({'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)})
    {'bias': False, 'kernel': True}
  """
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def gain_mask(params):
  """``True`` for the normalization gains gamma: every leaf named ``scale``.

  That is the ``scale`` of BatchNorm, LayerNorm, GroupNorm and the other
  norm layers, and the gain ``g`` of :class:`bnjax.layers.WeightNorm`: the
  parameters Luo et al. (2019)'s gamma decay acts on.
  """
  def mark(path, _):
    return bool(path) and getattr(path[-1], 'key', None) == 'scale'
  return jax.tree_util.tree_map_with_path(mark, params)


def scale_invariant_kernels(params):
  """Structural mask: every kernel (``ndim >= 2``) except the classifier ``head``.

  For the models of :mod:`bnjax.models`, these are the weights a
  per-unit-invariant norm (``bnjax.models.PER_UNIT_INVARIANT``) makes invariant
  per unit (tests check it against :func:`scale_invariant_mask`).
  """
  def mark(path, leaf):
    top = path_str(path[:1])
    return jnp.ndim(leaf) >= 2 and top != 'head'
  return jax.tree_util.tree_map_with_path(mark, params)


def expand_mask(mask, params):
  """A mask (pytree, prefix pytree or callable, as in optax) as a full bool tree."""
  if callable(mask):
    mask = mask(params)
  return jax.tree_util.tree_map(
      lambda m, sub: jax.tree_util.tree_map(lambda _: bool(m), sub), mask, params)


def scale_invariant_mask(loss_fn, params, *args, rtol: float = 1e-4, axis: int = -1,
                         seed: int = 0):
  """Measures which leaves the loss is invariant to rescaling, unit by unit.

  A leaf is marked ``True`` when both hold, relative to the sizes involved:

  * rescaling each of its units (slices along ``axis``) by its own random
    factor in [0.5, 2] leaves the loss unchanged:
    ``|L(a*w) - L(w)| <= rtol * max(|L(w)|, 1e-30)``;
  * the gradient is orthogonal to the weight per unit:
    ``|<g_j, w_j>| <= rtol * ||g_j|| * ||w_j||`` for every unit j (Euler's
    theorem for a degree-0 homogeneous loss).

  Normalizers are invariant only up to their epsilon: batch norm's
  ``(a x) / sqrt(a^2 var + eps)`` is invariant to ``O(eps / var)``, so a kernel
  whose pre-normalization variance is not far above ``eps`` (e.g. a small
  ``||w||`` after strong weight decay) is measured not invariant, truthfully.

  An all-zero leaf is never marked (rescaling zero tests nothing). A leaf the
  loss does not depend on at all passes both tests and is marked, which is
  correct: e.g. the bias of a Dense feeding batch norm.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``; use a deterministic loss
      (e.g. batch norm in training mode on a fixed batch, no dropout).
    params: the parameter pytree to test.
    *args: passed to ``loss_fn``.
    rtol: relative tolerance of both tests (float32 needs about 1e-4).
    axis: the unit axis of each leaf.
    seed: seed of the random rescaling factors.

  Returns:
    A pytree of Python bools with the structure of ``params``.
  """
  if not rtol > 0:
    raise ValueError(f'rtol must be > 0, got {rtol}.')
  loss = jax.jit(loss_fn)
  base, grads = jax.jit(jax.value_and_grad(loss_fn))(params, *args)
  base = float(base)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  grad_leaves = treedef.flatten_up_to(grads)
  rng = np.random.default_rng(seed)
  marks = []
  for i, (w, g) in enumerate(zip(leaves, grad_leaves)):
    w64, g64 = np.asarray(w, np.float64), np.asarray(g, np.float64)
    if jnp.ndim(w) == 0 or not np.any(w64):
      marks.append(False)
      continue
    unit_axis = axis % w64.ndim
    red = tuple(a for a in range(w64.ndim) if a != unit_axis)
    dots = np.abs(np.sum(g64 * w64, axis=red))
    sizes = (np.sqrt(np.sum(g64 ** 2, axis=red)) * np.sqrt(np.sum(w64 ** 2, axis=red)))
    if np.any(dots > rtol * sizes + 1e-30):
      marks.append(False)
      continue
    shape = [1] * w64.ndim
    shape[unit_axis] = w64.shape[unit_axis]
    factors = rng.uniform(0.5, 2.0, size=w64.shape[unit_axis]).reshape(shape)
    scaled = list(leaves)
    scaled[i] = (w * factors).astype(w.dtype)
    moved = float(loss(jax.tree_util.tree_unflatten(treedef, scaled), *args))
    marks.append(abs(moved - base) <= rtol * max(abs(base), 1e-30))
  return jax.tree_util.tree_unflatten(treedef, marks)
