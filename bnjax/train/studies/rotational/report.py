"""The rotational study: its verdicts and report.md with plots."""

import math
import pathlib
from typing import Optional

import numpy as np

from bnjax.train import workdir as workdirs
from bnjax.train.studies import study, verdicts
from bnjax.train.studies.rotational.presets import (ARMS, EARLY, MARGIN, SETTLED,
                                                    TOLERANCE, WARMUP_ARMS)
from bnjax.train.studies.rotational.analysis import (_paired, _seeds, angle_ratios,
                                                     early_deviation, settling_step,
                                                     time_constants, wrapper_alone)

# The rotational wrapper's update_norm_decay: bnjax's default, which Kosson et al.'s
# reference code (epfml/REQ, RotationalWrapper) uses now, and that code's earlier one.
UPDATE_NORM_DECAYS = (0.9, 0.99)


def _wrapper_alone_section(workdir, runs) -> Optional[str]:
  """The early deviation of each rotational arm's wrapper on i.i.d. gradients
  (:func:`wrapper_alone`) beside the runs' own."""
  rows = []
  for rot in ('rotational_adamw', 'rotational_sgdm'):
    seeds = _seeds(runs, rot, False)
    if not seeds:
      continue
    kind, first = ARMS[rot][1], seeds[min(seeds)]
    folder = pathlib.Path(workdir) / first.name
    if not (folder / 'checkpoints').is_dir():
      continue
    params = workdirs.Checkpoints(folder).latest_state()['params']
    measured = [early_deviation(r, kind) for r in seeds.values()]
    for decay in UPDATE_NORM_DECAYS:
      alone = [early_deviation(r, kind) for r in wrapper_alone(first, params, decay)]
      rows.append(f'| {rot} | {decay:g} | {np.mean(alone):.3f} ({min(alone):.3f}-'
                  f'{max(alone):.3f}) | '
                  + (f'{np.mean(measured):.3f} ({len(measured)} seeds)' if decay == 0.9
                     else '-') + ' |')
  if not rows:
    return None
  return ('The same early deviation (max over layers of |log(RMS angle / equilibrium '
          'angle)| over the first windows) of each rotational optimizer on i.i.d. Gaussian '
          'gradients, the network left out (`wrapper_alone`: the run\'s shapes, schedule '
          'and hyperparameters, centred start, 3 draws): what the wrapper itself does '
          'before its update-norm average has caught up with the inner update. '
          'update_norm_decay 0.9 is bnjax\'s default and that of Kosson et al.\'s '
          'reference code (epfml/REQ, `RotationalWrapper`); an earlier version of that code '
          'used 0.99. Both bias-correct the average and neither seeds it; with 0 every '
          'step is at the target by construction.\n\n'
          '| arm | update_norm_decay | wrapper alone: mean (range over draws) | measured '
          'in the runs (mean) |\n|---|---|---|---|\n' + '\n'.join(rows))


