"""bnjax.nnx: equal to flax.nnx where flax has the layer, to bnjax.layers otherwise;
trains through nnx.Optimizer with bnjax transforms; masks work on nnx state."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx as fnnx

from bnjax import dynamics, layers, masks, nnx, transforms

TOL = dict(atol=1e-5, rtol=1e-5)
# flax < 0.11 (the floor is 0.10.2) lacks some nnx layers to compare with and
# the nnx.Optimizer(model, tx, wrt=...) API; bnjax.nnx itself runs there.
NEW_NNX = pytest.mark.skipif(not hasattr(fnnx, 'as_pure'),
                             reason='needs flax >= 0.11 (nnx.InstanceNorm, WeightNorm, '
                                    'Optimizer(wrt=), as_pure)')
X = jax.random.normal(jax.random.key(0), (8, 5, 5, 6)) * 2.0 + 1.0


def _perturb(module):
  """Non-trivial scale and bias, the same for both sides."""
  for name, shift in (('scale', 1.0), ('bias', 0.0)):
    p = getattr(module, name)
    p.value = shift + 0.3 * jax.random.normal(jax.random.key(len(name)), p.value.shape)
  return module


@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_equals_flax_nnx(train):
  ours = _perturb(nnx.BatchNorm(6, momentum=0.9, rngs=fnnx.Rngs(0)))
  ref = _perturb(fnnx.BatchNorm(6, momentum=0.9, rngs=fnnx.Rngs(0)))
  for _ in range(2):  # the second call sees updated running statistics
    chex.assert_trees_all_close(ours(X, use_running_average=not train),
                                ref(X, use_running_average=not train), **TOL)
  chex.assert_trees_all_close((ours.mean.value, ours.var.value),
                              (ref.mean.value, ref.var.value), **TOL)


@pytest.mark.parametrize('make', [
    lambda m, **k: m.LayerNorm(6, rngs=fnnx.Rngs(0), **k),
    lambda m, **k: m.GroupNorm(6, num_groups=3, rngs=fnnx.Rngs(0), **k),
    lambda m, **k: m.GroupNorm(6, num_groups=None, group_size=2, rngs=fnnx.Rngs(0), **k),
    pytest.param(lambda m, **k: m.InstanceNorm(6, rngs=fnnx.Rngs(0), **k),
                 marks=NEW_NNX),
], ids=['layer', 'group', 'group_size', 'instance'])
def test_per_example_norms_equal_flax_nnx(make):
  chex.assert_trees_all_close(_perturb(make(nnx))(X), _perturb(make(fnnx))(X), **TOL)


def test_layer_norm_over_several_axes_equals_flax_nnx():
  kw = dict(reduction_axes=(1, 2, 3), feature_axes=-1, rngs=fnnx.Rngs(0))
  chex.assert_trees_all_close(_perturb(nnx.LayerNorm(6, **kw))(X),
                              _perturb(fnnx.LayerNorm(6, **kw))(X), **TOL)


@pytest.mark.parametrize('ours,theirs', [
    (nnx.PopulationNorm, layers.PopulationNorm),
    (nnx.MeanOnlyBatchNorm, layers.MeanOnlyBatchNorm),
    (nnx.VarianceOnlyBatchNorm, layers.VarianceOnlyBatchNorm),
    (nnx.GhostBatchNorm, layers.GhostBatchNorm),
], ids=['population', 'mean_only', 'variance_only', 'ghost'])
def test_batch_family_equals_linen(ours, theirs):
  kw = dict(virtual_batch_size=4) if ours is nnx.GhostBatchNorm else {}
  module = _perturb(ours(6, momentum=0.8, rngs=fnnx.Rngs(0), **kw))
  linen = theirs(use_running_average=False, momentum=0.8, **kw)
  variables = {'params': {'scale': module.scale.value, 'bias': module.bias.value},
               'batch_stats': {'mean': module.mean.value, 'var': module.var.value}}
  ref, updated = linen.apply(variables, X, mutable=['batch_stats'])
  chex.assert_trees_all_close(module(X), ref, **TOL)
  chex.assert_trees_all_close((module.mean.value, module.var.value),
                              (updated['batch_stats']['mean'], updated['batch_stats']['var']),
                              **TOL)


@NEW_NNX
def test_weight_norm_equals_flax_nnx_and_linen():
  x = X.reshape(8, -1)
  ours = nnx.WeightNorm(fnnx.Linear(150, 4, rngs=fnnx.Rngs(1)), rngs=fnnx.Rngs(2))
  gain = jnp.array([0.5, 1.0, 2.0, 3.0])
  ours.scales[('kernel',)][...] = gain
  kernel = ours.layer_instance.kernel.value
  flax_wn = fnnx.WeightNorm(fnnx.Linear(150, 4, rngs=fnnx.Rngs(1)), rngs=fnnx.Rngs(2))
  flax_wn.scales = fnnx.data({k: gain for k in flax_wn.scales})
  chex.assert_trees_all_close(ours(x), flax_wn(x), **TOL)
  # Ours leaves the stored kernel alone (flax.nnx writes the normalized one back).
  chex.assert_trees_all_equal(ours.layer_instance.kernel.value, kernel)
  linen = layers.WeightNorm(nn.Dense(4))
  ref = linen.apply({'params': {'layer_instance': {
      'kernel': kernel, 'bias': ours.layer_instance.bias.value},
      'layer_instance/kernel/scale': gain}}, x)
  chex.assert_trees_all_close(ours(x), ref, **TOL)


def test_weight_norm_is_invariant_to_kernel_scale_with_gradients():
  x = X.reshape(8, -1)
  model = nnx.WeightNorm(fnnx.Linear(150, 4, rngs=fnnx.Rngs(1)), rngs=fnnx.Rngs(2))
  grads = fnnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  g = grads['layer_instance']['kernel'].value
  w = model.layer_instance.kernel.value
  # Scale invariance per unit: the kernel gradient is orthogonal to each unit.
  chex.assert_trees_all_close(jnp.sum(g * w, axis=0), jnp.zeros(4), atol=1e-4)


def test_weight_standardization_equals_linen():
  conv = fnnx.Conv(6, 8, (3, 3), rngs=fnnx.Rngs(3))
  ours = nnx.WeightStandardization(conv)
  linen = layers.WeightStandardization(nn.Conv(8, (3, 3)))
  ref = linen.apply({'params': {'layer_instance': {'kernel': conv.kernel.value,
                                                   'bias': conv.bias.value}}}, X)
  chex.assert_trees_all_close(ours(X), ref, atol=1e-4, rtol=1e-5)


class ConvNet(fnnx.Module):

  def __init__(self, rngs):
    self.conv = fnnx.Conv(1, 8, (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.head = fnnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x, train=True):
    h = jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))
    return self.head(h.mean((1, 2)))


@NEW_NNX
def test_convnet_trains_with_bnjax_transforms_through_nnx_optimizer():
  model = ConvNet(fnnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (32, 8, 8, 1))
  y = jnp.digitize(x[..., 0].mean((1, 2)), jnp.array([-0.05, 0.05]))  # learnable classes
  graphdef, params, stats = fnnx.split(model, fnnx.Param, fnnx.BatchStat)

  def loss_of(p):  # a pure function of the params (a fresh copy of the model)
    copy = fnnx.merge(graphdef, p, stats, copy=True)
    return optax.softmax_cross_entropy_with_integer_labels(copy(x), y).mean()

  # A measured mask on nnx state: the conv kernel feeds the BN, the head does not.
  invariant = masks.scale_invariant_mask(loss_of, params, rtol=1e-3)
  on = lambda tree: bool(jax.tree_util.tree_leaves(tree)[0])  # masks mirror nnx.State
  assert on(invariant['conv']['kernel']) and not on(invariant['head']['kernel'])
  lr = 0.1
  # nnx.Optimizer hands optax plain arrays (nnx.as_pure), so the mask is made pure too.
  tx = optax.chain(optax.sgd(lr, momentum=0.9),
                   transforms.unit_norm_projection(fnnx.as_pure(invariant)),
                   transforms.track_dynamics(lr, 'sgd', masks.kernel_mask))
  optimizer = fnnx.Optimizer(model, tx, wrt=fnnx.Param)

  @fnnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    loss, grads = fnnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(60)]
  assert losses[-1] < 0.6 * losses[0], losses[::10]
  chex.assert_trees_all_close(dynamics.unit_norms(model.conv.kernel.value), jnp.ones(8),
                              rtol=1e-5)
  tracked = dynamics.read(optimizer.opt_state)
  assert {'conv/kernel/angular_update', 'head/kernel/effective_lr'} <= set(tracked)


# ------------------------------------------------- masks of nnx models, first class

class _MaskNet(fnnx.Module):
  def __init__(self, rngs):
    self.conv = fnnx.Conv(1, 8, (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.head = fnnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(jax.nn.relu(self.bn(self.conv(x))).mean((1, 2)))


def _mask_data():
  return jax.random.normal(jax.random.key(1), (16, 8, 8, 1)), jnp.arange(16) % 3


def _nnx_loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@NEW_NNX
def test_scale_invariant_mask_of_an_nnx_module_equals_the_manual_split():
  """Passing the module itself gives the mask of its pure params (the split and
  fnnx.as_pure done inside), and leaves the module's batch statistics as they were."""
  model = _MaskNet(fnnx.Rngs(0))
  x, y = _mask_data()
  before = jax.tree_util.tree_leaves(fnnx.as_pure(fnnx.state(model, fnnx.BatchStat)))
  direct = masks.scale_invariant_mask(_nnx_loss, model, x, y)
  graphdef, params, rest = fnnx.split(model, fnnx.Param, ...)
  params, rest = fnnx.as_pure(params), fnnx.as_pure(rest)
  manual = masks.scale_invariant_mask(
      lambda p, x, y: _nnx_loss(fnnx.merge(graphdef, p, rest), x, y), params, x, y)
  assert jax.tree_util.tree_structure(direct) == jax.tree_util.tree_structure(manual)
  assert jax.tree_util.tree_leaves(direct) == jax.tree_util.tree_leaves(manual)
  assert direct['conv']['kernel'] and not direct['head']['kernel']
  after = jax.tree_util.tree_leaves(fnnx.as_pure(fnnx.state(model, fnnx.BatchStat)))
  chex.assert_trees_all_equal(before, after)


