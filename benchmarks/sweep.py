"""Sweep throughput: one-by-one, worker processes and vectorized groups, in one run.

Run: python -m benchmarks.sweep [--model convnet|perceptron] [--members 4 8]
     [--steps N] [--modes ...]

Each mode trains the same members from fresh workdirs through
:func:`bnjax.train.sweep.train_many`, and the wall time includes everything a sweep
pays (process start, data loading, compilation, logging, checkpoints).
``--model convnet`` (default): the quick preset's ConvNet of
experiments.effective_lr (widths 16/32/64, batch 32, Fashion-MNIST, SGD with
momentum + L2), members differing in learning rate, L2 strength and seed: one
program. ``--model perceptron``: the teacher-student study's linear BN
perceptrons (N = 100, batch 32, 10,000 steps by default), members differing in
seed and in P (four loads: up to four vectorized groups). Printed:
member-steps per second per mode and the ratio to the first mode given. The
modes run one after another in this process, in the order given, for every
member count.
"""

import argparse
import dataclasses
import shutil
import tempfile
import time

import jax

from benchmarks.common import machine_line
from bnjax.train import sweep
from bnjax.train.studies import effective_lr, teacher_student

MODES = {
    'one-by-one': dict(workers=1, vectorize=False),
    'workers': dict(workers=None, vectorize=False),
    'vectorized': dict(workers=1, vectorize=True),
    'vectorized-workers': dict(workers=None, vectorize=True),
}
STEPS = {'convnet': 1248, 'perceptron': 10000}  # convnet: the quick preset's 1250, /4


def perceptrons(n: int, steps: int) -> list:
  """``n`` linear BN perceptrons of the teacher-student study, seeds 0..n-1, on
  P = 96, 128, 160, 192 in turn: up to four programs."""
  return [teacher_student.student_config('linear', dict(norm='batch'), n=100,
                                         p=(96, 128, 160, 192)[k % 4], m=teacher_student.BATCH,
                                         steps=steps, seed=k)
          for k in range(n)]


def members(n: int, steps: int) -> list:
  """``n`` quick-preset ConvNet runs of ``steps`` steps, differing in lr, L2 and seed."""
  base = effective_lr.PRESETS['quick']['base']
  base = dataclasses.replace(base, train_subset=steps * base.batch_size, num_epochs=1,
                             log_every=steps // 4, checkpoint_every=steps)
  return [dataclasses.replace(base, learning_rate=0.05 * 2.0 ** (k % 3 - 1),
                              weight_decay=1e-3 * 2.0 ** (k % 2), seed=k)
          for k in range(n)]


def time_mode(configs, mode: str, data_dir) -> float:
  root = tempfile.mkdtemp(prefix=f'bnjax-bench-{mode}-')
  try:
    start = time.perf_counter()
    summaries = sweep.train_many(configs, [f'{root}/{k}' for k in range(len(configs))],
                                 data_dir=data_dir, **MODES[mode])
    seconds = time.perf_counter() - start
  finally:
    shutil.rmtree(root, ignore_errors=True)
  assert all(s['status'] == 'finished' for s in summaries), summaries
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='convnet', choices=list(STEPS))
  parser.add_argument('--members', type=int, nargs='+', default=[4, 8])
  parser.add_argument('--steps', type=int, default=None,
                      help='steps per member (default: convnet 1248, perceptron 10000)')
  parser.add_argument('--modes', nargs='+', default=list(MODES), choices=list(MODES))
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  args.steps = STEPS[args.model] if args.steps is None else args.steps
  if args.steps < 4 or args.steps % 4:
    parser.error(f'--steps: a positive multiple of 4, got {args.steps}')
  if any(n < 1 for n in args.members):
    parser.error(f'--members: positive counts, got {args.members}')
  build = perceptrons if args.model == 'perceptron' else members
  print(machine_line(), f'| workers default: {sweep.default_workers()} '
        f'(backend {jax.default_backend()})')
  print(f'{"members":>7} {"mode":>18} {"wall s":>8} {"member-steps/s":>15} '
        f'{"vs " + args.modes[0]:>14}')
  for n in args.members:
    configs = build(n, args.steps)
    base = None
    for mode in args.modes:
      seconds = time_mode(configs, mode, args.data_dir)
      rate = sum(c.total_steps() for c in configs) / seconds
      base = rate if base is None else base
      print(f'{n:>7} {mode:>18} {seconds:>8.1f} {rate:>15.1f} {rate / base:>13.2f}x',
            flush=True)


if __name__ == '__main__':
  main()
