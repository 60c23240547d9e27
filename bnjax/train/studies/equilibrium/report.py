"""The equilibrium study: its verdicts and report.md with plots."""

import dataclasses
import math
from typing import Optional

import numpy as np

from bnjax import dynamics
from bnjax.train.studies import study, verdicts
from bnjax.train.studies.equilibrium.presets import (DEAD_MAP, EQUILIBRATED, FAR,
                                                     OPTIMIZERS, PRESETS, TOLERANCE,
                                                     UNIT_BATCHES, dead_map_name)
from bnjax.train.studies.equilibrium.analysis import (_unit_ratios, checkpoint_unit_scales,
                                                      invariant_layers, kernel_unit_norms,
                                                      last_states, late_mean, measure,
                                                      measured_angle, momentum_signal,
                                                      unit_equilibrium, unit_scales,
                                                      window_predictions)

# Where a run's per-unit gradient scales and norms were read (analysis.unit_scales).
SOURCE_TEXT = {
    'window': 'averaged over every step of the last quarter, the window the angle is '
              'measured over (the loop\'s `per_unit/` metrics)',
    'checkpoint': 'read at the last checkpoint (a run logged before the per-unit metrics)',
}


def _sources(sources, keys) -> str:
  """Each distinct source of ``keys``' per-unit readings, in words."""
  return '; '.join(SOURCE_TEXT[v] for v in sorted({sources[k] for k in keys}))


def _unit_distributions(workdir, states, rows_of, names, units):
  """Per-unit norms over theory, every optimizer and layer (all seeds): a figure of
  their distributions and a table of quartiles and dead units; SGD's and Adam +
  L2's units against their own predictions (``units``, :func:`unit_equilibrium`)."""
  plt = study.pyplot()
  found = {}
  for (n, seed), (run, state) in states.items():
    for row in rows_of[(n, seed)]:
      layer = row['layer']
      if (n, seed) in units:
        unit = units[(n, seed)][layer]
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
  return (f'![unit norms]({png})\n\nEvery seed: each live unit\'s norm over theory\'s '
          '(AdamW: the layer\'s at the last checkpoint, which needs no gradient; SGD, '
          'momentum and Adam + L2: the unit\'s own from its own gradient scale, as above). '
          'A spread around 1 is per-unit noise; a shifted layer is a layer the layer-level '
          'prediction misses.\n\n' + '\n'.join(table))


def _adam_per_unit(states, units, sources):
  """The per-unit Adam + L2 table and its three verdicts."""
  seeds = {seed: pair for (n, seed), pair in states.items() if n == 'adam_l2'}
  if not seeds:
    return None
  table = ['| seed | layer | live units | measured / predicted norm: median (quartiles) | '
           'the same from Adam\'s v at the last checkpoint: median | '
           'mean norm / mean prediction | angle measured (RMS) | angle predicted (RMS over '
           'units) | ratio |', '|---|---|---|---|---|---|---|---|---|']
  norm_stat, angle_stat, aggregate_stat = [], [], []
  for seed, (run, state) in seeds.items():
    worst_norm = worst_angle = worst_aggregate = 0.0
    for layer in invariant_layers(run):
      unit = units[('adam_l2', seed)][layer]
      at_checkpoint = unit_equilibrium(run, 'adam_l2', layer,
                                       *checkpoint_unit_scales(run, state, layer))
      angle = measured_angle(run, layer)
      table.append(f'| {seed} | {layer} | {unit["live"]:.1%} | {unit["ratio_median"]:.3f} '
                   f'({unit["ratio_q25"]:.3f}-{unit["ratio_q75"]:.3f}) | '
                   f'{at_checkpoint["ratio_median"]:.3f} | '
                   f'{unit["norm_aggregate"]:.3f} | {angle:.4g} | '
                   f'{unit["angle_theory"]:.4g} | {angle / unit["angle_theory"]:.3f} |')
      worst_norm = max(worst_norm, abs(math.log(unit['ratio_median'])))
      worst_angle = max(worst_angle, abs(math.log(angle / unit['angle_theory'])))
      worst_aggregate = max(worst_aggregate, abs(math.log(unit['norm_aggregate'])))
    norm_stat.append(worst_norm)
    angle_stat.append(worst_angle)
    aggregate_stat.append(worst_aggregate)
  source = 'Kosson et al. 2024, section 3; bnjax.theory.equilibrium_norm (Adam + L2)'
  found = [verdicts.paired(
      f'adam_l2, per unit from its own gradient scale: measured {what} matches theory '
      f'within a factor {TOLERANCE} in every layer', source,
      f'max over layers of |log(measured/predicted)| ({what}; {kind}), against log '
      f'{TOLERANCE}', stat, threshold=float(np.log(TOLERANCE)),
      numbers='per seed ' + ', '.join(f'{v:.3f}' for v in stat),
      id=f'equilibrium/adam-l2-per-unit-{what}',
      reference='bnjax.theory.equilibrium_norm / equilibrium_angular_update (Adam + L2), '
                'per unit with its own gradient scale')
           for what, kind, stat in (
               ('norm', 'the median over live units', norm_stat),
               ('angle', 'RMS angle against the RMS of the per-unit predictions', angle_stat))]
  found.append(verdicts.paired(
      f'adam_l2: the layer\'s mean norm matches the mean of its units\' predictions within a '
      f'factor {TOLERANCE} in every layer', source,
      f'max over layers of |log(mean live norm / mean per-unit prediction)|, against log '
      f'{TOLERANCE}', aggregate_stat, threshold=float(np.log(TOLERANCE)),
      numbers='per seed ' + ', '.join(f'{v:.3f}' for v in aggregate_stat),
      id='equilibrium/adam-l2-layer-norm-aggregated',
      reference='per-unit predictions aggregated as the layer norm is (mean over live '
                'units), not theory at the layer-mean gradient'))
  text = ('Each live unit\'s gradient scale E||g~_j||^2 (its loss gradient times its norm, '
          'squared: the gradient at unit norm) and its norm are '
          + _sources(sources, [('adam_l2', s) for s in seeds]) + ', and theory predicts '
          'that unit\'s norm and angle; dead units (collapsed norm or no gradient) are left '
          'out. This replaces the layer-mean gradient norm of the table above, which mixes '
          'units: the norm is a concave function of a unit\'s gradient scale (sigma^(1/3)), '
          'so theory at the layer\'s mean gradient over-predicts the mean of a spread of '
          'units, and the layer\'s norm is tested against the mean of the per-unit '
          'predictions instead. For comparison, the median read off Adam\'s bias-corrected '
          'second moment at the last checkpoint (sigma_j^2 = sum of v over its fan-in, times '
          'its squared norm; v also holds the lambda w term and weights the steps over '
          '1/(1 - b2) of them).\n\n'
          + '\n'.join(table) + '\n\n' + '\n\n'.join(v.markdown() for v in found))
  return text, found


