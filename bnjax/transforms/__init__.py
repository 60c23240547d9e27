"""optax GradientTransformations for weights that feed a normalization.

Every transform here is an ordinary ``optax.GradientTransformation`` and can
be used in any ``optax.chain``, inside ``optax.masked``,
``optax.inject_hyperparams`` or ``optax.MultiSteps``.

``mask`` means one thing in every transform, as in optax: a pytree of bools
(or a prefix of the params), or a callable that returns one from the params,
saying which leaves the transform acts on; ``mask=None`` means *every leaf*
(like ``optax.add_decayed_weights`` and ``optax.adamw``). The projection
(:func:`unit_norm_projection`, ``regularizer='projection'``) has no default:
projecting a leaf that is not scale-invariant (a classifier head, a bias)
changes the function the network computes, so it needs an explicit mask,
e.g. ``bnjax.masks.scale_invariant_kernels`` (structural) or
``bnjax.masks.scale_invariant_mask`` (measured). For decay restricted to
kernels, pass ``bnjax.masks.kernel_mask``.

Where a rate appears it may be a float or an optax schedule (a function of
the step count, the count starting at 0 and advancing once per update).

One module per family: :mod:`~bnjax.transforms.decay` (coupled L2,
decoupled decay), :mod:`~bnjax.transforms.projection` (per-unit norm
projection), :mod:`~bnjax.transforms.tracking` (``track_dynamics``, ``track_gradients``),
:mod:`~bnjax.transforms.aliases` (``sgd``/``adam`` with a regularizer),
:mod:`~bnjax.transforms.adamp_sgdp` (AdamP, SGDP) and
:mod:`~bnjax.transforms.rotation` (rotational optimizers); every public name is importable from
``bnjax.transforms``.
"""

from bnjax.dynamics import (GradientDynamics, LeafDynamics, TrackDynamicsState,
                            TrackGradientsState)
from bnjax.transforms._common import Mask, ScalarOrSchedule
from bnjax.transforms.adamp_sgdp import AdamPState, SGDPState, adamp, sgdp
from bnjax.transforms.aliases import REGULARIZERS, adam, sgd
from bnjax.transforms.decay import ScheduledScaleState, decoupled_weight_decay, l2_regularization
from bnjax.transforms.projection import UnitNormProjectionState, unit_norm_projection
from bnjax.transforms.rotation import ROTATIONAL_INNER, RotationalState, center_units, rotational
from bnjax.transforms.tracking import TRACKED_OPTIMIZERS, track_dynamics, track_gradients

__all__ = [
    'AdamPState', 'GradientDynamics', 'LeafDynamics', 'Mask', 'REGULARIZERS', 'ROTATIONAL_INNER', 'RotationalState',
    'SGDPState', 'ScalarOrSchedule', 'ScheduledScaleState', 'TRACKED_OPTIMIZERS',
    'TrackDynamicsState', 'TrackGradientsState', 'UnitNormProjectionState', 'adam', 'adamp', 'center_units',
    'decoupled_weight_decay',
    'l2_regularization', 'rotational', 'sgd', 'sgdp', 'track_dynamics', 'track_gradients',
    'unit_norm_projection',
]
