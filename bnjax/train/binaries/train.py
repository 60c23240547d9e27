r"""Trains one configuration into --workdir (resumable; a finished workdir is left as is).

Example:

  python -m experiments.train --dataset=fashion_mnist --model=convnet \
      --norm=batch --optimizer=sgd --momentum=0.9 --regularizer=l2 --weight_decay=5e-4 \
      --learning_rate=0.05 --batch_size=128 --num_epochs=1 --workdir=runs/demo

Writes metrics.jsonl, checkpoints/, summary.json (see bnjax.train.trainer). Every field of
bnjax.train.config.Config is a flag.
"""

import os
import sys

import jax
from absl import app, flags

from bnjax.train import config as config_lib
from bnjax.train import data, loop, stopping, trainer
from bnjax.train import workdir as workdirs
from bnjax.train.studies import study

config_lib.define_flags()
flags.adopt_module_key_flags(config_lib)  # --help lists the config flags too
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
flags.register_validator('workdir', lambda v: v is None or bool(v.strip()),
                         message='--workdir is empty: name the folder the run writes into.')

FLAGS = flags.FLAGS
# The binary's own flags beside the Config's (config_lib.TOPICS).
RUN_FLAGS = ('workdir', 'data_dir', 'fashion_mnist_dir', 'multihost', 'progress')
HELP_ARGS = ('-h', '--help', '-?', '--helpshort')


def usage() -> str:
  """The text of ``bnjax-train --help``: bnjax's flags grouped by topic, each with its
  default and help (``--helpfull`` adds absl's and JAX's own flags)."""
  lines = ['usage: bnjax-train --workdir=DIR [--flag=value ...]', '',
           (__doc__ or '').strip().splitlines()[0]]
  for topic, names in list(config_lib.TOPICS.items()) + [('run', RUN_FLAGS)]:
    lines += ['', f'{topic}:']
    for name in names:
      flag = FLAGS[name]
      default = '' if flag.default is None else f' (default: {flag.default_as_str})'
      lines.append(f'  --{name}: {flag.help}{default}')
  lines += ['', 'bnjax-train --helpfull lists every flag, absl\'s and JAX\'s included.']
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  study.quiet_logging()
  try:
    config = config_lib.from_flags()
  except ValueError as e:
    raise app.UsageError(str(e))
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
    with stopping.stop_on_signals():
      done = loop.answered(workdirs.folder(FLAGS.workdir, '--workdir'),
                           config_lib.record(config))
      saved = workdirs.checkpoint_steps(FLAGS.workdir)
      if done is not None:
        print(f'{FLAGS.workdir}: already finished at step {done["steps"]}', file=sys.stderr)
      elif saved:
        print(f'{FLAGS.workdir}: resuming from step {saved[-1]}', file=sys.stderr, flush=True)
      summary = done or trainer.train(config, FLAGS.workdir, data_dir=FLAGS.data_dir,
                                      progress=FLAGS.progress)
  except stopping.Stopped as e:
    print(stopping.where_runs_stand([FLAGS.workdir], e), file=sys.stderr)
    sys.exit(e.exit_code)
  except trainer.NonFiniteLossError as e:
    study.fail(f'the run diverged: {e} ({FLAGS.workdir}/summary.json records it)')
  except (workdirs.ConfigMismatchError, workdirs.WorkdirLockedError) as e:
    study.fail(str(e), code=2)
  except (workdirs.DamagedFileError, data.DataUnavailableError) as e:
    study.fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    if workdirs.is_disk_full(e):
      study.fail(workdirs.disk_full_message(FLAGS.workdir, e))
    if isinstance(e, ValueError) and str(e).startswith('--'):  # a bad flag found once
      raise app.UsageError(str(e))                              # the data is known
    raise
  print(workdirs.dumps({k: v for k, v in summary.items() if k not in ('config', 'fan_in')},
                       sort_keys=True))


def run(argv=None):
  """The ``bnjax-train`` console script."""
  argv = sys.argv if argv is None else argv
  if any(a in HELP_ARGS for a in argv[1:]):
    print(usage())
    sys.exit(0)
  app.run(main, argv=argv)


if __name__ == '__main__':
  run()
