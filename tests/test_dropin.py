"""bnjax's normalizers as drop-ins for flax's: the same arguments, variables and bits.

What flax's own normalization tests check (tests/linen/linen_test.py
NormalizationTest, tests/nnx/nn/normalization_test.py), asked of bnjax's
modules against flax's on the same variables: every argument, dtypes,
masks, and bit-equal outputs and running statistics (the arithmetic is the
same, so equality, not closeness; NaN where flax gives NaN).
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnjax import layers
from bnjax import nnx as bnx


def _equal(a, b):
  flat_a, flat_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  for u, w in zip(flat_a, flat_b):
    assert jnp.result_type(u) == jnp.result_type(w)
    np.testing.assert_array_equal(np.asarray(u), np.asarray(w))  # NaN equals NaN


X = 2.0 * jax.random.normal(jax.random.key(0), (8, 3, 4, 6)) + 1.0
MASKS = {'none': None,
         'features': np.array([True, False, True, True, False, True]),
         'positions': np.asarray(jax.random.bernoulli(jax.random.key(3), 0.7, X.shape))}
DTYPES = [(None, jnp.float32), (jnp.float16, jnp.float32), (jnp.float32, jnp.float16),
          (jnp.float16, jnp.float16)]


def _linen_pairs(dtype, param_dtype, fast):
  common = dict(dtype=dtype, param_dtype=param_dtype, use_fast_variance=fast)
  return {
      'batch': (layers.BatchNorm(use_running_average=False, **common),
                nn.BatchNorm(use_running_average=False, **common)),
      'layer': (layers.LayerNorm(**common), nn.LayerNorm(**common)),
      'layer_nchw': (layers.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=1, **common),
                     nn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=1, **common)),
      'group': (layers.GroupNorm(3, **common), nn.GroupNorm(3, **common)),
      'group_size': (layers.GroupNorm(num_groups=None, group_size=2, **common),
                     nn.GroupNorm(num_groups=None, group_size=2, **common)),
      'group_axes': (layers.GroupNorm(2, reduction_axes=(2, 3), **common),
                     nn.GroupNorm(2, reduction_axes=(2, 3), **common)),
      'instance': (layers.InstanceNorm(**common), nn.InstanceNorm(**common)),
      'instance_two_axes': (layers.InstanceNorm(feature_axes=(1, 3), **common),
                            nn.InstanceNorm(feature_axes=(1, 3), **common)),
  }


@pytest.mark.parametrize('name', list(_linen_pairs(None, jnp.float32, True)))
def test_linen_bit_equal_to_flax(name):
  for (dtype, param_dtype), fast, mask in itertools.product(DTYPES, (True, False), MASKS):
    ours, ref = _linen_pairs(dtype, param_dtype, fast)[name]
    if mask == 'features' and name in ('layer_nchw', 'instance_two_axes'):
      continue  # a mask over the last axis only: nothing to compare there
    variables = ref.init(jax.random.key(1), X)
    _equal(ours.init(jax.random.key(1), X), variables)
    got = ours.apply(variables, X, mask=MASKS[mask], mutable=['batch_stats'])
    want = ref.apply(variables, X, mask=MASKS[mask], mutable=['batch_stats'])
    _equal(got, want)


def test_linen_batch_norm_inference_and_positional_arguments():
  # flax's field order: BatchNorm(use_running_average, axis, momentum, epsilon, ...),
  # GroupNorm(num_groups, group_size, epsilon, ...), LayerNorm(epsilon, ...).
  for ours, ref in ((layers.BatchNorm(True, -1, 0.9, 1e-3), nn.BatchNorm(True, -1, 0.9, 1e-3)),
                    (layers.GroupNorm(2, None, 1e-3), nn.GroupNorm(2, None, 1e-3)),
                    (layers.LayerNorm(1e-3), nn.LayerNorm(1e-3)),
                    (layers.InstanceNorm(1e-3), nn.InstanceNorm(1e-3))):
    variables = ref.init(jax.random.key(1), X)
    variables = jax.tree_util.tree_map(lambda v: v + 0.25, variables)
    _equal(ours.apply(variables, X), ref.apply(variables, X))


def test_linen_axis_index_groups_pool_statistics_like_flax():
  """4 host devices in 2 groups: each group's statistics pooled, as flax's."""
  n = jax.local_device_count()
  if n < 4:
    pytest.skip('needs 4 devices (tests/conftest.py sets them)')
  x = X.reshape((4, 2) + X.shape[1:])
  groups = [[0, 1], [2, 3]]
  for ours, ref in (
      (layers.BatchNorm(use_running_average=False, axis_name='d', axis_index_groups=groups),
       nn.BatchNorm(use_running_average=False, axis_name='d', axis_index_groups=groups)),
      (layers.LayerNorm(axis_name='d', axis_index_groups=groups, reduction_axes=(0, 3)),
       nn.LayerNorm(axis_name='d', axis_index_groups=groups, reduction_axes=(0, 3)))):
    variables = ref.init(jax.random.key(1), x[0])
    run = lambda m: jax.pmap(lambda v: m.apply(variables, v, mutable=['batch_stats']),
                             axis_name='d', devices=jax.local_devices()[:4])(x)
    _equal(run(ours), run(ref))


def test_refuses_only_what_flax_refuses():
  with pytest.raises(ValueError, match='cannot include the leading dimension'):
    layers.InstanceNorm(feature_axes=(0, 3)).init(jax.random.key(0), X)
  with pytest.raises(ValueError, match='exactly one of num_groups and group_size'):
    layers.GroupNorm(num_groups=2, group_size=3).init(jax.random.key(0), X)
  with pytest.raises(ValueError, match='must include the feature axis'):
    layers.GroupNorm(2, reduction_axes=(1, 2)).init(jax.random.key(0), X)
  with pytest.raises(ValueError, match='mask has shape \\(5,\\), which does not broadcast'):
    layers.LayerNorm().init(jax.random.key(0), X, mask=np.ones(5, bool))
  with pytest.raises(ValueError, match='mask: GhostBatchNorm takes no mask'):
    layers.GhostBatchNorm(use_running_average=False, virtual_batch_size=4).init(
        jax.random.key(0), X, mask=MASKS['features'])
  # What flax allows: an instance norm of rank 2 (no spatial axis: the bias) and a
  # layer norm over every axis of one example.
  for ours, ref, x in ((layers.InstanceNorm(), nn.InstanceNorm(), X[:, 0, 0]),
                       (layers.LayerNorm(reduction_axes=(0, 1)), nn.LayerNorm(
                           reduction_axes=(0, 1)), X[0, 0])):
    variables = ref.init(jax.random.key(1), x)
    _equal(ours.apply(variables, x), ref.apply(variables, x))


def _nnx_pair(name, dtype, param_dtype, fast, promote):
  kw = dict(dtype=dtype, param_dtype=param_dtype, use_fast_variance=fast,
            rngs=nnx.Rngs(0), **({} if promote else {'promote_dtype': lambda x, **_: x}))
  make = {'batch': lambda m: m.BatchNorm(6, use_running_average=False, **kw),
          'layer': lambda m: m.LayerNorm(6, **kw),
          'group': lambda m: m.GroupNorm(6, num_groups=3, **kw),
          'group_size': lambda m: m.GroupNorm(6, num_groups=None, group_size=2, **kw),
          'instance': lambda m: m.InstanceNorm(6, **kw)}[name]
  return make(bnx), make(nnx)


@pytest.mark.parametrize('name', ['batch', 'layer', 'group', 'group_size', 'instance'])
def test_nnx_bit_equal_to_flax_nnx(name):
  """With flax.nnx's default promote_dtype and with linen's (identity), every
  dtype and mask: the same outputs and, for batch norm, running statistics."""
  for (dtype, param_dtype), fast, mask, promote in itertools.product(
      DTYPES, (True, False), MASKS, (True, False)):
    ours, ref = _nnx_pair(name, dtype, param_dtype, fast, promote)
    _equal(nnx.state(ours), nnx.state(ref))
    _equal(ours(X, mask=MASKS[mask]), ref(X, mask=MASKS[mask]))
    _equal(nnx.state(ours), nnx.state(ref))


@pytest.mark.parametrize('masked', [False, True])
def test_complex_inputs_as_flax(masked):
  """flax normalizes a complex input (complex mean, variance of |x|); so does
  bnjax's BatchNorm with flax's statistics, to the bit, running mean complex."""
  x = jax.random.normal(jax.random.key(1), (4, 3, 2), dtype=jnp.complex64)
  mask = jax.random.bernoulli(jax.random.key(2), 0.6, (4, 3, 1)) if masked else None
  if masked:
    x = jnp.where(mask, x, jnp.nan)
  for fast in (True, False):
    ours, ref = (m(momentum=0.9, use_running_average=False, dtype=jnp.complex64,
                   use_fast_variance=fast) for m in (layers.BatchNorm, nn.BatchNorm))
    variables = ref.init(jax.random.key(3), x, mask=mask)
    got = ours.apply(variables, x, mask=mask, mutable=['batch_stats'])
    _equal(got, ref.apply(variables, x, mask=mask, mutable=['batch_stats']))
    assert got[1]['batch_stats']['mean'].dtype == jnp.complex64
  with pytest.raises(TypeError, match='x is complex: .*pass use_fast_variance=True or False'):
    layers.BatchNorm(use_running_average=False, use_fast_variance=None).init(
        jax.random.key(0), x)


class _Wrapping(nn.Module):
  """flax's WeightNorm test shapes: a layer bound beside the wrapper, one
  adopted by it, a Conv, attention, and a wrapped module with layers inside."""
  weight_norm: type
  kwargs: dict

  @nn.compact
  def __call__(self, x):
    wn = lambda layer, **k: self.weight_norm(layer, **self.kwargs, **k)
    h = wn(nn.Dense(6))(x.reshape(x.shape[0], -1))
    h = wn(nn.Dense(6, parent=None), name='adopted')(h)
    y = wn(nn.Conv(4, (2, 2)))(x)
    a = wn(nn.MultiHeadDotProductAttention(2, qkv_features=4))(y[:, 0], y[:, 1])
    return h.sum() + a.sum() + wn(_Block(parent=None))(h).sum()


class _Block(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(nn.Dense(3)(x))


WN_SETTINGS = {
    'default': {},
    'feature_axes_tuple': dict(feature_axes=(-2, -1)),
    'feature_axes_none': dict(feature_axes=None),
    'filter_bias': dict(variable_filter={'bias'}),
    'filter_all': dict(variable_filter=None),
    'filter_module': dict(variable_filter={'Dense_0', 'key'}),
    'no_scale': dict(use_scale=False),
    'scale_init': dict(scale_init=nn.initializers.constant(0.5), epsilon=1e-3),
    'dtypes': dict(dtype=jnp.float16, param_dtype=jnp.float16),
}


@pytest.mark.parametrize('setting', list(WN_SETTINGS))
def test_linen_weight_norm_names_and_bits_equal_flax(setting):
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 5))
  ours, theirs = (_Wrapping(wn, WN_SETTINGS[setting]) for wn in
                  (layers.WeightNorm, nn.WeightNorm))
  v = theirs.init(jax.random.key(0), x)
  assert (jax.tree_util.tree_map(jnp.shape, ours.init(jax.random.key(0), x)) ==
          jax.tree_util.tree_map(jnp.shape, v))
  gains = jax.tree_util.tree_leaves_with_path(v['params'])
  v = {'params': jax.tree_util.tree_map(  # gains away from their initial value
      lambda w: w * 1.5 - 0.25, v['params'])}
  assert any(str(p[-1].key).endswith('/scale') for p, _ in gains) == (setting != 'no_scale')
  # Compiled: op by op, attention's float16 backward alone takes seconds.
  value_and_grad = lambda m: jax.jit(jax.value_and_grad(
      lambda p: m.apply({'params': p}, x)))(v['params'])
  _equal(value_and_grad(ours), value_and_grad(theirs))


@pytest.mark.parametrize('dtype,param_dtype', DTYPES)
@pytest.mark.parametrize('feature_axes', [-1, None])
def test_nnx_weight_norm_bit_equal_to_linen(dtype, param_dtype, feature_axes):
  x = jax.random.normal(jax.random.key(0), (10, 8))
  kw = dict(feature_axes=feature_axes, scale_init=nn.initializers.constant(2.0))
  linen = nn.WeightNorm(nn.Dense(4, dtype=dtype, param_dtype=param_dtype, parent=None),
                        dtype=dtype, param_dtype=param_dtype, **kw)
  v = linen.init(jax.random.key(1), x)
  dense = nnx.Linear(8, 4, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  dense.kernel.set_value(v['params']['layer_instance']['kernel'])
  dense.bias.set_value(v['params']['layer_instance']['bias'])
  ours = bnx.WeightNorm(dense, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(2), **kw)
  _equal(ours.scales[('kernel',)][...], v['params']['layer_instance/kernel/scale'])
  _equal(ours(x), linen.apply(v, x))


def test_nnx_weight_norm_gains_train_and_the_stored_kernel_stays_raw():
  dense = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
  kernel = dense.kernel[...]
  ours = bnx.WeightNorm(dense, variable_filter=nnx.Any(nnx.PathContains('kernel'),
                                                       nnx.PathContains('bias')),
                        rngs=nnx.Rngs(1))
  assert set(ours.scales) == {('kernel',), ('bias',)}
  x = jax.random.normal(jax.random.key(0), (10, 8))
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(ours)
  assert float(jnp.abs(grads['scales'][('kernel',)][...]).sum()) > 0
  _equal(dense.kernel[...], kernel)  # flax.nnx's overwrites it with the normalized kernel
  theirs = nnx.WeightNorm(nnx.Linear(8, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  assert 'scales' not in nnx.state(theirs, nnx.Param)  # flax 0.12: plain arrays
  theirs(x)
  assert float(jnp.abs(theirs.layer_instance.kernel[...] - kernel).max()) > 0


def test_weight_standardization_takes_weight_norm_conventions():
  x = jax.random.normal(jax.random.key(1), (2, 5))
  ws = layers.WeightStandardization(nn.Dense(6), variable_filter=None, feature_axes=None)
  v = ws.init(jax.random.key(0), x)
  k, b = v['params']['layer_instance']['kernel'], v['params']['layer_instance']['bias']
  std = lambda w: (w - w.mean()) / jnp.sqrt(w.var() + 1e-5)
  np.testing.assert_allclose(ws.apply(v, x), x @ std(k) + std(b), atol=1e-5)
  dense = nnx.Linear(5, 6, rngs=nnx.Rngs(0))
  dense.kernel.set_value(k)
  dense.bias.set_value(b)
  ours = bnx.WeightStandardization(dense, feature_axes=None, variable_filter=...)
  np.testing.assert_allclose(ours(x), ws.apply(v, x), atol=1e-6)


def test_nnx_weight_norm_refuses_a_variable_added_after_it_was_built():
  dense = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  layer = bnx.WeightNorm(dense, rngs=nnx.Rngs(1))
  # ('zz', 'kernel'), after ('kernel',): the filter picks it, with no gain for it.
  dense.zz = nnx.Linear(3, 2, rngs=nnx.Rngs(2))
  kernels = (dense.kernel[...], dense.zz.kernel[...])
  with pytest.raises(ValueError, match=r'no gain for zz/kernel: the wrapped layer gained'):
    layer(jnp.ones((1, 3)))
  _equal((dense.kernel[...], dense.zz.kernel[...]), kernels)  # every kernel as it was
