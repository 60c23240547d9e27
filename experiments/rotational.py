"""``python -m experiments.rotational``: the study :mod:`bnjax.train.studies.rotational`."""
from bnjax.train.studies import study

if __name__ == '__main__':
  study.run_study('rotational')
