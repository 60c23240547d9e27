"""The teacher_student study: what it measures on the finished runs."""

import math
import pathlib

import numpy as np

from bnjax import implicit
from bnjax.train import data
from bnjax.train import workdir as workdirs
from bnjax.train.studies import study
from bnjax.train.studies.teacher_student.presets import (EPSILON, GRADIENT_PARTITIONS,
                                                         INIT_SCALES, STATS)


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
    g = float(p['layer_instance/kernel/scale'][0])
    return g * v / np.linalg.norm(v), float(p['layer_instance']['bias'][0])
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
          implicit.model_apply('perceptron', c['norm'], activation=c['activation']), params, x,
          y, [c['batch_size']],
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
