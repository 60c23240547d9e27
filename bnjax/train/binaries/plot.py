"""``bnjax-plot WORKDIR [WORKDIR ...]``: one PNG of one or more runs, overlaid.

  bnjax-plot runs/demo
  bnjax-plot runs/sgd runs/adamw --output=runs/compare.png

is ``python -m experiments.plot ...`` from a checkout. For each run folder
(``bnjax-train``'s: ``config.json`` and ``metrics.jsonl``; a run still training
is plotted as far as it got): the training loss and the test accuracy (the
training accuracy where no test line was logged), and per scale-invariant
layer its weight norm, effective learning rate and RMS angular update per step
(over its live units) with :mod:`bnjax.theory`'s equilibrium angle for the
run's optimizer, dashed (SGD and momentum with L2, AdamW, Adam + L2 from the
logged gradient scale, and the rotational optimizers; none for projection or
AdamP / SGDP, which have no closed form). The PNG goes to ``--output``
(default: ``plot.png`` in the run folder, or in the folders' common parent).
"""

import math
import os
import pathlib
from typing import Optional

from absl import app, flags

__all__ = ['equilibrium_kind', 'plot_runs', 'read_run']


def equilibrium_kind(config: dict) -> Optional[str]:
  """The :mod:`bnjax.theory` angle a run's config record has: an equilibrium
  optimizer of :func:`bnjax.theory.equilibrium_angular_update` (``'sgd'``,
  ``'adamw'``, ``'adam_l2'``, ``'adamp'``, ``'sgdp'``), ``'projection'``
  (:func:`bnjax.theory.projected_angular_update`), ``'rotational'``
  (:func:`bnjax.theory.rotational_angular_update`), or ``None`` (no decay: the
  angle decays to 0)."""
  optimizer, regularizer = config.get('optimizer'), config.get('regularizer')
  if regularizer == 'projection' or config.get('projection'):
    return 'projection'
  if not config.get('weight_decay'):
    return None
  if regularizer == 'rotational':
    return 'rotational'
  if optimizer == 'sgd' and regularizer == 'l2':
    return 'sgd'
  if optimizer in ('adamp', 'sgdp') and regularizer == 'decoupled':
    return optimizer
  if optimizer == 'adam':
    return {'decoupled': 'adamw', 'l2': 'adam_l2'}.get(regularizer)
  return None


def read_run(workdir) -> dict:
  """``{'name', 'config', 'lines', 'fan_in'}`` of a run folder.

  Raises:
    ValueError: naming the folder when it is not a run folder (no
      ``config.json`` or no metric line yet) or a file is damaged.
  """
  from bnjax.train import workdir as workdirs  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(workdir)
  if not folder.is_dir():
    raise ValueError(f'{folder} is not a folder')
  try:
    config = workdirs.read_json(folder / workdirs.CONFIG)
    if not isinstance(config, dict):
      raise ValueError(f'{folder} holds no config.json (not a bnjax-train run folder)')
    lines = workdirs.read_metrics(folder) if (folder / workdirs.METRICS).exists() else []
    summary = workdirs.read_json(folder / workdirs.SUMMARY)
  except workdirs.DamagedFileError as e:
    raise ValueError(str(e)) from e
  if not lines:
    raise ValueError(f'{folder} has no metric line yet (metrics.jsonl is empty or missing)')
  fan_in = summary.get('fan_in') if isinstance(summary, dict) else None
  return dict(name=folder.name, config=config, lines=lines, fan_in=fan_in or {})


TIMESCALE = 'ema_timescale_epochs/'  # per decayed layer, decoupled decay only


def _series(lines, key):
  steps = [l['step'] for l in lines if l.get(key) is not None]
  return steps, [l[key] for l in lines if l.get(key) is not None]


def _layers(lines) -> list:
  """The kernels a batch-normed run makes scale-invariant: those tracked, the
  head (no normalizer after it) left out."""
  names = {k.split('/', 1)[1] for l in lines for k in l if k.startswith('weight_norm/')}
  return sorted(n for n in names if n != 'head')


def _theory_angle(run, layer, line) -> float:
  from bnjax import theory  # pylint: disable=g-import-not-at-top
  c, kind = run['config'], equilibrium_kind(run['config'])
  lr = line.get('learning_rate')
  if kind is None or not lr:
    return math.nan
  g2, fan_in = line.get(f'grad_sq_at_unit_norm/{layer}'), run['fan_in'].get(layer)
  momentum = c.get('momentum', 0.0)
  if kind == 'projection':
    if c['optimizer'] == 'sgd':
      return theory.projected_angular_update('sgd', lr, momentum=momentum,
                                             grad_norm=math.sqrt(g2)) if g2 else math.nan
    return theory.projected_angular_update('adam', lr, fan_in=fan_in) if fan_in else math.nan
  if kind == 'rotational':
    inner = 'sgd' if c['optimizer'] == 'sgd' else 'adamw'
    return theory.rotational_angular_update(inner, lr, c['weight_decay'], momentum=momentum)
  if kind == 'adam_l2':
    if not g2 or not fan_in:
      return math.nan
    return theory.equilibrium_angular_update(kind, lr, c['weight_decay'], fan_in=fan_in,
                                             grad_norm=math.sqrt(g2))
  return theory.equilibrium_angular_update(kind, lr, c['weight_decay'], momentum=momentum)


