"""Folding inference batch norms into the Dense/Conv layers that feed them.

A trained Dense/Conv followed by an inference batch norm is one affine map:
with ``k = gamma / sqrt(var + eps)``, ``BN(x W + b) = x (W k) + (b - mu) k +
beta`` (the standard inference-time folding, e.g. Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", section 3.2). :func:`fold_batch_norms`
finds the pairs in a flax.linen model by an abstract trace and folds them
with :func:`bnjax.norms.fold_batch_norm`, refusing any pair whose folding
would change the model's outputs.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax import graph, norms


def find_batch_norm_pairs(module: nn.Module, variables, *args, **kwargs):
  r"""Finds every Dense/Conv whose output goes straight into a batch norm.

  .. math::
    h = x W + b, \quad y = \mathrm{BN}(h) \ \Rightarrow\ (W, \mathrm{BN}) \text{ is a pair}

  Traces ``module.apply(variables, *args, **kwargs)`` abstractly (no FLOPs)
  and records, for each bnjax or flax batch-norm layer normalizing the last
  axis, whether its input is the very array a ``nn.Dense``/``nn.Conv``
  returned. Pass the inference arguments (e.g. ``train=False``).

  Args:
    module: a flax.linen module.
    variables: its variables (``params`` and ``batch_stats``).
    *args: the inference call's positional arguments.
    **kwargs: the inference call's keyword arguments.

  Returns:
    A list of ``(linear_path, norm_path)`` tuples of module paths (tuples of
    names, relative to ``variables['params']``), in call order.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from bnjax import folding, layers
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return layers.BatchNorm(use_running_average=True, name='bn')(
    ...         nn.Dense(2, name='dense')(x))
    >>> x = jnp.ones((1, 3))
    >>> variables = Net().init(jax.random.key(0), x)
    >>> folding.find_batch_norm_pairs(Net(), variables, x)
    [(('dense',), ('bn',))]

  References:
    Jacob et al., "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", CVPR 2018, arXiv
    1712.05877, section 3.2.
  """
  found = graph.normalizer_pairs(module, variables, *args, **kwargs)
  return [(lin, norm) for lin, norm, _ in found]


def _has(tree, path) -> bool:
  for name in path:
    if not isinstance(tree, dict) and not hasattr(tree, 'keys') or name not in tree:
      return False
    tree = tree[name]
  return True


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def fold_batch_norms(module: nn.Module, variables, *args, **kwargs):
  r"""Folds every Dense/Conv + batch-norm pair of trained variables for inference.

  .. math::
    k = \frac{\gamma}{\sqrt{\sigma^2_P + \epsilon}}, \qquad
    \mathrm{BN}(xW + b) = x\,(W k) + (b - \mu_P)\,k + \beta

  Each pair found by :func:`find_batch_norm_pairs` gets, per
  :func:`bnjax.norms.fold_batch_norm`, ``kernel * k`` and a bias carrying the
  normalization. The batch norm is turned into the identity at inference
  (scale 1, mean 0, var ``1 - eps``); when the Dense/Conv has no bias the
  shift stays in the norm (its ``bias``, or minus its running mean when it
  has none). The same module therefore gives the same inference outputs with
  the folded variables, and a Dense/Conv with a bias can load the folded
  kernel and bias into a model without the norm.

  A pair is folded only when the Dense/Conv output feeds nothing but the
  norm and neither layer is called twice; otherwise (a residual ``BN(h) + h``,
  a shared layer) folding would change the outputs, and a ValueError names
  the layer.

  Args:
    module: a flax.linen module.
    variables: its trained variables (``params`` and ``batch_stats``).
    *args: the inference call's positional arguments.
    **kwargs: the inference call's keyword arguments.

  Returns:
    ``(folded_variables, pairs)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from bnjax import folding, layers
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return layers.BatchNorm(use_running_average=True, name='bn')(
    ...         nn.Dense(2, name='dense')(x))
    >>> x = jnp.ones((1, 3))
    >>> variables = Net().init(jax.random.key(0), x)
    >>> folded, pairs = folding.fold_batch_norms(Net(), variables, x)
    >>> bool(jnp.allclose(Net().apply(folded, x), Net().apply(variables, x), atol=1e-6))
    True

  References:
    Jacob et al., "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", CVPR 2018, arXiv
    1712.05877, section 3.2.
  """
  if 'batch_stats' not in variables or 'params' not in variables:
    raise ValueError("fold_batch_norms needs trained variables with 'params' and "
                     "'batch_stats' collections (the batch norms' running statistics); "
                     f'got collections {sorted(variables)}.')
  found = graph.normalizer_pairs(module, variables, *args, **kwargs)
  if found:
    shared = graph.shared_pairs(module, variables, [(l, n) for l, n, _ in found], *args,
                             **kwargs)
    if shared:
      lin, norm = ('/'.join(p) for p in shared[0])
      raise ValueError(f'cannot fold {norm} into {lin}: the output of {lin} also feeds '
                       f'something other than {norm} (e.g. a residual BN(h) + h), or one '
                       f'of them is called more than once; folding would change the '
                       f'outputs.')
  variables = flax.core.unfreeze(jax.tree_util.tree_map(lambda a: a, variables))
  params, batch_stats = variables['params'], variables['batch_stats']
  for lin_path, norm_path, bn in found:
    if not _has(batch_stats, norm_path):
      raise ValueError(f"batch_stats has no running statistics for {'/'.join(norm_path)}; "
                       f'pass the variables of a model initialized or trained with it.')
    lin, norm_p, stats = (_get(params, lin_path), _get(params, norm_path),
                          _get(batch_stats, norm_path))
    eps = bn.epsilon
    mean = stats['mean'] if getattr(bn, 'uses_mean', True) else jnp.zeros_like(stats['mean'])
    var = stats['var'] if getattr(bn, 'uses_var', True) else jnp.ones_like(stats['var']) - eps
    kernel, bias = norms.fold_batch_norm(
        lin['kernel'], lin.get('bias'), norm_p.get('scale'), norm_p.get('bias'),
        norms.BatchStats(mean, var), epsilon=eps)
    lin['kernel'] = kernel
    if 'scale' in norm_p:
      norm_p['scale'] = jnp.ones_like(norm_p['scale'])
    stats['mean'] = jnp.zeros_like(stats['mean'])
    stats['var'] = jnp.full_like(stats['var'], 1.0 - eps)
    if 'bias' in lin:
      lin['bias'] = bias
      if 'bias' in norm_p:
        norm_p['bias'] = jnp.zeros_like(norm_p['bias'])
    elif 'bias' in norm_p:
      norm_p['bias'] = bias
    elif getattr(bn, 'uses_mean', True):
      stats['mean'] = -bias
    else:
      raise ValueError(f'cannot fold {"/".join(norm_path)}: neither it nor '
                       f'{"/".join(lin_path)} has a bias to carry the shift.')
  return variables, [(lin, norm) for lin, norm, _ in found]
