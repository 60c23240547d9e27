"""bnjax.layers against flax.linen modules and hand formulas."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from bnjax import folding, layers, norms

TOL = dict(atol=1e-5, rtol=1e-5)
X = 2.0 * jax.random.normal(jax.random.key(0), (8, 6, 6, 16)) + 1.0
X_NCHW = jnp.moveaxis(X, -1, 1)


def _shapes(tree):
  return jax.tree_util.tree_map(jnp.shape, tree)


def _perturb(params, seed=7):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


class BatchNormModuleTest(chex.TestCase):

  @parameterized.named_parameters(('nhwc', X, -1), ('nchw', X_NCHW, 1))
  def test_matches_flax_batch_norm(self, x, axis):
    ours, ref = layers.BatchNorm(axis=axis, momentum=0.9), nn.BatchNorm(axis=axis,
                                                                        momentum=0.9)
    v = ours.init(jax.random.key(0), x, use_running_average=False)
    chex.assert_trees_all_equal(v, ref.init(jax.random.key(0), x, use_running_average=False))
    v = {**v, 'params': _perturb(v['params'])}
    train = jax.jit(lambda v, x, m: m.apply(v, x, use_running_average=False,
                                            mutable=['batch_stats']), static_argnums=2)
    (y, upd), (y_ref, upd_ref) = train(v, x, ours), train(v, x, ref)
    chex.assert_trees_all_close(y, y_ref, **TOL)
    chex.assert_trees_all_close(upd, upd_ref, **TOL)
    v = {**v, **upd}
    chex.assert_trees_all_close(ours.apply(v, x, use_running_average=True),
                                ref.apply(v, x, use_running_average=True), **TOL)

  @parameterized.named_parameters(
      ('population', layers.PopulationNorm(), norms.population_norm, {}),
      ('mean_only', layers.MeanOnlyBatchNorm(), norms.mean_only_batch_norm, {}),
      ('variance_only', layers.VarianceOnlyBatchNorm(), norms.variance_only_batch_norm, {}),
      ('ghost', layers.GhostBatchNorm(virtual_batch_size=2), norms.ghost_batch_norm,
       dict(virtual_batch_size=2)),
  )
  def test_variants_wire_their_function(self, module, fn, kwargs):
    v = module.init(jax.random.key(0), X, use_running_average=False)
    chex.assert_trees_all_equal_shapes(
        v, nn.BatchNorm().init(jax.random.key(0), X, use_running_average=False))
    v = {'params': _perturb(v['params']),
         'batch_stats': _perturb(v['batch_stats'], seed=8)}
    v['batch_stats']['var'] = jnp.abs(v['batch_stats']['var'])
    stats = norms.BatchStats(v['batch_stats']['mean'], v['batch_stats']['var'])
    y, upd = module.apply(v, X, use_running_average=False, mutable=['batch_stats'])
    y_ref, new_ref = fn(X, v['params']['scale'], v['params']['bias'], stats,
                        training=True, **kwargs)
    chex.assert_trees_all_close(y, y_ref, **TOL)
    chex.assert_trees_all_close((upd['batch_stats']['mean'], upd['batch_stats']['var']),
                                tuple(new_ref), **TOL)

  def test_forward_mode_through_module_without_fused_backward(self):
    module = layers.BatchNorm(use_running_average=False, fused_backward=False)
    v = module.init(jax.random.key(0), X)
    f = lambda x: module.apply(v, x, mutable=['batch_stats'])[0]
    t = jax.random.normal(jax.random.key(1), X.shape)
    _, out = jax.jvp(f, (X,), (t,))
    _, vjp = jax.vjp(f, X)
    # <J t, u> == <t, J^T u>: forward mode agrees with reverse mode.
    u = jax.random.normal(jax.random.key(2), X.shape)
    self.assertAlmostEqual(float(jnp.vdot(out, u)), float(jnp.vdot(t, vjp(u)[0])),
                           delta=1e-3 * float(jnp.linalg.norm(out) * jnp.linalg.norm(u)))

  def test_init_does_not_update_running_stats(self):
    v = layers.BatchNorm().init(jax.random.key(0), X, use_running_average=False)
    chex.assert_trees_all_equal(v['batch_stats'], {'mean': jnp.zeros(16),
                                                   'var': jnp.ones(16)})

  def test_frozen_batch_norm_is_a_trainable_affine_map(self):
    module = layers.BatchNorm(frozen=True)
    v = layers.BatchNorm().init(jax.random.key(0), X, use_running_average=False)
    v = {'params': _perturb(v['params']), 'batch_stats': {'mean': jnp.full(16, 0.5),
                                                          'var': jnp.full(16, 3.0)}}
    y, upd = module.apply(v, X, use_running_average=False, mutable=['batch_stats'])
    s, b = v['params']['scale'], v['params']['bias']
    chex.assert_trees_all_close(y, (X - 0.5) / jnp.sqrt(3.0 + 1e-5) * s + b, **TOL)
    chex.assert_trees_all_equal(upd['batch_stats'], v['batch_stats'])
    g = jax.grad(lambda p: jnp.sum(module.apply({**v, 'params': p}, X) ** 2))(v['params'])
    self.assertGreater(float(jnp.abs(g['scale']).min()), 0.0)

  def test_pmap_axis_name_matches_flax(self):
    d = 4
    x = X.reshape((d, 2) + X.shape[1:])
    ours, ref = layers.BatchNorm(axis_name='b'), nn.BatchNorm(axis_name='b')
    v = ours.init(jax.random.key(0), X[:2], use_running_average=False)
    v = {**v, 'params': _perturb(v['params'])}

    def run(m):
      return jax.pmap(lambda x: m.apply(v, x, use_running_average=False,
                                        mutable=['batch_stats']), axis_name='b')(x)

    chex.assert_trees_all_close(run(ours), run(ref), **TOL)
    # ... and both equal one device on the whole batch.
    y_one, _ = layers.BatchNorm().apply(v, X, use_running_average=False,
                                        mutable=['batch_stats'])
    chex.assert_trees_all_close(run(ours)[0].reshape(X.shape), y_one, **TOL)


class PerExampleModuleTest(chex.TestCase):

  @parameterized.named_parameters(
      ('layer', layers.LayerNorm(), nn.LayerNorm(), X),
      ('layer_nchw', layers.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=1),
       nn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=1), X_NCHW),
      ('group', layers.GroupNorm(num_groups=4), nn.GroupNorm(num_groups=4), X),
      ('instance', layers.InstanceNorm(), nn.InstanceNorm(), X),
      ('instance_nchw', layers.InstanceNorm(feature_axes=1), nn.InstanceNorm(feature_axes=1),
       X_NCHW),
  )
  def test_matches_flax(self, ours, ref, x):
    v = ours.init(jax.random.key(0), x)
    chex.assert_trees_all_equal(v, ref.init(jax.random.key(0), x))
    v = {'params': _perturb(v['params'])}
    chex.assert_trees_all_close(ours.apply(v, x), ref.apply(v, x), **TOL)

  def test_without_affine_has_no_params(self):
    v = layers.GroupNorm(num_groups=4, use_scale=False, use_bias=False).init(
        jax.random.key(0), X)
    self.assertEqual(jax.tree_util.tree_leaves(v), [])


class KernelReparamTest(chex.TestCase):

  def test_weight_norm_matches_flax(self):
    x = jax.random.normal(jax.random.key(1), (4, 5))
    ours = layers.WeightNorm(nn.Dense(7))
    v = ours.init(jax.random.key(0), x)
    self.assertEqual(_shapes(v), {'params': {'layer_instance': {'kernel': (5, 7),
                                                                'bias': (7,)},
                                             'layer_instance/kernel/scale': (7,)}})
    v = {'params': _perturb(v['params'])}
    ref = nn.WeightNorm(nn.Dense(7)).apply(v, x)
    chex.assert_trees_all_close(ours.apply(v, x), ref, **TOL)

  def test_weight_standardized_conv(self):
    ours = layers.WeightStandardization(nn.Conv(8, (3, 3), use_bias=False))
    v = ours.init(jax.random.key(0), X)
    k = np.asarray(v['params']['layer_instance']['kernel'], np.float64)
    k_std = (k - k.mean((0, 1, 2))) / np.sqrt(k.var((0, 1, 2)) + 1e-5)
    ref = nn.Conv(8, (3, 3), use_bias=False).apply(
        {'params': {'kernel': jnp.asarray(k_std, jnp.float32)}}, X)
    chex.assert_trees_all_close(ours.apply(v, X), ref, atol=1e-4, rtol=1e-5)

  def test_weight_norm_is_invariant_to_kernel_scale(self):
    ours = layers.WeightNorm(nn.Conv(8, (3, 3)))
    v = ours.init(jax.random.key(0), X)
    v2 = jax.tree_util.tree_map(lambda a: a, v)
    v2['params']['layer_instance']['kernel'] = 5.0 * v['params']['layer_instance']['kernel']
    chex.assert_trees_all_close(ours.apply(v2, X), ours.apply(v, X), **TOL)


class Net(nn.Module):
  """Conv(no bias)->bnjax BN, Conv->flax BN, Conv->LayerNorm, Conv->relu->BN, Dense->mean-only."""

  @nn.compact
  def __call__(self, x, train: bool):
    ra = not train
    x = nn.relu(layers.BatchNorm(use_running_average=ra)(nn.Conv(8, (3, 3), use_bias=False)(x)))
    x = nn.relu(nn.BatchNorm(use_running_average=ra)(nn.Conv(8, (3, 3))(x)))
    x = layers.LayerNorm()(nn.Conv(8, (3, 3))(x))
    x = layers.BatchNorm(use_running_average=ra)(nn.relu(nn.Conv(8, (1, 1))(x)))
    x = nn.Dense(4)(x.mean((1, 2)))
    return layers.MeanOnlyBatchNorm(use_running_average=ra, use_bias=False)(x)


class FoldTest(chex.TestCase):

  def _trained(self, model, x):
    v = model.init(jax.random.key(1), x, train=True)
    for i in range(3):
      _, upd = model.apply(v, x * (i + 1) + i, train=True, mutable=['batch_stats'])
      v = {**v, **upd}
    return {**v, 'params': _perturb(v['params'])}

  def test_fold_keeps_inference_outputs(self):
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
    model = Net()
    v = self._trained(model, x)
    folded, pairs = folding.fold_batch_norms(model, v, x, train=False)
    self.assertEqual(pairs, [(('Conv_0',), ('BatchNorm_0',)),
                             (('Conv_1',), ('BatchNorm_1',)),
                             (('Dense_0',), ('MeanOnlyBatchNorm_0',))])
    chex.assert_trees_all_close(model.apply(folded, x, train=False),
                                model.apply(v, x, train=False), atol=1e-5, rtol=1e-5)
    # Untouched: the LayerNorm's conv and the BN after a relu.
    for name in ('Conv_2', 'Conv_3', 'BatchNorm_2', 'LayerNorm_0'):
      chex.assert_trees_all_equal(folded['params'][name], v['params'][name])

  def test_folded_dense_replaces_dense_plus_bn(self):
    class DenseBN(nn.Module):
      @nn.compact
      def __call__(self, x, train: bool):
        return layers.BatchNorm(use_running_average=not train)(nn.Dense(6)(x))

    x = jax.random.normal(jax.random.key(0), (32, 5))
    v = self._trained(DenseBN(), x)
    folded, _ = folding.fold_batch_norms(DenseBN(), v, x, train=False)
    plain = nn.Dense(6).apply({'params': folded['params']['Dense_0']}, x)
    chex.assert_trees_all_close(plain, DenseBN().apply(v, x, train=False), **TOL)
