"""The bn_regularization study: what it measures on the finished runs."""

import pathlib
from typing import Optional

import numpy as np

from bnjax import implicit
from bnjax.train import executors, programs
from bnjax.train import workdir as workdirs
from bnjax.train.studies import study
from bnjax.train.studies.bn_regularization.presets import IMPLICIT_PARTITIONS


def mean_gamma_sq(run: study.Run) -> float:
  """Mean over the normalization layers of gamma^2 at the end of training."""
  last = run.metrics[-1]
  return float(np.mean([v for k, v in last.items() if k.startswith('gamma_sq/')]))


def spearman(x, y) -> float:
  """Rank correlation (no ties expected)."""
  rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
  return float(np.corrcoef(rx, ry)[0, 1])


def gamma_sq_change(run: study.Run, fraction: float = 0.25) -> dict:
  """``{layer: (gamma^2 at the end - at 1 - fraction of training) / gamma^2 at the
  end}`` of a run's logged gains: near 0 where gamma^2 has plateaued."""
  out = {}
  for key in sorted(k for k in run.metrics[-1] if k.startswith('gamma_sq/')):
    steps, g = run.series(key)
    start = g[min(np.searchsorted(steps, steps[-1] * (1 - fraction)), len(g) - 1)]
    out[key.split('/', 1)[1]] = float((g[-1] - start) / g[-1])
  return out


def interpolate_zeta(zetas, values, target: float, log: bool = True) -> Optional[float]:
  """The explicit gamma decay at which a swept quantity (PN's gamma^2, its test
  loss) equals ``target``: linear in zeta between the two swept values that
  bracket it (first bracket in increasing zeta; on log values when ``log``);
  ``None`` when no two neighbours bracket it."""
  order = np.argsort(zetas)
  z = np.asarray(zetas, float)[order]
  v = np.asarray(values, float)[order]
  if log:
    v, target = np.log(v), np.log(target)
  for i in range(len(z) - 1):
    lo, hi = v[i], v[i + 1]
    if lo != hi and min(lo, hi) <= target <= max(lo, hi):
      return float(z[i] + (target - lo) / (hi - lo) * (z[i + 1] - z[i]))
  return None


def eval_mode_loss(workdir, run: study.Run, split: str = 'train', batch_size: int = 1024):
  """The mean cross-entropy over a whole split (the training subset, or the test
  set) of the run's last checkpoint in eval mode, as the trainer evaluates
  (:func:`bnjax.train.executors.evaluate`, running averages); ``None`` without a
  checkpoint or for another ``bn_eval``."""
  config = run.as_config()
  folder = pathlib.Path(workdir) / run.name
  if config.bn_eval != 'running' or not (folder / workdirs.CHECKPOINTS).is_dir():
    return None
  state = workdirs.Checkpoints(folder).latest_state()
  arrays, batches = study.unshuffled_batches(config, split, batch_size)
  step = executors.make_eval_step(programs.build_model(config, host=True), False)
  restored = executors.TrainState(state['step'], state['params'],
                                  state.get('batch_stats') or {}, None)
  return executors.evaluate(step, restored, arrays, batches)['test_loss']


def implicit_decay(workdir, run: study.Run, sizes, sample: int) -> dict:
  """``{M: {layer: zeta}}`` of a BN run's last checkpoint, measured by
  :func:`bnjax.implicit.gamma_decay` on its first ``sample`` training examples."""
  config = run.as_config()
  state = workdirs.Checkpoints(pathlib.Path(workdir) / run.name).latest_state()
  batch = study.unshuffled_batches(config, 'train', sample)[1].batch(0, 0)
  return implicit.gamma_decay(implicit.model_apply(config.model, config.norm, width=config.width,
                                                   activation=config.activation,
                                                   batch_stats=state['batch_stats']),
                              state['params'], batch['x'], batch['y'], sizes,
                              partitions=IMPLICIT_PARTITIONS)
