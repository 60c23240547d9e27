"""Closed-form predictions for scale-invariant weights under weight decay.

All formulas are per unit (one output feature, ``fan_in`` = C weights) and
use ``weight_decay`` = lambda with gradient ``lambda * w`` (penalty
``lambda/2 * ||w||^2``). van Laarhoven (2017) writes ``lambda * ||w||^2``;
his lambda is half of ours.

``g~`` below is the gradient at unit weight norm: for a scale-invariant
weight ``grad L(w) = g~ / ||w||`` (and ``<g~, w> = 0``).

AdamP and SGDP (Heo et al. 2021) decay a unit they find scale-invariant by
``lambda' = lambda * wd_ratio`` per step (SGDP: divided by ``1 - a``) and
remove the radial part of its step. That part is not zero under momentum:
the step correlates with the earlier steps the weight is made of, and for
AdamW and SGD + L2 that correlation is a factor ``(1 + b)/(1 - b)`` of the
norm's growth. Without it AdamP's equilibrium angle is ``sqrt(2 lr lambda')``
(AdamW's: ``sqrt(2 lr lambda (1 - b1)/(1 + b1))``) and SGDP's ``sqrt(2 lr
lambda' / (1 - a))`` (SGD's: ``sqrt(2 lr lambda / (1 + a))``); measured on
bnjax's ``adamp``/``sgdp`` in ``tests/test_theory.py``. A projected weight
(:func:`bnjax.transforms.unit_norm_projection`) has no equilibrium: its angle
is set by the learning rate alone (:func:`projected_angular_update`); a
rotational optimizer holds its angle at the equilibrium value from the first
step (:func:`rotational_angular_update`).

Sources: van Laarhoven 2017 (arXiv 1706.05350); Wan et al. 2021, "Spherical
Motion Dynamics" (arXiv 2006.08419); Kosson et al. 2024, "Rotational
Equilibrium" (arXiv 2305.17212); Loshchilov & Hutter 2019 (AdamW); Heo et
al. 2021, "AdamP" (arXiv 2006.08217); Luo et al. 2019 (arXiv 1809.00846).
"""

import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from bnjax._validation import (check_nonnegative, check_optimizer, check_positive,
                               check_positive_int, check_unit_interval)

SGD_LIKE = ('sgd', 'momentum')  # 'momentum' is an alias of 'sgd' (momentum argument)
PROJECTED_DECOUPLED = ('adamp', 'sgdp')  # Heo et al. 2021: decay lambda * wd_ratio
EQUILIBRIUM_OPTIMIZERS = ('sgd', 'momentum', 'adamw', 'adam_l2', *PROJECTED_DECOUPLED)
OPTIMIZERS = ('sgd', 'momentum', 'adamw', 'adam_l2', 'adam')
WD_RATIO = 0.1  # AdamP's and SGDP's default (Heo et al. 2021, Algorithm 1)


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
                     grad_norm=None, momentum=0.0, b1=0.9, wd_ratio=WD_RATIO):
  r"""Per-unit weight norm at which decay and gradient growth balance.

  .. math::
    \lVert w^* \rVert_{\mathrm{SGD}} = \Big(\frac{\eta\, \mathbb{E}\lVert \tilde g \rVert^2}{2\lambda (1 - a)}\Big)^{1/4}, \quad
    \lVert w^* \rVert_{\mathrm{AdamW}} = \sqrt{\frac{\eta C}{2\lambda}}, \quad
    \lVert w^* \rVert_{\mathrm{Adam+L2}} = \Big(\frac{\eta C \sigma}{2\lambda}\Big)^{1/3}, \\
    \lVert w^* \rVert_{\mathrm{AdamP}} = \sqrt{\frac{\eta C (1 - \beta_1)}{2\lambda' (1 + \beta_1)}}, \quad
    \lVert w^* \rVert_{\mathrm{SGDP}} = \Big(\frac{\eta\, \mathbb{E}\lVert \tilde g \rVert^2}{2\lambda' (1 + a)}\Big)^{1/4}

  with :math:`\lambda' = \lambda \cdot` ``wd_ratio`` (the module docstring).
  ``grad_norm = sqrt(E||g~||^2)`` is the gradient norm at unit weight norm
  and ``sigma = ||g~|| / sqrt(C)``. Adam + L2: radial shrink
  ``lr * lambda * ||w||^2 / sigma`` per step against Pythagorean growth
  ``lr^2 * C`` of ``||w||^2``.

  Args:
    optimizer: ``'sgd'`` (as ``optax.sgd``; ``'momentum'`` is an alias),
      ``'adamw'``, ``'adam_l2'``, ``'adamp'`` or ``'sgdp'``.
    learning_rate: ``eta`` > 0.
    weight_decay: ``lambda`` > 0 (as passed to the optimizer).
    fan_in: ``C``, inputs per unit.
    grad_norm: gradient norm at unit weight norm (not needed for ``'adamw'``
      and ``'adamp'``).
    momentum: ``a`` in [0, 1) (SGD, SGDP).
    b1: Adam's first-moment decay in [0, 1).
    wd_ratio: AdamP's and SGDP's decay factor on the weights they project.

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
  optimizer, weight_decay = _check_common(optimizer, learning_rate, weight_decay,
                                          momentum, b1, wd_ratio)
  check_positive('fan_in', fan_in)
  if optimizer == 'adamw':
    return math.sqrt(learning_rate * fan_in / (2.0 * weight_decay))
  if optimizer == 'adamp':
    return math.sqrt(learning_rate * fan_in / (2.0 * weight_decay)) * _adam_step_rms(b1)
  if grad_norm is None:
    raise ValueError(f"equilibrium_norm('{optimizer}') needs grad_norm, the norm of "
                     f'the gradient at unit weight norm.')
  check_positive('grad_norm', grad_norm)
  if optimizer in SGD_LIKE:
    return (learning_rate * grad_norm ** 2 /
            (2.0 * weight_decay * (1.0 - momentum))) ** 0.25
  if optimizer == 'sgdp':
    return (learning_rate * grad_norm ** 2 / (2.0 * weight_decay * (1.0 + momentum))) ** 0.25
  return _adam_l2_norm(learning_rate, weight_decay, fan_in, grad_norm / math.sqrt(fan_in))


def _adam_l2_norm(learning_rate, weight_decay, fan_in, sigma):
  """Adam + L2's equilibrium norm ``(lr C sigma / (2 lambda))^(1/3)`` (arrays too)."""
  return (learning_rate * fan_in * sigma / (2.0 * weight_decay)) ** (1.0 / 3.0)


