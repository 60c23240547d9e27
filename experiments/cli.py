"""``bnjax-study <study> [--flags]``: one subcommand per registered study.

  bnjax-study effective_lr --preset=quick --workdir=runs/effective_lr

is ``python -m experiments.effective_lr --preset=quick ...``.
"""

import sys

from experiments import study


def run(argv=None) -> None:
  argv = sys.argv if argv is None else argv
  if len(argv) < 2 or argv[1] not in study.STUDIES:
    names = ' | '.join(sorted(study.STUDIES))
    print(f'usage: bnjax-study {{{names}}} [--preset=smoke|quick|paper] [--workdir=DIR] '
          f'[--helpfull]', file=sys.stderr)
    sys.exit(2)
  study.run_study(argv[1], argv=[f'bnjax-study {argv[1]}'] + argv[2:])


if __name__ == '__main__':
  run()
