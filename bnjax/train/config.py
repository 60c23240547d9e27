"""The configuration of one training run: fields, validation and the absl flags.

Each field is declared once, with its default, help text and choices
(:func:`_field`); :func:`define_flags` turns the fields into the flags of
``experiments.train`` and :func:`from_flags` reads them back.
"""

import dataclasses
import math
import numbers
from typing import Sequence

import numpy as np

from bnjax.bn_eval import BN_EVAL
from bnjax.models import MODELS, NORMS, PER_UNIT_INVARIANT
from bnjax import transforms

__all__ = [
    'Config',
    'define_flags',
    'from_flags',
    'record',
    'upgrade_record',
]

DATASETS = ('fashion_mnist', 'mnist', 'cifar10', 'teacher_student')
# What bnjax.train.fit records for a user's own arrays and model (not flags).
USER_DATASET, USER_MODEL = 'arrays', 'custom'
OPTIMIZERS = ('sgd', 'adam', 'adamp', 'sgdp')
# transforms' regularizers, and Kosson et al.'s rotational wrapper of sgd / adam.
REGULARIZERS = transforms.REGULARIZERS + ('rotational',)
PARALLEL = ('none', 'pmap', 'sharded')


# Written into every config record. 2: --optimizer=sgd takes --momentum (format 1,
# without the key, ignored it), so a format-1 record is refused, never resumed
# under the new meaning. 3: adds the fields below; a format-2 record is read
# with the values it meant (:func:`upgrade_record`). 4: adds head_weight_decay;
# format 2 and 3 records are read with the value they meant (the head decayed
# with --weight_decay). 5: adds rest_learning_rate, init_scale, norm_epsilon and
# adam_eps; older records are read with the values they meant (one learning rate,
# the initializers' scale, the layers' and optax's epsilons). 6: adds num_steps and
# tensorboard; older records are read with the values they meant (epochs, no event
# files: a resumed one writes them from its metrics.jsonl).
CONFIG_VERSION = 6
FORMAT_5_MEANT = {'num_steps': 0, 'tensorboard': False}
FORMAT_4_MEANT = {'rest_learning_rate': -1.0, 'init_scale': 1.0, 'norm_epsilon': -1.0,
                  'adam_eps': 1e-8, **FORMAT_5_MEANT}
FORMAT_3_MEANT = {'head_weight_decay': -1.0, **FORMAT_4_MEANT}
FORMAT_2_MEANT = {'bn_eval': 'running', 'bn_eval_batches': 100, 'schedule': 'constant',
                  'warmup_steps': 0, **FORMAT_3_MEANT}
MEANT = {2: FORMAT_2_MEANT, 3: FORMAT_3_MEANT, 4: FORMAT_4_MEANT, 5: FORMAT_5_MEANT}
SCHEDULES = ('constant', 'cosine', 'step')
# Training examples of the image datasets (a learning-rate schedule needs the
# run's length before the data is read).
TRAIN_SIZES = {'fashion_mnist': 60000, 'mnist': 60000, 'cifar10': 50000}
# Norms with running statistics (``batch_stats``), and those whose training
# forward ignores them (so precise statistics can be read off a forward).
RUNNING_STATS_NORMS = ('batch', 'population', 'mean_only', 'variance_only', 'ghost')


