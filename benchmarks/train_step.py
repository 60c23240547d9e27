"""bnjax's ConvNet train step against plain flax.linen + optax, and the input pipeline.

Run: python -m benchmarks.train_step [--repeats N] [--batch_size B] [--data_dir D]

Prints, from one process, alternating the two steps:
* images/s of bnjax's step (bnjax.train: ConvNet with bnjax BatchNorm, SGD with
  momentum + coupled L2 + dynamics tracking) and of the same architecture
  written here with flax.linen.BatchNorm and optax (sgd + add_decayed_weights),
  and their ratio (target >= 1.0), with a control row timing a second compiled
  copy of the flax step (how far a ratio strays when nothing differs);
* achieved GFLOP/s (XLA's cost analysis of the step) against the peak of a
  float32 ``jnp.dot`` 2048^3 measured in the same run;
* the input pipeline's images/s against what the step consumes (target >= 5x),
  on real Fashion-MNIST when it is available locally, else on random uint8
  images of the same shape.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import machine_line, time_alternating
from bnjax import masks, transforms
from bnjax.train import data, executors, trainer
from bnjax.train.config import Config


class FlaxConvNet(nn.Module):
  """The reference: bnjax's ConvNet architecture in plain flax.linen."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    for width in (32, 64, 128):
      x = nn.Conv(width, (3, 3), use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def flax_step_fn(model, tx):
  def step(state, batch):
    params, batch_stats, opt_state = state

    def loss_fn(p):
      logits, upd = model.apply({'params': p, 'batch_stats': batch_stats}, batch['x'],
                                mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']).mean()
      return loss, upd['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_stats, opt_state), loss

  return jax.jit(step)


def dot_peak_gflops(n=2048, repeats=10):
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(jnp.dot)
  seconds = time_alternating({'dot': f}, (a, a), repeats=repeats)['dot']
  return 2 * n ** 3 / seconds / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  b = args.batch_size
  print(f'# {machine_line()}')

  if data.fashion_mnist_dir() is not None:
    train_split = data.load_image_dataset('fashion_mnist', args.data_dir)['train']
    source = 'Fashion-MNIST'
  else:
    rng = np.random.default_rng(0)
    train_split = data.Arrays(rng.integers(0, 256, (60000, 28, 28, 1), dtype=np.uint8),
                              rng.integers(0, 10, 60000))
    source = 'random uint8 images'
  mean, std = data.normalization_stats(train_split.x)
  batches = data.Batches(train_split, b, seed=0, mean=mean, std=std)
  batch = batches.batch(0, 0)

  config = Config(batch_size=b, optimizer='momentum', regularizer='l2',
                        weight_decay=5e-4, learning_rate=0.05)
  model, tx = trainer.build_model(config), trainer.build_optimizer(config)
  ours = jax.jit(executors.make_train_step(model, tx, regression=False))
  ours_state = trainer.init_state(config, model, tx, batch['x'])

  ref_model = FlaxConvNet()
  ref_tx = optax.chain(optax.add_decayed_weights(5e-4, masks.kernel_mask),
                       optax.sgd(0.05, momentum=0.9))
  v = ref_model.init(jax.random.key(0), batch['x'])
  ref_state = (v['params'], v['batch_stats'], ref_tx.init(v['params']))
  ref = flax_step_fn(ref_model, ref_tx)
  ref_copy = flax_step_fn(ref_model, ref_tx)

  untracked_tx = transforms.sgd(0.05, 0.9, regularizer='l2', weight_decay=5e-4,
                                mask=masks.kernel_mask, track=False)
  untracked = jax.jit(executors.make_train_step(model, untracked_tx, regression=False))
  untracked_state = trainer.init_state(config, model, untracked_tx, batch['x'])
  t = time_alternating({'flax.linen + optax': lambda: ref(ref_state, batch),
                        'bnjax': lambda: ours(ours_state, batch),
                        'bnjax, tracking off': lambda: untracked(untracked_state, batch),
                        'control: flax.linen + optax again': lambda: ref_copy(ref_state, batch)},
                       (), repeats=args.repeats)
  flops = ours.lower(ours_state, batch).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, (list, tuple)) else flops)['flops']
  peak = dot_peak_gflops()
  print(f'\n| train step, batch {b} | ms | images/s | GFLOP/s | % of dot peak |')
  print('|---|---:|---:|---:|---:|')
  for name, sec in t.items():
    gf = flops / sec / 1e9
    print(f'| {name} | {1e3 * sec:.1f} | {b / sec:.0f} | {gf:.1f} | {100 * gf / peak:.0f}% |')
  ref_sec = t['flax.linen + optax']
  print(f'\nratio bnjax/flax images/s: {ref_sec / t["bnjax"]:.3f} (target >= 1.0); '
        f'tracking off: {ref_sec / t["bnjax, tracking off"]:.3f}; jnp.dot 2048^3 peak: '
        f'{peak:.1f} GFLOP/s; step: {flops / 1e9:.2f} GFLOP; control (flax against a '
        f'second compiled copy of itself, the resolution): '
        f'{ref_sec / t["control: flax.linen + optax again"]:.3f}')

  start = time.perf_counter()
  n = sum(len(x['y']) for x in data.prefetch(batches.epoch(1)))
  pipeline = n / (time.perf_counter() - start)
  step_rate = b / t['bnjax']
  print(f'input pipeline ({source}, normalize + shuffle + batch, prefetched): '
        f'{pipeline:.0f} images/s = {pipeline / step_rate:.0f}x what the step consumes '
        f'(target >= 5x)')
  print(f'one epoch of {len(train_split)} images at this step rate: '
        f'{len(train_split) / step_rate:.0f} s (target <= 60 s)')


if __name__ == '__main__':
  main()
