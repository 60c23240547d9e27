"""Many training runs at once: worker processes on CPU, vectorized groups on accelerators.

:func:`train_many` takes configs and workdirs and returns their summaries in
order. Every member is an ordinary run: its workdir gets the files a single
run writes (``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``summary.json``), resumes from its own checkpoints, is checked against its
stored config and locked while it trains, and a member that diverges is
recorded as diverged without stopping the others.

How the members are trained:

* **Workers** (the default on CPU): a pool of ``workers`` processes (default:
  one per available core), each with XLA limited to one thread. On a CPU one
  XLA program does not use every core well (small convolutions, serial
  steps), so independent single-threaded runs side by side give more runs
  per second. The members go out round-robin over their programs
  (:func:`interleaved`) and the workers share one XLA compilation cache for
  the call, so each program is compiled once, not once per worker.
* **Vectorized groups** (the default on GPU/TPU; ``vectorize=True`` forces
  it): members that differ only in learning rate, momentum, weight decay,
  gamma decay and seed are trained in one jitted program, ``jax.vmap``-ed over
  those values (:mod:`bnjax.train.vectorized`). With ``workers > 1`` (the default
  on CPU) and several groups, the groups go out to that many worker
  processes, the longest first (:func:`bnjax.train.vectorized.plan`): a group of
  small models (the perceptrons of the teacher-student study) is bound by
  its per-step dispatch on one core, so two groups on two cores take about
  the time of one.
* One config, or ``workers=1``: one after another in the calling process.
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import pathlib
import tempfile
import time
from typing import List, Optional, Sequence

from absl import logging

from bnjax.train import config as config_lib
from bnjax.train import programs
from bnjax.train import stopping
from bnjax.train import trainer
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config


__all__ = ['train_many', 'default_workers', 'interleaved', 'SINGLE_THREAD_XLA_FLAGS']

# XLA's CPU backend with one compute thread (Eigen's pool off, one intra-op thread).
SINGLE_THREAD_XLA_FLAGS = ('--xla_cpu_multi_thread_eigen=false '
                           'intra_op_parallelism_threads=1')


def default_workers() -> int:
  """The cores this process may run on (its CPU affinity), at least 1."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # no sched_getaffinity (macOS)
    return max(1, os.cpu_count() or 1)


def _check_members(configs, workdirs_) -> List[pathlib.Path]:
  """Refuses bad lists before any work; returns the workdirs as paths."""
  if isinstance(configs, Config) or not isinstance(configs, Sequence):
    raise TypeError(f'configs must be a list of Config, got {type(configs).__name__}.')
  if isinstance(workdirs_, (str, os.PathLike)) or not isinstance(workdirs_, Sequence):
    raise TypeError(f'workdirs must be a list of folders, got {type(workdirs_).__name__}.')
  if len(configs) != len(workdirs_):
    raise ValueError(f'configs and workdirs differ in length: {len(configs)} configs, '
                     f'{len(workdirs_)} workdirs.')
  if not configs:
    raise ValueError('configs is empty: nothing to train.')
  for i, c in enumerate(configs):
    if not isinstance(c, Config):
      raise TypeError(f'configs[{i}] must be a Config, got {type(c).__name__}.')
  paths = [workdirs.folder(w, f'workdirs[{i}]') for i, w in enumerate(workdirs_)]
  seen = {}
  for i, p in enumerate(paths):
    key = os.path.realpath(p)  # a symlink to another member's folder is that folder
    if key in seen:
      raise ValueError(f'workdirs[{seen[key]}] and workdirs[{i}] are the same folder '
                       f'{key}: every member needs its own workdir.')
    seen[key] = i
  for i, (c, p) in enumerate(zip(configs, paths)):
    try:
      c.validate()
      workdirs.check_config(p, config_lib.record(c), Config.NON_RESULT_FIELDS)
    except (TypeError, ValueError) as e:
      raise type(e)(f'member {i} ({p}): {e}') from e
  return paths


def _check_count(name: str, value) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{name} must be a positive int or None, got {value!r}.')
  return value


def train_member(config: Config, workdir, data_dir: Optional[str] = None,
                 progress: bool = False, skip_held: bool = False) -> Optional[dict]:
  """One member: :func:`bnjax.train.trainer.train`, a divergence answered by its
  summary; with ``skip_held``, ``None`` for a workdir another process holds."""
  try:
    return trainer.train(config, workdir, data_dir=data_dir, progress=progress)
  except trainer.NonFiniteLossError:
    return workdirs.read_json(pathlib.Path(workdir) / workdirs.SUMMARY)
  except workdirs.WorkdirLockedError as e:
    if not skip_held:
      raise
    logging.warning('skipped: %s', e)
    return None


