r"""van Laarhoven (2017): with batch norm, L2 sets the effective learning rate.

Trains the ConvNet with batch norm over a grid of learning rate x L2
strength for SGD with momentum + L2 and Adam + L2, and reports

1. test-error heatmaps, and whether error is constant along lines of
   constant effective learning rate (SGD: lr * lambda; Adam: lr^2 * lambda)
   rather than along rows (lr alone), columns (lambda alone) or diagonals
   (lr / lambda), and within twice the seed-to-seed noise;
2. test error against lambda with and without ``unit_norm_projection`` (the
   seed's proposal: with it, lambda should stop mattering), and AdamW with
   projection, which the projection makes lambda-free;
3. per-layer weight norm and effective learning rate over training, including
   the unregularized runs, where the norm should grow and the effective
   learning rate decay.

lambda acts on the scale-invariant kernels only: the classifier head, which
batch norm does not make scale-invariant, keeps a fixed decay
(``head_weight_decay``), so that a cell differs from its neighbours only in
what the claim is about. Every cell reports its approach time constants
(:func:`bnjax.theory.equilibrium_time_constant`); cells that ran fewer than
:data:`FAR` of them before the error window are left out of the line test.

  python -m experiments.effective_lr --preset=quick --workdir=runs/effective_lr
"""

import dataclasses
import math

import numpy as np

from bnjax import theory
from bnjax.train.config import Config
from bnjax.train.studies import study, verdicts

STUDY = 'effective_lr'

OPTIMIZERS = {
    # name: (optimizer flag, centre lr, centre lambda, lr step, lambda step). The
    # steps make the anti-diagonals hold lr^p * lambda fixed (p = 1 SGD, 2 Adam):
    # lambda_step = lr_step ** p.
    'sgd': ('sgd', 0.05, 2e-2, 4.0, 4.0),
    'adam': ('adam', 8e-3, 0.3, 2.0, 4.0),
}
POWER = {'sgd': 1, 'adam': 2}
# The head's L2 (or decoupled) decay in every regularized run.
HEAD_DECAY = 5e-4
TRACKED_LAYER = 'conv2'
FAILED = 0.85  # test error of a run that did not train (chance is 0.9)
# Rules fixed before the runs. Test error: the mean over the evaluations after
# ERROR_WINDOW of training (a single iterate at a constant learning rate is
# noisy). A cell whose slowest layer ran fewer than FAR time constants of
# approach before that window is still in its transient. "Within the noise":
# the pooled spread along the lines at most NOISE_FACTOR x the seed-to-seed
# standard deviation. AdamW + projection is lambda-free when the error
# difference between its largest and smallest lambda stays within MARGIN.
ERROR_WINDOW = 0.5
FAR = 3.0
NOISE_FACTOR = 2.0
MARGIN = 0.01

# The grids sit where theory's time constants are short against the runs:
# at 800 steps the cells on the lines of two or more cells run about 3 or more
# time constants before the error window at step 400 (Adam + L2's, sigma /
# (3 lr lambda ||w*||), scales as (lr^2 lambda)^(-2/3); conv1, fan-in 9, is
# the slowest layer: from a calibration run's gradient norms, about 100 steps
# on the line below the Adam grid's centre). Precise BN statistics from 20
# training batches; test evaluations at steps 200, 400, 600 and 800.
_FASHION = dict(train_subset=25600, batch_size=32, num_epochs=1, width=16, log_every=25,
                eval_every=200, checkpoint_every=400, bn_eval='precise', bn_eval_batches=20)
PRESETS = {
    # seeds: of every arm; centre_seeds: extra seeds of the grid's centre cell.
    'smoke': dict(grid=2, seeds=(0,), centre_seeds=(), base=Config(
        train_subset=1024, batch_size=32, num_epochs=1, width=8, log_every=4,
        checkpoint_every=16, eval_every=16, eval_batch_size=2000)),
    # quick: a look in a few minutes (300 steps: the slow cells are left out).
    'quick': dict(grid=3, seeds=(0,), centre_seeds=(), base=Config(
        **{**_FASHION, 'train_subset': 9600, 'eval_every': 100, 'checkpoint_every': 100})),
    'standard': dict(grid=3, seeds=(0, 1, 2), centre_seeds=(), base=Config(**_FASHION)),
    'paper': dict(grid=5, seeds=(0, 1, 2), centre_seeds=(), base=Config(
        dataset='cifar10', augment=True, batch_size=128, num_epochs=60, log_every=50,
        eval_every=1950, checkpoint_every=1950, bn_eval='precise')),
}


