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

  python -m experiments.equilibrium --preset=quick --workdir=runs/equilibrium
"""

import dataclasses
import math

import numpy as np

from bnjax import theory
from bnjax.config import Config
from experiments import study, verdicts

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

# name: (config overrides, theory optimizer name, momentum for theory)
OPTIMIZERS = {
    'sgd': (dict(optimizer='sgd', momentum=0.0, learning_rate=0.2, regularizer='l2', weight_decay=1e-2),
            'sgd', 0.0),
    'momentum': (dict(optimizer='sgd', momentum=0.9, learning_rate=0.02,
                      regularizer='l2', weight_decay=1e-2), 'sgd', 0.9),
    'adamw': (dict(optimizer='adam', learning_rate=2e-3, regularizer='decoupled',
                   weight_decay=1.0), 'adamw', 0.0),
    'adam_l2': (dict(optimizer='adam', learning_rate=2e-3, regularizer='l2',
                     weight_decay=5e-2), 'adam_l2', 0.0),
}

PRESETS = {
    # seeds: of every optimizer's run.
    'smoke': dict(seeds=(0,), base=Config(
        train_subset=1024, batch_size=32, num_epochs=2, width=8, log_every=4,
        checkpoint_every=32, eval_batch_size=2000)),
    'quick': dict(seeds=(0,), base=Config(
        train_subset=0, batch_size=32, num_epochs=2, width=16, log_every=25,
        checkpoint_every=500)),
    'standard': dict(seeds=(0, 1, 2), base=Config(
        train_subset=0, batch_size=32, num_epochs=2, width=16, log_every=25,
        checkpoint_every=500)),
    'paper': dict(seeds=(0, 1, 2), base=Config(
        dataset='cifar10', model='resnet20', augment=True, batch_size=128, num_epochs=50,
        log_every=50, checkpoint_every=1000)),
}


def seeded(name: str, seed: int) -> str:
  return name + (f'_seed{seed}' if seed else '')


def configs(preset: str, parallel: str = 'none') -> dict:
  spec = PRESETS[preset]
  base = dataclasses.replace(spec['base'], parallel=parallel, norm='batch')
  return {seeded(name, seed): dataclasses.replace(base, **overrides, seed=seed)
          for name, (overrides, _, _) in OPTIMIZERS.items() for seed in spec['seeds']}


def seeds_of(runs, name: str) -> dict:
  """``{seed: run}`` of one optimizer."""
  return {r.config['seed']: r for n, r in runs.items() if n == seeded(name, r.config['seed'])}


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


def within(ratio: float) -> bool:
  return 1.0 / TOLERANCE <= ratio <= TOLERANCE


def report(workdir):
  plt = study.pyplot()

  meta, runs = study.load_study(workdir)
  names = [n for n in OPTIMIZERS if seeds_of(runs, n)]
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
    seeds = seeds_of(runs, n)
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
  lines, found = [], []
  for col, n in enumerate(names):
    measured = {seed: (run, measure(run, n)) for seed, run in sorted(seeds_of(runs, n).items())}
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
  sections.append(('Verdict rule', 'Each verdict is decided by its statistic\'s 95% '
                   f'Student-t interval over at least {verdicts.MIN_SEEDS} seeds; this '
                   f'preset runs {len(PRESETS[meta["preset"]]["seeds"])} seed(s) per '
                   'optimizer (with fewer than 3 the verdicts are inconclusive and the '
                   'ratios show the direction only).'))
  return study.write_report(workdir, 'Rotational equilibrium under weight decay', sections,
                            found)


if __name__ == '__main__':
  study.run_study(STUDY)
