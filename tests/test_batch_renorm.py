"""Batch renormalization (Ioffe 2017) and batch statistics pooled over devices
that hold different numbers of valid examples.

References: a NumPy float64 transcription of the paper's Algorithm 1 and of
the gradients printed under it; batch norm (r_max = 1, d_max = 0); one device
holding the concatenated batch.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bnjax import layers, norms
from bnjax import nnx as bnx

from _helpers import dtype_context

EPS = 1e-3


def _algorithm_1(x, gamma, beta, mu, sigma, r_max, d_max, eps, dy):
  """Ioffe (2017), Algorithm 1 and the backward pass below it, for a (m, C)
  minibatch in float64: returns y, (dx, dgamma, dbeta) for the upstream dy,
  and the moving averages' targets mu_B and sigma_B."""
  m = x.shape[0]
  mu_b = x.mean(0)
  sigma_b = np.sqrt(((x - mu_b) ** 2).mean(0) + eps)
  r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
  d = np.clip((mu_b - mu) / sigma, -d_max, d_max)
  x_hat = (x - mu_b) / sigma_b * r + d
  y = gamma * x_hat + beta
  dx_hat = dy * gamma
  dsigma_b = np.sum(dx_hat * (x - mu_b) * (-r / sigma_b ** 2), 0)
  dmu_b = np.sum(dx_hat * (-r / sigma_b), 0)
  dx = dx_hat * r / sigma_b + dsigma_b * (x - mu_b) / (m * sigma_b) + dmu_b / m
  return y, (dx, np.sum(dy * x_hat, 0), np.sum(dy, 0)), (mu_b, sigma_b)


def _case(seed=0, m=16, c=5):
  rng = np.random.default_rng(seed)
  x = 3.0 * rng.standard_normal((m, c)) + rng.standard_normal(c)
  gamma, beta = rng.uniform(0.5, 2.0, c), rng.standard_normal(c)
  # Running statistics that put some features' r and d inside the bounds and
  # clip others on either side.
  mu = x.mean(0) + np.array([0.0, 4.0, -40.0, 0.5, 20.0]) * x.std(0)
  var = x.var(0) * np.array([1.0, 0.05, 30.0, 1.2, 1.0])
  return x, gamma, beta, mu, var, rng.standard_normal((m, c))


@pytest.mark.parametrize('use_fast_variance', [None, True, False])
def test_forward_and_gradients_equal_algorithm_1_in_float64(use_fast_variance):
  x, gamma, beta, mu, var, dy = _case()
  r_max, d_max = 2.0, 1.5
  want_y, want_grads, (mu_b, sigma_b) = _algorithm_1(
      x, gamma, beta, mu, np.sqrt(var + EPS), r_max, d_max, EPS, dy)
  with dtype_context(jnp.float64):
    args = [jnp.asarray(a, jnp.float64) for a in (x, gamma, beta)]
    stats = norms.BatchStats(*(jnp.asarray(a, jnp.float64) for a in (mu, var)))

    def renorm(x, gamma, beta):
      return norms.batch_renorm(x, gamma, beta, stats, training=True, r_max=r_max,
                                d_max=d_max, epsilon=EPS, momentum=0.9,
                                use_fast_variance=use_fast_variance)

    y, new = jax.jit(renorm)(*args)
    grads = jax.grad(lambda *a: jnp.sum(renorm(*a)[0] * dy), argnums=(0, 1, 2))(*args)
    np.testing.assert_allclose(y, want_y, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, want_grads):
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(new.mean, 0.9 * mu + 0.1 * mu_b, rtol=1e-12)
    np.testing.assert_allclose(new.var, 0.9 * var + 0.1 * (sigma_b ** 2 - EPS), rtol=1e-10)
  r = np.clip(sigma_b / np.sqrt(var + EPS), 1 / r_max, r_max)
  d = np.clip((mu_b - mu) / np.sqrt(var + EPS), -d_max, d_max)
  assert {1 / r_max, r_max} <= set(np.round(r, 12)) and {-d_max, d_max} <= set(d)
  assert ((np.abs(d) < d_max) & (r > 1 / r_max) & (r < r_max)).any()


@pytest.mark.parametrize('use_fast_variance', [None, True, False])
def test_with_r_max_1_and_d_max_0_it_is_batch_norm(use_fast_variance):
  x, gamma, beta, mu, var, dy = (jnp.asarray(a, jnp.float32) for a in _case(1))
  stats = norms.BatchStats(mu, var)
  bn = lambda *a: norms.batch_norm(*a, stats, training=True, use_fast_variance=use_fast_variance)
  brn = lambda *a: norms.batch_renorm(*a, stats, training=True, r_max=1.0, d_max=0.0,
                                      use_fast_variance=use_fast_variance)
  chex.assert_trees_all_close(brn(x, gamma, beta), bn(x, gamma, beta), atol=1e-6, rtol=1e-6)
  grad = lambda f: jax.grad(lambda *a: jnp.sum(f(*a)[0] * dy), argnums=(0, 1, 2))(x, gamma, beta)
  chex.assert_trees_all_close(grad(brn), grad(bn), atol=1e-5, rtol=1e-5)
  # Inference is batch norm's with the running statistics.
  chex.assert_trees_all_close(
      norms.batch_renorm(x, gamma, beta, stats, training=False),
      norms.batch_norm(x, gamma, beta, stats, training=False))


