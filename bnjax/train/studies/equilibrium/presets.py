"""The equilibrium study: its presets (the sweep of runs), names and the thresholds of
its rules."""

import dataclasses

from bnjax.train.config import Config
from bnjax.train.studies import study


STUDY = 'equilibrium'
# A prediction "holds" within this factor (declared before any run): the
# closed forms assume gradient noise that is stationary and uncorrelated
# between steps, which a real network only approximates.
TOLERANCE = 1.25
# Means over the last quarter of the logged steps; equilibrated means the
# norm moved less than EQUILIBRATED between the third and the last quarter.
EQUILIBRATED = 0.05
# Fewer time constants of approach (bnjax.theory.equilibrium_time_constant)
# than this before the averaging window: the run is still in its transient.
FAR = 3.0
# Training batches, in order, over which a checkpoint's per-unit gradient
# scale E||g~_j||^2 is averaged for SGD's per-unit prediction.
UNIT_BATCHES = 20
# name: (config overrides, theory optimizer name, momentum for theory)
OPTIMIZERS = {
    'sgd': (dict(optimizer='sgd', momentum=0.0, learning_rate=0.2, regularizer='l2',
                 weight_decay=1e-2),
            'sgd', 0.0),
    'momentum': (dict(optimizer='sgd', momentum=0.9, learning_rate=0.02,
                      regularizer='l2', weight_decay=1e-2), 'sgd', 0.9),
    'adamw': (dict(optimizer='adam', learning_rate=2e-3, regularizer='decoupled',
                   weight_decay=1.0), 'adamw', 0.0),
    'adam_l2': (dict(optimizer='adam', learning_rate=2e-3, regularizer='l2',
                     weight_decay=5e-2), 'adam_l2', 0.0),
    # The default ConvNet (widths 32/64/128) under the momentum run's settings:
    # whether every layer, the last conv included, reaches theory's angle there.
    'momentum_width32': (dict(optimizer='sgd', momentum=0.9, learning_rate=0.02,
                              regularizer='l2', weight_decay=1e-2, width=32), 'sgd', 0.9),
}
NARROW = ('sgd', 'momentum', 'adamw', 'adam_l2')
# The dead-unit map: the default ConvNet (widths 32/64/128) with SGD + momentum 0.9
# + L2 on 8,192 Fashion-MNIST examples at batch 64, over learning rate x lambda,
# with and without a linear warmup (steps): where units die, the equilibrium
# picture describes only a layer's live units. Descriptive, one seed per cell.
DEAD_MAP = dict(learning_rates=(0.02, 0.05, 0.1), weight_decays=(1e-3, 1e-2), warmup=64,
                base=dict(optimizer='sgd', momentum=0.9, regularizer='l2', width=32,
                          train_subset=8192, batch_size=64, num_epochs=2, log_every=16,
                          checkpoint_every=256, eval_every=0))
PRESETS = {
    # seeds: of every optimizer's run; arms: the OPTIMIZERS run (default NARROW);
    # epochs: {arm: num_epochs} where an arm needs fewer than base's to run 10+
    # time constants before the averaging window (SGD's and momentum's tau is
    # 125 steps: one epoch of 1,875 steps gives 11; AdamW's tau of 250 and
    # Adam + L2's conv1 keep two).
    'smoke': dict(seeds=(0,), base=Config(
        train_subset=1024, batch_size=32, num_epochs=2, width=8, log_every=4,
        checkpoint_every=32, eval_batch_size=2000)),
    # quick: a look (one epoch: Adam + L2's conv1 is marked far from equilibrium).
    'quick': dict(seeds=(0,), base=Config(
        train_subset=0, batch_size=32, num_epochs=1, width=16, log_every=25,
        checkpoint_every=500)),
    # dead_map: run the DEAD_MAP cells (first seed) beside the arms; extra_seeds:
    # {arm: seeds} beyond seeds, for the verdicts whose 3-seed intervals straddled
    # their thresholds (Adam + L2's per-unit norm: 0.148 +- 0.077 against 0.223).
    'standard': dict(seeds=(0, 1, 2), arms=tuple(OPTIMIZERS), dead_map=True,
                     extra_seeds=dict(adam_l2=(3, 4)),
                     epochs=dict(sgd=1, momentum=1, momentum_width32=1), base=Config(
        train_subset=0, batch_size=32, num_epochs=2, width=16, log_every=25,
        checkpoint_every=500)),
    'paper': dict(seeds=(0, 1, 2), base=Config(
        dataset='cifar10', model='resnet20', augment=True, batch_size=128, num_epochs=50,
        log_every=50, checkpoint_every=1000)),
}


def configs(preset: str, parallel: str = 'none') -> dict:
  spec = PRESETS[preset]
  base = dataclasses.replace(spec['base'], parallel=parallel, norm='batch')
  epochs = spec.get('epochs', {})
  out = {study.seeded(name, seed): dataclasses.replace(
             base, **OPTIMIZERS[name][0], seed=seed,
             num_epochs=epochs.get(name, base.num_epochs))
         for name in spec.get('arms', NARROW)
         for seed in spec['seeds'] + spec.get('extra_seeds', {}).get(name, ())}
  if spec.get('dead_map'):
    cell = dataclasses.replace(base, **DEAD_MAP['base'], seed=spec['seeds'][0])
    for i, lr in enumerate(DEAD_MAP['learning_rates']):
      for j, lam in enumerate(DEAD_MAP['weight_decays']):
        for warmup in (0, DEAD_MAP['warmup']):
          out[dead_map_name(i, j, warmup)] = dataclasses.replace(
              cell, learning_rate=lr, weight_decay=lam, warmup_steps=warmup)
  return out


def dead_map_name(i: int, j: int, warmup: int) -> str:
  """The dead-unit map's run at learning rate ``i``, lambda ``j``, with or without
  warmup."""
  return f'deadmap_lr{i}_wd{j}' + ('_warmup' if warmup else '')
