"""Regenerates a study's report.md and plots from its workdir.

  python -m experiments.report --workdir=runs/effective_lr
"""

import pathlib

from absl import app, flags

from experiments import study

flags.DEFINE_string('workdir', None, 'A study folder (it holds study.json).')
flags.mark_flag_as_required('workdir')
FLAGS = flags.FLAGS

def report(workdir) -> pathlib.Path:
  meta_path = pathlib.Path(workdir) / 'study.json'
  if not meta_path.exists():
    raise app.UsageError(f'--workdir: {workdir} has no study.json (not a study folder)')
  name = study.study_meta(workdir)['study']
  if name not in study.STUDIES:
    raise app.UsageError(f'--workdir: unknown study {name!r}')
  return study.study_module(name).report(workdir)


def main(argv):
  del argv
  print(report(FLAGS.workdir))


if __name__ == '__main__':
  app.run(main)
