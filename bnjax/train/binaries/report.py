"""Regenerates a study's report.md and plots from its workdir.

  python -m experiments.report --workdir=runs/effective_lr
"""

import pathlib

from absl import app, flags

from bnjax.train import workdir as workdirs
from bnjax.train.studies import study


def report(workdir) -> pathlib.Path:
  """Writes the report of the study folder ``workdir``; returns the report's path.

  Raises ``absl.app.UsageError`` naming ``--workdir`` when it is not a study folder.
  """
  meta_path = pathlib.Path(workdir) / 'study.json'
  if not meta_path.exists():
    raise app.UsageError(f'--workdir: {workdir} has no study.json (not a study folder)')
  try:
    name = study.study_meta(workdir)['study']
  except ValueError as e:
    raise app.UsageError(f'--workdir: {e}')
  if name not in study.STUDIES:
    raise app.UsageError(f'--workdir: unknown study {name!r}')
  return study.study_module(name).report(workdir)


def run():
  """``python -m experiments.report --workdir=DIR``; the flag is defined here, not on
  import, so that this module imports beside the other binaries."""
  flags.DEFINE_string('workdir', None, 'A study folder (it holds study.json).')
  flags.mark_flag_as_required('workdir')

  def main(argv):
    del argv
    try:
      print(report(flags.FLAGS.workdir))
    except workdirs.DamagedFileError as e:
      study.fail(str(e))

  app.run(main)


if __name__ == '__main__':
  run()
