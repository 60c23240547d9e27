"""Normalizers as pure functions of arrays: no flax, no hidden state.

Conventions shared by every function here:

* Statistics are computed in (at least) float32, whatever the input dtype,
  and with a shifted one-pass formula: moments of ``x - s`` where ``s`` is one
  (gradient-stopped) sample per feature. Unlike ``E[x^2] - E[x]^2`` this stays
  accurate when the mean is large against the spread.
* The output dtype is the promotion of ``x`` with whichever of ``scale`` and
  ``bias`` are given (as in ``flax.linen``).
* Batch-norm variants take ``stats`` (a :class:`BatchStats` of running
  averages) and return ``(y, new_stats)``; ``new_stats`` is ``None`` when
  ``stats`` is ``None``. Running averages follow flax:
  ``running = momentum * running + (1 - momentum) * batch``, the running
  variance being the biased batch variance.
* ``axis_name`` averages batch statistics over a named mapped axis (``pmap``,
  ``vmap``, ``shard_map``) with a single collective.

Scale invariance. Each docstring states which rescaling of a kernel ``w``
that feeds the normalizer leaves the output unchanged, i.e. for which
groups of output units ``f(a * w) == f(w)`` (a > 0) and hence
``<grad_w L, w> == 0`` for that group. This is what makes weight decay act on
the effective learning rate instead of on the function (van Laarhoven 2017).
"""

import functools
import inspect
import math
from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnjax._validation import (check_bool, check_float_input, check_positive,
                               check_positive_int, check_unit_interval, concrete_float)

Array = jax.Array
Axes = Union[int, Sequence[int]]


class BatchStats(NamedTuple):
  r"""Running (population) statistics of a batch-norm layer.

  .. math::
    \mu_P \leftarrow m\,\mu_P + (1 - m)\,\mu_B, \qquad
    \sigma^2_P \leftarrow m\,\sigma^2_P + (1 - m)\,\sigma^2_B

  Attributes:
    mean: running mean ``mu_P``, shape ``(features,)``.
    var: running (biased) variance ``sigma^2_P``, shape ``(features,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> norms.BatchStats(jnp.zeros(2), jnp.ones(2)).var.shape
    (2,)

  References:
    Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv 1502.03167,
    Algorithm 2 (inference with population statistics).
  """
  mean: Array
  var: Array


def init_batch_stats(num_features: int, dtype=jnp.float32) -> BatchStats:
  r"""Initial running statistics: mean 0, variance 1 (as flax.linen.BatchNorm).

  .. math::
    \mu_P = 0, \qquad \sigma^2_P = 1

  Args:
    num_features: number of features, a positive int.
    dtype: dtype of both arrays.

  Returns:
    A :class:`BatchStats` of shape ``(num_features,)`` arrays.

  Example:
    >>> from bnjax import norms
    >>> norms.init_batch_stats(2)
    BatchStats(mean=Array([0., 0.], dtype=float32), var=Array([1., 1.], dtype=float32))

  References:
    Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv 1502.03167,
    Algorithm 2.
  """
  num_features = check_positive_int('num_features', num_features)
  return BatchStats(jnp.zeros((num_features,), dtype), jnp.ones((num_features,), dtype))


# ----------------------------------------------------------------- validation


def _canonical_axes(ndim: int, axes: Axes, what: str = 'axis') -> tuple:
  """Sorted, deduplicated non-negative axes; ValueError when out of range."""
  axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
  for a in axes:
    if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
      raise TypeError(f'{what} must be an int or a tuple of ints, got {a!r}.')
    if not -ndim <= a < ndim:
      raise ValueError(f'{what}={a} is out of range for an input of rank {ndim}.')
  return tuple(sorted({a % ndim for a in axes}))


def _check_features(name: str, value, shape: tuple):
  if value is not None and tuple(jnp.shape(value)) != tuple(shape):
    raise ValueError(
        f'{name} has shape {tuple(jnp.shape(value))}, expected {tuple(shape)}: one '
        f'entry per feature of the input ({", ".join(map(str, shape))} features).')


def _check_input(name: str, x, reduction_axes: tuple):
  """A real floating input with at least one element on every reduced axis."""
  check_float_input(name, x)
  empty = [a for a in reduction_axes if jnp.shape(x)[a] == 0]
  if empty:
    raise ValueError(f'{name} has shape {tuple(jnp.shape(x))}: its statistics reduce over '
                     f'axes {empty} of size 0 (an empty batch or group).')


def _check_stats(stats, num_features: int):
  if stats is None:
    return
  if not isinstance(stats, BatchStats):
    stats = BatchStats(*stats)
  _check_features('stats.mean', stats.mean, (num_features,))
  _check_features('stats.var', stats.var, (num_features,))


# ----------------------------------------------------------- shared helpers


def _stats_dtype(x):
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _abs_sq(x):
  """``|x|^2`` elementwise: the square of a real array, ``re^2 + im^2`` of a
  complex one (flax's, so its variance of a complex input)."""
  if jnp.iscomplexobj(x):
    return lax.square(lax.real(x)) + lax.square(lax.imag(x))
  return lax.square(x)


def _compute_stats(x: Array, reduction_axes: tuple, axis_name=None, method='shifted',
                   mask=None, axis_index_groups=None):
  """Mean and biased variance of ``x`` over ``reduction_axes``, in float32+.

  ``method``:

  * ``'shifted'``: one pass over ``x - s`` with ``s`` a gradient-stopped
    sample per reduced slice (exact algebra, well conditioned when ``s`` is
    near the mean); the batch norms.
  * ``'fast'``: ``E[x^2] - E[x]^2`` in one fused pass, flax's
    ``use_fast_variance=True`` (same HLO as flax's ``_compute_stats``);
    loses digits when ``|mean| >> std``.
  * ``'two_pass'``: ``mean((x - mean)^2)`` after the mean; accurate for any
    offset, one more pass over ``x``.

  With ``axis_name`` the shifted method gathers the per-device ``(mean,
  var)`` pairs in one collective and combines them with the law of total
  variance; the other two average the per-device means of ``x`` and ``x^2``
  (or of the squared deviations) with ``lax.pmean`` over ``axis_name`` and
  ``axis_index_groups``, as flax does. Both assume equal local batch sizes.
  ``mask`` (``'fast'`` and ``'two_pass'``; bool, broadcastable to ``x``)
  keeps the statistics to the positions it marks, as flax's ``mask`` (``mean(..., where=mask)``); with
  ``axis_name`` too the devices pool their counts, sums and sums of squares
  (:func:`_pooled_masked_stats`), so that the statistics are those of the
  concatenated marked positions whatever each device holds (flax averages
  the per-device masked means, which is wrong when the counts differ).
  """
  x = x.astype(_stats_dtype(x))
  if mask is not None and axis_name is not None:
    return _pooled_masked_stats(x, reduction_axes, axis_name, method, mask,
                                axis_index_groups)
  if method != 'shifted':

    def means(*arrays):  # one collective for all of them, as flax
      local = [jnp.mean(a, reduction_axes, where=mask) for a in arrays]
      if axis_name is None:
        return local
      if len(local) == 1:
        return [lax.pmean(local[0], axis_name, axis_index_groups=axis_index_groups)]
      pooled = lax.pmean(jnp.stack(local), axis_name, axis_index_groups=axis_index_groups)
      return [pooled[i] for i in range(len(local))]

    if method == 'fast':
      # lax.square, not x * x: its backward is one multiply at full size.
      mean, mean_sq = means(x, _abs_sq(x))
      return mean, jnp.maximum(0.0, mean_sq - _abs_sq(mean))
    (mean,) = means(x)
    (var,) = means(_abs_sq(x - jnp.expand_dims(mean, reduction_axes)))
    return mean, var
  first = tuple(slice(0, 1) if a in reduction_axes else slice(None) for a in range(x.ndim))
  shift = lax.stop_gradient(x[first])
  d = x - shift
  mean_d = jnp.mean(d, reduction_axes)
  var = jnp.maximum(jnp.mean(lax.square(d), reduction_axes) - lax.square(mean_d), 0.0)
  mean = jnp.squeeze(shift, reduction_axes) + mean_d
  if axis_name is not None:
    gathered = lax.all_gather(jnp.stack([mean, var]), axis_name)
    means, variances = gathered[:, 0], gathered[:, 1]
    mean = jnp.mean(means, axis=0)
    var = jnp.mean(variances + jnp.square(means - mean), axis=0)
  return mean, var


