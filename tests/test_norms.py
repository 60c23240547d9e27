"""bnjax.norms against flax.linen, numpy formulas and float64 references."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from bnjax import norms
from _helpers import dtype_context

TOL = dict(atol=1e-5, rtol=1e-5)

# (shape, feature axis): NHWC, (N, F), (N, T, F), and NCHW (feature axis 1).
LAYOUTS = (
    ('nhwc', (8, 6, 6, 16), -1),
    ('nf', (32, 16), -1),
    ('ntf', (8, 10, 16), -1),
    ('nchw', (8, 16, 6, 6), 1),
)


def _data(shape, axis, seed=0):
  kx, ks, kb, km, kv = jax.random.split(jax.random.key(seed), 5)
  f = shape[axis]
  x = 3.0 * jax.random.normal(kx, shape) + 1.5
  scale = 1.0 + 0.5 * jax.random.normal(ks, (f,))
  bias = jax.random.normal(kb, (f,))
  stats = norms.BatchStats(jax.random.normal(km, (f,)),
                           jax.random.uniform(kv, (f,), minval=0.5, maxval=4.0))
  return x, scale, bias, stats


def _flax_bn(x, scale, bias, stats, *, axis, training, momentum=0.99):
  variables = {'params': {'scale': scale, 'bias': bias},
               'batch_stats': {'mean': stats.mean, 'var': stats.var}}
  y, upd = nn.BatchNorm(use_running_average=not training, axis=axis,
                        momentum=momentum).apply(variables, x, mutable=['batch_stats'])
  return y, norms.BatchStats(upd['batch_stats']['mean'], upd['batch_stats']['var'])


class BatchNormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LAYOUTS)
  def test_training_matches_flax(self, shape, axis):
    x, scale, bias, stats = _data(shape, axis)
    fn = self.variant(lambda *a: norms.batch_norm(*a, training=True, momentum=0.9,
                                                   axis=axis))
    y, new = fn(x, scale, bias, stats)
    y_ref, new_ref = _flax_bn(x, scale, bias, stats, axis=axis, training=True,
                              momentum=0.9)
    chex.assert_trees_all_close(y, y_ref, **TOL)
    chex.assert_trees_all_close(new, new_ref, **TOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LAYOUTS)
  def test_inference_matches_flax(self, shape, axis):
    x, scale, bias, stats = _data(shape, axis)
    y, same = self.variant(lambda *a: norms.batch_norm(*a, training=False, axis=axis))(
        x, scale, bias, stats)
    y_ref, _ = _flax_bn(x, scale, bias, stats, axis=axis, training=False)
    chex.assert_trees_all_close(y, y_ref, **TOL)
    chex.assert_trees_all_close(same, stats)

  def test_gradients_match_flax(self):
    x, scale, bias, stats = _data((8, 6, 6, 16), -1)
    w = jax.random.normal(jax.random.key(9), x.shape)

    def ours(x, scale, bias):
      return jnp.sum(w * norms.batch_norm(x, scale, bias, training=True)[0] ** 2)

    def ref(x, scale, bias):
      return jnp.sum(w * _flax_bn(x, scale, bias, stats, axis=-1, training=True)[0] ** 2)

    chex.assert_trees_all_close(jax.grad(ours, (0, 1, 2))(x, scale, bias),
                                jax.grad(ref, (0, 1, 2))(x, scale, bias),
                                atol=1e-4, rtol=1e-4)

  def test_no_stats_returns_none(self):
    x, scale, bias, _ = _data((32, 16), -1)
    _, new = norms.batch_norm(x, scale, bias, training=True)
    self.assertIsNone(new)

  def test_bfloat16_with_large_mean(self):
    # bf16 spacing near 500 is 2; the spread (std 8) is 60x smaller than the
    # mean. Reference: float64 statistics of the very same bf16 values.
    x = (500.0 + 8.0 * jax.random.normal(jax.random.key(1), (256, 8))).astype(jnp.bfloat16)
    y, new = norms.batch_norm(x, training=True, stats=norms.init_batch_stats(8),
                              momentum=0.0)
    self.assertEqual(y.dtype, jnp.bfloat16)
    self.assertEqual(new.mean.dtype, jnp.float32)
    x64 = np.asarray(x.astype(jnp.float32), np.float64)
    ref = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, atol=3e-2)
    np.testing.assert_allclose(new.mean, x64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(new.var, x64.var(0), rtol=1e-4)
    self.assertLess(abs(float(np.std(np.asarray(y, np.float64))) - 1.0), 1e-2)

  def test_float32_mean_far_larger_than_spread(self):
    # E[x^2] - E[x]^2 in float32 cancels catastrophically here (mean 1e4,
    # std 1): the shifted statistics must still match float64.
    x = 1e4 + jax.random.normal(jax.random.key(2), (512, 4))
    y, _ = norms.batch_norm(x, training=True)
    x64 = np.asarray(x, np.float64)
    ref = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    np.testing.assert_allclose(y, ref, atol=2e-3)


class BatchNormVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LAYOUTS)
  def test_population_norm(self, shape, axis):
    # Output: flax BN in inference mode with the incoming stats; new stats:
    # flax BN's training update.
    x, scale, bias, stats = _data(shape, axis)
    y, new = self.variant(lambda *a: norms.population_norm(*a, training=True, axis=axis))(
        x, scale, bias, stats)
    y_ref, _ = _flax_bn(x, scale, bias, stats, axis=axis, training=False)
    _, new_ref = _flax_bn(x, scale, bias, stats, axis=axis, training=True)
    chex.assert_trees_all_close(y, y_ref, **TOL)
    chex.assert_trees_all_close(new, new_ref, **TOL)

  def test_population_norm_has_no_gradient_through_stats(self):
    x, scale, bias, stats = _data((32, 16), -1)
    g = jax.grad(lambda x: jnp.sum(norms.population_norm(
        x, scale, bias, stats, training=True)[0]))(x)
    # d/dx of sum((x - m) * scale / sqrt(v + eps)) is constant per feature.
    expected = jnp.broadcast_to(scale / jnp.sqrt(stats.var + 1e-5), x.shape)
    chex.assert_trees_all_close(g, expected, **TOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LAYOUTS)
  def test_mean_only_and_variance_only(self, shape, axis):
    x, scale, bias, stats = _data(shape, axis)
    red = tuple(a for a in range(len(shape)) if a != axis % len(shape))
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    x64 = np.asarray(x, np.float64)
    s, b = np.reshape(scale, bshape), np.reshape(bias, bshape)
    mu, var = x64.mean(red), x64.var(red)

    y, new = self.variant(lambda *a: norms.mean_only_batch_norm(
        *a, training=True, momentum=0.9, axis=axis))(x, scale, bias, stats)
    np.testing.assert_allclose(y, (x64 - mu.reshape(bshape)) * s + b, **TOL)
    np.testing.assert_allclose(new.mean, 0.9 * np.asarray(stats.mean) + 0.1 * mu, **TOL)
    chex.assert_trees_all_close(new.var, stats.var)

    y, new = self.variant(lambda *a: norms.variance_only_batch_norm(
        *a, training=True, momentum=0.9, axis=axis))(x, scale, bias, stats)
    np.testing.assert_allclose(y, x64 / np.sqrt(var.reshape(bshape) + 1e-5) * s + b, **TOL)
    np.testing.assert_allclose(new.var, 0.9 * np.asarray(stats.var) + 0.1 * var, **TOL)
    chex.assert_trees_all_close(new.mean, stats.mean)

    y, _ = norms.mean_only_batch_norm(x, scale, bias, stats, training=False, axis=axis)
    np.testing.assert_allclose(y, (x64 - np.reshape(stats.mean, bshape)) * s + b, **TOL)
    y, _ = norms.variance_only_batch_norm(x, scale, bias, stats, training=False, axis=axis)
    np.testing.assert_allclose(
        y, x64 / np.sqrt(np.reshape(stats.var, bshape) + 1e-5) * s + b, **TOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LAYOUTS)
  def test_ghost_matches_flax_per_virtual_batch(self, shape, axis):
    x, scale, bias, stats = _data(shape, axis)
    vbs = shape[0] // 4
    y, new = self.variant(lambda *a: norms.ghost_batch_norm(
        *a, training=True, virtual_batch_size=vbs, axis=axis))(x, scale, bias, stats)
    chunks = [_flax_bn(x[i:i + vbs], scale, bias, stats, axis=axis, training=True)
              for i in range(0, shape[0], vbs)]
    chex.assert_trees_all_close(y, jnp.concatenate([c[0] for c in chunks]), **TOL)
    mean_of_updates = jax.tree_util.tree_map(lambda *s: jnp.mean(jnp.stack(s), 0),
                                             *[c[1] for c in chunks])
    chex.assert_trees_all_close(new, mean_of_updates, **TOL)
    y, _ = norms.ghost_batch_norm(x, scale, bias, stats, training=False,
                                  virtual_batch_size=vbs, axis=axis)
    chex.assert_trees_all_close(y, _flax_bn(x, scale, bias, stats, axis=axis,
                                            training=False)[0], **TOL)


class PerExampleNormsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LAYOUTS)
  def test_layer_norm(self, shape, axis):
    x, scale, bias, _ = _data(shape, axis)
    if axis == -1:
      red, module = -1, nn.LayerNorm()
    else:  # NCHW: statistics over C, H, W; affine parameters per channel.
      red, module = (1, 2, 3), nn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=1)
    y = self.variant(lambda *a: norms.layer_norm(*a, axis=axis, reduction_axes=red))(
        x, scale, bias)
    y_ref = module.apply({'params': {'scale': scale, 'bias': bias}}, x)
    chex.assert_trees_all_close(y, y_ref, **TOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LAYOUTS)
  def test_group_norm(self, shape, axis):
    x, scale, bias, _ = _data(shape, axis)
    y = self.variant(lambda *a: norms.group_norm(*a, num_groups=4, axis=axis))(
        x, scale, bias)
    # flax.linen.GroupNorm takes features last only: move them there and back.
    y_ref = nn.GroupNorm(num_groups=4).apply(
        {'params': {'scale': scale, 'bias': bias}}, jnp.moveaxis(x, axis, -1))
    chex.assert_trees_all_close(y, jnp.moveaxis(y_ref, -1, axis), **TOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[l for l in LAYOUTS if len(l[1]) >= 3])
  def test_instance_norm(self, shape, axis):
    x, scale, bias, _ = _data(shape, axis)
    y = self.variant(lambda *a: norms.instance_norm(*a, axis=axis))(x, scale, bias)
    y_ref = nn.InstanceNorm(feature_axes=axis).apply(
        {'params': {'scale': scale, 'bias': bias}}, x)
    chex.assert_trees_all_close(y, y_ref, **TOL)

  @parameterized.product(name=('layer_norm', 'group_norm', 'instance_norm'),
                         fast=(True, False))
  def test_fast_variance_flag_matches_flax(self, name, fast):
    # A large offset (|mean| = 300 std) separates the two variance formulas:
    # each must give flax's numbers (forward and gradients) for the same flag,
    # and only the two-pass one the float64 reference.
    shape = (4, 5, 5, 8)
    x = 300.0 + jax.random.normal(jax.random.key(0), shape)
    r = jax.random.normal(jax.random.key(1), shape)
    scale, bias = 1.0 + 0.1 * jnp.arange(8.0), 0.1 * jnp.arange(8.0)
    ours = {'layer_norm': lambda *a: norms.layer_norm(*a, use_fast_variance=fast),
            'group_norm': lambda *a: norms.group_norm(*a, num_groups=4,
                                                      use_fast_variance=fast),
            'instance_norm': lambda *a: norms.instance_norm(*a, use_fast_variance=fast)}
    module = {'layer_norm': nn.LayerNorm(use_fast_variance=fast),
              'group_norm': nn.GroupNorm(num_groups=4, use_fast_variance=fast),
              'instance_norm': nn.InstanceNorm(use_fast_variance=fast)}[name]
    theirs = lambda x, s, b: module.apply({'params': {'scale': s, 'bias': b}}, x)
    loss = lambda f: jax.jit(jax.value_and_grad(
        lambda *a: jnp.sum(f(*a) * r), argnums=(0, 1, 2)))
    chex.assert_trees_all_close(loss(ours[name])(x, scale, bias),
                                loss(theirs)(x, scale, bias), atol=1e-4, rtol=1e-4)
    xg = np.asarray(x, np.float64)
    grouped = xg.reshape(shape[:-1] + ((4, 2) if name == 'group_norm' else (8, 1)))
    red = {'layer_norm': (3, 4), 'group_norm': (1, 2, 4), 'instance_norm': (1, 2)}[name]
    centred = grouped - grouped.mean(red, keepdims=True)
    exact = (centred / np.sqrt((centred ** 2).mean(red, keepdims=True) + 1e-6)
             ).reshape(shape) * np.asarray(scale) + np.asarray(bias)
    error = float(np.max(np.abs(np.asarray(ours[name](x, scale, bias)) - exact)))
    if fast:
      self.assertGreater(error, 1e-2)
    else:
      self.assertLess(error, 1e-3)

  def test_fast_variance_flag_is_a_bool(self):
    with self.assertRaisesRegex(TypeError, 'use_fast_variance must be a bool'):
      norms.group_norm(jnp.ones((2, 4)), num_groups=2, use_fast_variance='no')

  def test_no_affine_keeps_input_dtype(self):
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 8)).astype(jnp.bfloat16)
    for y in (norms.layer_norm(x), norms.group_norm(x, num_groups=2),
              norms.instance_norm(x), norms.batch_norm(x, training=True)[0]):
      self.assertEqual(y.dtype, jnp.bfloat16)
    self.assertEqual(norms.layer_norm(x, jnp.ones(8)).dtype, jnp.float32)


class WeightReparamTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_weight_norm_matches_flax(self):
    v = jax.random.normal(jax.random.key(0), (5, 7))
    g = jax.random.uniform(jax.random.key(1), (7,), minval=0.5, maxval=2.0)
    x = jax.random.normal(jax.random.key(2), (3, 5))
    ref = nn.WeightNorm(nn.Dense(7, use_bias=False)).apply(
        {'params': {'layer_instance': {'kernel': v}, 'layer_instance/kernel/scale': g}}, x)
    w = self.variant(norms.weight_norm)(v, g)
    chex.assert_trees_all_close(x @ w, ref, **TOL)
    chex.assert_trees_all_close(jnp.linalg.norm(w, axis=0), g, **TOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_weight_standardize_formula(self):
    w = 2.0 + jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    ws = self.variant(norms.weight_standardize)(w)
    w64 = np.asarray(w, np.float64)
    ref = (w64 - w64.mean((0, 1, 2))) / np.sqrt(w64.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(ws, ref, **TOL)
    w_first = np.moveaxis(w64, -1, 0)  # units on axis 0
    np.testing.assert_allclose(norms.weight_standardize(jnp.asarray(w_first, jnp.float32),
                                                        axis=0),
                               np.moveaxis(ref, -1, 0), **TOL)


class FoldBatchNormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(True, False)
  def test_conv_fold_equals_conv_then_inference_bn(self, with_bias):
    kx, kk, kb = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (4, 9, 9, 3))
    kernel = jax.random.normal(kk, (3, 3, 3, 16))
    bias = jax.random.normal(kb, (16,)) if with_bias else None
    _, scale, bn_bias, stats = _data((8, 16), -1, seed=3)

    def conv(x, k, b):
      y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      return y if b is None else y + b

    ref, _ = norms.batch_norm(conv(x, kernel, bias), scale, bn_bias, stats, training=False)
    k2, b2 = self.variant(norms.fold_batch_norm)(kernel, bias, scale, bn_bias, stats)
    chex.assert_trees_all_close(conv(x, k2, b2), ref, atol=1e-4, rtol=1e-5)

  def test_dense_fold_without_bn_affine(self):
    x = jax.random.normal(jax.random.key(0), (6, 5))
    kernel = jax.random.normal(jax.random.key(1), (5, 16))
    _, _, bias, stats = _data((8, 16), -1, seed=4)
    ref, _ = norms.batch_norm(x @ kernel + bias, stats=stats, training=False)
    k2, b2 = norms.fold_batch_norm(kernel, bias, None, None, stats)
    chex.assert_trees_all_close(x @ k2 + b2, ref, **TOL)


def _ref_standardize(x, red, eps):
  return (x - x.mean(red, keepdims=True)) / np.sqrt(x.var(red, keepdims=True) + eps)


def _ghost_ref(x, eps):
  return np.concatenate([_ref_standardize(g, (0, 1), eps) for g in np.split(x, 2)])


def _group_ref(x, eps):
  g = x.reshape(x.shape[:-1] + (2, x.shape[-1] // 2))
  return _ref_standardize(g, (1, 3), eps).reshape(x.shape)


# name -> (bnjax call on (x, stats), float64 NumPy formula on (x, stats)); x is (4, 3, 8).
_DTYPE_SWEEP = {
    'batch': (lambda x, s: norms.batch_norm(x, stats=s, training=True)[0],
              lambda x, s: _ref_standardize(x, (0, 1), 1e-5)),
    'batch_inference': (lambda x, s: norms.batch_norm(x, stats=s, training=False)[0],
                        lambda x, s: (x - s.mean) / np.sqrt(s.var + 1e-5)),
    'population': (lambda x, s: norms.population_norm(x, stats=s, training=True)[0],
                   lambda x, s: (x - s.mean) / np.sqrt(s.var + 1e-5)),
    'mean_only': (lambda x, s: norms.mean_only_batch_norm(x, training=True)[0],
                  lambda x, s: x - x.mean((0, 1))),
    'variance_only': (lambda x, s: norms.variance_only_batch_norm(x, training=True)[0],
                      lambda x, s: x / np.sqrt(x.var((0, 1)) + 1e-5)),
    'ghost': (lambda x, s: norms.ghost_batch_norm(x, training=True,
                                                  virtual_batch_size=2)[0],
              lambda x, s: _ghost_ref(x, 1e-5)),
    'layer': (lambda x, s: norms.layer_norm(x), lambda x, s: _ref_standardize(x, -1, 1e-6)),
    'group': (lambda x, s: norms.group_norm(x, num_groups=2),
              lambda x, s: _group_ref(x, 1e-6)),
    'instance': (lambda x, s: norms.instance_norm(x),
                 lambda x, s: _ref_standardize(x, 1, 1e-6)),
    'weight_norm': (lambda x, s: norms.weight_norm(x[0]),
                    lambda x, s: x[0] / np.linalg.norm(x[0], axis=0)),
    'weight_standardize': (lambda x, s: norms.weight_standardize(x[0]),
                           lambda x, s: _ref_standardize(x[0], 0, 1e-5)),
}


class DtypeSweepTest(chex.TestCase):
  """Every norm in float32, bfloat16 and float64 (x64 enabled), with and without
  jit, against its formula computed in float64 on the same (rounded) inputs."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=tuple(_DTYPE_SWEEP),
                         dtype=(jnp.float32, jnp.bfloat16, jnp.float64))
  def test_norm_against_float64_formula(self, name, dtype):
    fn, ref = _DTYPE_SWEEP[name]
    rng = np.random.default_rng(0)
    with dtype_context(dtype):
      x = jnp.asarray(2.0 * rng.standard_normal((4, 3, 8)) + 1.0, dtype)
      stats_dtype = jnp.promote_types(dtype, jnp.float32)  # running stats as stored
      stats = norms.BatchStats(jnp.asarray(rng.standard_normal(8), stats_dtype),
                               jnp.asarray(rng.uniform(0.5, 2.0, 8), stats_dtype))
      y = self.variant(fn)(x, stats)
      self.assertEqual(y.dtype, dtype)
      want = ref(np.asarray(x, np.float64), norms.BatchStats(
          *(np.asarray(a, np.float64) for a in stats)))
      tol = {jnp.float64: 1e-10, jnp.float32: 2e-5, jnp.bfloat16: 4e-2}[dtype]
      chex.assert_trees_all_close(np.asarray(y, np.float64), want, atol=tol, rtol=tol)
