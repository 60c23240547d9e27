"""The teacher_student study: its verdicts and report.md with plots."""

import math

import numpy as np

from bnjax import theory
from bnjax.train.studies import study, verdicts
from bnjax.train.studies.teacher_student.presets import (ACTIVATIONS, BATCH, COLORS,
                                                         INIT_SCALES, LEARNING_RATE,
                                                         NOISE_STD, PRESETS, SLOPE_MARGIN,
                                                         SMALL_LOAD, STATS, TRACK_MARGIN,
                                                         ZETA_MARGIN, examples,
                                                         load_examples, methods, run_name)
from bnjax.train.studies.teacher_student.analysis import (_limit_key, _median_iqr, _paired,
                                                          _per_seed, measure_all)


def _load_verdicts(activation, loads, seeds, measured, runs, n):
  """The three generalization verdicts of one activation (module docstring)."""
  bn, wn, sgd = (lambda p, m=m: run_name(activation, m, p)
                 for m in ('bn', 'wn_gamma_decay', 'sgd'))
  sgd_key = 'limit' if activation == 'linear' else 'error'
  err = {(m, p): _per_seed(measured, runs, f(p), key) for p in loads
         for m, f, key in (('bn', bn, 'error'), ('wn', wn, 'error'), ('sgd', sgd, sgd_key))}
  ok = _paired([err[k] for k in err], seeds)
  found = []
  if not ok:
    return found
  log = lambda a, b, p, s: math.log(err[(a, p)][s] / err[(b, p)][s])
  source = 'Luo et al. 2019, Figure 1'
  sgd_text = ('plain SGD\'s converged limit (closed form)' if activation == 'linear'
              else 'trained plain SGD')
  found.append(verdicts.paired(
      f'{activation}: WN + gamma decay with zeta from BN\'s batch size tracks BN (errors '
      f'within 25% on average over load)', source,
      'mean over alpha of |log(err WN / err BN)|',
      [float(np.mean([abs(log('wn', 'bn', p, s)) for p in loads])) for s in ok],
      threshold=TRACK_MARGIN, id=f'teacher_student/{activation}-wn-gamma-decay-tracks-bn',
      reference='Luo et al. 2019, section 2: BN = PN + zeta gamma^2 (BN with population '
                'statistics)',
      numbers='median errors per alpha (WN / BN): ' + ', '.join(
          f'{p / n:g}: {np.median([err[("wn", p)][s] for s in ok]):.3g} / '
          f'{np.median([err[("bn", p)][s] for s in ok]):.3g}' for p in loads)))
  found.append(verdicts.paired(
      f'{activation}: WN + gamma decay with zeta from BN\'s batch size tracks BN closer '
      f'than plain SGD does', source,
      f'mean over alpha of |log(err WN / err BN)| - |log(err SGD / err BN)|, SGD: {sgd_text}',
      [float(np.mean([abs(log('wn', 'bn', p, s)) - abs(log('sgd', 'bn', p, s))
                      for p in loads])) for s in ok],
      id=f'teacher_student/{activation}-wn-closer-to-bn-than-sgd',
      reference='Luo et al. 2019, Figure 1: WN + gamma decay tracks BN, SGD does not'))
  low = [p for p in loads if p / n <= SMALL_LOAD]
  if low:
    # The practitioner's BN evaluates with its running statistics; the exact
    # population statistics (an oracle no training loop has) are a second line.
    for stats, key, what in (('running', 'running', 'its running statistics'),
                             ('population', 'error',
                              'exact population statistics (an oracle)')):
      bn_err = {p: _per_seed(measured, runs, bn(p), key) for p in low}
      both = [s for s in ok if all(s in bn_err[p] for p in low)]
      if not both:
        continue
      found.append(verdicts.paired(
          f'{activation}: BN evaluated with {what} generalizes better than plain SGD at '
          f'small load (alpha <= {SMALL_LOAD:g})', source,
          f'mean over alpha <= {SMALL_LOAD:g} of log(err BN / err SGD), BN with {stats} '
          f'statistics, SGD: {sgd_text}',
          [float(np.mean([math.log(bn_err[p][s] / err[('sgd', p)][s]) for p in low]))
           for s in both],
          id=f'teacher_student/{activation}-bn-{stats}-beats-sgd-small-load',
          reference='Luo et al. 2019, Figure 1: BN below SGD at small load',
          numbers=f'median errors per alpha (BN with {stats} statistics / SGD): ' + ', '.join(
              f'{p / n:g}: {np.median([bn_err[p][s] for s in both]):.3g} / '
              f'{np.median([err[("sgd", p)][s] for s in both]):.3g}' for p in low)))
  return found