def _sgd_per_unit(units: dict, sources: dict, arms) -> Optional[tuple]:
  """The per-unit SGD table and one norm verdict per SGD arm (``arms``)."""
  keys = [k for k in units if k[0] in arms]
  if not keys:
    return None
  table = ['| run | seed | layer | live units | measured / predicted norm: median '
           '(quartiles) |', '|---|---|---|---|---|']
  found = []
  for n in arms:
    stat = []
    for (m, seed), per_layer in sorted(units.items()):
      if m != n:
        continue
      for layer, unit in per_layer.items():
        table.append(f'| {n} | {seed} | {layer} | {unit["live"]:.1%} | '
                     f'{unit["ratio_median"]:.3f} ({unit["ratio_q25"]:.3f}-'
                     f'{unit["ratio_q75"]:.3f}) |')
      stat.append(max(abs(math.log(u['ratio_median'])) for u in per_layer.values()))
    if stat:
      found.append(verdicts.paired(
          f'{n}, per unit from its own gradient: measured norm matches theory within a '
          f'factor {TOLERANCE} in every layer', 'Wan et al. 2021, Theorem 1; '
          'bnjax.theory.equilibrium_norm (SGD)',
          f'max over layers of |log(measured/predicted)| (norm; the median over live units), '
          f'against log {TOLERANCE}', stat, threshold=float(np.log(TOLERANCE)),
          numbers='per seed ' + ', '.join(f'{v:.3f}' for v in stat),
          id=f'equilibrium/{n}-per-unit-norm',
          reference='bnjax.theory.equilibrium_norm (SGD), per unit with its own gradient: Wan et al. 2021, Theorem 1'))
  text = ('Each live unit\'s gradient scale E||g~_j||^2 (its loss gradient times its norm, '
          'squared: the gradient at unit norm) and its norm are ' + _sources(sources, keys)
          + (f' (at a checkpoint: over its first {UNIT_BATCHES} training batches in '
             'training mode)' if any(sources[k] == 'checkpoint' for k in keys) else '')
          + ', and theory predicts that unit\'s norm; dead units are left out. The '
          'layer-level table above uses the layer\'s late mean over units and steps '
          'instead.\n\n'
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


def _dead_map_section(runs) -> Optional[str]:
  """The dead-unit map: per cell and layer, the dead fraction, the live units' RMS
  angle and the all-unit mean angle over theory's (:data:`DEAD_MAP`)."""
  rows, lost = [], []
  for i, lr in enumerate(DEAD_MAP['learning_rates']):
    for j, lam in enumerate(DEAD_MAP['weight_decays']):
      for warmup in (0, DEAD_MAP['warmup']):
        run = runs.get(dead_map_name(i, j, warmup))
        if run is None:
          continue
        for row in measure(run, 'momentum'):
          mean_angle = late_mean(run, f'angular_update/{row["layer"]}')
          rows.append(f'| {lr:g} | {lam:g} | {lr * lam:.1e} | {warmup} | {row["layer"]} | '
                      f'{row["elapsed"]:.1f} | {row["dead"]:.1%} | '
                      f'{row["angle"] / row["angle_theory"]:.2f} | '
                      f'{mean_angle / row["angle_theory"]:.2f} |')
          if row['dead'] > 0.1:
            lost.append(f'{row["layer"]} at lr {lr:g}, lambda {lam:g}'
                        f'{f", warmup {warmup}" if warmup else ""} ({row["dead"]:.0%} dead)')
  if not rows:
    return None
  c = DEAD_MAP['base']
  return (f'The default ConvNet (widths {c["width"]}/{2 * c["width"]}/{4 * c["width"]}) '
          f'with SGD + momentum {c["momentum"]} + L2, {c["train_subset"]} training '
          f'examples, batch {c["batch_size"]}, {c["num_epochs"]} epochs, one seed per cell, '
          f'with and without {DEAD_MAP["warmup"]} steps of linear warmup; late means over '
          'the last quarter. A dead unit gets no gradient or has a collapsed norm '
          '(`bnjax.dynamics.live_units`). The equilibrium angle describes the live units '
          '(RMS over them); a layer\'s mean over all units reads low by the dead fraction, '
          'and once a layer loses many units its layer statistics describe the few '
          'that remain; below 3 time constants before the last quarter a layer is still '
          'approaching its equilibrium.\n\n| lr | lambda | lr x lambda | warmup steps | '
          'layer | time constants before the window | dead units | live RMS angle / theory '
          '| all-unit mean angle / theory |\n|---:|---:|---:|---:|---|---:|---:|---:|---:|\n' + '\n'.join(rows) + '\n\n'
          + ('Layers with over 10% dead units at the end: ' + '; '.join(lost) + '.'
             if lost else 'No layer ended with over 10% dead units.'))


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
    unsettled = [seed for seed, (_, rows) in measured.items() if any(
        r['drift'] >= EQUILIBRATED or r['elapsed'] < FAR for r in rows)]
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
          numbers='measured/theory ' + '; '.join(shown),
          id=f'equilibrium/{n}-layer-{quantity}',
          reference='bnjax.theory equilibrium norm and angle from the layer-mean gradient')
      verdict = dataclasses.replace(
          verdict, outcome='inconclusive' if unsettled else verdict.outcome,
          rule=verdict.rule + f'; and only when every layer of every seed is equilibrated '
          f'(norm drift under {EQUILIBRATED:.0%}) after at least {FAR:g} time constants'
          + (f', which seeds {unsettled} are not' if unsettled else ''))
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
  scales = {key: unit_scales(run, state, key[0]) for key, (run, state) in states.items()
            if OPTIMIZERS[key[0]][1] in ('sgd', 'adam_l2')}
  sources = {key: source for key, (_, source) in scales.items()}
  units = {key: {layer: unit_equilibrium(states[key][0], key[0], layer, *pair)
                 for layer, pair in per_layer.items()}
           for key, (per_layer, _) in scales.items()}
  per_unit = _adam_per_unit(states, units, sources)
  if per_unit:
    section, more = per_unit
    found += more
    sections.append(('Adam + L2 per unit, from each unit\'s own gradient scale', section))
  per_unit = _sgd_per_unit(units, sources, [n for n in names if OPTIMIZERS[n][1] == 'sgd'])
  if per_unit:
    section, more = per_unit
    found += more
    sections.append(('SGD per unit, from each unit\'s own gradient', section))
  correlation = _momentum_signal_table(states, rows_of)
  if correlation:
    sections.append(('Gradient correlation between steps (Adam)', correlation))
  distributions = _unit_distributions(workdir, states, rows_of, names, units)
  if distributions:
    sections.append(('Per-unit norms against their predictions', distributions))
  dead_map = _dead_map_section(runs)
  if dead_map:
    sections.append(('Dead units against lr x lambda (default ConvNet)', dead_map))
  sections.append(('Verdict rule', 'Each verdict is decided by its statistic\'s 95% '
                   f'Student-t interval over at least {verdicts.MIN_SEEDS} seeds; this '
                   f'preset runs {len(PRESETS[meta["preset"]]["seeds"])} seed(s) per '
                   'optimizer' + ''.join(
                       f', {n} {len(s)} more' for n, s in
                       PRESETS[meta['preset']].get('extra_seeds', {}).items())
                   + ' (with fewer than 3 the verdicts are inconclusive and the '
                   'ratios show the direction only).'))
  return study.write_report(workdir, 'Rotational equilibrium under weight decay', sections,
                            found)
