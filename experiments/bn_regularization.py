r"""Luo et al. (2019): batch norm = population norm + gamma decay, in a CNN.

Trains the ConvNet without any weight decay (so that the only regularizer is
the one batch norm brings) and reports

1. training and test curves of batch norm (BN), population norm (PN), weight
   norm + mean-only BN and weight norm + variance-only BN at batch size M;
2. the squared gains gamma^2 of BN against batch size (at least five sizes):
   BN's implicit gamma decay ``zeta ~ 1/M`` should keep gamma^2 smaller at
   smaller batches. Twice: at equal epochs (smaller batches take more steps)
   and at equal steps (``equal_steps``, each M its own number of epochs);
3. PN with the explicit gamma decay ``zeta = 1/(4M)`` of
   :func:`bnjax.theory.gamma_decay_strength` (ReLU units) against BN and
   plain PN: the decay should move PN's gamma^2 and test loss towards BN's.

  python -m experiments.bn_regularization --preset=quick --workdir=runs/bn_regularization
"""

import dataclasses

import numpy as np

from bnjax import theory
from bnjax.config import Config
from experiments import study, verdicts

STUDY = 'bn_regularization'
CURVE_NORMS = ('batch', 'population', 'mean_only', 'variance_only')
LABELS = {'batch': 'BN', 'population': 'PN', 'mean_only': 'WN + mean-only BN',
          'variance_only': 'WN + variance-only BN'}

SIZES = (8, 16, 32, 64, 128)
TRAIN_SIZES = {'fashion_mnist': 60000, 'mnist': 60000, 'cifar10': 50000}
PRESETS = {
    # batch: the M of the curves and of PN + gamma decay (evaluated every eval_every
    # steps); batch_sizes: the gamma^2 sweep, at the base's epochs and at equal_steps.
    'smoke': dict(batch=32, eval_every=8, batch_sizes=SIZES, equal_steps=32, base=Config(
        train_subset=256, num_epochs=2, width=8, log_every=4, checkpoint_every=16,
        eval_batch_size=2000)),
    'quick': dict(batch=32, eval_every=256, batch_sizes=SIZES, equal_steps=1024,
                  base=Config(
                      train_subset=8192, num_epochs=6, width=16, log_every=32,
                      checkpoint_every=256)),
    'paper': dict(batch=128, eval_every=1950, batch_sizes=(16, 32, 64, 128, 256, 512),
                  equal_steps=15625,
                  base=Config(dataset='cifar10', model='resnet20', augment=True,
                                    num_epochs=100, log_every=50, checkpoint_every=1000)),
}


def run_name(norm: str, batch: int, gamma_decay: bool = False,
             equal_steps: bool = False) -> str:
  return (f'{norm}_m{batch}' + ('_gamma_decay' if gamma_decay else '')
          + ('_equal_steps' if equal_steps else ''))


def equal_steps_epochs(steps: int, batch: int, train_size: int) -> int:
  """Epochs that give ``steps`` steps of ``batch`` over ``train_size`` examples."""
  epochs, rest = divmod(steps * batch, train_size)
  if rest or not epochs:
    raise ValueError(f'{steps} steps of batch {batch} are not whole epochs of '
                     f'{train_size} examples.')
  return epochs


def configs(preset: str, parallel: str = 'none') -> dict:
  spec = PRESETS[preset]
  base = dataclasses.replace(spec['base'], parallel=parallel, optimizer='sgd',
                             learning_rate=0.05, regularizer='none', weight_decay=0.0)
  m = spec['batch']
  curve = dataclasses.replace(base, batch_size=m, eval_every=spec['eval_every'])
  out = {run_name(norm, m): dataclasses.replace(curve, norm=norm) for norm in CURVE_NORMS}
  train_size = base.train_subset or TRAIN_SIZES[base.dataset]
  for size in spec['batch_sizes']:
    out.setdefault(run_name('batch', size),
                   dataclasses.replace(base, norm='batch', batch_size=size))
    out[run_name('batch', size, equal_steps=True)] = dataclasses.replace(
        base, norm='batch', batch_size=size,
        num_epochs=equal_steps_epochs(spec['equal_steps'], size, train_size))
  out[run_name('population', m, True)] = dataclasses.replace(
      curve, norm='population', gamma_decay=theory.gamma_decay_strength(m, 'relu'))
  return out


