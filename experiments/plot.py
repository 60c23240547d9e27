"""``python -m experiments.plot WORKDIR [WORKDIR ...]``: ``bnjax-plot`` (:mod:`bnjax.train.binaries.plot`)."""
from bnjax.train.binaries.plot import run

if __name__ == '__main__':
  run()
