"""Argument checks shared by bnjax's modules: ValueErrors that name the problem."""

import jax.numpy as jnp


def concrete_float(value):
  """``float(value)``, or ``None`` when it cannot be checked now: a schedule
  (callable) or a traced value (under ``jit`` or ``optax.inject_hyperparams``)."""
  if callable(value):
    return None
  try:
    return float(value)
  except TypeError:  # includes jax.errors.ConcretizationTypeError
    return None


def check_nonnegative(name: str, value):
  v = concrete_float(value)
  if v is not None and not v >= 0:
    raise ValueError(f'{name} must be >= 0, got {value}.')


def check_positive(name: str, value):
  v = concrete_float(value)
  if v is not None and not v > 0:
    raise ValueError(f'{name} must be > 0, got {value}.')


def check_unit_interval(name: str, value, *, include_one: bool):
  """``value`` in [0, 1] (``include_one``) or [0, 1)."""
  v = concrete_float(value)
  if v is not None and not (0.0 <= v <= 1.0 if include_one else 0.0 <= v < 1.0):
    raise ValueError(f'{name} must be in [0, 1{"]" if include_one else ")"}, got {value}.')


def unit_axes(ndim: int, axis: int):
  """``(unit_axis, reduce_axes)`` of a weight: units along ``axis``, per-unit
  quantities reduce over every other axis."""
  if ndim < 1:
    raise ValueError('a weight needs rank >= 1.')
  if not -ndim <= axis < ndim:
    raise ValueError(f'axis={axis} is out of range for an input of rank {ndim}.')
  unit = axis % ndim
  return unit, tuple(a for a in range(ndim) if a != unit)


def unit_axes_of(w, axis: int):
  return unit_axes(jnp.ndim(w), axis)
