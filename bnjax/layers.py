"""flax.linen modules over :mod:`bnjax.norms`.

Variable names follow flax.linen so that trees interoperate: parameters
``scale``/``bias`` in ``params``, running statistics ``mean``/``var`` in the
``batch_stats`` collection. As in flax, the running statistics are not
updated while a model is being initialized, and ``use_running_average`` may
be set on the module or per call.
"""

import dataclasses
from typing import Any, Callable, ClassVar, Iterable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import initializers

from bnjax import norms
from bnjax._validation import path_str

Initializer = Callable[..., jax.Array]


class BatchNormBase(nn.Module):
  r"""Shared module body of the batch-norm family; ``norm_fn`` picks the variant.

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  with batch statistics (training) or the running ones (``batch_stats``
  collection, inference); subclasses set which of mu and sigma are used.

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

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = layers.BatchNorm(use_running_average=False, frozen=True)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x, mutable=['batch_stats'])[0]
    >>> [round(float(v), 3) for v in y[:, 0]]  # (x - 0) / sqrt(1 + eps)
    [1.0, 3.0]

  References:
    Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv 1502.03167,
    Algorithms 1-2.
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

  def _norm_kwargs(self, training: bool) -> dict:  # pylint: disable=unused-argument
    return {}

  @nn.compact
  def __call__(self, x, use_running_average: Optional[bool] = None, *, mask=None):
    """Normalizes ``x``; ``mask`` (bool, broadcastable to ``x``, as flax's
    BatchNorm's; every variant but :class:`GhostBatchNorm`) keeps the batch
    statistics to the positions it marks."""
    if self.frozen:
      training = False
    else:
      training = not nn.merge_param('use_running_average', self.use_running_average,
                                    use_running_average)
    kwargs = norms._with_mask(  # pylint: disable=protected-access
        type(self).norm_fn, self._norm_kwargs(training), mask, type(self).__name__)
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
        axis=self.axis, axis_name=None if initializing else self.axis_name, **kwargs)
    if training and not initializing:
      ra_mean.value, ra_var.value = new_stats
    return y if self.dtype is None else y.astype(self.dtype)


class BatchNorm(BatchNormBase):
  r"""Batch normalization; same numbers and variables as flax.linen.BatchNorm.

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  See :func:`bnjax.norms.batch_norm`. Scale invariance: per unit.

  Attributes:
    use_fast_variance: ``True`` (flax's default) / ``False``: flax's
      statistics, bit for bit (``E[x^2] - E[x]^2`` or the two-pass variance);
      ``None``: bnjax's one-pass variance about a sample of the batch with
      the analytic backward (what :mod:`bnjax.models` use); see
      :func:`bnjax.norms.batch_norm`.
    axis_index_groups: groups of devices along ``axis_name`` whose statistics
      are pooled (``lax.pmean``'s; flax's statistics).
    fused_backward: with ``use_fast_variance=None``, bnjax's analytic
      backward; ``False`` allows forward-mode differentiation. Every other
      attribute as :class:`BatchNormBase`. The call takes ``mask=`` as
      flax's does.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = layers.BatchNorm(use_running_average=False)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x, mutable=['batch_stats'])[0]
    >>> [round(float(v), 3) for v in y[:, 0]]
    [-1.0, 1.0]

  References:
    Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv 1502.03167,
    Algorithm 1.
  """
  use_fast_variance: Optional[bool] = True
  axis_index_groups: Any = None
  fused_backward: bool = True

  def _norm_kwargs(self, training: bool) -> dict:
    return {'fused_backward': self.fused_backward,
            'use_fast_variance': self.use_fast_variance,
            'axis_index_groups': None if self.is_initializing() else self.axis_index_groups}


class BatchRenorm(BatchNormBase):
  r"""Batch renormalization (Ioffe 2017), in flax.linen.BatchNorm's conventions.

  .. math::
    y = \gamma \Big(\frac{x - \mu_B}{\sigma_B}\,r + d\Big) + \beta

  See :func:`bnjax.norms.batch_renorm`. Variables as :class:`BatchNorm`'s
  (``batch_stats``: ``mean``, ``var``), plus ``renorm_steps`` (the training
  steps taken) when ``r_max`` or ``d_max`` is a schedule. Scale invariance:
  per unit.

  Attributes:
    r_max: bound of ``r`` (>= 1), or a schedule ``step -> r_max``.
    d_max: bound of ``|d|`` (>= 0), or a schedule ``step -> d_max``.
    use_fast_variance: ``True`` (default) / ``False``: flax's statistics;
      ``None``: bnjax's shifted one-pass statistics.
    axis_index_groups: groups of devices along ``axis_name`` pooled together.
      Every other attribute as :class:`BatchNormBase`. The call takes
      ``mask=`` as :class:`BatchNorm`'s.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from bnjax import layers
    >>> ramp = optax.linear_schedule(1.0, 3.0, transition_steps=5000)
    >>> layer = layers.BatchRenorm(use_running_average=False, r_max=ramp)
    >>> x = jnp.array([[1.0], [3.0]])
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y, new = layer.apply(variables, x, mutable=['batch_stats'])
    >>> # r, d within bounds: the output with the running statistics (0, 1)
    >>> [round(float(v), 3) for v in y[:, 0]], int(new['batch_stats']['renorm_steps'])
    ([1.0, 3.0], 1)

  References:
    Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017, arXiv 1702.03275, Algorithm 1
    (and section 4: r_max and d_max ramped up).
  """
  r_max: Any = 3.0
  d_max: Any = 5.0
  use_fast_variance: Optional[bool] = True
  axis_index_groups: Any = None
  norm_fn: ClassVar[Callable] = staticmethod(norms.batch_renorm)

  def _norm_kwargs(self, training: bool) -> dict:
    r_max, d_max = self.r_max, self.d_max
    if callable(r_max) or callable(d_max):
      steps = self.variable('batch_stats', 'renorm_steps', jnp.zeros, (), jnp.int32)
      r_max, d_max = (v(steps.value) if callable(v) else v for v in (r_max, d_max))
      if training and not self.is_initializing():
        steps.value = steps.value + 1
    return {'r_max': r_max, 'd_max': d_max, 'use_fast_variance': self.use_fast_variance,
            'axis_index_groups': None if self.is_initializing() else self.axis_index_groups}


class PopulationNorm(BatchNormBase):
  r"""Population normalization (Luo et al. 2019): running statistics in training too.

  .. math::
    y = \frac{x - \mu_P}{\sqrt{\sigma^2_P + \epsilon}}\,\gamma + \beta

  See :func:`bnjax.norms.population_norm`. Scale invariance: none.
  Attributes as :class:`BatchNormBase`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = layers.PopulationNorm(use_running_average=False, epsilon=1e-12)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x, mutable=['batch_stats'])[0]
    >>> [round(float(v), 3) for v in y[:, 0]]  # initial stats: mean 0, var 1
    [1.0, 3.0]

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, eq. 2.
  """
  norm_fn: ClassVar[Callable] = staticmethod(norms.population_norm)


class MeanOnlyBatchNorm(BatchNormBase):
  r"""Mean-only batch normalization; see :func:`bnjax.norms.mean_only_batch_norm`.

  .. math::
    y = (x - \mu_B)\,\gamma + \beta

  Attributes as :class:`BatchNormBase`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = layers.MeanOnlyBatchNorm(use_running_average=False)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x, mutable=['batch_stats'])[0]
    >>> [round(float(v), 3) for v in y[:, 0]]
    [-1.0, 1.0]

  References:
    Salimans & Kingma, "Weight Normalization", NeurIPS 2016, arXiv
    1602.07868, section 2.2.
  """
  norm_fn: ClassVar[Callable] = staticmethod(norms.mean_only_batch_norm)
  uses_var: ClassVar[bool] = False


class VarianceOnlyBatchNorm(BatchNormBase):
  r"""Variance-only batch normalization; see :func:`bnjax.norms.variance_only_batch_norm`.

  .. math::
    y = \frac{x}{\sqrt{\sigma^2_B + \epsilon}}\,\gamma + \beta

  Attributes as :class:`BatchNormBase`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = layers.VarianceOnlyBatchNorm(use_running_average=False, epsilon=1e-12)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x, mutable=['batch_stats'])[0]
    >>> [round(float(v), 3) for v in y[:, 0]]
    [1.0, 3.0]

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2.
  """
  norm_fn: ClassVar[Callable] = staticmethod(norms.variance_only_batch_norm)
  uses_mean: ClassVar[bool] = False


class GhostBatchNorm(BatchNormBase):
  r"""Ghost batch normalization over virtual batches; see :func:`bnjax.norms.ghost_batch_norm`.

  .. math::
    y_g = \frac{x_g - \mu_g}{\sqrt{\sigma^2_g + \epsilon}}\,\gamma + \beta

  for each virtual batch ``g`` of ``virtual_batch_size`` examples.

  Attributes:
    virtual_batch_size: examples per virtual batch.
    fused_backward: as :class:`BatchNorm`. Every other attribute as
      :class:`BatchNormBase`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[1.0], [3.0], [10.0], [30.0]])
    >>> layer = layers.GhostBatchNorm(use_running_average=False, virtual_batch_size=2)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x, mutable=['batch_stats'])[0]
    >>> [round(float(v), 3) for v in y[:, 0]]
    [-1.0, 1.0, -1.0, 1.0]

  References:
    Hoffer, Hubara & Soudry, "Train longer, generalize better", NeurIPS 2017,
    arXiv 1705.08741, Algorithm 1.
  """
  virtual_batch_size: int = 32
  fused_backward: bool = True
  norm_fn: ClassVar[Callable] = staticmethod(norms.ghost_batch_norm)

  def _norm_kwargs(self, training: bool) -> dict:
    return {'virtual_batch_size': self.virtual_batch_size,
            'fused_backward': self.fused_backward}


class _AffineNorm(nn.Module):
  """Shared body of the per-example normalizers (affine params on ``feature_axes``).

  Each subclass declares its fields in its flax namesake's order, so that
  positional arguments mean the same (``GroupNorm(32)`` is 32 groups)."""

  def _distributed(self) -> dict:
    """The devices the statistics pool over (none while initializing, as flax)."""
    if self.is_initializing():
      return {}
    return dict(axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)

  def _feature_axes(self, x) -> tuple:
    raise NotImplementedError

  def _apply(self, x, scale, bias, mask):
    raise NotImplementedError

  @nn.compact
  def __call__(self, x, *, mask=None):
    """Normalizes ``x``; ``mask`` (bool, broadcastable to ``x``) keeps the
    statistics to the positions it marks, as flax's ``mask``."""
    axes = norms._canonical_axes(jnp.ndim(x), self._feature_axes(x), 'feature_axes')
    shape = tuple(jnp.shape(x)[a] for a in axes)
    scale = (self.param('scale', self.scale_init, shape, self.param_dtype)
             if self.use_scale else None)
    bias = (self.param('bias', self.bias_init, shape, self.param_dtype)
            if self.use_bias else None)
    y = self._apply(x, scale, bias, mask)
    return y if self.dtype is None else y.astype(self.dtype)


