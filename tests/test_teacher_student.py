"""The teacher-student study's closed forms against independent references, its
presets, and its report on planted final parameters."""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from bnjax import models, theory
from bnjax.train import data
from bnjax.train.workdir import Checkpoints, write_json_atomic
from bnjax.train.studies import study, verdicts
from bnjax.train.studies import teacher_student as ts
from _helpers import ROOT

# Relative tolerance of a smoke rerun against its committed numbers (as in
# test_studies.py: float32 reduction order may differ between CPUs).
SMOKE_RTOL = 1e-3


def _perceptron(norm, n=6, seed=0):
  """A flax perceptron with random (not initial) parameters, and inputs."""
  net = models.Perceptron(norm=norm, activation='linear')
  x = jax.random.normal(jax.random.key(seed), (40, n)) / math.sqrt(n) + 0.1
  variables = net.init(jax.random.key(1), x, train=False)
  keys = iter(jax.random.split(jax.random.key(2), 16))
  variables = jax.tree_util.tree_map(
      lambda a: a + 0.5 * jax.random.normal(next(keys), a.shape), variables)
  if 'batch_stats' in variables:
    variables['batch_stats']['dense_norm']['var'] = jnp.abs(
        variables['batch_stats']['dense_norm']['var']) + 0.1
  return net, variables, x


