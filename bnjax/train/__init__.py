"""bnjax.train: the training framework (the ``experiments`` extra).

A run's :class:`~bnjax.train.config.Config` (every field a flag of
``bnjax-train``), the data it trains on (:mod:`~bnjax.train.data`), its
folder (:mod:`~bnjax.train.workdir`, :mod:`~bnjax.train.run_files`), the
compiled programs (:mod:`~bnjax.train.programs`,
:mod:`~bnjax.train.executors`, :mod:`~bnjax.train.step_metrics`), the loop of
one run (:mod:`~bnjax.train.trainer`) and of a vmapped group
(:mod:`~bnjax.train.vectorized`), many runs (:mod:`~bnjax.train.sweep`), the
studies (:mod:`bnjax.train.studies`) and the console scripts
(:mod:`bnjax.train.binaries`).

Needs ``pip install 'bnjax[experiments]'``; importing it without the extra
fails at once, naming what is missing. The library (``bnjax.norms``,
``bnjax.transforms``, ...) never imports this package.

The names most used are importable from here: ``Config``, ``train`` (one
run), ``fit`` (one run of your own flax model and arrays) and ``train_many``
(a sweep).
"""

import importlib
import importlib.util

# The experiments extra's modules (setup.cfg), by import name.
EXTRA_MODULES = ('tensorflow_datasets', 'array_record', 'orbax.checkpoint', 'absl', 'tqdm',
                 'matplotlib', 'tensorboardX')


def _missing(names):
  out = []
  for name in names:
    try:
      found = importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
      found = False
    if not found:
      out.append(name)
  return out


_absent = _missing(EXTRA_MODULES)
if _absent:
  raise ImportError(f"bnjax.train needs the experiments extra: pip install 'bnjax[experiments]' "
                    f"(missing: {', '.join(_absent)}).")

_LAZY = {'Config': ('bnjax.train.config', 'Config'),
         'fit': ('bnjax.train.fitting', 'fit'),
         'train': ('bnjax.train.trainer', 'train'),
         'train_many': ('bnjax.train.sweep', 'train_many')}

__all__ = sorted(_LAZY)


def __getattr__(name):  # the framework's modules import tensorflow-datasets: only on use
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
