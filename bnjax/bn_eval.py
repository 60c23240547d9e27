r"""Batch-norm statistics for evaluation: running, debiased or precise.

A batch-normed network evaluates with population statistics, which training
estimates by an exponential moving average (EMA) of the batch statistics,
:math:`r_t = m\,r_{t-1} + (1-m)\,b_t` (flax's ``momentum`` :math:`m`, default
0.99). After :math:`t` steps the initial value :math:`r_0` (mean 0, variance 1)
still weighs :math:`m^t`: 38% after 48 steps at :math:`m = 0.99`, so short runs
test with statistics far from their data. Three choices, ``--bn_eval``:

* ``'running'``: the EMA as trained (flax's and PyTorch's behaviour);
* ``'debiased'``: the EMA with :math:`r_0`'s weight removed (:func:`debiased`),
  as Adam corrects its moments;
* ``'precise'``: population statistics recomputed with the final weights over
  a number of training batches (:func:`precise`), "precise BN".

The functions work on a flax ``batch_stats`` collection: any nesting of dicts
whose leaves sit under ``'mean'`` and ``'var'`` keys (flax.linen.BatchNorm's
and every bnjax batch norm's names).
"""

from collections.abc import Mapping
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

from bnjax._validation import check_unit_interval

__all__ = ['BN_EVAL', 'debiased', 'precise', 'precise_nnx']

BN_EVAL = ('running', 'debiased', 'precise')


def _check_count(count):
  """``count`` as an int, or as it is when traced (``debiased`` under ``jit``)."""
  if isinstance(count, jax.core.Tracer):
    if not jnp.issubdtype(count.dtype, jnp.integer):
      raise TypeError(f'count must be an integer (the number of EMA updates), got a '
                      f'traced {count.dtype}.')
    return count
  if isinstance(count, bool) or not isinstance(count, int) and not (
      hasattr(count, 'dtype') and jnp.issubdtype(count.dtype, jnp.integer)):
    raise TypeError(f'count must be an int (the number of EMA updates), got {count!r}.')
  if int(count) < 0:
    raise ValueError(f'count must be >= 0, got {int(count)}.')
  return int(count)


def debiased(batch_stats, count, *, momentum: float = 0.99, initial_mean: float = 0.0,
             initial_var: float = 1.0):
  r"""Running averages with the weight of their initial value removed.

  .. math::
    \hat r_t = \frac{r_t - m^t r_0}{1 - m^t}

  an average of the :math:`t` batch statistics with weights
  :math:`(1-m)\,m^{t-k} / (1 - m^t)` summing to 1. ``count = 0`` (no update
  yet) returns ``batch_stats`` unchanged.

  Args:
    batch_stats: a flax ``batch_stats`` collection (``'mean'``/``'var'`` leaves).
    count: the number of EMA updates behind it (training steps); an int, or an
      integer array under ``jit``.
    momentum: the EMA's :math:`m`, in (0, 1).
    initial_mean, initial_var: :math:`r_0` (flax and bnjax start at 0 and 1).

  Returns:
    A collection of the same structure.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import bn_eval
    >>> # Two updates towards a batch mean of 2 from r_0 = 0: r = 0.0398.
    >>> stats = {'bn': {'mean': jnp.array([0.0398]), 'var': jnp.array([1.0])}}
    >>> out = bn_eval.debiased(stats, 2, momentum=0.99)
    >>> round(float(out['bn']['mean'][0]), 4), round(float(out['bn']['var'][0]), 4)
    (2.0, 1.0)

  References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
    arXiv 1412.6980, section 3 (initialization bias correction).
  """
  count = _check_count(count)
  check_unit_interval('momentum', momentum, include_one=False)
  if isinstance(count, int):
    weight = momentum ** count
    if count == 0 or weight == 1.0:  # no update has moved the values yet
      return batch_stats
    unbias = lambda r, r0: ((r - weight * r0) / (1.0 - weight)).astype(r.dtype)
  else:  # traced: the same, with count = 0 (and a negative count) selected out
    weight = jnp.asarray(momentum, jnp.float32) ** jnp.maximum(count, 0)
    moved = weight < 1.0
    divisor = jnp.where(moved, 1.0 - weight, 1.0)
    unbias = lambda r, r0: jnp.where(moved, (r - weight * r0) / divisor, r).astype(r.dtype)
  return _map_stats(lambda node: {'mean': unbias(node['mean'], initial_mean),
                                  'var': unbias(node['var'], initial_var)}, batch_stats)


