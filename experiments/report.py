"""``python -m experiments.report --workdir=DIR``: a study folder's report.md and plots."""
from bnjax.train.binaries.report import run

if __name__ == '__main__':
  run()
