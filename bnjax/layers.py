"""flax.linen modules over :mod:`bnjax.norms`.

Variable names follow flax.linen so that trees interoperate: parameters
``scale``/``bias`` in ``params``, running statistics ``mean``/``var`` in the
``batch_stats`` collection. As in flax, the running statistics are not
updated while a model is being initialized, and ``use_running_average`` may
be set on the module or per call.
"""

from typing import Any, Callable, ClassVar, Optional

import flax
import flax.linen as nn
import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
from flax.linen import initializers

from bnjax import norms

Initializer = Callable[..., jax.Array]


class _BatchNormBase(nn.Module):
  """Shared module body of the batch-norm family; ``norm_fn`` picks the variant.

  Attributes:
    use_running_average: normalize with the running statistics (inference).
    axis: the feature axis.
    momentum: running-average decay (flax convention, default 0.99).
    epsilon: added to the variance.
    dtype: output dtype (default: promotion of input and parameters).
    param_dtype: dtype of ``scale`` and ``bias``.
    use_bias, use_scale: learn beta / gamma.
    bias_init, scale_init: their initializers.
    axis_name: mapped axis over which batch statistics are averaged.
    frozen: frozen BN (seed 003): always normalize with the running
      statistics and never update them, whatever ``use_running_average`` says;
      ``scale``/``bias`` stay trainable, so the layer is a learnable affine map.
  """
  use_running_average: Optional[bool] = None
  axis: int = -1
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  axis_name: Optional[str] = None
  frozen: bool = False

  norm_fn: ClassVar[Callable] = staticmethod(norms.batch_norm)
  # Which running statistics the variant normalizes with at inference; used
  # by fold_batch_norms.
  uses_mean: ClassVar[bool] = True
  uses_var: ClassVar[bool] = True

  def _norm_kwargs(self) -> dict:
    return {}

  @nn.compact
  def __call__(self, x, use_running_average: Optional[bool] = None):
    if self.frozen:
      training = False
    else:
      training = not nn.merge_param('use_running_average', self.use_running_average,
                                    use_running_average)
    features = (jnp.shape(x)[self.axis],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = (self.param('scale', self.scale_init, features, self.param_dtype)
             if self.use_scale else None)
    bias = (self.param('bias', self.bias_init, features, self.param_dtype)
            if self.use_bias else None)
    initializing = self.is_initializing()
    y, new_stats = type(self).norm_fn(
        x, scale, bias, norms.BatchStats(ra_mean.value, ra_var.value),
        training=training, momentum=self.momentum, epsilon=self.epsilon,
        axis=self.axis, axis_name=None if initializing else self.axis_name,
        **self._norm_kwargs())
    if training and not initializing:
      ra_mean.value, ra_var.value = new_stats
    return y if self.dtype is None else y.astype(self.dtype)


class BatchNorm(_BatchNormBase):
  """Batch normalization; same numbers and variables as flax.linen.BatchNorm.

  See :func:`bnjax.norms.batch_norm`. Scale invariance: per unit.
  ``fused_backward=False`` allows forward-mode differentiation.
  """
  fused_backward: bool = True

  def _norm_kwargs(self) -> dict:
    return {'fused_backward': self.fused_backward}


class PopulationNorm(_BatchNormBase):
  """Population normalization (Luo et al. 2019): running statistics in training too.

  See :func:`bnjax.norms.population_norm`. Scale invariance: none.
  """
  norm_fn: ClassVar[Callable] = staticmethod(norms.population_norm)


class MeanOnlyBatchNorm(_BatchNormBase):
  """Mean-only batch normalization; see :func:`bnjax.norms.mean_only_batch_norm`."""
  norm_fn: ClassVar[Callable] = staticmethod(norms.mean_only_batch_norm)
  uses_var: ClassVar[bool] = False


class VarianceOnlyBatchNorm(_BatchNormBase):
  """Variance-only batch normalization; see :func:`bnjax.norms.variance_only_batch_norm`."""
  norm_fn: ClassVar[Callable] = staticmethod(norms.variance_only_batch_norm)
  uses_mean: ClassVar[bool] = False


class GhostBatchNorm(_BatchNormBase):
  """Ghost batch normalization over virtual batches; see :func:`bnjax.norms.ghost_batch_norm`."""
  virtual_batch_size: int = 32
  fused_backward: bool = True
  norm_fn: ClassVar[Callable] = staticmethod(norms.ghost_batch_norm)

  def _norm_kwargs(self) -> dict:
    return {'virtual_batch_size': self.virtual_batch_size,
            'fused_backward': self.fused_backward}


class _AffineNorm(nn.Module):
  """Shared body of the per-example normalizers (affine params on ``feature_axes``)."""
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones

  def _feature_axes(self, x) -> tuple:
    raise NotImplementedError

  def _apply(self, x, scale, bias):
    raise NotImplementedError

  @nn.compact
  def __call__(self, x):
    axes = norms._canonical_axes(jnp.ndim(x), self._feature_axes(x), 'feature_axes')
    shape = tuple(jnp.shape(x)[a] for a in axes)
    scale = (self.param('scale', self.scale_init, shape, self.param_dtype)
             if self.use_scale else None)
    bias = (self.param('bias', self.bias_init, shape, self.param_dtype)
            if self.use_bias else None)
    y = self._apply(x, scale, bias)
    return y if self.dtype is None else y.astype(self.dtype)


class LayerNorm(_AffineNorm):
  """Layer normalization; same numbers and variables as flax.linen.LayerNorm.

  ``reduction_axes`` and ``feature_axes`` mean what they mean in flax.
  Scale invariance: per layer.
  """
  reduction_axes: Any = -1
  feature_axes: Any = -1

  def _feature_axes(self, x):
    return self.feature_axes

  def _apply(self, x, scale, bias):
    return norms.layer_norm(x, scale, bias, axis=self.reduction_axes,
                            feature_axes=self.feature_axes, epsilon=self.epsilon)


class GroupNorm(_AffineNorm):
  """Group normalization; same numbers and variables as flax.linen.GroupNorm.

  Scale invariance: per group.
  """
  num_groups: int = 32
  axis: int = -1

  def _feature_axes(self, x):
    return self.axis

  def _apply(self, x, scale, bias):
    return norms.group_norm(x, scale, bias, num_groups=self.num_groups,
                            epsilon=self.epsilon, axis=self.axis)


class InstanceNorm(_AffineNorm):
  """Instance normalization; same numbers and variables as flax.linen.InstanceNorm.

  Scale invariance: per unit.
  """
  axis: int = -1

  def _feature_axes(self, x):
    return self.axis

  def _apply(self, x, scale, bias):
    return norms.instance_norm(x, scale, bias, epsilon=self.epsilon, axis=self.axis)


class _KernelReparam(nn.Module):
  """Wraps a layer and rewrites its ``kernel`` before every call.

  The wrapped layer keeps its own parameters (``kernel`` becomes the raw,
  unnormalized direction); this mirrors flax.linen.WeightNorm's mechanism.
  """
  layer_instance: nn.Module
  axis: int = -1

  def _reparam(self, kernel):
    raise NotImplementedError

  @nn.compact
  def __call__(self, *args, **kwargs):
    def rewrite(path, value):
      if jax.tree_util.keystr(path[-1:], simple=True) != 'kernel':
        return value
      return self._reparam(value)

    return nn.map_variables(
        lambda layer: layer(*args, **kwargs),
        trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(rewrite, vs),
        init=self.is_initializing(),
    )(self.layer_instance)


class WeightNorm(_KernelReparam):
  """Weight normalization of a wrapped layer's kernel: ``w = g * v / ||v||`` per unit.

  The gain ``g`` is this module's ``scale`` parameter (shape ``(units,)``);
  ``use_scale=False`` fixes ``g = 1`` (unit-norm kernels). Numbers equal
  flax.linen.WeightNorm's; see :func:`bnjax.norms.weight_norm`.
  Scale invariance: per unit in ``v``.
  """
  epsilon: float = 1e-12
  use_scale: bool = True
  scale_init: Initializer = initializers.ones
  param_dtype: Any = jnp.float32

  def _reparam(self, kernel):
    g = None
    if self.use_scale:
      g = self.param('scale', self.scale_init, (jnp.shape(kernel)[self.axis],),
                     self.param_dtype)
    return norms.weight_norm(kernel, g, axis=self.axis, epsilon=self.epsilon)


class WeightStandardization(_KernelReparam):
  """Weight standardization of a wrapped layer's kernel (Qiao et al. 2019).

  See :func:`bnjax.norms.weight_standardize`. Scale invariance: per unit.
  """
  epsilon: float = 1e-5

  def _reparam(self, kernel):
    return norms.weight_standardize(kernel, axis=self.axis, epsilon=self.epsilon)


# --------------------------------------------------------------- BN folding

_LINEAR = (nn.Dense, nn.Conv)
_BATCH_NORMS = (nn.BatchNorm, _BatchNormBase)


def _trace_pairs(module: nn.Module, variables, *args, **kwargs):
  """``[(linear_path, norm_path, norm_module)]`` found by an abstract trace."""
  calls = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    if context.method_name == '__call__' and isinstance(context.module,
                                                        _LINEAR + _BATCH_NORMS):
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
    if isinstance(mdl, _LINEAR):
      produced_by[id(out)] = path
    elif id(inp) in produced_by and isinstance(mdl.axis, int) \
        and mdl.axis % jnp.ndim(inp) == jnp.ndim(inp) - 1:
      pairs.append((produced_by[id(inp)], path, mdl))
  return pairs


def _shared_outputs(module: nn.Module, variables, pairs, *args, **kwargs) -> list:
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


def find_batch_norm_pairs(module: nn.Module, variables, *args, **kwargs):
  """Finds every Dense/Conv whose output goes straight into a batch norm.

  Traces ``module.apply(variables, *args, **kwargs)`` abstractly (no FLOPs)
  and records, for each bnjax or flax batch-norm layer normalizing the last
  axis, whether its input is the very array a ``nn.Dense``/``nn.Conv``
  returned. Pass the inference arguments (e.g. ``train=False``).

  Returns:
    A list of ``(linear_path, norm_path)`` tuples of module paths (tuples of
    names, relative to ``variables['params']``), in call order.
  """
  return [(lin, norm) for lin, norm, _ in _trace_pairs(module, variables, *args, **kwargs)]


def _has(tree, path) -> bool:
  for name in path:
    if not isinstance(tree, dict) and not hasattr(tree, 'keys') or name not in tree:
      return False
    tree = tree[name]
  return True


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def fold_batch_norms(module: nn.Module, variables, *args, **kwargs):
  """Folds every Dense/Conv + batch-norm pair of trained variables for inference.

  Each pair found by :func:`find_batch_norm_pairs` gets, per
  :func:`bnjax.norms.fold_batch_norm`, ``kernel * k`` and a bias carrying the
  normalization, ``k = gamma / sqrt(var + eps)``. The batch norm is turned
  into the identity at inference (scale 1, mean 0, var ``1 - eps``); when the
  Dense/Conv has no bias the shift stays in the norm (its ``bias``, or minus
  its running mean when it has none). The same module therefore gives the
  same inference outputs with the folded variables, and a Dense/Conv with a
  bias can load the folded kernel and bias into a model without the norm.

  A pair is folded only when the Dense/Conv output feeds nothing but the
  norm and neither layer is called twice; otherwise (a residual ``BN(h) + h``,
  a shared layer) folding would change the outputs, and a ValueError names
  the layer.

  Returns:
    ``(folded_variables, pairs)``.
  """
  if 'batch_stats' not in variables or 'params' not in variables:
    raise ValueError("fold_batch_norms needs trained variables with 'params' and "
                     "'batch_stats' collections (the batch norms' running statistics); "
                     f'got collections {sorted(variables)}.')
  found = _trace_pairs(module, variables, *args, **kwargs)
  if found:
    shared = _shared_outputs(module, variables, [(l, n) for l, n, _ in found], *args,
                             **kwargs)
    if shared:
      lin, norm = ('/'.join(p) for p in shared[0])
      raise ValueError(f'cannot fold {norm} into {lin}: the output of {lin} also feeds '
                       f'something other than {norm} (e.g. a residual BN(h) + h), or one '
                       f'of them is called more than once; folding would change the '
                       f'outputs.')
  variables = flax.core.unfreeze(jax.tree_util.tree_map(lambda a: a, variables))
  params, batch_stats = variables['params'], variables['batch_stats']
  for lin_path, norm_path, bn in found:
    if not _has(batch_stats, norm_path):
      raise ValueError(f"batch_stats has no running statistics for {'/'.join(norm_path)}; "
                       f'pass the variables of a model initialized or trained with it.')
    lin, norm_p, stats = (_get(params, lin_path), _get(params, norm_path),
                          _get(batch_stats, norm_path))
    eps = bn.epsilon
    mean = stats['mean'] if getattr(bn, 'uses_mean', True) else jnp.zeros_like(stats['mean'])
    var = stats['var'] if getattr(bn, 'uses_var', True) else jnp.ones_like(stats['var']) - eps
    kernel, bias = norms.fold_batch_norm(
        lin['kernel'], lin.get('bias'), norm_p.get('scale'), norm_p.get('bias'),
        norms.BatchStats(mean, var), epsilon=eps)
    lin['kernel'] = kernel
    if 'scale' in norm_p:
      norm_p['scale'] = jnp.ones_like(norm_p['scale'])
    stats['mean'] = jnp.zeros_like(stats['mean'])
    stats['var'] = jnp.full_like(stats['var'], 1.0 - eps)
    if 'bias' in lin:
      lin['bias'] = bias
      if 'bias' in norm_p:
        norm_p['bias'] = jnp.zeros_like(norm_p['bias'])
    elif 'bias' in norm_p:
      norm_p['bias'] = bias
    elif getattr(bn, 'uses_mean', True):
      stats['mean'] = -bias
    else:
      raise ValueError(f'cannot fold {"/".join(norm_path)}: neither it nor '
                       f'{"/".join(lin_path)} has a bias to carry the shift.')
  return variables, [(lin, norm) for lin, norm, _ in found]
