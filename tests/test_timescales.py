"""Weight decay as a timescale: the exponential learning rate that replaces it
on scale-invariant weights (Li & Arora 2020) and AdamW's EMA timescale (Wang
& Aitchison 2024).

References: two optax trainings of the same batch-normalized network (one
with L2, one with the exponential schedule and no decay), optax's adamw on
a zero gradient, and the formulas by hand.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import norms, theory
from bnjax.train import trainer
from bnjax.train.binaries import plot

from _helpers import TS, dtype_context


def _loss(params, x, y):
  """x W -> batch norm (with gain and shift) -> relu -> head: W is scale-invariant per unit."""
  h, _ = norms.batch_norm(x @ params['w'], params['gamma'], params['beta'], training=True,
                          epsilon=1e-30, use_fast_variance=False)
  logits = jax.nn.relu(h) @ params['head']
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train(params, batches, invariant_tx, rest_tx, invariant_state=None):
  """Trains ``w`` with ``invariant_tx`` and the rest with ``rest_tx``; returns every step's params."""
  rest = {k: v for k, v in params.items() if k != 'w'}
  s_w = invariant_state if invariant_state is not None else invariant_tx.init(params['w'])
  s_rest = rest_tx.init(rest)
  grad = jax.jit(jax.grad(_loss))
  history = [params]
  for x, y in batches:
    g = grad(params, x, y)
    u_w, s_w = invariant_tx.update(g['w'], s_w, params['w'])
    u_rest, s_rest = rest_tx.update({k: g[k] for k in rest}, s_rest, rest)
    params = {'w': params['w'] + u_w, **optax.apply_updates(rest, u_rest)}
    rest = {k: v for k, v in params.items() if k != 'w'}
    history.append(params)
  return history


@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_exponential_learning_rate_replaces_weight_decay(momentum):
  lr, wd, steps = 0.1, 0.02, 120
  schedule = theory.exponential_lr_equivalent(lr, wd, momentum=momentum, steps=steps)
  with dtype_context(jnp.float64):
    rng = np.random.default_rng(0)
    params = {'w': jnp.asarray(rng.standard_normal((6, 4))),
              'gamma': jnp.ones(4, jnp.float64), 'beta': jnp.zeros(4, jnp.float64),
              'head': jnp.asarray(0.5 * rng.standard_normal((4, 3)))}
    batches = [(jnp.asarray(rng.standard_normal((16, 6))), jnp.asarray(rng.integers(0, 3, 16)))
               for _ in range(steps)]
    m = momentum or None
    rest = optax.sgd(lr, m)
    decayed = _train(params, batches, optax.chain(optax.add_decayed_weights(wd),
                                                  optax.sgd(lr, m)), rest)
    rates = jnp.asarray(schedule.learning_rates)
    exponential_tx = optax.sgd(lambda count: rates[count], m)
    state = exponential_tx.init(params['w'])
    if momentum:  # the buffer starts at initial_momentum * w_0
      trace = optax.tree_utils.tree_get(state, 'trace')
      state = optax.tree_utils.tree_set(state, trace=schedule.initial_momentum * params['w'])
      assert trace is not None
    exponential = _train(params, batches, exponential_tx, rest, state)
    for t in (1, 2, 10, steps):
      w, w_exp = decayed[t]['w'], exponential[t]['w']
      np.testing.assert_allclose(w / jnp.linalg.norm(w, axis=0),
                                 w_exp / jnp.linalg.norm(w_exp, axis=0), rtol=1e-9, atol=1e-12)
      np.testing.assert_allclose(jnp.linalg.norm(w, axis=0),
                                 schedule.alpha ** t * jnp.linalg.norm(w_exp, axis=0),
                                 rtol=1e-9)
      for k in ('gamma', 'beta', 'head'):
        np.testing.assert_allclose(decayed[t][k], exponential[t][k], rtol=1e-9, atol=1e-12)
    # The norms really differ (by alpha^t ~ 0.8 or less), and with momentum a zero
    # starting buffer (or SGD's alpha) would not do.
    assert schedule.alpha ** steps < 0.8
    if momentum:
      wrong = _train(params, batches, exponential_tx, rest)
      w, w_wrong = decayed[steps]['w'], wrong[steps]['w']
      cos = jnp.sum(w * w_wrong, 0) / jnp.linalg.norm(w, axis=0) / jnp.linalg.norm(w_wrong, axis=0)
      assert float(jnp.min(cos)) < 1 - 1e-6


