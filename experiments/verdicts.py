"""``python -m experiments.verdicts DIR...``: the verdict table of reports' verdicts.json."""
from bnjax.train.studies.verdicts import run

if __name__ == '__main__':
  run()
