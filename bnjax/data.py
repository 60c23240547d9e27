"""Datasets without TensorFlow: tfds builders read through ``tfds.data_source``.

Fashion-MNIST, MNIST and CIFAR-10 are tfds ``GeneratorBasedBuilder``s that
parse the official files with numpy and are prepared once, as array_record,
into a data dir (``BNJAX_DATA_DIR``, default ``~/bnjax_data``). Their features
are raw ``uint8`` tensors (tfds' ``Image`` feature would need TensorFlow to
encode PNGs). Fashion-MNIST is read from a local copy of the four official
IDX files when one exists (``BNJAX_FASHION_MNIST_DIR``, else Debian's
``dataset-fashion-mnist`` in /usr/share/datasets/fashion-mnist), otherwise
downloaded.

The datasets are small enough to hold in memory; :class:`Batches` shuffles,
normalizes, augments and batches them with numpy. Batch ``i`` of epoch ``e``
is a pure function of ``(seed, e, i)``, so a resumed run sees exactly the
batches an uninterrupted one would. :func:`teacher_student` generates Luo et
al.'s perceptron data.
"""

import dataclasses
import gzip
import hashlib
import os
import pathlib
import queue
import socket
import threading
import urllib.parse
from typing import Iterator, Optional

import numpy as np

from bnjax import _extras

from bnjax._validation import check_positive_int

tfds = _extras.require('tensorflow_datasets')

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
IDX_FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
# Official files over https, with the sha256 that tensorflow-datasets publishes
# for them (tensorflow_datasets/url_checksums/{fashion_mnist,mnist,cifar10}.txt).
FASHION_MNIST_URL = 'https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/'
MNIST_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
SHA256 = {
    FASHION_MNIST_URL + 'train-images-idx3-ubyte.gz':
        '3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84',
    FASHION_MNIST_URL + 'train-labels-idx1-ubyte.gz':
        'a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845',
    FASHION_MNIST_URL + 't10k-images-idx3-ubyte.gz':
        '346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073',
    FASHION_MNIST_URL + 't10k-labels-idx1-ubyte.gz':
        '67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5',
    MNIST_URL + 'train-images-idx3-ubyte.gz':
        '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609',
    MNIST_URL + 'train-labels-idx1-ubyte.gz':
        '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c',
    MNIST_URL + 't10k-images-idx3-ubyte.gz':
        '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6',
    MNIST_URL + 't10k-labels-idx1-ubyte.gz':
        'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6',
    CIFAR10_URL: 'c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd',
}
OFFLINE_HELP = ('offline options: install Debian\'s dataset-fashion-mnist (apt-get install '
                'dataset-fashion-mnist), or give a folder with the four official IDX files '
                '(--fashion_mnist_dir or $BNJAX_FASHION_MNIST_DIR), or prepare the dataset '
                'once on a machine with network into --data_dir / $BNJAX_DATA_DIR')
CONNECT_TIMEOUT_S = 5.0


class DataUnavailableError(OSError):
  """A dataset can be neither found locally nor downloaded."""


def default_data_dir() -> str:
  return os.environ.get('BNJAX_DATA_DIR', str(pathlib.Path.home() / 'bnjax_data'))


def check_fashion_mnist_dir(folder) -> None:
  """Raises naming what is wrong unless ``folder`` holds the four IDX files."""
  path = pathlib.Path(folder)
  if not path.is_dir():
    raise ValueError(f'{folder} is not a folder')
  missing = [f for f in IDX_FILES.values() if not (path / f).is_file()]
  if missing:
    raise ValueError(f'{folder} lacks the Fashion-MNIST file(s) {", ".join(missing)} '
                     f'(it needs all of {", ".join(IDX_FILES.values())})')


def fashion_mnist_dir() -> Optional[str]:
  """Folder holding the four official Fashion-MNIST IDX files, if any.

  ``$BNJAX_FASHION_MNIST_DIR`` when set (an error when it lacks a file: no
  silent fallback), else Debian's folder when complete, else ``None``.
  """
  named = os.environ.get('BNJAX_FASHION_MNIST_DIR')
  if named:
    check_fashion_mnist_dir(named)
    return named
  if all((pathlib.Path(DEBIAN_FASHION_MNIST) / f).exists() for f in IDX_FILES.values()):
    return DEBIAN_FASHION_MNIST
  return None


