"""bnjax.train and experiments.train: modes, resume, determinism, failures, flags."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import time

import chex
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from bnjax import masks, transforms
from bnjax.train import executors, step_metrics, trainer
from bnjax.train.config import Config
from bnjax.train.workdir import ConfigMismatchError
from bnjax.train import workdir as workdirs

from _helpers import ROOT, TIMING, TS, binary


def _metrics(workdir):
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in lines]


def _params(workdir):
  params = jax.device_get(trainer.load_params(workdir))
  leaves = jax.tree_util.tree_leaves(params)
  assert leaves and all(np.size(p) for p in leaves), params  # a real, non-empty tree
  return params


@pytest.mark.parametrize('mode', ['pmap', 'sharded'])
def test_parallel_modes_equal_one_device(mode):
  assert jax.device_count() == 4
  cfg = Config(norm='batch', batch_size=32, optimizer='momentum', regularizer='l2')
  rng = np.random.default_rng(0)
  batches = [{'x': rng.standard_normal((32, 28, 28, 1)).astype(np.float32),
              'y': rng.integers(0, 10, 32)} for _ in range(3)]

  def run(parallel):
    c = dataclasses.replace(cfg, parallel=parallel)
    model, tx = trainer.build_model(c), trainer.build_optimizer(c)
    host = trainer.build_model(dataclasses.replace(c, parallel='none'))
    ex = executors.Executor(parallel, model, tx, regression=False)
    state = ex.put_state(trainer.init_state(c, host, tx, batches[0]['x']))
    losses = []
    for b in batches:
      state, m = ex.step(state, b)
      losses.append(float(m['loss']))
    return losses, jax.device_get(ex.get_state(state))

  ref_losses, ref_state = run('none')
  losses, state = run(mode)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  chex.assert_trees_all_close(state.params, ref_state.params, atol=1e-5, rtol=1e-4)
  chex.assert_trees_all_close(state.batch_stats, ref_state.batch_stats, atol=1e-5,
                              rtol=1e-4)


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  return workdir, trainer.train(TS, workdir, progress=False)


def test_summary_and_metrics(reference_run):
  workdir, summary = reference_run
  assert summary['steps'] == 48 and np.isfinite(summary['test_loss'])
  lines = _metrics(workdir)
  assert [l['step'] for l in lines] == list(range(4, 49, 4))
  assert {'weight_norm/dense', 'angular_update/dense', 'effective_lr/dense',
          'loss', 'learning_rate'} <= set(lines[0])
  assert json.loads((workdir / 'summary.json').read_text()) == summary


def test_same_seed_is_bit_identical(reference_run, tmp_path):
  workdir, summary = reference_run
  again = trainer.train(TS, tmp_path, progress=False)
  chex.assert_trees_all_equal(_params(tmp_path), _params(workdir))
  assert _metrics(tmp_path) == _metrics(workdir)
  assert again['test_loss'] == summary['test_loss']


def test_interrupted_run_resumes_to_the_same_numbers(reference_run, tmp_path):
  workdir, summary = reference_run
  assert trainer.train(TS, tmp_path, progress=False, stop_after=21) == {}
  assert not (tmp_path / 'summary.json').exists()
  resumed = trainer.train(TS, tmp_path, progress=False)
  chex.assert_trees_all_equal(_params(tmp_path), _params(workdir))
  assert _metrics(tmp_path) == _metrics(workdir)  # lines 20 (after ckpt 16) redone once
  assert resumed['test_loss'] == summary['test_loss']


def test_finished_workdir_is_left_alone(reference_run):
  workdir, summary = reference_run
  before = (workdir / 'metrics.jsonl').read_text()
  assert trainer.train(TS, workdir, progress=False) == summary
  assert (workdir / 'metrics.jsonl').read_text() == before


def test_other_config_in_same_workdir_is_refused(tmp_path):
  trainer.train(TS, tmp_path, progress=False, stop_after=4)
  with pytest.raises(ConfigMismatchError, match='another config.*learning_rate'):
    trainer.train(dataclasses.replace(TS, learning_rate=0.1), tmp_path, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  cfg = dataclasses.replace(TS, norm='none', regularizer='none', weight_decay=0.0,
                            learning_rate=50.0, optimizer='sgd', momentum=0.0,
                            activation='linear')
  with pytest.raises(trainer.NonFiniteLossError, match=r'at step \d+.*last good checkpoint'):
    trainer.train(cfg, tmp_path, progress=False)
  summary = json.loads((tmp_path / 'summary.json').read_text())  # strict JSON
  assert summary['status'] == 'diverged' and summary['test_loss'] is None
  steps = sorted(map(int, os.listdir(tmp_path / 'checkpoints')))
  assert steps, 'the run diverged before its first checkpoint: nothing was tested'
  manager = workdirs.Checkpoints(tmp_path).manager
  for step in steps:
    params = jax.device_get(manager.restore(
        step, args=ocp.args.StandardRestore())['params'])
    assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params))


def _binary(workdir, *flags):
  return binary(workdir, *flags, num_epochs=40)


def test_kill_9_then_rerun_gives_identical_params(tmp_path):
  killed, clean = tmp_path / 'killed', tmp_path / 'clean'
  proc = subprocess.Popen(_binary(killed), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:
    ckpts = killed / 'checkpoints'
    if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 64
                              for p in ckpts.iterdir()):
      break
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / 'summary.json').exists(), 'the run finished before the kill'
  for workdir in (killed, clean):
    out = subprocess.run(_binary(workdir), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
  chex.assert_trees_all_equal(_params(killed), _params(clean))
  assert _metrics(killed) == _metrics(clean)
  summary = lambda w: {k: v for k, v in json.loads((w / 'summary.json').read_text()).items()
                       if k != 'wall_time_s'}
  assert summary(killed) == summary(clean)


def test_l2_with_projection_keeps_scale_invariant_kernels_at_unit_norm(tmp_path):
  cfg = dataclasses.replace(TS, projection=True, num_epochs=1)
  trainer.train(cfg, tmp_path, progress=False)
  kernel = np.asarray(_params(tmp_path)['dense']['kernel'])
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
  lines = _metrics(tmp_path)
  np.testing.assert_allclose(lines[-1]['weight_norm/dense'], 1.0, rtol=1e-5)


def test_gamma_decay_is_the_gradient_of_zeta_gamma_squared():
  """One SGD step with gamma_decay equals autodiff of loss + zeta * sum(gamma^2)."""
  zeta, lr = 0.3, 0.1
  cfg = dataclasses.replace(TS, norm='weight', optimizer='sgd', momentum=0.0, learning_rate=lr,
                            regularizer='none', weight_decay=0.0, gamma_decay=zeta)
  model, tx = trainer.build_model(cfg), trainer.build_optimizer(cfg)
  x = np.random.default_rng(0).standard_normal((32, 20)).astype(np.float32)
  params = model.init(jax.random.key(0), x)['params']
  gain = 'layer_instance/kernel/scale'  # WeightNorm's gain g, named as flax names it
  params['dense'][gain] = params['dense'][gain] * 1.7  # gamma away from 1

  def loss(p):
    return jax.numpy.mean(model.apply({'params': p}, x) ** 2)

  updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
  expected = jax.grad(lambda p: loss(p) + zeta * jax.numpy.sum(p['dense'][gain] ** 2))(
      params)
  chex.assert_trees_all_close(updates, jax.tree_util.tree_map(lambda g: -lr * g, expected),
                              rtol=1e-5, atol=1e-7)


def _assert_three_steps_equal(cfg, reference, input_shape):
  """Three steps of the config's optimizer on a batch-normed model's mean squared
  output equal ``reference``'s updates; returns the final params."""
  model, tx = trainer.build_model(cfg), trainer.build_optimizer(cfg)
  x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  params = variables['params']
  state, ref_state = tx.init(params), reference.init(params)

  def loss(p):
    out, _ = model.apply({**variables, 'params': p}, x, train=True, mutable=['batch_stats'])
    return jax.numpy.mean(out ** 2)

  for _ in range(3):
    grads = jax.grad(loss)(params)
    ours, state = tx.update(grads, state, params)
    theirs, ref_state = reference.update(grads, ref_state, params)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-7)
    params = optax.apply_updates(params, ours)
  return params


