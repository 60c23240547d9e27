"""``python -m experiments.train``: ``bnjax-train`` (:mod:`bnjax.train.binaries.train`)."""
from bnjax.train.binaries.train import run

if __name__ == '__main__':
  run()