def read_idx(path) -> np.ndarray:
  """Parses an (optionally gzipped) IDX file of unsigned bytes (LeCun's format).

  Checks the magic number, the rank and that the payload holds exactly the
  product of the dimensions; a ValueError names the file otherwise.
  """
  opener = gzip.open if str(path).endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (EOFError, gzip.BadGzipFile, OSError) as e:
    raise ValueError(f'{path}: cannot be read ({type(e).__name__}: {e}); the file is '
                     f'truncated or damaged.') from None
  if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08 or not 1 <= data[3] <= 4:
    raise ValueError(f'{path} is not an IDX file of unsigned bytes (magic number '
                     f'{data[:4].hex() or "missing"}, expected 0000080N with N = 1..4).')
  ndim = data[3]
  if len(data) < 4 + 4 * ndim:
    raise ValueError(f'{path}: the header is truncated.')
  dims = np.frombuffer(data, '>u4', count=ndim, offset=4).astype(np.int64)
  expected, found = int(np.prod(dims)), len(data) - 4 - 4 * ndim
  if found != expected:
    raise ValueError(f'{path}: the header announces shape {tuple(dims.tolist())} '
                     f'({expected} bytes) but the payload holds {found} bytes.')
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_idx_pair(images_path, labels_path, shape=(28, 28), classes: int = 10) -> tuple:
  """Images and labels of one split, checked against each other."""
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != shape:
    raise ValueError(f'{images_path}: images of shape {images.shape[1:]}, expected {shape}.')
  if labels.ndim != 1:
    raise ValueError(f'{labels_path}: labels must be 1-D, got shape {labels.shape}.')
  if len(images) != len(labels):
    raise ValueError(f'{images_path} holds {len(images)} images but {labels_path} holds '
                     f'{len(labels)} labels.')
  if labels.size and labels.max() >= classes:
    raise ValueError(f'{labels_path}: label {labels.max()} is outside 0..{classes - 1}.')
  return images, labels


def sha256_of(paths) -> str:
  """Hex sha256 over the bytes of ``paths`` in order."""
  digest = hashlib.sha256()
  for p in paths:
    with open(p, 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 20), b''):
        digest.update(chunk)
  return digest.hexdigest()


def _check_reachable(url: str) -> None:
  """Fails within ``CONNECT_TIMEOUT_S`` when the download host cannot be reached."""
  parsed = urllib.parse.urlparse(url)
  try:
    socket.create_connection((parsed.hostname, parsed.port or 443),
                             timeout=CONNECT_TIMEOUT_S).close()
  except OSError as e:
    raise DataUnavailableError(f'cannot reach {parsed.hostname} to download {url} '
                               f'({e}); {OFFLINE_HELP}.') from None


def _download_verified(dl_manager, urls: dict) -> dict:
  """Downloads ``{key: url}`` and checks each file against its published sha256."""
  for url in urls.values():
    _check_reachable(url)
  paths = dl_manager.download(urls)
  for key, url in urls.items():
    got = sha256_of([paths[key]])
    if url in SHA256 and got != SHA256[url]:
      raise ValueError(f'{url}: sha256 {got} differs from the published '
                       f'{SHA256[url]}; the download is damaged or was altered.')
  return paths


def read_cifar10_binary(paths) -> tuple:
  """Images ``(N, 32, 32, 3)`` and labels from CIFAR-10's binary batch files."""
  records = np.concatenate([np.fromfile(p, np.uint8).reshape(-1, 3073) for p in paths])
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, records[:, 0].astype(np.int64)


class _ImageClassification(tfds.core.GeneratorBasedBuilder):
  """Shared info of the image builders: uint8 ``image`` and a class ``label``."""
  VERSION = tfds.core.Version('1.0.0')
  SHAPE = None
  CLASSES = 10

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=self.CLASSES),
        }),
        supervised_keys=('image', 'label'))

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image.reshape(self.SHAPE), 'label': int(label)}


class _Idx(_ImageClassification):
  SHAPE = (28, 28, 1)
  URL = None

  def _idx_paths(self, dl_manager) -> dict:
    return _download_verified(dl_manager, {k: self.URL + v for k, v in IDX_FILES.items()})

  def _split_generators(self, dl_manager):
    paths = self._idx_paths(dl_manager)
    return {split: self._generate_examples(*read_idx_pair(paths[f'{split}_images'],
                                                          paths[f'{split}_labels'],
                                                          self.SHAPE[:2], self.CLASSES))
            for split in ('train', 'test')}


class BnjaxFashionMnist(_Idx):
  """Fashion-MNIST (Xiao et al. 2017) from its official IDX files."""
  URL = FASHION_MNIST_URL

  def _idx_paths(self, dl_manager):
    local = fashion_mnist_dir()
    if local is not None:
      return {k: pathlib.Path(local) / v for k, v in IDX_FILES.items()}
    return super()._idx_paths(dl_manager)


class BnjaxMnist(_Idx):
  """MNIST from its official IDX files."""
  URL = MNIST_URL


