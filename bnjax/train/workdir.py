"""A training run's folder: config record, lock, metrics file, checkpoints, strict JSON.

What a workdir guarantees (tested in ``tests/test_faults.py``):

* **Config record.** ``config.json`` holds the full config of the run. A
  call with a config that differs in a field that changes the result is
  refused before any work (:class:`ConfigMismatchError` names each field,
  old and new value); fields that only change checkpoint spacing or
  evaluation batching (``train.Config.NON_RESULT_FIELDS``) may differ.
* **Lock.** One process per workdir: an exclusive ``flock`` on ``.lock``
  (released by the kernel when its holder dies, so a stale lock left by a
  killed process is simply taken over). A second process fails at once with
  :class:`WorkdirLockedError` naming the holder's pid.
* **Metrics.** ``metrics.jsonl`` is rewritten on resume to the valid lines of
  the steps up to the restored checkpoint, each step once (a torn last line
  or lines after the checkpoint are dropped and redone), then appended to
  one whole line per write.
* **Checkpoints.** orbax, kept two deep. A latest checkpoint that fails to
  restore is moved to ``checkpoints_damaged/`` with one warning naming its
  step, and the run resumes from the newest intact one.
* **Strict JSON.** Every JSON file and line is valid JSON: non-finite
  numbers are written as ``null``; summaries and records are written to a
  temporary file and renamed (atomic).
"""

import contextlib
import errno
import fcntl
import gc
import io
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Iterable, Optional

import numpy as np
import orbax.checkpoint as ocp
from absl import logging

__all__ = [
    'Checkpoints',
    'ConfigMismatchError',
    'DamagedFileError',
    'MetricsLog',
    'WorkdirLockedError',
    'folder',
    'locked',
    'summary_problem',
    'read_metrics',
    'write_json_atomic',
]

CONFIG = 'config.json'
SUMMARY = 'summary.json'
METRICS = 'metrics.jsonl'
PROGRESS = 'progress.json'
LOCK = '.lock'
CHECKPOINTS = 'checkpoints'
DAMAGED = 'checkpoints_damaged'


class ConfigMismatchError(ValueError):
  """The workdir holds a run of another configuration.

  Raised before any work; the message names each differing field, old and
  new value.

  Example:
    >>> import tempfile
    >>> from bnjax.train import workdir
    >>> d = tempfile.mkdtemp()
    >>> workdir.write_json_atomic(f'{d}/config.json', {'seed': 0})
    >>> workdir.check_config(d, {'seed': 1})
    Traceback (most recent call last):
    ...
    bnjax.train.workdir.ConfigMismatchError: ... (seed: was 0, now 1)....

  References:
    POSIX ``rename(2)`` (the record is written atomically, so it is whole).
  """


class DamagedFileError(ValueError):
  """A run's or study's file is not what bnjax wrote: the message names the file
  (and line) and what is wrong.

  Example:
    >>> import tempfile
    >>> from bnjax.train import workdir
    >>> path = tempfile.mkdtemp() + '/summary.json'
    >>> _ = open(path, 'w').write('{"status": ')
    >>> workdir.read_json(path)
    Traceback (most recent call last):
    ...
    bnjax.train.workdir.DamagedFileError: ...summary.json is not valid JSON ...
  """


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir's lock.

  Example:
    >>> import tempfile
    >>> from bnjax.train import workdir
    >>> d = tempfile.mkdtemp()
    >>> with workdir.locked(d):
    ...   with workdir.locked(d):
    ...     pass
    Traceback (most recent call last):
    ...
    bnjax.train.workdir.WorkdirLockedError: ...

  References:
    POSIX ``flock(2)``: the kernel releases the lock when its holder dies.
  """


# ------------------------------------------------------------ strict JSON


def finite_or_none(obj):
  """``obj`` with every non-finite float (and numpy scalar) replaced by ``None``."""
  if isinstance(obj, dict):
    return {k: finite_or_none(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_or_none(v) for v in obj]
  if isinstance(obj, (np.floating, np.integer, np.bool_)):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def dumps(obj, **kwargs) -> str:
  """``json.dumps`` that never writes NaN/Infinity (they become ``null``)."""
  return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def write_json_atomic(path, obj) -> None:
  """Writes strict JSON to a temp file in the same folder, then renames it over ``path``.

  Non-finite numbers become ``null``; a reader sees the old or the new file,
  never a torn one.

  Args:
    path: the destination file.
    obj: a JSON-serializable object (numpy scalars and arrays allowed).

  Returns:
    None.

  Example:
    >>> import json, tempfile
    >>> from bnjax.train import workdir
    >>> path = tempfile.mkdtemp() + '/summary.json'
    >>> workdir.write_json_atomic(path, {'loss': float('nan'), 'step': 3})
    >>> json.load(open(path))
    {'loss': None, 'step': 3}

  References:
    RFC 8259 (JSON has no NaN or Infinity); POSIX ``rename(2)`` (atomic).
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
  try:
    with open(tmp, 'w') as f:
      f.write(dumps(obj, indent=2, sort_keys=True))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def read_json(path) -> Optional[Any]:
  """The JSON in ``path``, or ``None`` when the file does not exist."""
  path = pathlib.Path(path)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DamagedFileError(f'{path} is not valid JSON ({e}); it was not written by bnjax '
                           f'or was damaged. Move it away to start the run afresh.') from None


