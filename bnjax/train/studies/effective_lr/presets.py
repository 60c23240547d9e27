"""The effective_lr study: its presets (the sweep of runs), names and the thresholds of
its rules."""

import dataclasses

from bnjax.train.config import Config
from bnjax.train.studies import study


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
# approach before that window is still in its transient and is left out.
# "Constant along the lines": the pooled spread of test error along them at most
# LINE_MARGIN (absolute, test error points: a noisier experiment gains nothing).
# The fitted exponent p of the flattest lines lr^p lambda: does not hold when its
# interval excludes the claimed p, holds when it holds it within +-POWER_MARGIN
# (half the distance between SGD's rule and Adam's). AdamW + projection is
# lambda-free when the error difference between its largest and smallest lambda
# stays within MARGIN.
ERROR_WINDOW = 0.75
FAR = 5.0
LINE_MARGIN = 0.01
POWER_MARGIN = 0.5
MARGIN = 0.01
# The exact test (van Laarhoven 2017, section 3, as a symmetry): SGD + L2 under
# (c lr, lambda / c, sqrt(c) w0) and Adam + L2 under (c lr, lambda / c^2, c w0)
# move the scale-invariant kernels along the same directions when the rest
# (head, gains, biases) trains at a fixed rate (--rest_learning_rate) on the same
# batches. Only BN's and Adam's epsilons break the symmetry, and a trained
# network amplifies any difference step by step, so these runs set both to
# EXACT_EPSILON (below every variance and sqrt(v) met, so a no-op in float32, yet
# no 0/0 for a zero gradient); with factors c powers of 4 every other rescaling is
# exact in binary floating point. The control changes lambda by the other rule
# (lr^2 lambda for SGD, lr lambda for Adam) and must move the directions apart.
# BN is evaluated with precise statistics: running averages start at variance 1
# whatever the weights' scale, which no rescaling maps onto each other.
# Factors c along each line, and the largest per-unit direction difference
# (|w/||w|| - w'/||w'|||, any coordinate) and test error difference that count as
# "the same run".
EXACT_EPSILON = 1e-30
EXACT_FACTORS = (0.25, 4.0)
EXACT_DIRECTION = 1e-4
EXACT_ERROR = 1e-3
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
    # smoke: one evaluation and one checkpoint per run, at its end (evaluating the
    # 10,000 test images is most of a 32-step run's time).
    'smoke': dict(grid=2, seeds=(0,), centre_seeds=(), base=Config(
        train_subset=1024, batch_size=32, num_epochs=1, width=8, log_every=4,
        checkpoint_every=32, eval_every=0, eval_batch_size=2000, bn_eval_batches=8)),
    # quick: a look in a few minutes (300 steps: the slow cells are left out).
    'quick': dict(grid=3, seeds=(0,), centre_seeds=(), base=Config(
        **{**_FASHION, 'train_subset': 9600, 'eval_every': 100, 'checkpoint_every': 100})),
    # grid_seeds: more seeds of one optimizer's L2 grid, where 3 seeds left the
    # intervals straddling their thresholds (Adam's, 2026-12-05).
    'standard': dict(grid=3, seeds=(0, 1, 2), centre_seeds=(), grid_seeds={'adam': (3, 4)},
                     base=Config(**_FASHION)),
    'paper': dict(grid=5, seeds=(0, 1, 2), centre_seeds=(), base=Config(
        dataset='cifar10', augment=True, batch_size=128, num_epochs=60, log_every=50,
        eval_every=1950, checkpoint_every=1950, bn_eval='precise')),
}


def grid_values(centre, step, n):
  """``n`` log-spaced values around ``centre`` (the centre cell for odd n)."""
  return [centre * step ** (k - (n - 1) // 2) for k in range(n)]


def exact_line(decayed: Config, name: str, lr0: float, lam0: float) -> dict:
  """The exact test's arms of one optimizer: ``{name}_exact_mid`` at (lr0, lam0),
  ``{name}_exact_rule{k}`` at factor ``EXACT_FACTORS[k]`` under the optimizer's
  rule and ``{name}_exact_wrong{k}`` under the other rule's lambda (same init
  scale); the rest trains at lr0 in all of them, and BN evaluates with precise
  statistics."""
  power = POWER[name]
  line = dataclasses.replace(decayed, rest_learning_rate=lr0, regularizer='l2',
                             bn_eval='precise',
                             norm_epsilon=EXACT_EPSILON,
                             adam_eps=EXACT_EPSILON if name == 'adam' else Config.adam_eps)
  arms = {f'{name}_exact_mid': dataclasses.replace(line, learning_rate=lr0, weight_decay=lam0)}
  for k, c in enumerate(EXACT_FACTORS):
    for kind, p in (('rule', power), ('wrong', 3 - power)):
      arms[f'{name}_exact_{kind}{k}'] = dataclasses.replace(
          line, learning_rate=lr0 * c, weight_decay=lam0 / c ** p,
          init_scale=float(c ** (power / 2)))
  return arms


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
    arms.update(exact_line(decayed, name, lr0, lam0))
  out = {study.seeded(arm, s): dataclasses.replace(c, seed=s)
         for arm, c in arms.items() for s in spec['seeds']}
  for name in OPTIMIZERS:
    for s in spec['centre_seeds']:
      arm = f'{name}_l2_lr{centre}_wd{centre}'
      out[study.seeded(arm, s)] = dataclasses.replace(arms[arm], seed=s)
    for s in spec.get('grid_seeds', {}).get(name, ()):
      for i in range(n):
        for j in range(n):
          arm = f'{name}_l2_lr{i}_wd{j}'
          out[study.seeded(arm, s)] = dataclasses.replace(arms[arm], seed=s)
  return out
