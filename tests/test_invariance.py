"""Scale invariance of each normalizer with respect to the kernel feeding it.

For a kernel ``w`` (in, units) feeding a normalizer, rescaling a group of
units by ``a > 0`` leaves f unchanged exactly when the normalizer is
invariant for that group; then <grad_w L, w> summed over the group is 0
(Euler's theorem for degree-0 homogeneous functions). Each case checks the
invariance the docstring claims and that the next finer one does not hold.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from bnjax import norms

UNITS, GROUPS = 8, 4
X = jax.random.normal(jax.random.key(0), (16, 5, 6))  # (N, T, in)
W = jax.random.normal(jax.random.key(1), (6, UNITS))
R = jax.random.normal(jax.random.key(2), (16, 5, UNITS))
STATS = norms.BatchStats(jnp.full((UNITS,), 0.3), jnp.full((UNITS,), 2.0))


def _kernel_input(norm):
  return lambda w: norm(X @ w)


def _reparam(reparam):
  return lambda w: X @ reparam(w)


NORMALIZERS = {
    'batch': _kernel_input(lambda h: norms.batch_norm(h, training=True)[0]),
    'variance_only': _kernel_input(
        lambda h: norms.variance_only_batch_norm(h, training=True)[0]),
    'ghost': _kernel_input(
        lambda h: norms.ghost_batch_norm(h, training=True, virtual_batch_size=4)[0]),
    'instance': _kernel_input(norms.instance_norm),
    'group': _kernel_input(lambda h: norms.group_norm(h, num_groups=GROUPS)),
    'layer': _kernel_input(norms.layer_norm),
    'population': _kernel_input(
        lambda h: norms.population_norm(h, stats=STATS, training=True)[0]),
    'mean_only': _kernel_input(lambda h: norms.mean_only_batch_norm(h, training=True)[0]),
    'weight_norm': _reparam(norms.weight_norm),
    'weight_standardize': _reparam(norms.weight_standardize),
}

# group of units sharing one invariant scale: 1 = each unit, GROUPS units
# per group, UNITS = the whole layer, None = no invariance.
INVARIANT_GROUP = {
    'batch': 1, 'variance_only': 1, 'ghost': 1, 'instance': 1,
    'weight_norm': 1, 'weight_standardize': 1,
    'group': UNITS // GROUPS, 'layer': UNITS,
    'population': None, 'mean_only': None,
}


def _scales(group_size, seed=3):
  n = UNITS // group_size
  a = jax.random.uniform(jax.random.key(seed), (n,), minval=0.3, maxval=3.0)
  return jnp.repeat(a, group_size)


def _loss(f):
  return lambda w: jnp.sum(jnp.tanh(f(w)) * R)


class ScaleInvarianceTest(chex.TestCase):

  @parameterized.named_parameters(*[(k, k) for k in NORMALIZERS])
  def test_invariance_and_orthogonal_gradient(self, name):
    f, group = NORMALIZERS[name], INVARIANT_GROUP[name]
    if group is None:
      # Not invariant even to one common scale of the whole kernel.
      self.assertFalse(np.allclose(f(2.0 * W), f(W), atol=1e-3))
      return
    a = _scales(group)
    chex.assert_trees_all_close(f(W * a), f(W), atol=2e-5, rtol=1e-4)
    g = jax.grad(_loss(f))(W)
    # <g, w> per invariant group, relative to ||g|| ||w|| of the group.
    dot = jnp.sum(g * W, axis=0).reshape(-1, group).sum(1)
    size = (jnp.linalg.norm(g.reshape(6, -1, group), axis=(0, 2)) *
            jnp.linalg.norm(W.reshape(6, -1, group), axis=(0, 2)))
    np.testing.assert_array_less(jnp.abs(dot), 1e-4 * size)
    if group > 1:
      # A finer rescaling (each unit on its own) does change the output, and
      # per-unit <g, w> is not zero.
      self.assertFalse(np.allclose(f(W * _scales(1)), f(W), atol=1e-3))
      per_unit = jnp.abs(jnp.sum(g * W, axis=0))
      self.assertGreater(float(jnp.max(per_unit / (jnp.linalg.norm(g, axis=0) *
                                                   jnp.linalg.norm(W, axis=0)))), 1e-2)

  def test_mean_only_is_positively_homogeneous(self):
    f = NORMALIZERS['mean_only']
    a = _scales(1)
    chex.assert_trees_all_close(f(W * a), f(W) * a, atol=1e-5, rtol=1e-5)

  def test_population_norm_is_linear_in_the_kernel(self):
    f = NORMALIZERS['population']
    b = (X @ W - 0.3) / jnp.sqrt(2.0 + 1e-5)
    chex.assert_trees_all_close(f(W), b, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(f(2.0 * W) + 0.3 / jnp.sqrt(2.0 + 1e-5),
                                2.0 * (f(W) + 0.3 / jnp.sqrt(2.0 + 1e-5)), atol=1e-5)
