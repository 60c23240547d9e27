"""Vectorized groups: runs that differ only in hyperparameters and seed, as one program.

Members that share model, data, batch size, step count and every other
setting that shapes the computation are trained in one jitted program,
``jax.vmap``-ed over their learning rate, momentum, weight decay, gamma decay
and seed: each member has its own initialization (its seed), its own data
order and augmentation (its seed), and its own optimizer values, held in its
optimizer state (:func:`bnjax.train.programs.build_optimizer`). On GPUs and TPUs this
fills the device with one program instead of many small ones.

Each member writes through its own :class:`bnjax.train.run_files.RunFiles`, so its
workdir holds exactly what a single run writes, resumes from its own
checkpoints (members restored at different steps train as separate
subgroups), and a member whose loss or state stops being finite is recorded
as diverged while the others go on.
"""

import contextlib
import pathlib
import time
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bnjax.train import config as config_lib
from bnjax.train import executors, inputs, loop, programs
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config
from bnjax.train.run_files import NonFiniteLossError, RunFiles


__all__ = ['VECTORIZED_FIELDS', 'group_key', 'plan', 'train_groups']

# The fields members of one group may differ in.
VECTORIZED_FIELDS = programs.VALUE_FIELDS


def group_key(config: Config) -> str:
  """Members with equal keys train as one vmapped group: one program
  (:func:`bnjax.train.programs.program_key`) and the same
  ``Config.NON_RESULT_FIELDS`` (evaluation batches and checkpoint spacing are
  the group's, so members that differ in them train in groups of their own)."""
  own = {field: getattr(config, field) for field in Config.NON_RESULT_FIELDS}
  return f'{programs.program_key(config)}|{sorted(own.items())}'


def _answered(workdir, wanted: dict, warn: bool = False) -> Optional[dict]:
  """The summary of a finished or diverged member (None when it still has to train)."""
  try:
    return loop.answered(workdir, wanted, warn=warn)
  except NonFiniteLossError:
    return workdirs.read_json(workdir / workdirs.SUMMARY)


def train_groups(configs: List[Config], paths: list, *, data_dir: Optional[str] = None,
                 max_group: Optional[int] = None, progress: bool = False,
                 skip_held: bool = False) -> List[Optional[dict]]:
  """Trains the members in vmapped groups; returns their summaries in order.

  Args:
    configs: the members' configs (``parallel='none'``).
    paths: their workdirs (``pathlib.Path``, distinct).
    data_dir: tfds data dir for image datasets.
    max_group: the most members in one program (a memory cap); ``None``: all
      members of a group.
    progress: one progress bar per group.
    skip_held: a member whose workdir another process holds is left out of
      its group (its entry ``None``) instead of raising
      :class:`bnjax.train.workdir.WorkdirLockedError`.

  Returns:
    A list of summaries, ``summaries[i]`` for ``configs[i]``; a diverged
    member's is its ``status: "diverged"`` summary.

  Example:
    >>> import dataclasses, tempfile
    >>> from bnjax.train import vectorized
    >>> from bnjax.train.config import Config
    >>> base = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...               num_train=32, num_test=16, input_dim=4, log_every=2,
    ...               checkpoint_every=4)
    >>> configs = [dataclasses.replace(base, learning_rate=lr) for lr in (0.01, 0.1)]
    >>> root = tempfile.mkdtemp()
    >>> out = vectorized.train_groups(configs, [f'{root}/a', f'{root}/b'])
    >>> [s['status'] for s in out]
    ['finished', 'finished']

  References:
    Bradbury et al., JAX (2018), ``jax.vmap``.
  """
  paths = [pathlib.Path(p) for p in paths]
  summaries, chunks = plan(configs, paths, max_group)
  count, total = 0, sum(len(chunk) for chunk in chunks)
  for chunk in chunks:
    start = time.perf_counter()
    done = _train_locked([configs[i] for i in chunk], [paths[i] for i in chunk],
                         data_dir, progress, skip_held)
    for i, summary in zip(chunk, done):
      summaries[i] = summary
      count += 1
      logging.warning('[%d/%d] %s %s (%.0f s, group of %d)', count, total, paths[i],
                      'held by another process' if summary is None
                      else summary.get('status', 'finished'),
                      time.perf_counter() - start, len(chunk))
  return summaries


