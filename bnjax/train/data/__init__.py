r"""Datasets without TensorFlow: tfds builders read through ``tfds.data_source``.

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


One module per job: :mod:`.sources`, :mod:`.pipeline`, :mod:`.synthetic`,
:mod:`.builders` and :mod:`.cache`; every name is importable from ``bnjax.train.data``.
"""

from bnjax.train.data.sources import (CIFAR10_URL, CONNECT_TIMEOUT_S, DEBIAN_FASHION_MNIST,
                                      DataUnavailableError, FASHION_MNIST_URL, IDX_FILES,
                                      MNIST_URL, OFFLINE_HELP, SHA256, offline_help,
                                      check_fashion_mnist_dir, default_data_dir,
                                      fashion_mnist_dir, read_cifar10_binary, read_idx,
                                      read_idx_pair, sha256_of)
from bnjax.train.data.pipeline import Arrays, Batches, normalization_stats, prefetch
from bnjax.train.data.synthetic import teacher_student
from bnjax.train.data.builders import BUILDERS, BnjaxCifar10, BnjaxFashionMnist, BnjaxMnist
from bnjax.train.data.cache import load_image_dataset, source_key

__all__ = [
    'Arrays',
    'BUILDERS',
    'Batches',
    'BnjaxCifar10',
    'BnjaxFashionMnist',
    'BnjaxMnist',
    'CIFAR10_URL',
    'CONNECT_TIMEOUT_S',
    'DEBIAN_FASHION_MNIST',
    'DataUnavailableError',
    'FASHION_MNIST_URL',
    'IDX_FILES',
    'MNIST_URL',
    'OFFLINE_HELP',
    'SHA256',
    'check_fashion_mnist_dir',
    'default_data_dir',
    'fashion_mnist_dir',
    'load_image_dataset',
    'normalization_stats',
    'offline_help',
    'prefetch',
    'read_cifar10_binary',
    'read_idx',
    'read_idx_pair',
    'sha256_of',
    'source_key',
    'teacher_student',
]
