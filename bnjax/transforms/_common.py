"""What the transforms share: argument types, mask expansion, required params."""

import functools
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

from bnjax import masks
from bnjax._validation import path_str

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]
Mask = Optional[Union[Any, Callable[[Any], Any]]]


def _require_projection_mask(mask, where: str):
  if mask is None:
    raise ValueError(
        f'{where} needs an explicit mask: projecting a leaf that is not scale-invariant '
        f'(a classifier head, a bias) changes the function the network computes. Pass '
        f'bnjax.masks.scale_invariant_kernels (structural) or a measured '
        f'bnjax.masks.scale_invariant_mask(loss_fn, params, ...).')


def _require_params(params, name):
  if params is None:
    raise ValueError(f'{name} needs the current params: call '
                     f'update(updates, state, params).')


def _require_float_params(params, name):
  """TypeError naming the first leaf whose dtype is not a real float: an update cast
  back to an integer dtype would be truncated, usually to zero."""
  for path, w in jax.tree_util.tree_leaves_with_path(params):
    dtype = jnp.result_type(w)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f'{name} needs real floating params; {path_str(path)!r} has dtype '
                      f'{dtype}. Cast it (e.g. w.astype(jnp.float32)) or keep it out of '
                      f'the optimizer (optax.masked / optax.set_to_zero).')


def _needs_params(tx: optax.GradientTransformation, name: str
                  ) -> optax.GradientTransformation:
  """``tx`` whose update raises a ValueError naming ``name`` when params are missing."""

  def update_fn(updates, state, params=None):
    _require_params(params, name)
    return tx.update(updates, state, params)

  return optax.GradientTransformation(tx.init, update_fn)


def _masked(tx: optax.GradientTransformation, mask: 'Mask') -> optax.GradientTransformation:
  """``optax.masked(tx, mask)`` with bnjax's mask handling (``None``: ``tx`` on every
  leaf): a mask built on an nnx.State of variables matches array params, and a
  mask that matches no params is refused at ``init`` naming the first
  mismatching path (:func:`bnjax.masks.expand_mask`)."""
  if mask is None:
    return tx
  return optax.masked(tx, functools.partial(masks.expand_mask, mask))


def _expanded(mask: 'Mask', params):
  """The mask as a full tree of bools; ``None`` means every leaf."""
  if mask is None:
    return jax.tree_util.tree_map(lambda _: True, params)
  return masks.expand_mask(mask, params)


def _at(rate, count):
  return rate(count) if callable(rate) else rate