def test_across_devices_equals_one_device_on_the_whole_batch():
  x, gamma, beta, mu, var, _ = (jnp.asarray(a, jnp.float32) for a in _case(2))
  stats = norms.BatchStats(mu, var)
  run = lambda x, axis_name=None: norms.batch_renorm(x, gamma, beta, stats, training=True,
                                                     r_max=2.0, d_max=1.5, axis_name=axis_name)
  y, new = jax.pmap(lambda v: run(v, 'd'), axis_name='d',
                    devices=jax.local_devices()[:4])(x.reshape(4, 4, -1))
  want_y, want_new = run(x)
  chex.assert_trees_all_close(y.reshape(x.shape), want_y, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[0], new), want_new,
                              atol=1e-6, rtol=1e-6)


def test_refuses_bad_limits_missing_statistics_and_wrong_masks():
  x = jnp.ones((4, 3))
  stats = norms.init_batch_stats(3)
  with pytest.raises(ValueError, match=r'r_max must be >= 1'):
    norms.batch_renorm(x, stats=stats, training=True, r_max=0.5)
  with pytest.raises(ValueError, match=r'd_max must be >= 0'):
    norms.batch_renorm(x, stats=stats, training=True, d_max=-0.1)
  with pytest.raises(ValueError, match=r'r_max must be >= 1 and finite, got inf'):
    norms.batch_renorm(x, stats=stats, training=True, r_max=float('inf'))
  with pytest.raises(TypeError, match=r'd_max must be a real number'):
    norms.batch_renorm(x, stats=stats, training=True, d_max='5')
  with pytest.raises(ValueError, match=r'batch_renorm needs stats'):
    norms.batch_renorm(x, training=True)
  with pytest.raises(ValueError, match=r'mask has shape \(3,\), which does not broadcast'):
    norms.batch_renorm(jnp.ones((4, 2)), stats=norms.init_batch_stats(2), training=True,
                       mask=jnp.ones(3, bool))
  with pytest.raises(ValueError, match=r'r_max must be >= 1'):
    layers.BatchRenorm(use_running_average=False, r_max=0.9).init(jax.random.key(0), x)


def test_modules_equal_the_function_and_count_steps_for_schedules():
  x, gamma, beta, mu, var, _ = (jnp.asarray(a, jnp.float32) for a in _case(3))
  ramp = optax.linear_schedule(1.0, 3.0, transition_steps=4)
  d_ramp = optax.linear_schedule(0.0, 2.0, transition_steps=4)
  linen = layers.BatchRenorm(r_max=ramp, d_max=d_ramp, momentum=0.8)
  variables = {'params': {'scale': gamma, 'bias': beta},
               'batch_stats': {'mean': mu, 'var': var, 'renorm_steps': jnp.array(0)}}
  module = bnx.BatchRenorm(5, r_max=ramp, d_max=d_ramp, momentum=0.8, rngs=nnx.Rngs(0))
  module.scale[...], module.bias[...], module.mean[...], module.var[...] = gamma, beta, mu, var
  stats = norms.BatchStats(mu, var)
  for step in range(3):
    want, stats = norms.batch_renorm(x + step, gamma, beta, stats, training=True,
                                     r_max=ramp(step), d_max=d_ramp(step), momentum=0.8)
    y, updates = linen.apply(variables, x + step, use_running_average=False,
                             mutable=['batch_stats'])
    variables = {'params': variables['params'], **updates}
    chex.assert_trees_all_close(y, want, atol=1e-6)
    chex.assert_trees_all_close(module(x + step), want, atol=1e-6)
  assert int(variables['batch_stats']['renorm_steps']) == 3 == int(module.renorm_steps[...])
  chex.assert_trees_all_close((variables['batch_stats']['mean'], module.mean[...]),
                              (stats.mean, stats.mean))
  # Inference neither counts nor updates.
  linen.apply(variables, x, use_running_average=True)
  module(x, use_running_average=True)
  assert int(module.renorm_steps[...]) == 3
  plain = layers.BatchRenorm(use_running_average=False).init(jax.random.key(0), x)
  assert sorted(plain['batch_stats']) == ['mean', 'var']