@pytest.mark.parametrize('fields,reference', [
    (dict(optimizer='adamp', regularizer='decoupled', weight_decay=0.1, learning_rate=1e-2),
     lambda: transforms.adamp(1e-2, weight_decay=0.1, mask=masks.kernel_mask)),
    (dict(optimizer='sgdp', momentum=0.9, regularizer='none', weight_decay=0.0),
     lambda: transforms.sgdp(0.05, 0.9, mask=masks.kernel_mask)),
    (dict(optimizer='adam', regularizer='rotational', weight_decay=0.1, learning_rate=1e-2),
     lambda: transforms.rotational('adamw', 1e-2, 0.1, mask=masks.scale_invariant_kernels,
                                   decay_mask=masks.kernel_mask)),
    (dict(optimizer='sgd', momentum=0.9, regularizer='rotational', weight_decay=1e-3),
     lambda: transforms.rotational('sgd', 0.05, 1e-3, momentum=0.9,
                                   mask=masks.scale_invariant_kernels,
                                   decay_mask=masks.kernel_mask)),
], ids=['adamp', 'sgdp', 'rotational-adamw', 'rotational-sgd'])
def test_config_builds_adamp_sgdp_and_rotational(fields, reference, tmp_path):
  # Three steps of the run's optimizer equal the transform built by hand, and a
  # whole run trains (finite loss, every kernel tracked).
  cfg = dataclasses.replace(TS, **fields).validate()
  _assert_three_steps_equal(cfg, reference(), (32, 20))
  summary = trainer.train(cfg, tmp_path, progress=False)
  assert summary['status'] == 'finished' and np.isfinite(summary['test_loss'])
  assert 'angular_update/dense' in _metrics(tmp_path)[-1]


