"""flax.nnx modules over :mod:`bnjax.norms`, with flax.nnx's signatures.

Every normalizer of :mod:`bnjax.layers` as an ``nnx.Module`` built on the same
functional code. Where flax.nnx has the layer, the constructor and call
signatures are flax.nnx's (``BatchNorm(num_features, *, momentum=..., rngs=...)``,
``bn(x, use_running_average=...)``; ``GroupNorm(num_features, num_groups=...,
rngs=...)``) and so are the variable names (``scale``, ``bias`` as
``nnx.Param``; ``mean``, ``var`` as ``nnx.BatchStat``), so switching is a
change of import. ``axis`` / ``feature_axes`` is the feature axis, as in
flax; statistics are computed in float32.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx as fnnx
  >>> from bnjax import nnx
  >>> bn = nnx.BatchNorm(3, rngs=fnnx.Rngs(0))
  >>> y = bn(jnp.arange(12.0).reshape(4, 3))
  >>> [round(float(v), 3) for v in y[:, 0]]
  [-1.342, -0.447, 0.447, 1.342]
  >>> [round(float(v), 3) for v in bn.mean[...]]
  [0.045, 0.055, 0.065]

References:
  Ioffe & Szegedy 2015 (batch norm); Luo et al. 2019, arXiv 1809.00846
  (population, mean-only and variance-only BN); Hoffer et al. 2017 (ghost
  BN); Ba et al. 2016 (layer norm); Wu & He 2018 (group norm); Ulyanov et
  al. 2016 (instance norm); Salimans & Kingma 2016 (weight norm); Qiao et
  al. 2019 (weight standardization).
"""

from typing import Any, Callable, Optional

import jax.numpy as jnp
from flax import nnx

from bnjax import norms

Initializer = Callable[..., Any]


def _affine(module, shape, use_scale, use_bias, scale_init, bias_init, param_dtype, rngs):
  """Creates ``module.scale`` / ``module.bias`` (``nnx.Param`` or ``None``)."""
  module.scale = (nnx.Param(scale_init(rngs.params(), shape, param_dtype))
                  if use_scale else None)
  module.bias = (nnx.Param(bias_init(rngs.params(), shape, param_dtype))
                 if use_bias else None)


def _value(variable):
  """The array of an nnx Variable (``get_value`` from flax 0.11 on, ``.value`` before)."""
  if variable is None:
    return None
  return variable.get_value() if hasattr(variable, 'get_value') else variable.value


def _set(variable, value):
  if hasattr(variable, 'set_value'):
    variable.set_value(value)
  else:
    variable.value = value


def _cast(y, dtype):
  return y if dtype is None else y.astype(dtype)


def _promote_dtype(args, /, *, dtype=None, inexact=True):
  """flax.nnx's default ``promote_dtype``: the arrays of ``args`` (``None`` kept)
  cast to ``dtype``, or to their common (inexact) dtype."""
  arrays = [a for a in args if a is not None]
  if dtype is None:
    dtype = jnp.result_type(*arrays)
    if inexact and not jnp.issubdtype(dtype, jnp.inexact):
      dtype = jnp.promote_types(jnp.float32, dtype)
  return type(args)(None if a is None else jnp.asarray(a, dtype) for a in args)


try:  # flax >= 0.11 names it
  from flax.nnx.nn.dtypes import promote_dtype as _flax_promote_dtype  # pylint: disable=g-import-not-at-top
except ImportError:
  _flax_promote_dtype = _promote_dtype