def _zeta_section(activation, spec, seeds, measured, runs, ax):
  """The fitted zeta against M (table, plot, two verdicts)."""
  p = spec['sweep_p']
  sizes = [m for m in spec['sweep'] if theory.effective_batch(m, p) < math.inf]
  arm = lambda m: run_name(activation, 'bn', p, m=None if m == BATCH else m)
  zetas = {m: _per_seed(measured, runs, arm(m), 'zeta') for m in sizes}
  ok = _paired(list(zetas.values()), seeds)
  grads = {m: _per_seed(measured, runs, arm(m), 'zeta_gradient') for m in sizes}
  rows = ['| M | M_eff | fitted zeta: median [IQR] | zeta M_eff | zeta from gradients '
          '(bnjax.implicit): median [IQR] | second order: zeta M_eff | Luo et al. Fig. 1: '
          'zeta M_eff |', '|---:|---:|---|---:|---|---:|---:|']
  second = theory.gamma_decay_second_order(1, activation)
  luo = theory.gamma_decay_strength(1, activation)
  for m in sizes:
    values = [zetas[m][s] for s in ok]
    if values:
      me = theory.effective_batch(m, p)
      g = [grads[m][s] for s in ok if s in grads[m]]
      rows.append(f'| {m} | {me:.1f} | {_median_iqr(values)} | '
                  f'{np.median(values) * me:.3g} | {_median_iqr(g) if g else ""} | '
                  f'{second:g} | {luo:g} |')
  found = []
  if len(sizes) >= 2 and ok:
    log_m = np.log([theory.effective_batch(m, p) for m in sizes])
    me = np.array([theory.effective_batch(m, p) for m in sizes])
    slopes, logs = [], []
    for s in ok:
      z = np.array([zetas[m][s] for m in sizes])
      if np.all(z > 0):
        slopes.append(float(np.polyfit(log_m, np.log(z), 1)[0]) + 1.0)
        logs.append(np.log(z * me))
    med = [np.median([zetas[m][s] for s in ok]) for m in sizes]
    ax.loglog(me, np.maximum(med, 1e-8), 'o-', label=f'{activation}: fitted (median)',
              color=COLORS[activation])
    ax.loglog(me, second / me, '--', label=f'{activation}: second order {second:g} / M_eff',
              color=COLORS[activation])
    ax.loglog(me, luo / me, ':', label=f'{activation}: Luo et al. Fig. 1 {luo:g} / M_eff',
              color=COLORS[activation])
    source = 'Luo et al. 2019, section 2 and Figure 1'
    negative = len(ok) - len(slopes)
    note = f'; {negative} seed(s) with a zeta <= 0 left out' if negative else ''
    if slopes:
      found.append(verdicts.paired(
          f'{activation}: BN\'s fitted gamma decay zeta follows 1/M', source,
          f'slope of log zeta against log M_eff, plus 1 (M = {", ".join(map(str, sizes))} '
          f'on P = {p})', slopes, threshold=SLOPE_MARGIN, side='within',
          id=f'teacher_student/{activation}-zeta-follows-1-over-m',
          reference='zeta proportional to 1/M_eff (slope -1)',
          numbers=f'slopes {", ".join(f"{v - 1:.2f}" for v in slopes)}{note}'))
      for name, c, reference, what in (
          ('second-order', second,
           f'{second:g}/M_eff: second-order expansion, batch-mean (1/(2M)) and batch-sigma '
           f'noise together (bnjax.theory.gamma_decay_second_order)', ''),
          ('luo-figure-1', luo,
           f'Luo et al. 2019 Fig. 1: {luo:g}/M, the batch-mean noise alone',
           ' (this tests the batch-mean term alone, without the batch sigma\'s)')):
        ratios = [float(np.mean(v - math.log(c))) for v in logs]
        found.append(verdicts.paired(
            f'{activation}: BN\'s fitted zeta is {c:g}/M{what}', source,
            f'mean over M of log(zeta / ({c:g} / M_eff))', ratios, threshold=ZETA_MARGIN,
            side='within', id=f'teacher_student/{activation}-zeta-is-{name}',
            reference=reference, numbers=f'zeta M_eff / {c:g} = '
            f'{", ".join(f"{math.exp(v):.2f}" for v in ratios)}{note}'))
  return '\n'.join(rows), found