class LayerNorm(_AffineNorm):
  r"""Layer normalization; same numbers and variables as flax.linen.LayerNorm.

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  statistics over ``reduction_axes``, parameters over ``feature_axes`` (both
  as in flax). See :func:`bnjax.norms.layer_norm`. Scale invariance: per layer.

  Attributes:
    reduction_axes: axes of the statistics.
    feature_axes: axes of ``scale`` and ``bias``.
    epsilon, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init:
      as :class:`BatchNormBase`.
    use_fast_variance: one-pass ``E[x^2] - E[x]^2`` (flax's default) or,
      ``False``, the two-pass variance; see :func:`bnjax.norms.layer_norm`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[1.0, 2.0, 3.0]])
    >>> layer = layers.LayerNorm()
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x)
    >>> [round(float(v), 3) for v in y[0]]
    [-1.225, 0.0, 1.225]

  References:
    Ba, Kiros & Hinton, "Layer Normalization", arXiv 1607.06450, eq. 3-4.
  """
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  reduction_axes: Any = -1
  feature_axes: Any = -1
  axis_name: Optional[str] = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True

  def _feature_axes(self, x):
    return self.feature_axes

  def _apply(self, x, scale, bias, mask):
    return norms.layer_norm(x, scale, bias, axis=self.feature_axes,
                            reduction_axes=self.reduction_axes, epsilon=self.epsilon,
                            use_fast_variance=self.use_fast_variance, mask=mask,
                            **self._distributed())