class _BatchNormBase(nnx.Module):
  """Shared body of the batch-norm family; ``norm_fn`` picks the variant."""
  norm_fn: Callable = staticmethod(norms.batch_norm)

  def __init__(self, num_features: int, *, use_running_average: bool = False,
               axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-5,
               dtype: Any = None, param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True, bias_init: Initializer = nnx.initializers.zeros_init(),
               scale_init: Initializer = nnx.initializers.ones_init(),
               axis_name: Optional[str] = None, frozen: bool = False, rngs: nnx.Rngs):
    stats = norms.init_batch_stats(num_features)
    self.mean = nnx.BatchStat(stats.mean)
    self.var = nnx.BatchStat(stats.var)
    _affine(self, (num_features,), use_scale, use_bias, scale_init, bias_init,
            param_dtype, rngs)
    self.use_running_average = use_running_average
    self.axis, self.momentum, self.epsilon = axis, momentum, epsilon
    self.dtype, self.axis_name, self.frozen = dtype, axis_name, frozen

  def _norm_kwargs(self, training: bool) -> dict:  # pylint: disable=unused-argument
    return {}

  def _inputs(self, x):
    """``(x, stats, scale, bias)`` as the norm function gets them."""
    return (x, norms.BatchStats(_value(self.mean), _value(self.var)), _value(self.scale),
            _value(self.bias))

  def __call__(self, x, use_running_average: Optional[bool] = None, *, mask=None):
    """Normalizes ``x``; in training mode also updates ``mean`` and ``var``.

    Args:
      x: input whose ``axis`` has ``num_features`` entries.
      use_running_average: overrides the constructor's setting when given;
        ``True`` normalizes with the running statistics (inference).
        ``frozen=True`` always does and never updates them.
      mask: bool, broadcastable to ``x`` (as flax.nnx.BatchNorm's; every
        variant but :class:`GhostBatchNorm`): the batch statistics use only
        the positions it marks.
    """
    if use_running_average is None:
      use_running_average = self.use_running_average
    training = not (use_running_average or self.frozen)
    kwargs = norms._with_mask(  # pylint: disable=protected-access
        type(self).norm_fn, self._norm_kwargs(training), mask, type(self).__name__)
    x, stats, scale, bias = self._inputs(x)
    y, new = type(self).norm_fn(
        x, scale, bias,
        # The running statistics are updated in their own dtype, as flax's are.
        norms.BatchStats(_value(self.mean), _value(self.var)) if training else stats,
        training=training, momentum=self.momentum, epsilon=self.epsilon, axis=self.axis,
        axis_name=self.axis_name, **kwargs)
    if training:
      _set(self.mean, new.mean)
      _set(self.var, new.var)
    return _cast(y, self.dtype)


class BatchNorm(_BatchNormBase):
  r"""Batch normalization; the numbers and variables of ``flax.nnx.BatchNorm``.

  See :func:`bnjax.norms.batch_norm`. Scale invariance: per unit.


  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  Args:
    num_features: number of features on ``axis``.
    use_running_average: normalize with the running statistics (inference);
      a call's ``use_running_average`` overrides it.
    axis: the feature axis.
    momentum: running-average decay (flax convention, default 0.99).
    epsilon: added to the variance.
    dtype: output dtype (default: promotion of input and parameters).
    param_dtype: dtype of ``scale`` and ``bias``.
    use_bias, use_scale: learn beta / gamma.
    bias_init, scale_init: their initializers.
    axis_name: mapped axis over which batch statistics are averaged.
    frozen: always normalize with the running statistics and never update
      them (He et al. 2016, appendix A); ``scale``/``bias`` stay trainable.
    use_fast_variance: ``True`` (flax's default) / ``False``: flax's
      statistics, bit for bit; ``None``: bnjax's one-pass variance about a
      sample of the batch with the analytic backward (``fused_backward``);
      see :func:`bnjax.norms.batch_norm`.
    promote_dtype: ``(arrays, dtype=...) -> arrays`` applied to the input,
      running statistics and parameters first (flax.nnx's; ``lambda x, **kw:
      x`` computes as flax.linen does).
    axis_index_groups: groups of devices along ``axis_name`` pooled together.
    fused_backward: bnjax's analytic backward (``use_fast_variance=None``).
    rngs: ``nnx.Rngs`` for the parameter initializers. The call takes
      ``mask=`` as flax.nnx's does.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = nnx.BatchNorm(2, rngs=fnnx.Rngs(0))
    >>> y = layer(x)
    >>> [round(float(v), 3) for v in y[:, 0]]
    [-1.0, 1.0]

  References:
    Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv 1502.03167,
    Algorithm 1.
  """

  def __init__(self, num_features: int, *, use_fast_variance: Optional[bool] = True,
               promote_dtype: Callable = _flax_promote_dtype,
               axis_index_groups: Any = None, fused_backward: bool = True, **kwargs):
    super().__init__(num_features, **kwargs)
    self.use_fast_variance, self.promote_dtype = use_fast_variance, promote_dtype
    self.axis_index_groups, self.fused_backward = axis_index_groups, fused_backward

  def _norm_kwargs(self, training: bool) -> dict:
    return {'use_fast_variance': self.use_fast_variance,
            'axis_index_groups': self.axis_index_groups,
            'fused_backward': self.fused_backward}

  def _inputs(self, x):
    return _promoted_batch_inputs(self, x)