def _sqrt(x):
  """``math.sqrt`` for Python numbers, ``jnp.sqrt`` for arrays and tracers."""
  return jnp.sqrt(x) if isinstance(x, (jax.Array, jax.core.Tracer)) else math.sqrt(x)


def equilibrium_angular_update(optimizer: str, learning_rate, weight_decay, *,
                               momentum=0.0, b1=0.9, fan_in=None, grad_norm=None,
                               wd_ratio=WD_RATIO):
  r"""Expected per-step angle (radians) of each unit's weight at equilibrium.

  .. math::
    \Delta\theta^*_{\mathrm{SGD}} = \sqrt{\frac{2\eta\lambda}{1 + a}}, \qquad
    \Delta\theta^*_{\mathrm{AdamW}} = \sqrt{2\eta\lambda\,\frac{1 - \beta_1}{1 + \beta_1}}, \qquad
    \Delta\theta^*_{\mathrm{Adam+L2}} = \frac{\eta \sqrt{C (1 - \beta_1)/(1 + \beta_1)}}{\lVert w^* \rVert}

  ``'momentum'`` is an alias of ``'sgd'``. The Adam + L2 angle needs
  ``fan_in`` and ``grad_norm`` (through the equilibrium norm); it scales as
  ``(lr^2 * lambda)^(1/3)``. AdamP and SGDP, with
  :math:`\lambda' = \lambda \cdot` ``wd_ratio``: :math:`\sqrt{2\eta\lambda'}` and
  :math:`\sqrt{2\eta\lambda'/(1 - a)}` (their projection removes the growth
  that momentum's correlated steps add; the module docstring). A projected or rotational
  weight has no equilibrium to reach: :func:`projected_angular_update` and
  :func:`rotational_angular_update` give their angles.

  Args:
    optimizer: ``'sgd'`` (``'momentum'``), ``'adamw'``, ``'adam_l2'``,
      ``'adamp'`` or ``'sgdp'``.
    learning_rate: ``eta`` > 0.
    weight_decay: ``lambda`` > 0 (as passed to the optimizer).
    momentum: ``a`` in [0, 1) (SGD, SGDP).
    b1: Adam's first-moment decay in [0, 1).
    fan_in: ``C``, inputs per unit (``'adam_l2'``).
    grad_norm: per-unit gradient norm at unit weight norm (``'adam_l2'``).
    wd_ratio: AdamP's and SGDP's decay factor on the weights they project.

  Returns:
    The expected angle per step, radians (a float; an array for array or
    traced inputs, e.g. a scheduled learning rate inside ``jit``).

  Example:
    >>> from bnjax import theory
    >>> round(theory.equilibrium_angular_update('sgd', 0.1, 5e-4, momentum=0.9), 5)
    0.00725
    >>> round(theory.equilibrium_angular_update('adamw', 1e-3, 0.1), 5)
    0.00324
    >>> round(theory.equilibrium_angular_update('adamp', 1e-3, 1.0), 5)  # wd_ratio 0.1
    0.01414

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419,
    Theorem 1; Kosson, Messmer & Jaggi, "Rotational Equilibrium", 2024, arXiv
    2305.17212, Table 1; Heo et al., "AdamP", ICLR 2021, arXiv 2006.08217,
    Algorithms 1-2 (the decay on projected weights).
  """
  optimizer, weight_decay = _check_common(optimizer, learning_rate, weight_decay,
                                          momentum, b1, wd_ratio)
  if optimizer in SGD_LIKE:
    return _sqrt(2.0 * learning_rate * weight_decay / (1.0 + momentum))
  if optimizer == 'adamw':
    return _sqrt(2.0 * learning_rate * weight_decay * (1.0 - b1) / (1.0 + b1))
  if optimizer == 'adamp':
    return _sqrt(2.0 * learning_rate * weight_decay)
  if optimizer == 'sgdp':
    return _sqrt(2.0 * learning_rate * weight_decay / (1.0 - momentum))
  if fan_in is None or grad_norm is None:
    raise ValueError("equilibrium_angular_update('adam_l2') needs fan_in and grad_norm.")
  norm = equilibrium_norm('adam_l2', learning_rate, weight_decay, fan_in=fan_in,
                          grad_norm=grad_norm, b1=b1)
  return learning_rate * math.sqrt(fan_in) * _adam_step_rms(b1) / norm