def _stats_method(use_fast_variance, mask, axis_index_groups) -> str:
  """bnjax's shifted statistics (``None``) unless flax's are asked for
  (``True``: ``'fast'``, ``False``: ``'two_pass'``); with a mask or device
  groups ``None`` is the two-pass variance (as exact for any offset)."""
  if use_fast_variance is True:
    return 'fast'
  if use_fast_variance is None and mask is None and axis_index_groups is None:
    return 'shifted'
  return 'two_pass'


def _pooled_masked_stats(x, reduction_axes, axis_name, method, mask, axis_index_groups):
  r"""Mean and variance of the marked positions of every device along ``axis_name``.

  .. math::
    N = \sum_i n_i, \quad \mu = \frac{1}{N} \sum_i S_i, \quad
    \sigma^2 = \frac{1}{N} \sum_i \sum_{j \in i} |x_j - \mu|^2

  Each device contributes its count ``n_i`` and sums (``lax.psum`` over
  ``axis_name`` and ``axis_index_groups``), so a device with fewer marked
  positions (or none: no NaN from it) weighs what it holds. ``'fast'`` pools
  ``sum x`` and ``sum |x|^2`` in one collective; ``'two_pass'`` and
  ``'shifted'`` pool the sum first, then the squared deviations from the
  pooled mean (two collectives, exact for any offset). A feature with no
  marked position anywhere gets NaN, as a mean over nothing.
  """
  mask = jnp.broadcast_to(mask, x.shape)
  x = jnp.where(mask, x, 0.0)  # masked positions may hold NaN: no NaN in the gradient
  psum = functools.partial(lax.psum, axis_name=axis_name, axis_index_groups=axis_index_groups)
  count = jnp.sum(mask, reduction_axes, dtype=jnp.float32)
  if method == 'fast':
    count, total, total_sq = (psum(a) for a in (count, jnp.sum(x, reduction_axes),
                                                 jnp.sum(_abs_sq(x), reduction_axes)))
    mean = total / count
    return mean, jnp.maximum(0.0, total_sq / count - _abs_sq(mean))
  count, total = psum(count), psum(jnp.sum(x, reduction_axes))
  mean = total / count
  dev = jnp.where(mask, _abs_sq(x - jnp.expand_dims(mean, reduction_axes)), 0.0)
  return mean, psum(jnp.sum(dev, reduction_axes)) / count


def _broadcastable(param, shape, feature_axes):
  """Reshapes a parameter over ``feature_axes`` to broadcast against ``shape``."""
  if param is None:
    return None
  target = [1] * len(shape)
  for a in feature_axes:
    target[a] = shape[a]
  return jnp.reshape(param, target)


def _normalize(x, mean, var, scale, bias, *, reduction_axes, feature_axes, epsilon,
               renorm=None):
  """``(x - mean) * rsqrt(var + epsilon) * scale + bias``.

  ``mean``/``var`` (either may be ``None`` to skip centering / scaling) have
  ``reduction_axes`` removed; ``scale``/``bias`` have the shape of
  ``feature_axes``. ``renorm=(r, d)`` (batch renormalization, shaped as
  ``mean``): ``((x - mean) * rsqrt(var + epsilon) * r + d) * scale + bias``.
  """
  out_dtype = jnp.result_type(x, *[p for p in (scale, bias) if p is not None])
  scale = _broadcastable(scale, x.shape, feature_axes)
  bias = _broadcastable(bias, x.shape, feature_axes)
  y = x.astype(jnp.promote_types(out_dtype, _stats_dtype(x)))
  if mean is not None:
    y = y - jnp.expand_dims(mean, reduction_axes)
  mul = shift = None
  if var is not None:
    mul = lax.rsqrt(jnp.expand_dims(var, reduction_axes) + epsilon)
  if renorm is not None:
    r, d = (jnp.expand_dims(a, reduction_axes) for a in renorm)
    mul, shift = mul * r, d
  if scale is not None:
    mul = scale if mul is None else mul * scale
    shift = None if shift is None else shift * scale
  if bias is not None:
    shift = bias if shift is None else shift + bias
  if mul is not None:
    y = y * mul
  if shift is not None:
    y = y + shift
  return y.astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _fused_standardize(x, scale, bias, reduction_axes, feature_axes, epsilon, axis_name):
  mean, var = _compute_stats(x, reduction_axes, axis_name)
  y = _normalize(x, mean, var, scale, bias, reduction_axes=reduction_axes,
                 feature_axes=feature_axes, epsilon=epsilon)
  return y, mean, var


def _fused_standardize_fwd(x, scale, bias, reduction_axes, feature_axes, epsilon,
                           axis_name):
  # symbolic_zeros=True: the primals arrive wrapped, with a `perturbed` flag.
  x, scale, bias = (None if a is None else a.value for a in (x, scale, bias))
  out = _fused_standardize(x, scale, bias, reduction_axes, feature_axes, epsilon,
                           axis_name)
  return out, (x, out[1], out[2], scale, bias)


