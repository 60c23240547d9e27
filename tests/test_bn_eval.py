"""bnjax.bn_eval and --bn_eval against hand formulas and flax.linen.BatchNorm."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import bn_eval, layers
from bnjax.train import trainer
from bnjax.train.config import Config
from _helpers import TS

M = 0.9  # a fast EMA, so few steps move it far


class _TwoLayer(nn.Module):
  """Dense -> flax BatchNorm -> relu -> Dense -> bnjax MeanOnlyBatchNorm."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=False, momentum=M)(nn.Dense(4)(x)))
    return layers.MeanOnlyBatchNorm(use_running_average=False, momentum=M)(nn.Dense(3)(x))


def _batches(k=3, size=16, offset=2.0):
  x = jax.random.normal(jax.random.key(0), (k * size, 5)) * 1.5 + offset
  return [x[i * size:(i + 1) * size] for i in range(k)]


def _update(model):
  return lambda p, s, x: model.apply({'params': p, 'batch_stats': s}, x,
                                     mutable=['batch_stats'])[1]['batch_stats']


def test_debiased_equals_the_normalized_weighted_average_of_batch_statistics():
  # flax's own BatchNorm updates the EMA; the reference is the hand formula
  # sum_k (1-m) m^(t-k) b_k / (1 - m^t) over numpy batch statistics.
  bn = nn.BatchNorm(use_running_average=False, momentum=M)
  batches = _batches(k=5)
  variables = bn.init(jax.random.key(1), batches[0])
  stats = variables['batch_stats']
  for x in batches:
    _, upd = bn.apply({**variables, 'batch_stats': stats}, x, mutable=['batch_stats'])
    stats = upd['batch_stats']
  t = len(batches)
  weights = np.array([(1 - M) * M ** (t - 1 - k) for k in range(t)]) / (1 - M ** t)
  means = np.stack([np.asarray(x).mean(0) for x in batches])
  variances = np.stack([np.asarray(x).var(0) for x in batches])
  out = bn_eval.debiased(stats, t, momentum=M)
  chex.assert_trees_all_close(out['mean'], weights @ means, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(out['var'], weights @ variances, rtol=1e-5, atol=1e-5)
  # Without the correction the running mean is still (1 - m^t) of the way.
  assert np.all(np.abs(np.asarray(stats['mean']) - weights @ means) > 0.1)


def test_debiased_under_jit_equals_the_eager_result():
  # The count of a training loop is a traced int32 inside a jitted eval step.
  stats = {'bn': {'mean': jnp.array([0.0398, -1.0]), 'var': jnp.array([1.5, 0.5])}}
  jitted = jax.jit(lambda s, c: bn_eval.debiased(s, c, momentum=M))
  for count in (0, 1, 2, 7):
    chex.assert_trees_all_close(jitted(stats, jnp.int32(count)),
                                bn_eval.debiased(stats, count, momentum=M), rtol=1e-5)
  with pytest.raises(TypeError, match='count must be an integer'):
    jitted(stats, jnp.float32(2.0))


def test_debiased_at_count_zero_is_the_identity():
  stats = {'bn': {'mean': jnp.array([0.5]), 'var': jnp.array([2.0])}}
  assert bn_eval.debiased(stats, 0) is stats


@pytest.mark.parametrize('count, error, match', [
    (-1, ValueError, 'count must be >= 0'),
    (1.5, TypeError, 'count must be an int'),
    (True, TypeError, 'count must be an int'),
])
def test_debiased_refuses_bad_counts(count, error, match):
  with pytest.raises(error, match=match):
    bn_eval.debiased({'mean': jnp.zeros(1), 'var': jnp.ones(1)}, count)


def test_refuses_momentum_outside_the_open_interval():
  with pytest.raises(ValueError, match='momentum'):
    bn_eval.debiased({'mean': jnp.zeros(1), 'var': jnp.ones(1)}, 3, momentum=1.0)


def test_precise_gives_the_union_statistics_layer_by_layer():
  model = _TwoLayer()
  batches = _batches()
  variables = model.init(jax.random.key(1), batches[0])
  running = jax.tree_util.tree_map(lambda a: a + 0.25, variables['batch_stats'])
  out = bn_eval.precise(_update(model), variables['params'], running, batches, momentum=M)

  # Layer 1: statistics of Dense_0's outputs over all examples at once.
  p = variables['params']
  dense0 = lambda x: np.asarray(x) @ np.asarray(p['Dense_0']['kernel']) + np.asarray(
      p['Dense_0']['bias'])
  h = np.concatenate([dense0(x) for x in batches])
  chex.assert_trees_all_close(out['BatchNorm_0']['mean'], h.mean(0), rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(out['BatchNorm_0']['var'], h.var(0), rtol=1e-4, atol=1e-5)

  # Layer 2 sees layer 1 normalized per batch in training mode, as in PreciseBN.
  def layer2_input(x):
    a = dense0(x)
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5) * np.asarray(
        p['BatchNorm_0']['scale']) + np.asarray(p['BatchNorm_0']['bias'])
    return np.maximum(a, 0) @ np.asarray(p['Dense_1']['kernel']) + np.asarray(
        p['Dense_1']['bias'])

  z = np.concatenate([layer2_input(x) for x in batches])
  chex.assert_trees_all_close(out['MeanOnlyBatchNorm_0']['mean'], z.mean(0), rtol=1e-4,
                              atol=1e-5)
  # Mean-only BN updates no variance: the running value is kept.
  chex.assert_trees_all_close(out['MeanOnlyBatchNorm_0']['var'],
                              running['MeanOnlyBatchNorm_0']['var'])


def test_precise_weights_unequal_batches_by_their_size():
  # Four ones and one three: the pooled mean is 1.4 and the pooled variance 0.64,
  # where an unweighted mean of batch means would give 2.0 and variance 0.
  bn = layers.BatchNorm(use_running_average=False, momentum=M)
  x = jnp.array([[1.0], [1.0], [1.0], [1.0], [3.0]])
  variables = bn.init(jax.random.key(1), x)
  out = bn_eval.precise(_update(bn), variables['params'], variables['batch_stats'],
                        [x[:4], x[4:]], momentum=M)
  chex.assert_trees_all_close(out['mean'], np.array([1.4]), rtol=1e-5)
  chex.assert_trees_all_close(out['var'], np.array([0.64]), rtol=1e-5)
  # A ragged last batch of the multi-layer model: equal to the one-batch union.
  model = _TwoLayer()
  batches = _batches(k=1, size=24)
  variables = model.init(jax.random.key(1), batches[0])
  whole = jnp.concatenate(batches)
  ragged = [whole[:16], whole[16:]]
  first = bn_eval.precise(_update(model), variables['params'], variables['batch_stats'],
                          ragged, momentum=M)
  h = np.asarray(whole) @ np.asarray(variables['params']['Dense_0']['kernel'])
  h = h + np.asarray(variables['params']['Dense_0']['bias'])
  chex.assert_trees_all_close(first['BatchNorm_0']['mean'], h.mean(0), rtol=1e-5,
                              atol=1e-5)
  chex.assert_trees_all_close(first['BatchNorm_0']['var'], h.var(0), rtol=1e-4, atol=1e-5)


def test_precise_refuses_no_batches():
  model = _TwoLayer()
  variables = model.init(jax.random.key(1), _batches()[0])
  with pytest.raises(ValueError, match='at least one batch'):
    bn_eval.precise(_update(model), variables['params'], variables['batch_stats'], [],
                    momentum=M)


def test_precise_refuses_stats_without_mean_and_var():
  with pytest.raises(ValueError, match='mean/var'):
    bn_eval.debiased({'bn': {'mu': jnp.zeros(1)}}, 2)


# ------------------------------------------------------------------ --bn_eval


def test_bn_eval_choices_change_only_the_test_numbers(tmp_path):
  # 48 steps at momentum 0.99: the running statistics are 38% of the way to the
  # data, so debiased and precise statistics test far better than running ones
  # (measured: test MSE 0.086 running, 0.016 debiased, 0.021 precise).
  summaries = {mode: trainer.train(dataclasses.replace(TS, bn_eval=mode, bn_eval_batches=4),
                                   tmp_path / mode, progress=False)
               for mode in ('running', 'debiased', 'precise')}
  params = {mode: trainer.load_params(tmp_path / mode) for mode in summaries}
  chex.assert_trees_all_close(params['running'], params['debiased'], params['precise'])
  assert summaries['debiased']['test_loss'] < 0.5 * summaries['running']['test_loss']
  assert summaries['precise']['test_loss'] < 0.5 * summaries['running']['test_loss']


@pytest.mark.parametrize('change, match', [
    (dict(bn_eval='exact'), "--bn_eval: must be one of"),
    (dict(norm='layer', model='convnet', dataset='fashion_mnist', bn_eval='debiased'),
     '--bn_eval: --norm=layer keeps no running statistics'),
    (dict(norm='population', bn_eval='precise'), '--bn_eval: precise statistics'),
    (dict(bn_eval_batches=0), '--bn_eval_batches: must be a positive int'),
])
def test_config_refuses_bad_bn_eval(change, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(Config(), **change).validate()


def test_precise_statistics_use_at_most_the_training_set_once(caplog):
  # 512 examples in batches of 32: an epoch is 16 batches. --bn_eval_batches=100000
  # reads those 16, with a warning, and equals --bn_eval_batches=16.
  from bnjax.train import inputs, programs  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(TS, bn_eval='precise', bn_eval_batches=100000)
  with caplog.at_level('WARNING'):
    run_data = inputs.prepare(config)
  assert '--bn_eval_batches=100000 exceeds the 16 batches of an epoch' in caplog.text
  initial = programs.programs(config)[0]
  state = initial(jax.random.key(0), run_data.train_batches.batch(0, 0)['x'],
                  programs.hyperparameters(config))
  read = []
  epoch = run_data.train_batches.epoch

  def counted(e, *args, **kwargs):
    for batch in epoch(e, *args, **kwargs):
      read.append(e)
      yield batch

  run_data.train_batches.epoch = counted
  capped = programs.eval_batch_stats(config, state, run_data.train_batches)
  assert read == [0] * 16
  one_epoch = programs.eval_batch_stats(dataclasses.replace(config, bn_eval_batches=16),
                                        state, run_data.train_batches)
  chex.assert_trees_all_close(capped, one_epoch)
