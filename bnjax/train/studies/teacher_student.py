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
  ``alpha <= 2`` of ``log(err_BN / err_SGD)`` below 0;
* the fitted zeta follows 1/M: slope of ``log zeta`` against ``log M_eff``
  within ``-1 +- 0.25``;
* zeta = 1/(2M) (linear), 1/(4M) (ReLU): mean over M of
  ``log(zeta_fit / zeta_theory(M_eff))`` within ``+-log 1.25``.

  python -m experiments.teacher_student --preset=quick --workdir=runs/teacher_student
"""

import dataclasses
import itertools
import math
import pathlib

import numpy as np

from bnjax import implicit, theory
from bnjax.train import data
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config
from bnjax.train.studies import study, verdicts

STUDY = 'teacher_student'
BATCH = 32
STRONG_ZETA = 0.25  # Luo et al.'s second linear curve
NOISE_STD, LEARNING_RATE, NUM_TEST = 0.5, 0.4, 2000
EPSILON = 1e-5  # bnjax.layers.BatchNorm's
ACTIVATIONS = ('linear', 'relu')
STATS = ('population', 'training', 'running')
TRACK_MARGIN = math.log(1.25)
ZETA_MARGIN = math.log(1.25)
SLOPE_MARGIN = 0.25
SMALL_LOAD = 2.0
INIT_SCALES = (0.0, 1.0, 3.0, 10.0)
GRADIENT_PARTITIONS = 8  # partitions of the training set bnjax.implicit averages
# Train vectorized by default, on CPU too: a perceptron's step is a few
# hundred flops, so one vmapped program over the seeds beats a worker process
# per seed; the groups themselves go out to the worker processes (bnjax.train.sweep).
VECTORIZE = True
COLORS = {'bn': 'C0', 'wn_gamma_decay': 'C1', 'wn_strong_gamma_decay': 'C2', 'sgd': 'C3',
          'bayes': 'k', 'linear': 'C4', 'relu': 'C5'}

PRESETS = {
    # Each seed draws its own teacher, data and initialization. loads: alpha,
    # rounded to P = a multiple of BATCH; sweep: BN's batch sizes M on P =
    # sweep_p examples; large: (N, P, steps) of a second, larger N near alpha = 1.
    'smoke': dict(n=20, loads=(1.6, 3.2), steps=300, seeds=(0,), sweep=(8, 32),
                  sweep_p=64, large=None),
    'quick': dict(n=100, loads=(0.64, 0.96, 1.92, 3.84), steps=5000, seeds=(0,),
                  sweep=(8, 32, 128), sweep_p=256, large=None),
    'standard': dict(n=100, loads=(0.32, 0.64, 0.96, 1.28, 1.6, 1.92, 2.56, 3.84, 5.12),
                     steps=10000, seeds=tuple(range(10)), sweep=(8, 16, 32, 64, 128),
                     sweep_p=256, large=(500, 512, 50000)),
    'paper': dict(n=500, loads=(0.256, 0.512, 0.768, 1.024, 1.28, 1.536, 2.048, 3.072,
                                4.096, 6.144, 8.192),
                  steps=50000, seeds=tuple(range(10)), sweep=(8, 16, 32, 64, 128, 256),
                  sweep_p=1024, large=(1000, 1024, 100000)),
}


def methods(activation: str, input_dim: int) -> dict:
  """``{key: (label, config overrides)}`` of the students compared for one activation.

  The first is BN, the second WN + gamma decay at BN's zeta, the last plain SGD.
  """
  zeta = theory.gamma_decay_strength(BATCH, activation)
  out = {'bn': (f'BN (M = {BATCH})', dict(norm='batch')),
         'wn_gamma_decay': (f'WN + gamma decay (zeta = 1/{round(1 / zeta)})',
                            dict(norm='weight', gamma_decay=zeta / input_dim))}
  if activation == 'linear':
    out['wn_strong_gamma_decay'] = (f'WN + gamma decay (zeta = {STRONG_ZETA})',
                                    dict(norm='weight', gamma_decay=STRONG_ZETA / input_dim))
  out['sgd'] = ('plain SGD', dict(norm='none'))
  return out


def examples(load: float, n: int) -> int:
  """P for a load alpha: the nearest positive multiple of BATCH to alpha N."""
  return BATCH * max(1, round(load * n / BATCH))


def load_examples(spec: dict) -> list:
  """The sorted P of a preset's loads."""
  return sorted({examples(a, spec['n']) for a in spec['loads']})


