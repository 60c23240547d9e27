"""bnjax.train.fit: a user's own flax model and arrays through bnjax's loop."""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from bnjax import layers, models
from bnjax.train import Config, fit, inputs, trainer
from bnjax.train import workdir as workdirs
from _helpers import fake_fashion_mnist, metrics


class Net(nn.Module):
  """A user's model: Dense -> bnjax BatchNorm -> ReLU -> Dense head."""
  classes: int = 3

  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(16)(x.reshape(len(x), -1))
    x = nn.relu(layers.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(self.classes, name='classifier')(x)


def _arrays(n_train=64, n_test=32, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n_train + n_test, 6)).astype(np.float32)
  y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)).astype(np.int32)
  return {'train': (x[:n_train], y[:n_train]), 'test': (x[n_train:], y[n_train:])}


CFG = Config(batch_size=16, num_steps=12, log_every=4, checkpoint_every=4, learning_rate=0.1,
             weight_decay=1e-3, tensorboard=False)


def test_fit_equals_bnjax_train_on_the_same_model_and_data(tmp_path, monkeypatch):
  """bnjax's own ConvNet on (fake) Fashion-MNIST: fit on the arrays bnjax-train's
  pipeline produces trains the same parameters and logs the same lines; the
  measured invariant kernels are the structural ones (conv1-3, not the head)."""
  folder = tmp_path / 'fmnist'
  folder.mkdir()
  fake_fashion_mnist(folder, n_train=96, n_test=40)
  monkeypatch.setenv('BNJAX_FASHION_MNIST_DIR', str(folder))
  cfg = Config(width=4, batch_size=32, num_epochs=2, log_every=2, checkpoint_every=2,
               eval_batch_size=40, tensorboard=False)
  reference = trainer.train(cfg, tmp_path / 'train', data_dir=str(tmp_path / 'tfds'),
                            progress=False)
  run_data = inputs.prepare(cfg, str(tmp_path / 'tfds'))
  arrays = {}
  for name, batches in (('train', run_data.train_batches), ('test', run_data.test_batches)):
    split = batches.data
    x = (split.x.astype(np.float32) / 255.0 - batches.mean) / batches.std
    arrays[name] = (x.astype(np.float32), split.y.astype(np.int32))
  model = models.build('convnet', 'batch', width=4)
  mine = fit(model, arrays, dataclasses.replace(cfg, num_epochs=2), workdir=tmp_path / 'fit',
             progress=False)
  record = json.loads((tmp_path / 'fit' / 'config.json').read_text())
  assert record['invariant_layers'] == ['conv1', 'conv2', 'conv3']
  a, b = trainer.load_params(tmp_path / 'train'), trainer.load_params(tmp_path / 'fit')
  for layer in ('conv1', 'conv3', 'head'):
    np.testing.assert_allclose(b[layer]['kernel'], a[layer]['kernel'], rtol=1e-4, atol=1e-6)
  lines_a, lines_b = metrics(tmp_path / 'train'), metrics(tmp_path / 'fit')
  assert [l['step'] for l in lines_b] == [l['step'] for l in lines_a] == [2, 4, 6]
  np.testing.assert_allclose([l['loss'] for l in lines_b], [l['loss'] for l in lines_a],
                             rtol=1e-4)
  assert 'effective_lr/head' not in lines_b[-1] and 'effective_lr/conv2' in lines_b[-1]
  assert mine['test_loss'] == pytest.approx(reference['test_loss'], rel=1e-4)


