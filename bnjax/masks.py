"""Which parameters are scale-invariant: by structure and by measurement.

Masks are pytrees of bools with the structure of the params, usable as the
``mask`` of optax and bnjax transforms.
"""

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._validation import path_str


def kernel_mask(params):
  r"""``True`` for leaves with ``ndim >= 2`` (kernels), ``False`` for biases and scales.

  .. math::
    m(w) = [\operatorname{ndim}(w) \ge 2]

  The usual "decay the weights, not the biases and norm parameters" mask
  (timm's ``param_groups_weight_decay``).

  Args:
    params: a parameter pytree.

  Returns:
    A pytree of bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import masks
    >>> masks.kernel_mask({'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)})
    {'bias': False, 'kernel': True}

  References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
    arXiv 1711.05101 (decay on weights); van Laarhoven 2017, arXiv
    1706.05350, section 3 (kernels feeding a normalizer).
  """
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def gain_mask(params):
  r"""``True`` for the normalization gains gamma: every leaf named ``scale``.

  .. math::
    m(w) = [\text{name}(w) = \texttt{scale}]

  That is the ``scale`` of BatchNorm, LayerNorm, GroupNorm and the other
  norm layers, and the gain ``g`` of :class:`bnjax.layers.WeightNorm`: the
  parameters Luo et al. (2019)'s gamma decay acts on.

  Args:
    params: a parameter pytree (dicts keyed by names, as flax makes).

  Returns:
    A pytree of bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import masks
    >>> masks.gain_mask({'bn': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)}})
    {'bn': {'bias': False, 'scale': True}}

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2 (gamma decay).
  """
  def mark(path, _):
    return bool(path) and getattr(path[-1], 'key', None) == 'scale'
  return jax.tree_util.tree_map_with_path(mark, params)


def scale_invariant_kernels(params):
  r"""Structural mask: every kernel (``ndim >= 2``) except the classifier ``head``.

  .. math::
    m(w) = [\operatorname{ndim}(w) \ge 2] \wedge [w \notin \texttt{head}]

  For the models of :mod:`bnjax.models`, these are the weights a
  per-unit-invariant norm (``bnjax.models.PER_UNIT_INVARIANT``) makes invariant
  per unit (tests check it against :func:`scale_invariant_mask`).

  Args:
    params: the ``params`` of a :mod:`bnjax.models` model.

  Returns:
    A pytree of bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import masks
    >>> masks.scale_invariant_kernels({'conv1': {'kernel': jnp.ones((3, 3, 1, 4))},
    ...                                'head': {'kernel': jnp.ones((4, 10))}})
    {'conv1': {'kernel': True}, 'head': {'kernel': False}}

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, section 3.
  """
  def mark(path, leaf):
    top = path_str(path[:1])
    return jnp.ndim(leaf) >= 2 and top != 'head'
  return jax.tree_util.tree_map_with_path(mark, params)


def expand_mask(mask, params):
  r"""A mask (pytree, prefix pytree or callable, as in optax) as a full bool tree.

  .. math::
    m_{\text{leaf}} = m_{\text{prefix}(\text{leaf})}

  Args:
    mask: a pytree of bools with the structure of ``params`` or a prefix of
      it, or a callable ``params -> mask`` (``optax.masked``'s forms).
    params: the parameter pytree.

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import masks
    >>> masks.expand_mask({'a': True, 'b': False}, {'a': {'w': jnp.ones(2)}, 'b': jnp.ones(1)})
    {'a': {'w': True}, 'b': False}

  References:
    The mask semantics of ``optax.masked`` (DeepMind et al., "The DeepMind
    JAX Ecosystem", 2020).
  """
  if callable(mask):
    mask = mask(params)
  return jax.tree_util.tree_map(
      lambda m, sub: jax.tree_util.tree_map(lambda _: bool(m), sub), mask, params)


def scale_invariant_mask(loss_fn, params, *args, rtol: float = 1e-4, axis: int = -1,
                         seed: int = 0):
  r"""Measures which leaves the loss is invariant to rescaling, unit by unit.

  .. math::
    |L(a \odot w) - L(w)| \le \mathrm{rtol}\,|L(w)|, \qquad
    |\langle g_j, w_j \rangle| \le \mathrm{rtol}\, \lVert g_j \rVert \lVert w_j \rVert

  A leaf is marked ``True`` when both hold: rescaling each of its units
  (slices along ``axis``) by its own random factor in [0.5, 2] leaves the loss
  unchanged, and the gradient is orthogonal to the weight per unit (Euler's
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

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import masks, norms
    >>> x = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]])
    >>> def loss(p, x):
    ...   y, _ = norms.batch_norm(x @ p['w'], training=True)
    ...   return jnp.sum(jnp.sin(y)) + jnp.sum((x @ p['v']) ** 2)
    >>> masks.scale_invariant_mask(loss, {'w': jnp.eye(2), 'v': jnp.eye(2)}, x)
    {'v': False, 'w': True}

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, eq. 3-5 (invariance and the
    orthogonal gradient).
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
