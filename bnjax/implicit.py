r"""Batch norm's implicit gamma decay, measured from gradients.

Luo et al. (2019) decompose batch norm with batch size M into population
normalization (PN) plus an explicit penalty on the gains,

.. math::
  \mathbb{E}_{\mathcal B}\,\mathcal L_\mathrm{BN}^{(M)}(\theta)
  \approx \mathcal L_\mathrm{PN}(\theta) + \zeta\,\gamma^2, \qquad
  \zeta = \tfrac{1}{2M}\ \text{(linear)},\ \tfrac{1}{4M}\ \text{(ReLU)},

so that, per gain, the gradients differ by :math:`2\zeta\gamma`. This module
measures that difference at any parameters: the loss on a sample of ``P``
examples with ghost batch norm over virtual batches of ``M`` (``P / M``
batches, a random partition, averaged over several partitions), minus the loss
with one batch of all ``P`` (the sample's own population statistics), both
differentiated through their statistics. Per normalization layer,

.. math::
  \zeta = \frac{\sum_c d_c\,\gamma_c}{2\sum_c \gamma_c^2}, \qquad
  d = \nabla_\gamma \mathcal L_\mathrm{BN}^{(M)} - \nabla_\gamma \mathcal L_\mathrm{PN},

the least-squares fit of :math:`d = 2\zeta\gamma` over the layer's channels.
Batches drawn without replacement from ``P`` examples have statistics that
vary as a batch of :func:`bnjax.theory.effective_batch` independent draws.
"""

from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bnjax import masks, models
from bnjax._validation import check_positive_int

__all__ = ['gamma_decay', 'model_apply']


def model_apply(model: str, norm: str = 'batch', *, width: int = 32,
                activation: str = 'linear', batch_stats=None) -> Callable:
  """``apply(params, x, m)``: a bnjax model in train mode with ghost batch norm
  over virtual batches of ``m`` (the same parameters as batch norm's).

  Args:
    model: one of ``bnjax.models.MODELS``, as in :func:`bnjax.models.build`.
    norm: the model's normalization, ``'batch'`` or ``'ghost'``.
    width: as in :func:`bnjax.models.build`.
    activation: as in :func:`bnjax.models.build`.
    batch_stats: the model's running statistics (read, not used in train
      mode; flax needs the collection).

  Returns:
    The apply function for :func:`gamma_decay`.
  """
  if norm not in ('batch', 'ghost'):
    raise ValueError(f"implicit gamma decay needs batch statistics: norm must be 'batch' "
                     f"or 'ghost', got {norm!r}.")

  def apply(params, x, m):
    net = models.build(model, 'ghost', virtual_batch_size=m, width=width,
                       activation=activation)
    variables = {'params': params}
    if batch_stats is not None:
      variables['batch_stats'] = batch_stats
    out, _ = net.apply(variables, x, train=True, mutable=['batch_stats'])
    return out
  return apply


def gamma_decay(apply: Callable, params, x, y, batch_sizes: Sequence[int], *,
                regression: bool = False, partitions: int = 2, seed: int = 0
                ) -> Dict[int, Dict[str, float]]:
  r"""Batch norm's implicit gamma decay ``zeta`` per layer at each batch size M.

  .. math::
    \zeta_\ell(M) = \frac{\sum_c \big(\overline{\nabla_{\gamma_c}
    \mathcal L^{(M)}} - \nabla_{\gamma_c}\mathcal L^{(P)}\big)\,\gamma_c}
    {2\sum_c\gamma_c^2}

  Args:
    apply: ``apply(params, x, m) -> outputs`` with normalization statistics
      over consecutive virtual batches of ``m`` examples
      (:func:`model_apply`).
    params: the parameters; the gains are the leaves named ``scale``
      (:func:`bnjax.masks.gain_mask`).
    x, y: the sample, ``P`` examples (``P`` a multiple of every ``M``).
    batch_sizes: the M to measure.
    regression: squared error (True) or cross-entropy (False), as
      :func:`bnjax.models.objective`.
    partitions: random partitions of the sample averaged per M.
    seed: numpy seed of the partitions (``default_rng(seed)``, one
      permutation per partition in order, shared by every M).

  Returns:
    ``{M: {layer: zeta}}``, the layer named by its gain's path without
    ``scale`` (e.g. ``'conv1_norm'``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import implicit
    >>> x = jax.random.normal(jax.random.key(0), (64, 4)) / 2
    >>> apply = implicit.model_apply('perceptron', activation='relu')
    >>> from bnjax import models
    >>> params = models.build('perceptron', 'batch', activation='relu').init(
    ...     jax.random.key(1), x)['params']
    >>> zeta = implicit.gamma_decay(apply, params, x, x[:, 0], [8], regression=True)
    >>> sorted(zeta[8])
    ['dense_norm']

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2 (BN = PN + gamma
    decay); Hoffer et al., "Train longer, generalize better", NIPS 2017,
    arXiv 1705.08741 (ghost batch norm).
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  p = x.shape[0]
  if y.shape[0] != p:
    raise ValueError(f'x and y must hold the same examples, got {p} and {y.shape[0]}.')
  check_positive_int('partitions', partitions)
  for m in batch_sizes:
    check_positive_int('batch size', m)
    if p % m:
      raise ValueError(f'the sample of {p} examples is not a whole number of batches of {m}.')
  if not (bool(jnp.all(jnp.isfinite(x))) and all(
      bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(params))):
    raise ValueError('x and params must be finite: a non-finite gradient measures nothing.')
  gains = masks.gain_mask(params)
  if not any(jax.tree_util.tree_leaves(gains)):
    raise ValueError('params hold no gain (no leaf named scale): nothing to measure.')

  compiled = {}

  def grad_of(m, order):
    if m not in compiled:  # one program per batch size, reused by every partition
      loss = lambda q, xs, ys: models.objective(apply(q, xs, m), ys, regression)[0]
      compiled[m] = jax.jit(jax.grad(loss))
    return compiled[m](params, x[order], y[order])

  rng = np.random.default_rng(seed)
  orders = [jnp.asarray(rng.permutation(p)) for _ in range(partitions)]
  population = grad_of(p, orders[0])
  leaves = [(path, g) for path, g in jax.tree_util.tree_leaves_with_path(gains) if g]
  out = {}
  for m in batch_sizes:
    grads = [grad_of(m, order) for order in orders]
    mean = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
    zetas = {}
    for path, _ in leaves:
      gamma = np.asarray(_at(params, path), np.float64)
      d = np.asarray(_at(mean, path), np.float64) - np.asarray(_at(population, path),
                                                              np.float64)
      name = '/'.join(str(getattr(k, 'key', k)) for k in path[:-1])
      zetas[name] = float(d.ravel() @ gamma.ravel() / (2 * gamma.ravel() @ gamma.ravel()))
    out[int(m)] = zetas
  return out


def _at(tree, path):
  for k in path:
    tree = tree[getattr(k, 'key', getattr(k, 'idx', k))]
  return tree
