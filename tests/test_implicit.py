"""bnjax.implicit: batch norm's implicit gamma decay against a hand-derived
reference and on a network."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import implicit, models

EPS = 1e-5  # bnjax.layers' batch-norm epsilon


def _linear_perceptron(seed=0, p=64, n=6):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((p, n)) / math.sqrt(n) + 0.2
  teacher = rng.standard_normal(n)
  y = x @ teacher + 0.3 * rng.standard_normal(p)
  # A student near the teacher: batch noise then attenuates its fit, a decay.
  params = {'dense': {'kernel': (teacher + 0.1 * rng.standard_normal(n))[:, None]},
            'dense_norm': {'scale': np.array([0.8]), 'bias': np.array([0.1])}}
  return (jax.tree_util.tree_map(jnp.asarray, params), x.astype(np.float32),
          y.astype(np.float32))


def _hand_gamma_gradient(params, x, y, order, m):
  """d/dgamma of the mean over the sample of (gamma h_B + beta - y)^2, each batch of
  m (consecutive in ``order``) normalized by its own mean and variance: the
  gradient reaches gamma only through gamma * h_B."""
  k = np.asarray(params['dense']['kernel'], np.float64)[:, 0]
  gamma = float(params['dense_norm']['scale'][0])
  beta = float(params['dense_norm']['bias'][0])
  x, y = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
  h = (x @ k).reshape(-1, m)
  hat = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + EPS)
  residual = gamma * hat + beta - y.reshape(-1, m)
  return float(np.mean(2 * residual * hat))


def test_gamma_decay_matches_the_hand_gradient_of_a_linear_perceptron():
  params, x, y = _linear_perceptron()
  partitions, seed = 3, 7
  zeta = implicit.gamma_decay(implicit.model_apply('perceptron'), params, x, y, [8, 16, 64],
                              regression=True, partitions=partitions, seed=seed)
  rng = np.random.default_rng(seed)
  orders = [rng.permutation(len(y)) for _ in range(partitions)]
  gamma = float(params['dense_norm']['scale'][0])
  population = _hand_gamma_gradient(params, x, y, orders[0], len(y))
  for m in (8, 16):
    batched = np.mean([_hand_gamma_gradient(params, x, y, o, m) for o in orders])
    assert zeta[m]['dense_norm'] == pytest.approx((batched - population) / (2 * gamma),
                                                  rel=2e-3, abs=1e-6)
  assert zeta[64]['dense_norm'] == pytest.approx(0.0, abs=1e-6)  # M = P: PN itself
  assert zeta[8]['dense_norm'] > zeta[16]['dense_norm'] > 0  # noisier batches, more decay


def test_gamma_decay_on_a_convnet_names_every_norm_layer():
  net = models.build('convnet', 'batch', width=4)
  x = jax.random.normal(jax.random.key(0), (32, 28, 28, 1))
  y = jax.random.randint(jax.random.key(1), (32,), 0, 10)
  variables = net.init(jax.random.key(2), x, train=False)
  zeta = implicit.gamma_decay(implicit.model_apply('convnet', width=4, batch_stats=variables['batch_stats']),
                              variables['params'], x, y, [8], partitions=1)
  assert sorted(zeta[8]) == ['conv1_norm', 'conv2_norm', 'conv3_norm']
  assert all(np.isfinite(v) for v in zeta[8].values())


def test_gamma_decay_refuses_bad_inputs():
  params, x, y = _linear_perceptron()
  apply = implicit.model_apply('perceptron')
  with pytest.raises(ValueError, match='not a whole number of batches of 10'):
    implicit.gamma_decay(apply, params, x, y, [10], regression=True)
  with pytest.raises(ValueError, match='same examples'):
    implicit.gamma_decay(apply, params, x, y[:10], [8], regression=True)
  with pytest.raises(TypeError, match='partitions must be a positive int'):
    implicit.gamma_decay(apply, params, x, y, [8], regression=True, partitions=1.5)
  bad = x.copy()
  bad[0, 0] = np.inf
  with pytest.raises(ValueError, match='must be finite'):
    implicit.gamma_decay(apply, params, bad, y, [8], regression=True)
  nan_params = jax.tree_util.tree_map(lambda a: a * np.nan, params)
  with pytest.raises(ValueError, match='must be finite'):
    implicit.gamma_decay(apply, nan_params, x, y, [8], regression=True)
  with pytest.raises(ValueError, match='no gain'):
    implicit.gamma_decay(apply, {'dense': params['dense']}, x, y, [8], regression=True)
  with pytest.raises(ValueError, match="norm must be 'batch' or 'ghost'"):
    implicit.model_apply('convnet', 'weight')