# ---------------------------------------------------------- config record


def config_differences(stored: dict, wanted: dict, ignore: Iterable[str] = ()) -> dict:
  """``{field: (stored, wanted)}`` for every field that differs, outside ``ignore``.

  Records of an older format, on either side (a run's, or the one a study
  recorded for it), are compared as they meant
  (:func:`bnjax.train.config.upgrade_record`).
  """
  from bnjax.train.config import upgrade_record  # pylint: disable=g-import-not-at-top
  stored, wanted = upgrade_record(stored), upgrade_record(wanted)
  ignore = set(ignore)
  keys = (set(stored) | set(wanted)) - ignore
  return {k: (stored.get(k), wanted.get(k)) for k in sorted(keys)
          if stored.get(k) != wanted.get(k)}


def check_config(workdir, wanted: dict, ignore: Iterable[str] = ()) -> None:
  """Raises :class:`ConfigMismatchError` when ``workdir`` holds another config.

  Reads only: a workdir without ``config.json`` (or no workdir) passes.
  """
  stored = read_json(pathlib.Path(workdir) / CONFIG)
  if stored is None:
    return
  diff = config_differences(stored, wanted, ignore)
  if diff:
    fields = '; '.join(f'{k}: was {a!r}, now {b!r}' for k, (a, b) in diff.items())
    raise ConfigMismatchError(
        f'{workdir} holds a run with another config ({fields}). Use another workdir, '
        f'or rerun with the stored values.')


def folder(workdir, name: str = 'workdir') -> pathlib.Path:
  """``workdir`` as a path, refusing what names no folder of its own.

  Raises a TypeError for a value that is not a ``str`` or ``os.PathLike``, and a
  ValueError for an empty string (which would write the run into the current
  directory).

  Example:
    >>> from bnjax.train import workdir
    >>> workdir.folder('runs/a').name
    'a'
  """
  if not isinstance(workdir, (str, os.PathLike)):
    raise TypeError(f'{name} must be a folder (str or path), got {type(workdir).__name__}.')
  if not os.fspath(workdir).strip():
    raise ValueError(f'{name} is empty: name the folder the run writes into.')
  return pathlib.Path(workdir)


# A finished summary holds these (RunFiles.finish), beside the test metrics.
FINISHED_KEYS = ('status', 'steps', 'wall_time_s', 'test_loss', 'config')


