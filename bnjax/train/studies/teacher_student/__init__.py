r"""Luo et al. (2019) Figure 1: generalization against load alpha = P/N, converged.

A perceptron student ``g(norm(w . x))`` learns a noisy teacher
``y = g(w* . x) + noise`` from P examples in N dimensions (bnjax.train.data.
teacher_student), for a linear and a ReLU ``g``, trained by plain SGD with
batch size M under a cosine decay to zero, so that each run ends at a
minimizer of its own objective rather than early-stopped. Compared, at each
load alpha = P/N (P a multiple of M, so every example is used every epoch):

* BN (batch norm, M = 32), evaluated three ways: with the exact population
  statistics of ``w . x`` (mean 0, variance ``||w||^2 / N`` for
  ``x ~ N(0, I/N)``), with the statistics of the P training points ("precise
  BN" over the whole training set), and with its running averages;
* WN + gamma decay: weight norm with the explicit penalty ``zeta * gamma^2``,
  ``zeta = 1/(2M)`` (linear) or ``1/(4M)`` (ReLU) from
  :func:`bnjax.theory.gamma_decay_strength`, which Luo et al. derive as BN's
  implicit regularization; and, for the linear student, their stronger
  ``zeta = 0.25``. WN's gain ``g`` is ``gamma * sqrt(N)``, so the penalty on
  ``g`` is ``(zeta / N) * g^2``;
* plain SGD (no normalization, a bias).

Generalization error is measured against the noiseless teacher from each
run's final parameters, exactly for the linear student
(``||w - w*||^2 / N + b^2``) and by quadrature for the ReLU student
(:func:`teacher_error`); the noise floor ``noise_std^2`` is separate. For the
linear student the report adds closed forms: plain SGD's limit from its own
initialization (:func:`sgd_limit`: SGD on least squares moves only in the row
space of the data, so the limit keeps the init's null-space part), the ridge
solution WN + gamma decay converges to (:func:`ridge`), and the Bayes-optimal
ridge (penalty ``noise_std^2`` for the ``N(0, I)`` teacher prior).

Luo et al.'s decomposition BN = PN + ``zeta * gamma^2`` is tested directly:
for BN runs at several batch sizes M on one training set, :func:`fitted_zeta`
is the gamma decay at which BN's final gamma is stationary for the PN
objective (the training set's statistics, BN's own direction and beta). A
batch of M drawn without replacement from P points has mean variance
``sigma^2 (P - M) / (M (P - 1))``, so theory's M is the effective
:func:`bnjax.theory.effective_batch` ``M (P - 1) / (P - M)``.

Verdicts (rules fixed before the runs; each statistic is computed per seed,
its 95% t-interval over seeds decides):

* WN + gamma decay tracks BN: mean over loads of ``|log(err_WN / err_BN)|``
  below ``log 1.25`` (errors within 25%);
* WN + gamma decay tracks BN closer than plain SGD does: mean over loads of
  ``|log(err_WN / err_BN)| - |log(err_SGD / err_BN)|`` below 0 (linear: SGD's
  converged limit; ReLU: trained SGD);
* BN generalizes better than plain SGD at small load: mean over loads
  ``alpha <= 2`` of ``log(err_BN / err_SGD)`` below 0, BN evaluated as a
  practitioner's BN is (its running statistics); the same with the exact
  population statistics (an oracle no training loop has) is a second line;
* the fitted zeta follows 1/M: slope of ``log zeta`` against ``log M_eff``
  within ``-1 +- 0.25``;
* zeta is the second-order constant, ``3/(4M)`` (linear), ``3/(8M)`` (ReLU)
  (:func:`bnjax.theory.gamma_decay_second_order`: batch-mean and batch-sigma
  noise together, for this MSE loss without the 1/2): mean over M of
  ``log(zeta_fit M_eff / c)`` within ``+-log 1.25``; and, as a second line,
  the same against Luo et al.'s Figure-1 constants ``1/(2M)``, ``1/(4M)``,
  which keep the batch-mean term alone (2/3 of the full constant). The WN arms
  keep the paper's design: their explicit decay is the Figure-1 constant.

Every verdict has an id ``teacher_student/<slug>`` and names the prediction it
is tested against (``reference`` in ``verdicts.json``).

  python -m experiments.teacher_student --preset=quick --workdir=runs/teacher_student


The study in three modules by job: :mod:`.presets` (the runs), :mod:`.analysis`
(measurements on the finished runs) and :mod:`.report` (verdicts, report.md, plots);
every name is importable from the package.
"""

from bnjax.train.studies.teacher_student.presets import (ACTIVATIONS, BATCH, COLORS,
                                                         EPSILON, GRADIENT_PARTITIONS,
                                                         INIT_SCALES, LEARNING_RATE,
                                                         NOISE_STD, NUM_TEST, PRESETS,
                                                         SLOPE_MARGIN, SMALL_LOAD, STATS,
                                                         STRONG_ZETA, STUDY, TRACK_MARGIN,
                                                         VECTORIZE, ZETA_MARGIN, configs,
                                                         examples, load_examples, methods,
                                                         run_name, student_config)
from bnjax.train.studies.teacher_student.analysis import (affine_map, fitted_zeta,
                                                          measure_all, ridge, sgd_limit,
                                                          teacher_error)
from bnjax.train.studies.teacher_student.report import report

__all__ = [
    'ACTIVATIONS',
    'BATCH',
    'COLORS',
    'EPSILON',
    'GRADIENT_PARTITIONS',
    'INIT_SCALES',
    'LEARNING_RATE',
    'NOISE_STD',
    'NUM_TEST',
    'PRESETS',
    'SLOPE_MARGIN',
    'SMALL_LOAD',
    'STATS',
    'STRONG_ZETA',
    'STUDY',
    'TRACK_MARGIN',
    'VECTORIZE',
    'ZETA_MARGIN',
    'affine_map',
    'configs',
    'examples',
    'fitted_zeta',
    'load_examples',
    'measure_all',
    'methods',
    'report',
    'ridge',
    'run_name',
    'sgd_limit',
    'student_config',
    'teacher_error',
]
