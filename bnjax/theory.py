"""Closed-form predictions for scale-invariant weights under weight decay.

All formulas are per unit (one output feature, ``fan_in`` = C weights) and
use ``weight_decay`` = lambda with gradient ``lambda * w`` (penalty
``lambda/2 * ||w||^2``). van Laarhoven (2017) writes ``lambda * ||w||^2``;
his lambda is half of ours.

``g~`` below is the gradient at unit weight norm: for a scale-invariant
weight ``grad L(w) = g~ / ||w||`` (and ``<g~, w> = 0``).

Sources: van Laarhoven 2017 (arXiv 1706.05350); Wan et al. 2021, "Spherical
Motion Dynamics" (arXiv 2006.08419); Kosson et al. 2024, "Rotational
Equilibrium" (arXiv 2305.17212); Loshchilov & Hutter 2019 (AdamW); Luo et
al. 2019 (arXiv 1809.00846).
"""

import math

import jax
import jax.numpy as jnp

from bnjax._validation import (check_nonnegative, check_optimizer, check_positive,
                               check_positive_int, check_unit_interval)

SGD_LIKE = ('sgd', 'momentum')  # 'momentum' is an alias of 'sgd' (momentum argument)
EQUILIBRIUM_OPTIMIZERS = ('sgd', 'momentum', 'adamw', 'adam_l2')
OPTIMIZERS = EQUILIBRIUM_OPTIMIZERS + ('adam',)


def effective_learning_rate(learning_rate, weight_norm, optimizer: str):
  r"""Learning rate of the direction ``w / ||w||`` of a scale-invariant weight.

  SGD (and SGD with momentum): ``lr / ||w||^2``, since the gradient scales
  as ``1/||w||`` and the angle moved as ``step / ||w||``.
  Adam (Adam+L2, AdamW): ``lr / ||w||``, since Adam's step does not scale
  with the gradient (van Laarhoven 2017, section 3; Hoffer et al. 2018).

  .. math::
    \eta_\text{eff} = \eta / \lVert w \rVert^2 \ \text{(SGD)}, \qquad
    \eta_\text{eff} = \eta / \lVert w \rVert \ \text{(Adam)}

  Args:
    learning_rate: eta >= 0.
    weight_norm: ||w|| >= 0 (an array: one value per unit).
    optimizer: ``'sgd'`` (``'momentum'``), ``'adam'``, ``'adamw'``, ``'adam_l2'``.

  Returns:
    The effective learning rate, shaped like ``weight_norm``.

  Example:
    >>> from bnjax import theory
    >>> round(float(theory.effective_learning_rate(0.1, 2.0, 'sgd')), 6)
    0.025
    >>> round(float(theory.effective_learning_rate(0.1, 2.0, 'adam')), 6)
    0.05

  References:
    van Laarhoven 2017, arXiv 1706.05350, eq. 9 (SGD) and section 3.3 (Adam).
  """
  check_optimizer('optimizer', optimizer, OPTIMIZERS)
  power = 2 if optimizer in SGD_LIKE else 1
  check_nonnegative('learning_rate', learning_rate)
  norm = jnp.asarray(weight_norm)
  if not jnp.issubdtype(norm.dtype, jnp.floating) and not jnp.issubdtype(
      norm.dtype, jnp.integer):
    raise TypeError(f'weight_norm must be real, got dtype {norm.dtype}.')
  if not isinstance(norm, jax.core.Tracer) and bool(jnp.any(norm < 0)):
    raise ValueError(f'weight_norm must be >= 0 (a norm), got {weight_norm}.')
  return learning_rate / norm ** power


def _adam_step_rms(b1):
  """RMS per coordinate of Adam's step ``m / sqrt(v)`` for i.i.d. gradient noise."""
  return math.sqrt((1.0 - b1) / (1.0 + b1))


def equilibrium_norm(optimizer: str, learning_rate, weight_decay, *, fan_in,
                     grad_norm=None, momentum=0.0, b1=0.9):
  r"""Per-unit weight norm at which decay and gradient growth balance.

  .. math::
    \lVert w^* \rVert_{\mathrm{SGD}} = \Big(\frac{\eta\, \mathbb{E}\lVert \tilde g \rVert^2}{2\lambda (1 - a)}\Big)^{1/4}, \quad
    \lVert w^* \rVert_{\mathrm{AdamW}} = \sqrt{\frac{\eta C}{2\lambda}}, \quad
    \lVert w^* \rVert_{\mathrm{Adam+L2}} = \Big(\frac{\eta C \sigma}{2\lambda}\Big)^{1/3}

  ``grad_norm = sqrt(E||g~||^2)`` is the gradient norm at unit weight norm
  and ``sigma = ||g~|| / sqrt(C)``. Adam + L2: radial shrink
  ``lr * lambda * ||w||^2 / sigma`` per step against Pythagorean growth
  ``lr^2 * C`` of ``||w||^2``.

  Args:
    optimizer: ``'sgd'`` (as ``optax.sgd``; ``'momentum'`` is an alias),
      ``'adamw'`` or ``'adam_l2'``.
    learning_rate: ``eta`` > 0.
    weight_decay: ``lambda`` > 0.
    fan_in: ``C``, inputs per unit.
    grad_norm: gradient norm at unit weight norm (not needed for ``'adamw'``).
    momentum: ``a`` in [0, 1) (SGD).
    b1: Adam's first-moment decay in [0, 1).

  Returns:
    The per-unit norm ``||w*||`` (a float).

  Example:
    >>> from bnjax import theory
    >>> round(theory.equilibrium_norm('adamw', 1e-3, 0.1, fan_in=512), 4)
    1.6
    >>> round(theory.equilibrium_norm('sgd', 0.1, 5e-4, fan_in=512, grad_norm=22.6,
    ...                               momentum=0.9), 2)
    26.73

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419, Theorem 1;
    Kosson, Messmer & Jaggi, "Rotational Equilibrium", 2024, arXiv
    2305.17212, eq. 7 (AdamW).
  """
  _check_common(optimizer, learning_rate, weight_decay, momentum, b1)
  check_positive('fan_in', fan_in)
  if optimizer == 'adamw':
    return math.sqrt(learning_rate * fan_in / (2.0 * weight_decay))
  if grad_norm is None:
    raise ValueError(f"equilibrium_norm('{optimizer}') needs grad_norm, the norm of "
                     f'the gradient at unit weight norm.')
  check_positive('grad_norm', grad_norm)
  if optimizer in SGD_LIKE:
    return (learning_rate * grad_norm ** 2 /
            (2.0 * weight_decay * (1.0 - momentum))) ** 0.25
  sigma = grad_norm / math.sqrt(fan_in)
  return (learning_rate * fan_in * sigma / (2.0 * weight_decay)) ** (1.0 / 3.0)


