"""flax.linen modules over :mod:`bnjax.norms`.

Variable names follow flax.linen so that trees interoperate: parameters
``scale``/``bias`` in ``params``, running statistics ``mean``/``var`` in the
``batch_stats`` collection. As in flax, the running statistics are not
updated while a model is being initialized, and ``use_running_average`` may
be set on the module or per call.
"""

from typing import Any, Callable, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import initializers

from bnjax import norms
from bnjax._validation import path_str

Initializer = Callable[..., jax.Array]


class BatchNormBase(nn.Module):
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
    frozen: frozen BN (He et al. 2016, "Deep Residual Learning", appendix A:
      BN fixed when fine-tuning for detection): always normalize with the running
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


class BatchNorm(BatchNormBase):
  """Batch normalization; same numbers and variables as flax.linen.BatchNorm.

  See :func:`bnjax.norms.batch_norm`. Scale invariance: per unit.
  ``fused_backward=False`` allows forward-mode differentiation.
  """
  fused_backward: bool = True

  def _norm_kwargs(self) -> dict:
    return {'fused_backward': self.fused_backward}


class PopulationNorm(BatchNormBase):
  """Population normalization (Luo et al. 2019): running statistics in training too.

  See :func:`bnjax.norms.population_norm`. Scale invariance: none.
  """
  norm_fn: ClassVar[Callable] = staticmethod(norms.population_norm)


class MeanOnlyBatchNorm(BatchNormBase):
  """Mean-only batch normalization; see :func:`bnjax.norms.mean_only_batch_norm`."""
  norm_fn: ClassVar[Callable] = staticmethod(norms.mean_only_batch_norm)
  uses_var: ClassVar[bool] = False


class VarianceOnlyBatchNorm(BatchNormBase):
  """Variance-only batch normalization; see :func:`bnjax.norms.variance_only_batch_norm`."""
  norm_fn: ClassVar[Callable] = staticmethod(norms.variance_only_batch_norm)
  uses_mean: ClassVar[bool] = False


class GhostBatchNorm(BatchNormBase):
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
    return norms.layer_norm(x, scale, bias, axis=self.feature_axes,
                            reduction_axes=self.reduction_axes, epsilon=self.epsilon)


class _OnFeatureAxis(_AffineNorm):
  """A per-example norm whose parameters sit on one feature ``axis``."""
  axis: int = -1

  def _feature_axes(self, x):
    return self.axis


class GroupNorm(_OnFeatureAxis):
  """Group normalization; same numbers and variables as flax.linen.GroupNorm.

  Scale invariance: per group.
  """
  num_groups: int = 32

  def _apply(self, x, scale, bias):
    return norms.group_norm(x, scale, bias, num_groups=self.num_groups,
                            epsilon=self.epsilon, axis=self.axis)


class InstanceNorm(_OnFeatureAxis):
  """Instance normalization; same numbers and variables as flax.linen.InstanceNorm.

  Scale invariance: per unit.
  """

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
      if path_str(path[-1:]) != 'kernel':
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
