"""The exact symmetries behind the effective-learning-rate scaling rules.

For a kernel feeding batch norm the loss is invariant to its scale, so its
gradient scales as 1/c when the kernel scales by c. Then (van Laarhoven 2017,
section 3; the rules the effective_lr study tests):

* SGD (with momentum) + L2 under ``(c lr, lambda / c, sqrt(c) w0)`` and
* Adam + L2 under ``(c lr, lambda / c^2, c w0)``

move the kernel along the same directions, step for step, provided everything
that is not scale-invariant (gains, biases, the head) trains at a learning
rate of its own (optax parameter groups) on the same batches. The wrong rule
(``lr^2 lambda`` for SGD, ``lr lambda`` for Adam) is the control: it must move
the directions apart. The reference is optax itself (``optax.multi_transform``,
``optax.add_decayed_weights``, ``optax.sgd``, ``optax.adam``).
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import norms

STEPS, LR, LAM = 60, 0.05, 5e-3
X = jax.random.normal(jax.random.key(0), (STEPS, 32, 6))
Y = jnp.sin(X.sum(-1, keepdims=True))


def _loss(params, x, y):
  h, _ = norms.batch_norm(x @ params['kernel'], training=True)
  h = jax.nn.relu(h * params['gamma'] + params['beta'])
  return jnp.mean(jnp.square(h @ params['head'] - y))


def _init(scale):
  keys = jax.random.split(jax.random.key(1), 2)
  return {'kernel': scale * jax.random.normal(keys[0], (6, 8)),
          'gamma': jnp.ones(8), 'beta': jnp.zeros(8),
          'head': jax.random.normal(keys[1], (8, 1)) / 3}


def _train(kernel_tx, scale):
  """The kernel under ``kernel_tx``, the rest under SGD at a fixed rate; returns the
  final params."""
  labels = {'kernel': 'kernel', 'gamma': 'rest', 'beta': 'rest', 'head': 'rest'}
  tx = optax.multi_transform({'kernel': kernel_tx, 'rest': optax.sgd(0.05, momentum=0.9)},
                             labels)
  params = _init(scale)
  state = tx.init(params)

  @jax.jit
  def step(carry, batch):
    params, state = carry
    grads = jax.grad(_loss)(params, *batch)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, state), (X, Y))
  return params


def _directions(kernel):
  return np.asarray(kernel / jnp.linalg.norm(kernel, axis=0))


def _sgd(lr, lam):
  return optax.chain(optax.add_decayed_weights(lam), optax.sgd(lr, momentum=0.9))


def _adam(lr, lam):
  return optax.chain(optax.add_decayed_weights(lam), optax.adam(lr, eps=1e-12))


# (kernel optimizer, the rule's lambda and init scale at factor c, the wrong rule's)
RULES = {
    'sgd': (_sgd, lambda c: (LAM / c, np.sqrt(c)), lambda c: (LAM / c ** 2, np.sqrt(c))),
    'adam': (_adam, lambda c: (LAM / c ** 2, c), lambda c: (LAM / c, c)),
}


@pytest.mark.parametrize('name', list(RULES))
def test_the_rule_keeps_the_direction_trajectory_and_the_wrong_rule_does_not(name):
  make, rule, wrong = RULES[name]
  base = _train(make(LR, LAM), 1.0)
  moved = np.max(np.abs(_directions(base['kernel']) - _directions(_init(1.0)['kernel'])))
  assert moved > 0.05  # the kernels did turn: the comparison below means something
  for c in (0.25, 4.0):
    lam, scale = rule(c)
    along = _train(make(c * LR, lam), scale)
    diff = np.max(np.abs(_directions(along['kernel']) - _directions(base['kernel'])))
    assert diff < 2e-4, (name, c, diff)
    for key in ('gamma', 'beta', 'head'):  # the rest trains exactly alike
      np.testing.assert_allclose(along[key], base[key], rtol=2e-3, atol=2e-4)
    lam, scale = wrong(c)
    control = _train(make(c * LR, lam), scale)
    off = np.max(np.abs(_directions(control['kernel']) - _directions(base['kernel'])))
    assert off > 50 * max(diff, 1e-6), (name, c, off, diff)


# The same symmetry through bnjax's training framework: --rest_learning_rate
# fixes the rest's rate, --init_scale rescales the invariant kernels.

def _optax_groups(make, lr, lam, rest_lr, head_lam):
  """optax's own parameter groups, ``make(rate)`` the optimizer of each: the
  reference for --rest_learning_rate."""
  def group(rate, decay):
    kernels = lambda p: jax.tree_util.tree_map(lambda w: w.ndim >= 2, p)
    return optax.chain(optax.add_decayed_weights(decay, mask=kernels), make(rate))
  labels = {'conv': {'kernel': 'invariant', 'bias': 'rest'},
            'head': {'kernel': 'rest', 'bias': 'rest'}}
  return optax.multi_transform({'invariant': group(lr, lam), 'rest': group(rest_lr, head_lam)},
                               labels)


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_rest_learning_rate_equals_optax_parameter_groups(optimizer):
  from bnjax.train import programs
  from _helpers import TS
  config = dataclasses.replace(TS, optimizer=optimizer, learning_rate=0.2,
                               rest_learning_rate=0.03, weight_decay=1e-2,
                               head_weight_decay=1e-3,
                               **({'adam_eps': 1e-3} if optimizer == 'adam' else {}))
  tx = programs.build_optimizer(config)
  make = ((lambda rate: optax.sgd(rate, momentum=TS.momentum)) if optimizer == 'sgd'
          else (lambda rate: optax.adam(rate, eps=1e-3)))
  ref = _optax_groups(make, 0.2, 1e-2, 0.03, 1e-3)
  keys = jax.random.split(jax.random.key(3), 8)
  params = {'conv': {'kernel': jax.random.normal(keys[0], (3, 3, 2, 4)), 'bias': jnp.ones(4)},
            'head': {'kernel': jax.random.normal(keys[1], (4, 10)), 'bias': jnp.zeros(10)}}
  state, ref_state = tx.init(params), ref.init(params)
  for k in keys[2:]:
    grads = jax.tree_util.tree_map(lambda w: jax.random.normal(k, w.shape), params)
    updates, state = tx.update(grads, state, params)
    expected, ref_state = ref.update(grads, ref_state, params)
    chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-7)
    params = optax.apply_updates(params, updates)


def test_init_scale_multiplies_the_invariant_kernels_only():
  from bnjax.train import programs
  from bnjax.train.config import Config
  base = Config(train_subset=64, batch_size=32, width=4)
  x = jnp.ones((2, 28, 28, 1))
  start = {}
  for scale in (1.0, 4.0):
    config = dataclasses.replace(base, init_scale=scale)
    start[scale] = programs.init_state(config, programs.build_model(config, host=True),
                                       programs.build_optimizer(config), x).params
  for name, layer in start[1.0].items():
    factor = 1.0 if name == 'head' else 4.0
    for key, value in layer.items():
      expected = value * (factor if value.ndim >= 2 else 1.0)
      np.testing.assert_array_equal(start[4.0][name][key], expected, err_msg=f'{name}/{key}')


def test_training_runs_on_a_line_of_the_rule_keep_their_directions(tmp_path):
  """The framework's runs: SGD + L2 at (c lr, lambda / c, sqrt(c) w0), the rest at a
  fixed rate, end on the same directions; Adam's rule (lambda / c^2) does not."""
  from bnjax.train import trainer, workdir
  from _helpers import TS
  base = dataclasses.replace(TS, rest_learning_rate=0.05, head_weight_decay=1e-3,
                             weight_decay=4e-2, num_epochs=4)
  def directions(c, lam, name):
    config = dataclasses.replace(base, learning_rate=0.05 * c, weight_decay=lam,
                                 init_scale=float(np.sqrt(c)))
    trainer.train(config, tmp_path / name, progress=False)
    kernel = workdir.Checkpoints(tmp_path / name).latest_state()['params']['dense']['kernel']
    return _directions(jnp.asarray(kernel))
  centre = directions(1.0, base.weight_decay, 'centre')
  along = directions(4.0, base.weight_decay / 4, 'rule')
  wrong = directions(4.0, base.weight_decay / 16, 'wrong')
  diff, off = np.max(np.abs(along - centre)), np.max(np.abs(wrong - centre))
  assert diff < 1e-4, diff
  assert off > 100 * max(diff, 1e-6), (off, diff)


def test_norm_epsilon_is_the_batch_norms_epsilon():
  """--norm_epsilon against the hand formula (x - mean) / sqrt(var + eps)."""
  from bnjax.train import programs
  from _helpers import TS
  x = jax.random.normal(jax.random.key(4), (16, TS.input_dim)) * 0.01  # var near eps
  for eps in (0.5, 1e-30):
    config = dataclasses.replace(TS, norm_epsilon=eps, activation='linear')
    model = programs.build_model(config, host=True)
    variables = model.init(jax.random.key(0), x, train=True)
    out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
    z = x @ variables['params']['dense']['kernel']
    expected = (z - z.mean(0)) / jnp.sqrt(z.var(0) + eps)
    np.testing.assert_allclose(out, expected[:, 0], rtol=2e-4, atol=1e-6)
