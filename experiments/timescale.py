"""``python -m experiments.timescale``: the study :mod:`bnjax.train.studies.timescale`."""
from bnjax.train.studies import study

if __name__ == '__main__':
  study.run_study('timescale')