def test_unit_angle_metrics_against_numpy():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((6, 5))
  w[:, 4] *= 1e-3  # collapsed: below 1% of the median norm
  new = w + 0.05 * rng.standard_normal((6, 5))
  g = rng.standard_normal((6, 5))
  g[:, 1] = 0.0  # dead: no gradient reaches it
  cos = np.sum(w * new, 0) / (np.linalg.norm(w, axis=0) * np.linalg.norm(new, axis=0))
  angles = np.arccos(np.clip(cos, -1, 1))
  live = [0, 2, 3]
  out = step_metrics.unit_angle_metrics(
      {'conv': {'kernel': jax.numpy.asarray(w, jax.numpy.float32)}, 'b': jax.numpy.ones(5)},
      {'conv': {'kernel': jax.numpy.asarray(new, jax.numpy.float32)}, 'b': jax.numpy.ones(5)},
      {'conv': {'kernel': jax.numpy.asarray(g, jax.numpy.float32)}, 'b': jax.numpy.ones(5)})
  assert sorted(out) == ['angular_update_sq/conv', 'dead_units/conv']
  assert float(out['angular_update_sq/conv']) == pytest.approx(np.mean(angles[live] ** 2),
                                                               rel=1e-4)
  assert float(out['dead_units/conv']) == pytest.approx(2 / 5)
  # every unit dead: no angle to average, and no division by zero
  ones = {'k': {'kernel': jax.numpy.ones((2, 2))}}
  out = step_metrics.unit_angle_metrics(ones, ones, {'k': {'kernel': jax.numpy.zeros((2, 2))}})
  assert float(out['angular_update_sq/k']) == 0.0 and float(out['dead_units/k']) == 1.0


