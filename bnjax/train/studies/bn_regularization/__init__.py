r"""Luo et al. (2019): batch norm = population norm + gamma decay, in a CNN.

Trains the ConvNet without any weight decay (so that the only regularizer is
the one batch norm brings) and reports

1. training and test curves of batch norm (BN), population norm (PN), weight
   norm + mean-only BN and weight norm + variance-only BN at batch size M, on a
   training subset small enough that PN overfits (its eval-mode training loss
   under 0.05: else the gap verdict is inconclusive), with the change of each
   layer's gamma^2 over the last quarter of training (plateaued under 5%);
2. the squared gains gamma^2 of BN against the normalization batch M (at
   least five sizes): BN's implicit gamma decay ``zeta ~ 1/M`` should keep
   gamma^2 smaller at smaller M. Ghost batch norm varies M inside a fixed
   optimizer batch, at equal steps and learning rate, so M is the only change;
3. PN with the explicit gamma decay ``zeta = 1/(4M)`` of
   :func:`bnjax.theory.gamma_decay_strength` (ReLU units) against BN and
   plain PN: the decay should move PN's gamma^2 and test loss towards BN's;
4. the explicit gamma decay zeta* at which PN's gamma^2 matches ghost BN's at
   each M (a PN sweep over zeta at the ghost sweep's optimizer batch), and
   whether zeta* scales as 1/M (slope of log zeta* on log M within -1 +- 0.25);
5. BN's implicit gamma decay itself, measured from gradients at the end of
   each ghost run for its own M (:mod:`bnjax.implicit`: the gain gradient with ghost batches of
   M minus that with the sample's population statistics, ``2 zeta gamma``),
   against Luo et al.'s ``1/(4M)``. Declared before the measurement (the runs
   had trained already): the claim holds when the mean over layers and M of
   ``4 M_eff zeta - 1`` lies within +-0.25.

  python -m experiments.bn_regularization --preset=quick --workdir=runs/bn_regularization


The study in three modules by job: :mod:`.presets` (the runs), :mod:`.analysis`
(measurements on the finished runs) and :mod:`.report` (verdicts, report.md, plots);
every name is importable from the package.
"""

from bnjax.train.studies.bn_regularization.presets import (CURVE_NORMS, IMPLICIT_MARGIN,
                                                           IMPLICIT_PARTITIONS, LABELS,
                                                           OVERFIT_LOSS, PLATEAU, PRESETS,
                                                           SIZES, SLOPE_MARGIN, STUDY,
                                                           TRAIN_SIZES, configs,
                                                           equal_steps_epochs, run_name)
from bnjax.train.studies.bn_regularization.analysis import (eval_mode_loss,
                                                            gamma_sq_change,
                                                            implicit_decay,
                                                            interpolate_zeta,
                                                            mean_gamma_sq, spearman)
from bnjax.train.studies.bn_regularization.report import report

__all__ = [
    'CURVE_NORMS',
    'IMPLICIT_MARGIN',
    'IMPLICIT_PARTITIONS',
    'LABELS',
    'OVERFIT_LOSS',
    'PLATEAU',
    'PRESETS',
    'SIZES',
    'SLOPE_MARGIN',
    'STUDY',
    'TRAIN_SIZES',
    'configs',
    'equal_steps_epochs',
    'eval_mode_loss',
    'gamma_sq_change',
    'implicit_decay',
    'interpolate_zeta',
    'mean_gamma_sq',
    'report',
    'run_name',
    'spearman',
]
