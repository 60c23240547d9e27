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

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import os
import pathlib
import queue
import socket
import tempfile
import threading
import urllib.parse
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from bnjax._validation import check_positive_int

__all__ = [
    'Arrays',
    'Batches',
    'DataUnavailableError',
    'fashion_mnist_dir',
    'load_image_dataset',
    'prefetch',
    'read_idx',
    'teacher_student',
]


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
  """A dataset can be neither found locally nor downloaded.

  Raised within seconds when offline (a bounded connection attempt), with
  the local folders and the URL it tried.

  Example:
    >>> from bnjax.train import data
    >>> issubclass(data.DataUnavailableError, OSError)
    True

  References:
    Xiao, Rasul & Vollgraf, "Fashion-MNIST", 2017, arXiv 1708.07747.
  """


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

  Returns:
    A folder path or ``None``.

  Example:
    >>> import os, tempfile
    >>> from bnjax.train import data
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {'BNJAX_FASHION_MNIST_DIR': tempfile.mkdtemp()}):
    ...   data.fashion_mnist_dir()
    Traceback (most recent call last):
    ...
    ValueError: ... lacks the Fashion-MNIST file(s) ...

  References:
    Xiao, Rasul & Vollgraf, "Fashion-MNIST", 2017, arXiv 1708.07747.
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

  Args:
    path: the ``.gz`` or raw IDX file.

  Returns:
    A ``uint8`` array of the file's shape.

  Example:
    >>> import gzip, tempfile
    >>> from bnjax.train import data
    >>> path = tempfile.mkdtemp() + '/labels-idx1-ubyte.gz'
    >>> with gzip.open(path, 'wb') as f:
    ...   _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> data.read_idx(path)
    array([7, 8, 9], dtype=uint8)

  References:
    LeCun et al., "The MNIST database", http://yann.lecun.com/exdb/mnist/
    (the IDX file format).
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

  Args:
    name: ``'fashion_mnist'``, ``'mnist'`` or ``'cifar10'``.
    data_dir: the tfds data dir (default ``$BNJAX_DATA_DIR`` or
      ``~/bnjax_data``).

  Returns:
    A dict of two :class:`Arrays`, images ``(N, H, W, C)`` uint8.

  Raises:
    DataUnavailableError: no local copy and no download.

  Example:
    A local copy of four (tiny) IDX files, prepared into a fresh data dir:

    >>> import contextlib, gzip, io, os, tempfile
    >>> from unittest import mock
    >>> from bnjax.train import data
    >>> src = tempfile.mkdtemp()
    >>> def idx(name, dims, payload):
    ...   header = bytes([0, 0, 8, len(dims)]) + b''.join(d.to_bytes(4, 'big') for d in dims)
    ...   with gzip.open(os.path.join(src, name), 'wb') as f:
    ...     _ = f.write(header + bytes(payload))
    >>> for split, n in (('train', 3), ('t10k', 2)):
    ...   idx(f'{split}-images-idx3-ubyte.gz', (n, 28, 28), [0] * (n * 784))
    ...   idx(f'{split}-labels-idx1-ubyte.gz', (n,), range(n))
    >>> with mock.patch.dict(os.environ, {'BNJAX_FASHION_MNIST_DIR': src}), \\
    ...      contextlib.redirect_stdout(io.StringIO()):
    ...   splits = data.load_image_dataset('fashion_mnist', data_dir=tempfile.mkdtemp())
    >>> splits['train'].x.shape, sorted(int(y) for y in splits['test'].y)
    ((3, 28, 28, 1), [0, 1])

  References:
    Xiao, Rasul & Vollgraf, "Fashion-MNIST", 2017, arXiv 1708.07747;
    Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
    2009 (CIFAR-10).
  """
  if name not in BUILDERS:
    raise ValueError(f'unknown image dataset {name!r}; choose from {sorted(BUILDERS)}.')
  data_dir = os.path.join(data_dir or default_data_dir(), source_key(name))
  with _preparing(data_dir):
    builder = tfds.builder(BUILDERS[name], data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare()
  return {split: _decoded_arrays(builder, name, split, data_dir)
          for split in ('train', 'test')}


@contextlib.contextmanager
def _preparing(data_dir: str):
  """Holds an exclusive ``flock`` on a lock file named by ``data_dir``'s path in
  the temp dir (nothing is written into the data dir itself): two processes
  preparing one data dir at once (two binaries started together on a fresh
  machine) would both build it, and the second one's final rename fails."""
  key = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:16]
  fd = os.open(os.path.join(tempfile.gettempdir(), f'bnjax-prepare-{key}.lock'),
               os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the flock


def _decoded_arrays(builder, name: str, split: str, data_dir: str) -> Arrays:
  """A split as numpy arrays, decoded once into ``arrays/`` beside the prepared
  dataset and memory-mapped from there (decoding 70,000 records took 10 s per
  process; the page cache then serves every process of a sweep).

  The cache holds ``<split>_x.npy``, ``<split>_y.npy`` and their sha256; one
  that is missing, of the wrong length or whose bytes changed is decoded again.
  """
  source = lambda: tfds.data_source(BUILDERS[name], split=split, data_dir=data_dir,
                                    download=False)
  try:
    n = builder.info.splits[split].num_examples
  except KeyError:  # no split info (tfds.testing.mock_data): nothing on disk to cache by
    return _source_arrays(source())
  folder = pathlib.Path(builder.data_dir) / 'arrays'
  paths = [folder / f'{split}_x.npy', folder / f'{split}_y.npy']
  digest = folder / f'{split}.sha256'
  try:
    if digest.read_text().strip() == sha256_of(paths):
      x, y = (np.load(p, mmap_mode='r') for p in paths)
      if len(x) == len(y) == n:
        return Arrays(x, y)
  except (OSError, ValueError):
    pass
  arrays = _source_arrays(source())
  folder.mkdir(exist_ok=True)
  tag = f'tmp{os.getpid()}.{threading.get_ident()}'
  for path, value in zip(paths, (arrays.x, arrays.y)):
    tmp = path.with_name(f'.{path.stem}.{tag}.npy')
    np.save(tmp, value)
    os.replace(tmp, path)
  tmp = digest.with_name(f'.{digest.name}.{tag}')
  tmp.write_text(sha256_of(paths))
  os.replace(tmp, digest)
  return arrays


def teacher_student(num_train: int, num_test: int, input_dim: int, *,
                    activation: str = 'linear', noise_std: float = 0.1,
                    seed: int = 0) -> dict:
  r"""Luo et al. (2019)'s teacher-student regression data.

  .. math::
    x \sim \mathcal{N}(0, I/N), \quad w^* \sim \mathcal{N}(0, I), \quad
    y = g(w^{*\top} x) + \sigma_\text{noise}\,\varepsilon

  with ``g`` identity (``'linear'``) or ReLU, so ``w*.x ~ N(0, 1)``.

  Args:
    num_train, num_test: examples per split.
    input_dim: ``N``.
    activation: ``'linear'`` or ``'relu'``.
    noise_std: label noise standard deviation.
    seed: seed of the teacher, inputs and noise.

  Returns:
    ``{'train': Arrays, 'test': Arrays, 'teacher': w*}``, float32.

  Example:
    >>> from bnjax.train import data
    >>> d = data.teacher_student(8, 4, 3, noise_std=0.0)
    >>> d['train'].x.shape, d['test'].y.shape, d['teacher'].shape
    ((8, 3), (4,), (3,))

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 3.
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