def report(workdir):
  plt = study.pyplot()
  meta, runs = study.load_study(workdir)
  spec = PRESETS[meta['preset']]
  n, seeds = spec['n'], list(spec['seeds'])
  measured = measure_all(workdir, runs)
  loads = load_examples(spec)
  sections = [('Setup', study.finished_line(meta, runs) + f' N = {n} inputs, P = alpha N '
               f'training examples (a multiple of M = {BATCH}: every example every epoch), '
               f'label noise std {NOISE_STD} (noise floor {NOISE_STD ** 2:g}, not included '
               f'below), SGD lr {LEARNING_RATE} with a cosine decay to 0 over about '
               f'{spec["steps"]} steps, {len(seeds)} seed(s) per point (each its own teacher, '
               f'data and initialization). Error: against the noiseless teacher, from the '
               f'final parameters (linear: exact; ReLU: quadrature); BN with exact population '
               f'statistics unless stated. Medians [interquartile range] over seeds. Rules, '
               f'fixed before the runs, are in `experiments/teacher_student.py`.')]
  found = []
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, activation in zip(axes, ACTIVATIONS):
    compared = methods(activation, n)
    curves = {key: (label, 'error', '-') for key, (label, _) in compared.items()}
    curves['bn_running'] = (f'BN (M = {BATCH}), running statistics', 'running', '--')
    if activation == 'linear':
      curves['sgd_limit'] = ('plain SGD, converged limit (closed form)', 'limit', '--')
      curves['bayes'] = ('Bayes-optimal ridge (closed form)', 'bayes', ':')
    rows = []
    for key, (label, field, style) in curves.items():
      method = key if key in compared else {'bn_running': 'bn', 'sgd_limit': 'sgd',
                                            'bayes': 'bn'}[key]
      pts = {p: list(_per_seed(measured, runs, run_name(activation, method, p), field).values())
             for p in loads}
      pts = {p: v for p, v in pts.items() if v}
      if not pts:
        continue
      xs = sorted(pts)
      q = np.array([np.percentile(pts[p], [25, 50, 75]) for p in xs])
      ax.errorbar([p / n for p in xs], q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]],
                  fmt='o' + style, capsize=3, label=label, markersize=3,
                  color=COLORS.get(key, COLORS[method]))
      rows.append((label, {p: _median_iqr(pts[p]) for p in xs}))
    ax.set_ylabel('generalization error (noiseless teacher)')
    ax.set_yscale('log')
    ax.set_title(f'{activation} student, N = {n}')
    study.label_axes(ax, 'load alpha = P / N')
    table = ['| arm | ' + ' | '.join(f'alpha {p / n:g}' for p in loads) + ' |',
             '|---' * (len(loads) + 1) + '|']
    table += [f'| {label} | ' + ' | '.join(cells.get(p, '') for p in loads) + ' |'
              for label, cells in rows]
    bn_stats = ['| alpha | ' + ' | '.join(f'BN, {s} statistics' for s in STATS)
                + ' | BN direction outside the data span |', '|---' * 5 + '|']
    for p in loads:
      per = [list(_per_seed(measured, runs, run_name(activation, 'bn', p), s).values())
             for s in STATS + ('null_share',)]
      if all(per):
        bn_stats.append(f'| {p / n:g} | ' + ' | '.join(_median_iqr(v) for v in per) + ' |')
    converged = ['| arm | train loss drop over the second half (median, max over alpha '
                 'and seeds) |', '|---|---|']
    for key, (label, _) in compared.items():
      drops = [v for p in loads for v in _per_seed(
          measured, runs, run_name(activation, key, p), 'train_drop').values()]
      if drops:
        converged.append(f'| {label} | {np.median(drops):.2%}, {np.max(drops):.2%} |')
    text = '\n'.join(table) + '\n\nBN evaluated three ways:\n\n' + '\n'.join(bn_stats)
    text += '\n\nConvergence:\n\n' + '\n'.join(converged)
    if activation == 'linear':
      text += '\n\n' + _linear_checks(measured, runs, loads, n, spec)
    for v in _load_verdicts(activation, loads, seeds, measured, runs, n):
      found.append(v)
      text += '\n\n' + v.markdown()
    zeta_table, zeta_found = _zeta_section(activation, spec, seeds, measured, runs, axes[2])
    text += (f'\n\n### BN\'s fitted gamma decay against M (P = {spec["sweep_p"]})\n\n'
             + zeta_table)
    for v in zeta_found:
      found.append(v)
      text += '\n\n' + v.markdown()
    sections.append((f'{activation.capitalize()} student', text))
  axes[2].set_title('fitted zeta against the effective batch')
  axes[2].set_ylabel('zeta')
  study.label_axes(axes[2], 'M_eff = M (P - 1) / (P - M)')
  fig.tight_layout()
  png = study.savefig(fig, workdir, 'generalization')
  sections.insert(1, ('Generalization error against load', f'![generalization]({png})'))
  return study.write_report(workdir, 'Teacher-student generalization (Luo et al. 2019, '
                            'Figure 1)', sections, found)