def mean_gamma_sq(run: study.Run) -> float:
  """Mean over the normalization layers of gamma^2 at the end of training."""
  last = run.metrics[-1]
  return float(np.mean([v for k, v in last.items() if k.startswith('gamma_sq/')]))


def spearman(x, y) -> float:
  """Rank correlation (no ties expected)."""
  rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
  return float(np.corrcoef(rx, ry)[0, 1])


def report(workdir):
  plt = study.pyplot()

  meta, runs = study.load_study(workdir)
  spec = PRESETS[meta['preset']]
  m = spec['batch']
  zeta = theory.gamma_decay_strength(m, 'relu')
  size = study.each_run(runs, lambda c, _: (
      f'{c["num_epochs"]} epochs over {c["train_subset"] or "all"} {c["dataset"]} training '
      f'examples ({c["model"]}, width {c["width"]}), SGD with momentum {c["momentum"]}, '
      f'lr {c["learning_rate"]}, no weight decay.'))
  sections = [('Setup', study.finished_line(meta, runs) + f'{size} Training loss: the mean '
               f'over each log window of the train-mode loss; test loss/error on the full '
               f'test set.')]

  # 1. Curves.
  curves = [n for n in CURVE_NORMS if run_name(n, m) in runs]
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  rows = ['| normalization | final training loss | test loss | test error |',
          '|---|---|---|---|']
  for norm in curves:
    run = runs[run_name(norm, m)]
    steps, loss = run.series('loss')
    axes[0].plot(steps, loss, label=LABELS[norm])
    e_steps, e_loss = run.series('test_loss')
    _, e_acc = run.series('test_accuracy')
    axes[1].plot(e_steps, e_loss, 'o-', label=LABELS[norm])
    axes[2].plot(e_steps, 1 - e_acc, 'o-', label=LABELS[norm])
    rows.append(f'| {LABELS[norm]} | {loss[-1]:.4f} | {run.summary["test_loss"]:.4f} | '
                f'{run.test_error:.4f} |')
  for ax, title in zip(axes, ('training loss', 'test loss', 'test error')):
    ax.set_title(f'{title} (M = {m})')
  study.label_axes(axes, 'step')
  curves_png = study.savefig(fig, workdir, 'curves')
  lines, found = [], []
  if 'batch' in curves and 'population' in curves:
    bn, pn = runs[run_name('batch', m)], runs[run_name('population', m)]
    gap_bn = bn.summary['test_loss'] - bn.series('loss')[1][-1]
    gap_pn = pn.summary['test_loss'] - pn.series('loss')[1][-1]
    verdict = verdicts.paired(
        'BN regularizes: its gap between test and training loss is smaller than PN\'s',
        'Luo et al. 2019, section 5 (BN against PN)',
        'generalization gap (test - training loss) BN minus PN', [gap_bn - gap_pn],
        numbers=f'gap BN {gap_bn:.4f}, PN {gap_pn:.4f}; test loss BN '
                f'{bn.summary["test_loss"]:.4f}, PN {pn.summary["test_loss"]:.4f}')
    found.append(verdict)
    lines.append(verdict.markdown())
  sections.append(('BN, PN and the mean-only / variance-only ablations',
                   f'![curves]({curves_png})\n\n' + '\n'.join(rows) + '\n\n'
                   + '\n\n'.join(lines)))

  # 2. gamma^2 against batch size, at equal epochs and at equal steps.
  protocols = {'equal epochs': False, f'equal steps ({spec["equal_steps"]})': True}
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  table = ['| protocol | M | steps | mean gamma^2 | test loss | test error |',
           '|---|---|---|---|---|---|']
  lines = []
  for protocol, equal in protocols.items():
    sized = [(s, runs[run_name('batch', s, equal_steps=equal)]) for s in spec['batch_sizes']
             if run_name('batch', s, equal_steps=equal) in runs]
    if not sized:
      continue
    sizes = [s for s, _ in sized]
    g2 = [mean_gamma_sq(r) for _, r in sized]
    axes[0].semilogx(sizes, g2, 'o-', base=2, label=protocol)
    axes[1].semilogx(sizes, [r.summary['test_loss'] for _, r in sized], 'o-', base=2,
                     label=protocol)
    table += [f'| {protocol} | {s} | {r.summary["steps"]} | {g:.4f} | '
              f'{r.summary["test_loss"]:.4f} | {r.test_error:.4f} |'
              for (s, r), g in zip(sized, g2)]
    rho = spearman(sizes, g2) if len(sizes) >= 2 else float('nan')
    if np.isfinite(rho):
      verdict = verdicts.paired(
          f'{protocol}: BN\'s gamma^2 grows with the batch size (weaker implicit gamma decay '
          f'at larger M)', 'Luo et al. 2019, section 5 (batch size and gamma^2)',
          f'Spearman rank correlation of gamma^2 with M over {len(sizes)} sizes, against 0',
          [rho], side='above',
          numbers=f'gamma^2 {g2[0]:.4f} at M={sizes[0]}, {g2[-1]:.4f} at M={sizes[-1]}')
      found.append(verdict)
      lines.append(verdict.markdown())
  axes[0].set_title('BN: mean gamma^2 at the end')
  axes[1].set_title('BN: test loss')
  study.label_axes(axes, 'batch size M')
  batch_png = study.savefig(fig, workdir, 'batch_size')
  sections.append(('gamma^2 against batch size', f'![batch size]({batch_png})\n\n'
                   'Same learning rate at every M. At equal epochs smaller batches take '
                   'more steps; at equal steps every M takes the same number of updates.\n\n'
                   + '\n'.join(table) + '\n\n' + '\n\n'.join(lines)))

  # 3. PN + gamma decay against BN and PN.
  names = {'BN': run_name('batch', m), 'PN': run_name('population', m),
           f'PN + gamma decay (zeta = 1/(4M) = {zeta:.4g})': run_name('population', m, True)}
  if all(n in runs for n in names.values()):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    table = ['| run | mean gamma^2 | training loss | test loss | test error |',
             '|---|---|---|---|---|']
    for label, name in names.items():
      run = runs[name]
      steps, g = run.series('gamma_sq/conv2_norm')
      axes[0].plot(steps, g, label=label)
      e_steps, e_loss = run.series('test_loss')
      axes[1].plot(e_steps, e_loss, 'o-', label=label)
      table.append(f'| {label} | {mean_gamma_sq(run):.4f} | {run.series("loss")[1][-1]:.4f} '
                   f'| {run.summary["test_loss"]:.4f} | {run.test_error:.4f} |')
    axes[0].set_title('conv2 gamma^2')
    axes[1].set_title('test loss')
    study.label_axes(axes, 'step')
    gd_png = study.savefig(fig, workdir, 'gamma_decay')
    bn, pn, gd = (runs[n] for n in names.values())
    lines = []
    for what, value in (('mean gamma^2', mean_gamma_sq),
                        ('test loss', lambda r: r.summary['test_loss'])):
      verdict = verdicts.paired(
          f'gamma decay moves PN\'s {what} towards BN\'s',
          'Luo et al. 2019, section 4 (BN = PN + gamma decay)',
          f'|PN + gamma decay - BN| minus |PN - BN| ({what})',
          [abs(value(gd) - value(bn)) - abs(value(pn) - value(bn))],
          numbers=f'BN {value(bn):.4f}, PN {value(pn):.4f}, PN + gamma decay '
                  f'{value(gd):.4f}')
      found.append(verdict)
      lines.append(verdict.markdown())
    sections.append(('PN + explicit gamma decay against BN', f'![gamma decay]({gd_png})\n\n'
                     + '\n'.join(table) + '\n\n' + '\n\n'.join(lines)))
  sections.append(('Verdict rule', 'Each verdict is decided by its statistic\'s 95% '
                   f'Student-t interval over at least {verdicts.MIN_SEEDS} seeds; this '
                   'preset runs one seed per configuration, so the verdicts are '
                   'inconclusive and the numbers show the direction only.'))
  return study.write_report(workdir, 'BN as population norm + gamma decay (Luo et al. 2019)',
                            sections, found)


if __name__ == '__main__':
  study.run_study(STUDY)
