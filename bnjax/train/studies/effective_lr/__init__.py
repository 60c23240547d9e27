r"""van Laarhoven (2017): with batch norm, L2 sets the effective learning rate.

Trains the ConvNet with batch norm over a grid of learning rate x L2
strength for SGD with momentum + L2 and Adam + L2, and reports

1. test-error heatmaps, and whether error is constant along lines of
   constant effective learning rate (SGD: lr * lambda; Adam: lr^2 * lambda)
   rather than along rows (lr alone), columns (lambda alone) or diagonals
   (lr / lambda), and within twice the seed-to-seed noise;
2. test error against lambda with and without ``unit_norm_projection`` (the
   seed's proposal: with it, lambda should stop mattering), and AdamW with
   projection, which the projection makes lambda-free;
3. per-layer weight norm and effective learning rate over training, including
   the unregularized runs, where the norm should grow and the effective
   learning rate decay.

lambda acts on the scale-invariant kernels only: the classifier head, which
batch norm does not make scale-invariant, keeps a fixed decay
(``head_weight_decay``), so that a cell differs from its neighbours only in
what the claim is about. Every cell reports its approach time constants
(:func:`bnjax.theory.equilibrium_time_constant`); cells that ran fewer than
:data:`FAR` of them before the error window are left out of the line test.

  python -m experiments.effective_lr --preset=quick --workdir=runs/effective_lr


The study in three modules by job: :mod:`.presets` (the runs), :mod:`.analysis`
(measurements on the finished runs) and :mod:`.report` (verdicts, report.md, plots);
every name is importable from the package.
"""

from bnjax.train.studies.effective_lr.presets import (ERROR_WINDOW, FAILED, FAR,
                                                      HEAD_DECAY, MARGIN, NOISE_FACTOR,
                                                      OPTIMIZERS, POWER, PRESETS, STUDY,
                                                      TRACKED_LAYER, configs, grid_values)
from bnjax.train.studies.effective_lr.analysis import (error, fitted_power,
                                                       invariant_layers, seed_noise,
                                                       time_constants)
from bnjax.train.studies.effective_lr.report import report

__all__ = [
    'ERROR_WINDOW',
    'FAILED',
    'FAR',
    'HEAD_DECAY',
    'MARGIN',
    'NOISE_FACTOR',
    'OPTIMIZERS',
    'POWER',
    'PRESETS',
    'STUDY',
    'TRACKED_LAYER',
    'configs',
    'error',
    'fitted_power',
    'grid_values',
    'invariant_layers',
    'report',
    'seed_noise',
    'time_constants',
]