def _valid_rows(counts, c=3, seed=0):
  """4 devices x 8 rows; device i's first counts[i] rows are valid, the rest
  padding far from them (1e3)."""
  rng = np.random.default_rng(seed)
  x = np.full((4, 8, c), 1e3)
  mask = np.zeros((4, 8, 1), bool)
  for i, n in enumerate(counts):
    x[i, :n] = 2.0 * rng.standard_normal((n, c)) + 5.0
    mask[i, :n] = True
  return jnp.asarray(x, jnp.float32), jnp.asarray(mask)


@pytest.mark.parametrize('norm, use_fast_variance', [
    ('batch_norm', True), ('batch_norm', False), ('batch_norm', None),
    ('batch_renorm', True), ('batch_renorm', False), ('batch_renorm', None),
    ('population_norm', ()), ('mean_only_batch_norm', ()), ('variance_only_batch_norm', ())])
def test_masked_statistics_pool_devices_with_unequal_valid_rows(norm, use_fast_variance):
  x, mask = _valid_rows([5, 8, 0, 3])
  valid = x[np.broadcast_to(mask, x.shape)].reshape(16, 3)  # the 16 valid rows
  fn = getattr(norms, norm)
  stats = norms.BatchStats(jnp.full(3, 4.0), jnp.full(3, 3.0))
  kw = dict(training=True, momentum=0.5)
  if use_fast_variance != ():
    kw['use_fast_variance'] = use_fast_variance

  def per_device(x, m):
    def loss(x):
      y, new = fn(x, jnp.full(3, 1.5), jnp.zeros(3), stats, mask=m, axis_name='d', **kw)
      return jnp.sum(jnp.where(m, y, 0.0) ** 2), (y, new)
    return jax.grad(loss, has_aux=True)(x)

  dx, (y, new) = jax.pmap(per_device, axis_name='d', devices=jax.local_devices()[:4])(x, mask)

  def whole(v):
    y, new = fn(v, jnp.full(3, 1.5), jnp.zeros(3), stats, **kw)
    return jnp.sum(y ** 2), (y, new)

  want_dx, (want_y, want_new) = jax.grad(whole, has_aux=True)(valid)
  pick = lambda a: a[np.broadcast_to(mask, a.shape)].reshape(16, 3)
  chex.assert_trees_all_close(pick(y), want_y, atol=2e-5, rtol=1e-5)
  chex.assert_trees_all_close(pick(dx), want_dx, atol=2e-5, rtol=1e-5)
  for i in range(4):  # every device, the empty one too, holds the pooled statistics
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[i], new), want_new,
                                atol=1e-5, rtol=1e-5)
  assert np.isfinite(np.asarray(new.mean)).all() and np.isfinite(np.asarray(dx)).all()
  # The layers pass the call's mask through (one device).
  layer = {'batch_norm': layers.BatchNorm, 'batch_renorm': layers.BatchRenorm,
           'population_norm': layers.PopulationNorm,
           'mean_only_batch_norm': layers.MeanOnlyBatchNorm,
           'variance_only_batch_norm': layers.VarianceOnlyBatchNorm}[norm]
  flat_x, flat_mask = x.reshape(32, 3), mask.reshape(32, 1)
  module = layer(use_running_average=False, momentum=0.5, **(
      {} if use_fast_variance == () else {'use_fast_variance': use_fast_variance}))
  variables = {'params': {'scale': jnp.full(3, 1.5), 'bias': jnp.zeros(3)},
               'batch_stats': {'mean': stats.mean, 'var': stats.var}}
  _, updates = module.apply(variables, flat_x, mask=flat_mask, mutable=['batch_stats'])
  chex.assert_trees_all_close(tuple(updates['batch_stats'].values()), tuple(want_new),
                              atol=1e-5, rtol=1e-5)


def test_a_per_example_mask_broadcasts_and_flax_pools_wrongly():
  # The mask (4, 8, 1) above broadcasts over features; flax's BatchNorm
  # averages each device's masked mean, so with 5, 8, 0, 3 valid rows its
  # statistics are not those of the 16 rows (and the empty device's NaN
  # reaches every device).
  x, mask = _valid_rows([5, 8, 0, 3])
  mask_full = jnp.broadcast_to(mask, x.shape)
  valid = x[mask_full].reshape(16, 3)
  flax_bn = nn.BatchNorm(use_running_average=False, axis_name='d')
  variables = flax_bn.init(jax.random.key(0), x[0])
  run = lambda m: jax.pmap(lambda v, k: m.apply(variables, v, mask=k, mutable=['batch_stats']),
                           axis_name='d', devices=jax.local_devices()[:4])(x, mask_full)
  theirs = run(flax_bn)[1]['batch_stats']['mean'][0]
  ours = run(layers.BatchNorm(use_running_average=False, axis_name='d'))[1]
  want = 0.99 * 0.0 + 0.01 * valid.mean(0)
  chex.assert_trees_all_close(ours['batch_stats']['mean'][0], want, atol=1e-6)
  assert not np.allclose(theirs, want, atol=1e-4)
