"""The image datasets as tfds builders that need no TensorFlow (array_record)."""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from bnjax.train.data.sources import (CIFAR10_URL, FASHION_MNIST_URL, IDX_FILES, MNIST_URL,
                                      _download_verified, fashion_mnist_dir,
                                      read_cifar10_binary, read_idx_pair)


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
  DATASET = None

  def _idx_paths(self, dl_manager) -> dict:
    return _download_verified(dl_manager, {k: self.URL + v for k, v in IDX_FILES.items()},
                              self.DATASET)

  def _split_generators(self, dl_manager):
    paths = self._idx_paths(dl_manager)
    return {split: self._generate_examples(*read_idx_pair(paths[f'{split}_images'],
                                                          paths[f'{split}_labels'],
                                                          self.SHAPE[:2], self.CLASSES))
            for split in ('train', 'test')}


class BnjaxFashionMnist(_Idx):
  """Fashion-MNIST (Xiao et al. 2017) from its official IDX files."""
  URL = FASHION_MNIST_URL
  DATASET = 'fashion_mnist'

  def _idx_paths(self, dl_manager):
    local = fashion_mnist_dir()
    if local is not None:
      return {k: pathlib.Path(local) / v for k, v in IDX_FILES.items()}
    return super()._idx_paths(dl_manager)


class BnjaxMnist(_Idx):
  """MNIST from its official IDX files."""
  URL = MNIST_URL
  DATASET = 'mnist'


class BnjaxCifar10(_ImageClassification):
  """CIFAR-10 from the official binary archive."""
  SHAPE = (32, 32, 3)

  def _split_generators(self, dl_manager):
    archive = _download_verified(dl_manager, {'archive': CIFAR10_URL}, 'cifar10')['archive']
    root = pathlib.Path(dl_manager.extract(archive)) / 'cifar-10-batches-bin'
    train = read_cifar10_binary([root / f'data_batch_{i}.bin' for i in range(1, 6)])
    test = read_cifar10_binary([root / 'test_batch.bin'])
    return {'train': self._generate_examples(*train), 'test': self._generate_examples(*test)}


BUILDERS = {'fashion_mnist': 'bnjax_fashion_mnist', 'mnist': 'bnjax_mnist',
            'cifar10': 'bnjax_cifar10'}
