"""What every study binary shares: presets, the sweep runner, run loading, verdicts.

A study's workdir holds ``study.json`` (study name, preset, the run names),
one subfolder per configuration (an ``experiments.train`` workdir), and the
``report.md`` with its PNG plots. Finished configurations are skipped, so a
killed sweep resumes where it stopped; a run folder is reused only when its
stored config equals the requested one (a *stale* run, e.g. after a preset
changed, is refused, or with ``--rerun_stale`` moved to ``stale/`` and
rerun), so a report never mixes old and new runs.
"""

import dataclasses
import functools
import importlib
import math
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from absl import app, flags, logging

from bnjax.train import config as config_lib
from bnjax.train import data, inputs, stopping, sweep
from bnjax.train.config import Config, PARALLEL
from bnjax.train import workdir as workdirs

PRESETS = ('smoke', 'quick', 'standard', 'paper')
# Every study, once: name -> module with ``configs(preset, parallel)`` and
# ``report(workdir)``. The binaries, experiments.report and bnjax-study read it.
STUDIES = {
    'effective_lr': 'bnjax.train.studies.effective_lr',
    'equilibrium': 'bnjax.train.studies.equilibrium',
    'bn_regularization': 'bnjax.train.studies.bn_regularization',
    'teacher_student': 'bnjax.train.studies.teacher_student',
    'rotational': 'bnjax.train.studies.rotational',
    'timescale': 'bnjax.train.studies.timescale',
}


def define_flags(study: str):
  flags.DEFINE_enum('preset', 'quick', PRESETS,
                    'smoke: about a minute (tests); quick: the CPU default, a few-minute '
                    'look with one seed; standard: 3+ seeds per '
                    'cell, sized so that the verdicts can be decided (the four studies in '
                    "about an hour on 2 cores); paper: the seeds' full settings (GPU/TPU).")
  flags.DEFINE_string('workdir', f'runs/{study}', 'Study folder (resumed if it exists).')
  flags.register_validator('workdir', lambda v: bool(v and v.strip()),
                           message='--workdir is empty: name the study folder.')
  flags.DEFINE_string('data_dir', None, 'tfds data dir (default $BNJAX_DATA_DIR).')
  flags.DEFINE_enum('parallel', 'none', PARALLEL, 'Parallel mode of every run.')
  flags.DEFINE_boolean('progress', False, 'Show each run\'s progress bar.')
  flags.DEFINE_boolean('rerun_stale', False,
                       'Move runs whose stored config differs from the preset\'s to '
                       '<workdir>/stale/ and rerun them (default: refuse, listing them).')
  flags.DEFINE_integer('workers', None, 'Worker processes training runs side by side '
                       '(default: one per core on CPU, 1 on GPU/TPU; 1: one after another '
                       'in this process).', lower_bound=1)
  flags.DEFINE_enum('vectorize', 'auto', ['auto', 'on', 'off'],
                    'Train runs that differ only in learning rate, momentum, decay and '
                    'seed as one vmapped program (auto: the study\'s default, on for '
                    'teacher_student; else on for GPU/TPU, off for CPU).')
  flags.DEFINE_string('shard', None, 'i/n: run the i-th of n deterministic parts of the '
                      'sweep (0 <= i < n), e.g. one per task of a Slurm array job into a '
                      'shared --workdir; then --report_only writes the report.')
  flags.DEFINE_boolean('report_only', False, 'Train nothing: write the report from the '
                       'runs already finished in --workdir, listing the missing ones.')


def fail(message: str, code: int = 1):
  """A binary's end on an error that is not a bad flag: one ``error:`` line on
  stderr, exit ``code``, no traceback and no usage text (nor what background
  threads of a failed write, e.g. orbax's asyncio futures, report as the
  process ends)."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  std_logging.getLogger('asyncio').disabled = True
  sys.unraisablehook = lambda unraisable: None
  sys.exit(code)


def quiet_logging():
  """WARNING-level absl logging unless --verbosity was given (orbax logs each save)."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


