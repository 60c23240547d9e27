r"""Rotational optimizers against their inner optimizers, AdamW + projection and AdamP.

Trains the batch-normed ConvNet on Fashion-MNIST with AdamW, AdamW +
projection (van Laarhoven's proposal, which makes AdamW's decay act only on
the head), AdamP (Heo et al. 2021), rotational AdamW, SGD with momentum + L2
and rotational SGD-momentum (Kosson, Messmer & Jaggi 2024,
``--regularizer=rotational``), each over several seeds, the inner optimizers
and their rotational variants also with a linear warmup; and tests Kosson et
al.'s claims, with rules fixed before the runs:

* **equilibrium from the start**: over the first :data:`EARLY` of the steps,
  every scale-invariant layer's angular update of a rotational variant is
  within a factor :data:`TOLERANCE` of the equilibrium angle
  (:func:`bnjax.theory.equilibrium_angular_update` at the step's learning
  rate), and further off for the inner optimizer;
* **less need for warmup**: warmup lowers the inner optimizer's final test
  error by more than it lowers the rotational variant's;
* **error**: the rotational variant's final test error is at most
  :data:`MARGIN` above the inner optimizer's (and AdamP's above AdamW's).

The report also gives each arm's approach time constant
(:func:`bnjax.theory.equilibrium_time_constant`) and how many of them the run
lasted, so a far-from-equilibrium comparison is visible as such, and the
early deviation of each rotational optimizer on i.i.d. gradients with the
network left out (:func:`wrapper_alone`), the part its update-norm average
contributes by itself.

  python -m experiments.rotational --preset=quick --workdir=runs/rotational


The study in three modules by job: :mod:`.presets` (the runs), :mod:`.analysis`
(measurements on the finished runs) and :mod:`.report` (verdicts, report.md, plots);
every name is importable from the package.
"""

from bnjax.train.studies.rotational.presets import (ADAMW, ARMS, EARLY, MARGIN, PRESETS,
                                                    SETTLED, SGDM, STUDY, TOLERANCE,
                                                    WARMUP_ARMS, configs, run_name)
from bnjax.train.studies.rotational.analysis import (angle_ratios, early_deviation,
                                                     invariant_layers, settling_step,
                                                     time_constants, wrapper_alone)
from bnjax.train.studies.rotational.report import report

__all__ = [
    'ADAMW',
    'ARMS',
    'EARLY',
    'MARGIN',
    'PRESETS',
    'SETTLED',
    'SGDM',
    'STUDY',
    'TOLERANCE',
    'WARMUP_ARMS',
    'angle_ratios',
    'configs',
    'early_deviation',
    'invariant_layers',
    'report',
    'run_name',
    'settling_step',
    'time_constants',
    'wrapper_alone',
]
