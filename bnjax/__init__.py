"""bnjax: normalization and weight decay in JAX.

Modules: ``norms`` (pure-functional normalizers), ``layers`` (flax.linen
wrappers), ``transforms`` (optax transforms for scale-invariant weights),
``dynamics`` (per-unit norms, angular updates, tracking), ``theory``
(closed-form effective learning rates and equilibria), ``masks`` (which
parameters are scale-invariant). See README.md.
"""

from bnjax import dynamics, layers, masks, norms, theory, transforms

__all__ = ['dynamics', 'layers', 'masks', 'norms', 'theory', 'transforms']
__version__ = '0.1.0'