@NEW_NNX
def test_transforms_take_a_mask_built_on_an_nnx_state():
  """A mask of the fnnx.State of Params (bools inside Param variables) trains exactly
  as the same mask on pure arrays, in L2, projection and tracking."""
  x, y = _mask_data()
  trained = []
  for pure in (False, True):
    model = _MaskNet(fnnx.Rngs(0))
    state = fnnx.state(model, fnnx.Param)
    mask = jax.tree_util.tree_map(lambda w: w.ndim == 4, fnnx.as_pure(state) if pure else state)
    tx = optax.chain(transforms.l2_regularization(1e-2, mask), optax.sgd(0.1, momentum=0.9),
                     transforms.unit_norm_projection(mask),
                     transforms.track_dynamics(0.1, 'sgd', mask))
    optimizer = fnnx.Optimizer(model, tx, wrt=fnnx.Param)
    for _ in range(3):
      optimizer.update(model, fnnx.grad(lambda m: _nnx_loss(m, x, y))(model))
    trained.append(fnnx.as_pure(fnnx.state(model, fnnx.Param)))
    assert float(dynamics.read(optimizer.opt_state)['conv/kernel/weight_norm']) == \
        pytest.approx(1.0, rel=1e-5)
  chex.assert_trees_all_close(trained[0], trained[1])


