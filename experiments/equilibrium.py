"""``python -m experiments.equilibrium``: the study :mod:`bnjax.train.studies.equilibrium`."""
from bnjax.train.studies import study

if __name__ == '__main__':
  study.run_study('equilibrium')
