"""transforms.rotational (Kosson et al. 2024) on the synthetic scale-invariant problem.

Each unit's gradient is Gaussian noise projected orthogonal to w and divided
by ||w|| (tests/test_theory.py), the gradient structure of a weight feeding a
normalization.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import dynamics, theory, transforms

C, UNITS = 512, 16
ALL = {'w': True}


def _gradient(w, key):
  norms = dynamics.unit_norms(w)
  w_hat = w / norms
  noise = jax.random.normal(key, w.shape)
  return (noise - w_hat * jnp.sum(noise * w_hat, 0)) / norms


@functools.partial(jax.jit, static_argnums=(0, 1))
def _simulate(tx, steps, w):
  """Per-step per-unit angles and norms, and the tracked mean angle."""

  def step(carry, k):
    params, state = carry
    updates, state = tx.update({'w': _gradient(params['w'], k)}, state, params)
    new = optax.apply_updates(params, updates)
    tracked = [s for s in jax.tree_util.tree_leaves(
        state, is_leaf=lambda s: isinstance(s, transforms.TrackDynamicsState))
               if isinstance(s, transforms.TrackDynamicsState)]
    read = tracked[0].metrics['w'].angular_update if tracked else jnp.zeros([])
    return (new, state), (dynamics.angular_update(params['w'], new['w']),
                          dynamics.unit_norms(new['w']), read)

  params = {'w': w}
  _, out = jax.lax.scan(step, (params, tx.init(params)),
                        jax.random.split(jax.random.key(1), steps))
  return out


def _start(center_offset=0.0):
  w = jax.random.normal(jax.random.key(0), (C, UNITS)) + center_offset
  return w / dynamics.unit_norms(w) * jnp.linspace(0.5, 3.0, UNITS)


@pytest.mark.parametrize('inner, lr, wd, kw', [
    ('sgd', 0.1, 5e-4, dict(momentum=0.9)),
    ('adamw', 1e-3, 0.1, dict(b1=0.9)),
])
def test_angle_is_the_equilibrium_one_from_the_first_step(inner, lr, wd, kw):
  target = theory.equilibrium_angular_update(inner, lr, wd, **kw)
  tx = optax.chain(transforms.rotational(inner, lr, wd, mask=ALL, center=False, **kw),
                   transforms.track_dynamics(lr, 'sgd' if inner == 'sgd' else 'adam'))
  angles, _, tracked = _simulate(tx, 100, _start())
  # Step 1: exactly atan(eta_r) per unit (the update-norm average is debiased).
  chex.assert_trees_all_close(angles[0], jnp.full(UNITS, np.arctan(target)), rtol=1e-4)
  # Once the inner update's own norm has settled (its momentum and the
  # wrapper's average, tens of steps), every unit within 2% of the target as
  # a root mean square over steps 50-100, and track_dynamics reads the same.
  rms = jnp.sqrt(jnp.mean(jnp.square(angles[50:]), axis=0))
  assert float(jnp.max(jnp.abs(rms / target - 1))) < 0.02, rms / target
  assert abs(float(jnp.mean(tracked[50:])) / target - 1) < 0.02
  chex.assert_trees_all_close(tracked, jnp.mean(angles, axis=1), rtol=1e-4)
  # The inner optimizer alone, from the same start, is far from it then.
  plain = (transforms.sgd(lr, kw['momentum'], regularizer='l2', weight_decay=wd, track=False)
           if inner == 'sgd' else
           transforms.adam(lr, regularizer='decoupled', weight_decay=wd, track=False))
  plain_angles, _, _ = _simulate(plain, 100, _start())
  plain_rms = jnp.sqrt(jnp.mean(jnp.square(plain_angles[50:]), axis=0))
  assert float(jnp.max(jnp.abs(plain_rms / target - 1))) > 0.2, plain_rms / target


def test_norms_stay_fixed():
  w = _start()
  tx = transforms.rotational('sgd', 0.1, 5e-4, momentum=0.9, mask=ALL, center=False)
  _, norms, _ = _simulate(tx, 500, w)
  chex.assert_trees_all_close(norms, jnp.broadcast_to(dynamics.unit_norms(w), norms.shape),
                              rtol=1e-6)


def test_center_moves_units_to_zero_mean_at_their_centred_norm():
  w = _start(center_offset=0.5)
  tx = transforms.rotational('adamw', 1e-3, 0.1, mask=ALL)
  params = {'w': w}
  updates, state = tx.update({'w': _gradient(w, jax.random.key(2))}, tx.init(params), params)
  new = optax.apply_updates(params, updates)['w']
  centred = w - w.mean(0)
  chex.assert_trees_all_close(new.mean(0), jnp.zeros(UNITS), atol=1e-6)
  chex.assert_trees_all_close(dynamics.unit_norms(new), dynamics.unit_norms(centred),
                              rtol=1e-5)


@pytest.mark.parametrize('inner, lr, wd, kw, steps', [
    # about 12 and 10 time constants of the inner optimizer's approach
    ('sgd', 0.1, 5e-3, dict(momentum=0.9), 1_200),
    ('adamw', 1e-2, 0.1, dict(b1=0.9), 10_000),
])
def test_the_inner_optimizer_alone_reaches_the_same_angle(inner, lr, wd, kw, steps):
  target = theory.equilibrium_angular_update(inner, lr, wd, **kw)
  plain = (transforms.sgd(lr, kw['momentum'], regularizer='l2', weight_decay=wd, track=False)
           if inner == 'sgd' else
           transforms.adam(lr, regularizer='decoupled', weight_decay=wd, track=False))
  wrapped = transforms.rotational(inner, lr, wd, mask=ALL, center=False, **kw)
  late = {}
  for name, tx in (('plain', plain), ('rotational', wrapped)):
    angles, _, _ = _simulate(tx, steps, _start())
    late[name] = float(jnp.sqrt(jnp.mean(jnp.square(angles[steps // 2:]))))
  assert abs(late['rotational'] / target - 1) < 0.02, late
  assert abs(late['plain'] / late['rotational'] - 1) < 0.05, (late, target)


@pytest.mark.parametrize('decay', [None, {'w': True, 'head': True, 'b': False}],
                         ids=['every-leaf-decayed', 'decay-mask'])
def test_leaves_outside_the_mask_take_the_inner_update(decay):
  # Against optax's AdamW and SGD with decayed weights, masked as optax masks.
  params = {'w': _start(), 'head': jnp.ones((UNITS, 3)), 'b': jnp.ones(3)}
  grads = jax.tree_util.tree_map(lambda a: 0.1 * jnp.cos(a), params)
  mask = {'w': True, 'head': False, 'b': False}
  for name, ref in (('adamw', optax.adamw(1e-3, weight_decay=0.1, mask=decay)),
                    ('sgd', optax.chain(optax.masked(optax.add_decayed_weights(0.1),
                                                     decay or (lambda p: True)),
                                        optax.sgd(1e-3, momentum=0.9)))):
    tx = transforms.rotational(name, 1e-3, 0.1, momentum=0.9, mask=mask, decay_mask=decay)
    state, ref_state = tx.init(params), ref.init(params)
    for _ in range(3):
      ours, state = tx.update(grads, state, params)
      theirs, ref_state = ref.update(grads, ref_state, params)
    chex.assert_trees_all_close({k: ours[k] for k in ('head', 'b')},
                                {k: theirs[k] for k in ('head', 'b')}, rtol=1e-5)


def test_follows_a_learning_rate_schedule():
  # SGD's inner update does not depend on lr, so against a constant-lr run the
  # angle scales as eta_r(lr_t) / eta_r(lr_0) = sqrt(lr_t / lr_0) at each step.
  schedule = optax.linear_schedule(0.1, 0.025, 40)
  kw = dict(momentum=0.9, mask=ALL, center=False)
  scheduled, _, _ = _simulate(transforms.rotational('sgd', schedule, 5e-4, **kw), 60,
                              _start())
  constant, _, _ = _simulate(transforms.rotational('sgd', 0.1, 5e-4, **kw), 60, _start())
  ratio = jnp.mean(scheduled, axis=1) / jnp.mean(constant, axis=1)
  expected = jnp.sqrt(jnp.array([schedule(t) for t in range(60)]) / 0.1)
  chex.assert_trees_all_close(ratio, expected, rtol=0.02)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(optimizer='adam'), ValueError, "optimizer must be one of"),
    (dict(weight_decay=0.0), ValueError, 'weight_decay must be > 0'),
    (dict(mask=None), ValueError, 'rotational needs an explicit mask'),
    (dict(update_norm_decay=1.0), ValueError, r'update_norm_decay must be in \[0, 1\)'),
    (dict(center=1), TypeError, 'center must be a bool'),
    (dict(momentum=-0.5), ValueError, r'momentum must be in \[0, 1\)'),
])
def test_bad_arguments_are_refused_at_construction(kwargs, error, match):
  args = {**dict(optimizer='sgd', learning_rate=0.1, weight_decay=5e-4, mask=ALL), **kwargs}
  with pytest.raises(error, match=match):
    transforms.rotational(**args)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('jit', [False, True])
def test_dtypes_and_jit(dtype, jit):
  params = {'w': _start().astype(dtype)}
  grads = {'w': _gradient(params['w'].astype(jnp.float32), jax.random.key(3)).astype(dtype)}
  tx = transforms.rotational('adamw', 1e-3, 0.1, mask=ALL)
  update = jax.jit(tx.update) if jit else tx.update
  u, _ = update(grads, tx.init(params), params)
  assert u['w'].dtype == dtype
  ref, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_close(optax.apply_updates(params, u), optax.apply_updates(params, ref),
                              **(dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16
                                 else dict(rtol=1e-6)))


@pytest.mark.parametrize('leaf, center, match', [
    (jnp.ones(4), True, r"'w' has shape \(4,\)"),                   # a bias or gain
    (jnp.ones((1, 4)), True, r"'w' has shape \(1, 4\)"),             # fan-in 1
    (jnp.ones((8, 4)), True, "4 unit\\(s\\) of 'w' have zero norm"),  # constant, centred
    (jnp.zeros((8, 4)).at[:, 1].set(1.0), False, "3 unit\\(s\\) of 'w' have zero norm"),
])
def test_units_without_a_direction_are_refused_at_init(leaf, center, match):
  # Without the check each of these returns NaN parameters after one update.
  tx = transforms.rotational('sgd', 0.1, 5e-4, mask=ALL, center=center)
  with pytest.raises(ValueError, match=match):
    tx.init({'w': leaf})


def test_a_zero_unit_init_cannot_see_keeps_its_value():
  # init under jit cannot read values: the zero unit takes no step, the others rotate.
  w = jnp.zeros((8, 4)).at[:, 1:].set(jax.random.normal(jax.random.key(0), (8, 3)))
  tx = transforms.rotational('sgd', 0.1, 5e-4, mask=ALL, center=False)
  state = jax.jit(tx.init)({'w': w})
  u, _ = tx.update({'w': jax.random.normal(jax.random.key(1), (8, 4))}, state, {'w': w})
  assert bool(jnp.all(jnp.isfinite(u['w'])))
  np.testing.assert_array_equal(np.asarray(u['w'][:, 0]), 0.0)
  assert float(jnp.min(jnp.abs(u['w'][:, 1:]).sum(0))) > 0.0


def test_integer_params_are_refused_at_init():
  tx = transforms.rotational('adamw', 1e-3, 0.1, mask=ALL)
  with pytest.raises(TypeError, match="'w' has dtype int32"):
    tx.init({'w': jnp.ones((8, 4), jnp.int32)})


def test_a_schedule_that_reaches_zero_stops_the_rotation():
  # Eagerly (no jit) the scheduled lr of 0 is a concrete number: the angle is 0
  # from then on, and before it the ratio to a constant-lr run is sqrt(lr_t / lr_0).
  schedule = optax.linear_schedule(0.1, 0.0, 3)

  def angles(learning_rate):
    tx = transforms.rotational('sgd', learning_rate, 5e-4, momentum=0.9, mask=ALL)
    params = {'w': _start()}
    state, out = tx.init(params), []
    for t in range(5):
      grads = {'w': _gradient(params['w'], jax.random.key(t))}
      updates, state = tx.update(grads, state, params)
      new = optax.apply_updates(params, updates)
      out.append(float(jnp.mean(dynamics.angular_update(params['w'], new['w']))))
      params = new
    return np.array(out)

  scheduled, constant = angles(schedule), angles(0.1)
  expected = np.sqrt([float(schedule(t)) / 0.1 for t in range(3)])
  np.testing.assert_allclose(scheduled[:3] / constant[:3], expected, rtol=0.02)
  np.testing.assert_allclose(scheduled[3:], 0.0, atol=1e-3)


def test_centred_units_start_at_the_equilibrium_angle():
  """Units off zero mean spend rotational's first update (center=True) on moving to
  it; center_units first (Kosson et al.'s zero_mean_on_init) makes step 1 an
  equilibrium step: angle arctan(eta_r) for SGD's first update."""
  w = _start(center_offset=1.0)
  g = {'w': _gradient(w, jax.random.key(5))}
  target = theory.equilibrium_angular_update('sgd', 0.1, 5e-4, momentum=0.9)
  tx = transforms.rotational('sgd', 0.1, 5e-4, momentum=0.9, mask=ALL)

  def first_angle(params):
    u, _ = tx.update(g, tx.init(params), params)
    return dynamics.angular_update(params['w'], params['w'] + u['w'])

  centred = transforms.center_units({'w': w}, ALL)
  np.testing.assert_allclose(jnp.mean(jnp.asarray(centred['w']), 0), 0.0, atol=1e-6)
  chex.assert_trees_all_close(first_angle(centred), jnp.full(UNITS, np.arctan(target)),
                              rtol=1e-3)
  assert float(jnp.min(first_angle({'w': w}))) > 3 * target  # the move to zero mean