def _sqrt(x):
  """``math.sqrt`` for Python numbers, ``jnp.sqrt`` for arrays and tracers."""
  return jnp.sqrt(x) if isinstance(x, (jax.Array, jax.core.Tracer)) else math.sqrt(x)


def equilibrium_angular_update(optimizer: str, learning_rate, weight_decay, *,
                               momentum=0.0, b1=0.9, fan_in=None, grad_norm=None):
  r"""Expected per-step angle (radians) of each unit's weight at equilibrium.

  .. math::
    \Delta\theta^*_{\mathrm{SGD}} = \sqrt{\frac{2\eta\lambda}{1 + a}}, \qquad
    \Delta\theta^*_{\mathrm{AdamW}} = \sqrt{2\eta\lambda\,\frac{1 - \beta_1}{1 + \beta_1}}, \qquad
    \Delta\theta^*_{\mathrm{Adam+L2}} = \frac{\eta \sqrt{C (1 - \beta_1)/(1 + \beta_1)}}{\lVert w^* \rVert}

  ``'momentum'`` is an alias of ``'sgd'``. The Adam + L2 angle needs
  ``fan_in`` and ``grad_norm`` (through the equilibrium norm); it scales as
  ``(lr^2 * lambda)^(1/3)``.

  Args:
    optimizer: ``'sgd'`` (``'momentum'``), ``'adamw'`` or ``'adam_l2'``.
    learning_rate: ``eta`` > 0.
    weight_decay: ``lambda`` > 0.
    momentum: ``a`` in [0, 1) (SGD).
    b1: Adam's first-moment decay in [0, 1).
    fan_in: ``C``, inputs per unit (``'adam_l2'``).
    grad_norm: per-unit gradient norm at unit weight norm (``'adam_l2'``).

  Returns:
    The expected angle per step, radians (a float; an array for array or
    traced inputs, e.g. a scheduled learning rate inside ``jit``).

  Example:
    >>> from bnjax import theory
    >>> round(theory.equilibrium_angular_update('sgd', 0.1, 5e-4, momentum=0.9), 5)
    0.00725
    >>> round(theory.equilibrium_angular_update('adamw', 1e-3, 0.1), 5)
    0.00324

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419,
    Theorem 1; Kosson, Messmer & Jaggi, "Rotational Equilibrium", 2024, arXiv
    2305.17212, Table 1.
  """
  _check_common(optimizer, learning_rate, weight_decay, momentum, b1)
  if optimizer in SGD_LIKE:
    return _sqrt(2.0 * learning_rate * weight_decay / (1.0 + momentum))
  if optimizer == 'adamw':
    return _sqrt(2.0 * learning_rate * weight_decay * (1.0 - b1) / (1.0 + b1))
  if fan_in is None or grad_norm is None:
    raise ValueError("equilibrium_angular_update('adam_l2') needs fan_in and grad_norm.")
  norm = equilibrium_norm('adam_l2', learning_rate, weight_decay, fan_in=fan_in,
                          grad_norm=grad_norm, b1=b1)
  return learning_rate * math.sqrt(fan_in) * _adam_step_rms(b1) / norm


def _check_common(optimizer, learning_rate, weight_decay, momentum, b1):
  check_optimizer('optimizer', optimizer, EQUILIBRIUM_OPTIMIZERS)
  check_positive('learning_rate', learning_rate)
  check_positive('weight_decay', weight_decay)
  check_unit_interval('momentum', momentum, include_one=False)
  check_unit_interval('b1', b1, include_one=False)


def gamma_decay_strength(batch_size: int, activation: str) -> float:
  r"""Luo et al. (2019): BN's implicit regularization of its scale gamma.

  .. math::
    \mathcal{L}_{\mathrm{BN}} \approx \mathcal{L}_{\mathrm{PN}} + \zeta\gamma^2, \qquad
    \zeta = \frac{1}{2M}\ (\text{linear}), \quad \frac{1}{4M}\ (\text{ReLU})

  BN with batch size ``M`` behaves like population normalization plus an
  explicit penalty on gamma (their Figure 1).

  Args:
    batch_size: ``M``, a positive int.
    activation: ``'linear'`` or ``'relu'``.

  Returns:
    zeta, a float.

  Example:
    >>> from bnjax import theory
    >>> theory.gamma_decay_strength(32, 'relu')
    0.0078125

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2 and Figure 1.
  """
  batch_size = check_positive_int('batch_size', batch_size)
  if activation == 'linear':
    return 1.0 / (2 * batch_size)
  if activation == 'relu':
    return 1.0 / (4 * batch_size)
  raise ValueError(f"activation must be 'linear' or 'relu', got {activation!r}.")
