"""Per-step metrics of a run: gradient at unit scale, gains, tracked dynamics, finiteness.

Keys are ``<metric>/<layer>`` with ``<layer>`` the module path of a leaf
(:func:`layer_name`). What each metric means: ``bnjax.train.trainer``'s docstring.
"""

import jax
import jax.numpy as jnp
import numpy as np

from bnjax import dynamics, masks, theory, transforms
from bnjax._validation import key_names

__all__ = [
    'COLLAPSED',
    'gain_metrics',
    'invariant_layers',
    'layer_metrics',
    'PER_UNIT',
    'unit_angle_metrics',
    'unit_scale_grad_sq',
]

# Prefix of the metrics that hold one value per unit (a list in metrics.jsonl,
# the window mean of each unit) rather than a scalar.
PER_UNIT = 'per_unit/'


def layer_name(path) -> str:
  """``conv2/layer_instance/kernel`` -> ``conv2``: the module path of a leaf."""
  keys = key_names(path)
  return '/'.join(k for k in keys[:-1] if k != 'layer_instance')


def unit_scale_grad_sq(grads, params) -> dict:
  r"""``grad_sq_at_unit_norm/<layer>``: per-unit ``||g||^2 ||w||^2`` of every kernel.

  .. math::
    \lVert \tilde g_j \rVert^2 = \lVert g_j \rVert^2 \lVert w_j \rVert^2

  For a scale-invariant unit that is the squared gradient at unit weight
  norm, which sets the SGD equilibrium norm
  (:func:`bnjax.theory.equilibrium_norm`); mean over units. The per-unit
  values and norms themselves are ``per_unit/grad_sq_at_unit_norm/<layer>``
  and ``per_unit/weight_norm/<layer>`` (one entry per unit): a window's mean
  of them is each unit's own gradient scale and norm over the steps an angle
  is averaged over.

  Args:
    grads: gradients with the structure of ``params``.
    params: the parameters.

  Returns:
    A dict of arrays: a scalar and two per-unit vectors per kernel.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax.train import step_metrics
    >>> w = {'conv1': {'kernel': jnp.array([[2.0], [0.0]])}}
    >>> g = {'conv1': {'kernel': jnp.array([[0.0], [3.0]])}}
    >>> m = step_metrics.unit_scale_grad_sq(g, w)
    >>> float(m['grad_sq_at_unit_norm/conv1'])
    36.0
    >>> m['per_unit/weight_norm/conv1'].tolist()
    [2.0]

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419,
    Theorem 1.
  """
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, w), g in zip(flat, jax.tree_util.tree_leaves(grads)):
    if jnp.ndim(w) >= 2:
      name, norms = layer_name(path), dynamics.unit_norms(w)
      per_unit = jnp.square(dynamics.unit_norms(g) * norms)
      out[f'grad_sq_at_unit_norm/{name}'] = jnp.mean(per_unit)
      out[f'{PER_UNIT}grad_sq_at_unit_norm/{name}'] = per_unit
      out[f'{PER_UNIT}weight_norm/{name}'] = norms
  return out


COLLAPSED = dynamics.COLLAPSED


def unit_angle_metrics(params, new_params, grads) -> dict:
  r"""Per-unit angles of a step over the live units, and the fraction of dead ones.

  For every kernel (units along the last axis), with
  :math:`\Delta\theta_j = \angle(w_j, w'_j)`:

  .. math::
    \texttt{angular\_update\_sq} = \frac{1}{|L|}\sum_{j \in L} \Delta\theta_j^2,
    \qquad \texttt{dead\_units} = 1 - \frac{|L|}{n}

  where a unit is dead (not in the live set :math:`L`) when no gradient
  reaches it (:math:`\lVert g_j \rVert = 0`: e.g. a ReLU channel that fires
  on no example of the batch) or its norm collapsed below
  :data:`COLLAPSED` times the layer's median. The square root of the window
  mean of ``angular_update_sq`` is the RMS angle the equilibrium theory
  predicts (:func:`bnjax.theory.equilibrium_angular_update`); the mean angle
  that ``track_dynamics`` logs is biased low by the spread over units, and a
  dead unit's angle or effective learning rate says nothing about the live ones.

  Args:
    params: the parameters before the step.
    new_params: after it.
    grads: the step's gradients (the global ones under pmap).

  Returns:
    ``{'angular_update_sq/<layer>': ..., 'dead_units/<layer>': ...}`` (scalar arrays).

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax.train import step_metrics
    >>> w = {'conv1': {'kernel': jnp.array([[1.0, 1.0], [0.0, 0.0]])}}
    >>> new = {'conv1': {'kernel': jnp.array([[1.0, 1.0], [0.1, 0.0]])}}
    >>> g = {'conv1': {'kernel': jnp.array([[0.0, 0.0], [-1.0, 0.0]])}}   # unit 1: none
    >>> m = step_metrics.unit_angle_metrics(w, new, g)
    >>> round(float(m["angular_update_sq/conv1"]), 6), float(m["dead_units/conv1"])  # atan(0.1)^2
    (0.009934, 0.5)

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419,
    Theorem 1 (the expected squared angle); Lu et al., "Dying ReLU and
    Initialization", 2019, arXiv 1903.06733 (dead units).
  """
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, w), w_new, g in zip(flat, jax.tree_util.tree_leaves(new_params),
                                 jax.tree_util.tree_leaves(grads)):
    if jnp.ndim(w) < 2:
      continue
    norms = dynamics.unit_norms(w)
    live = (dynamics.unit_norms(g) > 0) & dynamics.live_units(norms)
    count = jnp.sum(live)
    angle = dynamics.angular_update(w, w_new)
    name = layer_name(path)
    out[f'angular_update_sq/{name}'] = jnp.sum(jnp.where(live, jnp.square(angle), 0.0)
                                               ) / jnp.maximum(count, 1)
    out[f'dead_units/{name}'] = (live.size - count) / live.size  # 1 - count/size: -1.5e-8
  return out