def summary_problem(summary, wanted: dict, ignore: Iterable[str] = ()) -> Optional[str]:
  """Why ``summary`` does not answer for the run of ``wanted``; ``None`` when it does.

  A summary answers only when it is a JSON object with the status ``'finished'``
  (every key of :data:`FINISHED_KEYS`, a positive step count, finite test
  metrics) or ``'diverged'``, recorded for exactly this config (outside
  ``ignore``).

  Args:
    summary: the parsed ``summary.json``.
    wanted: the run's config record.
    ignore: config fields that do not change the run's result.

  Returns:
    A short reason, or ``None``.

  Example:
    >>> from bnjax.train import workdir
    >>> wanted = {'seed': 0}
    >>> workdir.summary_problem({'status': 'running', 'config': wanted}, wanted)
    "status 'running'"
    >>> workdir.summary_problem({'status': 'diverged', 'config': {'seed': 1}}, wanted)
    'another config (seed)'
  """
  if not isinstance(summary, dict):
    return 'not a JSON object'
  status = summary.get('status')
  if status not in ('finished', 'diverged'):
    return f'status {status!r}'
  if not isinstance(summary.get('config'), dict):
    return 'no config'
  diff = config_differences(summary['config'], wanted, ignore)
  if diff:
    return f'another config ({", ".join(sorted(diff))})'
  if status == 'diverged':
    return None
  missing = [k for k in FINISHED_KEYS if k not in summary]
  if missing:
    return f'no {", ".join(missing)}'
  steps = summary['steps']
  if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
    return f'steps {steps!r}'
  for key in ('test_loss', 'test_accuracy'):
    value = summary.get(key, 0.0)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
      return f'{key} {value!r}'
  return None


# ------------------------------------------------------------------- lock


