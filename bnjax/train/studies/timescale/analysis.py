"""The timescale study: what it measures on the finished runs."""

import math

import numpy as np

from bnjax import theory
from bnjax.train.studies import study
from bnjax.train.studies.timescale.presets import LEARNING_RATE


def tau_epochs(run: study.Run) -> float:
  """The run's EMA timescale in epochs (:func:`bnjax.theory.ema_timescale`)."""
  return theory.ema_timescale(run.config['learning_rate'], run.config['weight_decay'],
                              run.as_config().steps_per_epoch())


def grid(runs) -> dict:
  """``{size: {seed: {tau_epoch: test error}}}`` of the finished runs."""
  out = {}
  for run in runs.values():
    size, seed = run.config['train_subset'], run.config['seed']
    tau = round(tau_epochs(run), 9)
    out.setdefault(size, {}).setdefault(seed, {})[tau] = run.test_error
  return out


def best_tau(errors: dict):
  r"""``(tau*, at_edge)``: the tau_epoch of least test error on one curve.

  .. math::
    \log_2 \tau^* = -\frac{b}{2a}, \qquad e(\tau) \approx a (\log_2\tau)^2 + b \log_2\tau + c

  the vertex of the least-squares parabola in :math:`\log_2\tau` through the
  least point and its neighbours (interpolating between grid points), when
  that parabola is convex; else the least grid point. ``at_edge``: the least
  grid point is the first or last (the grid does not bracket the optimum).
  """
  taus = sorted(errors)
  e = np.array([errors[t] for t in taus])
  i = int(np.argmin(e))
  edge = i in (0, len(taus) - 1)
  if edge or len(taus) < 3:
    return taus[i], edge
  x = np.log2(taus[i - 1:i + 2])
  a, b, _ = np.polyfit(x, e[i - 1:i + 2], 2)
  if a <= 0:
    return taus[i], edge
  return float(2.0 ** np.clip(-b / (2 * a), x[0], x[-1])), edge


def best_lambda(tau: float, size: int, batch_size: int) -> float:
  """The weight decay of timescale ``tau`` (epochs) at ``size`` training examples."""
  return theory.weight_decay_for_timescale(LEARNING_RATE, tau, max(size // batch_size, 1))


def per_seed_best(table: dict) -> dict:
  """``{seed: {size: (tau*, at_edge)}}`` for the seeds every size has."""
  seeds = sorted(set.intersection(*(set(v) for v in table.values()))) if table else []
  return {s: {size: best_tau(table[size][s]) for size in sorted(table)} for s in seeds}


def mean_curve_edges(table: dict) -> list:
  """The sizes whose mean-over-seeds error is least at the first or last tau of
  the grid (the grid does not bracket their optimum)."""
  out = []
  for size, seeds in sorted(table.items()):
    taus = sorted(set.intersection(*(set(v) for v in seeds.values())))
    mean = {t: float(np.mean([v[t] for v in seeds.values()])) for t in taus}
    if best_tau(mean)[1]:
      out.append(size)
  return out


def spread(best: dict) -> float:
  """Largest ``|log2(tau*_a / tau*_b)|`` over pairs of sizes of one seed."""
  logs = [math.log2(t) for t, _ in best.values()]
  return max(logs) - min(logs)