def _per_step_sigma(fan_in, grad_norm):
  """Adam + L2's per-coordinate gradient RMS at unit norm, ``||g~|| / sqrt(C)``."""
  if fan_in is None or grad_norm is None:
    raise ValueError("optimizer 'adam_l2' needs fan_in and grad_norm.")
  check_positive('fan_in', fan_in)
  check_positive('grad_norm', grad_norm)
  return grad_norm / math.sqrt(fan_in)


def equilibrium_time_constant(optimizer: str, learning_rate, weight_decay, *,
                              momentum=0.0, b1=0.9, fan_in=None, grad_norm=None,
                              wd_ratio=WD_RATIO):
  r"""Steps in which a unit's norm closes a fraction 1 - 1/e of its gap to equilibrium.

  Linearizing the expected recursion of :math:`x = \lVert w \rVert^2`
  (:func:`norm_trajectory`) around its fixed point :math:`x^*`:

  .. math::
    \tau_{\mathrm{SGD}} = \frac{1 - a}{4\eta\lambda}, \qquad
    \tau_{\mathrm{AdamW}} = \frac{1}{2\eta\lambda}, \qquad
    \tau_{\mathrm{Adam+L2}} = \frac{\sigma}{3\eta\lambda\lVert w^*\rVert}

  (AdamP and SGDP: AdamW's and SGD's at :math:`\lambda' = \lambda\cdot` ``wd_ratio``.)

  SGD's gradient growth :math:`\eta^2\lVert\tilde g\rVert^2/x` falls as the
  norm grows, which doubles the rate :math:`2\eta\lambda/(1-a)` of pure
  decay; far above equilibrium (growth negligible) the norm decays with that
  slower rate, :math:`(1-a)/(2\eta\lambda)` steps. Adam + L2's decay acts as
  :math:`\eta\lambda x^{3/2}/\sigma`, so its time constant scales as
  :math:`(\eta^2\lambda)^{-2/3}`.

  Args:
    optimizer: ``'sgd'`` (``'momentum'``), ``'adamw'``, ``'adam_l2'``,
      ``'adamp'`` or ``'sgdp'``.
    learning_rate: ``eta`` > 0 (a float or an array, e.g. a schedule's values).
    weight_decay: ``lambda`` > 0 (as passed to the optimizer).
    momentum: ``a`` in [0, 1) (SGD).
    b1: Adam's first-moment decay (the time constant does not depend on it).
    fan_in, grad_norm: ``C`` and ``||g~||`` (``'adam_l2'`` only).
    wd_ratio: AdamP's and SGDP's decay factor on the weights they project.

  Returns:
    ``tau`` in steps (a float, or an array shaped like ``learning_rate``).

  Example:
    >>> from bnjax import theory
    >>> round(theory.equilibrium_time_constant('sgd', 0.1, 5e-4, momentum=0.9), 6)
    500.0
    >>> round(theory.equilibrium_time_constant('adamw', 1e-3, 0.1), 6)
    5000.0

  References:
    Wan et al., "Spherical Motion Dynamics", 2021, arXiv 2006.08419,
    section 4 (the approach to equilibrium); Kosson, Messmer & Jaggi,
    "Rotational Equilibrium", 2024, arXiv 2305.17212, section 3.2
    (:math:`\tau = 1/(\eta\lambda)` iterations, of the order given here).
  """
  optimizer, weight_decay = _check_common(optimizer, np.min(learning_rate), weight_decay,
                                          momentum, b1, wd_ratio)
  lr = np.asarray(learning_rate, float)
  if optimizer in SGD_LIKE + ('sgdp',):
    tau = (1.0 - momentum) / (4.0 * lr * weight_decay)
  elif optimizer in ('adamw', 'adamp'):
    tau = 1.0 / (2.0 * lr * weight_decay)
  else:
    sigma = _per_step_sigma(fan_in, grad_norm)
    tau = sigma / (3.0 * lr * weight_decay * _adam_l2_norm(lr, weight_decay, fan_in, sigma))
  return float(tau) if tau.ndim == 0 else tau