def _promoted_batch_inputs(module, x):
  """Input, running statistics and parameters through ``promote_dtype``, as
  flax.nnx.BatchNorm does."""
  x, mean, var, scale, bias = module.promote_dtype(
      (x, _value(module.mean), _value(module.var), _value(module.scale),
       _value(module.bias)), dtype=module.dtype)
  return x, norms.BatchStats(mean, var), scale, bias


class BatchRenorm(_BatchNormBase):
  r"""Batch renormalization (Ioffe 2017), in flax.nnx.BatchNorm's conventions.

  .. math::
    y = \gamma \Big(\frac{x - \mu_B}{\sigma_B}\,r + d\Big) + \beta

  See :func:`bnjax.norms.batch_renorm`. Variables as :class:`BatchNorm`'s,
  plus the ``nnx.BatchStat`` ``renorm_steps`` (training steps taken) when
  ``r_max`` or ``d_max`` is a schedule. Scale invariance: per unit.

  Args:
    num_features: number of features on ``axis``.
    r_max: bound of ``r`` (>= 1), or a schedule ``step -> r_max``.
    d_max: bound of ``|d|`` (>= 0), or a schedule ``step -> d_max``.
    use_fast_variance: ``True`` (default) / ``False``: flax's statistics;
      ``None``: bnjax's shifted one-pass statistics.
    promote_dtype: as :class:`BatchNorm`'s.
    axis_index_groups: groups of devices along ``axis_name`` pooled together.
    **kwargs: :class:`BatchNorm`'s other arguments (``momentum``, ``rngs``, ...).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> layer = nnx.BatchRenorm(1, r_max=1.5, d_max=0.5, epsilon=1e-12,
    ...                         rngs=fnnx.Rngs(0))
    >>> layer.var[...] = jnp.array([4.0])  # running sigma 2, batch sigma 1
    >>> y = layer(jnp.array([[1.0], [3.0]]))
    >>> [round(float(v), 3) for v in y[:, 0]]  # r = 1/1.5, d = 0.5
    [-0.167, 1.167]

  References:
    Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017, arXiv 1702.03275, Algorithm 1.
  """
  norm_fn = staticmethod(norms.batch_renorm)

  def __init__(self, num_features: int, *, r_max: Any = 3.0, d_max: Any = 5.0,
               use_fast_variance: Optional[bool] = True,
               promote_dtype: Callable = _flax_promote_dtype,
               axis_index_groups: Any = None, **kwargs):
    super().__init__(num_features, **kwargs)
    self.r_max, self.d_max = r_max, d_max
    self.use_fast_variance, self.promote_dtype = use_fast_variance, promote_dtype
    self.axis_index_groups = axis_index_groups
    self.renorm_steps = (nnx.BatchStat(jnp.zeros((), jnp.int32))
                         if callable(r_max) or callable(d_max) else None)

  def _norm_kwargs(self, training: bool) -> dict:
    r_max, d_max = self.r_max, self.d_max
    if self.renorm_steps is not None:
      steps = _value(self.renorm_steps)
      r_max, d_max = (v(steps) if callable(v) else v for v in (r_max, d_max))
      if training:
        _set(self.renorm_steps, steps + 1)
    return {'r_max': r_max, 'd_max': d_max, 'use_fast_variance': self.use_fast_variance,
            'axis_index_groups': self.axis_index_groups}

  def _inputs(self, x):
    return _promoted_batch_inputs(self, x)


