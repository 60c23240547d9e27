"""bnjax.train.data: builders under mock data, parsers, teacher-student, the pipeline."""

import gzip

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bnjax.train import data


@pytest.mark.parametrize('name,shape', [('fashion_mnist', (28, 28, 1)),
                                        ('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_builders_under_mock_data(name, shape, tmp_path):
  with tfds.testing.mock_data(num_examples=16):
    splits = data.load_image_dataset(name, str(tmp_path))
  for split in ('train', 'test'):
    assert splits[split].x.shape == (16,) + shape
    assert splits[split].x.dtype == np.uint8
    assert splits[split].y.dtype == np.int64
    assert 0 <= splits[split].y.min() and splits[split].y.max() < 10
  assert not any(tmp_path.iterdir())  # mocked: nothing prepared, nothing fetched


def test_unknown_dataset():
  with pytest.raises(ValueError, match="unknown image dataset 'svhn'"):
    data.load_image_dataset('svhn')


def test_read_idx_round_trip(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
  header = bytes([0, 0, 8, 3]) + np.asarray(images.shape, '>u4').tobytes()
  path = tmp_path / 'x-idx3-ubyte.gz'
  with gzip.open(path, 'wb') as f:
    f.write(header + images.tobytes())
  np.testing.assert_array_equal(data.read_idx(path), images)
  (tmp_path / 'bad').write_bytes(b'\x01\x02\x03\x04')
  with pytest.raises(ValueError, match='not an IDX file'):
    data.read_idx(tmp_path / 'bad')


def test_read_cifar10_binary(tmp_path):
  rng = np.random.default_rng(0)
  chw = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)  # 3 images, CHW
  labels = np.array([3, 0, 9], np.uint8)
  records = np.concatenate([labels[:, None], chw.reshape(3, -1)], axis=1)
  (tmp_path / 'b.bin').write_bytes(records.tobytes())
  images, got = data.read_cifar10_binary([tmp_path / 'b.bin'])
  np.testing.assert_array_equal(images, chw.transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize('activation', ['linear', 'relu'])
def test_teacher_student(activation):
  d = data.teacher_student(4000, 10, 50, activation=activation, noise_std=0.0, seed=3)
  x, y, w = d['train'].x, d['train'].y, d['teacher']
  assert x.shape == (4000, 50) and y.shape == (4000,) and x.dtype == np.float32
  np.testing.assert_allclose(x.var(), 1 / 50, rtol=0.05)  # x ~ N(0, I/N)
  h = x @ w
  np.testing.assert_allclose(y, np.maximum(h, 0) if activation == 'relu' else h, rtol=1e-5,
                             atol=1e-6)
  again = data.teacher_student(4000, 10, 50, activation=activation, noise_std=0.0, seed=3)
  np.testing.assert_array_equal(again['train'].x, x)
  noisy = data.teacher_student(4000, 10, 50, activation=activation, noise_std=0.5, seed=3)
  np.testing.assert_allclose(np.std(noisy['train'].y - y), 0.5, rtol=0.05)
  with pytest.raises(ValueError, match='activation must be'):
    data.teacher_student(10, 10, 5, activation='tanh')
  with pytest.raises(ValueError, match='num_train must be a positive int'):
    data.teacher_student(0, 10, 5)


def _arrays(n=100):
  rng = np.random.default_rng(1)
  return data.Arrays(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n))


def test_batches_are_deterministic_and_cover_the_epoch():
  b = data.Batches(_arrays(), 16, seed=5)
  assert b.steps_per_epoch == 6
  epoch0 = [x['y'] for x in b.epoch(0)]
  again = [x['y'] for x in data.Batches(_arrays(), 16, seed=5).epoch(0)]
  np.testing.assert_array_equal(np.concatenate(epoch0), np.concatenate(again))
  assert len(set(np.concatenate(epoch0))) == 96  # no repeats; last 4 dropped
  epoch1 = np.concatenate([x['y'] for x in b.epoch(1)])
  assert not np.array_equal(np.concatenate(epoch0), epoch1)
  # Resuming mid-epoch gives the same batches as running through.
  np.testing.assert_array_equal(next(b.epoch(0, start=3))['y'], epoch0[3])
  assert [x['y'].tolist() for x in b.epoch(0, 2, 4)] == [e.tolist() for e in epoch0[2:4]]
  other = np.concatenate([x['y'] for x in data.Batches(_arrays(), 16, seed=6).epoch(0)])
  assert not np.array_equal(np.concatenate(epoch0), other)



@pytest.mark.parametrize('start,stop', [(0, 18), (4, 13), (6, 6), (11, 12)])
def test_steps_are_the_epochs_batches_end_to_end(start, stop):
  b = data.Batches(_arrays(), 16, seed=5)  # 6 steps per epoch
  expected = [b.batch(s // 6, s % 6)['y'].tolist() for s in range(start, stop)]
  assert [x['y'].tolist() for x in b.steps(start, stop)] == expected


def test_input_normalization_is_the_training_subsets_once_per_process(tmp_path, monkeypatch):
  from _helpers import fake_fashion_mnist  # pylint: disable=g-import-not-at-top
  from bnjax.train import inputs  # pylint: disable=g-import-not-at-top
  from bnjax.train.config import Config  # pylint: disable=g-import-not-at-top
  source = tmp_path / 'idx'
  source.mkdir()
  fake_fashion_mnist(source, n_train=48, n_test=8)
  monkeypatch.setenv('BNJAX_FASHION_MNIST_DIR', str(source))
  data_dir = str(tmp_path / 'tfds')
  calls = []
  stats = data.normalization_stats
  monkeypatch.setattr(data, 'normalization_stats', lambda x: calls.append(len(x)) or stats(x))
  for subset in (0, 16, 16):
    config = Config(train_subset=subset, batch_size=8)
    mean, std = inputs.input_normalization(config, data_dir)
    x = inputs.load_data(config, data_dir)['train'].x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std((0, 1, 2)), rtol=1e-5)
  assert calls == [48, 16]  # the second subset of 16 is answered from the cache
  assert inputs.input_normalization(Config(dataset='teacher_student', model='perceptron',
                                            batch_size=8)) == (None, None)

def test_normalization_and_eval_order():
  arrays = _arrays()
  mean, std = data.normalization_stats(arrays.x)
  x64 = arrays.x.astype(np.float64) / 255
  np.testing.assert_allclose(mean, x64.mean((0, 1, 2)), rtol=1e-6)
  b = data.Batches(arrays, 30, shuffle=False, mean=mean, std=std)
  batches = list(b.epoch(0))
  assert [len(x['y']) for x in batches] == [30, 30, 30, 10]  # eval keeps the tail
  x = np.concatenate([x['x'] for x in batches])
  np.testing.assert_allclose(x, (x64 - mean) / std, rtol=1e-5, atol=1e-5)
  assert x.dtype == np.float32


def test_augmentation_is_a_seeded_crop_and_flip():
  arrays = _arrays()
  b = data.Batches(arrays, 20, seed=0, augment=True)
  one, two = b.batch(2, 1), b.batch(2, 1)
  np.testing.assert_array_equal(one['x'], two['x'])
  plain = data.Batches(arrays, 20, seed=0).batch(2, 1)
  assert one['x'].shape == plain['x'].shape
  assert not np.array_equal(one['x'], plain['x'])
  # Every augmented image is a shifted (and maybe mirrored) window of its source.
  padded = np.pad(plain['x'], ((0, 0), (4, 4), (4, 4), (0, 0)))
  for img, src in zip(one['x'], padded):
    windows = [src[i:i + 8, j:j + 8] for i in range(9) for j in range(9)]
    assert any(np.array_equal(img, w) or np.array_equal(img, w[:, ::-1]) for w in windows)


def test_batch_size_checks():
  with pytest.raises(ValueError, match='batch_size must be a positive int'):
    data.Batches(_arrays(), 0)
  with pytest.raises(ValueError, match='exceeds the 100 training examples'):
    data.Batches(_arrays(), 101)


def test_prefetch_keeps_order_and_raises():
  assert list(data.prefetch(iter(range(50)), size=3)) == list(range(50))

  def broken():
    yield 1
    raise RuntimeError('boom')

  with pytest.raises(RuntimeError, match='boom'):
    list(data.prefetch(broken()))


def test_prefetch_stops_its_producer_when_the_consumer_stops():
  import threading
  produced = []

  def endless():
    i = 0
    while True:
      produced.append(i)
      yield i
      i += 1

  before = threading.active_count()
  gen = data.prefetch(endless(), size=2)
  assert next(gen) == 0
  gen.close()  # what a `for` loop left by an exception does
  import time
  deadline = time.time() + 5
  while threading.active_count() > before and time.time() < deadline:
    time.sleep(0.05)
  assert threading.active_count() == before
  count = len(produced)
  time.sleep(0.3)
  assert len(produced) == count  # nothing produced after the stop


def test_decoded_arrays_are_cached_checked_and_redone_when_damaged(tmp_path, monkeypatch):
  from _helpers import fake_fashion_mnist  # pylint: disable=g-import-not-at-top
  source = tmp_path / 'idx'
  source.mkdir()
  fake_fashion_mnist(source, n_train=12, n_test=5)
  monkeypatch.setenv('BNJAX_FASHION_MNIST_DIR', str(source))
  first = data.load_image_dataset('fashion_mnist', str(tmp_path / 'tfds'))
  cache = next((tmp_path / 'tfds').rglob('arrays'))
  assert sorted(p.name for p in cache.iterdir()) == [
      'test.sha256', 'test_x.npy', 'test_y.npy', 'train.sha256', 'train_x.npy',
      'train_y.npy']
  again = data.load_image_dataset('fashion_mnist', str(tmp_path / 'tfds'))
  assert isinstance(again['train'].x, np.memmap)  # read from the cache
  np.testing.assert_array_equal(again['train'].x, first['train'].x)
  # Same length, other bytes: the digest no longer matches, so it is decoded again.
  damaged = np.load(cache / 'train_y.npy')
  np.save(cache / 'train_y.npy', (damaged + 1) % 10)
  redone = data.load_image_dataset('fashion_mnist', str(tmp_path / 'tfds'))
  assert not isinstance(redone['train'].y, np.memmap)
  np.testing.assert_array_equal(redone['train'].y, first['train'].y)
  (cache / 'test_x.npy').write_bytes(b'')  # truncated
  np.testing.assert_array_equal(
      data.load_image_dataset('fashion_mnist', str(tmp_path / 'tfds'))['test'].x,
      first['test'].x)


def test_a_partial_last_batch_drops_other_examples_each_epoch():
  """Training drops the last partial batch, but each epoch draws a new
  permutation: with P = 50 and batch 32 (18 dropped per epoch, the
  teacher-student study at alpha = 0.5) every example is trained on within a
  few epochs, and about 32/50 of the epochs use any one of them."""
  split = data.Arrays(np.zeros((50, 2), np.float32), np.arange(50))
  batches = data.Batches(split, 32, seed=0)
  seen = [set(int(v) for b in batches.epoch(e) for v in b['y']) for e in range(200)]
  assert all(len(s) == 32 for s in seen)
  assert set().union(*seen[:10]) == set(range(50))
  used = np.array([[i in s for i in range(50)] for s in seen]).mean(0)
  np.testing.assert_allclose(used, 32 / 50, atol=0.12)


def test_two_processes_preparing_one_fresh_data_dir_both_succeed(tmp_path):
  """Two binaries started together on a fresh machine: without the prepare
  lock both build the dataset and the second one's final rename fails."""
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  from _helpers import fake_fashion_mnist  # pylint: disable=g-import-not-at-top
  source = tmp_path / 'idx'
  source.mkdir()
  fake_fashion_mnist(source, n_train=12, n_test=5)
  script = ('import sys; from bnjax.train import data; '
            'print(len(data.load_image_dataset("fashion_mnist", sys.argv[1])["train"].x))')
  env = dict(os.environ, BNJAX_FASHION_MNIST_DIR=str(source), JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen([sys.executable, '-c', script, str(tmp_path / 'tfds')], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(3)]
  results = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
  for out, err, code in results:
    assert code == 0, err[-2000:]
    assert out.split()[-1] == '12'


def test_a_local_copy_is_prepared_without_tfds_download_banner(tmp_path, monkeypatch, capfd):
  """tfds prints "Downloading and preparing dataset Unknown size" even for local
  files; preparing the local copy prints nothing on stdout."""
  from _helpers import fake_fashion_mnist
  folder = tmp_path / 'idx'
  folder.mkdir()
  fake_fashion_mnist(folder, n_train=20, n_test=10)
  monkeypatch.setenv('BNJAX_FASHION_MNIST_DIR', str(folder))
  splits = data.load_image_dataset('fashion_mnist', str(tmp_path / 'tfds'))
  assert len(splits['train']) == 20
  out = capfd.readouterr().out
  assert 'Downloading and preparing' not in out and 'Dataset' not in out, out