@pytest.mark.parametrize('make', [
    lambda m: transforms.l2_regularization(1e-3, m),
    lambda m: transforms.decoupled_weight_decay(1e-3, m),
    lambda m: transforms.unit_norm_projection(m),
    lambda m: transforms.track_dynamics(0.1, 'sgd', m)])
def test_a_mask_that_does_not_match_is_refused_at_init_naming_the_path(make):
  model = _MaskNet(fnnx.Rngs(0))
  params = fnnx.state(model, fnnx.Param)
  with pytest.raises(ValueError, match="parameter 'bn/bias' has no entry in the mask"):
    make({'conv': {'kernel': True}}).init(params)
  with pytest.raises(ValueError, match="mask entry 'conv/kernel' is no parameter"):
    make({'head': False, 'conv': {'kernel': True}}).init({'head': jnp.ones((2, 2))})


class _TwoNorms(fnnx.Module):
  """Dense -> flax.nnx BatchNorm -> ReLU -> Dense -> bnjax BatchNorm."""

  def __init__(self, rngs):
    self.a = fnnx.Linear(4, 6, rngs=rngs)
    self.bn1 = fnnx.BatchNorm(6, momentum=0.9, rngs=rngs)
    self.b = fnnx.Linear(6, 5, rngs=rngs)
    self.bn2 = nnx.BatchNorm(5, momentum=0.9, rngs=rngs)

  def __call__(self, x):
    return self.bn2(self.b(jax.nn.relu(self.bn1(self.a(x)))))


def test_precise_nnx_writes_the_population_statistics_layer_by_layer():
  """Both norms' statistics become those of their inputs over the union of the
  batches, the second's inputs normalized by the first's batch statistics (as
  training runs); the model's eval mode is kept."""
  from bnjax import bn_eval
  model = _TwoNorms(fnnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (96, 4)) * 3.0 + 1.0
  model.eval()
  bn_eval.precise_nnx(model, [x[:32], x[32:64], x[64:]])
  assert model.bn1.use_running_average and model.bn2.use_running_average
  h = model.a(x)
  chex.assert_trees_all_close(model.bn1.mean[...], h.mean(0), atol=1e-4)
  chex.assert_trees_all_close(model.bn1.var[...], h.var(0), rtol=1e-4)
  # The second norm sees each batch normalized with that batch's own statistics.
  parts = []
  for chunk in (x[:32], x[32:64], x[64:]):
    u = model.a(chunk)
    u = (u - u.mean(0)) / jnp.sqrt(u.var(0) + model.bn1.epsilon)
    parts.append(model.b(jax.nn.relu(u * model.bn1.scale[...] + model.bn1.bias[...])))
  g = jnp.concatenate(parts)
  chex.assert_trees_all_close(model.bn2.mean[...], g.mean(0), atol=1e-4)
  chex.assert_trees_all_close(model.bn2.var[...], g.var(0), rtol=1e-4)
  with pytest.raises(TypeError, match='model: must be a flax.nnx Module'):
    bn_eval.precise_nnx({'bn': 1}, [x])
