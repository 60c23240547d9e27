"""Bad input: one row per case, each with its exception type and message.

Library calls raise at construction (before any work); the binary exits
non-zero naming the flag before its workdir exists. Numbers are Python or
numpy scalars alike; ``bool`` is never a number.
"""

import dataclasses
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import folding, masks, norms, theory, transforms
from bnjax.train import data, inputs, trainer, vectorized
from bnjax.train.config import Config

from _helpers import ROOT, TS, binary

X = jnp.ones((8, 4))
PROJECTION_HELP = r'needs an explicit mask.*scale_invariant_kernels.*scale_invariant_mask'


class _Residual(nn.Module):
  """BN(h) + h: h feeds more than the norm, so folding would change the output."""

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(4)(x)
    return nn.BatchNorm(use_running_average=True)(h) + h


def _residual_variables():
  v = _Residual().init(jax.random.key(0), X)
  stats = {'mean': jnp.full(4, 0.5), 'var': jnp.full(4, 4.0)}  # trained, not identity
  return {'params': v['params'], 'batch_stats': {'BatchNorm_0': stats}}


def _config(**fields):
  return dataclasses.replace(TS, **fields).validate()


LIBRARY = [
    # norms: dtypes, axes, empty batches
    ('int input', lambda: norms.batch_norm(jnp.ones((8, 4), jnp.int32), training=True),
     TypeError, 'real floating dtype.*int32'),
    ('bool input', lambda: norms.layer_norm(jnp.ones((8, 4), bool)), TypeError,
     'real floating dtype.*bool'),
    ('complex input', lambda: norms.group_norm(jnp.ones((8, 4), jnp.complex64),
                                               num_groups=2), TypeError, 'complex64'),
    ('int weight', lambda: norms.weight_norm(jnp.ones((3, 4), jnp.int32)), TypeError,
     'v must have a real floating dtype'),
    ('axis out of range', lambda: norms.batch_norm(X, training=True, axis=2), ValueError,
     'axis=2 is out of range for an input of rank 2'),
    ('axis not an int', lambda: norms.layer_norm(X, axis=1.0), TypeError,
     'axis must be an int'),
    ('empty batch', lambda: norms.batch_norm(jnp.ones((0, 4)), training=True), ValueError,
     r'axes \[0\] of size 0'),
    ('empty features', lambda: norms.layer_norm(jnp.ones((3, 0))), ValueError, 'size 0'),
    ('training not a bool', lambda: norms.batch_norm(X, training=1), TypeError,
     'training must be a bool'),
    ('bool features', lambda: norms.init_batch_stats(True), TypeError,
     'num_features must be a positive int'),
    # transforms
    ('projection without mask', lambda: transforms.unit_norm_projection(), ValueError,
     PROJECTION_HELP),
    ('sgd projection without mask', lambda: transforms.sgd(0.1, regularizer='projection'),
     ValueError, PROJECTION_HELP),
    ('adam projection without mask', lambda: transforms.adam(1e-3, regularizer='projection'),
     ValueError, PROJECTION_HELP),
    ('radius inf', lambda: transforms.unit_norm_projection(masks.kernel_mask,
                                                           radius=float('inf')),
     ValueError, 'radius must be > 0 and finite, got inf'),
    ('radius None', lambda: transforms.unit_norm_projection(masks.kernel_mask, radius=None),
     TypeError, 'radius must be a real number'),
    ('radius 0', lambda: transforms.unit_norm_projection(masks.kernel_mask, radius=0.0),
     ValueError, 'radius must be > 0'),
    ('radius word', lambda: transforms.unit_norm_projection(masks.kernel_mask,
                                                            radius='initial'),
     ValueError, "or 'init'"),
    ('l2 inf', lambda: transforms.l2_regularization(float('inf')), ValueError,
     'weight_decay must be >= 0 and finite, got inf'),
    ('l2 negative', lambda: transforms.l2_regularization(-1e-3), ValueError,
     'weight_decay must be >= 0'),
    ('decay negative', lambda: transforms.decoupled_weight_decay(-0.1), ValueError,
     'rate must be >= 0'),
    ('sgd lr inf', lambda: transforms.sgd(float('inf')), ValueError,
     'learning_rate must be > 0 and finite'),
    ('sgd lr nan', lambda: transforms.sgd(float('nan')), ValueError,
     'learning_rate must be > 0 and finite'),
    ('sgd lr negative', lambda: transforms.sgd(-0.1), ValueError, 'learning_rate must be > 0'),
    ('sgd lr string', lambda: transforms.sgd('0.1'), TypeError,
     "learning_rate must be a real number, got '0.1'"),
    ('sgd lr bool', lambda: transforms.sgd(True), TypeError, 'learning_rate must be a real'),
    ('sgd momentum 1', lambda: transforms.sgd(0.1, momentum=1.0), ValueError,
     r'momentum must be in \[0, 1\)'),
    ('sgd nesterov int', lambda: transforms.sgd(0.1, 0.9, nesterov=1), TypeError,
     'nesterov must be a bool'),
    ('sgd unknown regularizer', lambda: transforms.sgd(0.1, regularizer='dropout'),
     ValueError, 'regularizer must be one of'),
    ('decay without regularizer', lambda: transforms.sgd(0.1, weight_decay=1e-4), ValueError,
     'has no effect'),
    ('adam eps negative', lambda: transforms.adam(1e-3, eps=-1.0), ValueError,
     'eps must be >= 0'),
    ('adam b1 1.5', lambda: transforms.adam(0.1, b1=1.5), ValueError, r'b1 must be in \[0, 1\)'),
    ('adam b2 complex', lambda: transforms.adam(0.1, b2=0.9 + 1j), TypeError, 'complex'),
    ('track unknown optimizer', lambda: transforms.track_dynamics(0.1, 'rmsprop'), ValueError,
     'optimizer must be one of'),
    ('track lr negative', lambda: transforms.track_dynamics(-0.1), ValueError,
     'learning_rate must be >= 0'),
    # theory
    ('negative norm', lambda: theory.effective_learning_rate(0.1, -1.0, 'sgd'), ValueError,
     'weight_norm must be >= 0'),
    ('theory unknown optimizer', lambda: theory.effective_learning_rate(0.1, 1.0, 'lamb'),
     ValueError, 'optimizer must be one of'),
    ('theory lr inf', lambda: theory.equilibrium_angular_update('sgd', float('inf'), 1e-4),
     ValueError, 'learning_rate must be > 0 and finite'),
    ('theory lr string', lambda: theory.equilibrium_norm('adamw', '1e-3', 0.1, fan_in=9),
     TypeError, 'learning_rate must be a real number'),
    ('gamma decay bool batch', lambda: theory.gamma_decay_strength(True, 'relu'), TypeError,
     'batch_size must be a positive int'),
    ('gamma decay float batch', lambda: theory.gamma_decay_strength(32.0, 'relu'), TypeError,
     'batch_size must be a positive int'),
    # folding
    ('fold a shared output', lambda: folding.fold_batch_norms(_Residual(),
                                                             _residual_variables(), X),
     ValueError, 'cannot fold BatchNorm_0 into Dense_0: the output of Dense_0 also feeds'),
    ('fold without batch_stats',
     lambda: folding.fold_batch_norms(_Residual(), {'params': _residual_variables()['params']},
                                     X),
     ValueError, "needs trained variables with 'params' and 'batch_stats'"),
    # training config
    ('config lr inf', lambda: _config(learning_rate=float('inf')), ValueError,
     '--learning_rate: must be finite'),
    ('config lr nan', lambda: _config(learning_rate=float('nan')), ValueError,
     '--learning_rate: must be finite'),
    ('config lr 0', lambda: _config(learning_rate=0.0), ValueError,
     '--learning_rate: must be > 0'),
    ('config lr string', lambda: _config(learning_rate='0.1'), TypeError,
     '--learning_rate: must be float'),
    ('config wd inf', lambda: _config(weight_decay=float('inf')), ValueError,
     '--weight_decay: must be finite'),
    ('config wd negative', lambda: _config(weight_decay=-1e-3), ValueError,
     '--weight_decay: must be >= 0'),
    ('config head decay negative', lambda: _config(head_weight_decay=-0.5), ValueError,
     r'--head_weight_decay: must be >= 0, or -1'),
    ('config head decay without l2', lambda: _config(regularizer='none', weight_decay=0.0,
                                                     head_weight_decay=0.1),
     ValueError, '--head_weight_decay: applies to --regularizer=l2 or decoupled'),
    ('config head decay adamp', lambda: _config(optimizer='adamp', regularizer='decoupled',
                                                head_weight_decay=0.1),
     ValueError, '--head_weight_decay: applies to'),
    ('config rest lr zero', lambda: _config(rest_learning_rate=0.0), ValueError,
     r'--rest_learning_rate: must be > 0, or -1'),
    ('config rest lr without invariance', lambda: _config(norm='none', rest_learning_rate=0.1),
     ValueError, '--rest_learning_rate: acts on the scale-invariant kernels'),
    ('config init scale negative', lambda: _config(init_scale=-2.0), ValueError,
     '--init_scale: must be > 0'),
    ('config init scale inf', lambda: _config(init_scale=float('inf')), ValueError,
     '--init_scale: must be finite'),
    ('config norm epsilon negative', lambda: _config(norm_epsilon=-0.5), ValueError,
     r'--norm_epsilon: must be >= 0, or -1'),
    ('config norm epsilon weight norm', lambda: _config(norm='weight', norm_epsilon=1e-3),
     ValueError, '--norm_epsilon: --norm=weight adds no epsilon'),
    ('config adam eps with sgd', lambda: _config(adam_eps=1e-6), ValueError,
     '--adam_eps: applies to --optimizer=adam or adamp'),
    ('config num steps negative', lambda: _config(num_steps=-5), ValueError,
     r'--num_steps: must be >= 0 \(0: --num_epochs\)'),
    ('config num steps with num epochs', lambda: _config(num_steps=20, num_epochs=2),
     ValueError, '--num_steps: gives the run\'s length instead of --num_epochs'),
    ('config tensorboard not bool', lambda: _config(tensorboard='yes'), TypeError,
     '--tensorboard: must be bool'),
    ('config gamma decay nan', lambda: _config(gamma_decay=float('nan')), ValueError,
     '--gamma_decay: must be finite'),
    ('config batch bool', lambda: _config(batch_size=True), TypeError,
     '--batch_size: must be int'),
    ('config batch > num_train', lambda: _config(batch_size=600), ValueError,
     '--batch_size: 600 exceeds the 512 training examples of --num_train'),
    ('config batch > subset', lambda: _config(dataset='fashion_mnist', model='convnet',
                                              train_subset=100, batch_size=128),
     ValueError, '--batch_size: 128 exceeds the 100 training examples of --train_subset'),
    ('config seed negative', lambda: _config(seed=-1), ValueError, '--seed: must be >= 0'),
    ('config adamp with l2', lambda: _config(optimizer='adamp', regularizer='l2'), ValueError,
     '--regularizer: --optimizer=adamp decays with its own decoupled decay'),
    ('config sgdp with projection', lambda: _config(optimizer='sgdp', regularizer='decoupled',
                                                    projection=True), ValueError,
     '--projection: --optimizer=sgdp already removes the radial part'),
    ('config rotational adamp', lambda: _config(optimizer='adamp', regularizer='rotational'),
     ValueError, '--regularizer: --optimizer=adamp decays with its own'),
    ('config rotational without decay', lambda: _config(regularizer='rotational',
                                                        weight_decay=0.0), ValueError,
     '--weight_decay: --regularizer=rotational needs lambda > 0'),
    ('config rotational with projection', lambda: _config(regularizer='rotational',
                                                          projection=True), ValueError,
     '--projection: --regularizer=rotational keeps'),
    ('config rotational without invariance', lambda: _config(regularizer='rotational',
                                                             norm='none'), ValueError,
     '--regularizer: projection needs weights that are scale-invariant'),
]


