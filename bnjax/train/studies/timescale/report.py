"""The timescale study: its verdicts and report.md with plots."""

import dataclasses
import math

import numpy as np

from bnjax.train.studies import study, verdicts
from bnjax.train.studies.timescale.analysis import (best_lambda, grid, mean_curve_edges,
                                                    per_seed_best, spread)
from bnjax.train.studies.timescale.presets import CHANGE, FACTOR, LEARNING_RATE

SOURCE = ('Wang & Aitchison 2024, "How to set AdamW\'s weight decay as you scale model and '
          'dataset size", arXiv 2405.13698')


def report(workdir):
  plt = study.pyplot()
  meta, runs = study.load_study(workdir)
  table = grid(runs)
  first = next(iter(runs.values()), None)
  batch = first.config['batch_size'] if first else 1
  setup = [study.finished_line(meta, runs) + study.each_run(runs, lambda c, s: (
      f'ConvNet width {c["width"]} with batch norm on {c["dataset"]}, AdamW (decoupled '
      f'decay) at a constant learning rate {c["learning_rate"]:g}, batch '
      f'{c["batch_size"]}, {c["num_epochs"]} epochs whatever the size; the weight decay '
      f'of each run set from its timescale, lambda = 1 / (lr tau_epoch steps per '
      f'epoch).')) + f' Rules fixed before the runs: "the same best timescale" is every '
      f'size\'s best tau_epoch within a factor {FACTOR:g} of the others\', "the best '
      f'lambda changes" the smallest size\'s best lambda at least {CHANGE:g}x the '
      f'largest size\'s; a size whose mean-over-seeds error is least at the edge of the '
      f'tau grid makes both inconclusive (the grid does not bracket its optimum; a '
      f'seed\'s own optimum at the edge counts as that edge value).', '']
  taus = sorted({t for size in table.values() for seed in size.values() for t in seed})
  setup += ['Test error (mean over seeds) per size and tau_epoch; lambda below each:', '',
            '| size | steps/epoch | ' + ' | '.join(f'tau {t:g}' for t in taus) + ' |',
            '|---|---|' + '---|' * len(taus)]
  for size in sorted(table):
    cells = []
    for t in taus:
      errs = [v[t] for v in table[size].values() if t in v]
      cells.append(f'{np.mean(errs):.4f} (n={len(errs)}, lambda '
                   f'{best_lambda(t, size, batch):.3g})' if errs else '-')
    setup.append(f'| {size} | {max(size // batch, 1)} | ' + ' | '.join(cells) + ' |')
  sections = [('Setup', '\n'.join(setup))]
  if not table:
    return study.write_report(workdir, 'Weight decay as an EMA timescale', sections, [])

  best = per_seed_best(table)
  found = []
  if best and len(table) >= 2:
    sizes = sorted(table)
    edges = mean_curve_edges(table)
    spreads = [spread(b) for b in best.values()]
    ratio = [math.log2(best_lambda(b[sizes[0]][0], sizes[0], batch) /
                       best_lambda(b[sizes[-1]][0], sizes[-1], batch)) for b in best.values()]
    per_seed = '; '.join(f'seed {s}: ' + ', '.join(
        f'{size} -> {t:.3g}{" (edge)" if e else ""}' for size, (t, e) in b.items())
                         for s, b in best.items())
    same = verdicts.paired(
        f'the best tau_epoch is the same across dataset sizes, within a factor {FACTOR:g}',
        f'{SOURCE}, the tau_epoch rule', 'max over pairs of sizes of |log2(tau*_a / tau*_b)| '
        '(tau*: the vertex of the parabola in log2 tau through the least test error and its '
        'neighbours)', spreads, threshold=math.log2(FACTOR),
        numbers=f'best tau_epoch per seed and size: {per_seed}',
        id='timescale/best-tau-epoch-constant-across-sizes',
        reference=f'tau*_epoch independent of dataset size: {SOURCE}')
    changes = verdicts.paired(
        f'the best lambda changes with dataset size (at least {CHANGE:g}x from {sizes[0]} '
        f'to {sizes[-1]} examples)', f'{SOURCE}, the tau_epoch rule',
        f'log2(lambda*({sizes[0]}) / lambda*({sizes[-1]})), lambda* of each seed\'s tau*',
        ratio, threshold=math.log2(CHANGE), side='above',
        numbers=f'per seed {", ".join(f"{2 ** r:.3g}x" for r in ratio)}; a constant tau '
                f'predicts {sizes[-1] // batch / max(sizes[0] // batch, 1):.3g}x',
        id='timescale/best-lambda-changes-with-size',
        reference=f'lambda* = 1/(lr tau* steps per epoch): {SOURCE}')
    for v in (same, changes):
      if edges:
        v = dataclasses.replace(v, outcome='inconclusive', numbers=(
            v.numbers + f'; least mean error at the edge of the tau grid for size(s) '
            f'{", ".join(map(str, edges))}: inconclusive by rule'))
      found.append(v)

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for i, size in enumerate(sorted(table)):
    ts = [t for t in taus if any(t in v for v in table[size].values())]
    errs = [[v[t] for v in table[size].values() if t in v] for t in ts]
    mean = [np.mean(e) for e in errs]
    sd = [np.std(e) for e in errs]
    lams = [best_lambda(t, size, batch) for t in ts]
    axes[0].errorbar(ts, mean, yerr=sd, color=f'C{i}', marker='o', ms=3, capsize=2,
                     label=f'{size} examples')
    axes[1].errorbar(lams, mean, yerr=sd, color=f'C{i}', marker='o', ms=3, capsize=2,
                     label=f'{size} examples')
  axes[0].set_xscale('log', base=2)
  axes[1].set_xscale('log')
  axes[0].set_ylabel('test error (mean, ± sd over seeds)')
  axes[0].set_xlabel('EMA timescale tau_epoch (epochs)')
  axes[1].set_xlabel('weight decay lambda')
  for ax in axes:
    ax.legend(fontsize=7)
  fig.tight_layout()
  png = study.savefig(fig, workdir, 'timescale')
  sections.append(('Test error against the timescale and against lambda',
                   f'![timescale]({png})\n\nLeft: one curve per dataset size against '
                   f'tau_epoch = 1/(lr lambda steps per epoch); the rule says their minima '
                   f'line up. Right: the same runs against lambda; the rule says the minima '
                   f'move to smaller lambda as the dataset grows (lr {LEARNING_RATE:g}).'))
  sections.append(('Verdicts', '\n\n'.join(v.markdown() for v in found) or 'None: fewer '
                   'than two sizes finished.'))
  return study.write_report(workdir, 'Weight decay as an EMA timescale (AdamW)', sections,
                            found)
