r"""van Laarhoven (2017): with batch norm, L2 sets the effective learning rate.

Trains the ConvNet with batch norm for SGD with momentum + L2 and Adam + L2,
and reports

1. the scaling rules as an exact symmetry: SGD + L2 under (c lr, lambda / c,
   sqrt(c) w0) and Adam + L2 under (c lr, lambda / c^2, c w0), with the rest of
   the network at a fixed learning rate (``--rest_learning_rate``), follow the
   same directions; the other rule, the control, must not;
2. over a grid of learning rate x L2 strength as practitioners run it (one
   learning rate, no rescaled init): test-error heatmaps, whether error is
   constant along lines of constant effective learning rate (SGD: lr * lambda;
   Adam: lr^2 * lambda) rather than along rows (lr alone), columns (lambda
   alone) or diagonals (lr / lambda), within an absolute margin, and the
   exponent p of the flattest lines lr^p * lambda;
3. test error against lambda with and without ``unit_norm_projection`` (the
   seed's proposal: with it, lambda should stop mattering), and AdamW with
   projection, which the projection makes lambda-free;
4. per-layer weight norm and effective learning rate over training, including
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

from bnjax.train.studies.effective_lr.presets import (
    ERROR_WINDOW, EXACT_DIRECTION, EXACT_EPSILON, EXACT_ERROR, EXACT_FACTORS, FAILED, FAR,
    HEAD_DECAY, LINE_MARGIN, MARGIN, OPTIMIZERS, POWER, POWER_MARGIN, PRESETS, STUDY,
    TRACKED_LAYER, configs, grid_values)
from bnjax.train.studies.effective_lr.analysis import (direction_difference, directions,
                                                       error, exact_line, fitted_power,
                                                       invariant_layers, seed_noise,
                                                       time_constants)
from bnjax.train.studies.effective_lr.report import report

__all__ = [
    'ERROR_WINDOW',
    'EXACT_DIRECTION',
    'EXACT_EPSILON',
    'EXACT_ERROR',
    'EXACT_FACTORS',
    'FAILED',
    'FAR',
    'HEAD_DECAY',
    'LINE_MARGIN',
    'MARGIN',
    'OPTIMIZERS',
    'POWER',
    'POWER_MARGIN',
    'PRESETS',
    'STUDY',
    'TRACKED_LAYER',
    'configs',
    'direction_difference',
    'directions',
    'error',
    'exact_line',
    'fitted_power',
    'grid_values',
    'invariant_layers',
    'report',
    'seed_noise',
    'time_constants',
]
