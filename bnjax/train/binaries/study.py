"""``bnjax-study <study> [--flags]``: one subcommand per registered study.

  bnjax-study effective_lr --preset=quick --workdir=runs/effective_lr

is ``python -m experiments.effective_lr --preset=quick ...`` from a checkout.
``bnjax-study --help`` lists the studies and presets; ``bnjax-study STUDY
--help`` a study's flags.
"""

import sys

from bnjax.train.studies import study

PRESET_HELP = {
    'smoke': 'about a minute (the tests use it)',
    'quick': 'a few minutes, one seed: a first look on a CPU',
    'standard': '3+ seeds per cell, sized to decide the verdicts on a 2-core CPU',
    'paper': "the source papers' full settings, for a GPU/TPU",
}


def usage() -> str:
  """The text of ``bnjax-study --help``: the studies with their first docstring
  line, and the presets."""
  width = max(map(len, study.STUDIES))
  lines = [f'usage: bnjax-study STUDY [--preset={"|".join(study.PRESETS)}] [--workdir=DIR] '
           f'[--helpfull]', '', 'studies:']
  for name in study.STUDIES:
    doc = (study.study_module(name).__doc__ or '').strip().splitlines()
    lines.append(f'  {name:<{width}}  {doc[0] if doc else ""}')
  lines += ['', 'presets:']
  lines += [f'  {p:<8}  {PRESET_HELP[p]}' for p in study.PRESETS]
  lines += ['', "bnjax-study STUDY --help lists the study's flags."]
  return '\n'.join(lines)


def run(argv=None) -> None:
  """The ``bnjax-study`` console script."""
  argv = sys.argv if argv is None else argv
  if len(argv) >= 2 and argv[1] in ('-h', '--help', 'help', '--helpshort'):
    print(usage())
    sys.exit(0)
  if len(argv) < 2:
    print(usage(), file=sys.stderr)
    sys.exit(2)
  if argv[1] not in study.STUDIES:
    print(f'error: unknown study {argv[1]!r}; the studies are {", ".join(study.STUDIES)} '
          f'(bnjax-study --help)', file=sys.stderr)
    sys.exit(2)
  study.run_study(argv[1], argv=[f'bnjax-study {argv[1]}'] + argv[2:])


if __name__ == '__main__':
  run()
