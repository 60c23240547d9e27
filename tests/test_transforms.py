"""bnjax.transforms against optax, autodiff and hand computations."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from bnjax import dynamics, layers, masks, transforms
from _helpers import dtype_context

STEPS = 25


def _params(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {'conv': {'kernel': jax.random.normal(k[0], (3, 3, 4, 8))},
          'dense': {'kernel': jax.random.normal(k[1], (8, 5)),
                    'bias': jax.random.normal(k[2], (5,))}}


def _grads(step, params):
  """A deterministic gradient stream that depends on the params."""
  key = jax.random.fold_in(jax.random.key(42), step)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [jax.random.normal(k, p.shape) + 0.1 * p for k, p in zip(keys, leaves)])


def _run(tx, params, steps=STEPS):
  state = tx.init(params)
  history = []
  for t in range(steps):
    updates, state = tx.update(_grads(t, params), state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return params, state, history


SCHEDULE = optax.cosine_decay_schedule(1e-2, STEPS)
WD_MASK = {'conv': {'kernel': True}, 'dense': {'kernel': True, 'bias': False}}


class DecayTest(chex.TestCase):

  @parameterized.named_parameters(
      ('constant', 1e-2, None), ('scheduled', SCHEDULE, None),
      ('constant_masked', 1e-2, WD_MASK), ('scheduled_masked', SCHEDULE, masks.kernel_mask))
  def test_adam_plus_decoupled_equals_adamw(self, lr, mask):
    wd = 0.1
    rate = (lambda t: lr(t) * wd) if callable(lr) else lr * wd
    ours = optax.chain(optax.adam(lr), transforms.decoupled_weight_decay(rate, mask))
    ref = optax.adamw(lr, weight_decay=wd, mask=mask)
    chex.assert_trees_all_close(_run(ours, _params())[0], _run(ref, _params())[0],
                                atol=1e-6, rtol=1e-6)

  @parameterized.named_parameters(('every_leaf', None), ('kernels', masks.kernel_mask))
  def test_adam_convenience_decoupled_is_adamw(self, mask):
    # mask=None means every leaf in both, as in optax.
    ours = transforms.adam(1e-2, regularizer='decoupled', weight_decay=0.1, mask=mask,
                           track=False)
    ref = optax.adamw(1e-2, weight_decay=0.1, mask=mask)
    chex.assert_trees_all_close(_run(ours, _params())[0], _run(ref, _params())[0],
                                atol=1e-6, rtol=1e-6)

  @parameterized.named_parameters(('plain', 0.0), ('momentum', 0.9))
  def test_l2_then_sgd_equals_sgd_on_penalized_loss(self, momentum):
    lam, lr = 0.05, 0.1
    target = _params(seed=1)

    def loss(p):
      return sum(jnp.sum(jnp.sin(a) * b) for a, b in zip(
          jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(target)))

    def penalized(p):
      return loss(p) + lam / 2 * sum(jnp.sum(w ** 2) for w in jax.tree_util.tree_leaves(p))

    def train(tx, fn):
      p, s = _params(), tx.init(_params())
      for _ in range(STEPS):
        u, s = tx.update(jax.grad(fn)(p), s, p)
        p = optax.apply_updates(p, u)
      return p

    ours = train(optax.chain(transforms.l2_regularization(lam),
                             optax.sgd(lr, momentum=momentum or None)), loss)
    ref = train(optax.sgd(lr, momentum=momentum or None), penalized)
    chex.assert_trees_all_close(ours, ref, atol=1e-5, rtol=1e-5)


class ProjectionTest(chex.TestCase):

  @parameterized.named_parameters(('radius_1', 1.0), ('radius_3', 3.0), ('init', 'init'))
  def test_norms_equal_radius_every_step(self, radius):
    params = _params()
    tx = optax.chain(optax.sgd(0.3, momentum=0.9),
                     transforms.unit_norm_projection(masks.kernel_mask, radius=radius))
    _, _, history = _run(tx, params)
    for p in history:
      for name in ('conv', 'dense'):
        want = (dynamics.unit_norms(params[name]['kernel']) if radius == 'init'
                else jnp.full(p[name]['kernel'].shape[-1], radius))
        chex.assert_trees_all_close(dynamics.unit_norms(p[name]['kernel']), want,
                                    rtol=1e-5)

  def test_masked_out_leaves_equal_plain_optax(self):
    tx = optax.chain(optax.sgd(0.3, momentum=0.9),
                     transforms.unit_norm_projection(masks.kernel_mask))
    ours, _, _ = _run(tx, _params())
    ref, _, _ = _run(optax.sgd(0.3, momentum=0.9), _params())
    chex.assert_trees_all_close(ours['dense']['bias'], ref['dense']['bias'])
    self.assertFalse(np.allclose(ours['dense']['kernel'], ref['dense']['kernel']))

  def test_zero_norm_unit_gives_no_nan(self):
    w = jnp.ones((4, 3)).at[:, 1].set(0.0)
    tx = transforms.unit_norm_projection(lambda p: True)  # the one leaf, on purpose
    u, _ = tx.update(jnp.zeros_like(w), tx.init(w), w)
    new = w + u
    self.assertTrue(bool(jnp.all(jnp.isfinite(new))))
    chex.assert_trees_all_close(dynamics.unit_norms(new), jnp.array([1.0, 0.0, 1.0]),
                                atol=1e-6)

  def test_inside_masked_inject_hyperparams_and_multisteps(self):
    params = _params()

    def projected_sgd(learning_rate, radius):
      return optax.chain(optax.sgd(learning_rate),
                         transforms.unit_norm_projection(masks.kernel_mask, radius=radius))

    inner = optax.inject_hyperparams(projected_sgd)(learning_rate=0.2, radius=2.0)
    tx = optax.MultiSteps(optax.masked(inner, masks.kernel_mask), every_k_schedule=2)
    final, _, history = _run(tx, params, steps=6)
    for t, p in enumerate(history):
      if t % 2 == 1:  # MultiSteps applies the accumulated update every 2nd step
        chex.assert_trees_all_close(dynamics.unit_norms(p['conv']['kernel']),
                                    jnp.full(8, 2.0), rtol=1e-5)
    # Masked-out leaves move exactly as in the same pipeline without projection.
    plain = optax.MultiSteps(optax.masked(optax.inject_hyperparams(optax.sgd)(
        learning_rate=0.2), masks.kernel_mask), every_k_schedule=2)
    chex.assert_trees_all_close(final['dense']['bias'],
                                _run(plain, params, steps=6)[0]['dense']['bias'])
    # Injected radius can change between steps.
    inj = optax.inject_hyperparams(projected_sgd)(learning_rate=0.2, radius=2.0)
    s = inj.init(params['conv'])
    s.hyperparams['radius'] = jnp.asarray(0.5)
    u, _ = inj.update(_grads(0, params['conv']), s, params['conv'])
    chex.assert_trees_all_close(
        dynamics.unit_norms(optax.apply_updates(params['conv'], u)['kernel']),
        jnp.full(8, 0.5), rtol=1e-5)

  def test_jit(self):
    tx = transforms.sgd(0.1, 0.9, regularizer='projection', mask=masks.kernel_mask)
    params = _params()
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    u, state = step(_grads(0, params), state, params)
    chex.assert_trees_all_close(
        dynamics.unit_norms(optax.apply_updates(params, u)['conv']['kernel']),
        jnp.ones(8), rtol=1e-5)


class TrackingTest(chex.TestCase):

  def test_tracking_changes_nothing(self):
    for make in (lambda track: transforms.sgd(0.1, 0.9, regularizer='l2',
                                              weight_decay=1e-3, track=track),
                 lambda track: transforms.adam(1e-2, regularizer='decoupled',
                                               weight_decay=0.1, track=track)):
      chex.assert_trees_all_equal(_run(make(True), _params())[0],
                                  _run(make(False), _params())[0])

  def test_numbers_equal_hand_computation(self):
    lr = 0.05
    params = _params()
    tx = optax.chain(optax.sgd(lr), transforms.track_dynamics(lr, 'sgd', masks.kernel_mask))
    state = tx.init(params)
    g = _grads(0, params)
    updates, state = tx.update(g, state, params)
    got = dynamics.read(state)
    self.assertEqual(sorted(got), sorted(
        f'{leaf}/{m}' for leaf in ('conv/kernel', 'dense/kernel')
        for m in ('weight_norm', 'update_norm', 'angular_update', 'angular_update_rms',
                  'effective_lr')))
    every = optax.chain(optax.sgd(lr), transforms.track_dynamics(lr, 'sgd'))  # mask=None
    _, every_state = every.update(g, every.init(params), params)
    self.assertEqual({k.rsplit('/', 1)[0] for k in dynamics.read(every_state)},
                     {'conv/kernel', 'dense/kernel', 'dense/bias'})
    w = np.asarray(params['conv']['kernel'], np.float64).reshape(-1, 8)
    u = -lr * np.asarray(g['conv']['kernel'], np.float64).reshape(-1, 8)
    n = np.linalg.norm(w, axis=0)
    cos = np.sum(w * (w + u), 0) / (n * np.linalg.norm(w + u, axis=0))
    np.testing.assert_allclose(got['conv/kernel/weight_norm'], n.mean(), rtol=1e-5)
    np.testing.assert_allclose(got['conv/kernel/update_norm'],
                               np.linalg.norm(u, axis=0).mean(), rtol=1e-5)
    np.testing.assert_allclose(got['conv/kernel/angular_update'],
                               np.arccos(cos).mean(), rtol=1e-4)
    np.testing.assert_allclose(got['conv/kernel/angular_update_rms'],
                               np.sqrt(np.mean(np.arccos(cos) ** 2)), rtol=1e-4)
    np.testing.assert_allclose(got['conv/kernel/effective_lr'], (lr / n ** 2).mean(),
                               rtol=1e-5)

  def test_adam_effective_lr_and_schedule(self):
    sched = optax.linear_schedule(1.0, 0.5, 4)
    params = _params()
    tx = optax.chain(optax.adam(sched), transforms.track_dynamics(sched, 'adam'))
    _, state, _ = _run(tx, params, steps=3)
    # After 3 updates the last one used count 2: lr = 1 - 0.5 * 2/4 = 0.75,
    # at the params before that step.
    _, _, hist = _run(optax.adam(sched), params, steps=2)
    n = np.linalg.norm(np.asarray(hist[-1]['dense']['kernel']), axis=0)
    np.testing.assert_allclose(dynamics.read(state)['dense/kernel/effective_lr'],
                               (0.75 / n).mean(), rtol=1e-5)

  def test_effective_lr_leaves_out_collapsed_units(self):
    # One of four units decayed to 1e-4 of the others: its lr/||w||^2 (1e8 times
    # theirs) would be the whole mean; the tracked value is the live units' mean.
    w = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    w[:, 2] *= 1e-4
    lr = 0.1
    tx = transforms.track_dynamics(lr, 'sgd')
    params = {'kernel': jnp.asarray(w)}
    _, state = tx.update({'kernel': jnp.zeros_like(params['kernel'])}, tx.init(params),
                         params)
    n = np.linalg.norm(w.astype(np.float64), axis=0)
    np.testing.assert_allclose(dynamics.read(state)['kernel/effective_lr'],
                               (lr / n[[0, 1, 3]] ** 2).mean(), rtol=1e-5)
    chex.assert_trees_all_equal(dynamics.live_units(jnp.asarray(n)),
                                jnp.array([True, True, False, True]))

  def test_rms_angle_over_the_live_units_of_effective_lr(self):
    # Units 0, 1 turn by different angles (the RMS exceeds the mean), unit 2
    # collapsed: it is in the mean angle, not in the RMS or the effective LR.
    w = jnp.array([[1.0, 1.0, 1e-5], [0.0, 0.0, 0.0]])
    u = jnp.array([[0.0, 0.0, 0.0], [0.1, 0.5, 1.0]])
    tx = transforms.track_dynamics(0.1, 'sgd')
    _, state = tx.update({"k": u}, tx.init({"k": w}), {"k": w})
    got = dynamics.read(state)
    angles = np.arctan(np.array([0.1, 0.5, 1e5]))
    np.testing.assert_allclose(got['k/angular_update'], angles.mean(), rtol=1e-5)
    np.testing.assert_allclose(got['k/angular_update_rms'],
                               np.sqrt(np.mean(angles[:2] ** 2)), rtol=1e-5)
    np.testing.assert_allclose(got['k/effective_lr'], 0.1, rtol=1e-5)

  def test_gradient_at_unit_scale_over_live_units(self):
    # Unit 0: ||g|| ||w|| = 3 * 2; unit 1: no gradient (dead); unit 2 collapsed.
    # track_gradients first sees the loss's gradient, not the L2 term after it.
    w = jnp.array([[2.0, 1.0, 1e-6], [0.0, 1.0, 0.0]])
    g = jnp.array([[0.0, 0.0, 5.0], [3.0, 0.0, 0.0]])
    tx = optax.chain(transforms.track_gradients(),
                     transforms.l2_regularization(0.5), optax.sgd(0.1))
    _, state = tx.update({'k': g}, tx.init({'k': w}), {'k': w})
    self.assertEqual(dynamics.read(state), {'k/grad_norm_at_unit_scale': 6.0})
    w2 = jnp.array([[2.0, 1.0], [0.0, 1.0]])
    g2 = jnp.array([[0.0, 4.0], [3.0, 0.0]])
    tx = transforms.track_gradients(mask={'k': True, 'b': False})
    _, state = tx.update({'k': g2, 'b': jnp.ones(2)}, tx.init({'k': w2, 'b': jnp.ones(2)}),
                         {'k': w2, 'b': jnp.ones(2)})
    np.testing.assert_allclose(dynamics.read(state)['k/grad_norm_at_unit_scale'],
                               np.sqrt((6.0 ** 2 + (4 * np.sqrt(2)) ** 2) / 2), rtol=1e-6)
    self.assertEqual(list(dynamics.read(state)), ['k/grad_norm_at_unit_scale'])

  @chex.variants(with_jit=True, without_jit=True)
  def test_moving_average_is_adams_bias_corrected_average(self):
    decay, steps = 0.8, 6
    params = _params()
    ema = optax.chain(transforms.track_gradients(ema_decay=decay), optax.sgd(0.05),
                      transforms.track_dynamics(0.05, 'sgd', ema_decay=decay))
    last = optax.chain(transforms.track_gradients(), optax.sgd(0.05),
                       transforms.track_dynamics(0.05, 'sgd'))
    ema_update, last_update = self.variant(ema.update), self.variant(last.update)
    ema_state, last_state, reads = ema.init(params), last.init(params), []
    for t in range(steps):
      g = _grads(t, params)
      _, ema_state = ema_update(g, ema_state, params)
      updates, last_state = last_update(g, last_state, params)
      reads.append(dynamics.read(last_state))
      params = optax.apply_updates(params, updates)
    got = dynamics.read(ema_state)
    for key in got:
      xs = np.array([float(r[key]) for r in reads], np.float64)
      root = key.endswith(('_rms', 'unit_scale'))
      m = 0.0
      for x in xs:  # Kingma and Ba 2015, Algorithm 1: m = d m + (1 - d) x, m / (1 - d^t)
        m = decay * m + (1 - decay) * (x ** 2 if root else x)
      want = m / (1 - decay ** steps)
      np.testing.assert_allclose(got[key], np.sqrt(want) if root else want, rtol=1e-5,
                                 err_msg=key)
    zero = optax.chain(transforms.track_gradients(ema_decay=0.0), optax.sgd(0.05),
                       transforms.track_dynamics(0.05, 'sgd', ema_decay=0.0))
    _, state = zero.update(_grads(0, _params()), zero.init(_params()), _params())
    _, want = last.update(_grads(0, _params()), last.init(_params()), _params())
    chex.assert_trees_all_close(dynamics.read(state), dynamics.read(want))

  @parameterized.parameters(
      (1.0, ValueError, r'ema_decay must be in \[0, 1\), got 1.0'),
      (-0.1, ValueError, r'ema_decay must be in \[0, 1\)'),
      ('0.9', TypeError, 'ema_decay must be a real number'),
      (optax.constant_schedule(0.9), TypeError, 'ema_decay must be a number in'))
  def test_bad_ema_decay(self, value, error, match):
    for make in (lambda: transforms.track_dynamics(0.1, ema_decay=value),
                 lambda: transforms.track_gradients(ema_decay=value)):
      with pytest.raises(error, match=match):
        make()

  def test_angle_of_tiny_updates_is_accurate(self):
    w = jnp.array([[1.0], [0.0]])
    new = jnp.array([[1.0], [1e-4]])
    chex.assert_trees_all_close(dynamics.angular_update(w, new), jnp.array([1e-4]),
                                rtol=1e-5)


class ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), use_bias=False)(x)
    x = nn.relu(layers.BatchNorm(use_running_average=False)(x))
    x = nn.Conv(8, (3, 3), use_bias=False)(x)
    x = nn.relu(layers.BatchNorm(use_running_average=False)(x))
    return nn.Dense(3)(x.mean((1, 2)))


def test_pythagorean_norm_growth_on_conv_bn_model():
  """Plain SGD, no decay: ||w_{t+1}||^2 = ||w_t||^2 + lr^2 ||g_t||^2 per unit."""
  model = ConvBN()
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  labels = jax.random.randint(jax.random.key(1), (16,), 0, 3)
  variables = model.init(jax.random.key(2), x)
  params, stats = variables['params'], variables['batch_stats']

  def loss(p):
    logits, _ = model.apply({'params': p, 'batch_stats': stats}, x, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  lr = 0.5
  tx = optax.sgd(lr)
  state = tx.init(params)
  grad = jax.jit(jax.grad(loss))
  for _ in range(5):
    g = grad(params)
    for name in ('Conv_0', 'Conv_1'):
      w, gw = params[name]['kernel'], g[name]['kernel']
      predicted = dynamics.unit_norms(w) ** 2 + lr ** 2 * dynamics.unit_norms(gw) ** 2
      new = w - lr * gw
      chex.assert_trees_all_close(dynamics.unit_norms(new) ** 2, predicted, rtol=1e-5)
      assert float(jnp.max(jnp.abs(jnp.sum(w * gw, (0, 1, 2))))) < 1e-4 * float(
          jnp.max(dynamics.unit_norms(w) * dynamics.unit_norms(gw)))
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)


@pytest.mark.parametrize('tx', [
    transforms.l2_regularization(1e-3), transforms.decoupled_weight_decay(1e-3),
    transforms.unit_norm_projection(masks.kernel_mask), transforms.track_dynamics(0.1)])
def test_params_required(tx):
  p = _params()
  for call in (lambda: tx.update(p, tx.init(p)), lambda: tx.update(p, tx.init(p), None)):
    with pytest.raises(ValueError, match='needs the current params'):
      call()


class VariantsAndDtypesTest(chex.TestCase):
  """Each transform under jit and without, in float32, bfloat16 and float64 (x64
  enabled), against the hand formula computed in float64."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(dtype=(jnp.float32, jnp.bfloat16, jnp.float64),
                         kind=('l2', 'decoupled', 'projection'))
  def test_against_hand_formula(self, dtype, kind):
    with dtype_context(dtype):
      self._check_against_hand_formula(dtype, kind)

  def _check_against_hand_formula(self, dtype, kind):
    w = jnp.array([[3.0, 0.5], [4.0, -1.0], [0.0, 2.0]], dtype)
    u = jnp.array([[0.1, -0.2], [0.3, 0.1], [-0.1, 0.2]], dtype)
    tx = {'l2': lambda: transforms.l2_regularization(0.1),
          'decoupled': lambda: transforms.decoupled_weight_decay(0.1),
          'projection': lambda: transforms.unit_norm_projection(lambda p: True,
                                                                radius=2.0)}[kind]()
    out, _ = self.variant(tx.update)(u, tx.init(w), w)
    w64, u64 = np.asarray(w, np.float64), np.asarray(u, np.float64)
    if kind == 'l2':
      want = u64 + 0.1 * w64
    elif kind == 'decoupled':
      want = u64 - 0.1 * w64
    else:
      new = w64 + u64
      want = 2.0 * new / np.linalg.norm(new, axis=0) - w64
    self.assertEqual(out.dtype, dtype)
    tol = {jnp.float64: 1e-12, jnp.float32: 1e-6, jnp.bfloat16: 3e-2}[dtype]
    chex.assert_trees_all_close(np.asarray(out, np.float64), want, atol=tol, rtol=tol)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(dtype=(jnp.float32, jnp.bfloat16, jnp.float64))
  def test_tracking_is_at_least_float32_for_any_dtype(self, dtype):
    with dtype_context(dtype):
      self._check_tracking(dtype)

  def _check_tracking(self, dtype):
    w = jnp.array([[2.0], [0.0]], dtype)
    tx = transforms.track_dynamics(0.1, 'sgd')
    _, state = self.variant(tx.update)(jnp.array([[0.0], [-0.1]], dtype), tx.init(w), w)
    got = dynamics.read(state)
    self.assertEqual(got['weight_norm'].dtype, jnp.promote_types(dtype, jnp.float32))
    np.testing.assert_allclose(float(got['angular_update']), np.arctan2(0.1, 2.0),
                               rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)