def _init_worker(xla_flags: str, cache_dir: Optional[str] = None,
                 parent: Optional[int] = None) -> None:
  """Runs first in each worker process, before any XLA backend starts: one XLA
  thread, and the pool's shared compilation cache (a program one worker compiled
  is loaded, not compiled again, by the others). The worker leaves SIGINT to the
  parent and exits when the parent is gone (:func:`bnjax.train.stopping.exit_with_parent`)."""
  stopping.exit_with_parent(os.getppid() if parent is None else parent)
  # tqdm's default lock is a multiprocessing RLock, a semaphore that a worker killed
  # on a stop would leave for the resource tracker to report; workers show no bars.
  import threading  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  tqdm.tqdm.set_lock(threading.RLock())
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {xla_flags}'.strip()
  if cache_dir is not None:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', cache_dir)


def interleaved(configs) -> List[int]:
  """Member indices, round-robin over the :func:`bnjax.train.programs.program_key` groups.

  Workers taking members in this order start on different programs, so no
  two compile the same one at once; a later member of a group finds its
  program in the shared compilation cache.

  Example:
    >>> import dataclasses
    >>> from bnjax.train import sweep
    >>> from bnjax.train.config import Config
    >>> a, b = Config(), Config(optimizer='adam', regularizer='decoupled')
    >>> sweep.interleaved([a, dataclasses.replace(a, seed=1), b,
    ...                    dataclasses.replace(b, seed=1)])
    [0, 2, 1, 3]
  """
  groups: dict = {}
  for i, c in enumerate(configs):
    groups.setdefault(programs.program_key(c), []).append(i)
  queues = list(groups.values())
  order = []
  for rank in range(max(len(q) for q in queues)):
    order += [q[rank] for q in queues if rank < len(q)]
  return order


def _log_done(i: int, n: int, workdir, summary: Optional[dict], seconds: float) -> None:
  status = 'held by another process' if summary is None else summary.get('status',
                                                                          'finished')
  logging.warning('[%d/%d] %s %s (%.0f s)', i, n, workdir, status, seconds)


def _train_members(configs, paths, data_dir, skip_held=False) -> list:
  """Members one after another (a worker's task)."""
  return [train_member(c, p, data_dir, skip_held=skip_held) for c, p in zip(configs, paths)]


def _train_group(configs, paths, data_dir, skip_held=False) -> list:
  """One vectorized group (a worker's task)."""
  from bnjax.train import vectorized  # pylint: disable=g-import-not-at-top
  return vectorized.train_groups(configs, paths, data_dir=data_dir, skip_held=skip_held)