class GroupNorm(_AffineNorm):
  r"""Group normalization; same numbers and variables as flax.linen.GroupNorm.

  .. math::
    y = \frac{x - \mu_{n,g}}{\sqrt{\sigma^2_{n,g} + \epsilon}}\,\gamma + \beta

  See :func:`bnjax.norms.group_norm`. Scale invariance: per group.

  Attributes:
    num_groups: number of groups; divides the number of features (``None``
      with ``group_size``).
    group_size: features per group (``None`` with ``num_groups``), as flax.
    reduction_axes: the axes the statistics pool, including the last
      (feature) axis; default every axis but the batch axis 0.
    axis_name, axis_index_groups: pool the statistics over devices.
    epsilon, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init:
      as :class:`BatchNormBase`.
    use_fast_variance: one-pass ``E[x^2] - E[x]^2`` (flax's default) or,
      ``False``, the two-pass variance; see :func:`bnjax.norms.layer_norm`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[1.0, 3.0, 10.0, 30.0]])
    >>> layer = layers.GroupNorm(num_groups=2)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x)
    >>> [round(float(v), 3) for v in y[0]]
    [-1.0, 1.0, -1.0, 1.0]

  References:
    Wu & He, "Group Normalization", ECCV 2018, arXiv 1803.08494, eq. 1-3.
  """
  num_groups: Optional[int] = 32
  group_size: Optional[int] = None
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  reduction_axes: Any = None
  axis_name: Optional[str] = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True

  def _feature_axes(self, x):
    return -1

  def _apply(self, x, scale, bias, mask):
    if (self.num_groups is None) == (self.group_size is None):
      raise ValueError(f'give exactly one of num_groups and group_size (pass '
                       f'num_groups=None with group_size), got num_groups='
                       f'{self.num_groups!r}, group_size={self.group_size!r}.')
    channels = jnp.shape(x)[-1]
    num_groups = self.num_groups
    if self.group_size is not None:
      if self.group_size <= 0 or channels % self.group_size:
        raise ValueError(f'group_size={self.group_size!r} must be a positive int that '
                         f'divides the number of features {channels}.')
      num_groups = channels // self.group_size
    return norms.group_norm(x, scale, bias, num_groups=num_groups, epsilon=self.epsilon,
                            axis=-1, use_fast_variance=self.use_fast_variance, mask=mask,
                            reduction_axes=self.reduction_axes, **self._distributed())


