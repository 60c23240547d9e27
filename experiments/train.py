r"""Trains one configuration into --workdir (resumable; a finished workdir is left as is).

Example:

  python -m experiments.train --dataset=fashion_mnist --model=convnet \
      --norm=batch --optimizer=momentum --regularizer=l2 --weight_decay=5e-4 \
      --learning_rate=0.05 --batch_size=128 --num_epochs=1 --workdir=runs/demo

Writes metrics.jsonl, checkpoints/, summary.json (see bnjax.train).
"""

import os
import sys

import jax
from absl import app, flags

from bnjax import data, models, train, transforms
from bnjax import workdir as workdirs
from experiments import study

_D = train.Config()

flags.DEFINE_enum('dataset', _D.dataset, data.DATASETS, 'Dataset.')
flags.DEFINE_enum('model', _D.model, models.MODELS,
                  'Model: convnet (4-layer), resnet20 (CIFAR) or perceptron '
                  '(teacher_student only).')
flags.DEFINE_enum('norm', _D.norm, models.NORMS,
                  'Normalization after each kernel layer (mean_only and variance_only '
                  'add weight norm, as in Luo et al. 2019).')
flags.DEFINE_enum('optimizer', _D.optimizer, train.OPTIMIZERS,
                  'sgd, momentum (SGD with --momentum) or adam.')
flags.DEFINE_float('learning_rate', _D.learning_rate, 'Learning rate (> 0).')
flags.DEFINE_float('momentum', _D.momentum, 'Momentum of --optimizer=momentum, in [0, 1).')
flags.DEFINE_float('weight_decay', _D.weight_decay,
                   'lambda of --regularizer=l2 (gradient lambda*w) or decoupled '
                   '(lr*lambda*w per step); must be 0 for none and projection.')
flags.DEFINE_enum('regularizer', _D.regularizer, transforms.REGULARIZERS,
                  'none, l2 (coupled, before the optimizer), decoupled (after it) or '
                  'projection (scale-invariant kernels kept at unit norm per unit).')
flags.DEFINE_boolean('projection', _D.projection,
                     'Also project the scale-invariant kernels to unit norm per unit '
                     'after the optimizer and --regularizer (van Laarhoven\'s proposal).')
flags.DEFINE_float('gamma_decay', _D.gamma_decay,
                   'zeta of an explicit penalty zeta*gamma^2 on every normalization gain '
                   '(Luo et al. 2019: BN ~ population norm + gamma decay 1/(2M) or 1/(4M)).')
flags.DEFINE_integer('batch_size', _D.batch_size, 'Global batch size.')
flags.DEFINE_integer('num_epochs', _D.num_epochs, 'Epochs over the training set.')
flags.DEFINE_integer('train_subset', _D.train_subset,
                     'Use the first N training examples (0: all).')
flags.DEFINE_integer('seed', _D.seed, 'Seed of init, data order and augmentation.')
flags.DEFINE_enum('parallel', _D.parallel, train.PARALLEL,
                  'none (jit, one device), pmap (local devices) or sharded (jit over a '
                  'device mesh).')
flags.DEFINE_integer('virtual_batch_size', _D.virtual_batch_size,
                     'Virtual batch of --norm=ghost (per device under pmap).')
flags.DEFINE_boolean('augment', _D.augment, 'Random crop and flip (cifar10).')
flags.DEFINE_enum('activation', _D.activation, ['linear', 'relu'],
                  'Perceptron and teacher activation (teacher_student).')
flags.DEFINE_integer('width', _D.width,
                     'ConvNet widths: --width, 2x and 4x (convnet only).')
flags.DEFINE_integer('input_dim', _D.input_dim, 'Input dimension N (teacher_student).')
flags.DEFINE_integer('num_train', _D.num_train, 'Training examples P (teacher_student).')
flags.DEFINE_integer('num_test', _D.num_test, 'Test examples (teacher_student).')
flags.DEFINE_float('noise_std', _D.noise_std, 'Label noise std (teacher_student).')
flags.DEFINE_integer('log_every', _D.log_every, 'Steps between metrics.jsonl lines.')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every,
                     'Steps between checkpoints (a multiple of --log_every).')
flags.DEFINE_integer('eval_every', _D.eval_every,
                     'Steps between test evaluations logged in metrics.jsonl (0: only '
                     'at the end; a multiple of --log_every).')
flags.DEFINE_integer('eval_batch_size', _D.eval_batch_size, 'Batch size of evaluation.')
flags.DEFINE_string('workdir', None, 'Output folder (created; resumed if it exists).')
flags.DEFINE_string('data_dir', None,
                    'Where tfds datasets are prepared (default $BNJAX_DATA_DIR or '
                    '~/bnjax_data).')
flags.DEFINE_string('fashion_mnist_dir', None,
                    'Folder with the four official Fashion-MNIST IDX files (default '
                    '$BNJAX_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist, '
                    'else download).')
flags.DEFINE_boolean('multihost', False,
                     'Call jax.distributed.initialize() first (multi-host runs; see '
                     'BUILD.md).')
flags.DEFINE_boolean('progress', True, 'Show a tqdm progress bar.')
flags.mark_flag_as_required('workdir')

FLAGS = flags.FLAGS


def config_from_flags() -> train.Config:
  fields = train.Config.__dataclass_fields__
  return train.Config(**{name: FLAGS[name].value for name in fields})


def _fail(message: str, code: int = 1):
  """One line on stderr and exit ``code`` (no traceback: the message says it all)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  study.quiet_logging()
  config = config_from_flags()
  if FLAGS.multihost and config.parallel != 'sharded':
    raise app.UsageError(f'--multihost: runs one program over every host\'s devices, '
                         f'which needs --parallel=sharded (got --parallel={config.parallel}: '
                         f'each host would train alone and write the same files)')
  try:
    config.validate(1)  # the device-independent checks, before the backend starts
  except (ValueError, TypeError) as e:
    raise app.UsageError(str(e))
  if FLAGS.fashion_mnist_dir is not None:
    try:
      data.check_fashion_mnist_dir(FLAGS.fashion_mnist_dir)
    except (OSError, ValueError) as e:
      raise app.UsageError(f'--fashion_mnist_dir: {e}')
    os.environ['BNJAX_FASHION_MNIST_DIR'] = FLAGS.fashion_mnist_dir
  if FLAGS.multihost:  # before anything starts the backend (device_count below)
    jax.distributed.initialize()
  try:
    config.validate(jax.device_count())
  except (ValueError, TypeError) as e:
    raise app.UsageError(str(e))
  try:
    summary = train.train(config, FLAGS.workdir, data_dir=FLAGS.data_dir,
                          progress=FLAGS.progress)
  except train.NonFiniteLossError as e:
    _fail(f'the run diverged: {e} ({FLAGS.workdir}/summary.json records it)')
  except (workdirs.ConfigMismatchError, workdirs.WorkdirLockedError) as e:
    _fail(str(e), code=2)
  except ValueError as e:
    if str(e).startswith('--'):  # a bad flag found once the data is known
      raise app.UsageError(str(e))
    raise
  except Exception as e:  # pylint: disable=broad-except
    if workdirs.is_disk_full(e):
      _fail(f'no space left on the device while writing {FLAGS.workdir} ({e}). Free some '
            f'space and rerun the same command: the run resumes from its last checkpoint.')
    raise
  print(workdirs.dumps({k: v for k, v in summary.items() if k not in ('config', 'fan_in')},
                       sort_keys=True))


if __name__ == '__main__':
  app.run(main)