def grid_values(centre, step, n):
  """``n`` log-spaced values around ``centre`` (the centre cell for odd n)."""
  return [centre * step ** (k - (n - 1) // 2) for k in range(n)]


def configs(preset: str, parallel: str = 'none') -> dict:
  spec = PRESETS[preset]
  base = dataclasses.replace(spec['base'], parallel=parallel, norm='batch')
  n = spec['grid']
  centre = (n - 1) // 2
  arms = {}
  for name, (opt, lr0, lam0, lr_step, lam_step) in OPTIMIZERS.items():
    lrs, lams = grid_values(lr0, lr_step, n), grid_values(lam0, lam_step, n)
    decayed = dataclasses.replace(base, optimizer=opt, head_weight_decay=HEAD_DECAY)
    for i, lr in enumerate(lrs):
      for j, lam in enumerate(lams):
        arms[f'{name}_l2_lr{i}_wd{j}'] = dataclasses.replace(
            decayed, learning_rate=lr, regularizer='l2', weight_decay=lam)
    for j, lam in enumerate(lams):
      arms[f'{name}_l2proj_wd{j}'] = dataclasses.replace(
          decayed, learning_rate=lrs[centre], regularizer='l2', weight_decay=lam,
          projection=True)
      if name == 'adam':
        arms[f'adamw_proj_wd{j}'] = dataclasses.replace(
            decayed, learning_rate=lrs[centre], regularizer='decoupled', weight_decay=lam,
            projection=True)
    arms[f'{name}_none'] = dataclasses.replace(base, optimizer=opt, learning_rate=lrs[centre],
                                               regularizer='none', weight_decay=0.0)
  out = {study.seeded(arm, s): dataclasses.replace(c, seed=s)
         for arm, c in arms.items() for s in spec['seeds']}
  for name in OPTIMIZERS:
    for s in spec['centre_seeds']:
      arm = f'{name}_l2_lr{centre}_wd{centre}'
      out[study.seeded(arm, s)] = dataclasses.replace(arms[arm], seed=s)
  return out


def invariant_layers(run: study.Run) -> list:
  return sorted(k.split('/', 1)[1] for k in run.metrics[-1]
                if k.startswith('weight_norm/') and not k.endswith('/head'))


def time_constants(run: study.Run, name: str):
  """``(tau of the slowest layer, time constants it ran before the error window)``
  from :func:`bnjax.theory.equilibrium_time_constant` (Adam + L2's from the
  run's own gradient norm at unit weight norm); ``(None, inf)`` for a run
  without decay or without the gradient metric."""
  c = run.config
  if c['regularizer'] != 'l2' or c['weight_decay'] == 0:
    return None, math.inf
  window = ERROR_WINDOW * run.summary['steps']
  taus = []
  for layer in invariant_layers(run):
    steps, g2 = run.series(f'grad_sq_at_unit_norm/{layer}')
    if name == 'sgd':
      taus.append(theory.equilibrium_time_constant(
          'sgd', c['learning_rate'], c['weight_decay'], momentum=c['momentum']))
    elif g2.size and 'fan_in' in run.summary:
      taus.append(theory.equilibrium_time_constant(
          'adam_l2', c['learning_rate'], c['weight_decay'],
          fan_in=run.summary['fan_in'][layer],
          grad_norm=math.sqrt(float(np.mean(g2[steps > window / 2])))))
  if not taus:
    return None, math.inf
  tau = float(max(taus))
  return tau, window / tau


def error(run: study.Run) -> float:
  return run.late_test_error(ERROR_WINDOW)


def _grids(runs, name, n):
  """``{seed: (errors, time constants elapsed)}``, each an ``(n, n)`` grid."""
  out = {}
  for i in range(n):
    for j in range(n):
      for seed, run in study.seeds_of(runs, f'{name}_l2_lr{i}_wd{j}').items():
        errors, elapsed = out.setdefault(seed, (np.full((n, n), np.nan),
                                                np.full((n, n), np.nan)))
        errors[i, j] = error(run)
        elapsed[i, j] = time_constants(run, name)[1]
  return out


def seed_noise(grids: dict) -> float:
  """Pooled seed-to-seed standard deviation of the cells run with 2+ seeds (runs
  that failed to train left out)."""
  stack = np.array([g for g, _ in grids.values()])
  stack = np.where(stack < FAILED, stack, np.nan)
  if len(stack) < 2:
    return float('nan')
  ok = np.sum(~np.isnan(stack), axis=0) >= 2
  if not ok.any():
    return float('nan')
  var = np.nanvar(stack[:, ok], axis=0, ddof=1)
  dof = np.sum(~np.isnan(stack[:, ok]), axis=0) - 1
  return float(math.sqrt(np.sum(var * dof) / np.sum(dof)))


def fitted_power(errors: np.ndarray, lrs, lams) -> float:
  r"""The exponent p of the lines lr^p * lambda = const along which ``errors`` is flattest.

  Fits a quadratic surface to the finite cells in ``(x, y) = (ln lr, ln lambda)``
  (a plane below 6 cells) and takes the leading eigenvector ``(v_x, v_y)`` of
  the mean outer product of its gradient over the cells: if the error is any
  function of ``p x + y`` alone, every gradient is parallel to ``(p, 1)``, so
  ``p = v_x / v_y``.

  Args:
    errors: an ``(n, n)`` grid (rows: ``lrs``, columns: ``lams``), NaN for
      cells left out.
    lrs, lams: the grid's learning rates and lambdas.

  Returns:
    ``p`` (``inf`` when the error varies with lr alone; NaN with under 3 cells).

  Example:
    >>> import numpy as np
    >>> from bnjax.train.studies import effective_lr
    >>> lrs, lams = [0.01, 0.04, 0.16], [1e-3, 4e-3, 1.6e-2]
    >>> grid = np.array([[np.log(lr * lr * lam) ** 2 for lam in lams] for lr in lrs])
    >>> round(effective_lr.fitted_power(grid, lrs, lams), 6)
    2.0

  References:
    Li, "Sliced Inverse Regression for Dimension Reduction", JASA 1991, and
    Samarov, "Exploring Regression Structure Using Nonparametric Functional
    Estimation", JASA 1993 (the gradient outer product finds the direction a
    function varies along).
  """
  x, y = np.meshgrid(np.log(lrs), np.log(lams), indexing='ij')
  ok = np.isfinite(errors)
  if ok.sum() < 3:
    return float('nan')
  x, y, e = x[ok], y[ok], np.asarray(errors, float)[ok]
  quadratic = ok.sum() >= 6
  columns = [np.ones_like(x), x, y] + ([x * x, x * y, y * y] if quadratic else [])
  coef = np.linalg.lstsq(np.stack(columns, 1), e, rcond=None)[0]
  gx, gy = coef[1] + 0 * x, coef[2] + 0 * y
  if quadratic:
    gx, gy = gx + 2 * coef[3] * x + coef[4] * y, gy + coef[4] * x + 2 * coef[5] * y
  grads = np.stack([gx, gy], 1)
  _, vectors = np.linalg.eigh(grads.T @ grads)
  vx, vy = vectors[:, -1]
  return float(vx / vy) if vy != 0 else math.inf


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
  """The claimed invariant against the alternatives, and within the noise."""
  rule = 'lr * lambda' if name == 'sgd' else 'lr^2 * lambda'
  diffs, ratios, shown, powers = [], [], [], []
  for seed, (errors, elapsed) in sorted(grids.items()):
    kept = np.where((elapsed >= FAR) & (errors < FAILED), errors, np.nan)
    if np.isfinite(kept).sum() >= 3:
      powers.append(fitted_power(kept, lrs, lams))
    spread = {g: study.pooled_spread(kept, g) for g in study.GROUPINGS}
    best_other = min(spread[g] for g in study.GROUPINGS[1:])
    if np.isfinite(spread['anti-diagonals']) and np.isfinite(best_other):
      diffs.append(spread['anti-diagonals'] - best_other)
      if np.isfinite(noise) and noise > 0:
        ratios.append(spread['anti-diagonals'] / noise)
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
        diffs, numbers=numbers))
  if ratios:
    out.append(verdicts.paired(
        f'{name} + L2: along lines of constant {rule} the error varies within '
        f'{NOISE_FACTOR:g}x the seed-to-seed noise', source,
        'pooled spread along the lines / seed-to-seed standard deviation', ratios,
        threshold=NOISE_FACTOR, numbers=numbers))
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

  # 1. Heatmaps and the constant-effective-LR claim.
  found = []
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

  # 2. Projection: does lambda stop mattering?
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
                f'projection, {_each(np.ptp(e_plain, axis=1))} without')
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
                f'{", ".join(f"{v:.4f}" for v in e.mean(0))}')
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

  # 3. Dynamics: weight norm and effective LR over training, every scale-invariant layer.
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
              ratios, numbers='; '.join(shown))
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


if __name__ == '__main__':
  study.run_study(STUDY)
