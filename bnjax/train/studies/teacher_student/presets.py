"""The teacher_student study: its presets (the sweep of runs), names and the thresholds
of its rules."""

import itertools
import math

from bnjax import theory
from bnjax.train.config import Config
from bnjax.train.studies import study


STUDY = 'teacher_student'
BATCH = 32
STRONG_ZETA = 0.25  # Luo et al.'s second linear curve
NOISE_STD, LEARNING_RATE, NUM_TEST = 0.5, 0.4, 2000
EPSILON = 1e-5  # bnjax.layers.BatchNorm's
ACTIVATIONS = ('linear', 'relu')
STATS = ('population', 'training', 'running')
TRACK_MARGIN = math.log(1.25)
ZETA_MARGIN = math.log(1.25)
SLOPE_MARGIN = 0.25
SMALL_LOAD = 2.0
INIT_SCALES = (0.0, 1.0, 3.0, 10.0)
GRADIENT_PARTITIONS = 8  # partitions of the training set bnjax.implicit averages
# Train vectorized by default, on CPU too: a perceptron's step is a few
# hundred flops, so one vmapped program over the seeds beats a worker process
# per seed; the groups themselves go out to the worker processes (bnjax.train.sweep).
VECTORIZE = True
COLORS = {'bn': 'C0', 'wn_gamma_decay': 'C1', 'wn_strong_gamma_decay': 'C2', 'sgd': 'C3',
          'bayes': 'k', 'linear': 'C4', 'relu': 'C5'}
PRESETS = {
    # Each seed draws its own teacher, data and initialization. loads: alpha,
    # rounded to P = a multiple of BATCH; sweep: BN's batch sizes M on P =
    # sweep_p examples; large: (N, P, steps) of a second, larger N near alpha = 1.
    'smoke': dict(n=20, loads=(1.6, 3.2), steps=300, seeds=(0,), sweep=(8, 32),
                  sweep_p=64, large=None),
    'quick': dict(n=100, loads=(0.64, 0.96, 1.92, 3.84), steps=5000, seeds=(0,),
                  sweep=(8, 32, 128), sweep_p=256, large=None),
    'standard': dict(n=100, loads=(0.32, 0.64, 0.96, 1.28, 1.6, 1.92, 2.56, 3.84, 5.12),
                     steps=10000, seeds=tuple(range(10)), sweep=(8, 16, 32, 64, 128),
                     sweep_p=256, large=(500, 512, 50000)),
    'paper': dict(n=500, loads=(0.256, 0.512, 0.768, 1.024, 1.28, 1.536, 2.048, 3.072,
                                4.096, 6.144, 8.192),
                  steps=50000, seeds=tuple(range(10)), sweep=(8, 16, 32, 64, 128, 256),
                  sweep_p=1024, large=(1000, 1024, 100000)),
}


def methods(activation: str, input_dim: int) -> dict:
  """``{key: (label, config overrides)}`` of the students compared for one activation.

  The first is BN, the second WN + gamma decay at BN's zeta, the last plain SGD.
  """
  zeta = theory.gamma_decay_strength(BATCH, activation)
  out = {'bn': (f'BN (M = {BATCH})', dict(norm='batch')),
         'wn_gamma_decay': (f'WN + gamma decay (zeta = 1/{round(1 / zeta)})',
                            dict(norm='weight', gamma_decay=zeta / input_dim))}
  if activation == 'linear':
    out['wn_strong_gamma_decay'] = (f'WN + gamma decay (zeta = {STRONG_ZETA})',
                                    dict(norm='weight', gamma_decay=STRONG_ZETA / input_dim))
  out['sgd'] = ('plain SGD', dict(norm='none'))
  return out


def examples(load: float, n: int) -> int:
  """P for a load alpha: the nearest positive multiple of BATCH to alpha N."""
  return BATCH * max(1, round(load * n / BATCH))


def load_examples(spec: dict) -> list:
  """The sorted P of a preset's loads."""
  return sorted({examples(a, spec['n']) for a in spec['loads']})


def run_name(activation: str, method: str, p: int, *, n=None, m=None, long=False) -> str:
  """``<activation>_<method>_P<p>`` and ``_N<n>`` (the larger N), ``_M<m>`` (the batch
  sweep), ``_long`` (twice the steps); seeds add ``_seed<s>`` (study.seeded)."""
  return (f'{activation}_{method}_P{p}' + (f'_N{n}' if n else '') + (f'_M{m}' if m else '')
          + ('_long' if long else ''))


def student_config(activation: str, overrides: dict, *, n: int, p: int, m: int, steps: int,
                   seed: int, parallel: str = 'none') -> Config:
  """One student's run: N = ``n`` inputs, P = ``p`` examples in batches of ``m``,
  whole epochs covering at least ``steps`` steps, the study's SGD with a cosine
  decay; ``overrides`` set the normalization (and gamma decay)."""
  batches = p // m
  epochs = math.ceil(steps / batches)
  log_every = max(1, epochs * batches // 20)
  return Config(seed=seed, dataset='teacher_student', model='perceptron', parallel=parallel,
                activation=activation, input_dim=n, num_train=p, num_test=NUM_TEST,
                noise_std=NOISE_STD, batch_size=m, num_epochs=epochs, optimizer='sgd',
                momentum=0.0, learning_rate=LEARNING_RATE, schedule='cosine',
                regularizer='none', weight_decay=0.0, log_every=log_every,
                checkpoint_every=log_every * 20, **{'gamma_decay': 0.0, **overrides})


def configs(preset: str, parallel: str = 'none') -> dict:
  spec = PRESETS[preset]
  n, out = spec['n'], {}

  def make(name, seed, *args, **kwargs):
    out[study.seeded(name, seed)] = student_config(*args, seed=seed, parallel=parallel, **kwargs)

  for activation, seed in itertools.product(ACTIVATIONS, spec['seeds']):
    arms = methods(activation, n)
    for method, (_, overrides) in arms.items():
      for p in load_examples(spec):
        make(run_name(activation, method, p), seed, activation, overrides, n=n, p=p,
             m=BATCH, steps=spec['steps'])
    for m in spec['sweep']:  # M = BATCH is the main BN arm at P = sweep_p
      make(run_name(activation, 'bn', spec['sweep_p'], m=None if m == BATCH else m), seed,
           activation, dict(norm='batch'), n=n, p=spec['sweep_p'], m=m, steps=spec['steps'])
    if activation == 'linear' and spec['large']:
      big, p, steps = spec['large']
      for method in ('bn', 'wn_gamma_decay', 'sgd'):
        make(run_name(activation, method, p, n=big), seed, activation,
             methods(activation, big)[method][1], n=big, p=p, m=BATCH, steps=steps)
      near = examples(1.0, n)
      make(run_name(activation, 'bn', near, long=True), seed, activation,
           dict(norm='batch'), n=n, p=near, m=BATCH, steps=2 * spec['steps'])
  return out
