"""bnjax.models: every norm builds and runs; structural masks agree with measurement."""

import jax
import jax.numpy as jnp
import optax
import pytest

from bnjax import masks, models
from bnjax._validation import path_str

X = jax.random.normal(jax.random.key(0), (64, 28, 28, 1))
Y = jax.random.randint(jax.random.key(1), (64,), 0, 10)


def _init(model, x):
  return model.init(jax.random.key(2), x, train=True)


@pytest.mark.parametrize('norm', models.NORMS)
def test_convnet_every_norm(norm):
  model = models.build('convnet', norm)
  v = _init(model, X)
  logits, _ = model.apply(v, X, train=True, mutable=['batch_stats'])
  assert logits.shape == (64, 10) and bool(jnp.all(jnp.isfinite(logits)))
  eval_logits = model.apply(v, X, train=False)
  assert eval_logits.shape == (64, 10)
  conv_kernels = [k for k in jax.tree_util.tree_flatten_with_path(v['params'])[0]
                  if 'conv' in jax.tree_util.keystr(k[0]) and k[1].ndim == 4]
  assert len(conv_kernels) == 3


@pytest.mark.parametrize('norm', ['batch', 'group', 'weight', 'none'])
def test_resnet20(norm):
  x = jax.random.normal(jax.random.key(0), (64, 32, 32, 3))
  model = models.build('resnet20', norm)
  v = _init(model, x)
  out, _ = model.apply(v, x, train=True, mutable=['batch_stats'])
  assert out.shape == (64, 10)
  if norm == 'batch':  # He et al. (2016): ResNet-20 has 0.27M parameters.
    n = sum(p.size for p in jax.tree_util.tree_leaves(v['params']))
    assert 0.26e6 < n < 0.28e6, n
    convs = [p for p in jax.tree_util.tree_leaves(v['params']) if p.ndim == 4]
    assert len(convs) == 19 + 2  # 19 3x3 convs + two 1x1 projection shortcuts


@pytest.mark.parametrize('norm', [n for n in models.NORMS if n not in ('layer', 'group')])
def test_perceptron(norm):
  x = jax.random.normal(jax.random.key(0), (64, 20))
  model = models.build('perceptron', norm, activation='relu')
  v = _init(model, x)
  out, _ = model.apply(v, x, train=True, mutable=['batch_stats'])
  assert out.shape == (64,) and bool(jnp.all(out >= 0))


def test_perceptron_refuses_single_unit_layer_norm():
  with pytest.raises(ValueError, match='constant'):
    _init(models.build('perceptron', 'layer'), jnp.ones((8, 4)))


def test_unknown_names():
  with pytest.raises(ValueError, match='norm must be one of'):
    models.build('convnet', 'switch')
  with pytest.raises(ValueError, match='model must be one of'):
    models.build('vgg', 'batch')


@pytest.mark.parametrize('norm', models.NORMS)
def test_structural_mask_matches_measurement(norm):
  """``scale_invariant_kernels`` is right exactly for the per-unit-invariant norms."""
  model = models.build('convnet', norm)
  v = _init(model, X)
  stats = v.get('batch_stats', {})

  def loss(params, x, y):
    logits, _ = model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                            mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  measured = masks.scale_invariant_mask(loss, v['params'], X, Y)
  kernels = lambda mask: {path_str(p)
                          for p, on in jax.tree_util.tree_flatten_with_path(mask)[0]
                          if on and 'kernel' in jax.tree_util.keystr(p)}
  structural = kernels(masks.scale_invariant_kernels(v['params']))
  if norm in models.PER_UNIT_INVARIANT:
    assert kernels(measured) == structural
  else:
    assert kernels(measured) == set()