class PopulationNorm(_BatchNormBase):
  r"""Population normalization (Luo et al. 2019): running statistics in training too.

  See :func:`bnjax.norms.population_norm`. Scale invariance: none.


  .. math::
    y = \frac{x - \mu_P}{\sqrt{\sigma^2_P + \epsilon}}\,\gamma + \beta

  Takes :class:`BatchNorm`'s arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = nnx.PopulationNorm(2, epsilon=1e-12, rngs=fnnx.Rngs(0))
    >>> y = layer(x)
    >>> [round(float(v), 3) for v in y[:, 0]]
    [1.0, 3.0]

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, eq. 2.
  """
  norm_fn = staticmethod(norms.population_norm)


class MeanOnlyBatchNorm(_BatchNormBase):
  r"""Mean-only batch normalization; see :func:`bnjax.norms.mean_only_batch_norm`.


  .. math::
    y = (x - \mu_B)\,\gamma + \beta

  Takes :class:`BatchNorm`'s arguments; ``epsilon`` is unused (nothing is
  divided by a standard deviation).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = nnx.MeanOnlyBatchNorm(2, rngs=fnnx.Rngs(0))
    >>> y = layer(x)
    >>> [round(float(v), 3) for v in y[:, 0]]
    [-1.0, 1.0]

  References:
    Salimans & Kingma, "Weight Normalization", NeurIPS 2016, arXiv
    1602.07868, section 2.2.
  """
  norm_fn = staticmethod(norms.mean_only_batch_norm)


class VarianceOnlyBatchNorm(_BatchNormBase):
  r"""Variance-only batch normalization; see :func:`bnjax.norms.variance_only_batch_norm`.


  .. math::
    y = \frac{x}{\sqrt{\sigma^2_B + \epsilon}}\,\gamma + \beta

  Takes :class:`BatchNorm`'s arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> x = jnp.array([[1.0, 0.0], [3.0, 2.0]])
    >>> layer = nnx.VarianceOnlyBatchNorm(2, epsilon=1e-12, rngs=fnnx.Rngs(0))
    >>> y = layer(x)
    >>> [round(float(v), 3) for v in y[:, 0]]
    [1.0, 3.0]

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2.
  """
  norm_fn = staticmethod(norms.variance_only_batch_norm)


class GhostBatchNorm(_BatchNormBase):
  r"""Ghost batch normalization over virtual batches (Hoffer et al. 2017).

  See :func:`bnjax.norms.ghost_batch_norm`.


  .. math::
    y_g = \frac{x_g - \mu_g}{\sqrt{\sigma^2_g + \epsilon}}\,\gamma + \beta

  Takes :class:`BatchNorm`'s arguments, and:

  Args:
    virtual_batch_size: examples per virtual batch (keyword only).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> x = jnp.array([[1.0], [3.0], [10.0], [30.0]])
    >>> layer = nnx.GhostBatchNorm(1, virtual_batch_size=2, rngs=fnnx.Rngs(0))
    >>> y = layer(x)
    >>> [round(float(v), 3) for v in y[:, 0]]
    [-1.0, 1.0, -1.0, 1.0]

  References:
    Hoffer, Hubara & Soudry, "Train longer, generalize better", NeurIPS 2017,
    arXiv 1705.08741, Algorithm 1.
  """
  norm_fn = staticmethod(norms.ghost_batch_norm)

  def __init__(self, num_features: int, *, virtual_batch_size: int = 32, **kwargs):
    super().__init__(num_features, **kwargs)
    self.virtual_batch_size = virtual_batch_size

  def _norm_kwargs(self, training: bool) -> dict:
    return {'virtual_batch_size': self.virtual_batch_size}


