"""A run's inputs: its data splits, input normalization and batches, with the refusals
that need the data (made before any file of the run is written)."""

import dataclasses
import functools
from typing import Optional

from absl import logging

from bnjax.train import data
from bnjax.train.config import Config

__all__ = ['RunData', 'input_normalization', 'load_data', 'prepare']


@functools.lru_cache(maxsize=2)
def _cached_image_dataset(name: str, data_dir: Optional[str]) -> dict:
  """One read per process: a sweep trains many configurations on one dataset."""
  return data.load_image_dataset(name, data_dir)


def load_data(config: Config, data_dir: Optional[str] = None) -> dict:
  """``{'train': Arrays, 'test': Arrays}``, train cut to ``train_subset``.

  Args:
    config: the run's :class:`bnjax.train.config.Config`.
    data_dir: tfds data dir for image datasets (default ``$BNJAX_DATA_DIR``).

  Returns:
    A dict of two :class:`bnjax.train.data.Arrays`.

  Example:
    >>> from bnjax.train import inputs
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4, log_every=2,
    ...                 checkpoint_every=4, learning_rate=0.05)
    >>> len(inputs.load_data(config)['train'])
    32

  References:
    Luo et al. 2019, arXiv 1809.00846, section 3 (teacher-student data);
    Xiao et al. 2017, arXiv 1708.07747 (Fashion-MNIST).
  """
  if config.dataset == 'teacher_student':
    splits = data.teacher_student(config.num_train, config.num_test, config.input_dim,
                                  activation=config.activation,
                                  noise_std=config.noise_std, seed=config.seed)
  else:
    splits = _cached_image_dataset(config.dataset, data_dir)
  return {'train': splits['train'].take(config.train_subset or None),
          'test': splits['test']}


@functools.lru_cache(maxsize=4)
def _cached_normalization(name: str, data_dir: Optional[str], subset: int):
  """One pass per process over a dataset's (subset of) training images."""
  return data.normalization_stats(_cached_image_dataset(name, data_dir)['train'].take(
      subset or None).x)


def input_normalization(config: Config, data_dir: Optional[str] = None):
  """``(mean, std)`` per channel of the run's training images (the
  :func:`load_data` split); ``(None, None)`` for teacher-student data."""
  if config.dataset == 'teacher_student':
    return None, None
  return _cached_normalization(config.dataset, data_dir, config.train_subset)


@dataclasses.dataclass
class RunData:
  """A run's splits and its training and test batches.

  Attributes:
    splits: ``{'train': Arrays, 'test': Arrays}`` (:func:`load_data`).
    train_batches: shuffled, augmented as configured, normalized.
    test_batches: unshuffled, normalized with the training statistics.
  """
  splits: dict
  train_batches: data.Batches
  test_batches: data.Batches


def prepare(config: Config, data_dir: Optional[str] = None) -> RunData:
  """The run's :class:`RunData`, after the checks that need the data.

  Raises a ValueError naming the flag when the training split is smaller than
  one batch, or when a schedule was laid out for another number of training
  examples than the dataset has. Single runs and vectorized groups both call
  it before they write anything.

  Args:
    config: the run's :class:`bnjax.train.config.Config`.
    data_dir: tfds data dir for image datasets.

  Returns:
    The run's :class:`RunData`.

  Example:
    >>> from bnjax.train import inputs
    >>> from bnjax.train.config import Config
    >>> config = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...                 num_train=32, num_test=16, input_dim=4)
    >>> inputs.prepare(config).train_batches.steps_per_epoch
    4
  """
  splits = load_data(config, data_dir)
  if len(splits['train']) < config.batch_size:
    raise ValueError(f'--batch_size: {config.batch_size} exceeds the '
                     f'{len(splits["train"])} training examples of {config.dataset}')
  if len(splits['train']) != config.train_examples() and (
      config.schedule != 'constant' or config.warmup_steps):
    raise ValueError(f'--schedule: the schedule was laid out for '
                     f'{config.train_examples()} training examples, but '
                     f'{config.dataset} has {len(splits["train"])} here')
  steps_per_epoch = len(splits['train']) // config.batch_size
  if config.bn_eval == 'precise' and config.bn_eval_batches > steps_per_epoch:
    logging.warning('--bn_eval_batches=%d exceeds the %d batches of an epoch of %s; '
                    'precise statistics use those %d (the training set once).',
                    config.bn_eval_batches, steps_per_epoch, config.dataset, steps_per_epoch)
  mean, std = input_normalization(config, data_dir)
  return RunData(
      splits,
      data.Batches(splits['train'], config.batch_size, seed=config.seed,
                   augment=config.augment, mean=mean, std=std),
      data.Batches(splits['test'], config.eval_batch_size, shuffle=False, mean=mean,
                   std=std))
