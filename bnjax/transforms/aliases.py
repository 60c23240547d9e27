"""``sgd`` and ``adam`` with a regularizer (none, coupled L2, decoupled decay,
projection) and optional dynamics tracking, in optax's alias style."""

import optax

from bnjax._validation import (check_bool, check_nonnegative, check_positive, check_unit_interval,
                               concrete_float)
from bnjax.transforms._common import Mask, ScalarOrSchedule, _at, _require_projection_mask
from bnjax.transforms.decay import decoupled_weight_decay, l2_regularization
from bnjax.transforms.projection import unit_norm_projection
from bnjax.transforms.tracking import track_dynamics

REGULARIZERS = ('none', 'l2', 'decoupled', 'projection')


def _regularized(base: optax.GradientTransformation, learning_rate, *, regularizer: str,
                 weight_decay, mask, track: bool, kind: str
                 ) -> optax.GradientTransformation:
  if regularizer not in REGULARIZERS:
    raise ValueError(f'regularizer must be one of {REGULARIZERS}, got {regularizer!r}.')
  check_nonnegative('weight_decay', weight_decay)
  if regularizer in ('none', 'projection') and concrete_float(
      weight_decay, 'weight_decay') not in (None, 0.0):
    raise ValueError(f"weight_decay={weight_decay} has no effect with "
                     f"regularizer='{regularizer}'; pass weight_decay=0.")
  if regularizer == 'projection':
    _require_projection_mask(mask, "regularizer='projection'")
  parts = []
  if regularizer == 'l2':
    parts.append(l2_regularization(weight_decay, mask))
  parts.append(base)
  if regularizer == 'decoupled':
    if callable(learning_rate) or callable(weight_decay):
      rate = lambda count: _at(learning_rate, count) * _at(weight_decay, count)
    else:
      rate = learning_rate * weight_decay
    parts.append(decoupled_weight_decay(rate, mask))
  if regularizer == 'projection':
    parts.append(unit_norm_projection(mask))
  if track:
    parts.append(track_dynamics(learning_rate, kind, mask))
  return optax.chain(*parts)


def sgd(learning_rate: ScalarOrSchedule, momentum: float = 0.0, *, nesterov: bool = False,
        regularizer: str = 'none', weight_decay: ScalarOrSchedule = 0.0,
        mask: Mask = None, track: bool = True) -> optax.GradientTransformation:
  r"""SGD (with optional momentum) with a regularizer for scale-invariant weights.

  .. math::
    g_t = \nabla L(w_t) + \lambda w_t \ (\text{l2}), \quad
    v_t = a\, v_{t-1} + g_t, \quad
    w_{t+1} = w_t - \eta\, v_t - \eta\lambda w_t \ (\text{decoupled})

  With ``'projection'`` each masked unit is then put back on the unit sphere.

  Args:
    learning_rate: ``lr``, a float or an optax schedule.
    momentum: heavy-ball momentum ``a`` in [0, 1) (``optax.sgd``'s meaning).
    nesterov: Nesterov momentum.
    regularizer: ``'none'``; ``'l2'`` (coupled, before the optimizer);
      ``'decoupled'`` (``lr * weight_decay * w`` subtracted after it); or
      ``'projection'`` (per-unit unit-norm projection last).
    weight_decay: ``lambda``, a float or an optax schedule; 0 for ``'none'``
      and ``'projection'``.
    mask: which leaves are regularized and tracked, as ``optax.masked``
      (``None``: every leaf, as in ``optax.adamw``; ``bnjax.masks.kernel_mask``
      for kernels only); required for ``'projection'``.
    track: append :func:`track_dynamics` (read it with :func:`bnjax.dynamics.read`).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import dynamics, masks, transforms
    >>> tx = transforms.sgd(0.1, 0.9, regularizer='l2', weight_decay=5e-4,
    ...                     mask=masks.kernel_mask)
    >>> params = {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2)}
    >>> updates, state = tx.update({'kernel': jnp.zeros((4, 2)), 'bias': jnp.zeros(2)},
    ...                            tx.init(params), params)
    >>> [round(float(u), 8) for u in updates['kernel'][0]]  # -lr * lambda * w
    [-5e-05, -5e-05]
    >>> sorted(dynamics.read(state))[:3]
    ['kernel/angular_update', 'kernel/angular_update_rms', 'kernel/effective_lr']

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, eq. 6-9; Loshchilov & Hutter,
    "Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101,
    Algorithm 1 (decoupled).
  """
  check_positive('learning_rate', learning_rate)
  momentum = 0.0 if momentum is None else momentum  # optax.sgd's "no momentum"
  check_unit_interval('momentum', momentum, include_one=False)
  check_bool('nesterov', nesterov)
  no_momentum = concrete_float(momentum, 'momentum') == 0.0  # traced: vmapped momenta
  base = optax.sgd(learning_rate, momentum=None if no_momentum else momentum,
                   nesterov=nesterov)
  return _regularized(base, learning_rate, regularizer=regularizer,
                      weight_decay=weight_decay, mask=mask, track=track, kind='sgd')


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, *, regularizer: str = 'none',
         weight_decay: ScalarOrSchedule = 0.0, mask: Mask = None, track: bool = True
         ) -> optax.GradientTransformation:
  r"""Adam with a regularizer; ``regularizer='decoupled'`` is AdamW.

  .. math::
    g_t = \nabla L(w_t) + \lambda w_t \ (\text{l2}), \quad
    w_{t+1} = w_t - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
              - \eta\lambda w_t \ (\text{decoupled})

  ``'l2'`` is "Adam + L2" (the penalty's gradient goes through Adam's
  normalization); ``'decoupled'`` equals ``optax.adamw(lr, b1, b2, eps,
  weight_decay)`` on the masked leaves.

  Args:
    learning_rate: ``lr``, a float or an optax schedule.
    b1, b2: decay rates of the first and second moment estimates.
    eps: added to the root of the second moment.
    regularizer, weight_decay, mask, track: as :func:`sgd`.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from bnjax import transforms
    >>> ours = transforms.adam(1e-3, regularizer='decoupled', weight_decay=0.1,
    ...                        track=False)
    >>> ref = optax.adamw(1e-3, weight_decay=0.1)
    >>> params, grads = {'w': jnp.array([1.0, -2.0])}, {'w': jnp.array([0.5, 0.5])}
    >>> a, _ = ours.update(grads, ours.init(params), params)
    >>> b, _ = ref.update(grads, ref.init(params), params)
    >>> bool(jnp.allclose(a['w'], b['w']))
    True

  References:
    Kingma & Ba, "Adam", ICLR 2015, arXiv 1412.6980, Algorithm 1; Loshchilov
    & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv
    1711.05101, Algorithm 2.
  """
  check_positive('learning_rate', learning_rate)
  check_unit_interval('b1', b1, include_one=False)
  check_unit_interval('b2', b2, include_one=False)
  check_nonnegative('eps', eps)
  base = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  return _regularized(base, learning_rate, regularizer=regularizer,
                      weight_decay=weight_decay, mask=mask, track=track, kind='adam')