class _PerExampleNorm(nnx.Module):
  """Shared body of the per-example norms: affine parameters of ``num_features``."""

  def __init__(self, num_features: int, *, epsilon: float = 1e-6, dtype: Any = None,
               param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True,
               bias_init: Initializer = nnx.initializers.zeros_init(),
               scale_init: Initializer = nnx.initializers.ones_init(),
               use_fast_variance: bool = True,
               promote_dtype: Callable = _flax_promote_dtype, rngs: nnx.Rngs):
    _affine(self, (num_features,), use_scale, use_bias, scale_init, bias_init,
            param_dtype, rngs)
    self.num_features, self.epsilon, self.dtype = num_features, epsilon, dtype
    self.use_fast_variance, self.promote_dtype = use_fast_variance, promote_dtype

  def _promoted(self, x):
    """``(x, scale, bias)`` through ``promote_dtype``, as flax.nnx's norms do."""
    return self.promote_dtype((x, _value(self.scale), _value(self.bias)), dtype=self.dtype)


class LayerNorm(_PerExampleNorm):
  r"""Layer normalization; the numbers and variables of ``flax.nnx.LayerNorm``.

  ``reduction_axes`` and ``feature_axes`` mean what they mean in flax; the
  ``num_features`` parameters cover the feature axes (reshaped onto them).
  See :func:`bnjax.norms.layer_norm`. Scale invariance: per layer.


  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

  Args:
    num_features: number of features (the size of ``scale`` and ``bias``).
    epsilon: added to the variance.
    dtype, param_dtype, use_bias, use_scale, bias_init, scale_init, rngs: as
      :class:`BatchNorm`.
    use_fast_variance: one-pass ``E[x^2] - E[x]^2`` (flax's default) or,
      ``False``, the two-pass variance; see :func:`bnjax.norms.layer_norm`.
    promote_dtype: ``(arrays, dtype=...) -> arrays``, applied to the input
      and the parameters before normalizing (flax.nnx's, default
      ``flax.nnx.nn.dtypes.promote_dtype``; ``lambda x, **kw: x`` computes as
      flax.linen does). The call takes ``mask=`` as flax.nnx's does.
    reduction_axes: axes of the statistics.
    feature_axes: axes of the parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> x = jnp.array([[1.0, 2.0, 3.0]])
    >>> layer = nnx.LayerNorm(3, rngs=fnnx.Rngs(0))
    >>> y = layer(x)
    >>> [round(float(v), 3) for v in y[0]]
    [-1.225, 0.0, 1.225]

  References:
    Ba, Kiros & Hinton, "Layer Normalization", arXiv 1607.06450, eq. 3-4.
  """

  def __init__(self, num_features: int, *, reduction_axes=-1, feature_axes=-1, **kwargs):
    super().__init__(num_features, **kwargs)
    self.reduction_axes, self.feature_axes = reduction_axes, feature_axes

  def __call__(self, x, *, mask=None):
    x, scale, bias = self._promoted(x)
    axes = norms._canonical_axes(jnp.ndim(x), self.feature_axes, 'feature_axes')
    shape = tuple(jnp.shape(x)[a] for a in axes)
    reshape = lambda p: None if p is None else jnp.reshape(p, shape)
    return _cast(norms.layer_norm(x, reshape(scale), reshape(bias),
                                  axis=self.feature_axes,
                                  reduction_axes=self.reduction_axes,
                                  epsilon=self.epsilon,
                                  use_fast_variance=self.use_fast_variance, mask=mask),
                 self.dtype)