def time_constants_elapsed(optimizer: str, learning_rates, weight_decay, *, momentum=0.0,
                           b1=0.9, fan_in=None, grad_norm=None, wd_ratio=WD_RATIO):
  r"""Time constants of approach to equilibrium elapsed after each step of a schedule.

  .. math::
    n_t = \sum_{s \le t} \frac{1}{\tau(\eta_s)}

  with :math:`\tau` from :func:`equilibrium_time_constant`. Where
  :math:`n_t \gtrsim 3` and the learning rate changes by a small fraction
  per time constant, the equilibrium of the current :math:`\eta_t` describes
  the run (the equilibrium follows the schedule adiabatically); where
  :math:`n_t < 3` the run is still in its transient.

  Args:
    optimizer, weight_decay, momentum, b1, fan_in, grad_norm, wd_ratio: as
      :func:`equilibrium_time_constant`.
    learning_rates: the learning rate of every step, in order (1-D), each
      >= 0 (a step at rate 0, as a warmup's first, moves nothing: 1/tau = 0).

  Returns:
    A NumPy array like ``learning_rates``: :math:`n_t` after step t.

  Example:
    >>> from bnjax import theory
    >>> round(float(theory.time_constants_elapsed('adamw', [1e-3] * 500, 1.0)[-1]), 6)
    1.0

  References:
    Wan et al. 2021, arXiv 2006.08419, section 4.
  """
  lrs = np.asarray(learning_rates, float)
  if lrs.ndim != 1 or lrs.size == 0:
    raise ValueError(f'learning_rates must be a non-empty 1-D sequence, got shape '
                     f'{lrs.shape}.')
  if not np.all(np.isfinite(lrs) & (lrs >= 0)):
    raise ValueError(f'learning_rates must be finite and >= 0, got {lrs}.')
  rates = np.zeros_like(lrs)
  moving = lrs > 0
  if moving.any():
    rates[moving] = 1.0 / np.atleast_1d(equilibrium_time_constant(
        optimizer, lrs[moving], weight_decay, momentum=momentum, b1=b1, fan_in=fan_in,
        grad_norm=grad_norm, wd_ratio=wd_ratio))
  return np.cumsum(rates)


def norm_trajectory(optimizer: str, learning_rates, weight_decay, initial_norm, *,
                    fan_in, grad_norm=None, momentum=0.0, b1=0.9, wd_ratio=WD_RATIO):
  r"""Expected per-unit weight norm after each step, for any learning-rate schedule.

  Iterates the expected recursion of :math:`x_t = \lVert w_t \rVert^2` whose
  fixed points are :func:`equilibrium_norm`'s (to first order in
  :math:`\eta\lambda`):

  .. math::
    x_{t+1} &= \Big(1 - \tfrac{2\eta_t\lambda}{1-a}\Big) x_t
      + \frac{\eta_t^2 \lVert\tilde g\rVert^2}{(1-a)^2\, x_t}
      && \text{(SGD: decay; gradient } \perp w \text{ of norm } \lVert\tilde g\rVert/\lVert w\rVert) \\
    x_{t+1} &= (1 - 2\eta_t\lambda)\, x_t + \eta_t^2 C && \text{(AdamW)} \\
    x_{t+1} &= x_t - \frac{2\eta_t\lambda}{\sigma} x_t^{3/2} + \eta_t^2 C
      && \text{(Adam + L2)} \\
    x_{t+1} &= (1 - 2\eta_t\lambda')\, x_t + \eta_t^2 C \tfrac{1 - \beta_1}{1 + \beta_1}
      && \text{(AdamP)} \\
    x_{t+1} &= \Big(1 - \tfrac{2\eta_t\lambda'}{1-a}\Big) x_t
      + \frac{\eta_t^2 \lVert\tilde g\rVert^2}{(1-a^2)\, x_t} && \text{(SGDP)}

  Under a constant learning rate it converges to the equilibrium norm with
  time constant :func:`equilibrium_time_constant`; under a schedule it
  follows the current equilibrium with a lag of about one time constant,
  and it describes the transient from the initial norm, where the closed
  forms do not apply. Against bnjax's optimizers on scale-invariant units
  with isotropic gradient noise (``tests/test_theory.py``, a warmup + cosine
  schedule and a constant one, from unit norm): SGD within 2%, AdamW 5%,
  Adam + L2 15%, SGD with momentum 3% once its buffer has filled (the
  recursion's ``lr / (1 - a)`` overstates the first steps).

  Args:
    optimizer: ``'sgd'`` (``'momentum'``), ``'adamw'``, ``'adam_l2'``,
      ``'adamp'`` or ``'sgdp'``.
    learning_rates: each step's learning rate (1-D, >= 0: a warmup may start at 0).
    weight_decay: ``lambda`` > 0 (as passed to the optimizer).
    initial_norm: the per-unit norm before the first step, > 0.
    fan_in: ``C``.
    grad_norm: ``||g~||``, the gradient norm at unit weight norm (SGD, Adam + L2).
    momentum: ``a`` in [0, 1) (SGD, SGDP).
    b1: Adam's first-moment decay in [0, 1) (AdamP).
    wd_ratio: AdamP's and SGDP's decay factor on the weights they project.

  Returns:
    A NumPy array like ``learning_rates``: the norm after each step.

  Example:
    >>> from bnjax import theory
    >>> norms = theory.norm_trajectory('adamw', [1e-3] * 50000, 0.1, 1.0, fan_in=512)
    >>> round(float(norms[-1]), 3), round(theory.equilibrium_norm('adamw', 1e-3, 0.1,
    ...                                                            fan_in=512), 3)
    (1.6, 1.6)

  References:
    van Laarhoven 2017, arXiv 1706.05350, section 3 (the norm's growth by
    orthogonal steps); Wan et al. 2021, arXiv 2006.08419, section 4;
    Kosson et al. 2024, arXiv 2305.17212, section 3.
  """
  lrs = np.asarray(learning_rates, float)
  if lrs.ndim != 1 or lrs.size == 0:
    raise ValueError(f'learning_rates must be a non-empty 1-D sequence, got shape '
                     f'{lrs.shape}.')
  if not (np.all(np.isfinite(lrs)) and np.all(lrs >= 0)):
    raise ValueError('learning_rates must be finite and >= 0.')
  optimizer, weight_decay = _check_common(optimizer, 1.0, weight_decay, momentum, b1,
                                          wd_ratio)
  check_positive('initial_norm', initial_norm)
  check_positive('fan_in', fan_in)
  if optimizer == 'adam_l2':
    sigma = _per_step_sigma(fan_in, grad_norm)
  elif optimizer in SGD_LIKE + ('sgdp',):
    if grad_norm is None:
      raise ValueError(f"norm_trajectory('{optimizer}') needs grad_norm.")
    check_positive('grad_norm', grad_norm)
  x, out = float(initial_norm) ** 2, np.empty_like(lrs)
  for t, lr in enumerate(lrs):
    if optimizer in SGD_LIKE:
      x = (1.0 - 2.0 * lr * weight_decay / (1.0 - momentum)) * x + (
          lr * grad_norm / (1.0 - momentum)) ** 2 / x
    elif optimizer == 'sgdp':
      x = (1.0 - 2.0 * lr * weight_decay / (1.0 - momentum)) * x + (
          lr * grad_norm) ** 2 / ((1.0 - momentum ** 2) * x)
    elif optimizer == 'adamw':
      x = (1.0 - 2.0 * lr * weight_decay) * x + lr ** 2 * fan_in
    elif optimizer == 'adamp':
      x = (1.0 - 2.0 * lr * weight_decay) * x + lr ** 2 * fan_in * _adam_step_rms(b1) ** 2
    else:
      x = x - 2.0 * lr * weight_decay * x ** 1.5 / sigma + lr ** 2 * fan_in
    out[t] = math.sqrt(x)
  return out