def plan(configs: List[Config], paths: list, max_group: Optional[int] = None):
  """The summaries of members already done and the groups left to train.

  Args:
    configs: the members' configs (``parallel='none'``; validated here).
    paths: their workdirs.
    max_group: the most members in one group (``None``: no cap).

  Returns:
    ``(summaries, groups)``: ``summaries[i]`` the summary of a finished or
    diverged member, else ``None``; ``groups`` lists of the other members'
    indices, one per program (:func:`group_key`, cut at ``max_group``), the
    longest first (optimizer steps x members), so that worker processes taking
    them in this order finish close together.

  Example:
    >>> import dataclasses, tempfile
    >>> from bnjax.train import vectorized
    >>> from bnjax.train.config import Config
    >>> base = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...               num_train=32, num_test=16, input_dim=4, log_every=2,
    ...               checkpoint_every=4)
    >>> configs = [base, dataclasses.replace(base, seed=1),
    ...            dataclasses.replace(base, num_train=96)]
    >>> root = tempfile.mkdtemp()
    >>> vectorized.plan(configs, [f'{root}/{k}' for k in range(3)])
    ([None, None, None], [[2], [0, 1]])
  """
  paths = [pathlib.Path(p) for p in paths]
  for i, c in enumerate(configs):
    if c.parallel != 'none':
      raise ValueError(f'member {i} ({paths[i]}): --parallel={c.parallel}; vectorized '
                       "groups vmap over members on one device, so parallel must be 'none'.")
    c.validate()
  summaries: List[Optional[dict]] = [None] * len(configs)
  by_key: Dict[str, list] = {}
  for i, (c, p) in enumerate(zip(configs, paths)):
    summaries[i] = _answered(p, config_lib.record(c))
    if summaries[i] is None:
      by_key.setdefault(group_key(c), []).append(i)
  groups = []
  for members in by_key.values():
    size = max_group or len(members)
    groups += [members[k:k + size] for k in range(0, len(members), size)]
  groups.sort(key=lambda g: -configs[g[0]].total_steps() * len(g))
  return summaries, groups


def _train_locked(configs, paths, data_dir, progress, skip_held=False) -> list:
  """One group, every member's workdir locked while it trains. Each member's data
  is prepared (and refused, :func:`bnjax.train.inputs.prepare`) before any of its
  files is written."""
  wanted = [config_lib.record(c) for c in configs]
  run_data = [inputs.prepare(c, data_dir) for c in configs]
  held = set()
  with contextlib.ExitStack() as stack:
    for i, p in enumerate(paths):
      p.mkdir(parents=True, exist_ok=True)
      try:
        stack.enter_context(workdirs.locked(p))
      except workdirs.WorkdirLockedError as e:
        if not skip_held:
          raise
        logging.warning('skipped: %s', e)
        held.add(i)
    out = [None if i in held else _answered(p, w, warn=True)  # under the locks
           for i, (p, w) in enumerate(zip(paths, wanted))]
    todo = [i for i, s in enumerate(out) if s is None and i not in held]
    for i in todo:
      if not (paths[i] / workdirs.CONFIG).exists():
        workdirs.write_json_atomic(paths[i] / workdirs.CONFIG, wanted[i])
    if todo:
      group = _Group([configs[i] for i in todo], [paths[i] for i in todo],
                     [wanted[i] for i in todo], [run_data[i] for i in todo])
      for i, summary in zip(todo, group.train(progress)):
        out[i] = summary
  return out


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