class InstanceNorm(_AffineNorm):
  r"""Instance normalization; same numbers and variables as flax.linen.InstanceNorm.

  .. math::
    y_{n,c} = \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}}\,\gamma_c + \beta_c

  See :func:`bnjax.norms.instance_norm`. Scale invariance: per unit.

  Attributes:
    feature_axes: the feature axis or axes (``scale``/``bias`` have their
      shape); the statistics pool every other axis but the batch axis 0.
    epsilon, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init:
      as :class:`BatchNormBase`.
    use_fast_variance: one-pass ``E[x^2] - E[x]^2`` (flax's default) or,
      ``False``, the two-pass variance; see :func:`bnjax.norms.layer_norm`.
    axis_name, axis_index_groups: pool the statistics over devices.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import layers
    >>> x = jnp.array([[[1.0], [3.0]]])
    >>> layer = layers.InstanceNorm(epsilon=1e-12)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> y = layer.apply(variables, x)
    >>> [round(float(v), 3) for v in y[0, :, 0]]
    [-1.0, 1.0]

  References:
    Ulyanov, Vedaldi & Lempitsky, "Instance Normalization", arXiv
    1607.08022, eq. 4.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  feature_axes: Any = -1
  axis_name: Optional[str] = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True

  def _feature_axes(self, x):
    return self.feature_axes

  def _apply(self, x, scale, bias, mask):
    ndim = jnp.ndim(x)
    features = norms._canonical_axes(ndim, self.feature_axes, 'feature_axes')  # pylint: disable=protected-access
    if 0 in features:
      raise ValueError('The channel axes cannot include the leading dimension as this is '
                       'assumed to be the batch axis (feature_axes of InstanceNorm).')
    # Flax's instance norm is a layer norm over every axis but the batch and features.
    return norms.layer_norm(x, scale, bias, axis=features, epsilon=self.epsilon,
                            reduction_axes=tuple(a for a in range(1, ndim)
                                                 if a not in features),
                            use_fast_variance=self.use_fast_variance, mask=mask,
                            **self._distributed())


def _reparametrized_call(module: nn.Module, reparam: Callable, args, kwargs):
  """Calls ``module.layer_instance`` with each variable that
  ``module.variable_filter`` picks replaced by ``reparam(name, value)``.

  ``name`` is the variable's path from the wrapped layer, ``'<layer
  name>/kernel'``, and a variable is picked when one of the filter's strings
  occurs in it (every variable when the filter is empty or ``None``), as in
  flax.linen.WeightNorm.
  """
  def rewrite(path, value):
    name = module.layer_instance.name + '/' + path_str(path[1:])
    chosen = not module.variable_filter or any(f in name for f in module.variable_filter)
    return reparam(name, jnp.asarray(value)) if chosen else value

  return nn.map_variables(
      lambda layer: layer(*args, **kwargs),
      trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(rewrite, vs),
      init=module.is_initializing(),
  )(module.layer_instance)


class WeightNorm(nn.Module):
  r"""Weight normalization of a wrapped layer's variables, per unit.

  .. math::
    w = g\,\frac{v}{\lVert v \rVert}

  flax.linen.WeightNorm's fields, variable names and numbers (bit for bit):
  each variable of ``layer_instance`` whose path contains a string of
  ``variable_filter`` (default: the ``kernel``) is replaced by
  :func:`bnjax.norms.weight_norm` of it before the layer's call; the stored
  variable is the raw direction ``v``. The gain ``g`` of the variable
  ``<layer>/kernel`` is this module's parameter ``'<layer>/kernel/scale'``
  with one entry per unit (the sizes of ``feature_axes``).
  Scale invariance: per unit in ``v``.

  Attributes:
    layer_instance: the wrapped layer.
    epsilon: added to the squared norm.
    dtype: the dtype of the reparametrized variables (``None``: the variable's
      promoted with the gain's).
    param_dtype: the gains' dtype.
    use_scale: learn a gain per unit (``False``: unit-norm units).
    scale_init: the gains' initializer.
    feature_axes: the unit axes of each variable (an int, a tuple, or ``None``:
      one norm of the whole variable).
    variable_filter: the strings that pick variables by path (``None`` or
      empty: every variable of the layer).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from bnjax import layers
    >>> layer = layers.WeightNorm(nn.Dense(2, use_bias=False), use_scale=False)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> w = layer.apply(variables, jnp.eye(3))  # rows of the effective kernel
    >>> [round(float(v), 3) for v in jnp.linalg.norm(w, axis=0)]
    [1.0, 1.0]

  References:
    Salimans & Kingma, "Weight Normalization", NeurIPS 2016, arXiv
    1602.07868, eq. 2.
  """
  layer_instance: nn.Module
  epsilon: float = 1e-12
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Initializer = initializers.ones
  feature_axes: Optional[norms.Axes] = -1
  variable_filter: Optional[Iterable[str]] = dataclasses.field(
      default_factory=lambda: {'kernel'})

  @nn.compact
  def __call__(self, *args, **kwargs):
    return _reparametrized_call(self, self._normalize, args, kwargs)

  def _normalize(self, name, v):
    g = None
    if self.use_scale:
      features, _ = norms._kernel_axes(v, self.feature_axes)  # pylint: disable=protected-access
      g = self.param(name + '/scale', self.scale_init,
                     tuple(v.shape[a] for a in features), self.param_dtype)
    w = norms.weight_norm(v, g, axis=self.feature_axes, epsilon=self.epsilon)
    return jnp.asarray(w, self.dtype)


class WeightStandardization(nn.Module):
  r"""Weight standardization of a wrapped layer's kernel (Qiao et al. 2019).

  .. math::
    \hat w = \frac{w - \operatorname{mean}(w)}{\sqrt{\operatorname{var}(w) + \epsilon}}

  The variables ``variable_filter`` picks, per unit (see
  :func:`bnjax.norms.weight_standardize`), with :class:`WeightNorm`'s
  conventions. Scale invariance: per unit.

  Attributes:
    layer_instance: the wrapped layer.
    epsilon: added to the variance.
    feature_axes: the unit axes of each variable (``None``: the whole variable).
    variable_filter: the strings that pick variables by path (``None``: all).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from bnjax import layers
    >>> layer = layers.WeightStandardization(nn.Dense(2, use_bias=False))
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> w = layer.apply(variables, jnp.eye(3))
    >>> [round(float(v), 3) for v in jnp.std(w, axis=0)]
    [1.0, 1.0]

  References:
    Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization", arXiv 1903.10520, eq. 5.
  """
  layer_instance: nn.Module
  epsilon: float = 1e-5
  feature_axes: Optional[norms.Axes] = -1
  variable_filter: Optional[Iterable[str]] = dataclasses.field(
      default_factory=lambda: {'kernel'})

  @nn.compact
  def __call__(self, *args, **kwargs):
    return _reparametrized_call(
        self, lambda _, w: norms.weight_standardize(w, axis=self.feature_axes,
                                                    epsilon=self.epsilon), args, kwargs)
