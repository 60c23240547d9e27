"""Shared timing harness: alternate a reference and bnjax in one process."""

import platform
import statistics
import time

import jax


def time_alternating(fns, args, *, warmup=3, repeats=30):
  """Median wall time (s) of each jitted fn, calls interleaved round-robin.

  ``fns`` maps a name to a function of ``*args``; each is compiled and run
  ``warmup`` times, then all are called in turn ``repeats`` times so slow
  drifts of the machine hit every candidate alike; each round starts one
  candidate later, so none always runs first (on a warm or a cold cache).
  """
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  names = list(fns)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      start = time.perf_counter()
      jax.block_until_ready(fns[name](*args))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def machine_line():
  devices = jax.devices()
  return (f'{time.strftime("%Y-%m-%d")}, {platform.machine()} {platform.system()}, '
          f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), '
          f'jax {jax.__version__}')
