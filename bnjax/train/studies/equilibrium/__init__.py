r"""Rotational equilibrium: measured angular updates and norms against bnjax.theory.

Trains the ConvNet with batch norm under SGD + L2, SGD with momentum + L2,
AdamW and Adam + L2, each with a decay strong enough that the scale-invariant
kernels reach equilibrium within the run, and compares, per layer, the
measured angular update per step and per-unit weight norm (means over the
last quarter of training) with the closed forms of :mod:`bnjax.theory`:

* angular update: ``sqrt(2 lr lambda / (1 + a))`` (SGD, momentum ``a``) and
  ``sqrt(2 lr lambda (1 - b1) / (1 + b1))`` (AdamW) need nothing measured;
  Adam + L2's needs the gradient norm at unit weight norm ``||g~||``;
* weight norm: AdamW's ``sqrt(lr C / (2 lambda))`` needs only the fan-in C;
  SGD's and Adam + L2's need ``E||g~||^2``, which the run measures
  (``grad_sq_at_unit_norm/<layer>``, averaged over the same steps).

SGD's and Adam + L2's norms are also predicted per unit from each unit's own
gradient scale over the angle's window (:func:`unit_equilibrium`,
:func:`window_unit_scales`), leaving dead units out: the layer-mean gradient
mixes units whose equilibria differ.

  python -m experiments.equilibrium --preset=quick --workdir=runs/equilibrium


The study in three modules by job: :mod:`.presets` (the runs), :mod:`.analysis`
(measurements on the finished runs) and :mod:`.report` (verdicts, report.md, plots);
every name is importable from the package.
"""

from bnjax.train.studies.equilibrium.presets import (DEAD_MAP, EQUILIBRATED, FAR, NARROW,
                                                     OPTIMIZERS, PRESETS, STUDY, TOLERANCE,
                                                     UNIT_BATCHES, configs, dead_map_name)
from bnjax.train.studies.equilibrium.analysis import (adam_moments, checkpoint_unit_scales,
                                                      invariant_layers, kernel_unit_norms,
                                                      last_states, late_mean, measure,
                                                      measured_angle, momentum_signal,
                                                      unit_equilibrium, unit_grad_sq,
                                                      unit_scales, window_predictions,
                                                      window_unit_scales, within)
from bnjax.train.studies.equilibrium.report import report

__all__ = [
    'DEAD_MAP',
    'EQUILIBRATED',
    'FAR',
    'NARROW',
    'OPTIMIZERS',
    'PRESETS',
    'STUDY',
    'TOLERANCE',
    'UNIT_BATCHES',
    'adam_moments',
    'checkpoint_unit_scales',
    'configs',
    'dead_map_name',
    'invariant_layers',
    'kernel_unit_norms',
    'last_states',
    'late_mean',
    'measure',
    'measured_angle',
    'momentum_signal',
    'report',
    'unit_equilibrium',
    'unit_grad_sq',
    'unit_scales',
    'window_predictions',
    'window_unit_scales',
    'within',
]
