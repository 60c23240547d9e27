r"""Rotational optimizers against their inner optimizers, AdamW + projection and AdamP.

Trains the batch-normed ConvNet on Fashion-MNIST with AdamW, AdamW +
projection (van Laarhoven's proposal, which makes AdamW's decay act only on
the head), AdamP (Heo et al. 2021), rotational AdamW, SGD with momentum + L2
and rotational SGD-momentum (Kosson, Messmer & Jaggi 2024,
``--regularizer=rotational``), each over several seeds, the inner optimizers
and their rotational variants also with a linear warmup; and tests Kosson et
al.'s claims, with rules fixed before the runs:

* **equilibrium from the start**: over the first :data:`EARLY` of the steps,
  every scale-invariant layer's angular update of a rotational variant is
  within a factor :data:`TOLERANCE` of the equilibrium angle
  (:func:`bnjax.theory.equilibrium_angular_update` at the step's learning
  rate), and further off for the inner optimizer;
* **less need for warmup**: warmup lowers the inner optimizer's final test
  error by more than it lowers the rotational variant's;
* **error**: the rotational variant's final test error is at most
  :data:`MARGIN` above the inner optimizer's (and AdamP's above AdamW's).

The report also gives each arm's approach time constant
(:func:`bnjax.theory.equilibrium_time_constant`) and how many of them the run
lasted, so a far-from-equilibrium comparison is visible as such.

  python -m experiments.rotational --preset=quick --workdir=runs/rotational
"""

import dataclasses
import math

import numpy as np

from bnjax import theory
from bnjax.train.config import Config
from bnjax.train.studies import study, verdicts

STUDY = 'rotational'

# Declared before any run.
TOLERANCE = 1.1   # "at equilibrium": angle within this factor of the theory
EARLY = 0.1       # "from the start": the first 10% of the steps
MARGIN = 0.005    # "matches or beats": test error at most 0.5 points higher
# Descriptive only: the step from which a run stays within the equilibrium
# study's factor (a 25-step window's RMS angle fluctuates by about 10%).
SETTLED = 1.25

ADAMW = dict(optimizer='adam', learning_rate=2e-3, weight_decay=1.0)
SGDM = dict(optimizer='sgd', momentum=0.9, learning_rate=0.02, weight_decay=1e-2)
# name: (config overrides, theory optimizer of its equilibrium angle or None, inner arm)
ARMS = {
    'adamw': (dict(ADAMW, regularizer='decoupled'), 'adamw', None),
    'adamw_projection': (dict(ADAMW, regularizer='decoupled', projection=True), None, None),
    'adamp': (dict(ADAMW, optimizer='adamp', regularizer='decoupled'), None, None),
    'rotational_adamw': (dict(ADAMW, regularizer='rotational'), 'adamw', 'adamw'),
    'sgdm': (dict(SGDM, regularizer='l2'), 'sgd', None),
    'rotational_sgdm': (dict(SGDM, regularizer='rotational'), 'sgd', 'sgdm'),
}
WARMUP_ARMS = ('adamw', 'rotational_adamw', 'sgdm', 'rotational_sgdm')

PRESETS = {
    'smoke': dict(seeds=(0,), warmup=4, base=Config(
        train_subset=512, batch_size=32, num_epochs=1, width=4, log_every=4,
        checkpoint_every=16, eval_batch_size=2000)),
    # 750 steps: 3 time constants of AdamW's approach (250 steps), 6 of SGDM's.
    # Precise BN statistics: after 750 steps at these rates the running averages
    # lag the weights, and the test error would measure that lag.
    'quick': dict(seeds=(0,), warmup=150, base=Config(
        train_subset=24000, batch_size=32, num_epochs=1, width=16, log_every=25,
        checkpoint_every=250, bn_eval='precise')),
    'standard': dict(seeds=(0, 1, 2), warmup=150, base=Config(
        train_subset=24000, batch_size=32, num_epochs=1, width=16, log_every=25,
        checkpoint_every=250, bn_eval='precise')),
    'paper': dict(seeds=(0, 1, 2), warmup=2000, base=Config(
        dataset='cifar10', model='resnet20', augment=True, batch_size=128, num_epochs=50,
        log_every=50, checkpoint_every=1000)),
}


def run_name(arm: str, warmup: bool, seed: int) -> str:
  return f'{arm}{"-warmup" if warmup else ""}-seed{seed}'


def configs(preset: str, parallel: str = 'none') -> dict:
  p = PRESETS[preset]
  base = dataclasses.replace(p['base'], parallel=parallel, norm='batch')
  out = {}
  for arm, (overrides, _, _) in ARMS.items():
    for warmup in (False, True) if arm in WARMUP_ARMS else (False,):
      for seed in p['seeds']:
        out[run_name(arm, warmup, seed)] = dataclasses.replace(
            base, **overrides, seed=seed, warmup_steps=p['warmup'] if warmup else 0)
  return out


def invariant_layers(run: study.Run) -> list:
  return sorted(k.split('/', 1)[1] for k in run.metrics[-1]
                if k.startswith('angular_update/') and not k.endswith('/head'))