def report(workdir):
  plt = study.pyplot()
  meta, runs = study.load_study(workdir)
  arms = [(a, w) for a in ARMS for w in ((False, True) if a in WARMUP_ARMS else (False,))
          if _seeds(runs, a, w)]
  setup = [study.finished_line(meta, runs) + study.each_run(runs, lambda c, s: (
      f'ConvNet width {c["width"]} with batch norm, batch {c["batch_size"]}, '
      f'{s["steps"]} steps.')) + f' Rules fixed before the runs: "at equilibrium" is '
      f'within a factor {TOLERANCE} of the theory\'s angle, "from the start" the first '
      f'{EARLY:.0%} of the steps, "matches" at most {MARGIN:.1%} more test error.', '',
      '| arm | optimizer (regularizer) | lr | lambda | warmup | seeds | test error | '
      f'tau (steps) | time constants run | within {SETTLED}x of equilibrium from step '
      f'(median) |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for arm, warmup in arms:
    seeds = _seeds(runs, arm, warmup)
    first = next(iter(seeds.values()))
    c, kind = first.config, ARMS[arm][1]
    errors = [r.test_error for r in seeds.values()]
    mean, half = verdicts.interval(errors)
    spread = '' if half is None else f' ± {half:.4f}'
    tau, n = time_constants(first, kind) if kind else (None, None)
    settled = '-'
    if kind:
      step = float(np.median([settling_step(r, kind) for r in seeds.values()]))
      settled = (f'{step:.0f}' if math.isfinite(step)
                 else f'not by {first.summary["steps"]}')
    setup.append(
        f'| {arm} | {c["optimizer"]} ({c["regularizer"]}{", projection" if c["projection"] else ""}) | '
        f'{c["learning_rate"]:g} | {c["weight_decay"]:g} | {c["warmup_steps"]} | '
        f'{len(seeds)} | {mean:.4f}{spread} | {"-" if tau is None else f"{tau:.0f}"} | '
        f'{"-" if n is None else f"{n:.1f}" + (" (far from equilibrium)" if n < 3 else "")} | '
        f'{settled} |')
  sections = [('Setup', '\n'.join(setup))]
  if not arms:
    return study.write_report(workdir, 'Rotational optimizers', sections, [])

  found = []
  source = 'Kosson, Messmer & Jaggi 2024, arXiv 2305.17212'
  for rot in ('rotational_adamw', 'rotational_sgdm'):
    inner, kind = ARMS[rot][2], ARMS[rot][1]
    pairs = _paired(runs, rot, inner)
    if not pairs:
      continue
    dev_rot = [early_deviation(r, kind) for r, _ in pairs]
    dev_inner = [early_deviation(i, kind) for _, i in pairs]
    found.append(verdicts.paired(
        f'{rot} is at its equilibrium angular update from the start', f'{source}, section 4',
        f'max over layers of |log(RMS angle / equilibrium angle)|, the ratio averaged '
        f'over the logged windows in the first {EARLY:.0%} of steps, against log '
        f'{TOLERANCE}', dev_rot,
        threshold=math.log(TOLERANCE),
        numbers=f'per seed {", ".join(f"{d:.3f}" for d in dev_rot)}',
        id=f'rotational/{rot}-at-equilibrium-from-start',
        reference='bnjax.theory.equilibrium_angular_update from step 1: Kosson et al. 2024, section 4'))
    found.append(verdicts.paired(
        f'{inner} is further from equilibrium early on than {rot}', f'{source}, section 4',
        f'early deviation of {inner} minus that of {rot} (as above)',
        [i - r for i, r in zip(dev_inner, dev_rot)], side='above',
        numbers=f'{inner} per seed {", ".join(f"{d:.3f}" for d in dev_inner)}',
        id=f'rotational/{inner}-further-from-equilibrium-than-{rot}',
        reference='deviation(inner) > deviation(rotational): Kosson et al. 2024, section 4'))
    arms4 = [_seeds(runs, arm, w) for arm in (inner, rot) for w in (False, True)]
    common = sorted(set.intersection(*(set(a) for a in arms4)))
    if common:
      gain = lambda no, yes, s: no[s].test_error - yes[s].test_error
      gains = [gain(arms4[0], arms4[1], s) - gain(arms4[2], arms4[3], s) for s in common]
      found.append(verdicts.paired(
          f'warmup helps {inner} more than {rot}', f'{source}, section 5 (warmup)',
          f'(error without - with warmup) of {inner} minus that of {rot}', gains,
          side='above', numbers=f'per seed {", ".join(f"{g:+.4f}" for g in gains)}',
          id=f'rotational/warmup-helps-{inner}-more-than-{rot}',
          reference='warmup gain(inner) > gain(rotational): Kosson et al. 2024, section 5'))
    diffs = [r.test_error - i.test_error for r, i in pairs]
    found.append(verdicts.paired(
        f'{rot} reaches a test error at most {MARGIN:.1%} above {inner}\'s',
        f'{source}, section 5', f'error({rot}) - error({inner})', diffs, threshold=MARGIN,
        numbers=f'per seed {", ".join(f"{d:+.4f}" for d in diffs)}',
        id=f'rotational/{rot}-error-within-margin-of-{inner}',
        reference=f'error(rotational) - error(inner) < {MARGIN:.1%}: Kosson et al. 2024, section 5'))
  pairs = _paired(runs, 'adamp', 'adamw')
  if pairs:
    diffs = [p.test_error - a.test_error for p, a in pairs]
    found.append(verdicts.paired(
        f'adamp reaches a test error at most {MARGIN:.1%} above adamw\'s',
        'Heo et al. 2021, arXiv 2006.08217, section 4', 'error(adamp) - error(adamw)', diffs,
        threshold=MARGIN, numbers=f'per seed {", ".join(f"{d:+.4f}" for d in diffs)}',
        id='rotational/adamp-error-within-margin-of-adamw',
        reference=f'error(adamp) - error(adamw) < {MARGIN:.1%}: Heo et al. 2021, section 4'))

  plotted = [(a, w) for a, w in arms if ARMS[a][1]]
  cols = (len(plotted) + 1) // 2
  fig, axes = plt.subplots(2, cols, figsize=(3.6 * cols, 6.4), squeeze=False, sharey=True)
  for ax in axes.ravel()[len(plotted):]:
    ax.set_visible(False)
  for ax, (arm, warmup) in zip(axes.ravel(), plotted):
    run = _seeds(runs, arm, warmup)[min(_seeds(runs, arm, warmup))]
    for i, (layer, (steps, ratio)) in enumerate(angle_ratios(run, ARMS[arm][1]).items()):
      ax.semilogy(steps, ratio, f'C{i}', lw=0.8, label=layer)
    ax.axhline(1.0, color='k', ls='--', lw=1)
    ax.axhspan(1 / TOLERANCE, TOLERANCE, color='0.9')
    ax.set_title(f'{arm}{" + warmup" if warmup else ""}', fontsize=9)
  for row in axes:
    row[0].set_ylabel('RMS angle / equilibrium angle')
  study.label_axes(axes, 'step')
  fig.tight_layout()
  png = study.savefig(fig, workdir, 'angles')
  sections.append(('Angular updates against the equilibrium',
                   f'![angles]({png})\n\nMeasured angular update per step over the '
                   f'theory\'s equilibrium angle at the step\'s learning rate (first seed; '
                   f'grey: within a factor {TOLERANCE}).'))
  alone = _wrapper_alone_section(workdir, runs)
  if alone:
    sections.append(('The wrapper alone, early on', alone))
  sections.append(('Verdicts', '\n\n'.join(v.markdown() for v in found)))
  return study.write_report(workdir, 'Rotational optimizers, AdamP and projection', sections,
                            found)