@contextlib.contextmanager
def locked(workdir, enabled: bool = True):
  """Holds the workdir's exclusive lock for the ``with`` block.

  Raises :class:`WorkdirLockedError` naming the holder's pid when another
  process (or another open of it in this process) holds it. A lock left by
  a killed process is free: the kernel drops it with the process.

  Args:
    workdir: the run's folder (created if missing).
    enabled: ``False`` makes it a no-op (non-main processes of a multi-host
      run).

  Returns:
    A context manager.

  Example:
    >>> import tempfile
    >>> from bnjax.train import workdir
    >>> with workdir.locked(tempfile.mkdtemp()):
    ...   pass

  References:
    POSIX ``flock(2)``.
  """
  if not enabled:
    yield
    return
  path = pathlib.Path(workdir) / LOCK
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or 'unknown'
      raise WorkdirLockedError(
          f'{workdir} is in use by another process (pid {holder}); wait for it to end '
          f'or use another workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


# ---------------------------------------------------------------- metrics


def _valid_lines(path: pathlib.Path, last_step: int) -> list:
  """The lines of steps ``<= last_step`` that parse, each step once (the last copy)."""
  if not path.exists():
    return []
  by_step = {}
  for line in path.read_text(errors='replace').splitlines():
    try:
      record = json.loads(line)
      step = int(record['step'])
    except (ValueError, KeyError, TypeError):
      continue  # a torn line from an interrupted write
    if step <= last_step:
      by_step[step] = line
  return [by_step[s] for s in sorted(by_step)]


class MetricsLog:
  """``metrics.jsonl`` of a run resumed at ``last_step`` (0: a fresh start).

  On opening, the file is rewritten (atomically) to its valid lines of steps
  ``<= last_step``, each step once: a torn last line or lines logged after
  the restored checkpoint are dropped, so the resumed run redoes them once.
  The log keeps the lines it holds; before each write and on closing it checks
  that the file is still the one it wrote (same inode and size) and, when the
  file was deleted, replaced, truncated or appended to by someone else,
  rewrites it from those lines with one warning naming it.

  Args:
    workdir: the run's folder.
    last_step: the step of the restored checkpoint (0: none).
    enabled: ``False`` writes nothing (non-main processes).

  Example:
    >>> import tempfile
    >>> from bnjax.train import workdir
    >>> d = tempfile.mkdtemp()
    >>> log = workdir.MetricsLog(d, last_step=0)
    >>> for step in (4, 8):
    ...   log.write({'step': step})
    >>> log.close()
    >>> workdir.MetricsLog(d, last_step=4).close()  # resumed from step 4
    >>> workdir.read_metrics(d)
    [{'step': 4}]

  References:
    JSON Lines, https://jsonlines.org.
  """

  def __init__(self, workdir, last_step: int, enabled: bool = True):
    self.path = pathlib.Path(workdir) / METRICS
    self.enabled = enabled
    self._file = None
    self._lines: list = []
    if enabled:
      self._lines = [line + '\n' for line in _valid_lines(self.path, last_step)]
      self._rewrite()

  def _rewrite(self) -> None:
    """The file atomically replaced by the lines held, then opened for appending."""
    if self._file is not None:
      self._file.close()
    tmp = self.path.with_name(f'.{self.path.name}.tmp{os.getpid()}')
    tmp.write_text(''.join(self._lines), encoding='utf-8')
    os.replace(tmp, self.path)
    self._file = open(self.path, 'a', encoding='utf-8')
    self._size = sum(len(line.encode('utf-8')) for line in self._lines)

  def _check(self) -> None:
    try:
      on_disk = os.stat(self.path)
    except FileNotFoundError:
      on_disk = None
    mine = os.fstat(self._file.fileno())
    if on_disk is not None and (on_disk.st_ino, on_disk.st_dev) == (
        mine.st_ino, mine.st_dev) and on_disk.st_size == self._size:
      return
    what = ('was deleted' if on_disk is None else
            f'was changed by another writer ({on_disk.st_size} bytes where this run '
            f'wrote {self._size})')
    logging.warning('%s %s while the run trained; rewrote it from the %d lines the run '
                    'holds.', self.path, what, len(self._lines))
    self._rewrite()

  def records(self) -> list:
    """The lines the log holds, as dicts."""
    return [json.loads(line) for line in self._lines]

  def write(self, record: dict) -> None:
    """Appends one line (one ``write`` call, flushed to the OS)."""
    if self._file is not None:
      self._check()
      line = dumps(record) + '\n'
      self._file.write(line)
      self._file.flush()
      self._lines.append(line)
      self._size += len(line.encode('utf-8'))

  def close(self):
    if self._file is not None:
      self._check()
      self._file.close()
      self._file = None


def read_metrics(workdir) -> list:
  """Every line of ``metrics.jsonl`` as a dict (for reports of finished runs).

  Refuses a damaged file, naming it and the line: a line that is not a JSON
  object with an integer ``step``, or a step that is not after the line
  before's (a duplicated line would count its window twice).

  Args:
    workdir: the run's folder.

  Returns:
    A list of dicts, one per logged window, in step order.

  Raises:
    DamagedFileError: the file is missing or damaged (the message names the
      file and line).

  Example:
    >>> import tempfile
    >>> from bnjax.train import workdir
    >>> d = tempfile.mkdtemp()
    >>> log = workdir.MetricsLog(d, last_step=0)
    >>> log.write({'step': 4, 'loss': 0.5}); log.close()
    >>> workdir.read_metrics(d)
    [{'step': 4, 'loss': 0.5}]

  References:
    JSON Lines, https://jsonlines.org.
  """
  path = pathlib.Path(workdir) / METRICS
  if not path.exists():
    raise DamagedFileError(f'{path} is missing: the run\'s metrics are lost. Move the run '
                           f'folder away and rerun to train it again.')
  records = []
  for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
    if not line.strip():
      continue
    problem = None
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      problem = f'not JSON ({e.msg})'
    else:
      step = record.get('step') if isinstance(record, dict) else None
      if not isinstance(step, int) or isinstance(step, bool):
        problem = 'no integer "step"'
      elif records and step <= records[-1]['step']:
        problem = f'step {step} again after step {records[-1]["step"]}'
    if problem is not None:
      raise DamagedFileError(f'{path}, line {number}: {problem}; the file was damaged. Move '
                             f'the run folder away and rerun to train it again.')
    records.append(record)
  return records


# ------------------------------------------------------------ checkpoints


class Checkpoints:
  """orbax checkpoints of a workdir with fallback past damaged ones.

  A checkpoint that fails to restore is moved to ``checkpoints_damaged/``
  (kept, with one warning naming its step) and the next newest is tried. One
  written before a tracked-dynamics field existed (the per-step summaries of
  :func:`bnjax.transforms.track_dynamics`, recomputed every step) restores by
  name with that field at the template's value (:func:`restore_by_name`).

  Args:
    workdir: the run's folder (``checkpoints/`` inside it).
    max_to_keep: how many checkpoints to keep.

  Example:
    >>> import tempfile
    >>> import jax.numpy as jnp
    >>> from bnjax.train import workdir
    >>> ckpt = workdir.Checkpoints(tempfile.mkdtemp())
    >>> ckpt.save(8, {'params': {'w': jnp.ones(2)}})
    >>> state, step = ckpt.restore_latest({'params': {'w': jnp.zeros(2)}})
    >>> step, [float(v) for v in state['params']['w']]
    (8, [1.0, 1.0])

  References:
    orbax-checkpoint ``CheckpointManager``,
    https://orbax.readthedocs.io/en/latest/guides/checkpoint/.
  """

  def __init__(self, workdir, max_to_keep: int = 2):
    self.workdir = pathlib.Path(workdir)
    self.manager = ocp.CheckpointManager(
        (self.workdir / CHECKPOINTS).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def save(self, step: int, state) -> None:
    """Writes the checkpoint of ``step``. A full disk raises one ``OSError``
    (ENOSPC) naming the folder; what orbax's writer threads print about it
    meanwhile (tensorstore's ``RESOURCE_EXHAUSTED``, per thread) is dropped, and
    whatever they print on a save that succeeds is passed on."""
    printed, error = io.StringIO(), None
    with contextlib.redirect_stderr(printed), _absl_to(printed):
      try:
        self.manager.save(step, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        error = e
        if is_disk_full(e):
          gc.collect()  # the writers' failed futures report themselves now, in here
    if error is not None and is_disk_full(error):
      raise OSError(errno.ENOSPC, f'No space left on device: the checkpoint of step '
                                  f'{step} in {self.workdir / CHECKPOINTS} could not be '
                                  f'written') from None
    sys.stderr.write(printed.getvalue())
    if error is not None:
      raise error

  def restore_latest(self, template):
    """``(state, step)`` of the newest checkpoint that restores, or ``(None, None)``."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.manager.restore(step, args=ocp.args.StandardRestore(template)), step
      except Exception as e:  # any failure to read it back is damage
        try:
          raw, renamed = renamed_weight_norm_gains(
              self.manager.restore(step, args=ocp.args.StandardRestore()))
          state, missing = restore_by_name(raw, template)
        except Exception:  # pylint: disable=broad-except
          self._set_aside(step, e)
          continue
        if renamed:
          logging.warning('checkpoint of step %d in %s was written by an earlier bnjax: '
                          'read its %d WeightNorm gains `scale` as flax names them, '
                          '`<layer>/kernel/scale`.', step, self.workdir, renamed)
        if missing:
          logging.warning('checkpoint of step %d in %s has no %s (written by an earlier '
                          'bnjax); restored without, those start from the template.',
                          step, self.workdir, ', '.join(sorted(missing)))
        return state, step
    return None, None

  def _set_aside(self, step: int, error: Exception) -> None:
    target = self.workdir / DAMAGED / f'{step}-{int(time.time())}'
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(self.workdir / CHECKPOINTS / str(step)), str(target))
    self.manager.reload()
    logging.warning('checkpoint of step %d in %s is damaged (%s: %s); moved it to %s and '
                    'fell back to an earlier one.', step, self.workdir,
                    type(error).__name__, str(error).splitlines()[0][:200], target)

  def latest_params(self):
    return self.latest_state()['params']

  def latest_state(self):
    """The newest checkpoint's whole state as saved (nested dicts and lists:
    params, batch statistics, optimizer state), restored without a template."""
    step = self.manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.workdir / CHECKPOINTS}')
    return renamed_weight_norm_gains(
        self.manager.restore(step, args=ocp.args.StandardRestore()))[0]


def renamed_weight_norm_gains(raw):
  """A checkpoint restored without a template, with bnjax's earlier WeightNorm
  gain names read as flax's.

  bnjax before 2026-12-05 named the gain of :class:`bnjax.layers.WeightNorm`
  ``scale``, beside the wrapped layer's ``layer_instance``; flax (and bnjax
  since) name it ``layer_instance/kernel/scale``. A dict holding both
  ``layer_instance`` and ``scale`` is such a module (in the parameters and
  in every optimizer state that mirrors them).

  Returns:
    ``(raw, count)``: the tree with those keys renamed, and how many were.
  """
  count = 0

  def rename(node):
    nonlocal count
    if isinstance(node, dict):
      node = {k: rename(v) for k, v in node.items()}
      if 'layer_instance' in node and 'scale' in node:
        node['layer_instance/kernel/scale'] = node.pop('scale')
        count += 1
    elif isinstance(node, list):
      node = [rename(v) for v in node]
    return node

  return rename(raw), count


def restore_by_name(raw, template, derived=None):
  """``template`` filled from a checkpoint restored without one, leaf by key name.

  Only the fields of ``derived`` (default: those of
  :class:`bnjax.dynamics.LeafDynamics` and :class:`bnjax.dynamics.GradientDynamics`,
  per-step summaries that the next step overwrites) may be missing from
  ``raw``; they keep the template's value. Every other leaf must be there with
  the template's shape.

  Args:
    raw: the checkpoint as orbax restores it without a template (nested dicts
      and lists keyed by field names).
    template: the state to restore into.
    derived: the field names that may be missing.

  Returns:
    ``(state, missing)``: the restored state (each leaf with the template
    leaf's dtype, and its sharding when it has one) and the set of missing
    field names.

  Raises:
    KeyError: a leaf that is not derived is missing.
    ValueError: a leaf's shape differs from the template's, or the checkpoint
      holds leaves the template does not.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from bnjax import dynamics  # pylint: disable=g-import-not-at-top
  if derived is None:
    derived = set(dynamics.LeafDynamics._fields) | set(dynamics.GradientDynamics._fields)
  missing, leaves, filled = set(), [], 0
  flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  for path, leaf in flat:
    node = raw
    for depth in range(1, len(path) + 1):
      name = _last_name(path[:depth])
      try:
        node = node[name]
      except (KeyError, IndexError, TypeError):
        if name not in derived:
          raise KeyError(f'{jax.tree_util.keystr(path)} is not in the checkpoint') from None
        missing.add(name)
        node, filled = leaf, filled + 1
        break
    if np.shape(node) != np.shape(leaf):
      raise ValueError(f'{jax.tree_util.keystr(path)} has shape {np.shape(node)} in the '
                       f'checkpoint, {np.shape(leaf)} in the run')
    value = jax.numpy.asarray(node, dtype=getattr(leaf, 'dtype', None))
    sharding = getattr(leaf, 'sharding', None)
    leaves.append(jax.device_put(value, sharding) if sharding is not None else value)
  extra = len(jax.tree_util.tree_leaves(raw)) - (len(flat) - filled)
  if extra:
    raise ValueError(f'the checkpoint holds {extra} leaves the run does not')
  return jax.tree_util.tree_unflatten(treedef, leaves), missing


def _last_name(path):
  key = path[-1] if path else None
  return getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', None)))


@contextlib.contextmanager
def _absl_to(stream):
  """absl's log handler writes to ``stream`` inside the block."""
  handler = logging.get_absl_handler().python_handler
  previous = handler.stream
  handler.stream = stream
  try:
    yield
  finally:
    handler.stream = previous


def checkpoint_steps(workdir) -> list:
  """The steps of the checkpoints in ``workdir``, ascending, from the folder names
  alone (orbax names each step's folder by its number)."""
  folder = pathlib.Path(workdir) / CHECKPOINTS
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or an exception it was raised from) is ENOSPC/EDQUOT: an
  ``OSError`` with that errno, or an error whose message says so (tensorstore's
  ``RESOURCE_EXHAUSTED`` under an orbax checkpoint write carries the OS message)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(error) for text in ('No space left on device', 'Disk quota exceeded')):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_message(folder, error: BaseException) -> str:
  """The one line a binary prints when the disk under ``folder`` filled up."""
  first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ''
  return (f'no space left on the device while writing {folder} ({type(error).__name__}: '
          f'{first}). Free some space and rerun the same command: every run resumes from '
          f'its last checkpoint.')