def _map_stats(fn, *trees):
  """``fn`` on every ``{'mean', 'var'}`` node of nested dicts, the rest kept."""
  first = trees[0]
  if not isinstance(first, Mapping):
    raise ValueError(f'batch_stats must be nested dicts with mean/var leaves; found a '
                     f'{type(first).__name__} outside a mean/var pair.')
  if 'mean' in first and 'var' in first:
    return {**first, **fn(*trees)}
  return {k: _map_stats(fn, *(t[k] for t in trees)) for k in first}


def _batch_size(x) -> int:
  sizes = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree_util.tree_leaves(x)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f'each batch must be an array (or pytree of arrays) with one leading '
                     f'batch axis; got leading sizes {sorted(map(str, sizes))}.')
  return sizes.pop()


def precise(update_fn: Callable[[Any, Any, Any], Any], params, batch_stats,
            batches: Iterable, *, momentum: float = 0.99):
  r"""Exact population statistics of the given batches, with the current weights.

  Each batch goes through the network in training mode with incoming
  statistics set to 0, so a layer's EMA update returns :math:`(1-m)\,b` and
  its batch statistics :math:`b` (mean :math:`\mu_k`, biased variance
  :math:`\sigma^2_k`) are read off exactly. Over :math:`K` batches of
  :math:`n_k` examples, :math:`N = \sum_k n_k`, the law of total variance
  gives the statistics of their union:

  .. math::
    \mu = \frac{1}{N}\sum_k n_k \mu_k, \qquad
    \sigma^2 = \frac{1}{N}\sum_k n_k \left(\sigma^2_k + \mu_k^2\right) - \mu^2

  (for a batch norm whose later layers see normalized inputs, the statistics
  are those of the network as it runs in training, layer by layer, as in
  Wu & Johnson's PreciseBN). A statistic the layer does not update (the
  variance of a mean-only BN, the mean of a variance-only BN) keeps its
  running value. Not for population norm, whose training forward uses the
  incoming statistics.

  Args:
    update_fn: ``update_fn(params, batch_stats, x) -> new batch_stats``, the
      network's training-mode forward (e.g. ``lambda p, s, x: model.apply(
      {'params': p, 'batch_stats': s}, x, train=True,
      mutable=['batch_stats'])[1]['batch_stats']``); it is jitted here.
    params: the network's parameters.
    batch_stats: its running statistics (their structure and the values of
      statistics no layer updates).
    batches: an iterable of inputs ``x`` (arrays, or pytrees of arrays sharing a
      leading batch axis), at least one; batches of unequal size are weighted
      by their size (a ragged last batch counts for what it holds).
    momentum: the layers' EMA momentum :math:`m`, in (0, 1).

  Returns:
    A ``batch_stats`` collection of the same structure.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import bn_eval, layers
    >>> bn = layers.BatchNorm(use_running_average=False)
    >>> x = jax.random.normal(jax.random.key(0), (64, 3)) * 2.0 + 5.0
    >>> v = bn.init(jax.random.key(1), x)
    >>> update = lambda p, s, x: bn.apply({'params': p, 'batch_stats': s}, x,
    ...                                   mutable=['batch_stats'])[1]['batch_stats']
    >>> stats = bn_eval.precise(update, v['params'], v['batch_stats'], [x[:32], x[32:]])
    >>> bool(jnp.allclose(stats['mean'], x.mean(0), atol=1e-4))
    True
    >>> bool(jnp.allclose(stats['var'], x.var(0), rtol=1e-4))
    True

  References:
    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, arXiv 2105.07576,
    section 3 (population statistics: EMA against PreciseBN).
  """
  check_unit_interval('momentum', momentum, include_one=False)
  update = jax.jit(update_fn)
  fill = lambda value: jax.tree_util.tree_map(lambda a: jnp.full_like(a, value),
                                              batch_stats)
  zeros, ones = fill(0.0), fill(1.0)
  sums, updated, count = None, None, 0
  for x in batches:
    size = _batch_size(x)
    stats = jax.tree_util.tree_map(lambda a: a / (1.0 - momentum),
                                   update(params, zeros, x))
    if updated is None:  # a statistic no layer updates comes back as it went in
      moved = lambda a, b: bool(jnp.any(a != 0.0) | jnp.any(b != 1.0))
      updated = jax.tree_util.tree_map(moved, stats, update(params, ones, x))
    moments = _map_stats(lambda n: {'mean': size * n['mean'],
                                    'var': size * (n['var'] + jnp.square(n['mean']))},
                         stats)
    sums = moments if sums is None else jax.tree_util.tree_map(jnp.add, sums, moments)
    count += size
  if count == 0:
    raise ValueError('precise statistics need at least one batch; batches was empty.')

  def union(total, running, moved):
    mean = total['mean'] / count
    var = jnp.maximum(total['var'] / count - jnp.square(mean), 0.0)
    return {'mean': mean if moved['mean'] else running['mean'],
            'var': var if moved['var'] else running['var']}

  return _map_stats(union, sums, batch_stats, updated)


