r"""Luo et al. (2019) Figure 1: generalization against load alpha = P/N.

A perceptron student ``g(norm(w . x))`` learns a noisy teacher
``y = g(w* . x) + noise`` from P examples in N dimensions (bnjax.data.
teacher_student), for a linear and a ReLU ``g``, trained by plain SGD with
batch size M to convergence. Compared, at each load alpha = P/N:

* BN (batch norm, M = 32);
* WN + gamma decay: weight norm with the explicit penalty ``zeta * gamma^2``,
  ``zeta = 1/(2M)`` (linear) or ``1/(4M)`` (ReLU) from
  :func:`bnjax.theory.gamma_decay_strength`, which Luo et al. derive as BN's
  implicit regularization; and, for the linear student, their stronger
  ``zeta = 0.25``. gamma is BN's gain: with ``x ~ N(0, I/N)`` the population
  std of ``v . x`` is ``||v|| / sqrt(N)``, so WN's gain ``g`` (which divides
  by ``||v||`` only) is ``gamma * sqrt(N)`` and the penalty on ``g`` is
  ``(zeta / N) * g^2``;
* plain SGD (no normalization, a bias).

Generalization error here is the test mean squared error against noisy
targets, so it includes the noise variance ``noise_std^2``.

  python -m experiments.teacher_student --preset=quick --workdir=runs/teacher_student
"""

import dataclasses
import itertools
import math

import numpy as np

from bnjax import theory
from bnjax.config import Config
from experiments import study, verdicts

STUDY = 'teacher_student'
BATCH = 32
STRONG_ZETA = 0.25  # Luo et al.'s second linear curve
NOISE_STD, LEARNING_RATE, NUM_TEST = 0.5, 0.2, 2000
COLORS = {'bn': 'C0', 'wn_gamma_decay': 'C1', 'wn_strong_gamma_decay': 'C2', 'sgd': 'C3'}

PRESETS = {
    # Each seed draws its own teacher, data and initialization.
    'smoke': dict(alphas=(1.0, 4.0), steps=200, seeds=(0,), base=Config(input_dim=20)),
    'quick': dict(alphas=(0.5, 1.0, 1.5, 2.0, 3.0, 5.0), steps=4000, seeds=(0,),
                  base=Config(input_dim=100)),
    'standard': dict(alphas=(0.5, 1.0, 1.5, 2.0, 3.0, 5.0), steps=4000, seeds=(0, 1, 2),
                     base=Config(input_dim=100)),
    'paper': dict(alphas=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0),
                  steps=40000, seeds=(0, 1, 2, 3, 4), base=Config(input_dim=500)),
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


def run_name(activation: str, method: str, alpha: float, seed: int = 0) -> str:
  return f'{activation}_{method}_alpha{alpha:g}' + (f'_seed{seed}' if seed else '')


