"""The effective_lr study: its verdicts and report.md with plots."""

import numpy as np

from bnjax.train.studies import study, verdicts
from bnjax.train.studies.effective_lr.presets import (
    ERROR_WINDOW, EXACT_DIRECTION, EXACT_EPSILON, EXACT_ERROR, EXACT_FACTORS, FAILED, FAR,
    HEAD_DECAY, LINE_MARGIN, MARGIN, OPTIMIZERS, POWER_MARGIN, POWER, PRESETS, TRACKED_LAYER, grid_values)
from bnjax.train.studies.effective_lr.analysis import (_grids, error, exact_line,
                                                       fitted_power, invariant_layers,
                                                       seed_noise, time_constants)

# The scaling rule of each optimizer's exact test, and the other rule (its control).
RULES = {'sgd': ('(c lr, lambda / c, sqrt(c) w0)', '(c lr, lambda / c^2, sqrt(c) w0)'),
         'adam': ('(c lr, lambda / c^2, c w0)', '(c lr, lambda / c, c w0)')}


def _exact_section(workdir, runs):
  """The exact symmetry test of each optimizer: its verdicts, table and text."""
  found, rows = [], ['| optimizer | lines | seed | largest direction difference | '
                     'largest test error difference |', '|---|---|---|---|---|']
  source = 'van Laarhoven 2017, section 3 (scale invariance: eq. 5-9)'
  for name in OPTIMIZERS:
    stats = exact_line(workdir, runs, name)
    if not stats:
      continue
    rule, wrong = RULES[name]
    for kind, label in (('rule', rule), ('wrong', wrong)):
      for seed, per in stats.items():
        rows.append(f'| {name} | {label}{"" if kind == "rule" else " (control)"} | {seed} | '
                    f'{per[kind][0]:.3g} | {per[kind][1]:.4f} |')
    numbers = '; '.join(f'seed {s}: rule {p["rule"][0]:.3g}, control {p["wrong"][0]:.3g}'
                        for s, p in stats.items())
    found.append(verdicts.paired(
        f'{name} + L2: under {rule}, the rest at a fixed rate, the scale-invariant kernels '
        'follow the same directions', source,
        f'largest per-unit direction difference from c = 1 over c in {EXACT_FACTORS}',
        [p['rule'][0] for p in stats.values()], threshold=EXACT_DIRECTION, numbers=numbers,
        id=f'effective_lr/{name}-l2-exact-symmetry-directions',
        reference=f'the same directions step for step (an exact symmetry): difference '
                  f'below {EXACT_DIRECTION:g}'))
    found.append(verdicts.paired(
        f'{name} + L2: under {rule} the test error is the same', source,
        f'largest |test error difference| from c = 1 over c in {EXACT_FACTORS}',
        [p['rule'][1] for p in stats.values()], threshold=EXACT_ERROR,
        numbers='; '.join(f'seed {s}: rule {p["rule"][1]:.4f}, control {p["wrong"][1]:.4f}'
                          for s, p in stats.items()),
        id=f'effective_lr/{name}-l2-exact-symmetry-error',
        reference=f'the same function, so the same test error: difference below '
                  f'{EXACT_ERROR:g}'))
    found.append(verdicts.paired(
        f'control: {name} + L2 under the other rule {wrong} moves the directions apart '
        '(the test can fail)', source,
        f'largest per-unit direction difference from c = 1 over c in {EXACT_FACTORS}',
        [p['wrong'][0] for p in stats.values()], threshold=EXACT_DIRECTION, side='above',
        numbers=numbers, id=f'effective_lr/{name}-l2-exact-symmetry-control',
        reference=f'the {"lr^2 lambda" if name == "sgd" else "lr lambda"} rule is not a '
                  f'symmetry of {name}: difference above {EXACT_DIRECTION:g}'))
  text = (f'Each line runs c = 1 and c in {EXACT_FACTORS} on the same batches from the same '
          'initial directions, with every parameter outside the scale-invariant kernels '
          'trained at the c = 1 learning rate (`--rest_learning_rate`) and decay, and BN\'s '
          f'and Adam\'s epsilons at {EXACT_EPSILON:g} (`--norm_epsilon`, `--adam_eps`; at '
          'the defaults they break the symmetry by about 1e-5 per step, which training '
          'amplifies), BN evaluated with precise statistics (running averages start at '
          'variance 1 whatever the weights\' scale). Direction difference: the largest coordinate of |w/||w|| - '
          'w\'/||w\'||| over the units of every scale-invariant kernel at the last step.')
  return found, text + '\n\n' + '\n'.join(rows) + '\n\n' + '\n\n'.join(
      v.markdown() for v in found)


