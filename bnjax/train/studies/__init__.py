"""The studies: sweeps of :class:`bnjax.train.config.Config` runs that test
the source papers' claims and report verdicts (``verdicts.json``) with plots.

:mod:`.study` holds what they share (presets, sweeps, shards, loading runs,
report helpers), :mod:`.verdicts` the statistics of a verdict; one module per
study: :mod:`.effective_lr`, :mod:`.equilibrium` (van Laarhoven 2017),
:mod:`.bn_regularization`, :mod:`.teacher_student` (Luo et al. 2019) and
:mod:`.rotational` (Kosson et al. 2024).
"""