@contextlib.contextmanager
def _killed_when_interrupted(pool):
  """On Ctrl-C or SIGTERM (:class:`bnjax.train.stopping.Stopped`) in the block: the
  queued tasks are cancelled and the workers killed at once, not waited for (each
  run resumes from its last checkpoint; the kernel releases its workdir lock)."""
  try:
    yield
  except KeyboardInterrupt:
    processes = list((getattr(pool, '_processes', None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
      process.kill()
    for process in processes:
      process.join(timeout=10)
    raise


def _train_in_workers(configs, paths, data_dir, workers: int, tasks=None,
                      task=_train_members, skip_held: bool = False) -> list:
  """Every member in a spawned process pool; other members finish before an error
  of one is raised (naming its workdir).

  ``tasks``: lists of member indices, each one call of ``task`` in a worker
  (default: one member per task, round-robin over programs).
  """
  if tasks is None:
    tasks = [[i] for i in interleaved(configs)]
  cache = tempfile.TemporaryDirectory(prefix='bnjax-xla-cache-')
  pool = concurrent.futures.ProcessPoolExecutor(
      max_workers=min(workers, len(tasks)), mp_context=multiprocessing.get_context('spawn'),
      initializer=_init_worker, initargs=(SINGLE_THREAD_XLA_FLAGS, cache.name, os.getpid()))
  start = time.perf_counter()
  summaries, errors, done = [None] * len(configs), [], 0
  with cache, pool, _killed_when_interrupted(pool):
    with stopping.spawning():  # the workers start as the tasks are submitted
      futures = {pool.submit(task, [configs[i] for i in members],
                             [str(paths[i]) for i in members], data_dir, skip_held): members
                 for members in tasks}
    for future in concurrent.futures.as_completed(futures):
      members = futures[future]
      try:
        results = future.result()
      except Exception as e:  # reported after the other members are done
        done += len(members)
        errors.append((members[0], e))
        logging.warning('[%d/%d] %s failed: %s', done, len(configs), paths[members[0]], e)
        continue
      for i, summary in zip(members, results):
        done += 1
        summaries[i] = summary
        _log_done(done, len(configs), paths[i], summary, time.perf_counter() - start)
  if errors:
    i, e = min(errors, key=lambda ie: ie[0])
    more = f' ({len(errors) - 1} more task(s) failed too)' if len(errors) > 1 else ''
    raise type(e)(f'member {i} ({paths[i]}): {e}{more}') from e
  return summaries


def train_many(configs: Sequence[Config], workdirs: Sequence, *,
               data_dir: Optional[str] = None, workers: Optional[int] = None,
               vectorize: Optional[bool] = None, progress: bool = False,
               max_group: Optional[int] = None,
               skip_held: bool = False) -> List[Optional[dict]]:
  """Trains every config in its workdir; returns their summaries in order.

  Each member behaves as :func:`bnjax.train.trainer.train` on its own: a finished
  workdir answers with its summary, an unfinished one resumes, a workdir
  holding another config is refused, and a member that diverges returns its
  ``status: "diverged"`` summary while the others go on. Everything that can
  be refused (list shapes, types, duplicate workdirs, invalid configs, a
  workdir holding another config) is refused before any member starts.

  With ``workers > 1`` the members train in spawned processes, which import the
  calling script again: in a script, call ``train_many`` under
  ``if __name__ == '__main__':`` (as with any ``multiprocessing`` code), or pass
  ``workers=1``.

  Args:
    configs: the members' :class:`bnjax.train.config.Config`.
    workdirs: one folder per member (distinct).
    data_dir: tfds data dir for image datasets.
    workers: worker processes (default: one per core on CPU, 1 elsewhere);
      ``1`` trains the members (or the vectorized groups) one after another
      in this process.
    vectorize: train members that differ only in hyperparameters and seed as
      one vmapped program (default: on for GPU/TPU, off for CPU).
    progress: progress bars (members trained in this process only).
    max_group: the most members in one vectorized program (a memory cap;
      default: all of a group).
    skip_held: a member whose workdir another live process holds (its lock) is
      skipped, with a warning, and its entry is ``None`` (processes sharing a
      sweep's folders, e.g. shards of a study); ``False``: the
      :class:`bnjax.train.workdir.WorkdirLockedError` is raised once the other
      members are done.

  Returns:
    A list of summary dicts, ``summaries[i]`` for ``configs[i]`` (``None`` for
    a member skipped as held).

  Example:
    >>> import dataclasses, tempfile
    >>> from bnjax.train import sweep
    >>> from bnjax.train.config import Config
    >>> base = Config(dataset='teacher_student', model='perceptron', batch_size=8,
    ...               num_train=32, num_test=16, input_dim=4, log_every=2,
    ...               checkpoint_every=4)
    >>> configs = [dataclasses.replace(base, learning_rate=lr) for lr in (0.01, 0.1)]
    >>> root = tempfile.mkdtemp()
    >>> summaries = sweep.train_many(configs, [f'{root}/a', f'{root}/b'], workers=1)
    >>> [s['config']['learning_rate'] for s in summaries]
    [0.01, 0.1]

  References:
    Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization",
    JMLR 2012 (independent trials of a grid or random search).
  """
  paths = _check_members(configs, workdirs)
  workers = _check_count('workers', workers)
  max_group = _check_count('max_group', max_group)
  if vectorize is not None and not isinstance(vectorize, bool):
    raise TypeError(f'vectorize must be True, False or None, got {vectorize!r}.')
  import jax  # pylint: disable=g-import-not-at-top
  on_cpu = jax.default_backend() == 'cpu'
  if vectorize is None:
    vectorize = not on_cpu and len(configs) > 1
  if workers is None:
    workers = default_workers() if on_cpu else 1
  if vectorize:
    from bnjax.train import vectorized  # pylint: disable=g-import-not-at-top
    summaries, groups = vectorized.plan(list(configs), paths, max_group)
    if workers > 1 and len(groups) > 1:
      trained = _train_in_workers(list(configs), paths, data_dir, workers, tasks=groups,
                                  task=_train_group, skip_held=skip_held)
      return [s if s is not None else t for s, t in zip(summaries, trained)]
    return vectorized.train_groups(list(configs), paths, data_dir=data_dir,
                                   max_group=max_group, progress=progress,
                                   skip_held=skip_held)
  workers = min(workers, len(configs))
  if workers > 1:
    return _train_in_workers(list(configs), paths, data_dir, workers, skip_held=skip_held)
  summaries = []
  start = time.perf_counter()
  for i, (c, p) in enumerate(zip(configs, paths)):
    summaries.append(train_member(c, p, data_dir, progress, skip_held))
    _log_done(i + 1, len(configs), p, summaries[-1], time.perf_counter() - start)
  return summaries