def test_fit_a_users_model_measures_its_mask_and_resumes_exactly(tmp_path):
  """The user's Dense feeding batch norm is measured scale-invariant, the head is
  not; killed after step 6 (checkpoint 4), the rerun ends as an uninterrupted run;
  another model in the same workdir is refused, naming what differs."""
  data = _arrays()
  assert fit(Net(), data, CFG, workdir=tmp_path / 'a', progress=False, stop_after=6) == {}
  resumed = fit(Net(), data, CFG, workdir=tmp_path / 'a', progress=False)
  whole = fit(Net(), data, CFG, workdir=tmp_path / 'b', progress=False)
  assert resumed['status'] == 'finished' and resumed['steps'] == 12
  assert resumed['test_loss'] == whole['test_loss']
  record = json.loads((tmp_path / 'a' / 'config.json').read_text())
  assert record['invariant_layers'] == ['Dense_0']
  # 6*16 + 16 + 16 + 16 + 16*3 + 3 parameters (kernels, biases, gain, shift)
  assert record['user_model'].startswith('Net(195 parameters in 6 leaves')
  line = metrics(tmp_path / 'a')[-1]
  assert 'effective_lr/Dense_0' in line and 'effective_lr/classifier' not in line
  # A finished workdir is not answered for another model or other data.
  with pytest.raises(workdirs.ConfigMismatchError, match=r'user_model: was .Net\(195'):
    fit(Net(classes=4), data, CFG, workdir=tmp_path / 'a', progress=False)
  with pytest.raises(workdirs.ConfigMismatchError, match='data: was'):
    fit(Net(), _arrays(seed=1), CFG, workdir=tmp_path / 'a', progress=False)


def _refusals(WORKDIR):  # pylint: disable=invalid-name
  data = _arrays()
  x, y = data['train']
  return [
      ('not a module', lambda: fit(lambda x, train: x, data, CFG, workdir=WORKDIR),
       TypeError, 'model: must be a flax.linen.Module'),
      ('config type', lambda: fit(Net(), data, {'batch_size': 16}, workdir=WORKDIR),
       TypeError, 'config: must be a bnjax.train.Config'),
      ('keys', lambda: fit(Net(), {'train': (x, y)}, CFG, workdir=WORKDIR), ValueError,
       r"data_dict: must be \{'train'"),
      ('lengths', lambda: fit(Net(), dict(data, train=(x, y[:-1])), CFG, workdir=WORKDIR),
       ValueError, r"data\['train'\]: x has 64 examples and y 63"),
      ('float labels', lambda: fit(Net(), dict(data, train=(x, y.astype(float))), CFG,
                                   workdir=WORKDIR),
       ValueError, 'y must hold integer class labels'),
      ('nan inputs', lambda: fit(Net(), dict(data, train=(np.where(x > 2, np.nan, x), y)),
                                 CFG, workdir=WORKDIR),
       ValueError, 'x holds non-finite values'),
      ('label out of range', lambda: fit(Net(), dict(data, test=(data['test'][0],
                                                                 data['test'][1] + 5)),
                                         CFG, workdir=WORKDIR),
       ValueError, r'model: must return logits \(batch, classes\) with at least 8'),
      ('negative label', lambda: fit(Net(), dict(data, test=(data['test'][0],
                                                             data['test'][1] - 1)),
                                     CFG, workdir=WORKDIR),
       ValueError, r"labels must be in \[0, classes\)"),
      ('pmap', lambda: fit(Net(), data, dataclasses.replace(CFG, parallel='pmap'),
                           workdir=WORKDIR),
       ValueError, 'config.parallel: fit runs parallel="none" or "sharded"'),
      ('bad config', lambda: fit(Net(), data, dataclasses.replace(CFG, num_steps=-1),
                                 workdir=WORKDIR),
       ValueError, '--num_steps: must be >= 0'),
      ('batch too large', lambda: fit(Net(), data, dataclasses.replace(CFG, batch_size=65),
                                      workdir=WORKDIR),
       ValueError, '--batch_size: 65 exceeds the 64 training examples'),
      ('model without train', lambda: fit(nn.Dense(3), data, CFG, workdir=WORKDIR),
       ValueError, 'model: could not be initialized and applied'),
  ]


@pytest.mark.parametrize('index', range(12))
def test_fit_refuses_before_any_file(tmp_path, index):
  case, call, error, match = _refusals(tmp_path / 'run')[index]
  with pytest.raises(error, match=match):
    call()
  assert not (tmp_path / 'run').exists(), case


