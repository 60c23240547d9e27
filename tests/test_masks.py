"""bnjax.masks: structural and measured scale-invariance masks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import layers, masks, norms
from bnjax._validation import path_str


class Model(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(layers.BatchNorm(use_running_average=False)(
        nn.Conv(8, (3, 3), use_bias=False, name='conv_bn')(x)))
    x = nn.relu(layers.InstanceNorm()(nn.Conv(8, (3, 3), use_bias=False,
                                               name='conv_in')(x)))
    # LayerNorm is invariant to one scale of the whole kernel, not per unit.
    x = nn.relu(layers.LayerNorm()(nn.Conv(8, (3, 3), use_bias=False, name='conv_ln')(x)))
    # Flatten, not a spatial mean: a mean leaves the next pre-BN variance ~1e-3,
    # where BN's epsilon (1e-5) breaks the invariance by ~1% (and the mask
    # rightly says no).
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(layers.BatchNorm(use_running_average=False)(
        nn.Dense(16, use_bias=False, name='dense_bn')(x)))
    return nn.Dense(4, name='head')(x)


def _setup():
  model = Model()
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  y = jax.random.randint(jax.random.key(1), (16,), 0, 4)
  variables = model.init(jax.random.key(2), x)

  def loss_fn(params, x, y):
    logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                            x, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return loss_fn, variables['params'], x, y


def test_scale_invariant_mask_marks_kernels_feeding_a_per_unit_norm():
  loss_fn, params, x, y = _setup()
  mask = masks.scale_invariant_mask(loss_fn, params, x, y)
  flat = {path_str(p): v
          for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert {k for k, v in flat.items() if v} == {
      'conv_bn/kernel', 'conv_in/kernel', 'dense_bn/kernel'}, flat


def test_zero_leaf_is_not_invariant():
  loss_fn, params, x, y = _setup()
  params = jax.tree_util.tree_map(lambda a: a, params)
  params['conv_bn']['kernel'] = jnp.zeros_like(params['conv_bn']['kernel'])
  assert masks.scale_invariant_mask(loss_fn, params, x, y)['conv_bn']['kernel'] is False


def test_kernel_mask():
  _, params, _, _ = _setup()
  mask = masks.kernel_mask(params)
  assert mask['head'] == {'kernel': True, 'bias': False}
  assert mask['BatchNorm_0'] == {'scale': False, 'bias': False}


def test_expand_mask_accepts_prefix_and_callable():
  params = {'a': {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}, 'c': jnp.ones((3, 3))}
  assert masks.expand_mask({'a': False, 'c': True}, params) == {
      'a': {'w': False, 'b': False}, 'c': True}
  assert masks.expand_mask(masks.kernel_mask, params) == {
      'a': {'w': True, 'b': False}, 'c': True}


def test_bad_rtol():
  loss_fn, params, x, y = _setup()
  with pytest.raises(ValueError, match='rtol must be > 0'):
    masks.scale_invariant_mask(loss_fn, params, x, y, rtol=0.0)


def test_gain_mask_marks_norm_scales_and_weight_norm_gains():
  from bnjax import models
  x = jnp.ones((4, 10))
  params = models.build('perceptron', 'weight').init(jax.random.key(0), x)['params']
  assert masks.gain_mask(params) == {'dense': {'layer_instance/kernel/scale': True,
                                               'layer_instance': {'kernel': False,
                                                                  'bias': False}}}
  params = models.build('perceptron', 'batch').init(jax.random.key(0), x)['params']
  assert masks.gain_mask(params) == {'dense': {'kernel': False},
                                     'dense_norm': {'scale': True, 'bias': False}}


def test_a_near_miss_is_reported_not_flipped_silently():
  """A kernel feeding batch norm whose pre-norm variance is near epsilon is
  invariant only to O(eps / var): its margins (max |cos(g, w)| by hand from the
  gradient) decide it against rtol, and a decision within 10x of rtol warns,
  naming the leaf; a clear one does not."""
  import warnings as warnings_lib
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 3)) * 3e-3, jnp.float32)  # var ~ eps = 1e-5

  def loss(p):
    y, _ = norms.batch_norm(x @ p['dense']['kernel'], training=True, epsilon=1e-5)
    return jnp.sum(jnp.sin(y + jnp.arange(3.0)))

  params = {'dense': {'kernel': w}}
  g = jax.grad(loss)(params)['dense']['kernel']
  cos = np.max(np.abs(np.sum(g * w, 0)) / (np.linalg.norm(g, axis=0) * np.linalg.norm(w, axis=0)))
  margins = masks.scale_invariant_margins(loss, params)
  assert margins['dense']['kernel'][0] == pytest.approx(float(cos), rel=1e-3)
  worst = max(margins['dense']['kernel'])
  assert worst > 1e-3  # epsilon is not small next to this variance
  with pytest.warns(UserWarning, match="'dense/kernel' is not marked, by a small margin"):
    assert not masks.scale_invariant_mask(loss, params, rtol=worst / 3)['dense']['kernel']
  with pytest.warns(UserWarning, match="'dense/kernel' is marked, by a small margin"):
    assert masks.scale_invariant_mask(loss, params, rtol=worst * 3)['dense']['kernel']
  with warnings_lib.catch_warnings():
    warnings_lib.simplefilter('error')
    assert masks.scale_invariant_mask(loss, params, rtol=worst * 100)['dense']['kernel']