def angle_ratios(run: study.Run, kind: str) -> dict:
  """``{layer: (steps, RMS angle / equilibrium angle)}`` at every logged step.

  The logged squared angle is a window mean (``angular_update_sq``), so the
  equilibrium angle is the window's RMS too: the squared equilibrium angle is
  linear in the learning rate, so it is the angle at the window's mean
  learning rate (under warmup the rate changes within a window). Runs logged
  before that metric give one step's mean angle: compared at that step's rate.
  """
  c = run.config
  lrs = study.scheduled_learning_rates(run)  # index t: step t + 1
  out = {}
  for layer in invariant_layers(run):
    steps, angle_sq = run.angle_sq_series(layer)
    windowed = f'angular_update_sq/{layer}' in run.metrics[-1]
    lr = [np.mean(lrs[max(s - c['log_every'], 0):s]) if windowed else lrs[s - 1]
          for s in steps]
    target = np.array([theory.equilibrium_angular_update(
        kind, max(float(l), 1e-12), c['weight_decay'], momentum=c['momentum'])
        for l in lr])
    out[layer] = (steps, np.sqrt(angle_sq) / target)
  return out


def settling_step(run: study.Run, kind: str) -> float:
  """The first logged step from which every layer's angle stays within
  :data:`SETTLED` of the equilibrium (``inf`` if none): descriptive, no verdict."""
  ratios = angle_ratios(run, kind)
  steps = next(iter(ratios.values()))[0]
  inside = np.all([np.abs(np.log(r)) <= math.log(SETTLED) for _, r in ratios.values()], 0)
  outside = np.flatnonzero(~inside)
  if not outside.size:
    return float(steps[0])
  return float(steps[outside[-1] + 1]) if outside[-1] + 1 < steps.size else math.inf


def early_deviation(run: study.Run, kind: str) -> float:
  """Max over layers of ``|log(mean early ratio)|``: the ratios of each window's RMS
  angle to the equilibrium one (:func:`angle_ratios`), averaged over the logged
  windows in the first :data:`EARLY` of the steps."""
  total = run.summary['steps']
  worst = 0.0
  for steps, ratio in angle_ratios(run, kind).values():
    early = ratio[steps <= max(EARLY * total, steps[0])]  # at least one logged step
    worst = max(worst, abs(math.log(float(np.mean(early)))))
  return worst


def time_constants(run: study.Run, kind: str):
  """``(tau at the peak lr, time constants elapsed by the end)``."""
  c = run.config
  tau = theory.equilibrium_time_constant(kind, c['learning_rate'], c['weight_decay'],
                                         momentum=c['momentum'])
  elapsed = theory.time_constants_elapsed(
      kind, np.maximum(study.scheduled_learning_rates(run), 1e-12), c['weight_decay'],
      momentum=c['momentum'])[-1]
  return tau, float(elapsed)


def _seeds(runs, arm, warmup) -> dict:
  """``{seed: run}`` of one arm."""
  return {r.config['seed']: r for n, r in runs.items()
          if n == run_name(arm, warmup, r.config['seed'])}


def _paired(runs, a, b):
  """Per seed present in both arms (without warmup): ``(run_a, run_b)``."""
  ra, rb = _seeds(runs, a, False), _seeds(runs, b, False)
  return [(ra[s], rb[s]) for s in sorted(set(ra) & set(rb))]


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
        numbers=f'per seed {", ".join(f"{d:.3f}" for d in dev_rot)}'))
    found.append(verdicts.paired(
        f'{inner} is further from equilibrium early on than {rot}', f'{source}, section 4',
        f'early deviation of {inner} minus that of {rot} (as above)',
        [i - r for i, r in zip(dev_inner, dev_rot)], side='above',
        numbers=f'{inner} per seed {", ".join(f"{d:.3f}" for d in dev_inner)}'))
    arms4 = [_seeds(runs, arm, w) for arm in (inner, rot) for w in (False, True)]
    common = sorted(set.intersection(*(set(a) for a in arms4)))
    if common:
      gain = lambda no, yes, s: no[s].test_error - yes[s].test_error
      gains = [gain(arms4[0], arms4[1], s) - gain(arms4[2], arms4[3], s) for s in common]
      found.append(verdicts.paired(
          f'warmup helps {inner} more than {rot}', f'{source}, section 5 (warmup)',
          f'(error without - with warmup) of {inner} minus that of {rot}', gains,
          side='above', numbers=f'per seed {", ".join(f"{g:+.4f}" for g in gains)}'))
    diffs = [r.test_error - i.test_error for r, i in pairs]
    found.append(verdicts.paired(
        f'{rot} reaches a test error at most {MARGIN:.1%} above {inner}\'s',
        f'{source}, section 5', f'error({rot}) - error({inner})', diffs, threshold=MARGIN,
        numbers=f'per seed {", ".join(f"{d:+.4f}" for d in diffs)}'))
  pairs = _paired(runs, 'adamp', 'adamw')
  if pairs:
    diffs = [p.test_error - a.test_error for p, a in pairs]
    found.append(verdicts.paired(
        f'adamp reaches a test error at most {MARGIN:.1%} above adamw\'s',
        'Heo et al. 2021, arXiv 2006.08217, section 4', 'error(adamp) - error(adamw)', diffs,
        threshold=MARGIN, numbers=f'per seed {", ".join(f"{d:+.4f}" for d in diffs)}'))

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
  sections.append(('Verdicts', '\n\n'.join(v.markdown() for v in found)))
  return study.write_report(workdir, 'Rotational optimizers, AdamP and projection', sections,
                            found)


if __name__ == '__main__':
  study.run_study(STUDY)