def test_fit_an_nnx_model_equals_its_linen_twin(tmp_path):
  """The same network as a flax.nnx module (started from the linen twin's
  initial weights) trains to the same parameters and test loss through fit,
  and ends holding them; its Linear feeding batch norm is measured invariant."""
  from flax import nnx as fnnx
  from bnjax import nnx as bnnx
  if not hasattr(fnnx, 'as_pure'):
    pytest.skip('fit trains nnx models with flax >= 0.11')

  class NnxNet(fnnx.Module):
    def __init__(self, rngs):
      self.Dense_0 = fnnx.Linear(6, 16, rngs=rngs)
      self.BatchNorm_0 = bnnx.BatchNorm(16, rngs=rngs)
      self.classifier = fnnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
      return self.classifier(jax.nn.relu(self.BatchNorm_0(self.Dense_0(x))))

  data = _arrays()
  linen = fit(Net(), data, CFG, workdir=tmp_path / 'linen', progress=False)
  start = Net().init(jax.random.key(CFG.seed), data['train'][0][:16], train=True)
  model = NnxNet(fnnx.Rngs(1))
  fnnx.update(model, start['params'])   # the linen twin's initial weights
  mine = fit(model, data, CFG, workdir=tmp_path / 'nnx', progress=False)
  assert mine['test_loss'] == pytest.approx(linen['test_loss'], rel=1e-4)
  trained = trainer.load_params(tmp_path / 'linen')
  np.testing.assert_allclose(model.Dense_0.kernel[...], trained['Dense_0']['kernel'],
                             rtol=1e-4, atol=1e-6)
  record = json.loads((tmp_path / 'nnx' / 'config.json').read_text())
  assert record['invariant_layers'] == ['Dense_0']
  assert record['user_model'].startswith('NnxNet(195 parameters')


# ------------------------------------------------------------ an iterator of batches


def _stream(arrays, cfg, steps=None):
  """The batches fit's array path trains on, as a user's generator would yield them."""
  from bnjax.train import data
  batches = data.Batches(data.Arrays(*arrays['train']), cfg.batch_size, seed=cfg.seed)
  for batch in batches.steps(0, steps or cfg.num_steps):
    yield batch['x'], batch['y']


def test_fit_on_an_iterator_equals_the_arrays_and_resumes_exactly(tmp_path):
  """The same batches from a generator train the same run as the arrays (params,
  lines, test loss; precise statistics from the first batches, read ahead at the
  first evaluation); a run stopped after 5 steps and resumed with a new
  generator (its first 4 batches skipped, from the checkpoint at 4) ends identical."""
  arrays = _arrays(n_train=128)  # 8 batches an epoch: precise reads 6 of them
  cfg = dataclasses.replace(CFG, bn_eval='precise', bn_eval_batches=6, eval_every=4,
                            num_steps=8)
  ref = fit(Net(), arrays, cfg, workdir=tmp_path / 'arrays', progress=False)
  streamed = {'train': _stream(arrays, cfg), 'test': arrays['test']}
  mine = fit(Net(), streamed, cfg, workdir=tmp_path / 'stream', progress=False)
  assert mine['test_loss'] == ref['test_loss']
  strip = lambda lines: [{k: v for k, v in l.items() if k not in ('seconds', 'epoch')}
                         for l in lines]
  assert strip(metrics(tmp_path / 'stream')) == strip(metrics(tmp_path / 'arrays'))
  assert {l['epoch'] for l in metrics(tmp_path / 'stream')} == {0}
  fit(Net(), {'train': _stream(arrays, cfg), 'test': arrays['test']}, cfg,
      workdir=tmp_path / 'resumed', progress=False, stop_after=5)
  again = fit(Net(), {'train': _stream(arrays, cfg), 'test': arrays['test']}, cfg,
              workdir=tmp_path / 'resumed', progress=False)
  assert again['test_loss'] == ref['test_loss']
  chex_equal = jax.tree_util.tree_map(
      lambda a, b: bool(np.array_equal(a, b)),
      workdirs.Checkpoints(tmp_path / 'resumed').latest_params(),
      workdirs.Checkpoints(tmp_path / 'arrays').latest_params())
  assert all(jax.tree_util.tree_leaves(chex_equal))


