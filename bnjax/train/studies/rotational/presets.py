"""The rotational study: its presets (the sweep of runs), names and the thresholds of its
rules."""

import dataclasses

from bnjax.train.config import Config


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
    # 5 seeds: with 3, the warmup contrasts and the error margins straddled their
    # thresholds (2026-12-05).
    'standard': dict(seeds=(0, 1, 2, 3, 4), warmup=150, base=Config(
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
