r"""Rotational equilibrium: measured angular updates and norms against bnjax.theory.

Trains the ConvNet with batch norm under SGD + L2, SGD with momentum + L2,
AdamW and Adam + L2, each with a decay strong enough that the scale-invariant
kernels reach equilibrium within the run, and compares, per layer, the
measured angular update per step and per-unit weight norm (means over the
last quarter of training) with the closed forms of :mod:`bnjax.theory`:

* angular update: ``sqrt(2 lr lambda / (1 + a))`` (SGD, momentum ``a``) and
  ``sqrt(2 lr lambda (1 - b1) / (1 + b1))`` (AdamW) need nothing measured;
  Adam + L2's needs the gradient norm at unit weight norm ``||g~||``;
* weight norm: AdamW's ``sqrt(lr C / (2 lambda))`` needs only the fan-in C;
  SGD's and Adam + L2's need ``E||g~||^2``, which the run measures
  (``grad_sq_at_unit_norm/<layer>``, averaged over the same steps).

Adam + L2 is also predicted per unit from Adam's own second moment at the
last checkpoint (:func:`adam_unit_equilibrium`), and SGD's norm from each
unit's own gradient there (:func:`sgd_unit_equilibrium`), leaving dead units
out: the layer-mean gradient mixes units whose equilibria differ.

  python -m experiments.equilibrium --preset=quick --workdir=runs/equilibrium
"""

import dataclasses
import itertools
import math
import pathlib
from typing import Optional

import jax
import numpy as np

from bnjax import dynamics, theory
from bnjax.train import executors, programs
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config
from bnjax.train.studies import study, verdicts

STUDY = 'equilibrium'

# A prediction "holds" within this factor (declared before any run): the
# closed forms assume gradient noise that is stationary and uncorrelated
# between steps, which a real network only approximates.
TOLERANCE = 1.25
# Means over the last quarter of the logged steps; equilibrated means the
# norm moved less than EQUILIBRATED between the third and the last quarter.
EQUILIBRATED = 0.05
# Fewer time constants of approach (bnjax.theory.equilibrium_time_constant)
# than this before the averaging window: the run is still in its transient.
FAR = 3.0

# Training batches, in order, over which a checkpoint's per-unit gradient
# scale E||g~_j||^2 is averaged for SGD's per-unit prediction.
UNIT_BATCHES = 20

# name: (config overrides, theory optimizer name, momentum for theory)
OPTIMIZERS = {
    'sgd': (dict(optimizer='sgd', momentum=0.0, learning_rate=0.2, regularizer='l2',
                 weight_decay=1e-2),
            'sgd', 0.0),
    'momentum': (dict(optimizer='sgd', momentum=0.9, learning_rate=0.02,
                      regularizer='l2', weight_decay=1e-2), 'sgd', 0.9),
    'adamw': (dict(optimizer='adam', learning_rate=2e-3, regularizer='decoupled',
                   weight_decay=1.0), 'adamw', 0.0),
    'adam_l2': (dict(optimizer='adam', learning_rate=2e-3, regularizer='l2',
                     weight_decay=5e-2), 'adam_l2', 0.0),
    # The default ConvNet (widths 32/64/128) under the momentum run's settings:
    # whether every layer, the last conv included, reaches theory's angle there.
    'momentum_width32': (dict(optimizer='sgd', momentum=0.9, learning_rate=0.02,
                              regularizer='l2', weight_decay=1e-2, width=32), 'sgd', 0.9),
}
NARROW = ('sgd', 'momentum', 'adamw', 'adam_l2')

PRESETS = {
    # seeds: of every optimizer's run; arms: the OPTIMIZERS run (default NARROW);
    # epochs: {arm: num_epochs} where an arm needs fewer than base's to run 10+
    # time constants before the averaging window (SGD's and momentum's tau is
    # 125 steps: one epoch of 1,875 steps gives 11; AdamW's tau of 250 and
    # Adam + L2's conv1 keep two).
    'smoke': dict(seeds=(0,), base=Config(
        train_subset=1024, batch_size=32, num_epochs=2, width=8, log_every=4,
        checkpoint_every=32, eval_batch_size=2000)),
    # quick: a look (one epoch: Adam + L2's conv1 is marked far from equilibrium).
    'quick': dict(seeds=(0,), base=Config(
        train_subset=0, batch_size=32, num_epochs=1, width=16, log_every=25,
        checkpoint_every=500)),
    'standard': dict(seeds=(0, 1, 2), arms=tuple(OPTIMIZERS),
                     epochs=dict(sgd=1, momentum=1, momentum_width32=1), base=Config(
        train_subset=0, batch_size=32, num_epochs=2, width=16, log_every=25,
        checkpoint_every=500)),
    'paper': dict(seeds=(0, 1, 2), base=Config(
        dataset='cifar10', model='resnet20', augment=True, batch_size=128, num_epochs=50,
        log_every=50, checkpoint_every=1000)),
}