@dataclasses.dataclass
class Run:
  """One finished configuration: its config, summary and metric lines."""
  name: str
  config: dict
  summary: dict
  metrics: list

  @property
  def test_error(self) -> float:
    return 1.0 - self.summary['test_accuracy']

  def late_test_error(self, start: float) -> float:
    """Mean test error over the evaluations logged after fraction ``start`` of
    training (``eval_every``), with the final evaluation; the final test error
    alone when none was logged there. Averaging evaluations reduces the noise
    of a single iterate at a constant learning rate."""
    steps, accuracy = self.series('test_accuracy')
    late = accuracy[steps > start * self.summary['steps']]
    if steps.size and steps[-1] == self.summary['steps']:
      return float(np.mean(1.0 - late))
    return float(np.mean(np.append(1.0 - late, self.test_error)))

  def as_config(self) -> Config:
    """The run's :class:`bnjax.train.config.Config` (older config records upgraded)."""
    stored = config_lib.upgrade_record(self.config)
    return Config(**{f.name: stored[f.name] for f in dataclasses.fields(Config)})

  def series(self, key: str):
    """``(steps, values)`` of one metrics.jsonl field."""
    lines = [l for l in self.metrics if key in l]
    values = [np.nan if l[key] is None else l[key] for l in lines]  # null: non-finite
    return np.array([l['step'] for l in lines]), np.array(values, float)

  def angle_sq_series(self, layer: str):
    """``(steps, squared angle per step)`` of a layer: the window mean over its live
    units (``angular_update_sq``), or for runs logged before that metric existed
    the square of the logged step's mean angle."""
    if f'angular_update_sq/{layer}' in self.metrics[-1]:
      return self.series(f'angular_update_sq/{layer}')
    steps, angle = self.series(f'angular_update/{layer}')
    return steps, np.square(angle)


def unshuffled_batches(config: Config, split: str, batch_size: int):
  """``(split arrays, unshuffled Batches)`` of a run's data, normalized as it trained."""
  splits = inputs.load_data(config)
  mean, std = data.normalization_stats(splits['train'].x)
  arrays = splits[split]
  return arrays, data.Batches(arrays, min(batch_size, len(arrays)), seed=0, shuffle=False,
                              mean=mean, std=std)


def seeded(name: str, seed: int) -> str:
  """The run name of ``name`` at ``seed``: ``name`` itself for seed 0, else
  ``<name>_seed<seed>``."""
  return name + (f'_seed{seed}' if seed else '')


def seeds_of(runs: Dict[str, Run], arm) -> Dict[int, Run]:
  """``{seed: run}`` of one arm: the runs named ``seeded(arm, seed)``, or
  ``arm(seed)`` when ``arm`` is a callable from seed to run name."""
  name_of = arm if callable(arm) else functools.partial(seeded, arm)
  return {r.config['seed']: r for n, r in runs.items() if n == name_of(r.config['seed'])}


