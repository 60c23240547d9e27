"""bnjax transforms: overhead in a ConvNet train step, and projection vs optax.

Run: python -m benchmarks.transforms [--repeats N] [--batch_size B].

1. One jitted train step (forward, backward, optimizer) of the seed's
   4-layer ConvNet (3 bias-free convs + BN + ReLU + pooling, dense head) on
   28x28x1 inputs: plain ``optax.sgd(lr, 0.9)`` against the same step with
   bnjax's ``l2_regularization`` + ``unit_norm_projection`` +
   ``track_dynamics`` around it. Target: overhead <= 5% of the step.
2. ``unit_norm_projection`` against ``optax.projections.projection_l2_sphere``
   applied to each unit by hand (``vmap`` over units) on the ConvNet's
   params, both as "last in chain" updates ``P(w + u) - w``.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks.common import machine_line, time_alternating
from bnjax import layers, masks, transforms


class ConvNet(nn.Module):
  """Three bias-free 3x3 convs, each + BN + ReLU + 2x2 max-pool; dense head."""
  widths: tuple = (32, 64, 128)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    for width in self.widths:
      x = nn.Conv(width, (3, 3), use_bias=False)(x)
      x = nn.relu(layers.BatchNorm(use_running_average=not train)(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def make_step(model, tx):
  def loss_fn(params, batch_stats, x, y):
    logits, upd = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                              mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

  @jax.jit
  def step(params, batch_stats, opt_state, x, y):
    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), upd['batch_stats'], opt_state, loss

  return step


def per_unit_l2_sphere(updates, params, mask):
  """Reference: optax's whole-tree sphere projection, vmapped over units."""
  def leaf(u, w, on):
    if not on:
      return u
    new = jnp.moveaxis(w + u, -1, 0)
    projected = jax.vmap(optax.projections.projection_l2_sphere)(new)
    return jnp.moveaxis(projected, 0, -1) - w
  return jax.tree_util.tree_map(leaf, updates, params, mask)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--batch_size', type=int, default=128)
  args = parser.parse_args()
  print(f'# {machine_line()}, optax {optax.__version__}')

  model = ConvNet()
  x = jax.random.normal(jax.random.key(0), (args.batch_size, 28, 28, 1))
  y = jax.random.randint(jax.random.key(1), (args.batch_size,), 0, 10)
  variables = model.init(jax.random.key(2), x)
  params, batch_stats = variables['params'], variables['batch_stats']
  lr = 0.05
  plain = optax.sgd(lr, momentum=0.9)
  ours = optax.chain(transforms.l2_regularization(5e-4, masks.kernel_mask), plain,
                     transforms.unit_norm_projection(masks.kernel_mask),
                     transforms.track_dynamics(lr, 'sgd'))
  steps = {'optax.sgd': (make_step(model, plain), plain.init(params)),
           'bnjax l2+sgd+projection+tracking': (make_step(model, ours), ours.init(params))}
  fns = {name: (lambda s=s, st=st: s(params, batch_stats, st, x, y))
         for name, (s, st) in steps.items()}
  t = time_alternating(fns, (), repeats=args.repeats)
  base = t['optax.sgd']
  print('\n| train step (batch %d) | ms | images/s | vs optax.sgd |' % args.batch_size)
  print('|---|---:|---:|---:|')
  for name, sec in t.items():
    print(f'| {name} | {1e3 * sec:.2f} | {args.batch_size / sec:.0f} | '
          f'{100 * (sec / base - 1):+.1f}% |')

  mask = masks.kernel_mask(params)
  updates = jax.tree_util.tree_map(lambda p: 0.01 * jnp.ones_like(p), params)
  projection = transforms.unit_norm_projection(masks.kernel_mask)
  proj_state = projection.init(params)
  fns = {
      'optax projection_l2_sphere per unit (vmap)':
          jax.jit(lambda u, p: per_unit_l2_sphere(u, p, mask)),
      'bnjax unit_norm_projection':
          jax.jit(lambda u, p: projection.update(u, proj_state, p)[0]),
  }
  ref, got = (f(updates, params) for f in fns.values())
  err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)))
  t = time_alternating(fns, (updates, params), repeats=10 * args.repeats)
  base = t['optax projection_l2_sphere per unit (vmap)']
  print(f'\n| projection of the ConvNet params (max |difference| {err:.1e}) | us | ratio |')
  print('|---|---:|---:|')
  for name, sec in t.items():
    print(f'| {name} | {1e6 * sec:.1f} | {sec / base:.3f} |')


if __name__ == '__main__':
  main()
