"""Cross-replica statistics: vmap/pmap with axis_name == one device on the whole batch."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from bnjax import norms

D = 4
TOL = dict(atol=2e-5, rtol=2e-5)


def setUpModule():
  if jax.local_device_count() < D:
    raise AssertionError(
        f'need {D} devices; conftest.py sets --xla_force_host_platform_device_count')


def _batch_norm_family():
  return {
      'batch': norms.batch_norm,
      'population': norms.population_norm,
      'mean_only': norms.mean_only_batch_norm,
      'variance_only': norms.variance_only_batch_norm,
  }


def _inputs(shape=(D * 6, 5, 5, 8)):
  # Different means per device slice so cross-device combination matters.
  x = jax.random.normal(jax.random.key(0), shape)
  x = x + jnp.repeat(jnp.arange(D, dtype=jnp.float32) * 2.0, shape[0] // D).reshape(
      (-1,) + (1,) * (len(shape) - 1))
  f = shape[-1]
  scale = 1.0 + 0.3 * jax.random.normal(jax.random.key(1), (f,))
  bias = jax.random.normal(jax.random.key(2), (f,))
  r = jax.random.normal(jax.random.key(3), shape)
  return x, scale, bias, norms.init_batch_stats(f), r


def _split(a):
  return a.reshape((D, a.shape[0] // D) + a.shape[1:])


class CrossReplicaTest(chex.TestCase):

  def _check(self, fn, mapper):
    x, scale, bias, stats, r = _inputs()

    def loss(x, scale, bias, r, axis_name=None):
      y, new = fn(x, scale, bias, stats, training=True, axis_name=axis_name)
      return jnp.sum(jnp.sin(y) * r), (y, new)

    grad_fn = jax.grad(loss, argnums=(0, 1), has_aux=True)
    (gx, gs), (y, new) = grad_fn(x, scale, bias, r)
    mapped = mapper(lambda x, r: grad_fn(x, scale, bias, r, axis_name='i'))
    (mgx, mgs), (my, mnew) = mapped(_split(x), _split(r))
    chex.assert_trees_all_close(my.reshape(y.shape), y, **TOL)
    for d in range(D):
      chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[d], mnew), new, **TOL)
    # Each device's input gradient is the gradient of the global loss.
    chex.assert_trees_all_close(mgx.reshape(gx.shape), gx, atol=1e-4, rtol=1e-4)
    # Parameter gradients are per-device partial sums of the global one.
    chex.assert_trees_all_close(jnp.sum(mgs, 0), gs, atol=1e-4, rtol=1e-4)

  @parameterized.named_parameters(*[(k, k) for k in _batch_norm_family()])
  def test_vmap(self, name):
    self._check(_batch_norm_family()[name], lambda f: jax.vmap(f, axis_name='i'))

  @parameterized.named_parameters(*[(k, k) for k in _batch_norm_family()])
  def test_pmap(self, name):
    self._check(_batch_norm_family()[name], lambda f: jax.pmap(f, axis_name='i'))

  def test_ghost_stats_averaged_over_devices(self):
    x, scale, bias, stats, _ = _inputs()
    vbs = 3
    y, new = norms.ghost_batch_norm(x, scale, bias, stats, training=True,
                                    virtual_batch_size=vbs)
    py, pnew = jax.pmap(lambda x: norms.ghost_batch_norm(
        x, scale, bias, stats, training=True, virtual_batch_size=vbs, axis_name='i'),
                        axis_name='i')(_split(x))
    chex.assert_trees_all_close(py.reshape(y.shape), y, **TOL)
    for d in range(D):
      chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[d], pnew), new, **TOL)

  def test_large_mean_differences_across_devices(self):
    # Per-device means 0, 100, 200, 300 with unit spread: the combined
    # variance is dominated by the between-device term.
    x = jax.random.normal(jax.random.key(5), (D * 16, 3))
    x = x + jnp.repeat(jnp.arange(D) * 100.0, 16)[:, None]
    stats = norms.init_batch_stats(3)
    _, new = norms.batch_norm(x, stats=stats, training=True, momentum=0.0)
    _, pnew = jax.pmap(lambda x: norms.batch_norm(x, stats=stats, training=True,
                                                  momentum=0.0, axis_name='i'),
                       axis_name='i')(_split(x))
    chex.assert_trees_all_close(pnew.var[0], jnp.var(x, 0), rtol=1e-5)
    chex.assert_trees_all_close(new.var, jnp.var(x, 0), rtol=1e-5)


TIMING = ('time_s', 'images_per_s')


def _logged(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in lines]


@pytest.mark.parametrize('mode', ['pmap', 'sharded'])
def test_every_logged_metric_equals_one_device(mode, tmp_path):
  """All of metrics.jsonl, gradient metrics included, is the global-batch number."""
  from bnjax.train import trainer  # pylint: disable=g-import-not-at-top
  from bnjax.train.config import Config
  config = Config(dataset='teacher_student', model='perceptron', norm='batch',
                        optimizer='momentum', learning_rate=0.05, regularizer='l2',
                        weight_decay=1e-3, batch_size=32, num_epochs=3, num_train=256,
                        num_test=128, input_dim=20, log_every=4, checkpoint_every=8)
  trainer.train(config, tmp_path / 'none', progress=False)
  trainer.train(dataclasses.replace(config, parallel=mode), tmp_path / mode, progress=False)
  one, many = _logged(tmp_path / 'none'), _logged(tmp_path / mode)
  assert [l['step'] for l in many] == [l['step'] for l in one] == list(range(4, 25, 4))
  assert set(many[0]) == set(one[0]) and 'grad_sq_at_unit_norm/dense' in one[0]
  for a, b in zip(one, many):
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-3, atol=1e-7, err_msg=key)