_NO_EQUILIBRIUM = {
    'projection': 'a projected weight has no equilibrium: its angle is set by the '
                  'learning rate alone (bnjax.theory.projected_angular_update)',
    'rotational': 'a rotational optimizer holds the angle at its inner optimizer\'s '
                  'equilibrium from the first step (bnjax.theory.rotational_angular_update)',
    'adam': "plain Adam without decay has no equilibrium; name the decay: 'adamw' or "
            "'adam_l2'",
}


def _check_common(optimizer, learning_rate, weight_decay, momentum, b1, wd_ratio=WD_RATIO):
  """Checks the arguments; returns ``(optimizer, weight_decay)`` with AdamP's and
  SGDP's decay on the units they project, ``weight_decay * wd_ratio``."""
  if optimizer in _NO_EQUILIBRIUM:
    raise ValueError(f'optimizer {optimizer!r}: {_NO_EQUILIBRIUM[optimizer]}.')
  check_optimizer('optimizer', optimizer, EQUILIBRIUM_OPTIMIZERS)
  check_positive('learning_rate', learning_rate)
  check_positive('weight_decay', weight_decay)
  check_unit_interval('momentum', momentum, include_one=False)
  check_unit_interval('b1', b1, include_one=False)
  if optimizer in PROJECTED_DECOUPLED:
    check_positive('wd_ratio', wd_ratio)
    return optimizer, weight_decay * wd_ratio
  return optimizer, weight_decay


def projected_angular_update(optimizer: str, learning_rate, *, radius=1.0, momentum=0.0,
                             b1=0.9, fan_in=None, grad_norm=None):
  r"""RMS per-step angle of a unit held at norm ``radius`` by projection.

  A projected weight (:func:`bnjax.transforms.unit_norm_projection`) never
  reaches an equilibrium: its norm is fixed, so its angle is set by the
  learning rate and the gradient alone. For i.i.d. gradients at unit scale
  of norm :math:`\lVert\tilde g\rVert` (the gradient at norm :math:`r` is
  :math:`\tilde g / r`, orthogonal to :math:`w`):

  .. math::
    \Delta\theta_{\mathrm{SGD}} = \arctan\frac{\eta\lVert\tilde g\rVert}{r^2\sqrt{1 - a^2}},
    \qquad
    \Delta\theta_{\mathrm{Adam}} = \arctan\frac{\eta\sqrt{C(1 - \beta_1)/(1 + \beta_1)}}{r}

  (heavy-ball momentum :math:`m = g + a m` has :math:`\mathbb{E}\lVert m\rVert^2
  = \lVert g\rVert^2/(1 - a^2)`; Adam's step has RMS
  :math:`\sqrt{(1-\beta_1)/(1+\beta_1)}` per coordinate). SGD without momentum
  is exact when :math:`\lVert\tilde g\rVert` is constant; with momentum the
  buffer's gradients stay orthogonal to :math:`w` only while the unit turns
  little over the buffer's :math:`1/(1-a)` steps (at 0.05 rad per step and
  :math:`a = 0.9` the angle is 10% below this; at 0.005, within 5%).

  Args:
    optimizer: ``'sgd'`` (``'momentum'``) or ``'adam'`` (``'adamw'``: the decay of
      a projected weight does nothing).
    learning_rate: ``eta`` > 0.
    radius: ``r``, the projection's norm.
    momentum: ``a`` in [0, 1) (SGD).
    b1: Adam's first-moment decay in [0, 1).
    fan_in: ``C`` (Adam).
    grad_norm: ``||g~||``, the gradient norm at unit weight norm (SGD).

  Returns:
    The RMS angle per step, radians.

  Example:
    >>> from bnjax import theory
    >>> round(theory.projected_angular_update('sgd', 1e-3, grad_norm=22.6), 5)
    0.0226
    >>> round(theory.projected_angular_update('adam', 1e-3, fan_in=512), 5)
    0.00519

  References:
    van Laarhoven 2017, arXiv 1706.05350, section 3 (the effective learning
    rate ``lr / r^2``); Kosson, Messmer & Jaggi 2024, arXiv 2305.17212,
    section 3 (Adam's expected step).
  """
  check_optimizer('optimizer', optimizer, ('sgd', 'momentum', 'adam', 'adamw'))
  check_positive('learning_rate', learning_rate)
  check_positive('radius', radius)
  check_unit_interval('momentum', momentum, include_one=False)
  check_unit_interval('b1', b1, include_one=False)
  if optimizer in SGD_LIKE:
    if grad_norm is None:
      raise ValueError(f"projected_angular_update('{optimizer}') needs grad_norm.")
    check_positive('grad_norm', grad_norm)
    step = learning_rate * grad_norm / (radius * math.sqrt(1.0 - momentum ** 2))
  else:
    if fan_in is None:
      raise ValueError(f"projected_angular_update('{optimizer}') needs fan_in.")
    check_positive('fan_in', fan_in)
    step = learning_rate * math.sqrt(fan_in) * _adam_step_rms(b1)
  return math.atan(step / radius)