@pytest.mark.parametrize('case,call,error,match', LIBRARY, ids=[r[0] for r in LIBRARY])
def test_library_refuses(case, call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_numpy_scalars_are_numbers_like_python_ones():
  tx = transforms.sgd(np.float32(0.1), np.float64(0.9), regularizer='l2',
                      weight_decay=np.float32(1e-3), mask=masks.kernel_mask)
  assert tx.init({'w': jnp.ones((2, 2))}) is not None
  assert theory.gamma_decay_strength(np.int64(32), 'relu') == 1 / 128
  assert norms.init_batch_stats(np.int32(4)).mean.shape == (4,)
  assert _config(batch_size=np.int64(32), learning_rate=np.float32(0.05)) is not None
  assert norms.group_norm(jnp.ones((2, 4)), num_groups=np.int64(2)).shape == (2, 4)


# -------------------------------------------------------------------- data


def _idx(path, array, magic=0x08):
  header = struct.pack('>BBBB', 0, 0, magic, array.ndim) + struct.pack(
      f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(folder, n_train=40, n_test=20, label=3, labels_train=None):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  _idx(folder / 'train-images-idx3-ubyte.gz', rng.integers(0, 255, (n_train, 28, 28)))
  _idx(folder / 'train-labels-idx1-ubyte.gz',
       np.full(n_train if labels_train is None else labels_train, label))
  _idx(folder / 't10k-images-idx3-ubyte.gz', rng.integers(0, 255, (n_test, 28, 28)))
  _idx(folder / 't10k-labels-idx1-ubyte.gz', np.full(n_test, label))
  return folder


def test_idx_bad_magic(tmp_path):
  _idx(tmp_path / 'x.gz', np.zeros((2, 3)), magic=0x0D)
  with pytest.raises(ValueError, match=r'x.gz is not an IDX file of unsigned bytes'):
    data.read_idx(tmp_path / 'x.gz')


def test_idx_truncated_payload(tmp_path):
  with gzip.open(tmp_path / 'x.gz', 'wb') as f:
    f.write(struct.pack('>BBBBII', 0, 0, 8, 2, 4, 5) + b'\x01' * 7)
  with pytest.raises(ValueError, match=r'x.gz: the header announces shape \(4, 5\) \(20 '
                                       r'bytes\) but the payload holds 7 bytes'):
    data.read_idx(tmp_path / 'x.gz')


def test_idx_truncated_gzip(tmp_path):
  _idx(tmp_path / 'x.gz', np.zeros((50, 28, 28)))
  raw = (tmp_path / 'x.gz').read_bytes()
  (tmp_path / 'x.gz').write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match='x.gz: cannot be read.*truncated or damaged'):
    data.read_idx(tmp_path / 'x.gz')


def test_idx_label_count_differs_from_image_count(tmp_path):
  folder = _fake_fashion_mnist(tmp_path, labels_train=39)
  with pytest.raises(ValueError, match='holds 40 images but .*train-labels.* holds 39 labels'):
    data.read_idx_pair(folder / 'train-images-idx3-ubyte.gz',
                       folder / 'train-labels-idx1-ubyte.gz')


def test_empty_fashion_mnist_dir_is_an_error_not_a_fallback(tmp_path, monkeypatch):
  monkeypatch.setenv('BNJAX_FASHION_MNIST_DIR', str(tmp_path))
  with pytest.raises(ValueError, match='lacks the Fashion-MNIST file.*train-images'):
    data.fashion_mnist_dir()


def test_bad_files_do_not_poison_the_prepared_cache(tmp_path, monkeypatch):
  """A bad copy is refused naming the file; the corrected copy is prepared afresh."""
  folder = tmp_path / 'idx'
  monkeypatch.setenv('BNJAX_FASHION_MNIST_DIR', str(folder))
  _fake_fashion_mnist(folder, labels_train=39)
  with pytest.raises(ValueError, match='holds 40 images but .* holds 39 labels'):
    data.load_image_dataset('fashion_mnist', str(tmp_path / 'prepared'))
  _fake_fashion_mnist(folder, label=3)
  first = data.load_image_dataset('fashion_mnist', str(tmp_path / 'prepared'))
  assert len(first['train']) == 40 and set(first['train'].y) == {3}
  _fake_fashion_mnist(folder, label=7)  # corrected labels: a new source, a new copy
  second = data.load_image_dataset('fashion_mnist', str(tmp_path / 'prepared'))
  assert set(second['train'].y) == {7}


def test_offline_download_fails_fast_naming_the_options(tmp_path, monkeypatch):
  # A closed local port stands in for an unreachable host: no network is touched.
  monkeypatch.setattr(data.BnjaxMnist, 'URL', 'https://127.0.0.1:9/')
  start = time.time()
  with pytest.raises(data.DataUnavailableError,
                     match='mnist: cannot reach 127.0.0.1.*mnist has no local-copy option: '
                           r'prepare it once .*--dataset=mnist --num_steps=1 --data_dir=DIR'):
    data.load_image_dataset('mnist', str(tmp_path))
  assert time.time() - start < 10
  monkeypatch.setattr(data.BnjaxFashionMnist, 'URL', 'https://127.0.0.1:9/')
  import bnjax.train.data.builders as builders_lib  # no local copy: the download's help
  monkeypatch.setattr(builders_lib, 'fashion_mnist_dir', lambda: None)
  with pytest.raises(data.DataUnavailableError,
                     match='fashion_mnist: cannot reach .*dataset-fashion-mnist.*'
                           '--fashion_mnist_dir'):
    data.load_image_dataset('fashion_mnist', str(tmp_path / 'f'))


def test_offline_binary_fails_in_one_line_naming_the_dataset(tmp_path):
  """bnjax-train --dataset=mnist offline: exit 1 with one error line (no traceback)
  naming MNIST's own option, and no workdir."""
  driver = ('import sys\nfrom bnjax.train import data\n'
            "data.BnjaxMnist.URL = 'https://127.0.0.1:9/'\n"
            'from bnjax.train.binaries import train\n'
            "sys.argv = ['bnjax-train'] + sys.argv[1:]\ntrain.run()\n")
  cmd = binary(tmp_path / 'run', f'--data_dir={tmp_path / "tfds"}', config=Config(),
               dataset='mnist', width=4, train_subset=64, batch_size=32)
  out = subprocess.run([sys.executable, '-c', driver] + cmd[3:], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  assert 'mnist has no local-copy option' in out.stderr
  assert 'Traceback' not in out.stderr
  assert not (tmp_path / 'run').exists()


# ------------------------------------------------------------------ binary


BINARY = [
    (['--dataset=imagenet'], '--dataset=imagenet'),
    (['--learning_rate=0'], '--learning_rate: must be > 0'),
    (['--learning_rate=inf'], '--learning_rate: must be finite'),
    (['--weight_decay=nan'], '--weight_decay: must be finite'),
    (['--batch_size=-8'], '--batch_size: must be a positive int'),
    (['--batch_size=600'], '--batch_size: 600 exceeds the 512 training examples'),
    (['--parallel=pmap', '--batch_size=30'], '--batch_size: 30 is not divisible by the 4'),
    (['--regularizer=projection', '--weight_decay=0', '--norm=none'],
     '--regularizer: projection needs'),
    (['--regularizer=none', '--weight_decay=0.1'], '--weight_decay: has no effect'),
    (['--projection', '--norm=layer'], '--projection: projection needs'),
    (['--multihost'], '--multihost: runs one program over every host'),
    (['--num_steps=-3'], '--num_steps: must be >= 0'),
    (['--num_steps=20', '--num_epochs=1'], '--num_steps: gives the run\'s length instead'),
    (['--fashion_mnist_dir={empty}'], '--fashion_mnist_dir:'),
]


# Every row is checked in one child process (one JAX start for all rows): each row
# parses its flags and calls the binary's main, which must refuse with a UsageError
# or a non-zero SystemExit before creating the workdir.
_ROWS_DRIVER = """
import contextlib, io, json, sys
from absl import app, flags
from bnjax.train.binaries import train
rows = json.loads(sys.argv[1])
out = []
for argv in rows:
  flags.FLAGS.unparse_flags()
  err = io.StringIO()
  code, message = 0, ''
  try:
    with contextlib.redirect_stderr(err):
      train.main(flags.FLAGS(['train'] + argv))
  except (app.UsageError, flags.Error) as e:
    code, message = 1, str(e)
  except SystemExit as e:
    code, message = e.code, err.getvalue()
  out.append([code, message])
print(json.dumps(out))
"""


@pytest.fixture(scope='module')
def binary_refusals(tmp_path_factory):
  root = tmp_path_factory.mktemp('binary')
  (root / 'empty').mkdir()
  rows = [binary(root / f'run{i}', *[f.format(empty=root / 'empty') for f in flags])[3:]
          for i, (flags, _) in enumerate(BINARY)]
  out = subprocess.run([sys.executable, '-c', _ROWS_DRIVER, json.dumps(rows)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-2000:]
  return root, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('index', range(len(BINARY)), ids=[' '.join(f) for f, _ in BINARY])
def test_binary_refuses_before_any_file(binary_refusals, index):
  root, results = binary_refusals
  code, message = results[index]
  assert code != 0
  assert BINARY[index][1] in message, message[-1000:]
  assert not (root / f'run{index}').exists()


def test_binary_refusal_exits_non_zero_naming_the_flag(tmp_path):
  """The same through a real process: absl turns the refusal into exit code 1."""
  out = subprocess.run(binary(tmp_path / 'run', '--learning_rate=inf'), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert '--learning_rate: must be finite' in out.stderr
  assert not (tmp_path / 'run').exists()


def test_an_empty_workdir_is_refused_before_any_work(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match='workdir is empty'):
    trainer.train(TS, '', progress=False)
  with pytest.raises(TypeError, match='workdir must be a folder'):
    trainer.train(TS, None, progress=False)
  out = subprocess.run(binary(tmp_path / 'unused', '--workdir='), cwd=tmp_path,
                       env={**os.environ, 'PYTHONPATH': str(ROOT)}, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0 and '--workdir is empty' in out.stderr, out.stderr[-2000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize('path', ['single', 'vectorized'])
@pytest.mark.parametrize('change,message', [
    ({'batch_size': 64}, '--batch_size: 64 exceeds the 48 training examples of fashion_mnist'),
    ({'schedule': 'cosine'},
     '--schedule: the schedule was laid out for 60000 training examples, but '
     'fashion_mnist has 48 here'),
])
def test_single_runs_and_vectorized_groups_refuse_alike(tmp_path, monkeypatch, path,
                                                        change, message):
  """The data-dependent refusals are one piece of code for both training paths, and
  come before any file of the run is written."""
  small = data.teacher_student(48, 32, 20, seed=0)
  monkeypatch.setattr(inputs, 'load_data', lambda config, data_dir=None: small)
  config = dataclasses.replace(TS, **{'dataset': 'fashion_mnist', 'model': 'convnet',
                                      'width': 4, 'batch_size': 16, 'num_epochs': 1,
                                      **change})
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=re.escape(message)):
    if path == 'single':
      trainer.train(config, workdir, progress=False)
    else:
      vectorized.train_groups([config, dataclasses.replace(config, seed=1)],
                              [workdir, tmp_path / 'other'])
  assert not workdir.exists() and not (tmp_path / 'other').exists()


def test_data_dependent_refusal_leaves_no_file_and_the_fix_runs(tmp_path, monkeypatch):
  """A check that needs the data runs before the workdir exists, so the corrected
  command then runs in the same workdir."""
  small = data.teacher_student(48, 32, 20, seed=0)
  monkeypatch.setattr(inputs, 'load_data', lambda config, data_dir=None: small)
  config = dataclasses.replace(TS, dataset='fashion_mnist', model='convnet', width=4,
                               batch_size=64, num_epochs=1)
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match='--batch_size: 64 exceeds the 48 training examples'):
    trainer.train(config, workdir, progress=False)
  assert not workdir.exists()
  fixed = dataclasses.replace(TS, batch_size=16, num_epochs=1)
  assert trainer.train(fixed, workdir, progress=False)['status'] == 'finished'


def test_study_checks_plotting_and_data_before_the_sweep(tmp_path, monkeypatch):
  from absl import app  # pylint: disable=g-import-not-at-top
  from bnjax.train.studies import study  # pylint: disable=g-import-not-at-top

  def no_matplotlib():
    raise ImportError("No module named 'matplotlib'")

  monkeypatch.setattr(study, 'pyplot', no_matplotlib)
  trained = []
  monkeypatch.setattr(study, 'run_sweep', lambda *a, **k: trained.append(a))
  with pytest.raises(app.UsageError, match=r"matplotlib.*pip install 'bnjax\[plot\]'"):
    study.check_ready({'a': TS}, None)
  monkeypatch.setattr(study, 'pyplot', lambda: None)
  monkeypatch.setenv('BNJAX_FASHION_MNIST_DIR', str(tmp_path))  # empty: no data
  with pytest.raises(app.UsageError, match='fashion_mnist could not be loaded.*lacks'):
    study.check_ready({'a': dataclasses.replace(TS, dataset='fashion_mnist',
                                                model='convnet')}, str(tmp_path))
  assert not trained
