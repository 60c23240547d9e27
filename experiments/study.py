"""What every study binary shares: presets, the sweep runner, run loading, verdicts.

A study's workdir holds ``study.json`` (study name, preset, the run names),
one subfolder per configuration (an ``experiments.train`` workdir), and the
``report.md`` with its PNG plots. Finished configurations are skipped, so a
killed sweep resumes where it stopped.
"""

import dataclasses
import json
import pathlib
from typing import Callable, Dict, Optional

import numpy as np
from absl import app, flags, logging

from bnjax import train

PRESETS = ('smoke', 'quick', 'paper')


def define_flags(study: str):
  flags.DEFINE_enum('preset', 'quick', PRESETS,
                    'smoke: about a minute (tests); quick: the CPU default; paper: the '
                    "seeds' full settings (GPU/TPU).")
  flags.DEFINE_string('workdir', f'runs/{study}', 'Study folder (resumed if it exists).')
  flags.DEFINE_string('data_dir', None, 'tfds data dir (default $BNJAX_DATA_DIR).')
  flags.DEFINE_enum('parallel', 'none', train.PARALLEL, 'Parallel mode of every run.')
  flags.DEFINE_boolean('progress', False, 'Show each run\'s progress bar.')


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

  def series(self, key: str):
    """``(steps, values)`` of one metrics.jsonl field."""
    lines = [l for l in self.metrics if key in l]
    return np.array([l['step'] for l in lines]), np.array([l[key] for l in lines])


def run_sweep(study: str, preset: str, configs: Dict[str, train.Config], workdir,
              *, data_dir: Optional[str] = None, progress: bool = False) -> Dict[str, Run]:
  """Trains every configuration not yet finished; returns all as :class:`Run`."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  meta = {'study': study, 'preset': preset, 'runs': sorted(configs)}
  meta_path = workdir / 'study.json'
  if meta_path.exists():
    old = json.loads(meta_path.read_text())
    if (old['study'], old['preset']) != (study, preset):
      raise ValueError(f'{workdir} holds study {old["study"]!r} preset {old["preset"]!r}; '
                       f'use another --workdir for {study!r} preset {preset!r}.')
  train.write_json_atomic(meta_path, meta)
  for i, (name, config) in enumerate(sorted(configs.items())):
    done = (workdir / name / 'summary.json').exists()
    logging.warning('[%d/%d] %s%s', i + 1, len(configs), name, ' (done)' if done else '')
    if not done:
      train.train(config, workdir / name, data_dir=data_dir, progress=progress)
  return load_runs(workdir)


def load_runs(workdir) -> Dict[str, Run]:
  """Every finished run listed in ``study.json``."""
  workdir = pathlib.Path(workdir)
  meta = json.loads((workdir / 'study.json').read_text())
  runs = {}
  for name in meta['runs']:
    folder = workdir / name
    if not (folder / 'summary.json').exists():
      continue
    summary = json.loads((folder / 'summary.json').read_text())
    lines = [json.loads(l) for l in (folder / 'metrics.jsonl').read_text().splitlines()
             if l.strip()]
    runs[name] = Run(name, summary['config'], summary, lines)
  return runs


def study_meta(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / 'study.json').read_text())


def load_study(workdir):
  """``(meta, runs)``: ``study.json`` and every finished run of a study folder."""
  return study_meta(workdir), load_runs(workdir)


def line_spread(grid: np.ndarray):
  """Spread of a square grid along its anti-diagonals against across them.

  ``grid[i, j]`` for log-spaced rows i and columns j chosen so that every
  anti-diagonal (``i + j`` constant) is one value of a combined quantity
  (e.g. effective learning rate). Returns ``(along, across)``: the mean
  standard deviation within anti-diagonals of two or more cells, and the
  standard deviation of the anti-diagonal means. NaN cells are ignored.
  """
  grid = np.asarray(grid, float)
  n = grid.shape[0]
  if grid.shape != (n, n):
    raise ValueError(f'grid must be square, got shape {grid.shape}.')
  lines = [np.array([grid[i, k - i] for i in range(n) if 0 <= k - i < n])
           for k in range(2 * n - 1)]
  lines = [l[~np.isnan(l)] for l in lines]
  within = [np.std(l) for l in lines if len(l) >= 2]
  means = [np.mean(l) for l in lines if len(l)]
  return float(np.mean(within)), float(np.std(means))


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (reports are written headless)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def finished_line(meta: dict, runs: dict) -> str:
  """``Preset `quick`: 9 of 9 runs finished.``"""
  return f'Preset `{meta["preset"]}`: {len(runs)} of {len(meta["runs"])} runs finished.'


def label_axes(axes, xlabel: str, legend: bool = True):
  """The same x label (and a small legend) on every axis."""
  for ax in np.ravel(axes):
    ax.set_xlabel(xlabel)
    if legend:
      ax.legend(fontsize=7)


def verdict(holds: bool, claim: str, numbers: str) -> str:
  """One report line: ``**Verdict: holds** -- claim (numbers)``."""
  return f'**Verdict: {"holds" if holds else "does not hold"}**: {claim} ({numbers}).'


def write_report(workdir, title: str, sections: list) -> pathlib.Path:
  """Writes ``report.md`` (atomically) from ``[(heading, markdown), ...]``."""
  path = pathlib.Path(workdir) / 'report.md'
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


def main_for(study: str, configs: Callable[[str, str], Dict[str, train.Config]],
             report: Callable) -> Callable:
  """The ``main`` of a study binary: run the preset's sweep, then write the report."""
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    quiet_logging()
    FLAGS = flags.FLAGS
    runs = run_sweep(study, FLAGS.preset, configs(FLAGS.preset, FLAGS.parallel),
                     FLAGS.workdir, data_dir=FLAGS.data_dir, progress=FLAGS.progress)
    print(f'{len(runs)} runs; report: {report(FLAGS.workdir)}')
  return main


REPORTERS: Dict[str, Callable] = {}


def reporter(study: str):
  """Registers ``fn(workdir) -> report path`` as the report of ``study``."""
  def register(fn):
    REPORTERS[study] = fn
    return fn
  return register