def run_name(activation: str, method: str, p: int, *, n=None, m=None, long=False) -> str:
  """``<activation>_<method>_P<p>`` and ``_N<n>`` (the larger N), ``_M<m>`` (the batch
  sweep), ``_long`` (twice the steps); seeds add ``_seed<s>`` (study.seeded)."""
  return (f'{activation}_{method}_P{p}' + (f'_N{n}' if n else '') + (f'_M{m}' if m else '')
          + ('_long' if long else ''))


def student_config(activation: str, overrides: dict, *, n: int, p: int, m: int, steps: int,
                   seed: int, parallel: str = 'none') -> Config:
  """One student's run: N = ``n`` inputs, P = ``p`` examples in batches of ``m``,
  whole epochs covering at least ``steps`` steps, the study's SGD with a cosine
  decay; ``overrides`` set the normalization (and gamma decay)."""
  batches = p // m
  epochs = math.ceil(steps / batches)
  log_every = max(1, epochs * batches // 20)
  return Config(seed=seed, dataset='teacher_student', model='perceptron', parallel=parallel,
                activation=activation, input_dim=n, num_train=p, num_test=NUM_TEST,
                noise_std=NOISE_STD, batch_size=m, num_epochs=epochs, optimizer='sgd',
                momentum=0.0, learning_rate=LEARNING_RATE, schedule='cosine',
                regularizer='none', weight_decay=0.0, log_every=log_every,
                checkpoint_every=log_every * 20, **{'gamma_decay': 0.0, **overrides})


def configs(preset: str, parallel: str = 'none') -> dict:
  spec = PRESETS[preset]
  n, out = spec['n'], {}

  def make(name, seed, *args, **kwargs):
    out[study.seeded(name, seed)] = student_config(*args, seed=seed, parallel=parallel, **kwargs)

  for activation, seed in itertools.product(ACTIVATIONS, spec['seeds']):
    arms = methods(activation, n)
    for method, (_, overrides) in arms.items():
      for p in load_examples(spec):
        make(run_name(activation, method, p), seed, activation, overrides, n=n, p=p,
             m=BATCH, steps=spec['steps'])
    for m in spec['sweep']:  # M = BATCH is the main BN arm at P = sweep_p
      make(run_name(activation, 'bn', spec['sweep_p'], m=None if m == BATCH else m), seed,
           activation, dict(norm='batch'), n=n, p=spec['sweep_p'], m=m, steps=spec['steps'])
    if activation == 'linear' and spec['large']:
      big, p, steps = spec['large']
      for method in ('bn', 'wn_gamma_decay', 'sgd'):
        make(run_name(activation, method, p, n=big), seed, activation,
             methods(activation, big)[method][1], n=big, p=p, m=BATCH, steps=steps)
      near = examples(1.0, n)
      make(run_name(activation, 'bn', near, long=True), seed, activation,
           dict(norm='batch'), n=n, p=near, m=BATCH, steps=2 * spec['steps'])
  return out


# ------------------------------------------------------------ closed forms


def affine_map(params, batch_stats, norm: str, stats: str = 'population', x=None):
  r"""The student's pre-activation as an affine map ``w . x + b`` of its input.

  .. math::
    \text{BN: } w = \gamma\,\frac{k}{\sqrt{\sigma^2 + \epsilon}}, \quad
    b = \beta - \gamma\,\frac{\mu}{\sqrt{\sigma^2 + \epsilon}}; \qquad
    \text{WN: } w = g\,\frac{v}{\|v\|}

  with BN's ``(mu, sigma^2)`` the exact population statistics of ``k . x``
  for ``x ~ N(0, I/N)`` (``0, ||k||^2 / N``: ``stats='population'``), those of
  the training inputs ``x`` (``'training'``), or its running averages
  (``'running'``).

  Args:
    params, batch_stats: the perceptron's variables (nested dicts of arrays).
    norm: ``'batch'``, ``'weight'`` or ``'none'``.
    stats: one of :data:`STATS` (BN only).
    x: the training inputs ``(P, N)``, for ``stats='training'``.

  Returns:
    ``(w, b)``: a float64 vector ``(N,)`` and a float.

  References:
    Ioffe & Szegedy 2015, arXiv 1502.03167, Algorithm 2 (inference with
    population statistics); Salimans & Kingma 2016, arXiv 1602.07868, eq. 2.
  """
  p = params['dense']
  if norm == 'weight':
    v = np.asarray(p['layer_instance']['kernel'], np.float64)[:, 0]
    return float(p['scale'][0]) * v / np.linalg.norm(v), float(p['layer_instance']['bias'][0])
  if norm == 'none':
    return np.asarray(p['kernel'], np.float64)[:, 0], float(p['bias'][0])
  if norm != 'batch':
    raise ValueError(f"norm must be 'batch', 'weight' or 'none', got {norm!r}.")
  k = np.asarray(p['kernel'], np.float64)[:, 0]
  gamma, beta = float(params['dense_norm']['scale'][0]), float(params['dense_norm']['bias'][0])
  if stats == 'population':
    mean, var = 0.0, k @ k / k.size
  elif stats == 'training':
    h = np.asarray(x, np.float64) @ k
    mean, var = h.mean(), h.var()
  elif stats == 'running':
    mean = float(batch_stats['dense_norm']['mean'][0])
    var = float(batch_stats['dense_norm']['var'][0])
  else:
    raise ValueError(f'stats must be one of {STATS}, got {stats!r}.')
  scale = gamma / math.sqrt(var + EPSILON)
  return scale * k, beta - scale * mean


def _relu_moments(m, s: float):
  """``E[relu(m + s xi)]`` and ``E[relu(m + s xi)^2]`` for ``xi ~ N(0, 1)``."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if s < 1e-12:  # a student aligned with its teacher: no spread left
    r = np.maximum(m, 0.0)
    return r, r * r
  z = m / s
  cdf, pdf = stats.norm.cdf(z), stats.norm.pdf(z)
  return m * cdf + s * pdf, (m * m + s * s) * cdf + m * s * pdf


def teacher_error(w, b: float, teacher, activation: str) -> float:
  r"""Generalization error against the noiseless teacher, for ``x ~ N(0, I/N)``.

  .. math::
    \varepsilon = \mathbb{E}_x\big[(g(w\cdot x + b) - g(w^*\cdot x))^2\big]

  Linear ``g``: exactly ``||w - w*||^2 / N + b^2``. ReLU: ``u = w.x + b`` and
  ``v = w*.x`` are jointly Gaussian; given ``v`` the inner expectation over
  ``u`` is in closed form (the moments of a rectified Gaussian), and the outer
  one is a 1-D quadrature on a fine grid.

  Args:
    w, b: the student's affine map (:func:`affine_map`).
    teacher: ``w*``.
    activation: ``'linear'`` or ``'relu'``.

  Returns:
    The error, a float.

  References:
    Luo et al. 2019, arXiv 1809.00846, section 4 (generalization error of the
    teacher-student perceptron); Cho & Saul, "Kernel Methods for Deep
    Learning", NIPS 2009 (rectified Gaussian moments).
  """
  w, t = np.asarray(w, np.float64), np.asarray(teacher, np.float64)
  n = t.size
  if activation == 'linear':
    return float((w - t) @ (w - t) / n + b * b)
  if activation != 'relu':
    raise ValueError(f"activation must be 'linear' or 'relu', got {activation!r}.")
  s_v, s_u = np.linalg.norm(t) / math.sqrt(n), np.linalg.norm(w) / math.sqrt(n)
  rho = float(w @ t / max(np.linalg.norm(w) * np.linalg.norm(t), 1e-300))
  z = np.linspace(-12.0, 12.0, 48001)
  density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
  v = np.maximum(s_v * z, 0.0)
  first, second = _relu_moments(b + s_u * rho * z, s_u * math.sqrt(max(1.0 - rho * rho, 0.0)))
  return float(np.trapezoid(density * (second - 2 * v * first + v * v), z))


def ridge(x, y, penalty: float):
  r"""Least squares with an unpenalized bias and an L2 penalty on the weights.

  .. math::
    (w, b) = \arg\min \frac{1}{P}\|Xw + b - y\|^2 + c\,\|w\|^2, \quad
    w = (\tilde X^\top \tilde X + P c I)^{-1} \tilde X^\top \tilde y

  with ``~`` the centred data, ``b = mean(y) - mean(x) . w``; ``c = 0`` gives
  the minimum-norm solution. WN + gamma decay minimizes exactly this with
  ``c = zeta / N``: ``w = g v / ||v||`` ranges over every vector and the
  penalty ``(zeta / N) g^2`` is ``(zeta / N) ||w||^2``.

  Args:
    x, y: the training data ``(P, N)``, ``(P,)``.
    penalty: ``c >= 0``.

  Returns:
    ``(w, b)``.

  References:
    Hoerl & Kennard, "Ridge Regression", Technometrics 1970.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xm, ym = x.mean(0), y.mean()
  xc, yc = x - xm, y - ym
  if penalty > 0:
    w = np.linalg.solve(xc.T @ xc + len(y) * penalty * np.eye(x.shape[1]), xc.T @ yc)
  else:
    w = np.linalg.pinv(xc) @ yc
  return w, float(ym - xm @ w)


def sgd_limit(w, b: float, x, y, init_scale: float = 1.0):
  r"""Where (S)GD on least squares converges from the iterate ``(w, b)``.

  .. math::
    \theta_\infty = s\,(I - A^+A)\,\theta + A^+ y, \qquad A = [X, 1]

  Each SGD step on ``mean (A theta - y)^2`` adds a combination of rows of A,
  so the part of ``theta`` outside their span is the initialization's, and
  the limit is the interpolating (or, for P > N + 1, least-squares) solution
  with that part kept. ``init_scale`` ``s`` rescales it: the limit from an
  initialization ``s`` times as large.

  Args:
    w, b: an iterate of plain SGD (its final parameters).
    x, y: the training data.
    init_scale: ``s``.

  Returns:
    ``(w, b)`` of the limit.

  References:
    Gunasekar et al., "Implicit Regularization in Matrix Factorization",
    NIPS 2017, section 2 (gradient descent on least squares from an
    initialization); Hastie et al., "Surprises in High-Dimensional Ridgeless
    Least Squares Interpolation", 2019, arXiv 1903.08560.
  """
  a = np.c_[np.asarray(x, np.float64), np.ones(len(y))]
  theta = np.r_[np.asarray(w, np.float64), b]
  pinv = np.linalg.pinv(a)
  out = init_scale * (theta - pinv @ (a @ theta)) + pinv @ np.asarray(y, np.float64)
  return out[:-1], float(out[-1])


def fitted_zeta(params, x, y, activation: str) -> float:
  r"""The gamma decay at which BN's final gamma is stationary for PN + gamma decay.

  .. math::
    \zeta = -\frac{1}{2\gamma}\,\frac{\partial}{\partial\gamma}\,
    \frac{1}{P}\sum_i \big(g(\gamma a_i + \beta) - y_i\big)^2, \qquad
    a_i = \frac{k\cdot x_i - \mu}{\sigma}

  with ``(mu, sigma)`` the training set's statistics of ``k . x`` (population
  normalization over the training data) and BN's own ``k``, ``gamma`` and
  ``beta``: the ``zeta`` whose explicit penalty ``zeta gamma^2`` would hold
  gamma where BN's batch statistics hold it.

  Args:
    params: a BN perceptron's parameters.
    x, y: its training data.
    activation: ``'linear'`` or ``'relu'``.

  Returns:
    zeta, a float.

  References:
    Luo et al. 2019, arXiv 1809.00846, section 2 (BN = PN + gamma decay).
  """
  k = np.asarray(params['dense']['kernel'], np.float64)[:, 0]
  gamma, beta = float(params['dense_norm']['scale'][0]), float(params['dense_norm']['bias'][0])
  h = np.asarray(x, np.float64) @ k
  a = (h - h.mean()) / math.sqrt(h.var() + EPSILON)
  pre = gamma * a + beta
  if activation == 'relu':
    out, slope = np.maximum(pre, 0.0), (pre > 0).astype(np.float64)
  else:
    out, slope = pre, np.ones_like(pre)
  grad = 2.0 * np.mean((out - np.asarray(y, np.float64)) * slope * a)
  return float(-grad / (2.0 * gamma))


# ------------------------------------------------------------------ report


def _measure(workdir, run):
  """Errors of one run against its teacher, from its last checkpoint."""
  c = run.config
  splits = data.teacher_student(c['num_train'], 1, c['input_dim'], activation=c['activation'],
                                noise_std=c['noise_std'], seed=c['seed'])
  x, y, teacher = splits['train'].x, splits['train'].y, splits['teacher']
  state = workdirs.Checkpoints(pathlib.Path(workdir) / run.name).latest_state()
  params, stats = state['params'], state.get('batch_stats', {})
  act = c['activation']
  error = lambda wb: teacher_error(*wb, teacher, act)
  steps, loss = run.series('loss')
  half = loss[steps > steps[-1] / 2] if steps.size else loss
  out = {'train_drop': float((half[0] - half[-1]) / half[0]) if half.size > 1 else 0.0}
  if c['norm'] == 'batch':
    for s in STATS:
      out[s] = error(affine_map(params, stats, 'batch', s, x))
    out['error'] = out['population']
    out['zeta'] = fitted_zeta(params, x, y, act)
    if c['batch_size'] < c['num_train']:
      out['zeta_gradient'] = implicit.gamma_decay(
          implicit.model_apply('perceptron', c['norm'], activation=c['activation']), params, x, y, [c['batch_size']],
          regression=True, partitions=GRADIENT_PARTITIONS)[c['batch_size']]['dense_norm']
    w, _ = affine_map(params, stats, 'batch', 'population')
    a = np.c_[np.asarray(x, np.float64), np.ones(len(y))]
    u = np.r_[w, 0.0] / np.linalg.norm(w)
    share = float(np.sum((u - np.linalg.pinv(a) @ (a @ u)) ** 2))
    out['null_share'] = share if share > 1e-9 else 0.0  # rounding when P > N
  else:
    wb = affine_map(params, stats, c['norm'])
    out['error'] = error(wb)
    if act == 'linear' and c['norm'] == 'none':
      for s in INIT_SCALES:
        out[_limit_key(s)] = error(sgd_limit(*wb, x, y, s))
    if act == 'linear' and c['norm'] == 'weight':
      out['closed_form'] = error(ridge(x, y, c['gamma_decay']))
  if act == 'linear' and c['norm'] == 'batch':  # shown beside BN, one per data set
    out['bayes'] = error(ridge(x, y, c['noise_std'] ** 2 / len(y)))
  return out


def _limit_key(scale: float) -> str:
  """The measurement of SGD's limit from its init scaled by ``scale`` (``'limit'``:
  its own init)."""
  return 'limit' if scale == 1 else f'limit{scale:g}'


def measure_all(workdir, runs) -> dict:
  """``{run name: measurements}`` of every finished run with a checkpoint."""
  return {name: _measure(workdir, run) for name, run in runs.items()
          if (pathlib.Path(workdir) / name / workdirs.CHECKPOINTS).is_dir()}


def _per_seed(measured, runs, arm, key='error') -> dict:
  """``{seed: value}`` of one arm (a run name without seed)."""
  return {s: measured[r.name][key] for s, r in study.seeds_of(runs, arm).items()
          if r.name in measured}


def _median_iqr(values) -> str:
  q1, q2, q3 = np.percentile(values, [25, 50, 75])
  return f'{q2:.3g} [{q1:.3g}, {q3:.3g}]'


def _paired(per_arm: list, seeds) -> list:
  """The seeds every arm of ``per_arm`` (``{seed: value}`` dicts) has."""
  return [s for s in seeds if all(s in arm for arm in per_arm)]


def _load_verdicts(activation, loads, seeds, measured, runs, n):
  """The three generalization verdicts of one activation (module docstring)."""
  bn, wn, sgd = (lambda p, m=m: run_name(activation, m, p)
                 for m in ('bn', 'wn_gamma_decay', 'sgd'))
  sgd_key = 'limit' if activation == 'linear' else 'error'
  err = {(m, p): _per_seed(measured, runs, f(p), key) for p in loads
         for m, f, key in (('bn', bn, 'error'), ('wn', wn, 'error'), ('sgd', sgd, sgd_key))}
  ok = _paired([err[k] for k in err], seeds)
  found = []
  if not ok:
    return found
  log = lambda a, b, p, s: math.log(err[(a, p)][s] / err[(b, p)][s])
  source = 'Luo et al. 2019, Figure 1'
  sgd_text = ('plain SGD\'s converged limit (closed form)' if activation == 'linear'
              else 'trained plain SGD')
  found.append(verdicts.paired(
      f'{activation}: WN + gamma decay with zeta from BN\'s batch size tracks BN (errors '
      f'within 25% on average over load)', source,
      'mean over alpha of |log(err WN / err BN)|',
      [float(np.mean([abs(log('wn', 'bn', p, s)) for p in loads])) for s in ok],
      threshold=TRACK_MARGIN,
      numbers='median errors per alpha (WN / BN): ' + ', '.join(
          f'{p / n:g}: {np.median([err[("wn", p)][s] for s in ok]):.3g} / '
          f'{np.median([err[("bn", p)][s] for s in ok]):.3g}' for p in loads)))
  found.append(verdicts.paired(
      f'{activation}: WN + gamma decay with zeta from BN\'s batch size tracks BN closer '
      f'than plain SGD does', source,
      f'mean over alpha of |log(err WN / err BN)| - |log(err SGD / err BN)|, SGD: {sgd_text}',
      [float(np.mean([abs(log('wn', 'bn', p, s)) - abs(log('sgd', 'bn', p, s))
                      for p in loads])) for s in ok]))
  low = [p for p in loads if p / n <= SMALL_LOAD]
  if low:
    found.append(verdicts.paired(
        f'{activation}: BN generalizes better than plain SGD at small load '
        f'(alpha <= {SMALL_LOAD:g})', source,
        f'mean over alpha <= {SMALL_LOAD:g} of log(err BN / err SGD), SGD: {sgd_text}',
        [float(np.mean([log('bn', 'sgd', p, s) for p in low])) for s in ok],
        numbers='median errors per alpha (BN / SGD): ' + ', '.join(
            f'{p / n:g}: {np.median([err[("bn", p)][s] for s in ok]):.3g} / '
            f'{np.median([err[("sgd", p)][s] for s in ok]):.3g}' for p in low)))
  return found


def _zeta_section(activation, spec, seeds, measured, runs, ax):
  """The fitted zeta against M (table, plot, two verdicts)."""
  p = spec['sweep_p']
  sizes = [m for m in spec['sweep'] if theory.effective_batch(m, p) < math.inf]
  arm = lambda m: run_name(activation, 'bn', p, m=None if m == BATCH else m)
  zetas = {m: _per_seed(measured, runs, arm(m), 'zeta') for m in sizes}
  ok = _paired(list(zetas.values()), seeds)
  grads = {m: _per_seed(measured, runs, arm(m), 'zeta_gradient') for m in sizes}
  rows = ['| M | M_eff | fitted zeta: median [IQR] | zeta M_eff | zeta from gradients '
          '(bnjax.implicit): median [IQR] | theory zeta M_eff |',
          '|---:|---:|---|---:|---|---:|']
  c = theory.gamma_decay_strength(1, activation)
  for m in sizes:
    values = [zetas[m][s] for s in ok]
    if values:
      me = theory.effective_batch(m, p)
      g = [grads[m][s] for s in ok if s in grads[m]]
      rows.append(f'| {m} | {me:.1f} | {_median_iqr(values)} | '
                  f'{np.median(values) * me:.3g} | {_median_iqr(g) if g else ""} | {c:g} |')
  found = []
  if len(sizes) >= 2 and ok:
    log_m = np.log([theory.effective_batch(m, p) for m in sizes])
    me = np.array([theory.effective_batch(m, p) for m in sizes])
    slopes, ratios = [], []
    for s in ok:
      z = np.array([zetas[m][s] for m in sizes])
      if np.all(z > 0):
        slopes.append(float(np.polyfit(log_m, np.log(z), 1)[0]) + 1.0)
        ratios.append(float(np.mean(np.log(z * me / c))))
    med = [np.median([zetas[m][s] for s in ok]) for m in sizes]
    ax.loglog(me, np.maximum(med, 1e-8), 'o-', label=f'{activation}: fitted (median)',
              color=COLORS[activation])
    ax.loglog(me, c / me, ':', label=f'{activation}: theory {c:g} / M_eff',
              color=COLORS[activation])
    source = 'Luo et al. 2019, section 2 and Figure 1'
    negative = len(ok) - len(slopes)
    note = f'; {negative} seed(s) with a zeta <= 0 left out' if negative else ''
    if slopes:
      found.append(verdicts.paired(
          f'{activation}: BN\'s fitted gamma decay zeta follows 1/M', source,
          f'slope of log zeta against log M_eff, plus 1 (M = {", ".join(map(str, sizes))} '
          f'on P = {p})', slopes, threshold=SLOPE_MARGIN, side='within',
          numbers=f'slopes {", ".join(f"{v - 1:.2f}" for v in slopes)}{note}'))
      found.append(verdicts.paired(
          f'{activation}: BN\'s fitted zeta is {c:g}/M (Luo et al.\'s '
          f'{"1/(2M)" if activation == "linear" else "1/(4M)"})', source,
          f'mean over M of log(zeta / ({c:g} / M_eff))', ratios, threshold=ZETA_MARGIN,
          side='within', numbers=f'zeta M_eff / {c:g} = '
          f'{", ".join(f"{math.exp(v):.2f}" for v in ratios)}{note}'))
  return '\n'.join(rows), found


def report(workdir):
  plt = study.pyplot()
  meta, runs = study.load_study(workdir)
  spec = PRESETS[meta['preset']]
  n, seeds = spec['n'], list(spec['seeds'])
  measured = measure_all(workdir, runs)
  loads = load_examples(spec)
  sections = [('Setup', study.finished_line(meta, runs) + f' N = {n} inputs, P = alpha N '
               f'training examples (a multiple of M = {BATCH}: every example every epoch), '
               f'label noise std {NOISE_STD} (noise floor {NOISE_STD ** 2:g}, not included '
               f'below), SGD lr {LEARNING_RATE} with a cosine decay to 0 over about '
               f'{spec["steps"]} steps, {len(seeds)} seed(s) per point (each its own teacher, '
               f'data and initialization). Error: against the noiseless teacher, from the '
               f'final parameters (linear: exact; ReLU: quadrature); BN with exact population '
               f'statistics unless stated. Medians [interquartile range] over seeds. Rules, '
               f'fixed before the runs, are in `experiments/teacher_student.py`.')]
  found = []
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, activation in zip(axes, ACTIVATIONS):
    compared = methods(activation, n)
    curves = {key: (label, 'error', '-') for key, (label, _) in compared.items()}
    curves['bn_running'] = (f'BN (M = {BATCH}), running statistics', 'running', '--')
    if activation == 'linear':
      curves['sgd_limit'] = ('plain SGD, converged limit (closed form)', 'limit', '--')
      curves['bayes'] = ('Bayes-optimal ridge (closed form)', 'bayes', ':')
    rows = []
    for key, (label, field, style) in curves.items():
      method = key if key in compared else {'bn_running': 'bn', 'sgd_limit': 'sgd',
                                            'bayes': 'bn'}[key]
      pts = {p: list(_per_seed(measured, runs, run_name(activation, method, p), field).values())
             for p in loads}
      pts = {p: v for p, v in pts.items() if v}
      if not pts:
        continue
      xs = sorted(pts)
      q = np.array([np.percentile(pts[p], [25, 50, 75]) for p in xs])
      ax.errorbar([p / n for p in xs], q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]],
                  fmt='o' + style, capsize=3, label=label, markersize=3,
                  color=COLORS.get(key, COLORS[method]))
      rows.append((label, {p: _median_iqr(pts[p]) for p in xs}))
    ax.set_ylabel('generalization error (noiseless teacher)')
    ax.set_yscale('log')
    ax.set_title(f'{activation} student, N = {n}')
    study.label_axes(ax, 'load alpha = P / N')
    table = ['| arm | ' + ' | '.join(f'alpha {p / n:g}' for p in loads) + ' |',
             '|---' * (len(loads) + 1) + '|']
    table += [f'| {label} | ' + ' | '.join(cells.get(p, '') for p in loads) + ' |'
              for label, cells in rows]
    bn_stats = ['| alpha | ' + ' | '.join(f'BN, {s} statistics' for s in STATS)
                + ' | BN direction outside the data span |', '|---' * 5 + '|']
    for p in loads:
      per = [list(_per_seed(measured, runs, run_name(activation, 'bn', p), s).values())
             for s in STATS + ('null_share',)]
      if all(per):
        bn_stats.append(f'| {p / n:g} | ' + ' | '.join(_median_iqr(v) for v in per) + ' |')
    converged = ['| arm | train loss drop over the second half (median, max over alpha '
                 'and seeds) |', '|---|---|']
    for key, (label, _) in compared.items():
      drops = [v for p in loads for v in _per_seed(
          measured, runs, run_name(activation, key, p), 'train_drop').values()]
      if drops:
        converged.append(f'| {label} | {np.median(drops):.2%}, {np.max(drops):.2%} |')
    text = '\n'.join(table) + '\n\nBN evaluated three ways:\n\n' + '\n'.join(bn_stats)
    text += '\n\nConvergence:\n\n' + '\n'.join(converged)
    if activation == 'linear':
      text += '\n\n' + _linear_checks(measured, runs, loads, n, spec)
    for v in _load_verdicts(activation, loads, seeds, measured, runs, n):
      found.append(v)
      text += '\n\n' + v.markdown()
    zeta_table, zeta_found = _zeta_section(activation, spec, seeds, measured, runs, axes[2])
    text += (f'\n\n### BN\'s fitted gamma decay against M (P = {spec["sweep_p"]})\n\n'
             + zeta_table)
    for v in zeta_found:
      found.append(v)
      text += '\n\n' + v.markdown()
    sections.append((f'{activation.capitalize()} student', text))
  axes[2].set_title('fitted zeta against the effective batch')
  axes[2].set_ylabel('zeta')
  study.label_axes(axes[2], 'M_eff = M (P - 1) / (P - M)')
  fig.tight_layout()
  png = study.savefig(fig, workdir, 'generalization')
  sections.insert(1, ('Generalization error against load', f'![generalization]({png})'))
  return study.write_report(workdir, 'Teacher-student generalization (Luo et al. 2019, '
                            'Figure 1)', sections, found)


