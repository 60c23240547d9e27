"""bnjax: normalization and weight decay in JAX.

Modules: ``norms`` (pure-functional normalizers) and ``layers`` (flax.linen
wrappers). See README.md.
"""

from bnjax import layers, norms

__all__ = ['layers', 'norms']
__version__ = '0.1.0'
