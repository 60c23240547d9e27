"""Argument checks shared by bnjax's modules (errors that name the argument and its
range), and pytree key-path names.

Numbers are checked alike whether they are Python or numpy scalars (or 0-d
arrays); ``bool`` is refused wherever a number is expected; a value that
cannot be checked at construction (a schedule, or a value traced under
``jit``/``optax.inject_hyperparams``) is left to the caller's trace.
"""

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def _is_bool(value) -> bool:
  return isinstance(value, (bool, np.bool_)) or (
      hasattr(value, 'dtype') and np.shape(value) == () and value.dtype == bool)


def concrete_float(value, name: str = 'value'):
  """``float(value)``, or ``None`` when it cannot be checked now (a schedule or a
  traced value). TypeError for anything that is not a real number."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  if _is_bool(value) or isinstance(value, (str, bytes)) or value is None:
    raise TypeError(f'{name} must be a real number, got {value!r} '
                    f'({type(value).__name__}).')
  if np.ndim(value) != 0:
    raise TypeError(f'{name} must be a scalar, got an array of shape {np.shape(value)}.')
  if np.iscomplexobj(value):
    raise TypeError(f'{name} must be a real number, got complex {value!r}.')
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    if isinstance(e, jax.errors.ConcretizationTypeError):
      return None
    raise TypeError(f'{name} must be a real number, got {value!r} '
                    f'({type(value).__name__}).') from None


def check_nonnegative(name: str, value):
  """A finite number >= 0 (or a schedule)."""
  v = concrete_float(value, name)
  if v is not None and not (math.isfinite(v) and v >= 0):
    raise ValueError(f'{name} must be >= 0 and finite, got {value}.')


def check_positive(name: str, value):
  """A finite number > 0 (or a schedule)."""
  v = concrete_float(value, name)
  if v is not None and not (math.isfinite(v) and v > 0):
    raise ValueError(f'{name} must be > 0 and finite, got {value}.')


def check_unit_interval(name: str, value, *, include_one: bool):
  """``value`` in [0, 1] (``include_one``) or [0, 1)."""
  v = concrete_float(value, name)
  if v is not None and not (0.0 <= v <= 1.0 if include_one else 0.0 <= v < 1.0):
    raise ValueError(f'{name} must be in [0, 1{"]" if include_one else ")"}, got {value}.')


def check_positive_int(name: str, value) -> int:
  """A Python or numpy integer > 0 (not a bool); returns it as ``int``."""
  if _is_bool(value) or not isinstance(value, (numbers.Integral, np.integer)):
    raise TypeError(f'{name} must be a positive int, got {value!r} '
                    f'({type(value).__name__}).')
  if value <= 0:
    raise ValueError(f'{name} must be a positive int, got {value}.')
  return int(value)


def check_bool(name: str, value):
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f'{name} must be a bool, got {value!r} ({type(value).__name__}).')


def check_float_input(name: str, x):
  """An array of real floating dtype (integer, bool and complex inputs are refused:
  normalizing them would silently truncate or drop the imaginary part)."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f'{name} must have a real floating dtype (float16/bfloat16/float32/'
                    f'float64), got {dtype}; cast it first, e.g. x.astype(jnp.float32).')


def check_optimizer(name: str, value, choices):
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f'{name} must be one of {tuple(choices)}, got {value!r}.')


def unit_axes(ndim: int, axis: int):
  """``(unit_axis, reduce_axes)`` of a weight: units along ``axis``, per-unit
  quantities reduce over every other axis."""
  if ndim < 1:
    raise ValueError('a weight needs rank >= 1.')
  if _is_bool(axis) or not isinstance(axis, (numbers.Integral, np.integer)):
    raise TypeError(f'axis must be an int, got {axis!r}.')
  if not -ndim <= axis < ndim:
    raise ValueError(f'axis={axis} is out of range for an input of rank {ndim}.')
  unit = int(axis) % ndim
  return unit, tuple(a for a in range(ndim) if a != unit)


def unit_axes_of(w, axis: int):
  return unit_axes(jnp.ndim(w), axis)


def key_names(path) -> list:
  """The plain names of a pytree key path (dict keys, attribute names, indices),
  as ``jax.tree_util.keystr(..., simple=True)`` gives them in jax >= 0.5.1."""
  names = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return names


def path_str(path, separator: str = '/') -> str:
  """``'conv/kernel'`` for the key path of ``params['conv']['kernel']``."""
  return separator.join(key_names(path))
