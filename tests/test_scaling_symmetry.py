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
