"""The effective_lr study: what it measures on the finished runs."""

import math
import pathlib

import numpy as np

from bnjax import theory
from bnjax.train import workdir as workdirs
from bnjax.train.studies import study
from bnjax.train.studies.effective_lr.presets import ERROR_WINDOW, EXACT_FACTORS, FAILED


def invariant_layers(run: study.Run) -> list:
  return sorted(k.split('/', 1)[1] for k in run.metrics[-1]
                if k.startswith('weight_norm/') and not k.endswith('/head'))


def time_constants(run: study.Run, name: str):
  """``(tau of the slowest layer, time constants it ran before the error window)``
  from :func:`bnjax.theory.equilibrium_time_constant` (Adam + L2's from the
  run's own gradient norm at unit weight norm); ``(None, inf)`` for a run
  without decay or without the gradient metric."""
  c = run.config
  if c['regularizer'] != 'l2' or c['weight_decay'] == 0:
    return None, math.inf
  window = ERROR_WINDOW * run.summary['steps']
  taus = []
  for layer in invariant_layers(run):
    steps, g2 = run.series(f'grad_sq_at_unit_norm/{layer}')
    if name == 'sgd':
      taus.append(theory.equilibrium_time_constant(
          'sgd', c['learning_rate'], c['weight_decay'], momentum=c['momentum']))
    elif g2.size and 'fan_in' in run.summary:
      taus.append(theory.equilibrium_time_constant(
          'adam_l2', c['learning_rate'], c['weight_decay'],
          fan_in=run.summary['fan_in'][layer],
          grad_norm=math.sqrt(float(np.mean(g2[steps > window / 2])))))
  if not taus:
    return None, math.inf
  tau = float(max(taus))
  return tau, window / tau


def error(run: study.Run) -> float:
  return run.late_test_error(ERROR_WINDOW)


def _grids(runs, name, n):
  """``{seed: (errors, time constants elapsed)}``, each an ``(n, n)`` grid."""
  out = {}
  for i in range(n):
    for j in range(n):
      for seed, run in study.seeds_of(runs, f'{name}_l2_lr{i}_wd{j}').items():
        errors, elapsed = out.setdefault(seed, (np.full((n, n), np.nan),
                                                np.full((n, n), np.nan)))
        errors[i, j] = error(run)
        elapsed[i, j] = time_constants(run, name)[1]
  return out


def seed_noise(grids: dict) -> float:
  """Pooled seed-to-seed standard deviation of the cells run with 2+ seeds (runs
  that failed to train left out)."""
  stack = np.array([g for g, _ in grids.values()])
  stack = np.where(stack < FAILED, stack, np.nan)
  if len(stack) < 2:
    return float('nan')
  ok = np.sum(~np.isnan(stack), axis=0) >= 2
  if not ok.any():
    return float('nan')
  var = np.nanvar(stack[:, ok], axis=0, ddof=1)
  dof = np.sum(~np.isnan(stack[:, ok]), axis=0) - 1
  return float(math.sqrt(np.sum(var * dof) / np.sum(dof)))


def fitted_power(errors: np.ndarray, lrs, lams) -> float:
  r"""The exponent p of the lines lr^p * lambda = const along which ``errors`` is flattest.

  Fits a quadratic surface to the finite cells in ``(x, y) = (ln lr, ln lambda)``
  (a plane below 6 cells) and takes the leading eigenvector ``(v_x, v_y)`` of
  the mean outer product of its gradient over the cells: if the error is any
  function of ``p x + y`` alone, every gradient is parallel to ``(p, 1)``, so
  ``p = v_x / v_y``.

  Args:
    errors: an ``(n, n)`` grid (rows: ``lrs``, columns: ``lams``), NaN for
      cells left out.
    lrs, lams: the grid's learning rates and lambdas.

  Returns:
    ``p`` (``inf`` when the error varies with lr alone; NaN with under 3 cells).

  Example:
    >>> import numpy as np
    >>> from bnjax.train.studies import effective_lr
    >>> lrs, lams = [0.01, 0.04, 0.16], [1e-3, 4e-3, 1.6e-2]
    >>> grid = np.array([[np.log(lr * lr * lam) ** 2 for lam in lams] for lr in lrs])
    >>> round(effective_lr.fitted_power(grid, lrs, lams), 6)
    2.0

  References:
    Li, "Sliced Inverse Regression for Dimension Reduction", JASA 1991, and
    Samarov, "Exploring Regression Structure Using Nonparametric Functional
    Estimation", JASA 1993 (the gradient outer product finds the direction a
    function varies along).
  """
  x, y = np.meshgrid(np.log(lrs), np.log(lams), indexing='ij')
  ok = np.isfinite(errors)
  if ok.sum() < 3:
    return float('nan')
  x, y, e = x[ok], y[ok], np.asarray(errors, float)[ok]
  quadratic = ok.sum() >= 6
  columns = [np.ones_like(x), x, y] + ([x * x, x * y, y * y] if quadratic else [])
  coef = np.linalg.lstsq(np.stack(columns, 1), e, rcond=None)[0]
  gx, gy = coef[1] + 0 * x, coef[2] + 0 * y
  if quadratic:
    gx, gy = gx + 2 * coef[3] * x + coef[4] * y, gy + coef[4] * x + 2 * coef[5] * y
  grads = np.stack([gx, gy], 1)
  _, vectors = np.linalg.eigh(grads.T @ grads)
  vx, vy = vectors[:, -1]
  return float(vx / vy) if vy != 0 else math.inf


def directions(workdir, run: study.Run) -> dict:
  """``{layer: (fan_in, units) array}``: the per-unit directions ``w / ||w||`` of
  every scale-invariant kernel in the run's last checkpoint (``None`` without one)."""
  folder = pathlib.Path(workdir) / run.name
  if not (folder / workdirs.CHECKPOINTS).is_dir():
    return None
  state = workdirs.Checkpoints(folder).latest_state()
  out = {}
  for layer in invariant_layers(run):
    kernel = np.asarray(state['params'][layer]['kernel'], np.float64)
    kernel = kernel.reshape(-1, kernel.shape[-1])
    out[layer] = kernel / np.linalg.norm(kernel, axis=0)
  return out


def direction_difference(a: dict, b: dict) -> float:
  """The largest coordinate of ``|a - b|`` over the layers of two
  :func:`directions` (0: the same directions; 2: opposite)."""
  return max(float(np.max(np.abs(a[layer] - b[layer]))) for layer in a)


def exact_line(workdir, runs, name: str) -> dict:
  """``{seed: {kind: (largest direction difference from the line's centre, largest
  |test error difference|)}}`` over the factors, for kind ``'rule'`` and
  ``'wrong'``; seeds without every run of the line left out."""
  out = {}
  centre = study.seeds_of(runs, f'{name}_exact_mid')
  for seed, mid in sorted(centre.items()):
    others = {(kind, k): study.seeds_of(runs, f'{name}_exact_{kind}{k}').get(seed)
              for kind in ('rule', 'wrong') for k in range(len(EXACT_FACTORS))}
    if any(r is None for r in others.values()):
      continue
    base = directions(workdir, mid)
    found = {key: directions(workdir, run) for key, run in others.items()}
    if base is None or any(d is None for d in found.values()):
      continue
    stats = {}
    for (kind, k), run in others.items():
      d = direction_difference(found[(kind, k)], base)
      e = abs(error(run) - error(mid))
      old = stats.get(kind, (0.0, 0.0))
      stats[kind] = (max(old[0], d), max(old[1], e))
    out[seed] = stats
  return out
