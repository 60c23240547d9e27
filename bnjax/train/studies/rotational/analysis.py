"""The rotational study: what it measures on the finished runs."""

import math

import jax
import numpy as np
import optax

from bnjax import masks, theory, transforms
from bnjax.train import programs, step_metrics
from bnjax.train.studies import study
from bnjax.train.studies.rotational.presets import EARLY, SETTLED, run_name


def invariant_layers(run: study.Run) -> list:
  return sorted(k.split('/', 1)[1] for k in run.metrics[-1]
                if k.startswith('angular_update/') and not k.endswith('/head'))


def angle_ratios(run: study.Run, kind: str) -> dict:
  """``{layer: (steps, RMS angle / equilibrium angle)}`` at every logged step.

  The logged squared angle is a window mean (``angular_update_sq``), so the
  equilibrium angle is the window's RMS too: the squared equilibrium angle is
  linear in the learning rate, so it is the angle at the window's mean
  learning rate (under warmup the rate changes within a window). Runs logged
  before that metric give one step's mean angle: compared at that step's rate.
  """
  c = run.config
  lrs = study.scheduled_learning_rates(run)  # index t: step t + 1
  out = {}
  for layer in invariant_layers(run):
    steps, angle_sq = run.angle_sq_series(layer)
    windowed = f'angular_update_sq/{layer}' in run.metrics[-1]
    lr = [np.mean(lrs[max(s - c['log_every'], 0):s]) if windowed else lrs[s - 1]
          for s in steps]
    target = np.array([theory.equilibrium_angular_update(
        kind, max(float(l), 1e-12), c['weight_decay'], momentum=c['momentum'])
        for l in lr])
    out[layer] = (steps, np.sqrt(angle_sq) / target)
  return out


def settling_step(run: study.Run, kind: str) -> float:
  """The first logged step from which every layer's angle stays within
  :data:`SETTLED` of the equilibrium (``inf`` if none): descriptive, no verdict."""
  ratios = angle_ratios(run, kind)
  steps = next(iter(ratios.values()))[0]
  inside = np.all([np.abs(np.log(r)) <= math.log(SETTLED) for _, r in ratios.values()], 0)
  outside = np.flatnonzero(~inside)
  if not outside.size:
    return float(steps[0])
  return float(steps[outside[-1] + 1]) if outside[-1] + 1 < steps.size else math.inf


def early_deviation(run: study.Run, kind: str) -> float:
  """Max over layers of ``|log(mean early ratio)|``: the ratios of each window's RMS
  angle to the equilibrium one (:func:`angle_ratios`), averaged over the logged
  windows in the first :data:`EARLY` of the steps."""
  total = run.summary['steps']
  worst = 0.0
  for steps, ratio in angle_ratios(run, kind).values():
    early = ratio[steps <= max(EARLY * total, steps[0])]  # at least one logged step
    worst = max(worst, abs(math.log(float(np.mean(early)))))
  return worst


def wrapper_alone(run: study.Run, params, update_norm_decay: float, draws: int = 3) -> list:
  r"""``run``'s rotational optimizer on i.i.d. Gaussian gradients, the network left
  out: one :class:`study.Run` of early log lines per draw, for :func:`early_deviation`.

  The scale-invariant kernels of ``params`` (their shapes; the values are
  drawn anew and centred, as the run starts) take the run's learning-rate
  schedule, decay and inner optimizer (:func:`bnjax.transforms.rotational`)
  with the given ``update_norm_decay`` for the first :data:`EARLY` of its
  steps, logged as the loop logs them (``angular_update_sq``, window means);
  each gradient coordinate is N(0, 1), independent between steps. The early
  deviation left is the wrapper's own: its bias-corrected average of the
  update norm lags the inner update's changing norm (AdamW's
  :math:`\hat m/\sqrt{\hat v}` falls from 1 per coordinate towards
  :math:`\sqrt{(1-\beta_1)/(1+\beta_1)}`; SGD's momentum buffer grows);
  ``update_norm_decay=0`` puts every step at the target.
  """
  config = run.as_config()
  mask = masks.scale_invariant_kernels(params)
  tx = transforms.rotational(
      'adamw' if config.optimizer == 'adam' else 'sgd', programs.learning_rate_schedule(config),
      config.weight_decay, momentum=config.momentum, eps=config.adam_eps, mask=mask,
      update_norm_decay=update_norm_decay)
  layers, total, every = invariant_layers(run), run.summary['steps'], config.log_every

  def normal_like(key, tree):
    leaves, structure = jax.tree_util.tree_flatten(tree)
    return structure.unflatten([jax.random.normal(k, np.shape(x)) for k, x in
                                zip(jax.random.split(key, len(leaves)), leaves)])

  def step(w, state, key):
    g = normal_like(key, w)
    updates, state = tx.update(g, state, w)
    new = optax.apply_updates(w, updates)
    return new, state, step_metrics.unit_angle_metrics(w, new, g)

  steps = max(int(EARLY * total) // every, 1) * every
  # Compiling the step (7 s for the standard preset's ConvNet on a 2-core CPU)
  # pays off over about 26 steps run op by op (0.27 s each there).
  step = jax.jit(step) if steps * draws > 30 else step
  out = []
  for draw in range(draws):
    key, start = jax.random.split(jax.random.PRNGKey(draw))
    w = transforms.center_units(normal_like(start, params), mask)
    state, lines, window = tx.init(w), [], []
    for t in range(1, steps + 1):
      key, sub = jax.random.split(key)
      w, state, metrics = step(w, state, sub)
      window.append(metrics)
      if t % every == 0:
        line = {'step': t}
        for name in layers:
          line[f'angular_update_sq/{name}'] = float(np.mean(
              [m[f'angular_update_sq/{name}'] for m in window]))
          line[f'angular_update/{name}'] = math.sqrt(line[f'angular_update_sq/{name}'])
        lines.append(line)
        window = []
    out.append(study.Run(f'{run.name} (wrapper alone, draw {draw})', run.config,
                         {'steps': total}, lines))
  return out


def time_constants(run: study.Run, kind: str):
  """``(tau at the peak lr, time constants elapsed by the end)``."""
  c = run.config
  tau = theory.equilibrium_time_constant(kind, c['learning_rate'], c['weight_decay'],
                                         momentum=c['momentum'])
  elapsed = theory.time_constants_elapsed(
      kind, np.maximum(study.scheduled_learning_rates(run), 1e-12), c['weight_decay'],
      momentum=c['momentum'])[-1]
  return tau, float(elapsed)


def _seeds(runs, arm, warmup) -> dict:
  """``{seed: run}`` of one arm."""
  return {r.config['seed']: r for n, r in runs.items()
          if n == run_name(arm, warmup, r.config['seed'])}


def _paired(runs, a, b):
  """Per seed present in both arms (without warmup): ``(run_a, run_b)``."""
  ra, rb = _seeds(runs, a, False), _seeds(runs, b, False)
  return [(ra[s], rb[s]) for s in sorted(set(ra) & set(rb))]
