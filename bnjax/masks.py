"""Which parameters are scale-invariant: by structure and by measurement.

Masks are pytrees of bools with the structure of the params, usable as the
``mask`` of optax and bnjax transforms.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._validation import key_names, path_str


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
  r"""``True`` for the normalization gains gamma: every leaf named ``scale``
  or ``<variable>/scale``.

  .. math::
    m(w) = [\text{name}(w) \in \{\texttt{scale}, \texttt{*/scale}\}]

  That is the ``scale`` of BatchNorm, LayerNorm, GroupNorm and the other
  norm layers, and the gains ``g`` of :class:`bnjax.layers.WeightNorm` (and
  flax's), named after the variable they scale (``layer_instance/kernel/scale``):
  the parameters Luo et al. (2019)'s gamma decay acts on.

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
    key = getattr(path[-1], 'key', None) if path else None
    return isinstance(key, str) and (key == 'scale' or key.endswith('/scale'))
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
  mask = pure(mask)
  try:
    return jax.tree_util.tree_map(
        lambda m, sub: jax.tree_util.tree_map(lambda _: bool(m), sub), mask, params)
  except (ValueError, TypeError) as e:
    raise ValueError(f'mask does not match the params: {_first_mismatch(mask, params)}. '
                     'Build the mask on the params the optimizer is given (for flax.nnx: '
                     'nnx.state(model, nnx.Param), or the nnx.as_pure of it).') from e


def _nnx_split(model):
  """``(graphdef, params, rest)`` of a flax.nnx Module, both states pure
  (``nnx.as_pure``); ``None`` for anything else."""
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if not isinstance(model, nnx.Module):
    return None
  if not hasattr(nnx, 'as_pure'):
    raise ValueError('scale_invariant_mask of an nnx.Module needs flax >= 0.11 '
                     '(nnx.as_pure); pass its pure params and a loss of them instead.')
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.as_pure(params), nnx.as_pure(rest)


def _of_params(loss_fn, params):
  """``(loss_fn, params)`` as a loss of pure params: an nnx Module is split
  (:func:`_nnx_split`) and its loss called on the merged model; anything else
  is returned as it is."""
  split = _nnx_split(params)
  if split is None:
    return loss_fn, params
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, pure_params, rest = split
  return (lambda p, *a: loss_fn(nnx.merge(graphdef, p, rest), *a)), pure_params


def pure(tree):
  """``tree`` with every flax.nnx ``Variable`` (``Param``, ``BatchStat``, ...)
  replaced by its value: a mask built on an ``nnx.State`` of variables then
  matches params given as arrays (``nnx.as_pure``), as ``nnx.Optimizer`` gives
  them. Other trees are returned as they are.

  Example:
    >>> from bnjax import masks
    >>> masks.pure({'w': True})
    {'w': True}
  """
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError:  # flax without nnx: no variables to unwrap
    return tree
  is_variable = lambda v: isinstance(v, nnx.Variable)
  if not any(map(is_variable, jax.tree_util.tree_leaves(tree, is_leaf=is_variable))):
    return tree
  return jax.tree_util.tree_map(lambda v: v.value if is_variable(v) else v, tree,
                                is_leaf=is_variable)


def _first_mismatch(mask, params) -> str:
  """The first parameter path the mask has no entry for, or the first mask path
  that is no parameter's (a mask may be a prefix of the params)."""
  flat = lambda tree: [key_names(p) for p, _ in
                       jax.tree_util.tree_flatten_with_path(pure(tree))[0]]
  in_mask, in_params = flat(mask), flat(params)
  prefixes = {tuple(p) for p in in_mask}
  for path in in_params:
    if not any(tuple(path[:i]) in prefixes for i in range(len(path) + 1)):
      return f'parameter {"/".join(path)!r} has no entry in the mask'
  params_prefixes = {tuple(p[:i]) for p in in_params for i in range(len(p) + 1)}
  for path in in_mask:
    if tuple(path) not in params_prefixes:
      return f'mask entry {"/".join(path)!r} is no parameter'
  return 'the two trees have different node types (e.g. a dict against an nnx.State)'


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

  A flax.nnx model is measured as it is: pass the ``nnx.Module`` as ``params``
  and ``loss_fn(model, *args)``; its ``nnx.Param`` state is split off and made
  pure inside (``nnx.as_pure``, flax >= 0.11, so that batch statistics can
  update in the traced loss), and the mask comes back as an ``nnx.State`` of
  bools that bnjax's transforms (and ``nnx.Optimizer(model, tx, wrt=nnx.Param)``)
  take.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``; use a deterministic loss
      (e.g. batch norm in training mode on a fixed batch, no dropout).
    params: the parameter pytree to test, or a flax.nnx ``Module`` (then
      ``loss_fn(model, *args)``).
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
  loss_fn, params = _of_params(loss_fn, params)
  margins = _margins(loss_fn, params, args, axis, seed)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  marks = []
  for (path, w), margin in zip(flat, margins):
    if margin is None:
      marks.append(False)
      continue
    worst = max(margin) / rtol
    marks.append(worst <= 1.0)
    if jnp.ndim(w) >= 2 and 1.0 / NEAR_MISS_FACTOR < worst <= NEAR_MISS_FACTOR:
      warnings.warn(
          f'scale_invariant_mask: {path_str(path)!r} is {"" if worst <= 1 else "not "}'
          f'marked, by a small margin: max |cos(g, w)| per unit {margin[0]:.2g}, relative '
          f'loss change under rescaling {margin[1]:.2g}, against rtol {rtol:g}. A '
          f'normalizer is invariant only up to its epsilon (a small pre-norm variance: a '
          f'first layer, a small ||w||); check this leaf, or pass an rtol that decides it '
          f'(bnjax.masks.scale_invariant_margins gives every leaf\'s).', stacklevel=2)
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), marks)


