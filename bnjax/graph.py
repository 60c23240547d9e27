"""What an abstract trace of a flax.linen model says about its layers.

Which ``nn.Dense``/``nn.Conv`` feeds which normalizer directly
(:func:`normalizer_pairs`), which of those pairs share their linear output
with anything else (:func:`shared_pairs`), and from both the structural mask
of the kernels a per-unit normalizer makes scale-invariant
(:func:`normalized_kernels`). Used by :mod:`bnjax.folding` and by users
choosing what to decay, project or rotate.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from bnjax import layers
from bnjax._validation import key_names

__all__ = ['normalized_kernels', 'normalizer_pairs', 'per_unit_normalizer', 'shared_pairs']

LINEAR = (nn.Dense, nn.Conv)
BATCH_NORMS = (nn.BatchNorm, layers.BatchNormBase)


def _last_axis(axes, ndim: int) -> bool:
  axes = axes if isinstance(axes, (tuple, list)) else (axes,)
  return len(axes) == 1 and isinstance(axes[0], int) and axes[0] % ndim == ndim - 1


def is_batch_norm_on_features(module, x) -> bool:
  """A flax or bnjax batch norm normalizing the last axis of ``x``."""
  return isinstance(module, BATCH_NORMS) and _last_axis(module.axis, jnp.ndim(x))


def per_unit_normalizer(module, x) -> bool:
  r"""Whether ``module`` divides each feature (last axis) of ``x`` by a scale of
  that feature alone, so that the layer feeding it is invariant to each
  unit's scale.

  .. math::
    N(c_j h_j) = N(h_j) \quad \forall c_j > 0

  Batch norms that divide by the batch's standard deviation (flax's
  ``BatchNorm``; bnjax's batch, variance-only and ghost norms, not mean-only
  nor population norm, whose statistics do not follow the weights),
  instance norms, and group norms with one feature per group. Layer norm and
  wider groups are invariant to a common scale only.

  Args:
    module: a linen module instance.
    x: its input.

  Returns:
    A bool.
  """
  ndim = jnp.ndim(x)
  if isinstance(module, layers.PopulationNorm):  # fixed statistics: no invariance
    return False
  if isinstance(module, BATCH_NORMS):
    return _last_axis(module.axis, ndim) and getattr(module, 'uses_var', True)
  features = jnp.shape(x)[-1] if ndim else 0
  if isinstance(module, (nn.InstanceNorm, layers.InstanceNorm)):
    return _last_axis(getattr(module, 'feature_axes', getattr(module, 'axis', -1)), ndim)
  if isinstance(module, (nn.GroupNorm, layers.GroupNorm)):
    groups = getattr(module, 'num_groups', None)
    size = getattr(module, 'group_size', None)
    on_last = _last_axis(getattr(module, 'axis', -1), ndim) if isinstance(
        module, layers.GroupNorm) else True  # flax's GroupNorm: the last axis
    return on_last and (size == 1 or groups == features)
  return False


def normalizer_pairs(module: nn.Module, variables, *args,
                     accepts: Callable = is_batch_norm_on_features, **kwargs) -> list:
  """``[(linear_path, norm_path, norm_module)]``: every ``nn.Dense``/``nn.Conv``
  whose output goes straight into a module ``accepts(module, x)`` takes, found
  by an abstract trace (no FLOPs) of ``module.apply(variables, *args, **kwargs)``.
  Paths are tuples of module names relative to ``variables['params']``."""
  calls = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    if context.method_name == '__call__':
      inp = call_args[0] if call_args else None
      calls.append((context.module, tuple(context.module.scope.path), inp, out))
    return out

  def run(v):
    with nn.intercept_methods(interceptor):
      return module.apply(v, *args, mutable=True, **kwargs)

  jax.eval_shape(run, variables)
  produced_by = {}
  pairs = []
  for mdl, path, inp, out in calls:
    if isinstance(mdl, LINEAR):
      produced_by[id(out)] = path
    elif id(inp) in produced_by and accepts(mdl, inp):
      pairs.append((produced_by[id(inp)], path, mdl))
  return pairs


def shared_pairs(module: nn.Module, variables, pairs, *args, **kwargs) -> list:
  """The pairs whose Dense/Conv output reaches the model's outputs other than through
  their norm, or whose layers are called more than once.

  One abstract trace (no FLOPs): each pair's linear output gets its own
  perturbation ``e_i`` everywhere except at its norm's input (which gets the
  unperturbed output); a pair is shared when an output of the jaxpr depends
  on its ``e_i`` (a residual ``BN(h) + h``, a second consumer).
  """
  lin_index = {lin: i for i, (lin, _) in enumerate(pairs)}
  norm_index = {norm: i for i, (_, norm) in enumerate(pairs)}
  counts, shapes = {}, {}

  def survey(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    if context.method_name == '__call__':
      path = tuple(context.module.scope.path)
      counts[path] = counts.get(path, 0) + 1
      if path in lin_index:
        shapes[lin_index[path]] = jax.ShapeDtypeStruct(jnp.shape(out), jnp.result_type(out))
    return out

  with nn.intercept_methods(survey):
    jax.eval_shape(lambda v: module.apply(v, *args, mutable=True, **kwargs), variables)
  shared = [i for i, (lin, norm) in enumerate(pairs)
            if counts.get(lin, 0) > 1 or counts.get(norm, 0) > 1]

  def run(v, perturbations):
    clean = {}

    def perturb(next_fun, call_args, call_kwargs, context):
      path = tuple(context.module.scope.path)
      if context.method_name == '__call__' and path in norm_index and call_args \
          and id(call_args[0]) in clean:
        call_args = (clean[id(call_args[0])],) + tuple(call_args[1:])
      out = next_fun(*call_args, **call_kwargs)
      if context.method_name == '__call__' and path in lin_index:
        perturbed = out + perturbations[lin_index[path]]
        clean[id(perturbed)] = out
        return perturbed
      return out

    with nn.intercept_methods(perturb):
      return module.apply(v, *args, mutable=True, **kwargs)

  zeros = [jnp.zeros(shapes[i].shape, shapes[i].dtype) for i in range(len(pairs))]
  jaxpr = jax.make_jaxpr(run)(variables, zeros).jaxpr
  inputs = jaxpr.invars[-len(pairs):]
  for i, e in enumerate(inputs):
    if i in shared:
      continue
    tainted = {e}
    for eqn in jaxpr.eqns:  # forward taint; a nested call is tainted as a whole
      if any(not isinstance(v, jex_core.Literal) and v in tainted for v in eqn.invars):
        tainted.update(eqn.outvars)
    if any(not isinstance(v, jex_core.Literal) and v in tainted for v in jaxpr.outvars):
      shared.append(i)
  return [pairs[i] for i in sorted(shared)]


REPARAMETRIZED = (layers.WeightNorm, layers.WeightStandardization, nn.WeightNorm)


def _reparametrized(module: nn.Module, variables, *args, **kwargs) -> list:
  """Module paths of the layers whose kernel a weight norm / standardization
  (unit axis last, its filter picking the kernel) rewrites in a trace."""
  found = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    mdl = context.module
    if (context.method_name == '__call__' and isinstance(mdl, REPARAMETRIZED) and
        mdl.feature_axes in (-1, (-1,))):
      layer = mdl.layer_instance
      kernel = f'{layer.name}/kernel'
      if not mdl.variable_filter or any(f in kernel for f in mdl.variable_filter):
        found.append(tuple(layer.scope.path) if layer.scope is not None else
                     tuple(mdl.scope.path) + (layer.name,))
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v: module.apply(v, *args, mutable=True, **kwargs), variables)
  return found


def normalized_kernels(module: nn.Module, variables, *args, **kwargs):
  r"""Structural mask: the kernels whose layer's output goes straight into a
  per-unit normalizer, found in the model's traced graph.

  .. math::
    m(W) = [\,h = xW + b \text{ feeds only } N,\ N \text{ per-unit}\,]
    \ \Rightarrow\ L(c_j w_j) = L(w_j)

  An abstract trace of ``module.apply(variables, *args, **kwargs)`` (pass the
  training call, e.g. ``train=True``) records each ``nn.Dense``/``nn.Conv``
  whose output is the input of a :func:`per_unit_normalizer`; a pair whose
  linear output also reaches the outputs another way (a residual
  ``N(h) + h``) or whose layers are called twice is left out. Unlike
  :func:`bnjax.masks.scale_invariant_mask` it does not depend on the
  normalizer's epsilon, the batch or the weights' current scale, so it does
  not flip as training shrinks the norms. The kernel inside a weight norm or
  weight standardization (bnjax's, or flax's ``WeightNorm``) over its last
  axis is marked too (the reparametrization divides each unit by its own
  norm). It does not follow positively homogeneous maps between a layer and
  its normalizer (a ReLU): measure those. flax.linen only (nnx has no method
  interception to trace with: measure an nnx model with
  :func:`bnjax.masks.scale_invariant_mask` and read
  :func:`bnjax.masks.scale_invariant_margins`).

  Args:
    module: a flax.linen module.
    variables: its variables (``params`` and any other collections).
    *args: the call's positional arguments.
    **kwargs: the call's keyword arguments.

  Returns:
    A pytree of bools with the structure of ``variables['params']``: True for
    the ``kernel`` of every such layer.

  Raises:
    TypeError: ``module`` is not a ``flax.linen.Module``.
    ValueError: ``variables`` has no ``params``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from bnjax import graph, layers
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     h = nn.Dense(4, name='dense')(x)
    ...     x = nn.relu(layers.BatchNorm(use_running_average=False, name='bn')(h))
    ...     return nn.Dense(2, name='head')(x)
    >>> x = jnp.ones((8, 3))
    >>> variables = Net().init(jax.random.key(0), x)
    >>> mask = graph.normalized_kernels(Net(), variables, x)
    >>> mask['dense']['kernel'], mask['head']['kernel'], mask['bn']['scale']
    (True, False, False)

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, section 3 (the invariance);
    Ioffe & Szegedy 2015, arXiv 1502.03167; Ulyanov et al. 2016, arXiv
    1607.08022; Wu & He 2018, arXiv 1803.08494 (the per-unit normalizers).
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f'module must be a flax.linen.Module, got {type(module).__name__}; '
                    f'for an nnx model use bnjax.masks.scale_invariant_mask.')
  if not hasattr(variables, 'keys') or 'params' not in variables:
    raise ValueError(f"variables must hold a 'params' collection, got "
                     f"{sorted(variables) if hasattr(variables, 'keys') else variables!r}")
  found = normalizer_pairs(module, variables, *args, accepts=per_unit_normalizer, **kwargs)
  pairs = [(lin, norm) for lin, norm, _ in found]
  shared = set(shared_pairs(module, variables, pairs, *args, **kwargs)) if pairs else set()
  kernels = {lin for lin, norm in pairs if (lin, norm) not in shared}
  wrapped = _reparametrized(module, variables, *args, **kwargs)

  def mark(path, _):
    names = tuple(key_names(path))
    return names[-1] == 'kernel' and (names[:-1] in kernels or names[:-1] in wrapped)
  return jax.tree_util.tree_map_with_path(mark, variables['params'])