def _fused_standardize_bwd(reduction_axes, feature_axes, epsilon, axis_name, res, cts):
  """Analytic backward of standardize + affine: two full-size reductions, one pass.

  With ``x_hat = (x - mu) * inv``, ``g_s = g * scale`` and means over the
  reduced set R (all devices): ``dx = inv * (g_s - mean_R(g_s) -
  x_hat * mean_R(g_s * x_hat))``, plus the direct terms of nonzero cotangents
  on the returned mean (``/n``) and variance (``2 (x - mu) / n``).
  ``g`` and ``g * x_hat`` are summed once over the axes reduced for both the
  statistics and the parameters (e.g. spatial); the parameter gradients and
  the two means over R come from those small partial sums.
  """
  x, mean, var, scale, bias = res
  g, ct_mean, ct_var = cts
  red = reduction_axes
  dtype = _stats_dtype(x)
  inv = lax.rsqrt(jnp.expand_dims(var, red) + epsilon)
  x_hat = (x.astype(dtype) - jnp.expand_dims(mean, red)) * inv
  g = g.astype(dtype)
  param_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
  shared = tuple(a for a in red if a in param_axes)
  sum_g = jnp.sum(g, shared, keepdims=True)
  sum_gx = jnp.sum(g * x_hat, shared, keepdims=True)
  scale_b = _broadcastable(scale, x.shape, feature_axes)
  if scale_b is not None:
    sum_gs, sum_gsx = sum_g * scale_b, sum_gx * scale_b
  else:
    sum_gs, sum_gsx = sum_g, sum_gx
  only_stats = tuple(a for a in red if a not in shared)
  n = math.prod(x.shape[a] for a in red)
  terms = [jnp.sum(sum_gs, only_stats, keepdims=True) / n,
           jnp.sum(sum_gsx, only_stats, keepdims=True) / n]
  direct = [ct for ct in (ct_mean, ct_var)
            if not isinstance(ct, jax.custom_derivatives.SymbolicZero)]
  if direct:
    zero = jnp.zeros_like(terms[0])
    for i, ct in enumerate((ct_mean, ct_var)):
      terms.append(zero if isinstance(ct, jax.custom_derivatives.SymbolicZero)
                   else jnp.expand_dims(ct.astype(dtype), red) * ((1.0 + i) / n))
  terms = jnp.stack(terms)
  if axis_name is not None:
    terms = lax.pmean(terms, axis_name)
  g_s = g if scale_b is None else g * scale_b
  dx = inv * (g_s - terms[0] - x_hat * terms[1])
  if direct:
    dx = dx + terms[2] + terms[3] * x_hat / inv

  def param_grad(param, partial_sum):
    if param is None:
      return None
    total = jnp.sum(partial_sum, tuple(a for a in param_axes if a not in shared))
    return total.reshape(param.shape).astype(param.dtype)

  return (dx.astype(x.dtype), param_grad(scale, sum_gx), param_grad(bias, sum_g))


_fused_standardize.defvjp(_fused_standardize_fwd, _fused_standardize_bwd,
                          symbolic_zeros=True)


def _standardize(x, scale, bias, *, reduction_axes, feature_axes, epsilon,
                 axis_name=None, fused_backward=True):
  """Normalizes ``x`` by its own statistics: returns ``(y, mean, var)``.

  ``fused_backward`` routes gradients through the analytic backward above
  (a ``jax.custom_vjp``: fewer passes over memory than autodiff, but no
  forward-mode differentiation); ``False`` differentiates the plain ops.
  """
  if fused_backward:
    return _fused_standardize(x, scale, bias, reduction_axes, feature_axes, epsilon,
                              axis_name)
  mean, var = _compute_stats(x, reduction_axes, axis_name)
  y = _normalize(x, mean, var, scale, bias, reduction_axes=reduction_axes,
                 feature_axes=feature_axes, epsilon=epsilon)
  return y, mean, var


def _check_mask(mask, x):
  """``mask`` as a bool array that broadcasts to ``x`` (``None`` stays ``None``),
  not broadcast: flax reduces with the mask as given, and so the same bits."""
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_ and not jnp.issubdtype(mask.dtype, jnp.integer):
    raise TypeError(f'mask must be a bool array (True: the positions the statistics '
                    f'use), got dtype {mask.dtype}.')
  try:
    shape = jnp.broadcast_shapes(mask.shape, jnp.shape(x))
  except ValueError:
    shape = None
  if shape != tuple(jnp.shape(x)):
    raise ValueError(f'mask has shape {mask.shape}, which does not broadcast to the '
                     f'input\'s {tuple(jnp.shape(x))}.')
  return mask.astype(bool)


def _per_example_normalize(x, scale, bias, reduction_axes, feature_axes, epsilon,
                           use_fast_variance, mask=None, axis_name=None,
                           axis_index_groups=None):
  """Normalizes by statistics of ``x`` itself, differentiated by autodiff.

  ``use_fast_variance``: flax's one-pass ``E[x^2] - E[x]^2`` (its default and
  its speed), else the two-pass variance (exact for large offsets). ``mask``:
  the statistics over the positions it marks only.
  """
  mean, var = _compute_stats(x, reduction_axes, axis_name,
                             method='fast' if use_fast_variance else 'two_pass',
                             mask=_check_mask(mask, x), axis_index_groups=axis_index_groups)
  return _normalize(x, mean, var, scale, bias, reduction_axes=reduction_axes,
                    feature_axes=feature_axes, epsilon=epsilon)


def _update_stats(stats, mean, var, momentum):
  """Exponential moving average of the statistics; ``None`` keeps a field."""
  if stats is None:
    return None
  stats = BatchStats(*stats)

  def ema(old, new):
    if new is None:
      return old
    dtype = jnp.result_type(old)
    if jnp.iscomplexobj(new):  # a complex input's mean: complex running mean, as flax
      dtype = jnp.promote_types(dtype, jnp.result_type(new))
    new = lax.stop_gradient(new).astype(dtype)
    return momentum * old + (1.0 - momentum) * new

  return BatchStats(ema(stats.mean, mean), ema(stats.var, var))


def _with_mask(norm_fn, kwargs: dict, mask, layer: str) -> dict:
  """A batch-norm layer's keyword arguments with its call's ``mask``, for a
  ``norm_fn`` that takes one; the others (ghost batch norm: a mask would empty
  virtual batches unevenly) refuse it with a ValueError naming ``layer``."""
  if mask is None:
    return kwargs
  if 'mask' not in inspect.signature(norm_fn).parameters:
    raise ValueError(f'mask: {layer} takes no mask (BatchNorm, BatchRenorm, PopulationNorm '
                     f'and the mean-only and variance-only norms do).')
  return dict(kwargs, mask=mask)


def _batch_setup(x, scale, bias, stats, *, training, momentum, epsilon, axis,
                 complex_ok=False):
  """Validates batch-norm arguments; returns ``(feature_axis, reduction_axes)``."""
  x_ndim = jnp.ndim(x)
  if x_ndim < 2:
    raise ValueError(
        f'batch normalization needs an input of rank >= 2 (batch and features), '
        f'got rank {x_ndim}.')
  (feature_axis,) = _canonical_axes(x_ndim, axis)
  num_features = jnp.shape(x)[feature_axis]
  _check_features('scale', scale, (num_features,))
  _check_features('bias', bias, (num_features,))
  _check_stats(stats, num_features)
  check_unit_interval('momentum', momentum, include_one=True)
  check_positive('epsilon', epsilon)
  check_bool('training', training)
  if not training and stats is None:
    raise ValueError('inference (training=False) needs stats: pass the running BatchStats.')
  reduction_axes = tuple(a for a in range(x_ndim) if a != feature_axis)
  if jnp.iscomplexobj(x) and complex_ok:
    return feature_axis, reduction_axes
  if training:
    _check_input('x', x, reduction_axes)
  else:
    check_float_input('x', x)
  return feature_axis, reduction_axes


