"""bnjax: normalization and weight decay in JAX.

Modules: ``norms`` (pure-functional normalizers), ``layers`` (flax.linen
wrappers), ``transforms`` (optax transforms for scale-invariant weights),
``dynamics`` (per-unit norms, angular updates, tracking), ``theory``
(closed-form effective learning rates and equilibria), ``masks`` (which
parameters are scale-invariant); on first use: ``nnx`` (flax.nnx modules),
``models``, ``bn_eval``, ``folding``, ``graph`` (which layer feeds which
normalizer), ``implicit``. See README.md.
"""

import importlib

from bnjax import dynamics, layers, masks, norms, theory, transforms

# Imported on first use (``bnjax.nnx`` after ``import bnjax``), not with the package.
_LAZY = ('bn_eval', 'folding', 'graph', 'implicit', 'models', 'nnx')

__all__ = ['dynamics', 'layers', 'masks', 'norms', 'theory', 'transforms', *_LAZY]
__version__ = '0.1.0'


def __getattr__(name):
  if name in _LAZY:
    return importlib.import_module(f'bnjax.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