def fan_ins(params) -> dict:
  """``{layer: C}``: the weights per unit (all kernel axes but the last) of every kernel."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {layer_name(path): int(np.prod(np.shape(w)[:-1]))
          for path, w in flat if np.ndim(w) >= 2}


def gain_metrics(params) -> dict:
  r"""``gamma_sq/<layer>``: mean squared normalization gain (``scale``) per layer.

  .. math::
    \overline{\gamma^2} = \frac{1}{C} \sum_{c} \gamma_c^2

  Args:
    params: the model's parameters.

  Returns:
    A dict of floats, one per layer with a ``scale``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax.train import step_metrics
    >>> step_metrics.gain_metrics({'conv1_norm': {'scale': jnp.array([1.0, 3.0])}})
    {'gamma_sq/conv1_norm': 5.0}

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2 (gamma decay).
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  on = jax.tree_util.tree_leaves(masks.gain_mask(params))
  return {f'gamma_sq/{layer_name(path)}': float(np.mean(np.square(w)))
          for (path, w), m in zip(flat, on) if m}


def layer_metrics(opt_state, invariant=None) -> dict:
  r""":func:`bnjax.dynamics.read`'s kernel metrics as ``<metric>/<layer>``.

  .. math::
    \texttt{<path>/kernel/<metric>} \mapsto \texttt{<metric>/<layer>}

  Args:
    opt_state: an optimizer state holding a ``track_dynamics`` state.
    invariant: the layers whose kernels are scale-invariant (``None``: all): the
      others (a classifier head, any kernel no norm follows) get no
      ``effective_lr``, which only a scale-invariant weight has.

  ``angular_update_rms`` is left out: the run logs ``angular_update_sq``
  (:func:`unit_angle_metrics`) over the units a gradient reaches, which
  ``track_dynamics`` cannot tell apart.

  Returns:
    A dict of scalar arrays, one per tracked kernel and metric.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import transforms
    >>> from bnjax.train import step_metrics
    >>> tx = optax.chain(optax.sgd(0.1), transforms.track_dynamics(0.1, 'sgd'))
    >>> params = {'conv1': {'kernel': jnp.ones((2, 2))}}
    >>> _, state = tx.update(params, tx.init(params), params)
    >>> sorted(step_metrics.layer_metrics(state))[0]
    'angular_update/conv1'

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, section 3.
  """
  out = {}
  for key, value in dynamics.read(opt_state).items():
    *path, metric = key.split('/')
    layer = layer_name(path)
    if metric == 'angular_update_rms':
      continue
    if metric != 'effective_lr' or invariant is None or layer in invariant:
      out[f'{metric}/{layer}'] = float(value)
  return out


def timescale_metrics(learning_rate, decays: dict, steps_per_epoch) -> dict:
  r"""``ema_timescale_epochs/<layer>``: the EMA timescale of each decayed kernel.

  .. math::
    \tau_\text{epoch} = \frac{1}{f\,\eta_t\,\lambda\ (\text{steps per epoch})}

  (:func:`bnjax.theory.ema_timescale`, Wang & Aitchison 2024) at the step's
  learning rate; none while the rate is 0 (a warmup's first step).

  Args:
    learning_rate: the step's learning rate ``eta_t``.
    decays: ``{layer: (f, lambda)}``
      (:func:`bnjax.train.run_files.decoupled_decays`).
    steps_per_epoch: the run's steps per epoch.

  Returns:
    A dict of floats, one per decayed layer.

  Example:
    >>> from bnjax.train import step_metrics
    >>> step_metrics.timescale_metrics(1e-3, {'conv1': (1.0, 0.1)}, 100)
    {'ema_timescale_epochs/conv1': 100.0}

  References:
    Wang & Aitchison, "How to set AdamW's weight decay as you scale model
    and dataset size", 2024, arXiv 2405.13698.
  """
  if not learning_rate > 0:
    return {}
  return {f'ema_timescale_epochs/{layer}': theory.ema_timescale(
      factor * learning_rate, decay, steps_per_epoch)
          for layer, (factor, decay) in sorted(decays.items())}


def kernel_layers(params) -> set:
  """The layers holding a kernel (:func:`bnjax.masks.kernel_mask`)."""
  return invariant_layers(params, masks.kernel_mask)


def invariant_layers(params, invariant=masks.scale_invariant_kernels) -> set:
  """The layers of the leaves ``invariant`` marks (a mask tree of ``params``, or a
  callable of them; default :func:`bnjax.masks.scale_invariant_kernels`: every
  kernel but the head's, as for a :mod:`bnjax.models` model)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  marks = jax.tree_util.tree_leaves(invariant(params) if callable(invariant) else invariant)
  return {layer_name(path) for (path, _), m in zip(flat, marks) if m}


def trained_state(state) -> dict:
  """What training carries forward: params, batch stats and optimizer state, without
  the tracked dynamics (a dead unit's effective LR is legitimately infinite)."""
  opt_state = jax.tree_util.tree_map(
      lambda s: None if isinstance(s, transforms.TrackDynamicsState) else s,
      state.opt_state, is_leaf=lambda s: isinstance(s, transforms.TrackDynamicsState))
  return {'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': opt_state}


def nonfinite_leaves(tree) -> list:
  """Paths of the leaves of a host tree holding a NaN or an infinity."""
  return [jax.tree_util.keystr(path) for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]
          if np.issubdtype(np.asarray(leaf).dtype, np.inexact)
          and not np.all(np.isfinite(leaf))]
