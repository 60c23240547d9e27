"""The absl binaries, run from a checkout as ``python -m experiments.<name>``.

Their code lives in :mod:`bnjax.train.binaries` and :mod:`bnjax.train.studies`
(installed with bnjax, so ``bnjax-train`` and ``bnjax-study`` work from a
wheel); this folder is not installed.
"""