def _rule_note(spec) -> str:
  per_arm = len(spec['seeds'])
  return (
      'Each verdict is decided by its statistic\'s 95% Student-t interval over seeds, '
      f'with at least {verdicts.MIN_SEEDS} seeds for every cell it uses (rule in each '
      f'line, fixed before the runs). Test error is the mean over the evaluations after '
      f'{ERROR_WINDOW:.0%} of training. The line test pools unbiased variances within '
      'the lines (and within rows, columns, diagonals for the alternatives), so that '
      'groupings with different group sizes estimate the same noise under the null; '
      f'it leaves out cells with fewer than {FAR:g} time constants before the error '
      f'window. This preset runs {per_arm} seed(s) per cell'
      + (f' (the grid centre {per_arm + len(spec["centre_seeds"])}, for the seed-to-seed '
         'spread)' if spec['centre_seeds'] else '')
      + ('; verdicts from one seed are inconclusive: the numbers show the direction, not a '
         'decision.' if per_arm < verdicts.MIN_SEEDS else '.'))


def _line_verdicts(name, grids, noise, lrs, lams):
  """The claimed invariant against the alternatives, within a margin, and the
  fitted exponent against the claimed one."""
  rule = 'lr * lambda' if name == 'sgd' else 'lr^2 * lambda'
  diffs, along, shown, powers = [], [], [], []
  for seed, (errors, elapsed) in sorted(grids.items()):
    kept = np.where((elapsed >= FAR) & (errors < FAILED), errors, np.nan)
    if np.isfinite(kept).sum() >= 3:
      powers.append(fitted_power(kept, lrs, lams))
    spread = {g: study.pooled_spread(kept, g) for g in study.GROUPINGS}
    best_other = min(spread[g] for g in study.GROUPINGS[1:])
    if np.isfinite(spread['anti-diagonals']):
      along.append(spread['anti-diagonals'])
      if np.isfinite(best_other):
        diffs.append(spread['anti-diagonals'] - best_other)
    shown.append(f'seed {seed}: ' + ', '.join(f'{g} {v:.4f}' for g, v in spread.items())
                 + f' (cells left out: {int(np.isnan(kept).sum())})')
  numbers = '; '.join(shown) + f'; seed-to-seed std {noise:.4f}'
  finite = [p for p in powers if np.isfinite(p)]
  if finite:
    mean, half = verdicts.interval(finite)
    numbers += (f'; fitted exponent p of the flattest lines lr^p * lambda (claimed '
                f'{POWER[name]}): per seed {", ".join(f"{p:.2f}" for p in powers)}, mean '
                f'{mean:.2f}' + ('' if half is None else f' ± {half:.2f}'))
  source = 'van Laarhoven 2017, section 3 (effective learning rate)'
  out = []
  if diffs:
    out.append(verdicts.paired(
        f'{name} + L2: test error is constant along lines of constant {rule}', source,
        'pooled spread along the lines minus the smallest of rows, columns and diagonals',
        diffs, numbers=numbers,
        id=f'effective_lr/{name}-l2-constant-along-lines',
        reference=f'error a function of {rule} alone: van Laarhoven 2017, section 3'))
  if along:
    out.append(verdicts.paired(
        f'{name} + L2: along lines of constant {rule} the test error varies within '
        f'{LINE_MARGIN:g}', source, 'pooled standard deviation of test error along the lines',
        along, threshold=LINE_MARGIN, numbers=numbers,
        id=f'effective_lr/{name}-l2-lines-within-margin',
        reference=f'error a function of {rule} alone, within an absolute margin of '
                  f'{LINE_MARGIN:g}'))
  if len(finite) == len(powers) and finite:
    out.append(verdicts.paired(
        f'{name} + L2: the flattest lines of test error are lr^p * lambda = const with '
        f'p = {POWER[name]}', source, f'fitted exponent p minus {POWER[name]}',
        [p - POWER[name] for p in finite], threshold=POWER_MARGIN, side='equals',
        numbers=numbers, id=f'effective_lr/{name}-l2-fitted-exponent',
        reference=f'p = {POWER[name]} ({rule}); the other rule\'s p = {3 - POWER[name]} lies '
                  f'{1} away'))
  return out


