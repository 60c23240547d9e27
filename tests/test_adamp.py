"""transforms.adamp / sgdp against a NumPy transcription of Heo et al.'s reference code."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import dynamics, norms, transforms
from bnjax.transforms import adamp_sgdp as adamp_lib
from _helpers import dtype_context

STEPS = 300


def _problem(seed=0):
  """A kernel feeding batch norm (scale-invariant per unit), a head and a bias."""
  k = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(k[0], (64, 6))
  y = jax.random.normal(k[1], (64, 3))
  params = {'k1': jax.random.normal(k[2], (6, 8)), 'head': 0.3 * jax.random.normal(
      k[3], (8, 3)), 'b': 0.1 * jax.random.normal(k[4], (3,))}

  def loss(p, t):
    h = jax.nn.relu(norms.batch_norm(x @ p['k1'], training=True)[0])
    # A little time dependence keeps the gradients from settling.
    return jnp.mean(jnp.square(h @ p['head'] + p['b'] - y * jnp.cos(0.01 * t)))

  return params, jax.jit(jax.grad(loss))


# ---- the reference algorithm (clovaai/AdamP, adamp.py and sgdp.py), in NumPy,
# on PyTorch's layout: units on axis 0 (a flax kernel moved with moveaxis).


def _torch(a):
  return np.moveaxis(np.asarray(a), -1, 0) if np.ndim(a) > 1 else np.asarray(a)


def _flax(a):
  return np.moveaxis(a, 0, -1) if a.ndim > 1 else a


def _ref_cosine(x, y, eps, view):
  x, y = view(x), view(y)
  nx = np.maximum(np.linalg.norm(x, axis=1), eps)
  ny = np.maximum(np.linalg.norm(y, axis=1), eps)
  return np.abs(np.sum(x * y, axis=1)) / (nx * ny)


def _ref_projection(p, grad, perturb, delta, wd_ratio, eps):
  expand = [-1] + [1] * (p.ndim - 1)
  for view in (lambda a: a.reshape(a.shape[0], -1), lambda a: a.reshape(1, -1)):
    cos = _ref_cosine(grad, p, eps, view)
    if cos.max() < delta / np.sqrt(view(p).shape[1]):
      p_n = p / (np.linalg.norm(view(p), axis=1).reshape(expand) + eps)
      perturb = perturb - p_n * np.sum(view(p_n * perturb), axis=1).reshape(expand)
      return perturb, wd_ratio
  return perturb, 1.0


def _ref_adamp(params, grad_fn, lr, b1, b2, eps, wd, delta, wd_ratio, nesterov):
  p = {k: _torch(v) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(1, STEPS + 1):
    grads = grad_fn({k: jnp.asarray(_flax(v)) for k, v in p.items()}, t - 1)
    for k in p:
      g = _torch(grads[k])
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      denom = np.sqrt(v2[k]) / np.sqrt(1 - b2 ** t) + eps
      step_size = lr / (1 - b1 ** t)
      perturb = (b1 * m[k] + (1 - b1) * g) / denom if nesterov else m[k] / denom
      ratio = 1.0
      if p[k].ndim > 1:
        perturb, ratio = _ref_projection(p[k], g, perturb, delta, wd_ratio, eps)
      if wd > 0:
        p[k] = p[k] * (1 - lr * wd * ratio)
      p[k] = p[k] - step_size * perturb
  return {k: _flax(v) for k, v in p.items()}


def _ref_sgdp(params, grad_fn, lr, momentum, dampening, wd, nesterov, eps, delta, wd_ratio):
  p = {k: _torch(v) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(STEPS):
    grads = grad_fn({k: jnp.asarray(_flax(v)) for k, v in p.items()}, t)
    for k in p:
      g = _torch(grads[k])
      buf[k] = momentum * buf[k] + (1 - dampening) * g
      d_p = g + momentum * buf[k] if nesterov else buf[k]
      ratio = 1.0
      if p[k].ndim > 1:
        d_p, ratio = _ref_projection(p[k], g, d_p, delta, wd_ratio, eps)
      if wd > 0:
        p[k] = p[k] * (1 - lr * wd * ratio / (1 - momentum))
      p[k] = p[k] - lr * d_p
  return {k: _flax(v) for k, v in p.items()}


def _run(tx, params, grad_fn, steps=STEPS):
  state = tx.init(params)

  @jax.jit
  def step(p, s, t):
    u, s = tx.update(grad_fn(p, t), s, p)
    return optax.apply_updates(p, u), s

  history = [params]
  for t in range(steps):
    params, state = step(params, state, t)
    history.append(params)
  return params, history


# The comparisons run in float64 (both sides): they test the algorithm over
# a few hundred steps, where float32 rounding alone moves Adam's trajectory by
# about 1e-5; float32 and bfloat16 are covered by the dtype tests.


@pytest.mark.parametrize('nesterov', [False, True])
@dtype_context(jnp.float64)
def test_adamp_equals_the_reference_algorithm(nesterov):
  params, grad_fn = _problem()
  kw = dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, wd=0.05, delta=0.1, wd_ratio=0.1,
            nesterov=nesterov)
  ref = _ref_adamp(params, grad_fn, **kw)
  ours, _ = _run(transforms.adamp(0.01, 0.9, 0.999, 1e-8, weight_decay=0.05,
                                  nesterov=nesterov), params, grad_fn)
  chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('nesterov, dampening', [(False, 0.0), (True, 0.0), (False, 0.1)])
@dtype_context(jnp.float64)
def test_sgdp_equals_the_reference_algorithm(nesterov, dampening):
  params, grad_fn = _problem(1)
  ref = _ref_sgdp(params, grad_fn, lr=0.02, momentum=0.9, dampening=dampening, wd=5e-3,
                  nesterov=nesterov, eps=1e-8, delta=0.1, wd_ratio=0.1)
  ours, _ = _run(transforms.sgdp(0.02, 0.9, dampening=dampening, weight_decay=5e-3,
                                 nesterov=nesterov), params, grad_fn)
  chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_the_test_problem_exercises_both_branches():
  # The BN-fed kernel is projected, the head is not: otherwise the reference
  # comparisons above would not test the projection.
  params, grad_fn = _problem()
  g = grad_fn(params, 0)
  w = params['k1']
  _, ratio_k1 = adamp_lib._radial_projection(w, g['k1'], g['k1'], delta=0.1, wd_ratio=0.1,
                                              eps=1e-8)
  _, ratio_head = adamp_lib._radial_projection(params['head'], g['head'], g['head'],
                                                delta=0.1, wd_ratio=0.1, eps=1e-8)
  assert float(ratio_k1) == pytest.approx(0.1) and float(ratio_head) == 1.0


def test_leaves_outside_the_mask_take_the_plain_optax_step():
  params, grad_fn = _problem()
  mask = {'k1': True, 'head': False, 'b': False}
  g = grad_fn(params, 0)
  ours, _ = transforms.adamp(0.01, weight_decay=0.1, mask=mask).update(
      g, transforms.adamp(0.01, weight_decay=0.1, mask=mask).init(params), params)
  ref, _ = optax.adam(0.01).update(g, optax.adam(0.01).init(params), params)
  chex.assert_trees_all_close({k: ours[k] for k in ('head', 'b')},
                              {k: ref[k] for k in ('head', 'b')}, rtol=1e-6)
  sgd_ours, _ = transforms.sgdp(0.01, 0.9, weight_decay=0.1, mask=mask).update(
      g, transforms.sgdp(0.01, 0.9, mask=mask).init(params), params)
  sgd_ref, _ = optax.sgd(0.01, 0.9).update(g, optax.sgd(0.01, 0.9).init(params), params)
  chex.assert_trees_all_close({k: sgd_ours[k] for k in ('head', 'b')},
                              {k: sgd_ref[k] for k in ('head', 'b')}, rtol=1e-6)


def test_adamp_keeps_the_effective_step_where_adam_shrinks_it():
  # Without decay Adam grows the BN-fed kernel's norm, so its angular update
  # (effective step) shrinks; AdamP removes the radial part and keeps both.
  params, grad_fn = _problem()
  params = {**params, 'k1': params['k1'] / dynamics.unit_norms(params['k1'])}
  measured = {}
  for name, tx in (('adam', optax.adam(0.05)), ('adamp', transforms.adamp(0.05))):
    _, history = _run(tx, params, grad_fn, steps=200)
    norm = float(jnp.mean(dynamics.unit_norms(history[-1]['k1'])))
    angle = lambda a, b: float(jnp.mean(dynamics.angular_update(a['k1'], b['k1'])))
    early = np.mean([angle(history[i], history[i + 1]) for i in range(10, 20)])
    late = np.mean([angle(history[i], history[i + 1]) for i in range(180, 190)])
    measured[name] = (norm, late / early)
  # Measured: norm 1 -> 2.07 (Adam) and 1.07 (AdamP, second-order growth only);
  # late/early angular update 0.21 (Adam) and 0.34 (AdamP: the raw steps shrink
  # for both as the gradients settle; Adam's also divide by a doubled norm).
  assert measured['adamp'][0] - 1 < 0.2 * (measured['adam'][0] - 1), measured
  assert measured['adamp'][1] > 1.3 * measured['adam'][1], measured


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_dtypes_are_kept_and_jit_changes_nothing(dtype, jit):
  params, grad_fn = _problem()
  params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
  grads = jax.tree_util.tree_map(lambda a: a.astype(dtype), grad_fn(params, 0))
  for tx in (transforms.adamp(0.1, weight_decay=0.1), transforms.sgdp(0.1, 0.9)):
    update = jax.jit(tx.update) if jit else tx.update
    u, _ = update(grads, tx.init(params), params)
    assert all(a.dtype == dtype for a in jax.tree_util.tree_leaves(u))
    u_ref, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(u, u_ref, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)


@pytest.mark.parametrize('make, error, match', [
    (lambda: transforms.adamp(-1.0), ValueError, 'learning_rate must be > 0'),
    (lambda: transforms.adamp(0.1, b1=1.0), ValueError, r'b1 must be in \[0, 1\)'),
    (lambda: transforms.adamp(0.1, delta=0.0), ValueError, 'delta must be > 0'),
    (lambda: transforms.adamp(0.1, wd_ratio=1.5), ValueError, r'wd_ratio must be in \[0, 1\]'),
    (lambda: transforms.adamp(0.1, nesterov=1), TypeError, 'nesterov must be a bool'),
    (lambda: transforms.sgdp(0.1, momentum=1.0), ValueError, r'momentum must be in \[0, 1\)'),
    (lambda: transforms.sgdp(0.1, weight_decay=-1.0), ValueError, 'weight_decay must be >= 0'),
    (lambda: transforms.sgdp(0.1, eps=0.0), ValueError, 'eps must be > 0'),
])
def test_bad_arguments_are_refused_at_construction(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_update_needs_params():
  tx = transforms.adamp(0.1)
  params = {'k': jnp.ones((2, 2))}
  with pytest.raises(ValueError, match='adamp needs the current params'):
    tx.update(params, tx.init(params))


@pytest.mark.parametrize('make', [lambda: transforms.adamp(0.1),
                                  lambda: transforms.sgdp(0.1, momentum=0.9)])
def test_integer_params_are_refused_at_init(make):
  # An int32 leaf would get its update truncated (to zero for small steps).
  params = {'kernel': jnp.ones((3, 2)), 'step': jnp.ones((2,), jnp.int32)}
  with pytest.raises(TypeError, match="'step' has dtype int32"):
    make().init(params)


@pytest.mark.parametrize('make, kind', [
    (lambda track: transforms.adamp(0.05, weight_decay=0.1, track=track), 'adam'),
    (lambda track: transforms.sgdp(0.05, 0.9, weight_decay=0.1, track=track), 'sgd')])
def test_track_appends_dynamics_and_leaves_the_updates(make, kind):
  """track=True: the same updates, and dynamics.read gives the step's weight norm
  (by hand) and effective learning rate (lr / ||w||, Adam; lr / ||w||^2, SGD)."""
  from bnjax import dynamics
  w = {'kernel': jnp.array([[3.0, 0.0], [4.0, 2.0]])}
  g = {'kernel': jnp.array([[0.5, -1.0], [0.2, 0.3]])}
  plain, tracked = make(False), make(True)
  u_plain, _ = plain.update(g, plain.init(w), w)
  u_tracked, state = tracked.update(g, tracked.init(w), w)
  chex.assert_trees_all_close(u_tracked, u_plain)
  read = dynamics.read(state)
  assert float(read['kernel/weight_norm']) == pytest.approx((5.0 + 2.0) / 2)
  expected = np.mean([0.05 / n ** (1 if kind == 'adam' else 2) for n in (5.0, 2.0)])
  assert float(read['kernel/effective_lr']) == pytest.approx(expected, rel=1e-5)
  with pytest.raises(TypeError, match='track must be a bool'):
    make(1)