# --------------------------------------------------------- batch-norm family


def batch_norm(x, scale=None, bias=None, stats=None, *, training: bool,
               momentum=0.99, epsilon=1e-5, axis: int = -1, axis_name=None,
               fused_backward: bool = True, use_fast_variance: Optional[bool] = None,
               mask=None, axis_index_groups=None):
  r"""Batch normalization (Ioffe & Szegedy 2015), the numbers of flax.linen.BatchNorm.

  .. math::
    y = \frac{x - \mu_B}{\sqrt{\sigma^2_B + \epsilon}}\,\gamma + \beta, \qquad
    s' = m\,s + (1 - m)\,(\mu_B, \sigma^2_B)

  Training: batch mean and biased variance over every axis but ``axis``
  (averaged over devices when ``axis_name`` is given). Inference
  (``training=False``): the same with ``stats`` in place of the batch
  statistics; ``stats`` is returned unchanged.

  Scale invariance: per unit. Rescaling the kernel column that feeds one
  feature by ``a > 0`` rescales that feature's mu_B and sigma_B by ``a``, so
  the training output is unchanged (exactly as ``epsilon -> 0``).

  Args:
    x: input of real floating dtype, features along ``axis``.
    scale, bias: optional ``(features,)`` affine parameters (gamma, beta).
    stats: running :class:`BatchStats`; required for inference.
    training: normalize with batch statistics (True) or ``stats`` (False).
    momentum: running-average decay in [0, 1].
    epsilon: added to the variance, > 0.
    axis: the feature axis.
    axis_name: mapped axis over which batch statistics are averaged.
    fused_backward: differentiate with bnjax's analytic backward (a
      ``jax.custom_vjp``, fewer passes over memory); ``False`` uses plain
      autodiff, which forward-mode (``jax.jvp``, ``jax.jacfwd``) needs.
    use_fast_variance: ``None`` (default): bnjax's one-pass variance about a
      per-feature sample of the batch (exact algebra, well conditioned for
      any offset), with ``fused_backward``. ``True`` / ``False``: flax's
      statistics, bit for bit (``E[|x|^2] - |E[x]|^2``, or the two-pass
      variance), differentiated by autodiff as flax's are, and complex
      inputs normalized as flax does (complex mean, real variance of
      ``|x|``); ``flax.linen.BatchNorm``'s default is ``True``.
    mask: optional bool array broadcastable to ``x``: the batch statistics
      use only the positions it marks, as flax's ``mask``; with ``axis_name``
      the devices pool their counts and sums, so that the statistics are
      those of all marked positions however many each device holds
      (``use_fast_variance`` ``None`` is then the two-pass variance).
    axis_index_groups: groups of devices along ``axis_name`` whose statistics
      are pooled, as ``lax.pmean``'s (``None`` read as with ``mask``).

  Returns:
    ``(y, new_stats)``; ``new_stats`` is ``None`` when ``stats`` is.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> x = jnp.array([[1.0], [3.0]])
    >>> y, stats = norms.batch_norm(x, stats=norms.init_batch_stats(1), training=True,
    ...                             momentum=0.9)
    >>> [round(float(v), 3) for v in y[:, 0]], [round(float(stats.mean[0]), 3)]
    ([-1.0, 1.0], [0.2])

  References:
    Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv 1502.03167,
    Algorithm 1.
  """
  if use_fast_variance is not None:
    check_bool('use_fast_variance', use_fast_variance)
  if jnp.iscomplexobj(x) and use_fast_variance is None and training:
    raise TypeError('x is complex: batch_norm normalizes a complex input with flax\'s '
                    'statistics (variance of |x|); pass use_fast_variance=True or False.')
  feature_axis, red = _batch_setup(x, scale, bias, stats, training=training,
                                   momentum=momentum, epsilon=epsilon, axis=axis,
                                   complex_ok=True)
  mask = _check_mask(mask, x)
  if not training:
    return _normalize(x, stats.mean, stats.var, scale, bias, reduction_axes=red,
                      feature_axes=(feature_axis,), epsilon=epsilon), stats
  method = _stats_method(use_fast_variance, mask, axis_index_groups)
  if method == 'shifted':
    y, mean, var = _standardize(x, scale, bias, reduction_axes=red,
                                feature_axes=(feature_axis,), epsilon=epsilon,
                                axis_name=axis_name, fused_backward=fused_backward)
  else:
    mean, var = _compute_stats(x, red, axis_name, method, mask, axis_index_groups)
    y = _normalize(x, mean, var, scale, bias, reduction_axes=red,
                   feature_axes=(feature_axis,), epsilon=epsilon)
  return y, _update_stats(stats, mean, var, momentum)


def _check_renorm_limit(name: str, value, low: float):
  v = concrete_float(value, name)
  if v is not None and not (math.isfinite(v) and v >= low):
    raise ValueError(f'{name} must be >= {low:g} and finite, got {value}.')