def report(workdir):
  plt = study.pyplot()

  meta, runs = study.load_study(workdir)
  spec = PRESETS[meta['preset']]
  n = spec['grid']
  centre = (n - 1) // 2
  size = study.each_run(runs, lambda c, summary: (
      f'{summary["steps"]} steps of batch {c["batch_size"]} on {c["train_subset"] or "all"} '
      f'{c["dataset"]} training examples, {c["model"]} width {c["width"]}, BN evaluated '
      f'with {c["bn_eval"]} statistics.'))
  sections = [('Setup', study.finished_line(meta, runs) + f' BN after every conv; every '
               f'run\'s config is in its folder\'s `config.json`. Test error = 1 - test '
               f'accuracy, averaged over the evaluations after {ERROR_WINDOW:.0%} of '
               f'training.{size} lambda acts on the scale-invariant kernels; the '
               f'classifier head keeps lambda = {HEAD_DECAY:g} in every regularized run. '
               f'A test error near 0.9 is chance: that run failed to train.')]

  # 1. The exact test of the scaling rules.
  found, text = _exact_section(workdir, runs)
  if found:
    sections.append(('The scaling rules as an exact symmetry', text))

  # 2. Heatmaps and the constant-effective-LR claim.
  fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(6 * len(OPTIMIZERS), 4.5))
  lines = []
  for ax, (name, (_, lr0, lam0, lr_step, lam_step)) in zip(np.atleast_1d(axes),
                                                           OPTIMIZERS.items()):
    grids = _grids(runs, name, n)
    if not grids:
      continue
    mean = np.nanmean(np.array([g for g, _ in grids.values()]), axis=0)
    elapsed = np.nanmin(np.array([e for _, e in grids.values()]), axis=0)
    trained = mean[mean < FAILED]  # a failed cell (chance) would flatten the scale
    im = ax.imshow(mean, origin='lower', cmap='viridis',
                   vmin=trained.min() if trained.size else None,
                   vmax=trained.max() if trained.size else None)
    ax.set_xticks(range(n), [f'{v:.1e}' for v in grid_values(lam0, lam_step, n)],
                  rotation=45)
    ax.set_yticks(range(n), [f'{v:.1e}' for v in grid_values(lr0, lr_step, n)])
    ax.set_xlabel('L2 strength lambda (invariant kernels)')
    ax.set_ylabel('learning rate')
    ax.set_title(f'{name} + L2: test error ({len(grids)} seed(s))')
    for i in range(n):
      for j in range(n):
        if not np.isnan(mean[i, j]):
          ax.text(j, i, f'{mean[i, j]:.3f}\n{elapsed[i, j]:.1f} tau', ha='center',
                  va='center', color='w', fontsize=7)
    fig.colorbar(im, ax=ax)
    new = _line_verdicts(name, grids, seed_noise(grids), grid_values(lr0, lr_step, n),
                         grid_values(lam0, lam_step, n))
    found += new
    lines += [v.markdown() for v in new]
  fig.tight_layout()
  heat = study.savefig(fig, workdir, 'heatmaps')
  sections.append(('Test error over learning rate x L2',
                   f'![heatmaps]({heat})\n\nEach cell: the mean test error over seeds and '
                   f'the fewest time constants of approach (slowest layer) any seed ran '
                   f'before the error window.\n\n' + _tau_table(runs, n) + '\n\n'
                   + '\n\n'.join(lines)))

  # 3. Projection: does lambda stop mattering?
  fig, ax = plt.subplots(figsize=(5, 3.5))
  lines = []
  for name, (_, lr0, lam0, lr_step, lam_step) in OPTIMIZERS.items():
    lams = grid_values(lam0, lam_step, n)
    plain = [study.seeds_of(runs, f'{name}_l2_lr{centre}_wd{j}') for j in range(n)]
    proj = [study.seeds_of(runs, f'{name}_l2proj_wd{j}') for j in range(n)]
    both = sorted(set.intersection(*(set(p) for p in plain + proj)))
    if not both:
      continue
    e_plain = np.array([[error(p[s]) for p in plain] for s in both])
    e_proj = np.array([[error(p[s]) for p in proj] for s in both])
    ax.semilogx(lams, e_plain.mean(0), 'o-', label=f'{name} + L2')
    ax.semilogx(lams, e_proj.mean(0), 's--', label=f'{name} + L2 + projection')
    verdict = verdicts.paired(
        f'{name}: with unit-norm projection, test error depends less on lambda',
        'van Laarhoven 2017, section 4; seed blog (force ||w|| = 1)',
        'range of test error over lambda with projection minus without',
        list(np.ptp(e_proj, axis=1) - np.ptp(e_plain, axis=1)),
        numbers=f'range over lambda per seed {_each(np.ptp(e_proj, axis=1))} with '
                f'projection, {_each(np.ptp(e_plain, axis=1))} without',
        id=f'effective_lr/{name}-projection-flattens-lambda',
        reference='lambda inert under ||w|| = 1: van Laarhoven 2017, section 4')
    found.append(verdict)
    lines.append(verdict.markdown())
  lams = grid_values(OPTIMIZERS['adam'][2], OPTIMIZERS['adam'][4], n)
  adamw = [study.seeds_of(runs, f'adamw_proj_wd{j}') for j in range(n)]
  both = sorted(set.intersection(*(set(a) for a in adamw)))
  if both:
    e = np.array([[error(a[s]) for a in adamw] for s in both])
    ax.semilogx(lams, e.mean(0), 'd:', label='AdamW + projection')
    verdict = verdicts.paired(
        'adamw: with unit-norm projection, lambda on the projected kernels leaves the '
        f'test error within {MARGIN:g}', 'van Laarhoven 2017, section 4; Loshchilov & '
        'Hutter 2019 (decoupled decay); projection rescales away (1 - lr lambda)',
        f'test error at the largest minus the smallest lambda (x{lams[-1] / lams[0]:g}), '
        f'against +-{MARGIN:g}', list(e[:, -1] - e[:, 0]), threshold=MARGIN, side='within',
        numbers=f'test error per lambda (mean over seeds) '
                f'{", ".join(f"{v:.4f}" for v in e.mean(0))}',
        id='effective_lr/adamw-projection-lambda-inert',
        reference=f'lambda inert within {MARGIN:g} under projection (decoupled decay only rescales)')
    found.append(verdict)
    lines.append(verdict.markdown())
  ax.set_ylabel('test error')
  study.label_axes(ax, 'L2 strength lambda')
  proj_png = study.savefig(fig, workdir, 'projection')
  sections.append(('Unit-norm projection', f'![projection]({proj_png})\n\nAt the grid\'s '
                   'centre learning rate; lambda on the projected kernels only, the head\'s '
                   f'decay fixed at {HEAD_DECAY:g}. With L2 the decay still enters the '
                   'optimizer\'s gradient (for Adam: its moments) before the projection; '
                   'with AdamW it does not.\n\n' + '\n\n'.join(lines)))

  # 4. Dynamics: weight norm and effective LR over training, every scale-invariant layer.
  layers = sorted({layer for r in runs.values() for layer in invariant_layers(r)})
  fig, axes = plt.subplots(2, max(len(layers), 1), figsize=(4.5 * max(len(layers), 1), 6.5),
                           squeeze=False)
  lines = []
  for name in OPTIMIZERS:
    for label, arm in (('no decay', f'{name}_none'), ('L2', f'{name}_l2_lr{centre}_wd{centre}'),
                       ('L2 + projection', f'{name}_l2proj_wd{centre}')):
      seeds = study.seeds_of(runs, arm)
      if not seeds:
        continue
      first = seeds[min(seeds)]
      for col, layer in enumerate(layers):
        steps, norm = first.series(f'weight_norm/{layer}')
        _, eff = first.series(f'effective_lr/{layer}')
        axes[0, col].plot(steps, norm, label=f'{name}, {label}')
        axes[1, col].semilogy(steps, eff, label=f'{name}, {label}')
      if label == 'no decay':
        ratios, shown = [], []
        for seed, run in sorted(seeds.items()):
          _, norm = run.series(f'weight_norm/{TRACKED_LAYER}')
          _, eff = run.series(f'effective_lr/{TRACKED_LAYER}')
          if len(norm) >= 2:
            ratios.append(float(np.log(eff[-1] / eff[0])))
            shown.append(f'seed {seed}: norm {norm[0]:.3f} -> {norm[-1]:.3f}, effective LR '
                         f'{eff[0]:.3g} -> {eff[-1]:.3g}')
        if ratios:
          verdict = verdicts.paired(
              f'{name} without decay: the {TRACKED_LAYER} weight norm grows and its '
              f'effective learning rate decays', 'van Laarhoven 2017, section 3; seed blog',
              f'log ratio of the {TRACKED_LAYER} effective LR, last over first logged step',
              ratios, numbers='; '.join(shown),
              id=f'effective_lr/{name}-no-decay-effective-lr-decays',
              reference='effective lr = lr/||w||^2 (SGD), lr/||w|| (Adam) falls as ||w|| grows: van Laarhoven 2017, eq. 8')
          found.append(verdict)
          lines.append(verdict.markdown())
  for col, layer in enumerate(layers):
    axes[0, col].set_title(f'{layer}: mean per-unit weight norm')
    axes[1, col].set_title(f'{layer}: effective learning rate')
  study.label_axes(axes[1], 'step', legend=False)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  dyn = study.savefig(fig, workdir, 'dynamics')
  sections.append(('Weight norm and effective learning rate', f'![dynamics]({dyn})\n\n'
                   '(Curves: the first seed; the effective learning rate is the mean over a '
                   'layer\'s live units, `bnjax.dynamics.live_units`.)\n\n'
                   + _dead_table(runs, layers, centre) + '\n\n' + '\n\n'.join(lines)))
  sections.append(('Verdict rule', _rule_note(spec)))
  return study.write_report(workdir, 'Effective learning rate (van Laarhoven 2017)',
                            sections, found)


