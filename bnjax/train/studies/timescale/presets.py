"""The timescale study: its presets (the sweep of runs), names and the thresholds of
its rules."""

import dataclasses

from bnjax import theory
from bnjax.train.config import Config


STUDY = 'timescale'
# Declared before any run.
FACTOR = 2.0  # "the same best tau_epoch": every size's best within this factor of the others'
CHANGE = 2.0  # "the best lambda changes": the smallest size's best at least this factor above
#               the largest size's (a constant lambda across sizes would give 1)
LEARNING_RATE = 2e-3  # AdamW's, constant: tau_epoch = 1 / (lr lambda steps per epoch)
PRESETS = {
    # sizes: training examples (train_subset) of each curve; taus: the grid of
    # tau_epoch, the same for every size (lambda set from it per size); epochs:
    # the same number of passes for every size.
    'smoke': dict(seeds=(0,), sizes=(256, 512, 1024), taus=(0.5, 2.0), epochs=1, base=Config(
        batch_size=64, width=4, log_every=4, checkpoint_every=16, eval_batch_size=2000)),
    'quick': dict(seeds=(0,), sizes=(1000, 3000, 9000), taus=(0.5, 1.0, 2.0, 4.0, 8.0),
                  epochs=4, base=Config(batch_size=32, width=8, log_every=25,
                                        checkpoint_every=500, bn_eval='precise',
                                        bn_eval_batches=30)),
    # 3 sizes 3x apart (the best lambda of a fixed tau_epoch then differs 9x),
    # tau_epoch over 16x, 6 epochs each, 5 seeds: 75 runs, 3.9 M examples. A first
    # run (2026-12-05: taus 1 to 16, 3 seeds) put the 2000-example curve's least
    # mean error at tau 16, the grid's edge, and its per-seed optima 2.6 to 16
    # apart: the grid moved up one step and two seeds were added.
    'standard': dict(seeds=(0, 1, 2, 3, 4), sizes=(2000, 6000, 18000),
                     taus=(2.0, 4.0, 8.0, 16.0, 32.0), epochs=6, base=Config(
                         batch_size=32, width=16, log_every=25, checkpoint_every=500,
                         bn_eval='precise', bn_eval_batches=60)),
    'paper': dict(seeds=(0, 1, 2), sizes=(10000, 25000, 50000),
                  taus=(0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0), epochs=30, base=Config(
                      dataset='cifar10', model='resnet20', augment=True, batch_size=128,
                      log_every=50, checkpoint_every=1000, bn_eval='precise')),
}


def run_name(size: int, tau: float, seed: int) -> str:
  return f'n{size}-tau{tau:g}-seed{seed}'


def configs(preset: str, parallel: str = 'none') -> dict:
  """AdamW (decoupled decay) at :data:`LEARNING_RATE` on the batch-normed model, per
  size, tau_epoch and seed; ``weight_decay`` =
  :func:`bnjax.theory.weight_decay_for_timescale` of the size's steps per epoch."""
  p = PRESETS[preset]
  base = dataclasses.replace(p['base'], parallel=parallel, norm='batch', optimizer='adam',
                             regularizer='decoupled', learning_rate=LEARNING_RATE,
                             num_epochs=p['epochs'])
  out = {}
  for size in p['sizes']:
    sized = dataclasses.replace(base, train_subset=size)
    for tau in p['taus']:
      wd = theory.weight_decay_for_timescale(LEARNING_RATE, tau, sized.steps_per_epoch())
      for seed in p['seeds']:
        out[run_name(size, tau, seed)] = dataclasses.replace(sized, weight_decay=wd,
                                                             seed=seed)
  return out
