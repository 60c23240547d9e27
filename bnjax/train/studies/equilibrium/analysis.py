"""The equilibrium study: what it measures on the finished runs."""

import itertools
import math
import pathlib

import jax
import numpy as np

from bnjax import dynamics, theory
from bnjax.train import executors, programs, step_metrics
from bnjax.train import workdir as workdirs
from bnjax.train.studies import study
from bnjax.train.studies.equilibrium.presets import OPTIMIZERS, TOLERANCE, UNIT_BATCHES


def invariant_layers(run: study.Run) -> list:
  """The tracked layers a batch-normed model makes scale-invariant (all but the head)."""
  return sorted(k.split('/', 1)[1] for k in run.metrics[-1]
                if k.startswith('angular_update/') and not k.endswith('/head'))


def late_mean(run: study.Run, key: str, start: float = 0.75, stop: float = 1.0) -> float:
  """Mean of a metric over the logged steps in ``[start, stop)`` of training (fractions)."""
  steps, values = run.series(key)
  total = run.summary['steps']
  keep = (steps > start * total) & (steps <= stop * total)
  return float(np.mean(values[keep]))


def measured_angle(run: study.Run, layer: str, start: float = 0.75) -> float:
  """The late RMS angle per step over the live units (the theory's quantity)."""
  steps, sq = run.angle_sq_series(layer)
  return math.sqrt(float(np.mean(sq[steps > start * run.summary['steps']])))


def measure(run: study.Run, name: str) -> list:
  """One row per invariant layer: measured and predicted angle and norm."""
  _, kind, momentum = OPTIMIZERS[name]
  c = run.config
  lr, lam = c['learning_rate'], c['weight_decay']
  lrs = study.scheduled_learning_rates(run)
  window = max(int(0.75 * run.summary['steps']), 1)  # where the late means start
  rows = []
  for layer in invariant_layers(run):
    fan_in = run.summary['fan_in'][layer]
    grad_norm = math.sqrt(late_mean(run, f'grad_sq_at_unit_norm/{layer}'))
    norm = late_mean(run, f'weight_norm/{layer}')
    rows.append(dict(
        layer=layer,
        angle=measured_angle(run, layer),
        dead=(late_mean(run, f'dead_units/{layer}') if f'dead_units/{layer}' in
              run.metrics[-1] else float('nan')),
        angle_theory=theory.equilibrium_angular_update(
            kind, lr, lam, momentum=momentum, fan_in=fan_in, grad_norm=grad_norm),
        norm=norm,
        norm_theory=theory.equilibrium_norm(kind, lr, lam, fan_in=fan_in,
                                            grad_norm=grad_norm, momentum=momentum),
        drift=abs(norm / late_mean(run, f'weight_norm/{layer}', 0.5, 0.75) - 1.0),
        tau=theory.equilibrium_time_constant(kind, lr, lam, momentum=momentum,
                                             fan_in=fan_in, grad_norm=grad_norm),
        elapsed=float(theory.time_constants_elapsed(
            kind, lrs[:window], lam, momentum=momentum, fan_in=fan_in,
            grad_norm=grad_norm)[-1]),
    ))
  return rows


def window_predictions(run: study.Run, name: str, layer: str):
  """``(steps, angle, norm)``: theory's equilibrium at every logged window, from that
  window's own gradient norm at unit weight norm (quasi-static: where the gradient
  drifts, so does the equilibrium the layer is approaching)."""
  _, kind, momentum = OPTIMIZERS[name]
  c = run.config
  steps, g2 = run.series(f'grad_sq_at_unit_norm/{layer}')
  keep = np.isfinite(g2) & (g2 > 0)
  fan_in = run.summary['fan_in'][layer]
  kw = dict(momentum=momentum, fan_in=fan_in)
  angle = [theory.equilibrium_angular_update(kind, c['learning_rate'], c['weight_decay'],
                                             grad_norm=math.sqrt(g), **kw) for g in g2[keep]]
  norm = [theory.equilibrium_norm(kind, c['learning_rate'], c['weight_decay'],
                                  grad_norm=math.sqrt(g), **kw) for g in g2[keep]]
  return steps[keep], np.array(angle), np.array(norm)


def adam_moments(state):
  """The ``{'count', 'mu', 'nu'}`` dict of Adam's state inside a restored checkpoint
  (dicts and lists) or a live optax state (named tuples)."""
  if hasattr(state, '_asdict'):
    state = state._asdict()
  if isinstance(state, dict):
    if {'count', 'mu', 'nu'} <= set(state):
      return state
    children = list(state.values())
  elif isinstance(state, (list, tuple)):
    children = list(state)
  else:
    return None
  for child in children:
    found = adam_moments(child)
    if found is not None:
      return found
  return None