def _linear_checks(measured, runs, loads, n, spec) -> str:
  """The linear student's closed-form checks: WN against its ridge limit, SGD's limit
  against its initialization's scale, BN at twice the steps, and the larger N."""
  lines = ['| alpha | WN + gamma decay trained / closed form | plain SGD trained / '
           'converged limit | ' + ' | '.join(f'SGD limit, init x {s:g}' for s in INIT_SCALES)
           + ' |', '|---' * (3 + len(INIT_SCALES)) + '|']
  for p in loads:
    wn = _per_seed(measured, runs, run_name('linear', 'wn_gamma_decay', p), 'error')
    wn_cf = _per_seed(measured, runs, run_name('linear', 'wn_gamma_decay', p), 'closed_form')
    sgd = _per_seed(measured, runs, run_name('linear', 'sgd', p), 'error')
    lim = [_per_seed(measured, runs, run_name('linear', 'sgd', p), _limit_key(s))
           for s in INIT_SCALES]
    if wn and sgd:
      lines.append(f'| {p / n:g} | {np.median(list(wn.values())):.3g} / '
                   f'{np.median(list(wn_cf.values())):.3g} | '
                   f'{np.median(list(sgd.values())):.3g} / '
                   f'{np.median(list(lim[INIT_SCALES.index(1.0)].values())):.3g} | '
                   + ' | '.join(f'{np.median(list(l.values())):.3g}' for l in lim) + ' |')
  text = ('Closed-form checks (medians; SGD\'s limit keeps its initialization\'s part '
          'outside the data span, scaled here by s):\n\n' + '\n'.join(lines))
  near = examples(1.0, n)
  rows = []
  for label, name, field in (
      (f'BN, N = {n}, {spec["steps"]} steps', run_name('linear', 'bn', near), 'population'),
      (f'BN, N = {n}, {2 * spec["steps"]} steps', run_name('linear', 'bn', near, long=True),
       'population'),
      (f'BN running statistics, N = {n}, {2 * spec["steps"]} steps',
       run_name('linear', 'bn', near, long=True), 'running')):
    v = list(_per_seed(measured, runs, name, field).values())
    if v:
      rows.append(f'| {label} | {near / n:g} | {_median_iqr(v)} |')
  if spec['large']:
    big, p, steps = spec['large']
    for label, method, field in (('BN', 'bn', 'population'),
                                 ('BN running statistics', 'bn', 'running'),
                                 ('WN + gamma decay', 'wn_gamma_decay', 'error'),
                                 ('WN + gamma decay, closed form', 'wn_gamma_decay',
                                  'closed_form'),
                                 ('plain SGD, trained', 'sgd', 'error'),
                                 ('plain SGD, converged limit', 'sgd', 'limit'),
                                 ('Bayes-optimal ridge', 'bn', 'bayes')):
      v = list(_per_seed(measured, runs, run_name('linear', method, p, n=big), field).values())
      if v:
        rows.append(f'| {label}, N = {big}, {steps} steps | {p / big:g} | {_median_iqr(v)} |')
  if rows:
    text += ('\n\nNear alpha = 1: training length and N:\n\n| arm | alpha | error: median '
             '[IQR] |\n|---|---:|---|\n' + '\n'.join(rows))
  return text