def batch_renorm(x, scale=None, bias=None, stats=None, *, training: bool, r_max=3.0,
                 d_max=5.0, momentum=0.99, epsilon=1e-5, axis: int = -1, axis_name=None,
                 use_fast_variance: Optional[bool] = None, mask=None,
                 axis_index_groups=None):
  r"""Batch renormalization (Ioffe 2017, Algorithm 1).

  .. math::
    \sigma_B = \sqrt{\sigma^2_B + \epsilon}, \quad \sigma = \sqrt{\sigma^2 + \epsilon},
    \quad r = \Big[\frac{\sigma_B}{\sigma}\Big]_{1/r_{max}}^{r_{max}}, \quad
    d = \Big[\frac{\mu_B - \mu}{\sigma}\Big]_{-d_{max}}^{d_{max}}

  .. math::
    y = \gamma \Big(\frac{x - \mu_B}{\sigma_B}\,r + d\Big) + \beta

  with ``r`` and ``d`` held out of the gradient (``stop_gradient``), so the
  gradient is batch norm's with ``r`` folded in. ``(mu, var)`` are the running
  :class:`BatchStats` as passed in (before this step's update); they are then
  moved toward the batch's as :func:`batch_norm` does. The paper keeps a
  moving average of ``sigma``; this keeps flax's of ``var`` and reads
  ``sigma = sqrt(var + epsilon)``. Inference (``training=False``) is batch
  norm's with the running statistics. With ``r_max = 1`` and ``d_max = 0`` it
  is batch norm. ``r_max``/``d_max`` may be traced scalars, so a schedule's
  value at the step can be passed (the paper ramps them up from 1 and 0).

  Scale invariance: per unit, as batch norm's (``r`` and ``d`` are ratios of
  statistics that scale together), up to ``epsilon``.

  Args:
    x: input of real floating dtype, features along ``axis``.
    scale, bias: optional ``(features,)`` gamma and beta.
    stats: running :class:`BatchStats` (required).
    training: batch statistics with the correction (True) or ``stats`` (False).
    r_max: bound of ``r`` in ``[1/r_max, r_max]``, >= 1.
    d_max: bound of ``|d|``, >= 0.
    momentum, epsilon, axis, axis_name, use_fast_variance, mask, axis_index_groups: as
      :func:`batch_norm` (``use_fast_variance=None``: bnjax's shifted one-pass
      statistics, differentiated by autodiff).

  Returns:
    ``(y, new_stats)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> x = jnp.array([[1.0], [3.0]])  # batch mean 2, std 1
    >>> stats = norms.BatchStats(jnp.array([0.0]), jnp.array([4.0]))
    >>> y, _ = norms.batch_renorm(x, stats=stats, training=True, r_max=1.5,
    ...                           d_max=0.5, epsilon=1e-12)
    >>> [round(float(v), 3) for v in y[:, 0]]  # r = 1/1.5, d = 0.5
    [-0.167, 1.167]

  References:
    Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017, arXiv 1702.03275, Algorithm 1.
  """
  if use_fast_variance is not None:
    check_bool('use_fast_variance', use_fast_variance)
  _check_renorm_limit('r_max', r_max, 1.0)
  _check_renorm_limit('d_max', d_max, 0.0)
  if stats is None:
    raise ValueError('batch_renorm needs stats (the running BatchStats) in training too: '
                     'r and d compare the batch statistics with them.')
  feature_axis, red = _batch_setup(x, scale, bias, stats, training=training,
                                   momentum=momentum, epsilon=epsilon, axis=axis)
  mask = _check_mask(mask, x)
  stats = BatchStats(*stats)
  if not training:
    return _normalize(x, stats.mean, stats.var, scale, bias, reduction_axes=red,
                      feature_axes=(feature_axis,), epsilon=epsilon), stats
  mean, var = _compute_stats(x, red, axis_name,
                             _stats_method(use_fast_variance, mask, axis_index_groups),
                             mask, axis_index_groups)
  sigma_batch = jnp.sqrt(var + epsilon)
  sigma = jnp.sqrt(stats.var.astype(var.dtype) + epsilon)
  r = lax.stop_gradient(jnp.clip(sigma_batch / sigma, 1.0 / r_max, r_max))
  d = lax.stop_gradient(jnp.clip((mean - stats.mean.astype(mean.dtype)) / sigma,
                                 -d_max, d_max))
  y = _normalize(x, mean, var, scale, bias, reduction_axes=red,
                 feature_axes=(feature_axis,), epsilon=epsilon, renorm=(r, d))
  return y, _update_stats(stats, mean, var, momentum)


def population_norm(x, scale=None, bias=None, stats=None, *, training: bool,
                    momentum=0.99, epsilon=1e-5, axis: int = -1, axis_name=None, mask=None):
  r"""Population normalization, PN (Luo et al. 2019, arXiv 1809.00846).

  .. math::
    y = \frac{x - \mu_P}{\sqrt{\sigma^2_P + \epsilon}}\,\gamma + \beta

  Normalizes with the running (population) statistics in training too, using
  ``stats`` as passed in, then updates ``stats`` from the batch statistics
  with no gradient through them. Luo et al. decompose BN into PN plus an
  explicit gamma decay; PN alone keeps no batch-dependent noise.

  Scale invariance: none. The output is linear in the kernel feeding it,
  since mu_P and var_P are constants for the gradient.

  Args:
    x, scale, bias, stats, momentum, epsilon, axis, axis_name, mask: as in
      :func:`batch_norm` (``mask``: the positions the update's batch
      statistics use).
    training: update ``stats`` from the batch statistics (True) or leave
      them (False); the normalization uses ``stats`` as passed in either way.

  Returns:
    ``(y, new_stats)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> stats = norms.BatchStats(jnp.array([1.0]), jnp.array([4.0]))
    >>> y, _ = norms.population_norm(jnp.array([[3.0]]), stats=stats, training=True,
    ...                              epsilon=1e-12)
    >>> round(float(y[0, 0]), 3)  # (3 - 1) / sqrt(4), whatever the batch
    1.0

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, eq. 2.
  """
  if stats is None:
    raise ValueError('population_norm needs stats (the population statistics) '
                     'in training and inference.')
  feature_axis, red = _batch_setup(x, scale, bias, stats, training=training,
                                   momentum=momentum, epsilon=epsilon, axis=axis)
  mask = _check_mask(mask, x)
  mean, var = stats
  y = _normalize(x, mean, var, scale, bias, reduction_axes=red,
                 feature_axes=(feature_axis,), epsilon=epsilon)
  if training:
    batch_mean, batch_var = _compute_stats(lax.stop_gradient(x), red, axis_name,
                                           _stats_method(None, mask, None), mask)
    stats = _update_stats(stats, batch_mean, batch_var, momentum)
  return y, stats


def _one_statistic_batch_norm(x, scale, bias, stats, *, use_mean, training, momentum,
                              epsilon, axis, axis_name, mask):
  """Batch norm that only centers (``use_mean``) or only rescales; tracks that statistic."""
  feature_axis, red = _batch_setup(x, scale, bias, stats, training=training,
                                   momentum=momentum, epsilon=epsilon, axis=axis)
  mask = _check_mask(mask, x)
  mean, var = (_compute_stats(x, red, axis_name, _stats_method(None, mask, None), mask)
               if training else stats)
  mean, var = (mean, None) if use_mean else (None, var)
  if training:
    stats = _update_stats(stats, mean, var, momentum)
  y = _normalize(x, mean, var, scale, bias, reduction_axes=red,
                 feature_axes=(feature_axis,), epsilon=epsilon)
  return y, stats


def mean_only_batch_norm(x, scale=None, bias=None, stats=None, *, training: bool,
                         momentum=0.99, epsilon=1e-5, axis: int = -1, axis_name=None,
                         mask=None):
  r"""Mean-only batch normalization (Salimans & Kingma 2016; Luo et al. 2019).

  .. math::
    y = (x - \mu_B)\,\gamma + \beta

  The running mean replaces ``mu_B`` in inference. Only ``stats.mean`` is
  tracked; ``stats.var`` is passed through. Usually paired with weight
  normalization. ``epsilon`` is unused (validated for a uniform signature).

  Scale invariance: none. The output is positively homogeneous of degree 1
  in the kernel: ``f(a * w) = a * f(w)``.

  Args:
    x, scale, bias, stats, training, momentum, axis, axis_name, mask: as in
      :func:`batch_norm` (only ``stats.mean`` is tracked).
    epsilon: unused (nothing is divided by a standard deviation); kept so
      the signature is :func:`batch_norm`'s.

  Returns:
    ``(y, new_stats)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> y, _ = norms.mean_only_batch_norm(jnp.array([[1.0], [5.0]]), training=True)
    >>> [float(v) for v in y[:, 0]]
    [-2.0, 2.0]

  References:
    Salimans & Kingma, "Weight Normalization", NeurIPS 2016, arXiv
    1602.07868, section 2.2.
  """
  return _one_statistic_batch_norm(
      x, scale, bias, stats, use_mean=True, training=training, momentum=momentum,
      epsilon=epsilon, axis=axis, axis_name=axis_name, mask=mask)