def _bad_batches(arrays, cfg, at, bad):
  for step, (x, y) in enumerate(_stream(arrays, cfg)):
    yield bad(x, y) if step == at else (x, y)


@pytest.mark.parametrize('train,cfg_change,match', [
    (lambda a, c: _stream(a, c), dict(num_steps=0, num_epochs=1),
     'config.num_steps: training on an iterator of batches needs num_steps'),
    (lambda a, c: 42, {}, r"data\['train'\]: must be a pair \(x, y\) of arrays or an "
                          r'iterable of \(x, y\) batches, got int'),
    (lambda a, c: _bad_batches(a, c, 0, lambda x, y: (x[:8], y[:8])), {},
     r"data\['train'\], batch 0: x must be \(16, features...\)"),
    (lambda a, c: _bad_batches(a, c, 0, lambda x, y: (x, y.astype(np.float32))), {},
     r"batch 0: y must hold integer class labels"),
])
def test_a_bad_iterator_is_refused_before_any_file(tmp_path, train, cfg_change, match):
  arrays = _arrays()
  cfg = dataclasses.replace(CFG, **cfg_change)
  with pytest.raises(ValueError, match=match):
    fit(Net(), {'train': train(arrays, cfg), 'test': arrays['test']}, cfg,
        workdir=tmp_path / 'run', progress=False)
  assert not (tmp_path / 'run').exists()


def test_a_bad_batch_mid_run_is_named_and_the_run_resumes(tmp_path):
  """A bad batch mid-run raises naming it (labels, non-finite, shape) and an
  early end names the count; the checkpoint before it stays, and a call with
  good batches finishes the run as an uninterrupted one."""
  arrays = _arrays()
  cases = [(lambda x, y: (x, np.full_like(y, 7)), r'batch 6: labels must be in \[0, 3\), '
            r'got 7..7', 4),
           (lambda x, y: (np.full_like(x, np.nan), y), r'batch 6: x holds non-finite', 4),
           (lambda x, y: (x[:, :3], y),
            r"batch 6: x must be \(16, features...\) as batch 0's \(16, 6\)",
            4),
           (None, r'the iterator ended after 10 batches; config.num_steps asks for 12', 8)]
  for bad, match, kept in cases:
    train = _stream(arrays, CFG, 10) if bad is None else _bad_batches(arrays, CFG, 6, bad)
    with pytest.raises(ValueError, match=match):
      fit(Net(), {'train': train, 'test': arrays['test']}, CFG, workdir=tmp_path / 'run',
          progress=False)
    assert workdirs.checkpoint_steps(tmp_path / 'run')[-1] == kept
  done = fit(Net(), {'train': _stream(arrays, CFG), 'test': arrays['test']}, CFG,
             workdir=tmp_path / 'run', progress=False)
  ref = fit(Net(), {'train': _stream(arrays, CFG), 'test': arrays['test']}, CFG,
            workdir=tmp_path / 'ref', progress=False)
  assert done['test_loss'] == ref['test_loss']


def test_stream_reads_ahead_for_precise_statistics_without_reordering():
  from bnjax.train import fitting
  items = [(np.full((2, 3), i, np.float32), np.zeros(2, np.int32)) for i in range(6)]
  stream = fitting._Stream(iter(items), batch_size=2, num_steps=6, keep=4)  # pylint: disable=protected-access
  assert float(stream.first()['x'][0, 0]) == 0.0
  assert [float(b['x'][0, 0]) for b in stream.steps(0, 2)] == [0.0, 1.0]
  assert [float(b['x'][0, 0]) for b in stream.epoch(0)] == [0.0, 1.0, 2.0, 3.0]  # ahead
  assert [float(b['x'][0, 0]) for b in stream.steps(2, 6)] == [2.0, 3.0, 4.0, 5.0]
  with pytest.raises(ValueError, match='batch 3 was already consumed'):
    next(stream.steps(3, 4))
  resumed = fitting._Stream(iter(items), batch_size=2, num_steps=6, keep=0)  # pylint: disable=protected-access
  resumed.first()
  assert [float(b['x'][0, 0]) for b in resumed.steps(4, 6)] == [4.0, 5.0]  # 0-3 skipped