@pytest.mark.parametrize('norm', ['batch', 'weight', 'none'])
def test_affine_map_is_the_flax_perceptron(norm):
  net, variables, x = _perceptron(norm)
  params, stats = variables['params'], variables.get('batch_stats', {})
  affine = lambda *a: np.asarray(x, np.float64) @ a[0] + a[1]
  if norm != 'batch':
    out = net.apply(variables, x, train=False)
    np.testing.assert_allclose(affine(*ts.affine_map(params, stats, norm)), out, rtol=1e-4,
                               atol=1e-5)
    return
  # Running statistics: flax's eval mode as the checkpoint holds them.
  np.testing.assert_allclose(affine(*ts.affine_map(params, stats, 'batch', 'running')),
                             net.apply(variables, x, train=False), rtol=1e-4, atol=1e-5)
  # Training statistics: flax's train mode over the whole training set.
  out, _ = net.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(affine(*ts.affine_map(params, stats, 'batch', 'training', x)),
                             out, rtol=1e-4, atol=1e-4)
  # Population statistics of k.x for x ~ N(0, I/N): eval mode with (0, ||k||^2 / N).
  k = np.asarray(params['dense']['kernel'])[:, 0]
  population = {'dense_norm': {'mean': jnp.zeros(1), 'var': jnp.full(1, k @ k / k.size)}}
  out = net.apply({'params': params, 'batch_stats': population}, x, train=False)
  np.testing.assert_allclose(affine(*ts.affine_map(params, stats, 'batch')), out, rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(ValueError, match='stats must be one of'):
    ts.affine_map(params, stats, 'batch', 'moving')
  with pytest.raises(ValueError, match="norm must be 'batch', 'weight' or 'none'"):
    ts.affine_map(params, stats, 'layer')


@pytest.mark.parametrize('activation', ['linear', 'relu'])
@pytest.mark.parametrize('bias', [0.0, -0.4, 0.7])
def test_teacher_error_against_monte_carlo(activation, bias):
  rng = np.random.default_rng(0)
  n = 8
  teacher, w = rng.standard_normal(n), rng.standard_normal(n)
  x = rng.standard_normal((1_000_000, n)) / math.sqrt(n)
  g = (lambda h: np.maximum(h, 0)) if activation == 'relu' else (lambda h: h)
  sq = (g(x @ w + bias) - g(x @ teacher)) ** 2
  expected, stderr = sq.mean(), sq.std() / math.sqrt(sq.size)
  assert ts.teacher_error(w, bias, teacher, activation) == pytest.approx(
      expected, abs=4 * stderr)
  # A perfect student has no error; the sign of an aligned ReLU student matters.
  assert ts.teacher_error(teacher, 0.0, teacher, activation) == pytest.approx(0, abs=1e-9)
  with pytest.raises(ValueError, match="activation must be 'linear' or 'relu'"):
    ts.teacher_error(w, bias, teacher, 'tanh')


def test_ridge_against_an_augmented_least_squares():
  rng = np.random.default_rng(1)
  p, n, c = 15, 6, 0.3
  x, y = rng.standard_normal((p, n)) + 0.5, rng.standard_normal(p) + 2.0
  # min (1/P)||Xw + b - y||^2 + c||w||^2 = min ||[X 1; sqrt(Pc) I 0][w; b] - [y; 0]||^2.
  a = np.block([[x, np.ones((p, 1))], [math.sqrt(p * c) * np.eye(n), np.zeros((n, 1))]])
  theta = np.linalg.lstsq(a, np.r_[y, np.zeros(n)], rcond=None)[0]
  w, b = ts.ridge(x, y, c)
  np.testing.assert_allclose(w, theta[:-1], rtol=1e-10)
  assert b == pytest.approx(theta[-1], rel=1e-10)
  # No penalty, P > N + 1: ordinary least squares with a bias.
  theta = np.linalg.lstsq(np.c_[x, np.ones(p)], y, rcond=None)[0]
  np.testing.assert_allclose(np.r_[ts.ridge(x, y, 0.0)], theta, rtol=1e-8)


@pytest.mark.parametrize('scale', [0.0, 1.0, 3.0])
def test_sgd_limit_is_where_gradient_descent_goes(scale):
  rng = np.random.default_rng(2)
  p, n = 6, 10  # fewer examples than weights: the limit keeps the init's null part
  x, y = rng.standard_normal((p, n)) / math.sqrt(n), rng.standard_normal(p)
  a = np.c_[x, np.ones(p)]
  init = rng.standard_normal(n + 1)

  def descend(theta, steps):
    for _ in range(steps):
      theta = theta - 0.3 * 2 * a.T @ (a @ theta - y) / p
    return theta

  early = descend(init, 5)  # a run's final iterate, far from converged
  limit = descend(scale * init, 200_000)
  w, b = ts.sgd_limit(early[:-1], early[-1], x, y, init_scale=scale)
  np.testing.assert_allclose(np.r_[w, b], limit, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(a @ np.r_[w, b], y, atol=1e-8)  # it interpolates


@pytest.mark.parametrize('activation', ['linear', 'relu'])
def test_fitted_zeta_recovers_a_planted_gamma_decay(activation):
  """Plant BN's gamma and beta at the minimum of PN + zeta gamma^2 (found by a
  general optimizer); fitted_zeta reads zeta back."""
  rng = np.random.default_rng(4)
  p, n, zeta = 64, 10, 0.07
  splits = data.teacher_student(p, 1, n, activation=activation, noise_std=0.3, seed=5)
  x, y = splits['train'].x.astype(np.float64), splits['train'].y.astype(np.float64)
  k = splits['teacher'] + 0.5 * rng.standard_normal(n)
  h = x @ k
  a = (h - h.mean()) / math.sqrt(h.var() + ts.EPSILON)
  g = (lambda u: np.maximum(u, 0)) if activation == 'relu' else (lambda u: u)
  objective = lambda v: np.mean((g(v[0] * a + v[1]) - y) ** 2) + zeta * v[0] ** 2
  best = optimize.minimize(objective, [1.0, 0.1], method='Nelder-Mead',
                           options=dict(xatol=1e-10, fatol=1e-14, maxiter=20000)).x
  params = {'dense': {'kernel': k[:, None]},
            'dense_norm': {'scale': np.array([best[0]]), 'bias': np.array([best[1]])}}
  assert ts.fitted_zeta(params, x, y, activation) == pytest.approx(zeta, rel=1e-4)


def test_presets_use_every_example_and_decay_the_learning_rate():
  for preset in ts.PRESETS:
    for name, c in ts.configs(preset).items():
      assert c.num_train % c.batch_size == 0, name  # no partial batch dropped
      assert c.schedule == 'cosine', name  # ends at a minimizer, not at SGD's noise
      assert c.total_steps() >= ts.PRESETS[preset]['steps'], name
  spec, cfgs = ts.PRESETS['standard'], ts.configs('standard')
  assert len(spec['seeds']) >= 10 and min(spec['loads']) < 1 < max(spec['loads'])
  # BN's batch sweep shares one training set: M is the only change.
  sweep = [c for n, c in cfgs.items() if n.startswith('linear_bn_P256') and
           'seed' not in n]
  assert sorted(c.batch_size for c in sweep) == list(spec['sweep'])
  assert {c.num_train for c in sweep} == {spec['sweep_p']}


def test_wn_gamma_decay_is_bn_gamma_decay_in_wn_units():
  # BN's gamma is WN's gain / sqrt(N), so zeta * gamma^2 = (zeta / N) * g^2.
  cfgs = ts.configs('smoke')  # N = 20, M = 32
  assert cfgs['linear_wn_gamma_decay_P32'].gamma_decay == pytest.approx(1 / (2 * 32 * 20))
  assert cfgs['relu_wn_gamma_decay_P32'].gamma_decay == pytest.approx(1 / (4 * 32 * 20))
  assert cfgs['linear_bn_P32'].gamma_decay == 0.0


# ------------------------------------------------------- the report, planted


def _bn_params(k, gamma, beta, var):
  return {'params': {'dense': {'kernel': k[:, None].astype(np.float32)},
                     'dense_norm': {'scale': np.float32([gamma]),
                                    'bias': np.float32([beta])}},
          'batch_stats': {'dense_norm': {'mean': np.float32([0.0]),
                                         'var': np.float32([var])}}}


def _planted_state(cfg, claims_hold):
  """Final parameters for which the report's verdicts come out as planted.

  BN: the teacher's direction and the gamma at which fitted_zeta is the
  second-order c / M_eff (hold; then Luo et al.'s Figure-1 constant, 2/3 of it,
  does not hold) or a constant 0.05; the linear student's bias 0.3 (hold) or
  2 (fail): its SGD verdicts use the data's own limit, which is fixed. WN:
  BN's affine map (hold) or 20 x it. ReLU's plain SGD: the teacher plus an
  error 3 x (hold) or 0.3 x (fail) BN's.
  """
  act, n, p, m = cfg.activation, cfg.input_dim, cfg.num_train, cfg.batch_size
  splits = data.teacher_student(p, 1, n, activation=act, noise_std=cfg.noise_std,
                                seed=cfg.seed)
  x, y, t = (splits['train'].x.astype(np.float64), splits['train'].y.astype(np.float64),
             splits['teacher'].astype(np.float64))
  k = 2.0 * t / np.linalg.norm(t)
  target = (theory.gamma_decay_second_order(1, act) / theory.effective_batch(m, p)
            if claims_hold else 0.05)
  if theory.effective_batch(m, p) == math.inf:
    target = 0.0
  beta = 0.0 if act == 'relu' else (0.3 if claims_hold else 2.0)
  zeta_of = lambda gamma: ts.fitted_zeta(_bn_params(k, gamma, beta, 1.0)['params'], x, y,
                                         act) - target
  gamma = optimize.brentq(zeta_of, 1e-3, 50.0)
  bn = _bn_params(k, gamma, beta, k @ k / n)
  if cfg.norm == 'batch':
    return bn
  w, b = ts.affine_map(bn['params'], bn['batch_stats'], 'batch')
  if cfg.norm == 'weight':
    s = 1.0 if claims_hold else 20.0
    return {'params': {'dense': {'layer_instance': {'kernel': w[:, None].astype(np.float32),
                                                    'bias': np.float32([s * b])},
                                 'scale': np.float32([s * np.linalg.norm(w)])}}}
  sgd = t + (3.0 if claims_hold else 0.3) * np.abs(w - t).mean() * np.sign(w - t + 1e-12)
  return {'params': {'dense': {'kernel': sgd[:, None].astype(np.float32),
                               'bias': np.float32([0.0])}}}


def _teacher_student_study(tmp_path, monkeypatch, claims_hold, seeds=(0, 1, 2)):
  monkeypatch.setitem(ts.PRESETS, 'smoke', dict(ts.PRESETS['smoke'], seeds=seeds))
  runs = {}
  write_json_atomic(tmp_path / 'study.json', {'study': 'teacher_student', 'preset': 'smoke',
                                              'runs': sorted(ts.configs('smoke'))})
  for name, cfg in ts.configs('smoke').items():
    folder = tmp_path / name
    folder.mkdir()
    Checkpoints(folder).save(cfg.total_steps(), _planted_state(cfg, claims_hold))
    write_json_atomic(folder / 'summary.json', {'steps': cfg.total_steps(), 'test_loss': 1.0,
                                                'config': dataclasses.asdict(cfg)})
    lines = [{'step': s, 'loss': 1.0 - 0.001 * s / cfg.total_steps()}
             for s in range(cfg.log_every, cfg.total_steps() + 1, cfg.log_every)]
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
    runs[name] = cfg
  return ts.report(tmp_path)


def _outcomes(folder):
  return [v.outcome for v in verdicts.read(folder)]


def test_report_decides_planted_claims_that_hold(tmp_path, monkeypatch):
  path = _teacher_student_study(tmp_path, monkeypatch, True)
  found = verdicts.read(tmp_path)
  assert len(found) == 14, [v.claim for v in found]
  # zeta planted at the second-order constant: Luo et al.'s Figure-1 constant, the
  # batch-mean term alone (2/3 of it), is outside its 25% margin.
  expected = ['does not hold' if v.id.endswith('zeta-is-luo-figure-1') else 'holds'
              for v in found]
  assert _outcomes(tmp_path) == expected, [(v.id, v.value) for v in found]
  assert expected.count('does not hold') == 2
  assert all(v.seeds == 3 and v.reference for v in found)
  assert len({v.id for v in found}) == 14
  text = path.read_text()
  assert 'BN, running statistics' in text and 'SGD limit, init x 3' in text
  assert (tmp_path / 'generalization.png').stat().st_size > 1000


def test_report_decides_planted_claims_that_fail(tmp_path, monkeypatch):
  _teacher_student_study(tmp_path, monkeypatch, False)
  found = verdicts.read(tmp_path)
  assert _outcomes(tmp_path) == ['does not hold'] * 14, [(v.claim, v.value) for v in found]


def test_report_with_one_seed_is_inconclusive(tmp_path, monkeypatch):
  _teacher_student_study(tmp_path, monkeypatch, True, seeds=(0,))
  assert set(_outcomes(tmp_path)) == {'inconclusive'}


def test_smoke_preset_end_to_end(tmp_path):
  runs = study.run_sweep('teacher_student', 'smoke', ts.configs('smoke'), tmp_path,
                         vectorize=True)
  assert len(runs) == len(ts.configs('smoke'))
  wn = runs['linear_wn_gamma_decay_P64'].metrics[-1]
  assert 'gamma_sq/dense' in wn  # WN's gain, which gamma decay acts on
  ts.report(tmp_path)
  measured = ts.measure_all(tmp_path, runs)
  for name, m in measured.items():
    assert np.isfinite(m['error']) and m['error'] >= 0, name
  # The committed smoke numbers: code and reports cannot drift apart silently.
  # BNJAX_UPDATE_SMOKE=1 rewrites them (after a change meant to move results).
  golden_path = ROOT / 'docs' / 'reports' / 'teacher_student' / 'smoke.json'
  now = {'runs': {name: m['error'] for name, m in sorted(measured.items())},
         'verdicts': [v.value for v in verdicts.read(tmp_path)]}
  if os.environ.get('BNJAX_UPDATE_SMOKE') == '1':
    golden_path.write_text(json.dumps(dict(now, tolerance=SMOKE_RTOL, provenance=(
        study.provenance())), indent=1) + '\n')
  golden = json.loads(golden_path.read_text())
  assert golden['tolerance'] == SMOKE_RTOL
  assert sorted(golden['runs']) == sorted(now['runs'])
  for name, error in now['runs'].items():
    assert error == pytest.approx(golden['runs'][name], rel=SMOKE_RTOL), name
  assert now['verdicts'] == pytest.approx(golden['verdicts'], rel=SMOKE_RTOL, abs=1e-6)