def _field(default, help_text: str, choices: Sequence[str] = ()):
  return dataclasses.field(default=default, metadata={'help': help_text,
                                                      'choices': tuple(choices)})


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run; each field is a flag of ``experiments.train`` (:func:`define_flags`).

  ``optimizer='momentum'`` is read as ``'sgd'`` (SGD takes ``momentum``, as
  ``optax.sgd`` does), so both spellings name one run. Each field's meaning
  is its ``help`` metadata (``dataclasses.fields(Config)``), the flag's help.

  Attributes:
    dataset, model, norm, optimizer, learning_rate, momentum, weight_decay,
    regularizer, head_weight_decay, rest_learning_rate, init_scale, norm_epsilon,
    adam_eps, projection, gamma_decay, batch_size, num_epochs, num_steps,
    train_subset, seed, parallel, virtual_batch_size, augment, activation,
    width, input_dim, num_train, num_test, noise_std, log_every,
    checkpoint_every, tensorboard, eval_every, eval_batch_size, bn_eval, bn_eval_batches,
    schedule, warmup_steps: see ``--help`` of ``bnjax-train``.

  Example:
    >>> from bnjax.train.config import Config
    >>> Config(optimizer='momentum').optimizer
    'sgd'
    >>> Config(learning_rate=-1.0).validate()
    Traceback (most recent call last):
    ...
    ValueError: --learning_rate: must be > 0, got -1.0

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, section 5 (the default run).
  """
  dataset: str = _field('fashion_mnist', 'Dataset.', DATASETS)
  model: str = _field('convnet', 'Model: convnet (4-layer), resnet20 (CIFAR) or perceptron '
                      '(teacher_student only).', MODELS)
  norm: str = _field('batch', 'Normalization after each kernel layer (mean_only and '
                     'variance_only add weight norm, as in Luo et al. 2019).', NORMS)
  optimizer: str = _field('sgd', "sgd (SGD with --momentum, as optax.sgd; 'momentum' is an "
                          'alias), adam, or adamp / sgdp (Heo et al. 2021: radial part of '
                          'the step removed on scale-invariant kernels; --regularizer=none '
                          'or decoupled, their own decay).', OPTIMIZERS + ('momentum',))
  learning_rate: float = _field(0.05, 'Learning rate (> 0).')
  momentum: float = _field(0.9, 'Momentum of --optimizer=sgd, in [0, 1) (0: plain SGD).')
  weight_decay: float = _field(5e-4, 'lambda of --regularizer=l2 (gradient lambda*w), '
                               'decoupled (lr*lambda*w per step) or rotational (sets the '
                               'equilibrium angle); must be 0 for none and projection.')
  regularizer: str = _field('l2', 'none, l2 (coupled, before the optimizer), decoupled '
                            '(after it), projection (scale-invariant kernels kept at unit '
                            'norm per unit) or rotational (Kosson et al. 2024: sgd / adam '
                            'as AdamW rotate every scale-invariant unit at its equilibrium '
                            'angle from the first step; other kernels decayed).',
                            REGULARIZERS)
  head_weight_decay: float = _field(-1.0, 'lambda of --regularizer=l2 or decoupled on the '
                                    'kernels outside the scale-invariant ones (the '
                                    'classifier head); -1: --weight_decay. Fixing it '
                                    'sweeps --weight_decay on the invariant kernels only.')
  rest_learning_rate: float = _field(-1.0, 'Peak learning rate of every parameter outside '
                                     'the scale-invariant kernels (head, gains, biases), '
                                     'on the same schedule; -1: --learning_rate. Fixing it '
                                     'sweeps --learning_rate on the invariant kernels only '
                                     '(parameter groups, as optax.multi_transform).')
  init_scale: float = _field(1.0, 'Factor on the scale-invariant kernels at '
                             'initialization: the network computes the same function, '
                             'only their effective learning rate changes (van Laarhoven '
                             '2017, section 3).')
  norm_epsilon: float = _field(-1.0, 'epsilon the normalization adds to the variance '
                               '(flax\'s epsilon); -1: each layer\'s default (1e-5 for '
                               'batch norms).')
  adam_eps: float = _field(1e-8, 'eps of --optimizer=adam or adamp, and of rotational '
                           'adam (optax\'s eps, added to sqrt(v)).')
  projection: bool = _field(False, "Also project the scale-invariant kernels to unit norm "
                            "per unit after the optimizer and --regularizer (van "
                            "Laarhoven's proposal).")
  gamma_decay: float = _field(0.0, 'zeta of an explicit penalty zeta*gamma^2 on every '
                              'normalization gain (Luo et al. 2019: BN ~ population norm + '
                              'gamma decay 1/(2M) or 1/(4M)).')
  batch_size: int = _field(128, 'Global batch size.')
  num_epochs: int = _field(1, 'Epochs over the training set (or give --num_steps).')
  num_steps: int = _field(0, 'Optimizer steps of the run, instead of --num_epochs (0: '
                          '--num_epochs); the schedule and evaluation follow it.')
  train_subset: int = _field(0, 'Use the first N training examples (0: all).')
  seed: int = _field(0, 'Seed of init, data order and augmentation.')
  parallel: str = _field('none', 'none (jit, one device), pmap (local devices) or sharded '
                         '(jit over a device mesh).', PARALLEL)
  virtual_batch_size: int = _field(32, 'Virtual batch of --norm=ghost (per device under '
                                   'pmap).')
  augment: bool = _field(False, 'Random crop and flip (cifar10).')
  activation: str = _field('relu', 'Perceptron and teacher activation (teacher_student).',
                           ('linear', 'relu'))
  width: int = _field(32, 'ConvNet widths: --width, 2x and 4x (convnet only).')
  input_dim: int = _field(100, 'Input dimension N (teacher_student).')
  num_train: int = _field(1000, 'Training examples P (teacher_student).')
  num_test: int = _field(2000, 'Test examples (teacher_student).')
  noise_std: float = _field(0.1, 'Label noise std (teacher_student).')
  log_every: int = _field(50, 'Steps between metrics.jsonl lines.')
  checkpoint_every: int = _field(500, 'Steps between checkpoints (a multiple of '
                                 '--log_every).')
  tensorboard: bool = _field(True, 'Also write the metrics as TensorBoard event files in '
                            'the workdir (tensorboard --logdir=<its parent>).')
  eval_every: int = _field(0, 'Steps between test evaluations logged in metrics.jsonl (0: '
                           'only at the end; a multiple of --log_every).')
  eval_batch_size: int = _field(1000, 'Batch size of evaluation.')
  bn_eval: str = _field('running', 'Statistics batch norms evaluate with: running (the '
                        'moving averages, as flax), debiased (the averages with their '
                        'initial value\'s weight removed) or precise (recomputed with the '
                        'final weights over --bn_eval_batches training batches); see '
                        'bnjax.bn_eval.', BN_EVAL)
  bn_eval_batches: int = _field(100, 'Training batches of --bn_eval=precise (at most one '
                                'epoch: the training set once).')
  schedule: str = _field('constant', 'Learning-rate schedule after the warmup: constant, '
                         'cosine (to 0 at the last step) or step (x0.1 at 50% and 75% of '
                         'the steps); decoupled decay lr*lambda follows it.', SCHEDULES)
  warmup_steps: int = _field(0, 'Steps of linear warmup from 0 to --learning_rate.')

  # Fields that change neither the trained parameters nor any logged number
  # (checkpoint spacing, evaluation batching): a workdir accepts them changed.
  NON_RESULT_FIELDS = ('checkpoint_every', 'eval_batch_size', 'tensorboard')

  def __post_init__(self):
    if self.optimizer == 'momentum':
      object.__setattr__(self, 'optimizer', 'sgd')

  def train_examples(self) -> int:
    """Training examples of the run (``num_train``, or the dataset capped by
    ``train_subset``)."""
    if self.dataset in ('teacher_student', USER_DATASET):
      return self.num_train
    full = TRAIN_SIZES.get(self.dataset, 0)
    return min(self.train_subset, full) if self.train_subset else full

  def steps_per_epoch(self) -> int:
    """Full batches per pass over the training examples."""
    return max(self.train_examples() // max(self.batch_size, 1), 1)

  def total_steps(self) -> int:
    """Optimizer steps of the whole run: ``num_steps``, or full batches per epoch x
    epochs."""
    return self.num_steps or self.steps_per_epoch() * self.num_epochs

  def validate(self, device_count: int = 1) -> 'Config':
    """Raises ValueError (TypeError for a wrong type) whose message starts with
    the offending ``--flag``."""
    def need(ok, flag, message):
      if not ok:
        raise ValueError(f'--{flag}: {message}')

    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      kind = {'int': int, 'float': float, 'bool': bool, 'str': str}[
          field.type if isinstance(field.type, str) else field.type.__name__]
      if kind is bool:
        ok = isinstance(value, (bool, np.bool_))
      elif kind is int:
        ok = isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
            value, (bool, np.bool_))
      elif kind is float:
        ok = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
            value, (bool, np.bool_))
      else:
        ok = isinstance(value, str)
      if not ok:
        raise TypeError(f'--{field.name}: must be {kind.__name__}, got {value!r} '
                        f'({type(value).__name__})')
      if kind is float:
        need(math.isfinite(value), field.name, f'must be finite, got {value}')

    need(self.dataset in DATASETS + (USER_DATASET,), 'dataset', f'must be one of '
         f'{DATASETS}, got {self.dataset!r}')
    need(self.model in MODELS + (USER_MODEL,), 'model', f'must be one of {MODELS}, '
         f'got {self.model!r}')
    need((self.dataset == USER_DATASET) == (self.model == USER_MODEL), 'model',
         f'{USER_DATASET!r} data and a {USER_MODEL!r} model go together (bnjax.train.fit '
         f'sets both)')
    need(self.norm in NORMS, 'norm', f'must be one of {NORMS}, '
         f'got {self.norm!r}')
    need(self.optimizer in OPTIMIZERS, 'optimizer', f'must be one of {OPTIMIZERS}, '
         f'got {self.optimizer!r}')
    need(self.regularizer in REGULARIZERS, 'regularizer',
         f'must be one of {REGULARIZERS}, got {self.regularizer!r}')
    need(self.parallel in PARALLEL, 'parallel', f'must be one of {PARALLEL}, '
         f'got {self.parallel!r}')
    need(self.learning_rate > 0, 'learning_rate', f'must be > 0, got {self.learning_rate}')
    need(0 <= self.momentum < 1, 'momentum', f'must be in [0, 1), got {self.momentum}')
    need(self.weight_decay >= 0, 'weight_decay', f'must be >= 0, got {self.weight_decay}')
    need(self.head_weight_decay >= 0 or self.head_weight_decay == -1, 'head_weight_decay',
         f'must be >= 0, or -1 (the --weight_decay), got {self.head_weight_decay}')
    need(self.head_weight_decay == -1 or (self.regularizer in ('l2', 'decoupled')
                                          and self.optimizer in ('sgd', 'adam')),
         'head_weight_decay', f'applies to --regularizer=l2 or decoupled of sgd or adam; '
         f'set it to -1 for --optimizer={self.optimizer} --regularizer={self.regularizer}')
    need(self.rest_learning_rate > 0 or self.rest_learning_rate == -1, 'rest_learning_rate',
         f'must be > 0, or -1 (the --learning_rate), got {self.rest_learning_rate}')
    need(self.init_scale > 0, 'init_scale', f'must be > 0, got {self.init_scale}')
    for flag, default in (('rest_learning_rate', -1.0), ('init_scale', 1.0)):
      need(getattr(self, flag) == default or self.norm in PER_UNIT_INVARIANT, flag,
           f'acts on the scale-invariant kernels apart from the rest, and --norm='
           f'{self.norm} makes none invariant per unit (use one of {PER_UNIT_INVARIANT})')
    need(self.norm_epsilon >= 0 or self.norm_epsilon == -1, 'norm_epsilon',
         f'must be >= 0, or -1 (the layer\'s default), got {self.norm_epsilon}')
    need(self.norm_epsilon == -1 or self.norm not in ('none', 'weight'), 'norm_epsilon',
         f'--norm={self.norm} adds no epsilon to a variance; set it to -1')
    need(self.adam_eps >= 0, 'adam_eps', f'must be >= 0, got {self.adam_eps}')
    need(self.adam_eps == Config.adam_eps or self.optimizer in ('adam', 'adamp'),
         'adam_eps', f'applies to --optimizer=adam or adamp, got {self.optimizer}')
    need(self.gamma_decay >= 0, 'gamma_decay', f'must be >= 0, got {self.gamma_decay}')
    need(self.gamma_decay == 0 or self.norm != 'none', 'gamma_decay',
         'acts on the normalization gains, and --norm=none has none; set it to 0')
    for flag in ('batch_size', 'num_epochs', 'log_every', 'checkpoint_every',
                 'eval_batch_size', 'virtual_batch_size', 'input_dim', 'num_train',
                 'num_test', 'width', 'bn_eval_batches'):
      value = getattr(self, flag)
      need(value > 0, flag, f'must be a positive int, got {value!r}')
    need(self.num_steps >= 0, 'num_steps', f'must be >= 0 (0: --num_epochs), got '
         f'{self.num_steps}')
    need(not self.num_steps or self.num_epochs == Config.num_epochs, 'num_steps',
         f'gives the run\'s length instead of --num_epochs; give one of them, got '
         f'--num_steps={self.num_steps} and --num_epochs={self.num_epochs}')
    need(self.train_subset >= 0, 'train_subset', f'must be >= 0 (0: all), got '
         f'{self.train_subset}')
    need(self.seed >= 0, 'seed', f'must be >= 0, got {self.seed}')
    need(self.noise_std >= 0, 'noise_std', f'must be >= 0, got {self.noise_std}')
    if self.dataset in ('teacher_student', USER_DATASET):
      examples, flag = self.num_train, 'num_train'
    else:
      examples, flag = self.train_subset, 'train_subset'
    need(not examples or self.batch_size <= examples, 'batch_size',
         f'{self.batch_size} exceeds the {examples} training examples of --{flag}')
    need(self.eval_every >= 0, 'eval_every', f'must be >= 0 (0: only at the end), got '
         f'{self.eval_every}')
    for flag in ('checkpoint_every', 'eval_every'):
      value = getattr(self, flag)
      need(value % self.log_every == 0, flag,
           f'must be a multiple of --log_every={self.log_every} (so a resumed run logs '
           f'the same windows), got {value}')
    need(self.width == Config.width or self.model == 'convnet', 'width',
         f'sets the ConvNet\'s widths; --model={self.model} has fixed widths')
    need(self.regularizer in ('l2', 'decoupled', 'rotational') or self.weight_decay == 0,
         'weight_decay', f'has no effect with --regularizer={self.regularizer}; set it to 0')
    need(self.optimizer not in ('adamp', 'sgdp') or self.regularizer in ('none', 'decoupled'),
         'regularizer', f'--optimizer={self.optimizer} decays with its own decoupled decay '
         f'(scaled by wd_ratio where it projects); use none or decoupled, got '
         f'{self.regularizer}')
    need(self.optimizer not in ('adamp', 'sgdp') or not self.projection, 'projection',
         f'--optimizer={self.optimizer} already removes the radial part of the step')
    if self.regularizer == 'rotational':
      need(self.optimizer in ('sgd', 'adam'), 'optimizer',
           f'--regularizer=rotational wraps sgd or adam (as AdamW), got {self.optimizer}')
      need(self.weight_decay > 0, 'weight_decay', '--regularizer=rotational needs '
           'lambda > 0: it sets the equilibrium angle')
      need(not self.projection, 'projection', '--regularizer=rotational keeps every '
           'unit\'s norm fixed already')
    for flag, on in (('regularizer', self.regularizer in ('projection', 'rotational')),
                     ('projection', self.projection)):
      need(not on or self.norm in PER_UNIT_INVARIANT, flag,
           f'projection needs weights that are scale-invariant per unit; '
           f'--norm={self.norm} makes none (use one of {PER_UNIT_INVARIANT})')
    need((self.dataset == 'teacher_student') == (self.model == 'perceptron'), 'model',
         'the perceptron trains on --dataset=teacher_student, and teacher_student '
         'needs --model=perceptron')
    need(not (self.model == 'perceptron' and self.norm in ('layer', 'group')), 'norm',
         f'{self.norm} norm over the perceptron\'s single unit is constant')
    need(self.schedule in SCHEDULES, 'schedule', f'must be one of {SCHEDULES}, got '
         f'{self.schedule!r}')
    need(self.warmup_steps >= 0, 'warmup_steps', f'must be >= 0, got {self.warmup_steps}')
    need(self.warmup_steps < self.total_steps(), 'warmup_steps',
         f'{self.warmup_steps} must be below the run\'s {self.total_steps()} steps')
    need(self.bn_eval in BN_EVAL, 'bn_eval', f'must be one of {BN_EVAL}, got '
         f'{self.bn_eval!r}')
    need(self.bn_eval == 'running' or self.norm in RUNNING_STATS_NORMS, 'bn_eval',
         f'--norm={self.norm} keeps no running statistics; use --bn_eval=running')
    need(self.bn_eval != 'precise' or self.norm != 'population', 'bn_eval',
         'precise statistics are read off a training-mode forward, and population '
         'norm normalizes with its running statistics there; use debiased or running')
    need(self.activation in ('linear', 'relu'), 'activation',
         f"must be 'linear' or 'relu', got {self.activation!r}")
    need(not self.augment or self.dataset == 'cifar10', 'augment',
         'crop-and-flip augmentation is for --dataset=cifar10')
    if self.parallel != 'none':
      need(self.batch_size % device_count == 0, 'batch_size',
           f'{self.batch_size} is not divisible by the {device_count} devices of '
           f'--parallel={self.parallel}')
    if self.norm == 'ghost':
      per_device = self.batch_size // (device_count if self.parallel == 'pmap' else 1)
      need(per_device % self.virtual_batch_size == 0, 'virtual_batch_size',
           f'{self.virtual_batch_size} must divide the per-device batch {per_device}')
    return self


def record(config: 'Config') -> dict:
  """What a workdir stores and compares: every field, and ``config_version``.

  Args:
    config: a :class:`Config`.

  Returns:
    A JSON-serializable dict.

  Example:
    >>> from bnjax.train import config
    >>> config.record(config.Config())['config_version']
    6
  """
  return dict(dataclasses.asdict(config), config_version=CONFIG_VERSION)


def upgrade_record(stored):
  """A stored record in the current format: formats 2 to 5 get the fields they meant.

  Args:
    stored: a record read from a workdir (any other value is returned as is).

  Returns:
    The record, older formats with their :data:`MEANT` fields added and
    ``config_version`` raised.

  Example:
    >>> from bnjax.train import config
    >>> config.upgrade_record({'seed': 0, 'config_version': 2})['bn_eval']
    'running'
  """
  if isinstance(stored, dict) and stored.get('config_version') in MEANT:
    return {**MEANT[stored['config_version']], **stored, 'config_version': CONFIG_VERSION}
  return stored


# The fields by topic, in the order ``bnjax-train --help`` lists them.
TOPICS = {
    'data': ('dataset', 'train_subset', 'augment', 'input_dim', 'num_train', 'num_test',
             'noise_std', 'seed'),
    'model': ('model', 'norm', 'norm_epsilon', 'width', 'activation', 'virtual_batch_size'),
    'optimizer': ('optimizer', 'learning_rate', 'momentum', 'regularizer', 'weight_decay',
                  'head_weight_decay', 'rest_learning_rate', 'init_scale', 'projection',
                  'gamma_decay', 'adam_eps'),
    'schedule': ('batch_size', 'num_epochs', 'num_steps', 'schedule', 'warmup_steps'),
    'evaluation': ('eval_every', 'eval_batch_size', 'bn_eval', 'bn_eval_batches'),
    'logging': ('log_every', 'checkpoint_every', 'tensorboard'),
    'parallel': ('parallel',),
}


def define_flags(flag_values=None) -> None:
  """Defines one absl flag per :class:`Config` field (type, default, help, choices).

  Args:
    flag_values: an ``absl.flags.FlagValues`` (default: ``absl.flags.FLAGS``).

  Returns:
    None.

  Example:
    >>> from absl import flags
    >>> from bnjax.train import config
    >>> fv = flags.FlagValues()
    >>> config.define_flags(fv)
    >>> _ = fv(['prog', '--optimizer=adam', '--learning_rate=0.001'])
    >>> config.from_flags(fv).optimizer
    'adam'

  References:
    absl-py flags, https://abseil.io/docs/python/guides/flags.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  for f in dataclasses.fields(Config):
    kw = dict(name=f.name, default=f.default, help=f.metadata['help'],
              flag_values=flag_values)
    if f.metadata['choices']:
      flags.DEFINE_enum(enum_values=list(f.metadata['choices']), **kw)
    elif f.type is bool:
      flags.DEFINE_boolean(**kw)
    elif f.type is int:
      flags.DEFINE_integer(**kw)
    elif f.type is float:
      flags.DEFINE_float(**kw)
    else:
      flags.DEFINE_string(**kw)


def from_flags(flag_values=None) -> Config:
  """The :class:`Config` of the parsed flags.

  Args:
    flag_values: parsed ``absl.flags.FlagValues`` holding :func:`define_flags`'s
      flags (default: ``absl.flags.FLAGS``).

  Returns:
    A :class:`Config` (not yet validated).

  Example:
    >>> from absl import flags
    >>> from bnjax.train import config
    >>> fv = flags.FlagValues()
    >>> config.define_flags(fv)
    >>> _ = fv(['prog', '--batch_size=64'])
    >>> config.from_flags(fv).batch_size
    64

  References:
    absl-py flags, https://abseil.io/docs/python/guides/flags.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  if (flag_values['num_steps'].present and flag_values['num_steps'].value > 0
      and flag_values['num_epochs'].present):
    raise ValueError(f'--num_steps: gives the run\'s length instead of --num_epochs; give '
                     f'one of them, got --num_steps={flag_values["num_steps"].value} and '
                     f'--num_epochs={flag_values["num_epochs"].value}')
  return Config(**{f.name: flag_values[f.name].value for f in dataclasses.fields(Config)})
