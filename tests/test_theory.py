"""bnjax.theory: formulas, and equilibria reached by bnjax's optimizers.

The synthetic problem is the one of REFERENCES.md: each unit's gradient is
Gaussian noise projected orthogonal to w and divided by ||w|| (exactly the
gradient structure of a weight feeding a normalization), so the gradient at
unit norm has E||g~||^2 = C - 1.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import dynamics, theory, transforms

C, UNITS = 512, 16


@functools.partial(jax.jit, static_argnums=(0, 1))
def _trajectory(tx, steps, key):
  """Per step of the synthetic problem from unit norms: mean angle, mean norm
  before the step, RMS norm after it."""
  w = jax.random.normal(key, (C, UNITS))
  w = w / dynamics.unit_norms(w)

  def step(carry, k):
    w, state = carry
    norms = dynamics.unit_norms(w)
    w_hat = w / norms
    noise = jax.random.normal(k, w.shape)
    grad = (noise - w_hat * jnp.sum(noise * w_hat, 0)) / norms
    updates, state = tx.update(grad, state, w)
    new = w + updates
    cos = jnp.sum(w * new, 0) / (norms * dynamics.unit_norms(new))
    return (new, state), (jnp.mean(jnp.arccos(jnp.clip(cos, -1.0, 1.0))), jnp.mean(norms),
                          jnp.sqrt(jnp.mean(jnp.square(dynamics.unit_norms(new)))))

  _, series = jax.lax.scan(step, (w, tx.init(w)), jax.random.split(jax.random.key(1), steps))
  return series


def _simulate(tx, steps, key):
  angles, norms, _ = _trajectory(tx, steps, key)
  half = steps // 2
  return jnp.mean(angles[half:]), jnp.mean(norms[half:])


GRAD_NORM = math.sqrt(C - 1)

# Each setting's time constant (theory.equilibrium_time_constant) is about 500
# steps (AdamP's 2,000); 6,000 steps are 12 of them, the means over the last 6.
STEPS_TO_EQUILIBRIUM = 6000
CASES = {
    'sgd': (lambda: transforms.sgd(0.1, regularizer='l2', weight_decay=5e-3, track=False),
            dict(optimizer='sgd', learning_rate=0.1, weight_decay=5e-3)),
    'momentum': (lambda: transforms.sgd(0.1, 0.9, regularizer='l2', weight_decay=5e-4,
                                        track=False),
                 dict(optimizer='momentum', learning_rate=0.1, weight_decay=5e-4,
                      momentum=0.9)),
    'adamw': (lambda: transforms.adam(1e-3, regularizer='decoupled', weight_decay=1.0,
                                      track=False),
              dict(optimizer='adamw', learning_rate=1e-3, weight_decay=1.0)),
    'adam_l2': (lambda: transforms.adam(4e-3, regularizer='l2', weight_decay=0.1,
                                        track=False),
                dict(optimizer='adam_l2', learning_rate=4e-3, weight_decay=0.1)),
    # AdamP / SGDP (Heo et al. 2021) detect the units as scale-invariant (the
    # gradient is orthogonal to w) and decay them by lambda * wd_ratio (0.1).
    # AdamP's angle is sqrt(1 / tau): a small one needs a long time constant
    # (2,000 steps here), so it starts at its equilibrium norm (0.95).
    'adamp': (lambda: transforms.adamp(4e-3, weight_decay=0.6),
              dict(optimizer='adamp', learning_rate=4e-3, weight_decay=0.6)),
    'sgdp': (lambda: transforms.sgdp(0.1, 0.9, weight_decay=5e-3),
             dict(optimizer='sgdp', learning_rate=0.1, weight_decay=5e-3, momentum=0.9)),
}


@pytest.mark.parametrize('name', list(CASES))
def test_equilibrium_matches_theory(name):
  make, kw = CASES[name]
  angle, norm = _simulate(make(), STEPS_TO_EQUILIBRIUM, jax.random.key(0))
  extra = dict(fan_in=C, grad_norm=GRAD_NORM)
  kw_angle = {k: v for k, v in kw.items()}
  if name == 'adam_l2':
    kw_angle.update(extra)
  predicted_angle = theory.equilibrium_angular_update(**kw_angle)
  predicted_norm = theory.equilibrium_norm(**kw, **extra)
  assert abs(float(angle) / predicted_angle - 1) < 0.05, (float(angle), predicted_angle)
  assert abs(float(norm) / predicted_norm - 1) < 0.05, (float(norm), predicted_norm)


def test_formulas():
  assert theory.effective_learning_rate(0.1, 2.0, 'sgd') == pytest.approx(0.025)
  assert theory.effective_learning_rate(0.1, 2.0, 'adam') == pytest.approx(0.05)
  assert theory.equilibrium_angular_update('momentum', 0.1, 5e-4, momentum=0.9) == \
      pytest.approx(math.sqrt(2 * 0.1 * 5e-4 / 1.9))
  assert theory.equilibrium_angular_update('adamw', 1e-3, 0.1) == pytest.approx(
      math.sqrt(2 * 1e-3 * 0.1 * 0.1 / 1.9))
  assert theory.equilibrium_norm('adamw', 1e-3, 0.1, fan_in=512) == pytest.approx(1.6)
  assert theory.gamma_decay_strength(32, 'linear') == pytest.approx(1 / 64)
  assert theory.gamma_decay_strength(32, 'relu') == pytest.approx(1 / 128)


def test_adam_l2_angle_scales_as_cube_root_of_lr_squared_lambda():
  base = theory.equilibrium_angular_update('adam_l2', 1e-3, 0.1, fan_in=C,
                                           grad_norm=GRAD_NORM)
  scaled = theory.equilibrium_angular_update('adam_l2', 2e-3, 0.1 / 4, fan_in=C,
                                             grad_norm=GRAD_NORM)
  assert scaled == pytest.approx(base)  # lr^2 * lambda unchanged


@pytest.mark.parametrize('call,match', [
    (lambda: theory.effective_learning_rate(0.1, 1.0, 'rmsprop'), 'optimizer must be'),
    (lambda: theory.equilibrium_norm('sgd', 0.1, 1e-4, fan_in=10), 'needs grad_norm'),
    (lambda: theory.equilibrium_norm('lamb', 0.1, 1e-4, fan_in=10), 'optimizer must be'),
    (lambda: theory.equilibrium_angular_update('sgd', -0.1, 1e-4), 'learning_rate must be > 0'),
    (lambda: theory.equilibrium_angular_update('sgd', 0.1, 0.0), 'weight_decay must be > 0'),
    (lambda: theory.equilibrium_angular_update('momentum', 0.1, 1e-4, momentum=1.0),
     r'momentum must be in \[0, 1\)'),
    (lambda: theory.equilibrium_angular_update('adam_l2', 0.1, 1e-4), 'needs fan_in'),
    (lambda: theory.projected_angular_update('sgd', 0.1), 'needs grad_norm'),
    (lambda: theory.projected_angular_update('adam', 0.1), 'needs fan_in'),
    (lambda: theory.projected_angular_update('adam', 0.1, fan_in=8, radius=0.0),
     'radius must be > 0'),
    (lambda: theory.projected_angular_update('adam_l2', 0.1, fan_in=8), 'optimizer must be'),
    (lambda: theory.rotational_angular_update('adam_l2', 0.1, 1e-4), 'optimizer must be'),
    (lambda: theory.gamma_decay_strength(0, 'relu'), 'batch_size must be a positive int'),
    (lambda: theory.gamma_decay_strength(32, 'tanh'), "'linear' or 'relu'"),
])
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


PROJECTED = {
    'sgd': (lambda: transforms.sgd(1e-3, regularizer='projection', mask=True, track=False),
            dict(optimizer='sgd', learning_rate=1e-3, grad_norm=GRAD_NORM)),
    # Small steps: the momentum buffer's gradients stay orthogonal to w only while
    # the unit turns little over the buffer's 1 / (1 - a) steps.
    'momentum': (lambda: transforms.sgd(1e-4, 0.9, regularizer='projection', mask=True,
                                        track=False),
                 dict(optimizer='sgd', learning_rate=1e-4, momentum=0.9, grad_norm=GRAD_NORM)),
    'adam': (lambda: transforms.adam(1e-3, regularizer='projection', mask=True, track=False),
             dict(optimizer='adam', learning_rate=1e-3, fan_in=C)),
    'rotational_sgd': (lambda: transforms.rotational('sgd', 0.1, 5e-4, momentum=0.9,
                                                     mask=True, center=False),
                       dict(optimizer='sgd', learning_rate=0.1, weight_decay=5e-4,
                            momentum=0.9)),
    'rotational_adamw': (lambda: transforms.rotational('adamw', 1e-3, 0.1, mask=True,
                                                       center=False),
                         dict(optimizer='adamw', learning_rate=1e-3, weight_decay=0.1)),
}


@pytest.mark.parametrize('name', list(PROJECTED))
def test_projected_and_rotational_angles_match_theory(name):
  # No equilibrium to wait for: the angle is set from the start (Adam's second
  # moment and the rotational wrapper's average fill in ~1000 steps).
  make, kw = PROJECTED[name]
  angles, norms, _ = _trajectory(make(), 4000, jax.random.key(0))
  predict = (theory.rotational_angular_update if name.startswith('rotational')
             else theory.projected_angular_update)
  measured = float(jnp.sqrt(jnp.mean(jnp.square(angles[2000:]))))
  assert abs(measured / predict(**kw) - 1) < 0.05, (measured, predict(**kw))
  np.testing.assert_allclose(norms, 1.0, rtol=1e-4)  # the norm never moved


@pytest.mark.parametrize('optimizer,match', [
    ('projection', 'projected_angular_update'), ('rotational', 'rotational_angular_update'),
    ('adam', "name the decay: 'adamw' or 'adam_l2'")])
def test_no_equilibrium_names_what_to_use(optimizer, match):
  for fn in (theory.equilibrium_angular_update, theory.equilibrium_time_constant):
    with pytest.raises(ValueError, match=match):
      fn(optimizer, 0.1, 1e-4)


def test_adamp_and_sgdp_decay_lambda_times_wd_ratio():
  for name, kw in (('adamp', {}), ('sgdp', dict(momentum=0.9))):
    assert theory.equilibrium_angular_update(name, 1e-3, 0.5, wd_ratio=0.2, **kw) == \
        pytest.approx(theory.equilibrium_angular_update(name, 1e-3, 0.1, wd_ratio=1.0, **kw))
  # Without momentum SGDP is SGD + L2 at lambda * wd_ratio: no correlated steps.
  assert theory.equilibrium_angular_update('sgdp', 0.1, 5e-3) == pytest.approx(
      theory.equilibrium_angular_update('sgd', 0.1, 5e-4))
  with pytest.raises(ValueError, match='wd_ratio must be > 0'):
    theory.equilibrium_norm('adamp', 1e-3, 0.5, fan_in=8, wd_ratio=0.0)


def test_sgd_with_momentum_is_the_momentum_alias():
  # optax.sgd(lr, momentum=...) and DESIGN.md name SGD with momentum 'sgd'.
  for fn in (lambda o: theory.equilibrium_angular_update(o, 0.1, 5e-4, momentum=0.9),
             lambda o: theory.equilibrium_norm(o, 0.1, 5e-4, fan_in=64, grad_norm=2.0,
                                               momentum=0.9)):
    assert fn('sgd') == fn('momentum')
  assert theory.equilibrium_angular_update('sgd', 0.1, 5e-4, momentum=0.9) == \
      pytest.approx(np.sqrt(2 * 0.1 * 5e-4 / 1.9))


# ------------------------------------------- approach to equilibrium, schedules


def _norm_series(tx, steps):
  """RMS over units of the per-unit norm after each step of the synthetic problem."""
  return _trajectory(tx, steps, jax.random.key(0))[2]


STEPS = 4000
WARMUP_COSINE = optax.warmup_cosine_decay_schedule(0.0, 1.0, 400, STEPS, 0.0)
TRAJECTORIES = {  # name: (theory kwargs, transform of a learning rate, tolerance, from step)
    'sgd': (dict(optimizer='sgd', weight_decay=5e-3), 0.1,
            lambda lr: transforms.sgd(lr, regularizer='l2', weight_decay=5e-3, track=False),
            0.02, 0),
    'momentum': (dict(optimizer='sgd', weight_decay=5e-3, momentum=0.9), 0.02,
                 lambda lr: transforms.sgd(lr, 0.9, regularizer='l2', weight_decay=5e-3,
                                           track=False), 0.03, 500),
    'adamw': (dict(optimizer='adamw', weight_decay=0.5), 2e-3,
              lambda lr: transforms.adam(lr, regularizer='decoupled', weight_decay=0.5,
                                         track=False), 0.05, 0),
    'adam_l2': (dict(optimizer='adam_l2', weight_decay=0.1), 4e-3,
                lambda lr: transforms.adam(lr, regularizer='l2', weight_decay=0.1,
                                           track=False), 0.15, 0),
}


@pytest.mark.parametrize('schedule', ['constant', 'warmup_cosine'])
@pytest.mark.parametrize('name', list(TRAJECTORIES))
def test_norm_trajectory_follows_the_optimizers_through_a_schedule(name, schedule):
  # The real optimizer on the synthetic problem, from unit norm, against the
  # expected-norm recursion: the transient, the equilibrium and a warmup +
  # cosine schedule (momentum's recursion holds once its buffer has filled).
  kw, peak, make, tol, start = TRAJECTORIES[name]
  if schedule == 'constant':
    lrs, lr = np.full(STEPS, peak), peak
  else:
    lrs = peak * np.asarray(WARMUP_COSINE(jnp.arange(STEPS)), float)
    lr = lambda count: peak * WARMUP_COSINE(count)
  measured = np.asarray(_norm_series(make(lr), STEPS))
  predicted = theory.norm_trajectory(kw['optimizer'], lrs, kw['weight_decay'], 1.0,
                                     fan_in=C, grad_norm=GRAD_NORM,
                                     momentum=kw.get('momentum', 0.0))
  error = np.abs(measured[start:] / predicted[start:] - 1)
  assert error.max() < tol, (error.max(), int(error.argmax()) + start)
  if schedule == 'constant':  # and it ends at the closed-form equilibrium
    extra = dict(grad_norm=GRAD_NORM, momentum=kw.get('momentum', 0.0))
    assert predicted[-1] == pytest.approx(theory.equilibrium_norm(
        kw['optimizer'], peak, kw['weight_decay'], fan_in=C, **extra), rel=0.01)


@pytest.mark.parametrize('name', ['sgd', 'momentum', 'adamw', 'adam_l2'])
def test_time_constant_is_the_recursions_linear_rate(name):
  # A small displacement from equilibrium decays by 1/e in tau steps.
  kw = dict(sgd=dict(optimizer='sgd'), momentum=dict(optimizer='sgd', momentum=0.9),
            adamw=dict(optimizer='adamw'), adam_l2=dict(optimizer='adam_l2'))[name]
  lr, lam = 1e-3, 0.05
  extra = dict(fan_in=C, grad_norm=GRAD_NORM, momentum=kw.get('momentum', 0.0))
  tau = theory.equilibrium_time_constant(kw['optimizer'], lr, lam, **extra)
  star = theory.equilibrium_norm(kw['optimizer'], lr, lam, **extra)
  norms = theory.norm_trajectory(kw['optimizer'], np.full(int(round(tau)), lr), lam,
                                 star * 1.001, **extra)
  assert (norms[-1] - star) / (0.001 * star) == pytest.approx(math.exp(-1), rel=0.02)


def test_time_constants():
  assert theory.equilibrium_time_constant('sgd', 0.1, 5e-4, momentum=0.9) == \
      pytest.approx(0.1 / (4 * 0.1 * 5e-4))
  assert theory.equilibrium_time_constant('adamw', 1e-3, 0.1) == pytest.approx(5000)
  # Adam + L2: (lr^2 lambda)^(-2/3), so lr x2 and lambda /4 keep it.
  kw = dict(fan_in=C, grad_norm=GRAD_NORM)
  assert theory.equilibrium_time_constant('adam_l2', 2e-3, 0.1 / 4, **kw) == \
      pytest.approx(theory.equilibrium_time_constant('adam_l2', 1e-3, 0.1, **kw))
  lrs = np.array([1e-3, 2e-3, 4e-3])
  np.testing.assert_allclose(theory.time_constants_elapsed('adamw', lrs, 0.1),
                             np.cumsum(2 * lrs * 0.1))
  # A warmup's first step at rate 0 moves nothing (AdamW: 1/tau = 2 lr lambda).
  warm = np.array([0.0, 1e-3, 2e-3])
  np.testing.assert_allclose(theory.time_constants_elapsed('adamw', warm, 0.1),
                             np.cumsum(2 * warm * 0.1))
  np.testing.assert_allclose(theory.equilibrium_time_constant('adamw', lrs, 0.1),
                             1 / (2 * lrs * 0.1))


@pytest.mark.parametrize('call,match', [
    (lambda: theory.equilibrium_time_constant('adam_l2', 1e-3, 0.1), 'needs fan_in'),
    (lambda: theory.equilibrium_time_constant('sgd', 0.0, 0.1), 'learning_rate must be > 0'),
    (lambda: theory.time_constants_elapsed('sgd', [], 0.1), 'non-empty 1-D'),
    (lambda: theory.time_constants_elapsed('sgd', [0.1, -0.1], 0.1), 'finite and >= 0'),
    (lambda: theory.norm_trajectory('sgd', [0.1], 0.1, 1.0, fan_in=4), 'needs grad_norm'),
    (lambda: theory.norm_trajectory('adamw', [0.1, -1.0], 0.1, 1.0, fan_in=4),
     'finite and >= 0'),
    (lambda: theory.norm_trajectory('adamw', [np.nan], 0.1, 1.0, fan_in=4),
     'finite and >= 0'),
    (lambda: theory.norm_trajectory('adamw', [0.1], 0.1, 0.0, fan_in=4),
     'initial_norm must be > 0'),
])
def test_bad_trajectory_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_effective_batch_against_sampling_without_replacement():
  rng = np.random.default_rng(3)
  p, m = 40, 12
  points = rng.standard_normal(p)
  means = [points[rng.permutation(p)[:m]].mean() for _ in range(100_000)]
  expected = points.var() / theory.effective_batch(m, p)
  assert np.var(means) == pytest.approx(expected, rel=0.02)
  assert theory.effective_batch(m, m) == math.inf


def test_effective_batch_refuses_a_batch_larger_than_the_set():
  with pytest.raises(ValueError, match='population must be >= batch_size'):
    theory.effective_batch(64, 32)
  with pytest.raises(TypeError, match='batch_size'):
    theory.effective_batch(8.5, 32)


@pytest.mark.parametrize('activation', ['linear', 'relu'])
def test_second_order_gamma_decay_by_monte_carlo_over_gaussian_batches(activation):
  """BN's extra gamma gradient at the population optimum, E[g(a_hat)] / gamma with
  g = (f(a_hat) - f(a)) f'(a_hat) a_hat over Gaussian batches of M = 16, is
  theory.gamma_decay_second_order (3/4, 3/8 per M), not Luo et al.'s batch-mean
  term alone (1/2, 1/4); the linear unit's is the exact 1 - E[s_B] too."""
  m, batches = 16, 60000
  a = np.random.default_rng(0).standard_normal((batches, m))
  a_hat = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
  if activation == 'linear':
    g = (a_hat - a) * a_hat
  else:
    g = (np.maximum(a_hat, 0) - np.maximum(a, 0)) * (a_hat > 0) * a_hat
  per_batch = g.mean(1)
  zeta = per_batch.mean()
  stderr = per_batch.std() / math.sqrt(batches)
  second = theory.gamma_decay_second_order(m, activation)
  assert abs(zeta - second) < max(4 * stderr, 0.05 * second), (zeta * m, stderr * m)
  assert zeta > 1.4 * theory.gamma_decay_strength(m, activation)
  if activation == 'linear':  # M s^2 ~ chi^2_(M-1): E[s] from the Gamma function
    mean_s = math.sqrt(2 / m) * math.exp(math.lgamma(m / 2) - math.lgamma((m - 1) / 2))
    assert abs(zeta - (1 - mean_s)) < 4 * stderr


def test_second_order_gamma_decay_refuses_bad_arguments():
  with pytest.raises(ValueError, match='batch_size must be > 0'):
    theory.gamma_decay_second_order(0, 'linear')
  with pytest.raises(ValueError, match="activation must be 'linear' or 'relu'"):
    theory.gamma_decay_second_order(8, 'tanh')