def rotational_angular_update(optimizer: str, learning_rate, weight_decay, *,
                              momentum=0.0, b1=0.9):
  r"""RMS per-step angle of a unit under :func:`bnjax.transforms.rotational`.

  The rotational wrapper scales each unit's step to :math:`\eta_r` times its
  norm, with :math:`\eta_r` the inner optimizer's equilibrium angle
  (:func:`equilibrium_angular_update`), so it rotates at

  .. math::
    \Delta\theta = \arctan \eta_r

  from the first step (in mean square: the step divided by the running RMS of
  its size). The norm does not move.

  Args:
    optimizer: the inner optimizer, ``'sgd'`` or ``'adamw'``.
    learning_rate: ``eta`` > 0.
    weight_decay: ``lambda`` > 0.
    momentum: ``a`` in [0, 1) (SGD).
    b1: Adam's first-moment decay in [0, 1).

  Returns:
    The angle per step, radians.

  Example:
    >>> from bnjax import theory
    >>> round(theory.rotational_angular_update('adamw', 1e-3, 0.1), 5)
    0.00324

  References:
    Kosson, Messmer & Jaggi, "Rotational Equilibrium", 2024, arXiv 2305.17212,
    Algorithm 1 and Table 1.
  """
  check_optimizer('optimizer', optimizer, ('sgd', 'adamw'))
  return math.atan(equilibrium_angular_update(optimizer, learning_rate, weight_decay,
                                              momentum=momentum, b1=b1))


