"""Vectorized groups: runs that differ only in hyperparameters and seed, as one program.

Members that share model, data, batch size, step count and every other
setting that shapes the computation are trained in one jitted program,
``jax.vmap``-ed over their learning rate, momentum, weight decay, gamma decay
and seed: each member has its own initialization (its seed), its own data
order and augmentation (its seed), and its own optimizer values, passed to
:func:`bnjax.train.trainer.build_optimizer` as traced arrays. On GPUs and TPUs this
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
from tqdm import tqdm

from bnjax.train import config as config_lib
from bnjax.train import data, executors, programs, trainer
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config
from bnjax.train.run_files import NonFiniteLossError, RunFiles


__all__ = ['VECTORIZED_FIELDS', 'group_key', 'plan', 'train_groups']

# The fields members of one group may differ in.
VECTORIZED_FIELDS = programs.VALUE_FIELDS
group_key = programs.program_key


def _answered(workdir, wanted: dict) -> Optional[dict]:
  """The summary of a finished or diverged member (None when it still has to train)."""
  try:
    return trainer._answered(workdir, wanted)  # pylint: disable=protected-access
  except NonFiniteLossError:
    return workdirs.read_json(workdir / workdirs.SUMMARY)


def train_groups(configs: List[Config], paths: list, *, data_dir: Optional[str] = None,
                 max_group: Optional[int] = None, progress: bool = False) -> List[dict]:
  """Trains the members in vmapped groups; returns their summaries in order.

  Args:
    configs: the members' configs (``parallel='none'``).
    paths: their workdirs (``pathlib.Path``, distinct).
    data_dir: tfds data dir for image datasets.
    max_group: the most members in one program (a memory cap); ``None``: all
      members of a group.
    progress: one progress bar per group.

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
                         data_dir, progress)
    for i, summary in zip(chunk, done):
      summaries[i] = summary
      count += 1
      logging.warning('[%d/%d] %s %s (%.0f s, group of %d)', count, total, paths[i],
                      (summary or {}).get('status', 'finished'),
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


def _train_locked(configs, paths, data_dir, progress) -> list:
  """One group, every member's workdir locked while it trains."""
  wanted = [config_lib.record(c) for c in configs]
  with contextlib.ExitStack() as stack:
    for p in paths:
      p.mkdir(parents=True, exist_ok=True)
      stack.enter_context(workdirs.locked(p))
    out = [_answered(p, w) for p, w in zip(paths, wanted)]  # again, under the locks
    todo = [i for i, s in enumerate(out) if s is None]
    for i in todo:
      if not (paths[i] / workdirs.CONFIG).exists():
        workdirs.write_json_atomic(paths[i] / workdirs.CONFIG, wanted[i])
    if todo:
      group = _Group([configs[i] for i in todo], [paths[i] for i in todo],
                     [wanted[i] for i in todo], data_dir)
      for i, summary in zip(todo, group.train(progress)):
        out[i] = summary
  return out


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, i: int):
  return jax.tree_util.tree_map(lambda a: a[i], tree)