class GroupNorm(_PerExampleNorm):
  r"""Group normalization; the numbers and variables of ``flax.nnx.GroupNorm``.

  Give ``num_groups`` or ``group_size`` (features per group), as in flax.
  Features are on the last axis. See :func:`bnjax.norms.group_norm`. Scale
  invariance: per group.


  .. math::
    y = \frac{x - \mu_{n,g}}{\sqrt{\sigma^2_{n,g} + \epsilon}}\,\gamma + \beta

  Args:
    num_features: number of features (the size of ``scale`` and ``bias``).
    epsilon: added to the variance.
    dtype, param_dtype, use_bias, use_scale, bias_init, scale_init, rngs: as
      :class:`BatchNorm`.
    use_fast_variance: one-pass ``E[x^2] - E[x]^2`` (flax's default) or,
      ``False``, the two-pass variance; see :func:`bnjax.norms.layer_norm`.
    promote_dtype: ``(arrays, dtype=...) -> arrays``, applied to the input
      and the parameters before normalizing (flax.nnx's, default
      ``flax.nnx.nn.dtypes.promote_dtype``; ``lambda x, **kw: x`` computes as
      flax.linen does). The call takes ``mask=`` as flax.nnx's does.
    num_groups: number of groups (or ``None`` with ``group_size``).
    group_size: features per group (or ``None`` with ``num_groups``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> x = jnp.array([[1.0, 3.0, 10.0, 30.0]])
    >>> layer = nnx.GroupNorm(4, num_groups=2, rngs=fnnx.Rngs(0))
    >>> y = layer(x)
    >>> [round(float(v), 3) for v in y[0]]
    [-1.0, 1.0, -1.0, 1.0]

  References:
    Wu & He, "Group Normalization", ECCV 2018, arXiv 1803.08494, eq. 1-3.
  """

  def __init__(self, num_features: int, num_groups: Optional[int] = 32,
               group_size: Optional[int] = None, **kwargs):
    super().__init__(num_features, **kwargs)
    if (num_groups is None) == (group_size is None):
      raise ValueError(f'give exactly one of num_groups and group_size, got '
                       f'num_groups={num_groups!r}, group_size={group_size!r}.')
    if group_size is not None:
      if not isinstance(group_size, int) or group_size <= 0 or num_features % group_size:
        raise ValueError(f'group_size={group_size!r} must be a positive int that divides '
                         f'num_features={num_features}.')
      num_groups = num_features // group_size
    self.num_groups = num_groups

  def __call__(self, x, *, mask=None):
    x, scale, bias = self._promoted(x)
    return _cast(norms.group_norm(x, scale, bias, num_groups=self.num_groups,
                                  epsilon=self.epsilon,
                                  use_fast_variance=self.use_fast_variance, mask=mask),
                 self.dtype)