def test_exponential_learning_rate_formulas_and_refusals():
  s = theory.exponential_lr_equivalent(0.1, 0.01, steps=4)
  np.testing.assert_allclose(s.learning_rates, 0.1 * 0.999 ** (-2.0 * np.arange(4) - 1))
  assert s.initial_momentum == 0.0
  m = theory.exponential_lr_equivalent(0.1, 0.01, momentum=0.9, steps=2)
  # alpha solves x^2 - (1 + a - eta lambda) x + a = 0 and is the larger root.
  assert abs(m.alpha ** 2 - (1 + 0.9 - 0.001) * m.alpha + 0.9) < 1e-12
  assert m.alpha > 0.9 / m.alpha
  with pytest.raises(ValueError, match=r'exceeds \(1 - sqrt\(momentum\)\)\^2'):
    theory.exponential_lr_equivalent(0.1, 0.5, momentum=0.9, steps=2)
  with pytest.raises(ValueError, match='weight_decay must be > 0'):
    theory.exponential_lr_equivalent(0.1, 0.0, steps=2)
  with pytest.raises(ValueError, match='steps must be'):
    theory.exponential_lr_equivalent(0.1, 0.01, steps=0)
  with pytest.raises(ValueError, match=r'momentum must be in \[0, 1\)'):
    theory.exponential_lr_equivalent(0.1, 0.01, momentum=1.0, steps=2)


def test_ema_timescale_is_adamws_decay_time():
  lr, wd = 1e-2, 0.5
  tau = theory.ema_timescale(lr, wd)
  assert tau == pytest.approx(200.0)
  tx = optax.adamw(lr, weight_decay=wd)
  w = jnp.ones(3)
  state = tx.init(w)
  for _ in range(int(tau)):  # a zero gradient: only the decay acts
    u, state = tx.update(jnp.zeros(3), state, w)
    w = w + u
  assert float(w[0]) == pytest.approx(math.exp(-1), rel=5e-3)  # (1 - 1/tau)^tau
  assert theory.ema_timescale(lr, wd, steps_per_epoch=50) == pytest.approx(4.0)
  np.testing.assert_allclose(theory.ema_timescale(np.array([1e-2, 2e-2]), wd), [200.0, 100.0])
  # weight_decay_for_timescale inverts it, arrays too.
  wd_back = theory.weight_decay_for_timescale(np.array([1e-3, 1e-2]), 4.0, 50)
  np.testing.assert_allclose(theory.ema_timescale(np.array([1e-3, 1e-2]), wd_back, 50), 4.0)


@pytest.mark.parametrize('call, error, message', [
    (lambda: theory.ema_timescale(1e-3, 0.0), ValueError, 'weight_decay must be > 0'),
    (lambda: theory.ema_timescale(-1e-3, 0.1), ValueError, 'learning_rate must be > 0'),
    (lambda: theory.ema_timescale(1e-3, 0.1, 0), ValueError, 'steps_per_epoch must be > 0'),
    (lambda: theory.ema_timescale(1e-3, [0.1, math.nan]), ValueError, 'weight_decay must be'),
    (lambda: theory.ema_timescale('1e-3', 0.1), TypeError, 'learning_rate must be a positive'),
    (lambda: theory.weight_decay_for_timescale(1e-3, 0.0, 10), ValueError,
     'tau_epochs must be > 0'),
    (lambda: theory.weight_decay_for_timescale(1e-3, -2.0, 10), ValueError,
     'tau_epochs must be > 0'),
    (lambda: theory.weight_decay_for_timescale(1e-3, 2.0, None), TypeError,
     'steps_per_epoch must be a positive'),
])
def test_timescales_refuse_bad_input(call, error, message):
  with pytest.raises(error, match=message):
    call()


def test_an_adamw_run_logs_its_timescale_and_plots_it(tmp_path):
  config = dataclasses.replace(TS, optimizer='adam', regularizer='decoupled',
                               learning_rate=1e-2, weight_decay=0.05, num_epochs=1)
  trainer.train(config, tmp_path / 'run', progress=False)
  lines = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  want = 1.0 / (1e-2 * 0.05) / (TS.num_train // TS.batch_size)
  assert all(l['ema_timescale_epochs/dense'] == pytest.approx(want) for l in lines)
  assert plot.plot_runs([tmp_path / 'run'], tmp_path / 'p.png').stat().st_size > 0
  l2 = dataclasses.replace(config, regularizer='l2')
  trainer.train(l2, tmp_path / 'l2', progress=False)
  assert not any('ema_timescale' in k for k in
                 json.loads((tmp_path / 'l2' / 'metrics.jsonl').read_text().splitlines()[0]))