def precise_nnx(model, batches: Iterable, *, momentum=None):
  r"""Precise statistics (:func:`precise`) of a flax.nnx model, written into it.

  Every ``nnx.BatchStat`` of ``model`` (``bnjax.nnx`` and ``flax.nnx`` batch
  norms alike) is replaced by the population statistics of ``batches`` under
  the model's current weights, computed as :func:`precise` does with the
  model in training mode (batch statistics, layer by layer). The model is
  updated in place (``nnx.update``), as nnx optimizers update it, and its
  train / eval mode is left as it was. Use it before evaluating a run whose
  weight norms moved faster than the running averages follow: with momentum
  :math:`m` the averages lag by about :math:`1/(1-m)` steps (100 at 0.99),
  and weight decay moves a scale-invariant weight's norm with its own time
  constant (:func:`bnjax.theory.equilibrium_time_constant`).

  Args:
    model: a flax.nnx ``Module`` with batch statistics.
    batches: an iterable of inputs ``x``, at least one.
    momentum: the batch norms' momentum (default: read off the model's batch
      norms, which must agree).

  Returns:
    The model.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from bnjax import bn_eval
    >>> from bnjax import nnx as bnnx
    >>> bn = bnnx.BatchNorm(3, rngs=nnx.Rngs(0))
    >>> x = jax.random.normal(jax.random.key(0), (64, 3)) * 2.0 + 5.0
    >>> _ = bn_eval.precise_nnx(bn, [x[:32], x[32:]])
    >>> bool(jnp.allclose(bn.mean[...], x.mean(0), atol=1e-4))
    True

  References:
    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, arXiv 2105.07576,
    section 3.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model: must be a flax.nnx Module, got {type(model).__name__}')
  if momentum is None:
    found = {float(m.momentum) for _, m in nnx.iter_graph(model)
             if isinstance(m, nnx.Module) and hasattr(m, 'momentum')
             and hasattr(m, 'use_running_average')}
    if len(found) != 1:
      raise ValueError(f'momentum: the model\'s batch norms have momenta {sorted(found)}; '
                       'pass the one to use' if found else
                       'model: has no batch norm (no module with momentum and '
                       'use_running_average)')
    momentum, = found
  modes = {path: m.use_running_average for path, m in nnx.iter_graph(model)
           if isinstance(m, nnx.Module) and hasattr(m, 'use_running_average')}
  graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  pure = getattr(nnx, 'as_pure', lambda state: state)

  def update(p, s, x):
    m = nnx.merge(graphdef, p, s, pure(rest))
    for _, sub in nnx.iter_graph(m):
      if isinstance(sub, nnx.Module) and hasattr(sub, 'use_running_average'):
        sub.use_running_average = False
    m(x)
    return pure(nnx.state(m, nnx.BatchStat))

  new = precise(update, pure(params), pure(stats), batches, momentum=momentum)
  nnx.update(model, nnx.State(new) if not isinstance(new, nnx.State) else new)
  for path, m in nnx.iter_graph(model):
    if path in modes:
      m.use_running_average = modes[path]
  return model