def _unit_ratios(ratio: np.ndarray, live: np.ndarray) -> dict:
  """The live fraction and the measured / predicted norms of the live units with
  their median and quartiles."""
  return dict(live=float(np.mean(live)), ratios=ratio, ratio_median=float(np.median(ratio)),
              ratio_q25=float(np.quantile(ratio, 0.25)),
              ratio_q75=float(np.quantile(ratio, 0.75)))


def window_unit_scales(run: study.Run, layer: str, start: float = 0.75):
  r"""``(E||g~_j||^2, ||w_j||)`` per unit of ``layer``, means over the logged steps
  after ``start`` of training: the window the angle is measured over
  (:func:`measured_angle`).

  From the loop's ``per_unit/grad_sq_at_unit_norm/<layer>`` and
  ``per_unit/weight_norm/<layer>`` (each log line holds its window's mean over
  every step), so every step of the window counts once. ``None`` for a run
  logged before those metrics existed.
  """
  keys = [f'{step_metrics.PER_UNIT}{m}/{layer}' for m in ('grad_sq_at_unit_norm',
                                                          'weight_norm')]
  lines = [l for l in run.metrics
           if all(k in l for k in keys) and l['step'] > start * run.summary['steps']]
  if not lines:
    return None
  return tuple(np.mean([np.array(l[k], float) for l in lines], axis=0) for k in keys)


def checkpoint_unit_scales(run: study.Run, state, layer: str, b2: float = 0.999):
  r"""``(E||g~_j||^2, ||w_j||)`` per unit of ``layer`` read off Adam's bias-corrected
  second moment in a restored checkpoint ``state``:
  :math:`\lVert\tilde g_j\rVert^2 \approx \lVert w_j\rVert^2 \sum_c \hat v_{jc}`
  (Adam + L2's ``v`` also holds the ``lambda w`` term, and it averages the
  steps with weights decaying over ``1/(1 - b2)`` of them, ending at the checkpoint)."""
  moments = adam_moments(state['opt_state'])
  w = np.asarray(state['params'][layer]['kernel'], float)
  v = np.asarray(moments['nu'][layer]['kernel'], float) / (1 - b2 ** int(moments['count']))
  w, v = w.reshape(-1, w.shape[-1]), v.reshape(-1, v.shape[-1])
  norms = np.linalg.norm(w, axis=0)
  return v.sum(axis=0) * norms ** 2, norms


def unit_equilibrium(run: study.Run, name: str, layer: str, grad_sq: np.ndarray,
                     norms: np.ndarray) -> dict:
  r"""Theory's equilibrium predicted per unit from each unit's own gradient scale.

  For each live unit :math:`j` of ``layer`` (norm not collapsed,
  :func:`bnjax.dynamics.live_units`, and a gradient), theory's norm
  (:func:`bnjax.theory.equilibrium_norm`) and angle at
  ``grad_norm`` :math:`= \sqrt{E\lVert\tilde g_j\rVert^2}` (the gradient at unit
  norm): SGD's :math:`\lVert w^*_j\rVert^4 = \eta\,E\lVert\tilde g_j\rVert^2 /
  (2\lambda(1 - a))` (Wan et al. 2021, Theorem 1), Adam + L2's
  :math:`(\eta C \tilde\sigma_j / 2\lambda)^{1/3}` with
  :math:`\tilde\sigma_j^2 = E\lVert\tilde g_j\rVert^2 / C`, against the
  unit's measured norm ``norms``.

  Args:
    run: the finished run (its config and fan-ins).
    name: its optimizer arm (:data:`OPTIMIZERS`).
    layer: the layer.
    grad_sq, norms: per unit, :func:`window_unit_scales` or
      :func:`checkpoint_unit_scales` (or SGD's :func:`unit_grad_sq` with the
      checkpoint's norms).

  Returns:
    ``{'live', 'ratios', 'ratio_median', 'ratio_q25', 'ratio_q75',
    'angle_theory', 'norm_aggregate'}``: the fraction of live units, measured /
    predicted norm of each live unit and its quartiles, the RMS over them of
    the predicted per-step angle, and the layer's mean live norm over the mean
    of the per-unit predicted norms (the layer prediction aggregated as the
    layer's norm is).
  """
  _, kind, momentum = OPTIMIZERS[name]
  c = run.config
  kw = dict(momentum=momentum, fan_in=run.summary['fan_in'][layer])
  live = np.asarray(dynamics.live_units(norms)) & (grad_sq > 0)
  predicted = np.array([theory.equilibrium_norm(
      kind, c['learning_rate'], c['weight_decay'], grad_norm=math.sqrt(g), **kw)
                        for g in grad_sq[live]])
  angles = np.array([theory.equilibrium_angular_update(
      kind, c['learning_rate'], c['weight_decay'], grad_norm=math.sqrt(g), **kw)
                     for g in grad_sq[live]])
  return dict(_unit_ratios(norms[live] / predicted, live),
              angle_theory=float(np.sqrt(np.mean(angles ** 2))),
              norm_aggregate=float(np.mean(norms[live]) / np.mean(predicted)))