def variance_only_batch_norm(x, scale=None, bias=None, stats=None, *, training: bool,
                             momentum=0.99, epsilon=1e-5, axis: int = -1,
                             axis_name=None, mask=None):
  r"""Variance-only batch normalization (Luo et al. 2019's ablation).

  .. math::
    y = \frac{x}{\sqrt{\sigma^2_B + \epsilon}}\,\gamma + \beta

  Divides by the batch standard deviation (about the batch mean) without
  centering; inference uses the running variance. Only ``stats.var`` is
  tracked; ``stats.mean`` is passed through.

  Scale invariance: per unit, as batch_norm.

  Args:
    x, scale, bias, stats, training, momentum, epsilon, axis, axis_name, mask: as
      in :func:`batch_norm` (only ``stats.var`` is tracked).

  Returns:
    ``(y, new_stats)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> y, _ = norms.variance_only_batch_norm(jnp.array([[1.0], [3.0]]), training=True,
    ...                                       epsilon=1e-12)
    >>> [round(float(v), 3) for v in y[:, 0]]  # divided by the std 1, not centred
    [1.0, 3.0]

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2.
  """
  return _one_statistic_batch_norm(
      x, scale, bias, stats, use_mean=False, training=training, momentum=momentum,
      epsilon=epsilon, axis=axis, axis_name=axis_name, mask=mask)


