"""Bad input raises ValueError with a message naming the problem, before XLA sees it."""

import jax
import jax.numpy as jnp
import pytest

from bnjax import norms

X = jnp.ones((8, 4, 4, 6))
F = 6
STATS = norms.init_batch_stats(F)
BATCH_FAMILY = [norms.batch_norm, norms.population_norm, norms.mean_only_batch_norm,
                norms.variance_only_batch_norm,
                lambda *a, **k: norms.ghost_batch_norm(*a, virtual_batch_size=4, **k)]


@pytest.mark.parametrize('fn', BATCH_FAMILY)
@pytest.mark.parametrize('arg,match', [
    (dict(scale=jnp.ones(5)), r'scale has shape \(5,\).*6 features'),
    (dict(bias=jnp.ones((6, 1))), r'bias has shape \(6, 1\)'),
    (dict(stats=norms.init_batch_stats(4)), r'stats.mean has shape \(4,\)'),
    (dict(momentum=1.5), r'momentum must be in \[0, 1\]'),
    (dict(momentum=-0.1), r'momentum must be in \[0, 1\]'),
    (dict(epsilon=0.0), r'epsilon must be > 0'),
    (dict(axis=4), r'axis=4 is out of range'),
])
def test_batch_family_bad_arguments(fn, arg, match):
  kwargs = dict(stats=STATS, training=True)
  kwargs.update(arg)
  with pytest.raises(ValueError, match=match):
    fn(X, **kwargs)


@pytest.mark.parametrize('fn', BATCH_FAMILY)
def test_inference_without_stats(fn):
  with pytest.raises(ValueError, match='needs stats'):
    fn(X, training=False)


@pytest.mark.parametrize('fn', BATCH_FAMILY)
def test_rank_too_small(fn):
  with pytest.raises(ValueError, match='rank >= 2'):
    fn(jnp.ones(6), stats=STATS, training=True)


def test_validation_runs_under_jit():
  with pytest.raises(ValueError, match='scale has shape'):
    jax.jit(lambda x, s: norms.batch_norm(x, s, training=True))(X, jnp.ones(3))


def test_ghost_virtual_batch_must_divide():
  with pytest.raises(ValueError, match='virtual_batch_size=3 must be a positive int '
                                       'that divides the batch size 8'):
    norms.ghost_batch_norm(X, training=True, virtual_batch_size=3)
  with pytest.raises(ValueError, match='virtual_batch_size=0'):
    norms.ghost_batch_norm(X, training=True, virtual_batch_size=0)


def test_group_norm_bad_arguments():
  with pytest.raises(ValueError, match='num_groups=4 must be a positive int that '
                                       'divides the number of features 6'):
    norms.group_norm(X, num_groups=4)
  with pytest.raises(ValueError, match='scale has shape'):
    norms.group_norm(X, jnp.ones(3), num_groups=3)
  with pytest.raises(ValueError, match='rank >= 2'):
    norms.group_norm(jnp.ones(6), num_groups=3)
  with pytest.raises(ValueError, match='epsilon must be > 0'):
    norms.group_norm(X, num_groups=3, epsilon=-1.0)


def test_layer_and_instance_norm_bad_arguments():
  with pytest.raises(ValueError, match='bias has shape'):
    norms.layer_norm(X, None, jnp.ones(4))
  with pytest.raises(ValueError, match='rank >= 2'):
    norms.instance_norm(jnp.ones((8,)))
  with pytest.raises(ValueError, match='feature axis cannot be 0'):
    norms.instance_norm(X, axis=0)


def test_weight_reparam_and_fold_bad_arguments():
  with pytest.raises(ValueError, match=r'g has shape \(3,\)'):
    norms.weight_norm(jnp.ones((5, 7)), jnp.ones(3))
  with pytest.raises(ValueError, match='epsilon must be > 0'):
    norms.weight_standardize(jnp.ones((5, 7)), epsilon=0.0)
  with pytest.raises(ValueError, match=r'bn_bias has shape \(2,\)'):
    norms.fold_batch_norm(jnp.ones((5, 7)), None, None, jnp.ones(2),
                          norms.init_batch_stats(7))
  with pytest.raises(ValueError, match=r'stats.var has shape'):
    norms.fold_batch_norm(jnp.ones((5, 7)), None, None, None,
                          norms.BatchStats(jnp.zeros(7), jnp.ones(2)))
  with pytest.raises(ValueError, match='num_features must be a positive int'):
    norms.init_batch_stats(0)