class _Group:
  """The members of one group: data, initial states, files, the vmapped steps."""

  def __init__(self, configs, paths, wanted, data_dir):
    self.configs = configs
    first = configs[0]
    self.regression = first.dataset == 'teacher_student'
    self.train_batches, self.test_batches, self.test_sizes = [], [], []
    for c in configs:
      splits = trainer.load_data(c, data_dir)
      mean, std = trainer.input_normalization(c, data_dir)
      self.train_batches.append(data.Batches(splits['train'], c.batch_size, seed=c.seed,
                                             augment=c.augment, mean=mean, std=std))
      self.test_batches.append(data.Batches(splits['test'], c.eval_batch_size,
                                            shuffle=False, mean=mean, std=std))
      self.test_sizes.append(len(splits['test']))
    model = programs.build_model(first, host=True)
    self.files = [RunFiles(c, p, w) for c, p, w in zip(configs, paths, wanted)]
    initial = programs.programs(first)[0]
    self.states = [f.resume(initial(jax.random.key(c.seed), b.batch(0, 0)['x'],
                                    programs.hyperparameters(c)))
                   for f, c, b in zip(self.files, configs, self.train_batches)]

    def member_step(hyper, state, batch):
      tx = programs.build_optimizer(first, hyper=hyper)
      return executors.make_train_step(model, tx, self.regression)(state, batch)

    self.step = jax.jit(jax.vmap(member_step), donate_argnums=1)
    self.eval_step = jax.jit(jax.vmap(executors.make_eval_step(model, self.regression)))

  def evaluate(self, state, members) -> dict:
    """``{i: test metrics}`` of a host state stacked over ``members`` (config indices),
    each with the batch-norm statistics of its ``bn_eval``."""
    if self.configs[members[0]].bn_eval != 'running':  # bn_eval is in the group key
      state = state.replace(batch_stats=_stack([
          programs.eval_batch_stats(self.configs[i], _member(state, j),
                                    self.train_batches[i])
          for j, i in enumerate(members)]))
    totals = [{} for _ in members]
    for batches in zip(*(self.test_batches[i].epoch(0) for i in members)):
      out = jax.device_get(self.eval_step(
          state.params, state.batch_stats, np.stack([b['x'] for b in batches]),
          np.stack([b['y'] for b in batches])))
      for j in range(len(members)):
        for k, v in out.items():
          totals[j][k] = totals[j].get(k, 0.0) + float(v[j])
    return {i: executors.eval_metrics(totals[j], self.test_sizes[i])
            for j, i in enumerate(members)}

  def train(self, progress: bool) -> list:
    """Trains the members, subgroups by restored step; their summaries in order."""
    summaries = [None] * len(self.configs)
    by_step: Dict[int, list] = {}
    for i, s in enumerate(self.states):
      by_step.setdefault(int(s.step), []).append(i)
    try:
      for start, members in sorted(by_step.items()):
        for i, summary in zip(members, self._loop(members, start, progress)):
          summaries[i] = summary
    finally:
      for f in self.files:
        f.close()
    return summaries

  def _loop(self, members, step, progress) -> list:
    """Trains ``members`` (all at ``step``) to the end as one vmapped program."""
    config = self.configs[members[0]]
    hyper = _stack([programs.hyperparameters(self.configs[i]) for i in members])
    state = jax.device_put(_stack([self.states[i] for i in members]))
    batches_of = [self.train_batches[i] for i in members]
    steps_per_epoch = batches_of[0].steps_per_epoch
    total = steps_per_epoch * config.num_epochs
    alive = {j: True for j in range(len(members))}
    out: list = [None] * len(members)

    def each_alive(action):
      for j in [j for j, on in alive.items() if on]:
        try:
          action(j)
        except NonFiniteLossError:
          alive[j] = False
          out[j] = workdirs.read_json(self.files[members[j]].workdir / workdirs.SUMMARY)

    fetched = {}  # step -> the host copy of the state at that step (read once per step)

    def host_state():
      if step not in fetched:
        fetched.clear()
        fetched[step] = jax.device_get(state)
      return fetched[step]

    window, window_start = [], time.perf_counter()
    final_test = None  # the test metrics of the last step, when the loop evaluated it
    bar = tqdm(total=total, initial=step, disable=not progress, unit='step',
               dynamic_ncols=True)
    try:
      stacked = ({'x': np.stack([b['x'] for b in batches]),
                  'y': np.stack([b['y'] for b in batches])}
                 for batches in zip(*(b.steps(step, total) for b in batches_of)))
      for batch in data.prefetch(stacked):
        epoch = step // steps_per_epoch
        state, metrics = self.step(hyper, state, batch)
        step += 1
        window.append((step, metrics))
        bar.update(1)
        if step % config.log_every == 0 or step == total:
          host = jax.device_get([m for _, m in window])
          current = host_state()
          seconds = time.perf_counter() - window_start
          test = {}
          if config.eval_every and step % config.eval_every == 0:
            test = self.evaluate(current, members)
            final_test = test if step == total else None

          def log(j):
            files, mine = self.files[members[j]], _member(current, j)
            lines = [{k: v[j] for k, v in m.items()} for m in host]
            files.check_window([s for s, _ in window], lines, mine, step)
            files.write_line(step, epoch, lines, mine, seconds, test.get(members[j]))

          each_alive(log)
          window, window_start = [], time.perf_counter()
        if step % config.checkpoint_every == 0 or step == total:
          current = host_state()
          each_alive(lambda j: self.files[members[j]].save(step, _member(current, j)))
        if not any(alive.values()):
          break
    finally:
      bar.close()
    if step >= total:
      final = host_state()
      results = self.evaluate(final, members) if final_test is None else final_test

      def finish(j):
        out[j] = self.files[members[j]].finish(step, _member(final, j), results[members[j]])

      each_alive(finish)
    return out