def configs(preset: str, parallel: str = 'none') -> dict:
  spec = PRESETS[preset]
  n = spec['base'].input_dim
  out = {}
  for activation in ('linear', 'relu'):
    for method, (_, overrides) in methods(activation, n).items():
      for alpha, seed in itertools.product(spec['alphas'], spec['seeds']):
        p = max(BATCH, round(alpha * n))
        epochs = math.ceil(spec['steps'] / (p // BATCH))
        log_every = max(1, epochs * (p // BATCH) // 20)
        out[run_name(activation, method, alpha, seed)] = dataclasses.replace(
            spec['base'], seed=seed, dataset='teacher_student', model='perceptron',
            parallel=parallel, activation=activation, num_train=p, num_test=NUM_TEST,
            noise_std=NOISE_STD, batch_size=BATCH, num_epochs=epochs, optimizer='sgd',
            momentum=0.0, learning_rate=LEARNING_RATE, regularizer='none', weight_decay=0.0,
            log_every=log_every, checkpoint_every=log_every * 20, **overrides)
  return out


def report(workdir):
  plt = study.pyplot()

  meta, runs = study.load_study(workdir)
  spec = PRESETS[meta['preset']]
  n = spec['base'].input_dim
  sections = [('Setup', study.finished_line(meta, runs) + f' N = {n} inputs, P = alpha N '
               f'training examples (at least one batch), {NUM_TEST} test examples, label '
               f'noise std {NOISE_STD} (so the error floor is {NOISE_STD ** 2:g}), SGD lr '
               f'{LEARNING_RATE} with batch size {BATCH} for about {spec["steps"]} steps. '
               f'Error: test MSE, the mean over {len(spec["seeds"])} seed(s) (each its own '
               f'teacher, data and initialization), +- its standard error.')]
  found = []
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, activation in zip(axes, ('linear', 'relu')):
    curves, compared = {}, methods(activation, n)
    sems = {}
    for method, (label, _) in compared.items():
      pts = {}
      for a in spec['alphas']:
        errors = [runs[name].summary['test_loss'] for name in
                  (run_name(activation, method, a, s) for s in spec['seeds']) if name in runs]
        if len(errors) == len(spec['seeds']):
          pts[a] = (float(np.mean(errors)), float(np.std(errors) / np.sqrt(len(errors))))
      if pts:
        curves[method] = {a: m for a, (m, _) in pts.items()}
        sems[method] = {a: e for a, (_, e) in pts.items()}
        xs = sorted(pts)
        ax.errorbar(xs, [pts[a][0] for a in xs], yerr=[pts[a][1] for a in xs], fmt='o-',
                    capsize=3, label=label, color=COLORS[method])
    ax.set_ylabel('test MSE')
    ax.set_yscale('log')
    ax.set_title(f'{activation} student')
    study.label_axes(ax, 'load alpha = P / N')
    keys = list(compared)
    bn, wn, sgd = keys[0], keys[1], keys[-1]
    alphas = [a for a in spec['alphas'] if all(a in curves.get(k, {}) for k in keys)]
    table = ['| alpha | ' + ' | '.join(label for label, _ in compared.values()) + ' |',
             '|---' * (len(keys) + 1) + '|']
    table += [f'| {a:g} | ' + ' | '.join(f'{curves[k][a]:.4f} +- {sems[k][a]:.4f}'
                                        for k in keys) + ' |' for a in alphas]
    text = '\n'.join(table)
    seeds = spec['seeds']
    err = lambda method, a, seed: runs[run_name(activation, method, a, seed)].summary[
        'test_loss']
    if alphas:
      # Per seed (BN, WN and SGD share each seed's teacher and data): the mean
      # |difference| from BN over alpha of WN + gamma decay minus that of SGD.
      per_seed = [float(np.mean([abs(err(wn, a, sd) - err(bn, a, sd)) for a in alphas])
                        - np.mean([abs(err(sgd, a, sd) - err(bn, a, sd)) for a in alphas]))
                  for sd in seeds]
      verdict = verdicts.paired(
          f'{activation}: WN + gamma decay with zeta from BN\'s batch size tracks BN '
          f'closer than plain SGD does', 'Luo et al. 2019, Figure 1',
          'mean over alpha of |WN - BN| minus |SGD - BN| (test MSE)', per_seed,
          numbers=f'mean |difference| from BN over alpha: WN + gamma decay '
                  f'{np.mean([abs(curves[wn][a] - curves[bn][a]) for a in alphas]):.4f}, '
                  f'plain SGD {np.mean([abs(curves[sgd][a] - curves[bn][a]) for a in alphas]):.4f}')
      found.append(verdict)
      text += '\n\n' + verdict.markdown()
      low = [a for a in alphas if a <= 2]
      if low:
        per_seed = [float(np.mean([err(bn, a, sd) - err(sgd, a, sd) for a in low]))
                    for sd in seeds]
        verdict = verdicts.paired(
            f'{activation}: BN generalizes better than plain SGD at small load (alpha <= 2)',
            'Luo et al. 2019, Figure 1', 'mean over alpha <= 2 of test MSE BN - SGD',
            per_seed, numbers=f'mean test MSE BN '
                              f'{np.mean([curves[bn][a] for a in low]):.4f}, plain SGD '
                              f'{np.mean([curves[sgd][a] for a in low]):.4f}')
        found.append(verdict)
        text += '\n\n' + verdict.markdown()
    sections.append((f'{activation.capitalize()} student', text))
  fig.tight_layout()
  png = study.savefig(fig, workdir, 'generalization')
  sections.insert(1, ('Generalization error against load', f'![generalization]({png})'))
  return study.write_report(workdir, 'Teacher-student generalization (Luo et al. 2019, '
                            'Figure 1)', sections, found)


if __name__ == '__main__':
  study.run_study(STUDY)