def test_grad_sq_at_unit_norm_by_hand():
  w = np.array([[3.0, 0.0], [4.0, 1.0]], np.float32)  # unit norms 5 and 1
  g = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)  # unit norms 1 and 2
  out = step_metrics.unit_scale_grad_sq({'conv': {'kernel': g}, 'norm': {'scale': np.ones(2)}},
                                 {'conv': {'kernel': w}, 'norm': {'scale': np.ones(2)}})
  assert sorted(out) == ['grad_sq_at_unit_norm/conv', 'per_unit/grad_sq_at_unit_norm/conv',
                         'per_unit/weight_norm/conv']
  assert float(out['grad_sq_at_unit_norm/conv']) == pytest.approx(((1 * 5) ** 2 + (2 * 1) ** 2) / 2)
  np.testing.assert_allclose(out['per_unit/grad_sq_at_unit_norm/conv'], [25.0, 4.0])
  np.testing.assert_allclose(out['per_unit/weight_norm/conv'], [5.0, 1.0])


def test_eval_every_logs_test_metrics_and_gains(tmp_path):
  cfg = dataclasses.replace(TS, eval_every=16)
  summary = trainer.train(cfg, tmp_path, progress=False)
  lines = _metrics(tmp_path)
  evaluated = [l['step'] for l in lines if 'test_loss' in l]
  assert evaluated == [16, 32, 48]  # 16 steps per epoch, 3 epochs
  assert lines[-1]['test_loss'] == pytest.approx(summary['test_loss'])
  assert all(l['gamma_sq/dense_norm'] > 0 for l in lines)
  assert summary['fan_in'] == {'dense': 20}



def test_the_last_step_is_evaluated_once_and_again_after_a_lost_summary(tmp_path, monkeypatch):
  calls = []
  evaluate = trainer._evaluate  # pylint: disable=protected-access

  def counted(config, eval_step, state, *args):
    calls.append(int(state.step))
    return evaluate(config, eval_step, state, *args)

  monkeypatch.setattr(trainer, '_evaluate', counted)
  summary = trainer.train(dataclasses.replace(TS, eval_every=16), tmp_path, progress=False)
  assert calls == [16, 32, 48]  # the loop's evaluation of step 48 is the summary's
  (tmp_path / workdirs.SUMMARY).unlink()  # killed after the last checkpoint
  calls.clear()
  assert trainer.train(dataclasses.replace(TS, eval_every=16), tmp_path,
                       progress=False) == {**summary, 'wall_time_s': pytest.approx(
                           summary['wall_time_s'], abs=60)}
  assert calls == [48]
  calls.clear()
  trainer.train(dataclasses.replace(TS, eval_every=0), tmp_path / 'no_eval', progress=False)
  assert calls == [48]

