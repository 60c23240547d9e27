"""``python -m experiments.bn_regularization``: the study :mod:`bnjax.train.studies.bn_regularization`."""
from bnjax.train.studies import study

if __name__ == '__main__':
  study.run_study('bn_regularization')
