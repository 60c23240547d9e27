"""``python -m experiments.effective_lr``: the study :mod:`bnjax.train.studies.effective_lr`."""
from bnjax.train.studies import study

if __name__ == '__main__':
  study.run_study('effective_lr')