class InstanceNorm(_PerExampleNorm):
  r"""Instance normalization; the numbers and variables of ``flax.nnx.InstanceNorm``.

  See :func:`bnjax.norms.instance_norm`. Scale invariance: per unit.


  .. math::
    y_{n,c} = \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}}\,\gamma_c + \beta_c

  Args:
    num_features: number of features (the size of ``scale`` and ``bias``).
    epsilon: added to the variance.
    dtype, param_dtype, use_bias, use_scale, bias_init, scale_init, rngs: as
      :class:`BatchNorm`.
    use_fast_variance: one-pass ``E[x^2] - E[x]^2`` (flax's default) or,
      ``False``, the two-pass variance; see :func:`bnjax.norms.layer_norm`.
    promote_dtype: ``(arrays, dtype=...) -> arrays``, applied to the input
      and the parameters before normalizing (flax.nnx's, default
      ``flax.nnx.nn.dtypes.promote_dtype``; ``lambda x, **kw: x`` computes as
      flax.linen does). The call takes ``mask=`` as flax.nnx's does.
    feature_axes: the feature axis.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> x = jnp.array([[[1.0], [3.0]]])
    >>> layer = nnx.InstanceNorm(1, epsilon=1e-12, rngs=fnnx.Rngs(0))
    >>> y = layer(x)
    >>> [round(float(v), 3) for v in y[0, :, 0]]
    [-1.0, 1.0]

  References:
    Ulyanov, Vedaldi & Lempitsky, "Instance Normalization", arXiv
    1607.08022, eq. 4.
  """

  def __init__(self, num_features: int, *, feature_axes: int = -1, **kwargs):
    super().__init__(num_features, **kwargs)
    self.feature_axes = feature_axes

  def __call__(self, x, *, mask=None):
    x, scale, bias = self._promoted(x)
    return _cast(norms.instance_norm(x, scale, bias, epsilon=self.epsilon,
                                     axis=self.feature_axes,
                                     use_fast_variance=self.use_fast_variance, mask=mask),
                 self.dtype)


class _Reparametrized(nnx.Module):
  """Wraps a layer and calls it with the variables ``variable_filter`` picks
  rewritten by ``_reparam(path, value)``.

  The stored variables are left as they are (flax.nnx.WeightNorm writes the
  normalized kernel back into the layer, so the raw norm ``||v||`` is lost
  after the first call); gradients reach them through the reparametrization.
  """

  def __init__(self, layer_instance: nnx.Module, *, feature_axes: Optional[norms.Axes],
               variable_filter):
    self.layer_instance = layer_instance
    self.feature_axes = feature_axes
    self.variable_filter = nnx.filterlib.to_predicate(variable_filter)

  def _chosen(self) -> list:
    """``(path, variable)`` of each chosen variable of the wrapped layer."""
    state = nnx.to_flat_state(nnx.state(self.layer_instance))
    return [(path, v) for path, v in state if self.variable_filter(path, v)]

  def _reparam(self, path, value):
    raise NotImplementedError

  def __call__(self, x, *args, **kwargs):
    chosen = self._chosen()
    stored = [_value(v) for _, v in chosen]
    # Every rewrite first: a refusal leaves every variable as it was.
    rewritten = [self._reparam(path, value) for (path, _), value in zip(chosen, stored)]
    for (_, variable), value in zip(chosen, rewritten):
      _set(variable, value)
    try:
      return self.layer_instance(x, *args, **kwargs)
    finally:
      for (_, variable), value in zip(chosen, stored):
        _set(variable, value)


