r"""AdamW's weight decay as an EMA timescale across dataset sizes (Wang & Aitchison 2024).

Decoupled weight decay makes the weights an exponential moving average of
the updates with timescale :math:`\tau_\text{iter} = 1/(\eta\lambda)` steps,
:math:`\tau_\text{epoch} = \tau_\text{iter}/(\text{steps per epoch})`
(:func:`bnjax.theory.ema_timescale`); Wang & Aitchison report that the best
:math:`\tau_\text{epoch}` is roughly constant across model and dataset size,
so that the best :math:`\lambda` falls as the dataset grows. The study
trains the batch-normed ConvNet with AdamW on Fashion-MNIST subsets of
several sizes for the same number of epochs, with :math:`\lambda` set from a
grid of :math:`\tau_\text{epoch}` (:func:`bnjax.theory.weight_decay_for_timescale`),
each over several seeds, and tests, with rules fixed before the runs:

* **the same best timescale**: every size's best :math:`\tau_\text{epoch}`
  within a factor :data:`FACTOR` of the others';
* **the best lambda changes**: the smallest size's best :math:`\lambda` at
  least :data:`CHANGE` times the largest size's.

  python -m experiments.timescale --preset=quick --workdir=runs/timescale

The study in three modules by job: :mod:`.presets` (the runs), :mod:`.analysis`
(measurements on the finished runs) and :mod:`.report` (verdicts, report.md, plots);
every name is importable from the package.
"""

from bnjax.train.studies.timescale.presets import (CHANGE, FACTOR, LEARNING_RATE, PRESETS,
                                                   STUDY, configs, run_name)
from bnjax.train.studies.timescale.analysis import (best_lambda, best_tau, grid,
                                                    mean_curve_edges, per_seed_best, spread,
                                                    tau_epochs)
from bnjax.train.studies.timescale.report import report

__all__ = [
    'CHANGE',
    'FACTOR',
    'LEARNING_RATE',
    'PRESETS',
    'STUDY',
    'best_lambda',
    'best_tau',
    'configs',
    'grid',
    'mean_curve_edges',
    'per_seed_best',
    'report',
    'run_name',
    'spread',
    'tau_epochs',
]
