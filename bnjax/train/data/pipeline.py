"""The input pipeline: a split in memory, its normalization, deterministic
shuffled batches with augmentation, and a prefetch thread."""

import dataclasses
import queue
import threading
from typing import Iterator, Optional

import numpy as np

from bnjax._validation import check_positive_int


@dataclasses.dataclass(frozen=True)
class Arrays:
  """One split in memory: ``x`` (N, ...) and ``y`` (N,).

  Attributes:
    x: inputs, first axis the examples.
    y: labels or targets.

  Example:
    >>> import numpy as np
    >>> from bnjax.train import data
    >>> split = data.Arrays(np.zeros((5, 2)), np.arange(5))
    >>> len(split), len(split.take(3))
    (5, 3)

  References:
    Xiao, Rasul & Vollgraf, "Fashion-MNIST", 2017, arXiv 1708.07747 (the
    splits held this way).
  """
  x: np.ndarray
  y: np.ndarray

  def __len__(self):
    return len(self.y)

  def take(self, n: Optional[int]) -> 'Arrays':
    return self if n is None or n >= len(self) else Arrays(self.x[:n], self.y[:n])


def normalization_stats(x: np.ndarray):
  """Per-channel mean and std of uint8 images scaled to [0, 1] (float32)."""
  x = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
  return x.mean(0).astype(np.float32), x.std(0).astype(np.float32)


@dataclasses.dataclass
class Batches:
  r"""Deterministic, shuffled, normalized batches of an in-memory split.

  .. math::
    x \mapsto \frac{x / 255 - \mu}{\sigma}, \qquad
    \text{batch}(e, i) = f(\text{seed}, e, i)

  Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a resumed
  run sees the batches an uninterrupted one would. ``uint8`` images become
  float32; ``augment`` adds a random crop (4-pixel zero padding) and
  horizontal flip (CIFAR-style). ``shuffle=False`` keeps the order
  (evaluation) and keeps the last partial batch; training drops it.

  Args:
    data: the :class:`Arrays` to batch.
    batch_size: examples per batch.
    seed: seed of the order and augmentation.
    shuffle: a new permutation per epoch (training) or the stored order.
    augment: crop and flip.
    mean, std: per-channel normalization of ``uint8`` images (or ``None``).

  Example:
    >>> import numpy as np
    >>> from bnjax.train import data
    >>> batches = data.Batches(data.Arrays(np.arange(10.0), np.arange(10)), 4, seed=1)
    >>> batches.steps_per_epoch
    2
    >>> bool(np.array_equal(batches.batch(0, 1)['y'], next(batches.epoch(0, 1))['y']))
    True
    >>> [b['y'].tolist() == batches.batch(e, i)['y'].tolist()
    ...  for b, (e, i) in zip(batches.steps(1, 4), [(0, 1), (1, 0), (1, 1)])]
    [True, True, True]

  References:
    He et al., "Deep Residual Learning", CVPR 2016, arXiv 1512.03385,
    section 4.2 (the crop-and-flip augmentation).
  """
  data: Arrays
  batch_size: int
  seed: int = 0
  shuffle: bool = True
  augment: bool = False
  mean: Optional[np.ndarray] = None
  std: Optional[np.ndarray] = None

  def __post_init__(self):
    self.batch_size = check_positive_int('batch_size', self.batch_size)
    if self.shuffle and self.batch_size > len(self.data):
      raise ValueError(f'batch_size {self.batch_size} exceeds the {len(self.data)} '
                       'training examples.')

  @property
  def steps_per_epoch(self) -> int:
    n = len(self.data)
    return n // self.batch_size if self.shuffle else -(-n // self.batch_size)

  def _order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(len(self.data))
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.data))

  def batch(self, epoch: int, index: int, order: Optional[np.ndarray] = None) -> dict:
    order = self._order(epoch) if order is None else order
    idx = order[index * self.batch_size:(index + 1) * self.batch_size]
    x, y = self.data.x[idx], self.data.y[idx]
    if x.dtype == np.uint8:
      x = x.astype(np.float32) * np.float32(1 / 255)
      if self.mean is not None:
        x = (x - self.mean) / self.std
    if self.augment:
      x = _crop_and_flip(x, np.random.default_rng([self.seed, epoch, index, 1]))
    return {'x': x, 'y': y}

  def epoch(self, epoch: int, start: int = 0, stop: Optional[int] = None
            ) -> Iterator[dict]:
    """Batches ``start`` to ``stop`` (default: the end) of ``epoch``."""
    order = self._order(epoch)
    end = self.steps_per_epoch if stop is None else min(stop, self.steps_per_epoch)
    for index in range(start, end):
      yield self.batch(epoch, index, order)

  def steps(self, start: int, stop: int) -> Iterator[dict]:
    """The batches of optimizer steps ``start`` to ``stop``, across epochs (step
    ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``)."""
    per_epoch = self.steps_per_epoch
    step = start
    while step < stop:
      epoch, index = divmod(step, per_epoch)
      end = min(per_epoch, index + stop - step)
      yield from self.epoch(epoch, index, end)
      step += end - index


def _crop_and_flip(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  n, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
  rows = dy[:, None] + np.arange(h)
  cols = dx[:, None] + np.arange(w)
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flip = rng.random(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  return out


def prefetch(iterator: Iterator, size: int = 4) -> Iterator:
  """Runs ``iterator`` in a background thread, ``size`` items ahead.

  Exceptions in the producer surface in the consumer; a consumer that stops
  early (break, exception, garbage collection) stops the producer too.

  Args:
    iterator: any iterator (e.g. :meth:`Batches.epoch`).
    size: items buffered ahead.

  Returns:
    An iterator of the same items, in order.

  Example:
    >>> from bnjax.train import data
    >>> list(data.prefetch(iter(range(5)), size=2))
    [0, 1, 2, 3, 4]

  References:
    ``tf.data.Dataset.prefetch`` (the same overlap of input and compute),
    https://www.tensorflow.org/guide/data_performance.
  """
  buffer: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item):
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterator:
        if not put(item):
          return
    except BaseException as e:  # surfaced in the consumer
      put(e)
      return
    put(done)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