class BnjaxCifar10(_ImageClassification):
  """CIFAR-10 from the official binary archive."""
  SHAPE = (32, 32, 3)

  def _split_generators(self, dl_manager):
    archive = _download_verified(dl_manager, {'archive': CIFAR10_URL})['archive']
    root = pathlib.Path(dl_manager.extract(archive)) / 'cifar-10-batches-bin'
    train = read_cifar10_binary([root / f'data_batch_{i}.bin' for i in range(1, 6)])
    test = read_cifar10_binary([root / 'test_batch.bin'])
    return {'train': self._generate_examples(*train), 'test': self._generate_examples(*test)}


BUILDERS = {'fashion_mnist': 'bnjax_fashion_mnist', 'mnist': 'bnjax_mnist',
            'cifar10': 'bnjax_cifar10'}


@dataclasses.dataclass(frozen=True)
class Arrays:
  """One split in memory: ``x`` (N, ...) and ``y`` (N,)."""
  x: np.ndarray
  y: np.ndarray

  def __len__(self):
    return len(self.y)

  def take(self, n: Optional[int]) -> 'Arrays':
    return self if n is None or n >= len(self) else Arrays(self.x[:n], self.y[:n])


def _source_arrays(source) -> Arrays:
  try:  # one batched read: 4x faster than per-item reads on Fashion-MNIST
    examples = source.__getitems__(range(len(source)))
  except TypeError:  # tfds.testing.mock_data's sources lack the batched read
    examples = [source[i] for i in range(len(source))]
  return Arrays(np.stack([e['image'] for e in examples]),
                np.asarray([e['label'] for e in examples], np.int64))


def source_key(name: str) -> str:
  """Names the prepared copy after its source: ``local-<sha256[:16]>`` of the local
  IDX files, or ``official`` (downloads are checked against published sha256s).
  Corrected local files therefore get a new prepared copy, never the stale one."""
  local = fashion_mnist_dir() if name == 'fashion_mnist' else None
  if local is None:
    return 'official'
  return 'local-' + sha256_of([pathlib.Path(local) / f for f in IDX_FILES.values()])[:16]


def load_image_dataset(name: str, data_dir: Optional[str] = None) -> dict:
  """``{'train': Arrays, 'test': Arrays}`` of uint8 images, preparing once.

  The first call builds the array_record files into ``data_dir`` (from the
  local copy or the official download); later calls read them through
  ``tfds.data_source``.
  """
  if name not in BUILDERS:
    raise ValueError(f'unknown image dataset {name!r}; choose from {sorted(BUILDERS)}.')
  data_dir = os.path.join(data_dir or default_data_dir(), source_key(name))
  builder = tfds.builder(BUILDERS[name], data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare()
  return {split: _source_arrays(tfds.data_source(BUILDERS[name], split=split,
                                                 data_dir=data_dir, download=False))
          for split in ('train', 'test')}


def teacher_student(num_train: int, num_test: int, input_dim: int, *,
                    activation: str = 'linear', noise_std: float = 0.1,
                    seed: int = 0) -> dict:
  """Luo et al. (2019)'s teacher-student regression data.

  Inputs ``x ~ N(0, I/N)`` (N = ``input_dim``), a fixed teacher
  ``w* ~ N(0, I)`` (so ``w*.x ~ N(0, 1)``), targets
  ``y = g(w*.x) + noise_std * eps`` with ``g`` identity (``'linear'``) or ReLU.

  Returns:
    ``{'train': Arrays, 'test': Arrays, 'teacher': w*}``, float32.
  """
  if activation not in ('linear', 'relu'):
    raise ValueError(f"activation must be 'linear' or 'relu', got {activation!r}.")
  for name, value in (('num_train', num_train), ('num_test', num_test),
                      ('input_dim', input_dim)):
    check_positive_int(name, value)
  if not noise_std >= 0:
    raise ValueError(f'noise_std must be >= 0, got {noise_std}.')
  rng = np.random.default_rng(seed)
  teacher = rng.standard_normal(input_dim).astype(np.float32)

  def split(n):
    x = (rng.standard_normal((n, input_dim)) / np.sqrt(input_dim)).astype(np.float32)
    h = x @ teacher
    y = np.maximum(h, 0.0) if activation == 'relu' else h
    return Arrays(x, (y + noise_std * rng.standard_normal(n)).astype(np.float32))

  return {'train': split(num_train), 'test': split(num_test), 'teacher': teacher}


def normalization_stats(x: np.ndarray):
  """Per-channel mean and std of uint8 images scaled to [0, 1] (float32)."""
  x = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
  return x.mean(0).astype(np.float32), x.std(0).astype(np.float32)


@dataclasses.dataclass
class Batches:
  """Deterministic, shuffled, normalized batches of an in-memory split.

  Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``. ``uint8``
  images become ``(x / 255 - mean) / std`` in float32; ``augment`` adds a
  random crop (4-pixel zero padding) and horizontal flip (CIFAR-style).
  ``shuffle=False`` keeps the order (evaluation) and keeps the last partial
  batch; training drops it.
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