@pytest.mark.parametrize('fields,message', [
    (dict(gamma_decay=-1.0), '--gamma_decay: must be >= 0'),
    (dict(gamma_decay=0.1, norm='none'), '--gamma_decay: acts on the normalization gains'),
    (dict(eval_every=6), '--eval_every: must be a multiple of --log_every=4'),
    (dict(eval_every=-8), '--eval_every: must be >= 0'),
    (dict(checkpoint_every=0), '--checkpoint_every: must be a positive int'),
    (dict(width=0), '--width: must be a positive int'),
    (dict(width=16), '--width: sets the ConvNet'),  # TS is the perceptron
])
def test_config_names_the_bad_flag(fields, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(TS, **fields).validate()


def _head_kernels(params):
  return jax.tree_util.tree_map(lambda k, s: k and not s, masks.kernel_mask(params),
                                masks.scale_invariant_kernels(params))


@pytest.mark.parametrize('fields,reference', [
    (dict(optimizer='sgd', momentum=0.9, regularizer='l2', weight_decay=0.3,
          head_weight_decay=0.01, learning_rate=0.1),
     lambda: optax.chain(optax.add_decayed_weights(0.01, _head_kernels),
                         optax.add_decayed_weights(0.3, masks.scale_invariant_kernels),
                         optax.sgd(0.1, momentum=0.9))),
    (dict(optimizer='adam', regularizer='decoupled', weight_decay=0.5, head_weight_decay=0.0,
          learning_rate=1e-2, projection=True),
     lambda: optax.chain(optax.adamw(1e-2, weight_decay=0.5,
                                     mask=masks.scale_invariant_kernels),
                         transforms.unit_norm_projection(masks.scale_invariant_kernels))),
    (dict(optimizer='adam', regularizer='decoupled', weight_decay=0.5, head_weight_decay=0.2,
          learning_rate=1e-2),
     lambda: optax.chain(optax.adamw(1e-2, weight_decay=0.5,
                                     mask=masks.scale_invariant_kernels),
                         optax.add_decayed_weights(-1e-2 * 0.2, _head_kernels))),
], ids=['sgd-l2', 'adamw-projection-head-0', 'adamw'])
def test_head_weight_decay_decays_the_head_apart(fields, reference):
  # The ConvNet's head kernel gets head_weight_decay and its conv kernels
  # weight_decay: three steps equal optax's masked decays built by hand.
  cfg = Config(width=4, norm='batch', batch_size=8, train_subset=64, log_every=2,
               checkpoint_every=4, **fields).validate()
  params = _assert_three_steps_equal(cfg, reference(), (8, 28, 28, 1))
  assert set(params) >= {'conv1', 'head'}


def test_head_weight_decay_equal_to_weight_decay_is_the_plain_regularizer():
  cfg = Config(width=4, batch_size=8, train_subset=64, log_every=2, checkpoint_every=4,
               regularizer='l2', weight_decay=0.3)
  x = np.random.default_rng(1).standard_normal((8, 28, 28, 1)).astype(np.float32)
  model = trainer.build_model(cfg)
  variables = model.init(jax.random.key(0), x)
  grads = jax.tree_util.tree_map(jax.numpy.ones_like, variables['params'])
  out = [trainer.build_optimizer(c).update(grads, trainer.build_optimizer(c).init(
      variables['params']), variables['params'])[0]
         for c in (cfg, dataclasses.replace(cfg, head_weight_decay=0.3))]
  chex.assert_trees_all_close(out[0], out[1], rtol=1e-6)


@pytest.mark.parametrize('units', [3, 7, 10, 100])
def test_dead_unit_fraction_is_exactly_zero_when_all_live_under_jit(units):
  """XLA turns 1 - count / n into 1 - count * (1/n), which read -1.49e-08 for the
  10-unit head; the fraction is counted as (n - count) / n."""
  w = jax.random.normal(jax.random.PRNGKey(0), (5, units))
  g = jax.random.normal(jax.random.PRNGKey(1), (5, units))
  tree = lambda a: {'k': {'kernel': a}}
  out = jax.jit(step_metrics.unit_angle_metrics)(tree(w), tree(w - 0.1 * g), tree(g))
  assert float(out['dead_units/k']) == 0.0


def test_effective_lr_only_for_scale_invariant_kernels(tmp_path):
  """The ConvNet's head has no norm after it: no effective learning rate line for
  it (its norm and angle are still logged); the batch-normed convs have one;
  without a per-unit-invariant norm no kernel has one."""
  cfg = Config(train_subset=256, batch_size=64, num_epochs=1, width=4, log_every=2,
               checkpoint_every=4, eval_batch_size=500, tensorboard=False)
  trainer.train(cfg, tmp_path / 'bn', progress=False)
  line = _metrics(tmp_path / 'bn')[-1]
  assert 'effective_lr/head' not in line and 'weight_norm/head' in line
  assert {'effective_lr/conv1', 'effective_lr/conv2', 'effective_lr/conv3'} <= set(line)
  trainer.train(dataclasses.replace(cfg, norm='none'), tmp_path / 'none', progress=False)
  assert not [k for k in _metrics(tmp_path / 'none')[-1] if k.startswith('effective_lr/')]