def _linear_checks(measured, runs, loads, n, spec) -> str:
  """The linear student's closed-form checks: WN against its ridge limit, SGD's limit
  against its initialization's scale, BN at twice the steps, and the larger N."""
  lines = ['| alpha | WN + gamma decay trained / closed form | plain SGD trained / '
           'converged limit | ' + ' | '.join(f'SGD limit, init x {s:g}' for s in INIT_SCALES)
           + ' |', '|---' * (3 + len(INIT_SCALES)) + '|']
  for p in loads:
    wn = _per_seed(measured, runs, run_name('linear', 'wn_gamma_decay', p), 'error')
    wn_cf = _per_seed(measured, runs, run_name('linear', 'wn_gamma_decay', p), 'closed_form')
    sgd = _per_seed(measured, runs, run_name('linear', 'sgd', p), 'error')
    lim = [_per_seed(measured, runs, run_name('linear', 'sgd', p), _limit_key(s))
           for s in INIT_SCALES]
    if wn and sgd:
      lines.append(f'| {p / n:g} | {np.median(list(wn.values())):.3g} / '
                   f'{np.median(list(wn_cf.values())):.3g} | '
                   f'{np.median(list(sgd.values())):.3g} / '
                   f'{np.median(list(lim[INIT_SCALES.index(1.0)].values())):.3g} | '
                   + ' | '.join(f'{np.median(list(l.values())):.3g}' for l in lim) + ' |')
  text = ('Closed-form checks (medians; SGD\'s limit keeps its initialization\'s part '
          'outside the data span, scaled here by s):\n\n' + '\n'.join(lines))
  near = examples(1.0, n)
  rows = []
  for label, name, field in (
      (f'BN, N = {n}, {spec["steps"]} steps', run_name('linear', 'bn', near), 'population'),
      (f'BN, N = {n}, {2 * spec["steps"]} steps', run_name('linear', 'bn', near, long=True),
       'population'),
      (f'BN running statistics, N = {n}, {2 * spec["steps"]} steps',
       run_name('linear', 'bn', near, long=True), 'running')):
    v = list(_per_seed(measured, runs, name, field).values())
    if v:
      rows.append(f'| {label} | {near / n:g} | {_median_iqr(v)} |')
  if spec['large']:
    big, p, steps = spec['large']
    for label, method, field in (('BN', 'bn', 'population'),
                                 ('BN running statistics', 'bn', 'running'),
                                 ('WN + gamma decay', 'wn_gamma_decay', 'error'),
                                 ('WN + gamma decay, closed form', 'wn_gamma_decay',
                                  'closed_form'),
                                 ('plain SGD, trained', 'sgd', 'error'),
                                 ('plain SGD, converged limit', 'sgd', 'limit'),
                                 ('Bayes-optimal ridge', 'bn', 'bayes')):
      v = list(_per_seed(measured, runs, run_name('linear', method, p, n=big), field).values())
      if v:
        rows.append(f'| {label}, N = {big}, {steps} steps | {p / big:g} | {_median_iqr(v)} |')
  if rows:
    text += ('\n\nNear alpha = 1: training length and N:\n\n| arm | alpha | error: median '
             '[IQR] |\n|---|---:|---|\n' + '\n'.join(rows))
  return text


if __name__ == '__main__':
  study.run_study(STUDY)