class WeightNorm(_Reparametrized):
  r"""Weight normalization of a wrapped layer's variables, per unit.

  .. math::
    w = g\,\frac{v}{\lVert v \rVert}

  ``flax.nnx.WeightNorm``'s constructor and numbers (bit for bit): each
  variable of ``layer_instance`` that ``variable_filter`` picks (default: the
  ``kernel``) is :func:`bnjax.norms.weight_norm` of it during the call. The
  gains are ``scales[path]`` (one entry per unit, the sizes of
  ``feature_axes``), as flax's, but each an ``nnx.Param``, so that
  ``nnx.grad`` and ``nnx.Optimizer`` train them (flax 0.12 keeps plain arrays
  there, which neither sees). The stored variable stays the raw direction
  ``v`` (flax.nnx.WeightNorm overwrites it with ``w``). Scale invariance: per
  unit in ``v``.

  Args:
    layer_instance: the wrapped layer.
    feature_axes: the unit axes of each variable (an int, a tuple, or
      ``None``: one norm of the whole variable).
    use_scale, scale_init, param_dtype: the gains.
    epsilon: added to the squared norm.
    dtype: the reparametrized variables' dtype (``None``: the variable's
      promoted with the gain's).
    variable_filter: an nnx filter over the layer's variables.
    promote_dtype: accepted for flax's signature; flax.nnx.WeightNorm does
      not apply it either (the arithmetic is the variable's own dtype).
    rngs: ``nnx.Rngs`` for ``scale_init``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> dense = fnnx.Linear(3, 2, use_bias=False, rngs=fnnx.Rngs(0))
    >>> layer = nnx.WeightNorm(dense, use_scale=False, rngs=fnnx.Rngs(0))
    >>> w = layer(jnp.eye(3))  # rows of the effective kernel
    >>> [round(float(v), 3) for v in jnp.linalg.norm(w, axis=0)]
    [1.0, 1.0]

  References:
    Salimans & Kingma, "Weight Normalization", NeurIPS 2016, arXiv
    1602.07868, eq. 2.
  """

  def __init__(self, layer_instance: nnx.Module, *, feature_axes: Optional[norms.Axes] = -1,
               use_scale: bool = True,
               scale_init: Initializer = nnx.initializers.ones_init(),
               epsilon: float = 1e-12, dtype: Optional[Any] = None,
               param_dtype: Any = jnp.float32,
               variable_filter=nnx.PathContains('kernel'),
               promote_dtype: Callable = _flax_promote_dtype, rngs: nnx.Rngs):
    super().__init__(layer_instance, feature_axes=feature_axes,
                     variable_filter=variable_filter)
    self.use_scale, self.epsilon, self.dtype = use_scale, epsilon, dtype
    self.param_dtype, self.promote_dtype = param_dtype, promote_dtype
    self.scales = None
    if use_scale:
      def gain(v):
        features, _ = norms._kernel_axes(v, feature_axes)  # pylint: disable=protected-access
        shape = tuple(jnp.shape(v)[a] for a in features)
        return nnx.Param(scale_init(rngs.params(), shape, param_dtype))
      self.scales = nnx.data({path: gain(_value(v)) for path, v in self._chosen()})

  def _reparam(self, path, v):
    g = None
    if self.use_scale:
      if path not in self.scales:
        raise ValueError(f'WeightNorm has no gain for {"/".join(map(str, path))}: the wrapped '
                         f'layer gained a variable after the WeightNorm was built.')
      g = _value(self.scales[path])
    w = norms.weight_norm(v, g, axis=self.feature_axes, epsilon=self.epsilon)
    return jnp.asarray(w, self.dtype)


class WeightStandardization(_Reparametrized):
  r"""Weight standardization of a wrapped layer's kernel (Qiao et al. 2019).

  .. math::
    \hat w = \frac{w - \operatorname{mean}(w)}{\sqrt{\operatorname{var}(w) + \epsilon}}

  See :func:`bnjax.norms.weight_standardize`; :class:`WeightNorm`'s
  conventions. Scale invariance: per unit.

  Args:
    layer_instance: the wrapped layer.
    feature_axes: the unit axes of each variable (``None``: the whole variable).
    epsilon: added to the variance.
    variable_filter: an nnx filter over the layer's variables.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx as fnnx
    >>> from bnjax import nnx
    >>> dense = fnnx.Linear(3, 2, use_bias=False, rngs=fnnx.Rngs(0))
    >>> w = nnx.WeightStandardization(dense)(jnp.eye(3))
    >>> [round(float(v), 3) for v in jnp.std(w, axis=0)]
    [1.0, 1.0]

  References:
    Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization", arXiv 1903.10520, eq. 5.
  """

  def __init__(self, layer_instance: nnx.Module, *, feature_axes: Optional[norms.Axes] = -1,
               epsilon: float = 1e-5, variable_filter=nnx.PathContains('kernel')):
    super().__init__(layer_instance, feature_axes=feature_axes,
                     variable_filter=variable_filter)
    self.epsilon = epsilon

  def _reparam(self, path, w):
    return norms.weight_standardize(w, axis=self.feature_axes, epsilon=self.epsilon)