def _dead_table(runs, layers, centre) -> str:
  """Dead units (no gradient, or collapsed norm) in the last logged window of the
  grid's centre runs and corners, mean over seeds."""
  rows = ['| run | ' + ' | '.join(f'{layer} dead units' for layer in layers) + ' |',
          '|---|' + '---|' * len(layers)]
  n = 2 * centre + 1
  for name in OPTIMIZERS:
    for arm in (f'{name}_none', f'{name}_l2_lr0_wd0', f'{name}_l2_lr{centre}_wd{centre}',
                f'{name}_l2_lr{n - 1}_wd{n - 1}', f'{name}_l2proj_wd{centre}'):
      seeds = study.seeds_of(runs, arm)
      if not seeds or f'dead_units/{layers[0]}' not in next(iter(seeds.values())).metrics[-1]:
        continue
      rows.append(f'| {arm} | ' + ' | '.join(
          f'{np.mean([r.metrics[-1][f"dead_units/{layer}"] for r in seeds.values()]):.1%}'
          for layer in layers) + ' |')
  return '\n'.join(rows) if len(rows) > 2 else ''


def _each(values) -> str:
  return ', '.join(f'{v:.4f}' for v in values)


def _tau_table(runs, n) -> str:
  """Per grid cell: lr, lambda, seeds, mean test error, the slowest layer's tau."""
  rows = ['| optimizer | lr | lambda | seeds | test error | tau (slowest layer, steps) | '
          'time constants before the error window |', '|---|---|---|---|---|---|---|']
  for name in OPTIMIZERS:
    for i in range(n):
      for j in range(n):
        seeds = study.seeds_of(runs, f'{name}_l2_lr{i}_wd{j}')
        if not seeds:
          continue
        first = seeds[min(seeds)]
        tau, elapsed = time_constants(first, name)
        errors = [error(r) for r in seeds.values()]
        rows.append(f'| {name} | {first.config["learning_rate"]:.3g} | '
                    f'{first.config["weight_decay"]:.3g} | {len(seeds)} | '
                    f'{np.mean(errors):.4f} | {"-" if tau is None else f"{tau:.0f}"} | '
                    f'{elapsed:.1f}{" (left out)" if elapsed < FAR else ""} |')
  return '\n'.join(rows)
