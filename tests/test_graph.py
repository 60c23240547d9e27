"""bnjax.graph: the structural mask of a traced linen model against the measured one."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from bnjax import graph, layers, masks, models


def _measured(module, variables, x, y, rtol=1e-4):
  """Autodiff's answer (bnjax.masks.scale_invariant_mask), kernels only."""
  def loss(params):
    out, _ = module.apply({**variables, 'params': params}, x, train=True, mutable=True)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
  measured = masks.scale_invariant_mask(loss, variables['params'], rtol=rtol)
  return jax.tree_util.tree_map(lambda m, k: bool(m and k), measured,
                                masks.kernel_mask(variables['params']))


X = jax.random.normal(jax.random.key(1), (32, 28, 28, 1))
Y = jnp.arange(32) % 10


@pytest.mark.parametrize('norm', ['batch', 'population', 'mean_only', 'group'])
def test_bnjax_convnet_equals_the_measured_mask(norm):
  model = models.build('convnet', norm, width=4, epsilon=1e-12)
  variables = model.init(jax.random.key(0), X, train=False)
  assert graph.normalized_kernels(model, variables, X, train=True) == \
      _measured(model, variables, X, Y)


class Zoo(nn.Module):
  """One layer per case; which kernels a per-unit normalizer makes invariant."""

  @nn.compact
  def __call__(self, x, train=True):
    # Group norms on images (one value per group and example would be constant).
    x = nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-12)(
        nn.Conv(4, (3, 3), strides=2, name='group_size_1')(x))
    x = nn.GroupNorm(num_groups=2, epsilon=1e-12)(
        nn.Conv(4, (3, 3), strides=2, name='two_groups')(x))
    x = x.reshape(len(x), -1)
    h = nn.Dense(6, name='bn')(x)
    x = layers.BatchNorm(use_running_average=not train, epsilon=1e-12)(h)
    x = x + nn.BatchNorm(use_running_average=not train, epsilon=1e-12)(
        nn.Dense(6, name='flax_bn')(x))
    h = nn.Dense(6, name='residual')(x)           # N(h) + h: not invariant
    x = layers.BatchNorm(use_running_average=not train, epsilon=1e-12)(h) + h
    x = layers.BatchNorm(use_running_average=not train, epsilon=1e-12)(
        nn.relu(nn.Dense(6, name='relu_between')(x)))  # invariant, not traced
    x = layers.LayerNorm(epsilon=1e-12)(nn.Dense(6, name='layer_norm')(x))
    x = layers.MeanOnlyBatchNorm(use_running_average=not train)(nn.Dense(6, name='mean_only')(x))
    x = layers.PopulationNorm(use_running_average=not train, epsilon=1e-12)(
        nn.Dense(6, name='population')(x))
    shared = nn.Dense(6, name='shared')
    x = layers.BatchNorm(use_running_average=not train, epsilon=1e-12)(shared(x)) + shared(x)
    x = layers.WeightNorm(nn.Dense(6, parent=None), name='weight_norm')(x)
    return nn.Dense(10, name='head')(x)


def test_each_normalizer_and_wiring():
  model = Zoo()
  variables = model.init(jax.random.key(0), X)
  got = graph.normalized_kernels(model, variables, X, train=True)
  kernels = {'/'.join(k.key for k in path[:-1]): v for path, v in
             jax.tree_util.tree_flatten_with_path(got)[0] if path[-1].key == 'kernel'}
  assert kernels == {
      'bn': True, 'flax_bn': True, 'residual': False, 'relu_between': False,
      'layer_norm': False, 'mean_only': False, 'population': False, 'group_size_1': True,
      'two_groups': False, 'shared': False, 'weight_norm/layer_instance': True,
      'head': False}
  measured = _measured(model, variables, X, Y)
  # Every structural mark is invariant when measured; what it leaves out is not,
  # but for the ReLU between a layer and its norm (positively homogeneous).
  for path, on in jax.tree_util.tree_flatten_with_path(got)[0]:
    name = jax.tree_util.keystr(path)
    want = measured
    for p in path:
      want = want[p.key]
    assert on == want or ('relu_between' in name and want), name


def test_does_not_flip_where_the_epsilon_decides_the_measurement():
  """A first layer on inputs of tiny variance: BN's epsilon is not small next to
  the pre-norm variance, so the measured mask (rtol 1e-4) says no; the graph
  says yes, at any input scale."""
  class First(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
      x = layers.BatchNorm(use_running_average=not train)(nn.Dense(8, name='first')(x))
      return nn.Dense(10, name='head')(nn.relu(x))

  x = 1e-3 * jax.random.normal(jax.random.key(2), (32, 20))
  variables = First().init(jax.random.key(0), x)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # a near-miss warning, where there is one
    assert not _measured(First(), variables, x, Y)['first']['kernel']
  assert graph.normalized_kernels(First(), variables, x, train=True)['first']['kernel']


def test_refuses_what_it_cannot_trace():
  from flax import nnx
  with pytest.raises(TypeError, match='for an nnx model use bnjax.masks.scale_invariant_mask'):
    graph.normalized_kernels(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), {}, X)
  with pytest.raises(ValueError, match="variables must hold a 'params' collection"):
    graph.normalized_kernels(Zoo(), {'batch_stats': {}}, X)
