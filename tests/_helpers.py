"""Shared by the training tests: a small teacher-student run and the binary's command line."""

import dataclasses
import json
import pathlib
import sys

from bnjax.train.config import Config

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMING = ('time_s', 'images_per_s')

# 16 steps per epoch, a line every 4 steps, a checkpoint every 8: seconds per run.
TS = Config(dataset='teacher_student', model='perceptron', norm='batch',
                  optimizer='momentum', learning_rate=0.05, regularizer='l2',
                  weight_decay=1e-3, batch_size=32, num_epochs=3, num_train=512,
                  num_test=256, input_dim=20, log_every=4, checkpoint_every=8)


def binary(workdir, *flags, config: Config = TS, **fields) -> list:
  """``python -m experiments.train`` with every field of ``config`` (and ``fields``)."""
  values = dataclasses.asdict(dataclasses.replace(config, **fields))
  args = [f'--{k}={v}' if not isinstance(v, bool) else f'--{"" if v else "no"}{k}'
          for k, v in values.items()]
  return [sys.executable, '-m', 'experiments.train', *args, f'--workdir={workdir}',
          '--noprogress', *flags]


def strict_json(text: str):
  """``json.loads`` that fails on NaN / Infinity (not JSON)."""
  def refuse(constant):
    raise AssertionError(f'non-standard JSON constant {constant}')
  return json.loads(text, parse_constant=refuse)


def metrics(workdir) -> list:
  """metrics.jsonl without timing fields; fails on an invalid or a repeated line."""
  lines = [strict_json(l) for l in (pathlib.Path(workdir) / 'metrics.jsonl').read_text()
           .splitlines()]
  steps = [l['step'] for l in lines]
  assert steps == sorted(set(steps)), f'duplicate or unordered steps: {steps}'
  return [{k: v for k, v in l.items() if k not in TIMING} for l in lines]


def dtype_context(dtype):
  """A context in which arrays of ``dtype`` exist: 64-bit types need x64 enabled
  (``jax.enable_x64`` from jax 0.7 on, ``jax.experimental.enable_x64`` before)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if np.dtype(dtype).itemsize < 8:
    return contextlib.nullcontext()
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def fake_fashion_mnist(folder, n_train=96, n_test=40):
  """The four Fashion-MNIST IDX files, gzipped, of random class-dependent images."""
  import gzip  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  def idx(name, dims, payload):
    header = bytes([0, 0, 8, len(dims)]) + b''.join(d.to_bytes(4, 'big') for d in dims)
    with gzip.open(folder / name, 'wb') as f:
      f.write(header + payload.astype(np.uint8).tobytes())
  for split, n in (('train', n_train), ('t10k', n_test)):
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 256, (n, 28, 28)) // 2 + 12 * labels[:, None, None]
    idx(f'{split}-images-idx3-ubyte.gz', (n, 28, 28), images)
    idx(f'{split}-labels-idx1-ubyte.gz', (n,), labels)
