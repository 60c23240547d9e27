"""The raw sources of the image datasets: the official files, local copies
(Debian's Fashion-MNIST), checked IDX and CIFAR-10 parsing, verified downloads."""

import gzip
import hashlib
import os
import pathlib
import socket
import urllib.parse
from typing import Optional

import numpy as np


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


def offline_help(dataset: str) -> str:
  """What a user without network can do to get ``dataset``: Fashion-MNIST has
  local copies (:data:`OFFLINE_HELP`); MNIST and CIFAR-10 are prepared once where
  there is network and the folder copied."""
  if dataset == 'fashion_mnist':
    return OFFLINE_HELP
  return (f'{dataset} has no local-copy option: prepare it once on a machine with network '
          f'(bnjax-train --dataset={dataset} --num_steps=1 --data_dir=DIR), copy DIR here '
          f'and pass --data_dir=DIR (or set $BNJAX_DATA_DIR)')
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


def _check_reachable(url: str, dataset: str) -> None:
  """Fails within ``CONNECT_TIMEOUT_S`` when the download host cannot be reached."""
  parsed = urllib.parse.urlparse(url)
  try:
    socket.create_connection((parsed.hostname, parsed.port or 443),
                             timeout=CONNECT_TIMEOUT_S).close()
  except OSError as e:
    raise DataUnavailableError(f'{dataset}: cannot reach {parsed.hostname} to download {url} '
                               f'({e}); {offline_help(dataset)}.') from None


def _download_verified(dl_manager, urls: dict, dataset: str) -> dict:
  """Downloads ``{key: url}`` of ``dataset`` and checks each file against its
  published sha256."""
  for url in urls.values():
    _check_reachable(url, dataset)
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
