"""bnjax norms vs flax.linen: jitted forward + backward, ratio of median times.

Run: python -m benchmarks.norms [--repeats N]. Ratio = bnjax / flax
(< 1: bnjax faster). Target: <= 1.05. The last column times flax against a
second compiled copy of itself in the same rotation: how far from 1.0 a ratio
moves on this machine when nothing differs (the benchmark's resolution).
"""

import argparse

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.common import machine_line, time_alternating
from bnjax import norms

SHAPES = ((128, 28, 28, 64), (128, 7, 7, 256))


def _cases(features):
  """name -> (bnjax fn(x, scale, bias, stats), flax module, flax apply kwargs)."""
  return {
      'batch_norm': (
          lambda x, s, b, st: norms.batch_norm(x, s, b, st, training=True),
          nn.BatchNorm(use_running_average=False), dict(mutable=['batch_stats'])),
      'group_norm': (
          lambda x, s, b, st: (norms.group_norm(x, s, b, num_groups=32), st),
          nn.GroupNorm(num_groups=32), {}),
      'layer_norm': (
          lambda x, s, b, st: (norms.layer_norm(x, s, b), st),
          nn.LayerNorm(), {}),
      'instance_norm': (
          lambda x, s, b, st: (norms.instance_norm(x, s, b), st),
          nn.InstanceNorm(), {}),
  }


def _train_fns(ours, module, apply_kwargs, stats):
  """Loss sum(y * r) and its gradient w.r.t. x, scale and bias, plus new stats."""

  def ours_loss(x, scale, bias, r):
    y, new = ours(x, scale, bias, stats)
    return jnp.sum(y * r), new

  def flax_loss(x, scale, bias, r):
    variables = {'params': {'scale': scale, 'bias': bias},
                 'batch_stats': {'mean': stats.mean, 'var': stats.var}}
    out = module.apply(variables, x, **apply_kwargs)
    y, new = out if apply_kwargs else (out, None)
    return jnp.sum(y * r), new

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
  return grad(ours_loss), grad(flax_loss)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--repeats', type=int, default=30)
  args = parser.parse_args()
  print(f'# {machine_line()}, flax {flax.__version__}')
  print('| norm | shape | flax ms | bnjax ms | ratio bnjax/flax | control flax/flax |')
  print('|---|---|---:|---:|---:|---:|')
  for shape in SHAPES:
    f = shape[-1]
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], shape)
    r = jax.random.normal(keys[1], shape)
    scale, bias, stats = jnp.ones(f), jnp.zeros(f), norms.init_batch_stats(f)
    for name, (ours, module, kw) in _cases(f).items():
      ours_fn, flax_fn = _train_fns(ours, module, kw, stats)
      _, flax_copy = _train_fns(ours, module, kw, stats)
      t = time_alternating({'flax': flax_fn, 'bnjax': ours_fn, 'flax copy': flax_copy},
                           (x, scale, bias, r), repeats=args.repeats)
      print(f'| {name} | {shape} | {1e3 * t["flax"]:.2f} | {1e3 * t["bnjax"]:.2f} | '
            f'{t["bnjax"] / t["flax"]:.3f} | {t["flax copy"] / t["flax"]:.3f} |',
            flush=True)


if __name__ == '__main__':
  main()
