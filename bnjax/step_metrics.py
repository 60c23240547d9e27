"""Per-step metrics of a run: gradient at unit scale, gains, tracked dynamics, finiteness.

Keys are ``<metric>/<layer>`` with ``<layer>`` the module path of a leaf
(:func:`layer_name`). What each metric means: ``bnjax.trainer``'s docstring.
"""

import jax
import jax.numpy as jnp
import numpy as np

from bnjax import dynamics, masks, transforms
from bnjax._validation import key_names


def layer_name(path) -> str:
  """``conv2/layer_instance/kernel`` -> ``conv2``: the module path of a leaf."""
  keys = key_names(path)
  return '/'.join(k for k in keys[:-1] if k != 'layer_instance')


def unit_scale_grad_sq(grads, params) -> dict:
  """``grad_sq_at_unit_norm/<layer>``: per-unit ``||g||^2 ||w||^2`` of every kernel.

  For a scale-invariant unit that is ``||g~||^2``, the squared gradient at
  unit weight norm that sets the SGD equilibrium norm
  (:func:`bnjax.theory.equilibrium_norm`); mean over units.
  """
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, w), g in zip(flat, jax.tree_util.tree_leaves(grads)):
    if jnp.ndim(w) >= 2:
      out[f'grad_sq_at_unit_norm/{layer_name(path)}'] = jnp.mean(
          jnp.square(dynamics.unit_norms(g) * dynamics.unit_norms(w)))
  return out


def fan_ins(params) -> dict:
  """``{layer: C}``: the weights per unit (all kernel axes but the last) of every kernel."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {layer_name(path): int(np.prod(np.shape(w)[:-1]))
          for path, w in flat if np.ndim(w) >= 2}


def gain_metrics(params) -> dict:
  """``gamma_sq/<layer>``: mean squared normalization gain (``scale``) per layer."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  on = jax.tree_util.tree_leaves(masks.gain_mask(params))
  return {f'gamma_sq/{layer_name(path)}': float(np.mean(np.square(w)))
          for (path, w), m in zip(flat, on) if m}


def layer_metrics(opt_state) -> dict:
  """``dynamics.read`` keys ``<path>/kernel/<metric>`` as ``<metric>/<layer>``."""
  out = {}
  for key, value in dynamics.read(opt_state).items():
    *path, metric = key.split('/')
    out[f'{metric}/{layer_name(path)}'] = float(value)
  return out


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