def unit_grad_sq(run: study.Run, state, batches: int = UNIT_BATCHES) -> dict:
  r"""``{layer: E_b ||g~_j||^2}`` per unit of every invariant layer of a checkpoint.

  :math:`\lVert\tilde g_j\rVert^2 = \lVert\nabla_{w_j} L_b\rVert^2 \lVert w_j\rVert^2`
  (the gradient a unit would get at unit norm: it scales as 1/||w||) of the
  training loss ``L_b`` of minibatch ``b`` of the run's batch size, in
  training mode (batch statistics, as the step saw them), averaged over the
  first ``batches`` batches of the unshuffled training set. The loss
  gradient only: L2's term is the optimizer's. For runs logged before
  :func:`window_unit_scales`'s metrics existed.
  """
  config = run.as_config()
  _, stream = study.unshuffled_batches(config, 'train', config.batch_size)
  model = programs.build_model(config, host=True)
  params, stats = state['params'], state.get('batch_stats') or {}

  @jax.jit
  def grads(x, y):
    def loss(p):
      out, _ = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                           mutable=['batch_stats'])
      return executors.objective(out, y, False)[0]
    return jax.grad(loss)(params)

  norms = {layer: kernel_unit_norms(state, layer) for layer in invariant_layers(run)}
  total = {layer: 0.0 for layer in norms}
  count = min(batches, stream.steps_per_epoch)
  for batch in itertools.islice(stream.epoch(0), count):
    g = grads(batch['x'], batch['y'])
    for layer, n in norms.items():
      total[layer] = total[layer] + np.sum(
          np.asarray(g[layer]['kernel'], float).reshape(-1, n.size) ** 2, axis=0)
  return {layer: total[layer] / count * norms[layer] ** 2 for layer in norms}


def unit_scales(run: study.Run, state, name: str):
  """``({layer: (E||g~_j||^2, ||w_j||)}, source)``: over the angle's window
  (:func:`window_unit_scales`, ``source='window'``) where the run logged it, else
  at the last checkpoint (``'checkpoint'``: Adam's second moment for Adam + L2,
  :func:`unit_grad_sq` for SGD)."""
  layers = invariant_layers(run)
  window = {layer: window_unit_scales(run, layer) for layer in layers}
  if all(v is not None for v in window.values()):
    return window, 'window'
  if OPTIMIZERS[name][1] == 'adam_l2':
    return {layer: checkpoint_unit_scales(run, state, layer) for layer in layers}, 'checkpoint'
  grad_sq = unit_grad_sq(run, state)
  return {layer: (grad_sq[layer], kernel_unit_norms(state, layer)) for layer in layers}, \
      'checkpoint'


def momentum_signal(state, layer: str, b1: float = 0.9, b2: float = 0.999) -> float:
  r"""Adam's first moment against its value for gradients uncorrelated between steps.

  .. math::
    \rho = \operatorname{mean}_i \frac{\hat m_i^2}{\hat v_i} \Big/ \frac{1 - \beta_1}{1 + \beta_1}

  over the layer's coordinates in a restored checkpoint ``state`` (bias-corrected
  moments). For zero-mean gradients uncorrelated between steps (the closed
  forms' assumption) the EMA ``m`` has variance ``(1 - b1)/(1 + b1)`` times
  ``v``'s, so ``rho = 1``; gradients correlated over the ~10 steps ``m``
  averages (a persistent direction, or Adam + L2's own ``lambda w`` term) give
  ``rho > 1``, and a random walk grows the norm faster than theory assumes;
  anticorrelated gradients (a step that overshoots, then the next back) give
  ``rho < 1``. ``nan`` without Adam moments.
  """
  moments = adam_moments(state['opt_state'])
  if moments is None:
    return float('nan')
  count = int(moments['count'])
  m = np.asarray(moments['mu'][layer]['kernel'], float) / (1 - b1 ** count)
  v = np.asarray(moments['nu'][layer]['kernel'], float) / (1 - b2 ** count)
  keep = v > 0
  return float(np.mean(m[keep] ** 2 / v[keep]) / ((1 - b1) / (1 + b1)))


def kernel_unit_norms(state, layer: str) -> np.ndarray:
  """The per-unit norms of ``layer``'s kernel in a restored checkpoint ``state``."""
  w = np.asarray(state['params'][layer]['kernel'], float)
  return np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0)


def last_states(workdir, runs, names) -> dict:
  """``{(optimizer, seed): (run, state)}``: each run's last checkpoint, read once."""
  out = {}
  for n in names:
    for seed, run in sorted(study.seeds_of(runs, n).items()):
      folder = pathlib.Path(workdir) / run.name
      if (folder / 'checkpoints').is_dir():
        out[(n, seed)] = (run, workdirs.Checkpoints(folder).latest_state())
  return out


def within(ratio: float) -> bool:
  return 1.0 / TOLERANCE <= ratio <= TOLERANCE