# A measured kernel within this factor of rtol, on either side, is reported.
NEAR_MISS_FACTOR = 10.0


def scale_invariant_margins(loss_fn, params, *args, axis: int = -1, seed: int = 0):
  r"""The two measures :func:`scale_invariant_mask` compares with ``rtol``, per leaf.

  .. math::
    \Big(\max_j \frac{|\langle g_j, w_j\rangle|}{\lVert g_j\rVert\,\lVert w_j\rVert},\
    \frac{|L(a \odot w) - L(w)|}{|L(w)|}\Big)

  A leaf is scale-invariant to ``rtol`` when both are at most ``rtol``;
  ``None`` for a scalar or all-zero leaf (never marked). Same arguments as
  :func:`scale_invariant_mask` (an nnx ``Module`` as ``params`` too).

  Returns:
    A pytree with the structure of ``params`` of ``(max_cos, loss_change)``
    pairs (or ``None``).

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import masks, norms
    >>> x = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]])
    >>> def loss(p, x):
    ...   y, _ = norms.batch_norm(x @ p['w'], training=True)
    ...   return jnp.sum(jnp.sin(y)) + jnp.sum((x @ p['v']) ** 2)
    >>> m = masks.scale_invariant_margins(loss, {'w': jnp.eye(2), 'v': jnp.eye(2)}, x)
    >>> bool(max(m['w']) < 1e-4), bool(min(m['v']) > 0.1)
    (True, True)

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, eq. 3-5.
  """
  loss_fn, params = _of_params(loss_fn, params)
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                      _margins(loss_fn, params, args, axis, seed))


def _margins(loss_fn, params, args, axis: int, seed: int) -> list:
  """Per leaf (in flattening order): ``(max |cos(g_j, w_j)|, |dL| / |L|)`` for the
  leaf rescaled per unit by random factors in [0.5, 2], or ``None``."""
  loss = jax.jit(loss_fn)
  base, grads = jax.jit(jax.value_and_grad(loss_fn))(params, *args)
  base = float(base)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  grad_leaves = treedef.flatten_up_to(grads)
  rng = np.random.default_rng(seed)
  out = []
  for i, (w, g) in enumerate(zip(leaves, grad_leaves)):
    w64, g64 = np.asarray(w, np.float64), np.asarray(g, np.float64)
    if jnp.ndim(w) == 0 or not np.any(w64):
      out.append(None)
      continue
    unit_axis = axis % w64.ndim
    red = tuple(a for a in range(w64.ndim) if a != unit_axis)
    dots = np.abs(np.sum(g64 * w64, axis=red))
    sizes = np.sqrt(np.sum(g64 ** 2, axis=red)) * np.sqrt(np.sum(w64 ** 2, axis=red))
    cos = float(np.max(dots / np.maximum(sizes, 1e-30)))
    shape = [1] * w64.ndim
    shape[unit_axis] = w64.shape[unit_axis]
    factors = rng.uniform(0.5, 2.0, size=w64.shape[unit_axis]).reshape(shape)
    scaled = list(leaves)
    scaled[i] = (w * factors).astype(w.dtype)
    moved = float(loss(jax.tree_util.tree_unflatten(treedef, scaled), *args))
    out.append((cos, abs(moved - base) / max(abs(base), 1e-30)))
  return out