def gamma_decay_strength(batch_size: int, activation: str) -> float:
  r"""Luo et al. (2019): BN's implicit regularization of its scale gamma.

  .. math::
    \mathcal{L}_{\mathrm{BN}} \approx \mathcal{L}_{\mathrm{PN}} + \zeta\gamma^2, \qquad
    \zeta = \frac{1}{2M}\ (\text{linear}), \quad \frac{1}{4M}\ (\text{ReLU})

  BN with batch size ``M`` behaves like population normalization plus an
  explicit penalty on gamma (their Figure 1). These constants are the noise of
  the batch mean alone; with the batch σ's noise the constant of an MSE
  student is 3/2 of them (:func:`gamma_decay_second_order`).

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


def gamma_decay_second_order(batch_size, activation: str) -> float:
  r"""BN's implicit gamma decay to order 1/M, batch-mean and batch-sigma noise together.

  For a unit whose pre-activation, standardized over the population, is
  Gaussian, batch normalization over ``M`` examples feeding an MSE loss
  (without the 1/2) at the population optimum (the student aligned with its
  teacher) acts as population normalization plus :math:`\zeta\gamma^2` with

  .. math::

    \zeta = \frac{3}{4M}\ (\text{linear}), \qquad \frac{3}{8M}\ (\text{ReLU}).

  Of the linear :math:`3/(4M)`, :math:`1/(2M)` is the noise of the batch
  mean (Luo et al.'s Figure-1 constant, :func:`gamma_decay_strength`) and
  :math:`1/(4M)` that of the batch sigma (Bessel's bias of the biased
  variance, and Jensen's inequality on its square root). The derivation
  expands the batch-normalized :math:`\hat a_i = (a_i - \bar a)/s` to second
  order in :math:`\bar a \sim N(0, 1/M)` and :math:`\Delta = s^2 - 1`, with
  :math:`E[\Delta \mid a_i] = (a_i^2 - 2)/M` and :math:`E[\Delta^2] = 2/M`.
  For :math:`g(a, y) = (f(\gamma a + \beta) - y)\, f'\, a`, the per-example
  half-gradient in :math:`\gamma`,

  .. math::

    M\,(E[g(\hat a)] - E[g(a)]) = \tfrac34 E[g_a a] - \tfrac12 E[g_a a^3] + \tfrac12 E[g_{aa}] + \tfrac14 E[g_{aa} a^2] = M \zeta \gamma

  which is :math:`3\gamma/4` for :math:`f(z) = z` and :math:`3\gamma/8` for
  :math:`f(z) = \max(z, 0)` at :math:`y = f(\gamma a) + \varepsilon`. For the
  linear unit the exact value is :math:`1/E[s_B] - 1`, with
  :math:`M s_B^2 \sim \chi^2_{M-1}`: 0.862/M at M = 8. ``tests/test_theory.py``
  checks both constants by Monte Carlo over Gaussian batches. A batch drawn
  without replacement from a finite training set of ``P`` examples behaves as
  :func:`effective_batch` draws; pass that (a float) as ``batch_size``.

  Args:
    batch_size: ``M`` > 0 (an int, or an effective batch size).
    activation: ``'linear'`` or ``'relu'``.

  Returns:
    zeta, a float.

  Example:
    >>> from bnjax import theory
    >>> theory.gamma_decay_second_order(32, 'linear') * 32
    0.75
    >>> theory.gamma_decay_second_order(32, 'relu') / theory.gamma_decay_strength(32, 'relu')
    1.5

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2 (the decomposition
    BN = PN + gamma decay, whose Figure-1 constants keep the batch-mean term).
  """
  check_positive('batch_size', batch_size)
  if activation == 'linear':
    return 3.0 / (4.0 * batch_size)
  if activation == 'relu':
    return 3.0 / (8.0 * batch_size)
  raise ValueError(f"activation must be 'linear' or 'relu', got {activation!r}.")


def effective_batch(batch_size: int, population: int) -> float:
  r"""The number of independent draws whose mean varies as a batch drawn without
  replacement from a finite training set.

  .. math::
    M_\text{eff} = M\,\frac{P - 1}{P - M}

  A batch of M of P points has mean variance :math:`\sigma^2 (P - M) / (M (P -
  1))`; infinite for ``M = P`` (the batch is the whole set: its statistics are
  fixed). Batch norm's implicit gamma decay :func:`gamma_decay_strength`
  assumes independent draws, so on a finite set its M is this one.

  Args:
    batch_size: ``M``, a positive int.
    population: ``P >= M``.

  Returns:
    ``M_eff``, a float (``inf`` when ``M = P``).

  Example:
    >>> from bnjax import theory
    >>> round(theory.effective_batch(32, 256), 2)
    36.43

  References:
    Cochran, "Sampling Techniques", 3rd ed., 1977, Theorem 2.2 (finite
    population correction).
  """
  batch_size = check_positive_int('batch_size', batch_size)
  population = check_positive_int('population', population)
  if population < batch_size:
    raise ValueError(f'population must be >= batch_size, got {population} < {batch_size}.')
  if batch_size == population:
    return math.inf
  return batch_size * (population - 1) / (population - batch_size)


class ExponentialLR(typing.NamedTuple):
  """:func:`exponential_lr_equivalent`'s schedule and how the two runs relate."""
  learning_rates: np.ndarray  # the learning rate of each step, without weight decay
  alpha: float  # w_t = alpha**t * w~_t (the decayed run's weights are the shrunk ones)
  initial_momentum: float  # start the momentum buffer at this times w_0 (0 for SGD)


def exponential_lr_equivalent(learning_rate, weight_decay, *, momentum=0.0,
                              steps: int) -> ExponentialLR:
  r"""The exponentially growing learning rate that replaces weight decay on
  scale-invariant weights (Li & Arora 2020).

  SGD with L2 (gradient ``g + lambda w``) and heavy-ball momentum ``a``,
  :math:`v_{t+1} = a v_t + g_t + \lambda w_t,\ w_{t+1} = w_t - \eta v_{t+1}`,
  on weights where :math:`g(c w) = g(w)/c` is the same run as momentum SGD
  *without* weight decay under

  .. math::
    \tilde\eta_t = \eta\,\alpha^{-2t-1}, \qquad
    \alpha^2 - (1 + a - \eta\lambda)\,\alpha + a = 0 \ (\text{the larger root}),

  in the sense :math:`w_t = \alpha^t \tilde w_t`: the same directions, the
  decayed run's norms :math:`\alpha^t` times the other's. Without momentum
  :math:`\alpha = 1 - \eta\lambda`. With momentum the second run's buffer
  starts at :math:`\tilde v_0 = \frac{\alpha - 1 + \eta\lambda}{\eta a} w_0`
  (``initial_momentum * w_0``) where the first's starts at 0, so that the
  two agree from the first step (the paper's momentum form, in optax's
  ``trace`` convention: ``optax.sgd(schedule, momentum=a)``). The root is
  real when :math:`\eta\lambda \le (1 - \sqrt a)^2`.

  Args:
    learning_rate: ``eta`` > 0 of the run with weight decay.
    weight_decay: ``lambda`` > 0 (coupled, as ``optax.add_decayed_weights``
      before the momentum).
    momentum: ``a`` in [0, 1).
    steps: the number of steps to give rates for.

  Returns:
    An :class:`ExponentialLR`: ``learning_rates`` (NumPy, ``(steps,)``),
    ``alpha`` and ``initial_momentum``.

  Raises:
    ValueError: ``eta * lambda > (1 - sqrt(a))^2`` (no real alpha), or a
      non-positive rate, decay or step count.

  Example:
    >>> from bnjax import theory
    >>> s = theory.exponential_lr_equivalent(0.1, 0.01, steps=3)
    >>> round(s.alpha, 6), [round(float(v), 6) for v in s.learning_rates]
    (0.999, [0.1001, 0.100301, 0.100502])

  References:
    Li & Arora, "An Exponential Learning Rate Schedule for Deep Learning",
    ICLR 2020, arXiv 1910.07454, section 2 (fixed LR and WD as an
    exponential LR; with momentum, :math:`\alpha` a root of
    :math:`x^2 - (1 + \gamma - \lambda\eta)x + \gamma`). The starting
    buffer :math:`\tilde v_0` in optax's convention is derived here from
    the two recursions, and ``tests/test_timescales.py`` trains both runs.
  """
  check_positive('learning_rate', learning_rate)
  check_positive('weight_decay', weight_decay)
  check_unit_interval('momentum', momentum, include_one=False)
  steps = check_positive_int('steps', steps)
  lr, wd, a = float(learning_rate), float(weight_decay), float(momentum)
  b = 1.0 + a - lr * wd
  disc = b * b - 4.0 * a
  if disc < 0:
    raise ValueError(f'learning_rate * weight_decay = {lr * wd:g} exceeds (1 - sqrt(momentum))^2 '
                     f'= {(1 - math.sqrt(a)) ** 2:g}: no real alpha, no exponential equivalent.')
  alpha = (b + math.sqrt(disc)) / 2.0
  rates = lr * alpha ** (-2.0 * np.arange(steps) - 1.0)
  start = 0.0 if a == 0 else (alpha - 1.0 + lr * wd) / (lr * a)
  return ExponentialLR(rates, alpha, start)


def ema_timescale(learning_rate, weight_decay, steps_per_epoch=None):
  r"""AdamW's weights as an exponential moving average: its timescale.

  Decoupled decay multiplies the weights by :math:`1 - \eta\lambda` each
  step, so they average the updates over

  .. math::
    \tau_\text{iter} = \frac{1}{\eta\lambda}, \qquad
    \tau_\text{epoch} = \frac{\tau_\text{iter}}{\text{steps per epoch}}

  (Wang & Aitchison 2024); the best :math:`\tau_\text{epoch}` is found
  roughly constant across model and dataset size.

  Args:
    learning_rate: ``eta`` > 0 (a float or an array, e.g. a schedule's values).
    weight_decay: ``lambda`` > 0 (optax's ``adamw`` ``weight_decay``).
    steps_per_epoch: optional, > 0: the timescale in epochs instead of steps.

  Returns:
    :math:`\tau_\text{iter}` (or :math:`\tau_\text{epoch}`): a float, or an
    array shaped like the inputs.

  Example:
    >>> from bnjax import theory
    >>> theory.ema_timescale(1e-3, 0.1), theory.ema_timescale(1e-3, 0.1, 100)
    (10000.0, 100.0)

  References:
    Wang & Aitchison, "How to set AdamW's weight decay as you scale model
    and dataset size", 2024, arXiv 2405.13698, section 3.
  """
  lr, wd = _positive_array('learning_rate', learning_rate), _positive_array(
      'weight_decay', weight_decay)
  tau = 1.0 / (lr * wd)
  if steps_per_epoch is not None:
    tau = tau / _positive_array('steps_per_epoch', steps_per_epoch)
  return float(tau) if np.ndim(tau) == 0 else tau


def weight_decay_for_timescale(learning_rate, tau_epochs, steps_per_epoch):
  r"""The AdamW weight decay that gives an EMA timescale of ``tau_epochs``.

  .. math::
    \lambda = \frac{1}{\eta\,\tau_\text{epoch}\,(\text{steps per epoch})}

  the inverse of :func:`ema_timescale` (Wang & Aitchison 2024): keep
  ``tau_epochs`` and this sets lambda for a new dataset size or batch size.

  Args:
    learning_rate: ``eta`` > 0 (a float or an array).
    tau_epochs: the timescale in epochs, > 0.
    steps_per_epoch: > 0.

  Returns:
    ``lambda``: a float, or an array shaped like the inputs.

  Example:
    >>> from bnjax import theory
    >>> round(theory.weight_decay_for_timescale(1e-3, 10.0, 469), 6)
    0.21322

  References:
    Wang & Aitchison, "How to set AdamW's weight decay as you scale model
    and dataset size", 2024, arXiv 2405.13698, section 3.
  """
  lr = _positive_array('learning_rate', learning_rate)
  tau = _positive_array('tau_epochs', tau_epochs)
  steps = _positive_array('steps_per_epoch', steps_per_epoch)
  wd = 1.0 / (lr * tau * steps)
  return float(wd) if np.ndim(wd) == 0 else wd


def _positive_array(name: str, value) -> np.ndarray:
  """``value`` (a number or array) as float64, every entry finite and > 0."""
  if isinstance(value, (bool, np.bool_, str, bytes)) or value is None or callable(value):
    raise TypeError(f'{name} must be a positive number or an array of them, got {value!r}.')
  try:
    arr = np.asarray(value, float)
  except (TypeError, ValueError):
    raise TypeError(f'{name} must be a positive number or an array of them, '
                    f'got {value!r}.') from None
  if arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
    raise ValueError(f'{name} must be > 0 and finite, got {value!r}.')
  return arr