class _Group:
  """The members of one group: data, initial states, files, the vmapped steps."""

  def __init__(self, configs, paths, wanted, run_data):
    self.configs = configs
    first = configs[0]
    self.regression = first.dataset == 'teacher_student'
    self.run_data = run_data
    model = programs.build_model(first, host=True)
    self.files = [RunFiles(c, p, w) for c, p, w in zip(configs, paths, wanted)]
    initial = programs.programs(first)[0]
    self.states = [f.resume(initial(jax.random.key(c.seed), d.train_batches.batch(0, 0)['x'],
                                    programs.hyperparameters(c), c.init_scale))
                   for f, c, d in zip(self.files, configs, run_data)]
    member_step = executors.make_train_step(model, programs.build_optimizer(first),
                                            self.regression)
    self.step = jax.jit(jax.vmap(member_step), donate_argnums=0)
    self.eval_step = jax.jit(jax.vmap(executors.make_eval_step(model, self.regression)))

  def train(self, progress: bool) -> list:
    """Trains the members, subgroups by restored step; their summaries in order."""
    summaries = [None] * len(self.configs)
    by_step: Dict[int, list] = {}
    for i, s in enumerate(self.states):
      by_step.setdefault(int(s.step), []).append(i)
    try:
      for start, indices in sorted(by_step.items()):
        members = [loop.Member(self.configs[i], self.files[i], self.run_data[i])
                   for i in indices]
        state = jax.device_put(_stack([self.states[i] for i in indices]))
        outcome = loop.run(_VmappedRun(self, indices), members, state, start,
                           progress=progress)
        for i, out in zip(indices, outcome):
          summaries[i] = (workdirs.read_json(self.files[i].workdir / workdirs.SUMMARY)
                          if isinstance(out, NonFiniteLossError) else out)
    finally:
      for f in self.files:
        f.close()
    return summaries


class _VmappedRun:
  """A subgroup's program for :func:`bnjax.train.loop.run`: the members' states
  stacked on a leading axis and stepped by one vmapped step."""

  def __init__(self, group: _Group, indices: list):
    self.group, self.indices = group, indices

  def step(self, state, batch):
    return self.group.step(state, batch)

  def batches(self, start: int, stop: int):
    every = [self.group.run_data[i].train_batches for i in self.indices]
    return ({'x': np.stack([b['x'] for b in batches]),
             'y': np.stack([b['y'] for b in batches])}
            for batches in zip(*(b.steps(start, stop) for b in every)))

  def host(self, state):
    return jax.device_get(state)

  def saveable(self, state, host):
    del state
    return host()

  def member(self, tree, j: int):
    return jax.tree_util.tree_map(lambda a: a[j], tree)

  def evaluate(self, host, members) -> dict:
    """``{j: test metrics}`` of the members ``j`` (positions in the subgroup), each
    with the batch-norm statistics of its ``bn_eval``. Every member of the
    subgroup is evaluated in one vmapped program (a diverged one too), so a
    member's numbers do not depend on which others are still training."""
    group, state = self.group, host
    if group.configs[self.indices[0]].bn_eval != 'running':  # bn_eval is in the group key
      state = state.replace(batch_stats=_stack([
          programs.eval_batch_stats(group.configs[i], self.member(state, k),
                                    group.run_data[i].train_batches)
          for k, i in enumerate(self.indices)]))
    totals = [{} for _ in self.indices]
    test = [group.run_data[i].test_batches for i in self.indices]
    for batches in zip(*(t.epoch(0) for t in test)):
      out = jax.device_get(group.eval_step(
          state.params, state.batch_stats, np.stack([b['x'] for b in batches]),
          np.stack([b['y'] for b in batches])))
      for k in range(len(self.indices)):
        for key, v in out.items():
          totals[k][key] = totals[k].get(key, 0.0) + float(v[k])
    return {j: executors.eval_metrics(totals[j],
                                      len(group.run_data[self.indices[j]].splits['test']))
            for j in members}