def configs(preset: str, parallel: str = 'none') -> dict:
  spec = PRESETS[preset]
  base = dataclasses.replace(spec['base'], parallel=parallel, norm='batch')
  epochs = spec.get('epochs', {})
  return {study.seeded(name, seed): dataclasses.replace(
              base, **OPTIMIZERS[name][0], seed=seed,
              num_epochs=epochs.get(name, base.num_epochs))
          for name in spec.get('arms', NARROW) for seed in spec['seeds']}


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


def adam_unit_equilibrium(state, run: study.Run, layer: str, b2: float = 0.999) -> dict:
  r"""Adam + L2's equilibrium predicted per unit from Adam's own second moment.

  In a run's restored last checkpoint ``state`` (:func:`last_states`), for
  each unit :math:`j` of ``layer`` (fan-in C):
  :math:`\sigma_j = \sqrt{\operatorname{mean}_c \hat v_{jc}}` (Adam's
  bias-corrected second moment, which holds the gradient noise the update is
  divided by), at unit norm :math:`\tilde\sigma_j = \sigma_j \lVert w_j \rVert`
  (the gradient scales as 1/||w||), and theory's
  :math:`\lVert w^*_j \rVert = (\eta C \tilde\sigma_j / 2\lambda)^{1/3}` and
  angle. Units whose norm collapsed (:func:`bnjax.dynamics.live_units`) or
  whose second moment is 0 are dead and left out.

  Returns:
    ``{'live', 'ratios', 'ratio_median', 'ratio_q25', 'ratio_q75',
    'angle_theory'}``: the fraction of live units, measured / predicted norm
    of each live unit and its quartiles, and the RMS over them of the
    predicted per-step angle.
  """
  moments = adam_moments(state['opt_state'])
  w = np.asarray(state['params'][layer]['kernel'], float)
  v = np.asarray(moments['nu'][layer]['kernel'], float) / (1 - b2 ** int(moments['count']))
  w, v = w.reshape(-1, w.shape[-1]), v.reshape(-1, v.shape[-1])
  fan_in = w.shape[0]
  norms = np.linalg.norm(w, axis=0)
  sigma = np.sqrt(v.mean(axis=0)) * norms
  live = np.asarray(dynamics.live_units(norms)) & (sigma > 0)
  c = run.config
  kw = dict(fan_in=fan_in)
  predicted = np.array([theory.equilibrium_norm(
      'adam_l2', c['learning_rate'], c['weight_decay'], grad_norm=s * math.sqrt(fan_in), **kw)
                        for s in sigma[live]])
  angles = np.array([theory.equilibrium_angular_update(
      'adam_l2', c['learning_rate'], c['weight_decay'], grad_norm=s * math.sqrt(fan_in), **kw)
                     for s in sigma[live]])
  return dict(_unit_ratios(norms[live] / predicted, live),
              angle_theory=float(np.sqrt(np.mean(angles ** 2))))