def plot_runs(workdirs, output) -> pathlib.Path:
  """Writes one PNG of the runs in ``workdirs`` (overlaid, one colour each).

  Args:
    workdirs: run folders of ``bnjax-train`` (or of a study).
    output: the PNG's path.

  Returns:
    The PNG's path.

  Raises:
    ValueError: naming a folder that is not a run folder, or ``output`` when
      its folder does not exist or it is not a ``.png``.
  """
  output = pathlib.Path(output)
  if output.suffix.lower() != '.png':
    raise ValueError(f'--output: must end in .png, got {output}')
  if not output.parent.is_dir():
    raise ValueError(f'--output: folder {output.parent} does not exist')
  runs = [read_run(w) for w in workdirs]
  from bnjax.train.studies import study  # pylint: disable=g-import-not-at-top
  plt = study.pyplot()
  layers = sorted({layer for r in runs for layer in _layers(r['lines'])})
  rows = 1 + len(layers)
  fig, axes = plt.subplots(rows, 3, figsize=(12, 2.6 * rows), squeeze=False)
  timescale_axis = None
  for i, run in enumerate(runs):
    colour, lines, label = f'C{i}', run['lines'], run['name']
    axes[0, 0].plot(*_series(lines, 'loss'), colour, lw=0.9, label=label)
    test = _series(lines, 'test_accuracy')
    accuracy = test if test[0] else _series(lines, 'accuracy')
    axes[0, 1].plot(*accuracy, colour, lw=0.9, marker='.' if test[0] else None, label=label)
    axes[0, 2].plot(*_series(lines, 'learning_rate'), colour, lw=0.9, label=label)
    for key in sorted({k for l in lines for k in l if k.startswith(TIMESCALE)}):
      if timescale_axis is None:
        timescale_axis = axes[0, 2].twinx()
        timescale_axis.set_ylabel('EMA timescale (epochs), dotted', fontsize=8)
      timescale_axis.semilogy(*_series(lines, key), colour, ls=':', lw=1.2)
    for row, layer in enumerate(layers, start=1):
      axes[row, 0].semilogy(*_series(lines, f'weight_norm/{layer}'), colour, lw=0.9)
      axes[row, 1].semilogy(*_series(lines, f'effective_lr/{layer}'), colour, lw=0.9)
      steps, sq = _series(lines, f'angular_update_sq/{layer}')
      if steps:
        axes[row, 2].semilogy(steps, [math.sqrt(v) for v in sq], colour, lw=0.9)
        kept = [l for l in lines if l.get(f'angular_update_sq/{layer}') is not None]
        axes[row, 2].semilogy(steps, [_theory_angle(run, layer, l) for l in kept], colour,
                              ls='--', lw=1)
  axes[0, 0].set_title('training loss')
  axes[0, 1].set_title('test accuracy (dots; else training accuracy)')
  axes[0, 2].set_title('learning rate')
  axes[0, 0].legend(fontsize=7)
  for row, layer in enumerate(layers, start=1):
    axes[row, 0].set_title(f'{layer}: weight norm (mean over units)')
    axes[row, 1].set_title(f'{layer}: effective learning rate')
    axes[row, 2].set_title(f'{layer}: RMS angle per step (--: theory)')
  for ax in axes[-1]:
    ax.set_xlabel('step')
  fig.tight_layout()
  fig.savefig(output, dpi=80)
  plt.close(fig)
  return output


def default_output(workdirs) -> pathlib.Path:
  """``plot.png`` in the one run folder, or in the folders' common parent."""
  folders = [pathlib.Path(w).resolve() for w in workdirs]
  if len(folders) == 1:
    return folders[0] / 'plot.png'
  return pathlib.Path(os.path.commonpath(folders)) / 'plot.png'


def run():
  """The ``bnjax-plot`` console script."""
  flags.DEFINE_string('output', None, 'The PNG (default: plot.png in the run folder, or '
                      'in the folders\' common parent).')

  def main(argv):
    workdirs = argv[1:]
    if not workdirs:
      raise app.UsageError('give one or more run folders: bnjax-plot WORKDIR [WORKDIR ...]')
    output = flags.FLAGS.output or default_output(workdirs)
    try:
      print(plot_runs(workdirs, output))
    except ValueError as e:
      raise app.UsageError(str(e))

  app.run(main)


if __name__ == '__main__':
  run()