def scheduled_learning_rates(run: Run) -> np.ndarray:
  """The learning rate of every step of ``run`` (index t: step t + 1), from its
  config's schedule (:func:`bnjax.train.programs.learning_rate_schedule`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from bnjax.train import programs  # pylint: disable=g-import-not-at-top
  lr = programs.learning_rate_schedule(run.as_config())
  steps = np.arange(run.summary['steps'])
  if not callable(lr):
    return np.full(steps.shape, float(lr))
  return np.asarray(jax.vmap(lr)(steps), float)


class StaleRunsError(ValueError):
  """Run folders of a study hold other configs than the ones requested."""


def stale_runs(workdir, configs: Dict[str, Config]) -> Dict[str, dict]:
  """``{name: {field: (stored, wanted)}}`` of the run folders holding another config."""
  stale = {}
  for name, config in configs.items():
    stored = workdirs.read_json(pathlib.Path(workdir) / name / workdirs.CONFIG)
    if stored is not None:
      diff = workdirs.config_differences(stored, config_lib.record(config),
                                         Config.NON_RESULT_FIELDS)
      if diff:
        stale[name] = diff
  return stale


def parse_shard(value: Optional[str]) -> Optional[Tuple[int, int]]:
  """``'i/n'`` as ``(i, n)`` with ``0 <= i < n``; ValueError naming ``--shard`` otherwise."""
  if value is None:
    return None
  match = re.fullmatch(r'(\d+)/(\d+)', value.strip())
  if not match or not int(match[1]) < int(match[2]):
    raise ValueError(f'--shard: expected i/n with 0 <= i < n (e.g. 0/4), got {value!r}')
  return int(match[1]), int(match[2])


def shard_of(names, shard: Optional[Tuple[int, int]]) -> list:
  """The sorted run names of shard ``(i, n)``: every n-th, starting at the i-th."""
  names = sorted(names)
  return names if shard is None else names[shard[0]::shard[1]]


def run_sweep(study: str, preset: str, configs: Dict[str, Config], workdir,
              *, data_dir: Optional[str] = None, progress: bool = False,
              rerun_stale: bool = False, workers: Optional[int] = None,
              vectorize: Optional[bool] = None,
              shard: Optional[Tuple[int, int]] = None) -> Dict[str, Run]:
  """Trains every configuration not yet finished; returns the finished ones as :class:`Run`.

  A run folder whose stored config differs from the requested one raises
  :class:`StaleRunsError` before any training, or with ``rerun_stale`` is
  moved to ``<workdir>/stale/<name>-<time>`` and rerun. A run that diverges
  is recorded as diverged (its ``summary.json``) and the sweep goes on, and so
  does it past a run another live process holds (another shard, or a second
  process on the folder: ``skip_held``). The runs go through
  :func:`bnjax.train.sweep.train_many` (``workers``, ``vectorize``);
  ``shard=(i, n)`` trains only that part of the runs (:func:`shard_of`; none
  when ``i`` is past the number of runs).
  """
  workdir = pathlib.Path(workdir)
  for config in configs.values():
    config.validate()
  meta_path = workdir / 'study.json'
  old = study_meta(workdir) if meta_path.exists() else None
  if old is not None and (old['study'], old.get('preset')) != (study, preset):
    raise ValueError(f'{workdir} holds study {old["study"]!r} preset {old.get("preset")!r}; '
                     f'use another --workdir for {study!r} preset {preset!r}.')
  stale = stale_runs(workdir, configs)
  if stale and not rerun_stale:
    lines = [f'  {name}: ' + '; '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in diff.items())
             for name, diff in sorted(stale.items())]
    raise StaleRunsError(
        f'{len(stale)} run(s) in {workdir} hold another config than the preset asks '
        f'for:\n' + '\n'.join(lines) + '\nRerun with --rerun_stale to move them to '
        f'{workdir}/stale/ and train them again, or use another --workdir.')
  workdir.mkdir(parents=True, exist_ok=True)
  for name in sorted(stale):
    target = workdir / 'stale' / f'{name}-{int(time.time())}'
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(workdir / name), str(target))
    logging.warning('moved stale run %s to %s', name, target)
  meta = {'study': study, 'preset': preset, 'runs': sorted(configs),
          'configs': {name: config_lib.record(c) for name, c in configs.items()}}
  workdirs.write_json_atomic(meta_path, meta)
  names = shard_of(configs, shard)
  if names:
    sweep.train_many([configs[n] for n in names], [workdir / n for n in names],
                     data_dir=data_dir, workers=workers, vectorize=vectorize,
                     progress=progress, skip_held=True)
  return load_runs(workdir)


def load_runs(workdir) -> Dict[str, Run]:
  """Every finished run listed in ``study.json`` whose config is the listed one.

  Diverged and unfinished runs are left out, and so is a run whose summary's
  config differs from the one ``study.json`` records for it (a sweep trains such
  a run again: :func:`bnjax.train.loop.answered`).
  """
  workdir = pathlib.Path(workdir)
  meta = study_meta(workdir)
  wanted = meta.get('configs', {})
  runs = {}
  for name in meta['runs']:
    folder = workdir / name
    summary = workdirs.read_json(folder / workdirs.SUMMARY)
    if not isinstance(summary, dict) or summary.get('status', 'finished') != 'finished':
      continue  # (summaries written before the status field are finished ones)
    if not isinstance(summary.get('config'), dict) or (
        name in wanted and workdirs.config_differences(
            summary['config'], wanted[name], Config.NON_RESULT_FIELDS)):
      continue
    runs[name] = Run(name, summary['config'], summary, workdirs.read_metrics(folder))
  return runs


def study_meta(workdir) -> dict:
  """``study.json`` of a study folder, checked: a JSON object naming its ``study``
  (a str) and its ``runs`` (a list of names).

  Raises FileNotFoundError when there is none and ValueError naming the file and
  what is wrong otherwise.
  """
  path = pathlib.Path(workdir) / 'study.json'
  meta = workdirs.read_json(path)
  if meta is None:
    raise FileNotFoundError(f'{workdir} holds no study (no study.json); run the study '
                            f'binary with this --workdir first.')
  if not isinstance(meta, dict):
    problem = f'a JSON {type(meta).__name__}, not an object'
  elif not isinstance(meta.get('study'), str):
    problem = 'no study name ("study")'
  elif not isinstance(meta.get('runs'), list) or not all(
      isinstance(r, str) for r in meta['runs']):
    problem = 'no list of run names ("runs")'
  else:
    return meta
  raise workdirs.DamagedFileError(
      f'{path} is not a study record ({problem}); it was not written by bnjax or was '
      f'damaged. Move it away and rerun the study to rewrite it.')


def load_study(workdir):
  """``(meta, runs)``: ``study.json`` and every finished run of a study folder."""
  return study_meta(workdir), load_runs(workdir)


GROUPINGS = ('anti-diagonals', 'rows', 'columns', 'diagonals')


def pooled_spread(grid: np.ndarray, grouping: str) -> float:
  r"""The pooled within-group standard deviation of a square grid's cells.

  .. math::
    s_p = \sqrt{\frac{\sum_g \sum_{c \in g} (x_c - \bar x_g)^2}{\sum_g (n_g - 1)}}

  over the groups ``g`` of ``grouping``: ``'anti-diagonals'`` (``i + j``
  constant: one value of lr^p * lambda on the effective-LR grids), ``'rows'``
  (``i``), ``'columns'`` (``j``) or ``'diagonals'`` (``i - j``). NaN cells are
  left out and groups of one cell add nothing. Pooling the unbiased
  variances (one-way ANOVA's within-group mean square) makes the spreads of
  groupings with different group sizes comparable: under pure noise each
  estimates the noise's variance.

  Args:
    grid: an ``(n, n)`` array.
    grouping: one of :data:`GROUPINGS`.

  Returns:
    ``s_p`` (NaN when no group has two cells).

  Example:
    >>> import numpy as np
    >>> from bnjax.train.studies import study
    >>> grid = np.add.outer(np.arange(3.), np.arange(3.))   # constant on i + j
    >>> study.pooled_spread(grid, 'anti-diagonals'), round(study.pooled_spread(grid, 'rows'), 4)
    (0.0, 1.0)

  References:
    Fisher, "Statistical Methods for Research Workers", 1925 (analysis of
    variance: the within-group mean square).
  """
  grid = np.asarray(grid, float)
  n = grid.shape[0]
  if grid.ndim != 2 or grid.shape != (n, n):
    raise ValueError(f'grid must be square, got shape {grid.shape}.')
  key = {'anti-diagonals': lambda i, j: i + j, 'rows': lambda i, j: i,
         'columns': lambda i, j: j, 'diagonals': lambda i, j: i - j}
  if grouping not in key:
    raise ValueError(f'grouping must be one of {GROUPINGS}, got {grouping!r}.')
  groups = {}
  for i in range(n):
    for j in range(n):
      if not np.isnan(grid[i, j]):
        groups.setdefault(key[grouping](i, j), []).append(grid[i, j])
  squares = sum(float(np.sum((np.array(g) - np.mean(g)) ** 2)) for g in groups.values())
  dof = sum(len(g) - 1 for g in groups.values())
  return math.sqrt(squares / dof) if dof else float('nan')


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (reports are written headless)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def finished_line(meta: dict, runs: dict) -> str:
  """``Preset `quick`: 9 of 9 runs finished.``, naming the missing runs if any."""
  line = f'Preset `{meta["preset"]}`: {len(runs)} of {len(meta["runs"])} runs finished.'
  missing = [name for name in meta['runs'] if name not in runs]
  if missing:
    shown = ', '.join(f'`{name}`' for name in missing[:20])
    more = f' and {len(missing) - 20} more' if len(missing) > 20 else ''
    line += (f' Missing (unfinished, diverged or not yet run): {shown}{more}; the '
             'verdicts below use only the finished runs.')
  return line


def each_run(runs: dict, describe: Callable[[dict, dict], str]) -> str:
  """`` Each run: <describe(config, summary)>`` of any finished run ('' when none)."""
  run = next(iter(runs.values()), None)
  return '' if run is None else f' Each run: {describe(run.config, run.summary)}'


def label_axes(axes, xlabel: str, legend: bool = True):
  """The same x label (and a small legend) on every axis."""
  for ax in np.ravel(axes):
    ax.set_xlabel(xlabel)
    if legend:
      ax.legend(fontsize=7)


def provenance() -> str:
  """What produced a report: git commit, library versions, machine."""
  import platform  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import flax, jax, jaxlib, optax  # pylint: disable=g-import-not-at-top,multiple-imports
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True, check=True, cwd=pathlib.Path(__file__).parent
                            ).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True, check=True,
                           cwd=pathlib.Path(__file__).parent).stdout.strip()
    commit += ' (with uncommitted changes)' if dirty else ''
  except (OSError, subprocess.CalledProcessError):
    commit = 'unknown (not a git checkout)'
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return (f'git {commit}; jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax '
          f'{flax.__version__}, optax {optax.__version__}; {jax.device_count()} x '
          f'{device.device_kind} ({device.platform}); CPU {cpu}, '
          f'{len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()} '
          f'cores.')


def write_report(workdir, title: str, sections: list, found=None) -> pathlib.Path:
  """Writes ``report.md`` (atomically) from ``[(heading, markdown), ...]``, a
  provenance line, and ``found`` (:class:`bnjax.train.studies.verdicts.Verdict` list) as
  ``verdicts.json``."""
  from bnjax.train.studies import verdicts  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / 'report.md'
  if found is not None:
    verdicts.write(workdir, found)
  sections = list(sections) + [('Provenance', f'Produced by {provenance()}')]
  body = [f'# {title}', '']
  for heading, text in sections:
    body += [f'## {heading}', '', text.strip(), '']
  tmp = path.with_name('.report.md.tmp')
  tmp.write_text('\n'.join(body))
  tmp.replace(path)
  return path


def savefig(fig, workdir, name: str) -> str:
  """Saves a matplotlib figure as ``<name>.png`` in the workdir; returns the name."""
  path = pathlib.Path(workdir) / f'{name}.png'
  fig.savefig(path, dpi=90, bbox_inches='tight')
  pyplot().close(fig)
  return path.name


def check_ready(configs: Dict[str, Config], data_dir: Optional[str]) -> None:
  """Before a sweep starts: the plotting dependency imports and every dataset loads.

  Raises ``absl.app.UsageError`` naming what is missing.
  """
  try:
    pyplot()
  except ImportError as e:
    raise app.UsageError(f'the reports need matplotlib ({e}); install it with '
                         f"pip install 'bnjax[plot]' before running a study.")
  for config in {c.dataset: c for c in configs.values()}.values():
    if config.dataset != 'teacher_student':
      try:
        inputs.load_data(config, data_dir)
      except (OSError, ValueError) as e:
        raise app.UsageError(f'--data_dir: {config.dataset} could not be loaded: {e}')


def main_for(study: str, configs: Callable[[str, str], Dict[str, Config]],
             report: Callable, vectorize_default: Optional[bool] = None) -> Callable:
  """The ``main`` of a study binary: run the preset's sweep, then write the report.
  ``--vectorize=auto`` means ``vectorize_default`` (the study's ``VECTORIZE``;
  ``None``: :func:`bnjax.train.sweep.train_many` decides by platform)."""
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    quiet_logging()
    FLAGS = flags.FLAGS
    try:
      shard = parse_shard(FLAGS.shard)
    except ValueError as e:
      raise app.UsageError(str(e))
    if FLAGS.report_only:
      if shard is not None:
        raise app.UsageError('--report_only: writes the whole study\'s report; drop --shard')
      try:
        meta, runs = load_study(FLAGS.workdir)
      except FileNotFoundError as e:
        raise app.UsageError(f'--workdir: {e}')
      except workdirs.DamagedFileError as e:
        fail(str(e))
      check_ready({}, FLAGS.data_dir)
      print(f'{len(runs)} of {len(meta["runs"])} runs finished; report: '
            f'{report(FLAGS.workdir)}')
      return
    wanted = configs(FLAGS.preset, FLAGS.parallel)
    if (pathlib.Path(FLAGS.workdir) / 'study.json').exists():
      try:
        meta = study_meta(FLAGS.workdir)
      except ValueError as e:
        raise app.UsageError(f'--workdir: {e}')
      if (meta['study'], meta.get('preset')) != (study, FLAGS.preset):
        raise app.UsageError(f'--workdir: {FLAGS.workdir} holds study {meta["study"]!r} preset '
                             f'{meta.get("preset")!r}; use another folder for {study!r} preset '
                             f'{FLAGS.preset!r}.')
    check_ready(wanted, FLAGS.data_dir)
    names = shard_of(wanted, shard)
    if not names:
      print(f'shard {FLAGS.shard} has no runs: the study has {len(wanted)} and shard i/n '
            f'takes every n-th from the i-th. Nothing to train.')
      return
    print(f'{study} --preset={FLAGS.preset}: {workload(wanted)}', flush=True)
    vectorize = {'auto': vectorize_default, 'on': True, 'off': False}[FLAGS.vectorize]
    paths = [pathlib.Path(FLAGS.workdir) / name for name in names]
    try:
      with stopping.stop_on_signals():
        runs = run_sweep(study, FLAGS.preset, wanted, FLAGS.workdir,
                         data_dir=FLAGS.data_dir, progress=FLAGS.progress,
                         rerun_stale=FLAGS.rerun_stale, workers=FLAGS.workers,
                         vectorize=vectorize, shard=shard)
        held = [n for n, p in zip(names, paths)
                if n not in runs and isinstance(stopping.run_state(p), int)]
        if held:
          shown = ', '.join(held[:10]) + (f' and {len(held) - 10} more' if len(held) > 10
                                          else '')
          print(f'{len(held)} run(s) are held by other processes: {shown}. When they are '
                f'done: --report_only --workdir={FLAGS.workdir}')
          return
        if shard is not None and len(runs) < len(wanted):
          print(f'shard {FLAGS.shard} done; {len(runs)} of {len(wanted)} runs of the study '
                f'finished. When every shard is done: --report_only '
                f'--workdir={FLAGS.workdir}')
          return
        print(f'{len(runs)} runs; report: {report(FLAGS.workdir)}')
    except stopping.Stopped as e:
      print(stopping.where_runs_stand(paths, e), file=sys.stderr)
      sys.exit(e.exit_code)
    except StaleRunsError as e:
      raise app.UsageError(str(e))
    except workdirs.DamagedFileError as e:
      fail(str(e))
    except Exception as e:  # pylint: disable=broad-except
      if workdirs.is_disk_full(e):
        fail(workdirs.disk_full_message(FLAGS.workdir, e))
      raise
  return main


def workload(configs: Dict[str, Config], per_second: float = 5000.0) -> str:
  """One line of what a sweep trains: runs, optimizer steps and training examples
  per dataset and model, and the hours that takes at ``per_second`` examples/s
  (an example rate: the line says so; scale it by your device's measured rate)."""
  images, steps = {}, 0
  for c in configs.values():
    key = f'{c.model} on {c.dataset}'
    images[key] = images.get(key, 0) + c.total_steps() * c.batch_size
    steps += c.total_steps()
  total = sum(images.values())
  parts = ', '.join(f'{n / 1e6:.3g} M examples of {k}' for k, n in sorted(images.items()))
  return (f'{len(configs)} runs: {steps:,} optimizer steps, {parts}; at {per_second:,.0f} '
          f'training examples/s (an example rate) {total / per_second / 3600:.2g} device-hours')


def study_module(name: str):
  """The module of a registered study (it has ``configs`` and ``report``)."""
  if name not in STUDIES:
    raise ValueError(f'unknown study {name!r}; the studies are {sorted(STUDIES)}.')
  return importlib.import_module(STUDIES[name])


def run_study(name: str, argv=None) -> None:
  """Runs the binary of study ``name``: its flags, sweep and report."""
  define_flags(name)
  flags.adopt_module_key_flags(sys.modules[__name__])  # --help lists them
  module = study_module(name)
  app.run(main_for(name, module.configs, module.report, getattr(module, 'VECTORIZE', None)),
          argv=argv)