def unit_grad_sq(run: study.Run, state, batches: int = UNIT_BATCHES) -> dict:
  r"""``{layer: E_b ||g~_j||^2}`` per unit of every invariant layer of a checkpoint.

  :math:`\lVert\tilde g_j\rVert^2 = \lVert\nabla_{w_j} L_b\rVert^2 \lVert w_j\rVert^2`
  (the gradient a unit would get at unit norm: it scales as 1/||w||) of the
  training loss ``L_b`` of minibatch ``b`` of the run's batch size, in
  training mode (batch statistics, as the step saw them), averaged over the
  first ``batches`` batches of the unshuffled training set. The loss
  gradient only: L2's term is the optimizer's.
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


def sgd_unit_equilibrium(run: study.Run, state, name: str, grad_sq: dict) -> dict:
  r"""SGD's equilibrium norm predicted per unit from the unit's own gradient scale.

  For each live unit :math:`j` (:func:`bnjax.dynamics.live_units`) of each
  layer, theory's norm (:func:`bnjax.theory.equilibrium_norm`,
  :math:`\lVert w^*_j\rVert^4 = \eta\,E\lVert\tilde g_j\rVert^2 / (2\lambda(1 - a))`,
  Wan et al. 2021, Theorem 1) from
  ``grad_sq[layer]`` (:func:`unit_grad_sq`), against the unit's norm in the
  checkpoint. SGD's angle does not depend on the gradient: per unit it is the
  layer's.

  Returns:
    ``{layer: {'live', 'ratios', 'ratio_median', 'ratio_q25', 'ratio_q75'}}``.
  """
  _, kind, momentum = OPTIMIZERS[name]
  c = run.config
  out = {}
  for layer, g2 in grad_sq.items():
    norms = kernel_unit_norms(state, layer)
    fan_in = np.asarray(state['params'][layer]['kernel']).size // norms.size
    live = np.asarray(dynamics.live_units(norms)) & (g2 > 0)
    predicted = np.array([theory.equilibrium_norm(
        kind, c['learning_rate'], c['weight_decay'], momentum=momentum, fan_in=fan_in,
        grad_norm=math.sqrt(g)) for g in g2[live]])
    out[layer] = _unit_ratios(norms[live] / predicted, live)
  return out


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


def _unit_distributions(workdir, states, rows_of, names, sgd_units):
  """Per-unit norms over theory at the end, every optimizer and layer (all seeds):
  a figure of their distributions and a table of quartiles and dead units; SGD's
  units against their own predictions (``sgd_units``, :func:`sgd_unit_equilibrium`)."""
  plt = study.pyplot()
  found = {}
  for (n, seed), (run, state) in states.items():
    for row in rows_of[(n, seed)]:
      layer = row['layer']
      if n == 'adam_l2':
        unit = adam_unit_equilibrium(state, run, layer)
      elif (n, seed) in sgd_units:
        unit = sgd_units[(n, seed)][layer]
      else:  # AdamW: the layer's prediction needs no gradient
        norms = kernel_unit_norms(state, layer)
        live = np.asarray(dynamics.live_units(norms))
        unit = _unit_ratios(norms[live] / row['norm_theory'], live)
      ratios, collapsed = unit['ratios'], 1.0 - unit['live']
      entry = found.setdefault((n, layer), {'ratios': [], 'collapsed': []})
      entry['ratios'].append(ratios)
      entry['collapsed'].append(collapsed)
  if not found:
    return None
  fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
  table = ['| run | layer | units (all seeds) | per-unit norm / theory: 10% | 25% | median | '
           '75% | 90% | collapsed units |', '|---|---|---|---|---|---|---|---|---|']
  for col, n in enumerate(names):
    layers = [layer for (m, layer) in found if m == n]
    for i, layer in enumerate(layers):
      ratios = np.concatenate(found[(n, layer)]['ratios'])
      q = np.quantile(ratios, [0.1, 0.25, 0.5, 0.75, 0.9])
      table.append(f'| {n} | {layer} | {ratios.size} | ' + ' | '.join(f'{v:.3f}' for v in q)
                   + f' | {np.mean(found[(n, layer)]["collapsed"]):.1%} |')
      axes[0, col].hist(ratios, bins=30, histtype='step', color=f'C{i}', label=layer)
    axes[0, col].axvline(1.0, color='k', ls='--', lw=1)
    axes[0, col].set_title(f'{n}: per-unit norm / theory')
    axes[0, col].legend(fontsize=7)
  png = study.savefig(fig, workdir, 'unit_norms')
  return (f'![unit norms]({png})\n\nAt the last checkpoint of every seed: each live unit\'s '
          'norm over theory\'s (AdamW: the layer\'s, which needs no gradient; SGD and '
          'momentum: the unit\'s own from its gradient at the end; Adam + L2: the unit\'s '
          'own from Adam\'s second moment; both as above). A '
          'spread around 1 is per-unit noise; a shifted layer is a layer the layer-level '
          'prediction misses.\n\n' + '\n'.join(table))


def _adam_per_unit(states):
  """The per-unit Adam + L2 table and its two verdicts, from the last checkpoints."""
  seeds = {seed: pair for (n, seed), pair in states.items() if n == 'adam_l2'}
  if not seeds:
    return None
  table = ['| seed | layer | live units | measured / predicted norm: median (quartiles) | '
           'angle measured (RMS) | angle predicted (RMS over units) | ratio |',
           '|---|---|---|---|---|---|---|']
  norm_stat, angle_stat, shown = [], [], []
  for seed, (run, state) in seeds.items():
    worst_norm = worst_angle = 0.0
    for layer in invariant_layers(run):
      unit = adam_unit_equilibrium(state, run, layer)
      angle = measured_angle(run, layer)
      table.append(f'| {seed} | {layer} | {unit["live"]:.1%} | {unit["ratio_median"]:.3f} '
                   f'({unit["ratio_q25"]:.3f}-{unit["ratio_q75"]:.3f}) | {angle:.4g} | '
                   f'{unit["angle_theory"]:.4g} | {angle / unit["angle_theory"]:.3f} |')
      worst_norm = max(worst_norm, abs(math.log(unit['ratio_median'])))
      worst_angle = max(worst_angle, abs(math.log(angle / unit['angle_theory'])))
    norm_stat.append(worst_norm)
    angle_stat.append(worst_angle)
  source = 'Kosson et al. 2024, section 3; bnjax.theory.equilibrium_norm (Adam + L2)'
  found = [verdicts.paired(
      f'adam_l2, per unit from Adam\'s second moment: measured {what} matches theory within '
      f'a factor {TOLERANCE} in every layer', source,
      f'max over layers of |log(measured/predicted)| ({what}; {kind}), against log '
      f'{TOLERANCE}', stat, threshold=float(np.log(TOLERANCE)),
      numbers='per seed ' + ', '.join(f'{v:.3f}' for v in stat))
           for what, kind, stat in (
               ('norm', 'the median over live units', norm_stat),
               ('angle', 'RMS angle against the RMS of the per-unit predictions', angle_stat))]
  text = ('At the last checkpoint each live unit\'s gradient scale is read off Adam\'s '
          'bias-corrected second moment (sigma_j = RMS of sqrt(v) over its fan-in, times its '
          'norm: the gradient at unit norm), and theory predicts that unit\'s norm and angle; '
          'dead units (collapsed norm or no second moment) are left out. This replaces the '
          'layer-mean gradient norm of the table above, which mixes units and steps.\n\n'
          + '\n'.join(table) + '\n\n' + '\n\n'.join(v.markdown() for v in found))
  return text, found


def _sgd_per_unit(sgd_units: dict, arms) -> Optional[tuple]:
  """The per-unit SGD table and one norm verdict per SGD arm (``arms``)."""
  if not sgd_units:
    return None
  table = ['| run | seed | layer | live units | measured / predicted norm: median '
           '(quartiles) |', '|---|---|---|---|---|']
  found = []
  for n in arms:
    stat = []
    for (m, seed), units in sorted(sgd_units.items()):
      if m != n:
        continue
      for layer, unit in units.items():
        table.append(f'| {n} | {seed} | {layer} | {unit["live"]:.1%} | '
                     f'{unit["ratio_median"]:.3f} ({unit["ratio_q25"]:.3f}-'
                     f'{unit["ratio_q75"]:.3f}) |')
      stat.append(max(abs(math.log(u['ratio_median'])) for u in units.values()))
    if stat:
      found.append(verdicts.paired(
          f'{n}, per unit from its own gradient: measured norm matches theory within a '
          f'factor {TOLERANCE} in every layer', 'Wan et al. 2021, Theorem 1; '
          'bnjax.theory.equilibrium_norm (SGD)',
          f'max over layers of |log(measured/predicted)| (norm; the median over live units), '
          f'against log {TOLERANCE}', stat, threshold=float(np.log(TOLERANCE)),
          numbers='per seed ' + ', '.join(f'{v:.3f}' for v in stat)))
  text = ('At the last checkpoint each live unit\'s gradient scale E||g~_j||^2 (its loss '
          'gradient times its norm, squared: the gradient at unit norm) is averaged over the '
          f'first {UNIT_BATCHES} training batches in training mode, and theory predicts that '
          'unit\'s norm; dead units are left out. The layer-level table above uses the layer\'s '
          'late mean over units and steps instead.\n\n'
          + '\n'.join(table) + '\n\n' + '\n\n'.join(v.markdown() for v in found))
  return text, found


def _momentum_signal_table(states, rows_of) -> Optional[str]:
  """:func:`momentum_signal` of every Adam run and layer beside its norm over theory."""
  table = ['| run | seed | layer | rho = mean(m^2/v) / ((1 - b1)/(1 + b1)) | norm measured / '
           'theory |', '|---|---|---|---|---|']
  for (n, seed), (_, state) in sorted(states.items()):
    if OPTIMIZERS[n][1] not in ('adamw', 'adam_l2'):
      continue
    for row in rows_of[(n, seed)]:
      table.append(f'| {n} | {seed} | {row["layer"]} | '
                   f'{momentum_signal(state, row["layer"]):.3f} | '
                   f'{row["norm"] / row["norm_theory"]:.3f} |')
  if len(table) == 2:
    return None
  return ('The closed forms assume gradients uncorrelated between steps. Adam\'s moments at '
          'the last checkpoint test that: rho = 1 when they are (the first moment then has '
          '(1 - b1)/(1 + b1) of the second\'s variance), rho > 1 when the gradient keeps a '
          'direction over the ~10 steps the first moment averages, which grows the norm '
          'faster than theory assumes. Adam + L2\'s gradient includes its own lambda w, '
          'a persistent term by construction.\n\n' + '\n'.join(table))


def within(ratio: float) -> bool:
  return 1.0 / TOLERANCE <= ratio <= TOLERANCE


def report(workdir):
  plt = study.pyplot()

  meta, runs = study.load_study(workdir)
  names = [n for n in OPTIMIZERS if study.seeds_of(runs, n)]
  setup = [study.finished_line(meta, runs) + ' '
           f'ConvNet with batch norm; measured values are means over the last quarter of '
           f'the logged steps: the angle per step as the root mean square over the '
           f'layer\'s live units and every step (dead units, which get no gradient or '
           f'whose norm collapsed, counted apart), the norm from each log line\'s step, '
           f'averaged over the units. A prediction holds within a factor '
           f'{TOLERANCE} (fixed before the runs); "equilibrated" means the norm moved less '
           f'than {EQUILIBRATED:.0%} between the third and last quarter; a layer with '
           f'fewer than {FAR:g} time constants of approach (tau, from bnjax.theory) '
           f'before the last quarter is marked far from equilibrium.', '',
           '| run | optimizer | lr | lambda | steps | seeds |', '|---|---|---|---|---|---|']
  for n in names:
    seeds = study.seeds_of(runs, n)
    first = seeds[min(seeds)]
    c = first.config
    setup.append(f'| {n} | {c["optimizer"]} ({c["regularizer"]}) | {c["learning_rate"]:g} | '
                 f'{c["weight_decay"]:g} | {first.summary["steps"]} | {len(seeds)} |')
  sections = [('Setup', '\n'.join(setup))]
  if not names:
    return study.write_report(workdir, 'Rotational equilibrium', sections, [])

  fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 6), squeeze=False)
  table = ['| run | seed | layer | C | dead units | angle measured (RMS) | angle theory | ratio | '
           'norm measured | norm theory | ratio | norm drift | tau (steps) | time '
           'constants before the window |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  lines, found, rows_of = [], [], {}
  for col, n in enumerate(names):
    measured = {seed: (run, measure(run, n))
                for seed, run in sorted(study.seeds_of(runs, n).items())}
    rows_of.update({(n, seed): rows for seed, (_, rows) in measured.items()})
    for seed, (run, rows) in measured.items():
      for i, row in enumerate(rows):
        if seed == min(measured):
          colour = f'C{i}'
          steps, angle_sq = run.angle_sq_series(row['layer'])
          _, norm = run.series(f'weight_norm/{row["layer"]}')
          axes[0, col].semilogy(steps, np.sqrt(angle_sq), colour, lw=0.8, label=row['layer'])
          axes[0, col].axhline(row['angle_theory'], color=colour, ls='--', lw=1)
          axes[1, col].semilogy(steps, norm, colour, lw=0.8, label=row['layer'])
          axes[1, col].axhline(row['norm_theory'], color=colour, ls='--', lw=1)
          g_steps, angle_t, norm_t = window_predictions(run, n, row['layer'])
          axes[0, col].semilogy(g_steps, angle_t, colour, ls=':', lw=1)
          axes[1, col].semilogy(g_steps, norm_t, colour, ls=':', lw=1)
        table.append(
            f'| {n} | {seed} | {row["layer"]} | {run.summary["fan_in"][row["layer"]]} | '
            f'{row["dead"]:.1%} | {row["angle"]:.4g} | {row["angle_theory"]:.4g} | '
            f'{row["angle"] / row["angle_theory"]:.3f} | {row["norm"]:.4g} | '
            f'{row["norm_theory"]:.4g} | {row["norm"] / row["norm_theory"]:.3f} | '
            f'{row["drift"]:.1%} | {row["tau"]:.0f} | {row["elapsed"]:.1f}'
            f'{" (far from equilibrium)" if row["elapsed"] < FAR else ""} |')
    axes[0, col].set_title(f'{n}: angular update / step')
    axes[1, col].set_title(f'{n}: per-unit weight norm')
    axes[1, col].set_xlabel('step')
    axes[0, col].legend(fontsize=7)
    for quantity in ('angle', 'norm'):
      per_seed, shown = [], []
      for seed, (_, rows) in measured.items():
        ratios = [r[quantity] / r[f'{quantity}_theory'] for r in rows]
        per_seed.append(float(max(abs(np.log(x)) for x in ratios)))
        settled = all(r['drift'] < EQUILIBRATED for r in rows)
        shown.append(
            f'seed {seed}: ' + ', '.join(f'{r["layer"]} {x:.3f}' for r, x in zip(rows, ratios))
            + ('' if settled else ' (not equilibrated: norm drift up to '
               f'{max(r["drift"] for r in rows):.1%})')
            + ''.join(f' (far from equilibrium: {r["layer"]} {r["elapsed"]:.1f} time '
                      'constants)' for r in rows if r['elapsed'] < FAR))
      verdict = verdicts.paired(
          f'{n}: measured {quantity} matches bnjax.theory within a factor {TOLERANCE} '
          f'in every layer', 'van Laarhoven 2017, section 3; Wan et al. 2021, Theorem 1; '
          'Kosson et al. 2024, section 3', f'max over layers of |log(measured/theory)| '
          f'({quantity}), against log {TOLERANCE}', per_seed,
          threshold=float(np.log(TOLERANCE)),
          numbers='measured/theory ' + '; '.join(shown))
      found.append(verdict)
      lines.append(verdict.markdown())
  fig.tight_layout()
  png = study.savefig(fig, workdir, 'equilibrium')
  sections.append(('Measured against theory',
                   f'![equilibrium]({png})\n\nSolid: measured (first seed); dashed: theory '
                   f'(from the late-training mean of `grad_sq_at_unit_norm` where the '
                   f'formula needs the gradient); dotted: theory from each window\'s own '
                   f'gradient norm, the equilibrium the layer is approaching at that time.'
                   f'\n\n' + '\n'.join(table) + '\n\n' + '\n\n'.join(lines)))
  states = last_states(workdir, runs, names)
  per_unit = _adam_per_unit(states)
  if per_unit:
    section, more = per_unit
    found += more
    sections.append(('Adam + L2 per unit, from Adam\'s own second moment', section))
  sgd_units = {key: sgd_unit_equilibrium(run, state, key[0], unit_grad_sq(run, state))
               for key, (run, state) in states.items() if OPTIMIZERS[key[0]][1] == 'sgd'}
  per_unit = _sgd_per_unit(sgd_units, [n for n in names if OPTIMIZERS[n][1] == 'sgd'])
  if per_unit:
    section, more = per_unit
    found += more
    sections.append(('SGD per unit, from each unit\'s own gradient', section))
  correlation = _momentum_signal_table(states, rows_of)
  if correlation:
    sections.append(('Gradient correlation between steps (Adam)', correlation))
  distributions = _unit_distributions(workdir, states, rows_of, names, sgd_units)
  if distributions:
    sections.append(('Per-unit norms at the end', distributions))
  sections.append(('Verdict rule', 'Each verdict is decided by its statistic\'s 95% '
                   f'Student-t interval over at least {verdicts.MIN_SEEDS} seeds; this '
                   f'preset runs {len(PRESETS[meta["preset"]]["seeds"])} seed(s) per '
                   'optimizer (with fewer than 3 the verdicts are inconclusive and the '
                   'ratios show the direction only).'))
  return study.write_report(workdir, 'Rotational equilibrium under weight decay', sections,
                            found)


if __name__ == '__main__':
  study.run_study(STUDY)