def ghost_batch_norm(x, scale=None, bias=None, stats=None, *, training: bool,
                     virtual_batch_size: int, momentum=0.99, epsilon=1e-5,
                     axis: int = -1, axis_name=None, fused_backward: bool = True):
  r"""Ghost batch normalization (Hoffer et al. 2017, arXiv 1705.08741).

  .. math::
    y_{g} = \frac{x_{g} - \mu_{g}}{\sqrt{\sigma^2_{g} + \epsilon}}\,\gamma + \beta,
    \qquad g = 1, \dots, n / v

  Training splits the batch (axis 0) into consecutive virtual batches of
  ``v = virtual_batch_size`` examples and batch-normalizes each with its own
  statistics. The running statistics move toward the mean over virtual
  batches (and over devices, with ``axis_name``) of their means and
  variances. Inference is batch_norm's.

  Scale invariance: per unit, as batch_norm.

  Args:
    x, scale, bias, stats, training, momentum, epsilon, axis, axis_name, mask: as
      in :func:`batch_norm`; the statistics are per virtual batch.
    virtual_batch_size: examples per virtual batch; divides the batch.
    fused_backward: as in :func:`batch_norm`.

  Returns:
    ``(y, new_stats)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> x = jnp.array([[1.0], [3.0], [10.0], [30.0]])
    >>> y, _ = norms.ghost_batch_norm(x, training=True, virtual_batch_size=2)
    >>> [round(float(v), 3) for v in y[:, 0]]  # each half normalized alone
    [-1.0, 1.0, -1.0, 1.0]

  References:
    Hoffer, Hubara & Soudry, "Train longer, generalize better", NeurIPS 2017,
    arXiv 1705.08741, Algorithm 1.
  """
  feature_axis, red = _batch_setup(x, scale, bias, stats, training=training,
                                   momentum=momentum, epsilon=epsilon, axis=axis)
  if not training:
    return batch_norm(x, scale, bias, stats, training=False, epsilon=epsilon, axis=axis)
  if feature_axis == 0:
    raise ValueError('ghost_batch_norm splits axis 0 (the batch), so the feature '
                     'axis cannot be 0.')
  n = x.shape[0]
  if isinstance(virtual_batch_size, (bool, np.bool_)) or not isinstance(
      virtual_batch_size, (int, np.integer)) or virtual_batch_size <= 0 \
      or n % virtual_batch_size:
    raise ValueError(f'virtual_batch_size={virtual_batch_size!r} must be a positive '
                     f'int that divides the batch size {n}.')
  ghosts = x.reshape((n // virtual_batch_size, virtual_batch_size) + x.shape[1:])
  ghost_red = tuple(a for a in range(ghosts.ndim) if a not in (0, feature_axis + 1))
  y, mean, var = _standardize(ghosts, scale, bias, reduction_axes=ghost_red,
                              feature_axes=(feature_axis + 1,), epsilon=epsilon,
                              fused_backward=fused_backward)
  y = y.reshape(x.shape)
  if stats is not None:
    avg = jnp.stack([jnp.mean(mean, axis=0), jnp.mean(var, axis=0)])
    if axis_name is not None:
      avg = lax.pmean(avg, axis_name)
    stats = _update_stats(stats, avg[0], avg[1], momentum)
  return y, stats


# ------------------------------------------------------- per-example norms


def layer_norm(x, scale=None, bias=None, *, axis: Axes = -1, epsilon=1e-6,
               reduction_axes: Optional[Axes] = None, use_fast_variance: bool = True,
               mask=None, axis_name=None, axis_index_groups=None):
  r"""Layer normalization (Ba et al. 2016, arXiv 1607.06450, eq. 3-4).

  .. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\, \gamma + \beta

  with per-example mean and variance over ``reduction_axes``. ``axis`` is
  the feature axis (or axes), as in every bnjax norm: ``scale``/``bias``
  have its shape. ``reduction_axes`` defaults to ``axis`` (statistics over
  the features); pass e.g. ``(1, 2, 3)`` with ``axis=1`` for NCHW layer
  norm. The numbers of ``flax.linen.LayerNorm(reduction_axes=...,
  feature_axes=axis)``.

  Scale invariance: per layer. Rescaling the whole kernel feeding the
  normalized axes by one ``a > 0`` leaves the output unchanged; rescaling a
  single unit does not.

  Args:
    x: input of real floating dtype.
    scale, bias: gamma and beta of the shape of ``axis`` (or ``None``).
    axis: feature axis or axes.
    epsilon: added to the variance, > 0.
    reduction_axes: axes of the statistics (default: ``axis``).
    use_fast_variance: ``True`` (flax's default): variance as
      ``E[x^2] - E[x]^2`` in one pass, flax's numbers and speed; ``False``:
      two passes, exact also when ``|mean| >> std`` (as flax's ``False``).
    mask: optional bool array broadcastable to ``x``: the statistics use only
      the positions it marks (flax's ``mask``); a slice it leaves empty
      normalizes to NaN, as in flax.
    axis_name, axis_index_groups: pool the statistics over devices (each
      holding part of the reduced axes), as flax's; ``lax.pmean``'s arguments.

  Returns:
    ``y`` with the shape and dtype of ``x`` (promoted with the parameters).

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> y = norms.layer_norm(jnp.array([[1.0, 2.0, 3.0]]))
    >>> [round(float(v), 3) for v in y[0]]
    [-1.225, 0.0, 1.225]

  References:
    Ba, Kiros & Hinton, "Layer Normalization", arXiv 1607.06450, eq. 3-4.
  """
  ndim = jnp.ndim(x)
  feats = _canonical_axes(ndim, axis)
  red = feats if reduction_axes is None else _canonical_axes(ndim, reduction_axes,
                                                             'reduction_axes')
  feature_shape = tuple(x.shape[a] for a in feats)
  _check_features('scale', scale, feature_shape)
  _check_features('bias', bias, feature_shape)
  check_positive('epsilon', epsilon)
  check_bool('use_fast_variance', use_fast_variance)
  _check_input('x', x, red)
  return _per_example_normalize(x, scale, bias, red, feats, epsilon, use_fast_variance,
                                mask, axis_name, axis_index_groups)


def _per_example_setup(name, x, scale, bias, axis, epsilon, use_fast_variance, *,
                       min_rank, ranks):
  """Validates a per-example norm whose batch axis is 0; returns the feature axis."""
  ndim = jnp.ndim(x)
  if ndim < min_rank:
    raise ValueError(f'{name} needs an input of rank >= {min_rank} ({ranks}), '
                     f'got rank {ndim}.')
  (feature_axis,) = _canonical_axes(ndim, axis)
  if feature_axis == 0:
    raise ValueError(f'{name} treats axis 0 as the batch axis; the feature axis '
                     'cannot be 0.')
  _check_features('scale', scale, (x.shape[feature_axis],))
  _check_features('bias', bias, (x.shape[feature_axis],))
  check_positive('epsilon', epsilon)
  check_bool('use_fast_variance', use_fast_variance)
  _check_input('x', x, tuple(a for a in range(1, ndim) if a != feature_axis))
  return feature_axis


def _grouped_mask(mask, from_end: int, num_groups: int, group_size: int):
  """``mask`` with its feature axis (``from_end``-th from the end) split into
  ``(num_groups, group_size)``, not broadcast (flax's reshape, and its bits)."""
  if mask is None:
    return None
  shape = mask.shape
  if len(shape) < from_end:
    shape = (1,) * (from_end - len(shape)) + shape
  at = len(shape) - from_end
  split = (num_groups, group_size) if shape[at] != 1 else (1, 1)
  return mask.reshape(shape[:at] + split + shape[at + 1:])


def group_norm(x, scale=None, bias=None, *, num_groups: int = 32, epsilon=1e-6,
               axis: int = -1, use_fast_variance: bool = True, mask=None,
               reduction_axes: Optional[Axes] = None, axis_name=None,
               axis_index_groups=None):
  r"""Group normalization (Wu & He 2018), the numbers of flax.linen.GroupNorm.

  .. math::
    y = \frac{x - \mu_{n,g}}{\sqrt{\sigma^2_{n,g} + \epsilon}}\,\gamma + \beta

  The ``C`` features on ``axis`` are split into ``num_groups`` consecutive
  groups; each example ``n``'s group ``g`` is normalized with statistics over
  the group's features and every axis except the batch axis 0 (or over
  ``reduction_axes``, which include ``axis``, as flax's).

  Scale invariance: per group. Rescaling together the kernel columns of the
  units in one group leaves the output unchanged; a single unit does not.

  Args:
    x: input of rank >= 2, batch on axis 0, features on ``axis``.
    scale, bias: optional ``(features,)`` gamma and beta.
    num_groups: number of groups; divides the number of features.
    epsilon: added to the variance, > 0.
    axis: the feature axis (not 0).
    use_fast_variance: ``True`` (flax's default): variance as
      ``E[x^2] - E[x]^2`` in one pass, flax's numbers and speed; ``False``:
      two passes, exact also when ``|mean| >> std`` (as flax's ``False``).
    mask: optional bool array broadcastable to ``x``: the statistics use only
      the positions it marks (flax's ``mask``).

  Returns:
    ``y`` with the shape of ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> y = norms.group_norm(jnp.array([[1.0, 3.0, 10.0, 30.0]]), num_groups=2)
    >>> [round(float(v), 3) for v in y[0]]
    [-1.0, 1.0, -1.0, 1.0]

  References:
    Wu & He, "Group Normalization", ECCV 2018, arXiv 1803.08494, eq. 1-3.
  """
  ndim = jnp.ndim(x)
  feature_axis = _per_example_setup('group_norm', x, scale, bias, axis, epsilon,
                                    use_fast_variance,
                                    min_rank=2, ranks='batch and features')
  channels = x.shape[feature_axis]
  if isinstance(num_groups, (bool, np.bool_)) or not isinstance(
      num_groups, (int, np.integer)) or num_groups <= 0 or channels % num_groups:
    raise ValueError(f'num_groups={num_groups!r} must be a positive int that divides '
                     f'the number of features {channels}.')
  # Statistics in the grouped view; normalization in x's own layout (a
  # minor axis of channels // num_groups vectorizes poorly).
  red = tuple(range(1, ndim)) if reduction_axes is None else _canonical_axes(
      ndim, reduction_axes, 'reduction_axes')
  if feature_axis not in red:
    raise ValueError(f'reduction_axes {red} must include the feature axis {feature_axis} '
                     f'(the groups pool features), as in flax.')
  group_size = channels // num_groups
  grouped_shape = x.shape[:feature_axis] + (num_groups, group_size) + x.shape[feature_axis + 1:]
  others = tuple(a for a in red if a != feature_axis)
  grouped_red = tuple(a if a < feature_axis else a + 1 for a in others) + (feature_axis + 1,)
  mean, var = _compute_stats(x.reshape(grouped_shape), tuple(sorted(grouped_red)), axis_name,
                             method='fast' if use_fast_variance else 'two_pass',
                             mask=_grouped_mask(_check_mask(mask, x), ndim - feature_axis,
                                                num_groups, group_size),
                             axis_index_groups=axis_index_groups)
  groups_axis = feature_axis - sum(1 for a in others if a < feature_axis)
  mean, var = (jnp.repeat(m, group_size, axis=groups_axis) for m in (mean, var))
  return _normalize(x, mean, var, scale, bias, reduction_axes=others,
                    feature_axes=(feature_axis,), epsilon=epsilon)


def instance_norm(x, scale=None, bias=None, *, epsilon=1e-6, axis: int = -1,
                  use_fast_variance: bool = True, mask=None, axis_name=None,
                  axis_index_groups=None):
  r"""Instance normalization (Ulyanov et al. 2016), as flax.linen.InstanceNorm.

  .. math::
    y_{n,c} = \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}}\,\gamma_c + \beta_c

  Each example's feature is normalized over the spatial axes (every axis but
  the batch axis 0 and the feature ``axis``).

  Scale invariance: per unit (per channel).

  Args:
    x: input of rank >= 2 (batch, spatial..., features; as in flax, rank 2
      has no spatial axis to normalize over and gives ``bias``).
    scale, bias: optional ``(features,)`` gamma and beta.
    epsilon: added to the variance, > 0.
    axis: the feature axis (not 0).
    use_fast_variance: ``True`` (flax's default): variance as
      ``E[x^2] - E[x]^2`` in one pass, flax's numbers and speed; ``False``:
      two passes, exact also when ``|mean| >> std`` (as flax's ``False``).
    mask: optional bool array broadcastable to ``x``: the statistics use only
      the positions it marks (flax's ``mask``).

  Returns:
    ``y`` with the shape of ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> y = norms.instance_norm(jnp.array([[[1.0], [3.0]]]), epsilon=1e-12)
    >>> [round(float(v), 3) for v in y[0, :, 0]]
    [-1.0, 1.0]

  References:
    Ulyanov, Vedaldi & Lempitsky, "Instance Normalization", arXiv
    1607.08022, eq. 4.
  """
  ndim = jnp.ndim(x)
  feature_axis = _per_example_setup('instance_norm', x, scale, bias, axis, epsilon,
                                    use_fast_variance,
                                    min_rank=2, ranks='batch, spatial..., features')
  red = tuple(a for a in range(1, ndim) if a != feature_axis)
  return _per_example_normalize(x, scale, bias, red, (feature_axis,), epsilon,
                                use_fast_variance, mask, axis_name, axis_index_groups)


# -------------------------------------------------------- weight reparams


def _kernel_axes(w, axis) -> tuple:
  """``(feature_axes, reduction_axes)`` of a kernel: ``axis`` an int, a tuple,
  or ``None`` (no feature axis: one unit, the whole tensor), as flax's
  ``WeightNorm.feature_axes``."""
  ndim = jnp.ndim(w)
  features = () if axis is None else _canonical_axes(ndim, axis)
  return features, tuple(a for a in range(ndim) if a not in features)


def weight_norm(v, g=None, *, axis: Optional[Axes] = -1, epsilon=1e-12):
  r"""Weight normalization (Salimans & Kingma 2016).

  .. math::
    w = g\,\frac{v}{\sqrt{\lVert v \rVert^2 + \epsilon}}

  ``||v||`` is the L2 norm of each unit: over every axis but the unit axes
  ``axis`` (an int, a tuple, or ``None`` for one norm of the whole tensor).
  The arithmetic is flax's (``v * rsqrt(sum(v*v) + epsilon)`` in ``v``'s
  dtype, then ``* g``), so the numbers equal flax.linen.WeightNorm's bit for
  bit in every dtype.

  Scale invariance: per unit in ``v``, exactly up to ``epsilon``.

  Args:
    v: the unnormalized kernel.
    g: optional gain with one entry per unit (shape: the sizes of ``axis``;
      ``None``: unit gain).
    axis: the unit axes.
    epsilon: added to the squared norm, > 0.

  Returns:
    ``w`` with the shape of ``v`` (dtype: ``v``'s promoted with ``g``'s).

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> norms.weight_norm(jnp.array([[3.0, 0.0], [4.0, 2.0]]), jnp.array([1.0, 2.0]))
    Array([[0.6, 0. ],
           [0.8, 2. ]], dtype=float32)

  References:
    Salimans & Kingma, "Weight Normalization", NeurIPS 2016, arXiv
    1602.07868, eq. 2.
  """
  features, red = _kernel_axes(v, axis)
  _check_features('g', g, tuple(jnp.shape(v)[a] for a in features))
  check_positive('epsilon', epsilon)
  check_float_input('v', v)
  w = v * lax.rsqrt(jnp.sum(v * v, axis=red, keepdims=True) + epsilon)
  if g is None:
    return w
  return w * jnp.reshape(g, [jnp.shape(v)[a] if a in features else 1
                             for a in range(jnp.ndim(v))])


def weight_standardize(w, *, axis: Optional[Axes] = -1, epsilon=1e-5):
  r"""Weight standardization (Qiao et al. 2019, arXiv 1903.10520).

  .. math::
    \hat w = \frac{w - \operatorname{mean}(w)}{\sqrt{\operatorname{var}(w) + \epsilon}}

  per unit (over every axis but the unit axes ``axis``: fan-in and receptive
  field for a flax kernel; ``None``: the whole tensor as one unit).

  Scale invariance: per unit (and invariance to a per-unit shift).

  Args:
    w: kernel.
    axis: the unit axes (an int, a tuple or ``None``).
    epsilon: added to the variance, > 0.

  Returns:
    ``w_hat`` with the shape of ``w``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> w = norms.weight_standardize(jnp.array([[1.0], [3.0]]), epsilon=1e-12)
    >>> [round(float(v), 3) for v in w[:, 0]]
    [-1.0, 1.0]

  References:
    Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization", arXiv 1903.10520, eq. 5.
  """
  features, red = _kernel_axes(w, axis)
  check_positive('epsilon', epsilon)
  _check_input('w', w, red)
  return _per_example_normalize(w, None, None, red, features, epsilon,
                                use_fast_variance=False)


def fold_batch_norm(kernel, bias, scale, bn_bias, stats, *, epsilon=1e-5):
  r"""Folds an inference batch norm into the Dense/Conv that feeds it.

  .. math::
    k = \frac{\gamma}{\sqrt{\sigma^2_P + \epsilon}}, \qquad
    \mathrm{BN}(xW + b) = x\,(W k) + (b - \mu_P)\,k + \beta

  per output unit (the last kernel axis). ``bias``, ``scale`` and ``bn_bias``
  may be ``None`` (0, 1 and 0).

  Args:
    kernel: Dense/Conv kernel, units on the last axis.
    bias: its bias or ``None``.
    scale, bn_bias: the batch norm's gamma and beta or ``None``.
    stats: the batch norm's running :class:`BatchStats`.
    epsilon: the batch norm's epsilon.

  Returns:
    ``(folded_kernel, folded_bias)``, the bias always an array.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import norms
    >>> stats = norms.BatchStats(jnp.array([1.0]), jnp.array([4.0]))
    >>> kernel, bias = norms.fold_batch_norm(jnp.array([[2.0]]), None, None, None, stats,
    ...                                      epsilon=1e-12)
    >>> round(float(kernel[0, 0]), 6), round(float(bias[0]), 6)  # (2x - 1) / 2
    (1.0, -0.5)

  References:
    Jacob et al., "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", CVPR 2018, arXiv
    1712.05877, section 3.2 (batch norm folding).
  """
  check_float_input('kernel', kernel)
  units = jnp.shape(kernel)[-1]
  for name, value in (('bias', bias), ('scale', scale), ('bn_bias', bn_bias)):
    _check_features(name, value, (units,))
  _check_stats(stats, units)
  check_positive('epsilon', epsilon)
  mean, var = stats
  k = lax.rsqrt(var.astype(_stats_dtype(var)) + epsilon)
  if scale is not None:
    k = k * scale
  shift = -mean if bias is None else bias - mean
  new_bias = shift * k + (0.0 if bn_bias is None else bn_bias)
  dtype = jnp.result_type(kernel, *[p for p in (bias, scale, bn_bias) if p is not None])
  return (kernel * k).astype(dtype), new_bias.astype(dtype)
