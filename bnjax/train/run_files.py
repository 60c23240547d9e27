"""One run's files while it trains: resume point, metric lines, divergence, checkpoints, summary.

:class:`RunFiles` is what a training loop writes through, whichever loop it
is (one run in :mod:`bnjax.train.trainer`, one member of a vectorized group in
:mod:`bnjax.train.vectorized`), so every run's workdir holds the same files in the
same format. Before a metrics line or checkpoint is written, every loss of
the window and the whole carried state must be finite; otherwise the run
ends as diverged (``summary.json`` with ``status: "diverged"``) and
:class:`NonFiniteLossError` is raised.
"""

import math
import pathlib
import time
from typing import Optional

import numpy as np
from absl import logging

from bnjax import dynamics
from bnjax.train import events, step_metrics, stopping
from bnjax.train import workdir as workdirs
from bnjax.models import PER_UNIT_INVARIANT
from bnjax.train.config import Config
from bnjax.train.workdir import write_json_atomic

__all__ = ['NonFiniteLossError', 'RunFiles']


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss or the updated state stops being finite.

  Nothing non-finite is checkpointed; ``summary.json`` records
  ``status: "diverged"`` and a rerun answers the same without retraining.

  Example:
    >>> from bnjax.train import trainer
    >>> issubclass(trainer.NonFiniteLossError, FloatingPointError)
    True

  References:
    IEEE 754-2019 (non-finite values).
  """


class RunFiles:
  """The files of one run in a locked workdir, written as it trains.

  Args:
    config: the run's config.
    workdir: its folder (locked by the caller).
    wanted: its config record (:func:`bnjax.train.config.record`).
    main_process: whether this process writes (the first of a multi-host run).
    invariant: the names of the scale-invariant layers, which alone get an
      ``effective_lr`` line (default: :func:`bnjax.train.step_metrics.invariant_layers`
      of a per-unit-invariant norm's model; none otherwise).

  Example:
    >>> import tempfile
    >>> import jax.numpy as jnp
    >>> from bnjax.train import config, run_files
    >>> c = config.Config()
    >>> files = run_files.RunFiles(c, tempfile.mkdtemp(), config.record(c))
    >>> state = files.resume({'params': {'w': jnp.ones(2)}})
    >>> files.last_checkpoint is None
    True
    >>> files.save(4, state); files.close()
    >>> files.last_checkpoint
    4

  References:
    orbax-checkpoint (the checkpoints); JSON Lines (the metrics file).
  """

  def __init__(self, config: Config, workdir, wanted: dict, main_process: bool = True,
               invariant=None):
    self.config, self.wanted, self.main_process = config, wanted, main_process
    self.invariant = invariant
    # The optimizer's scale-invariant layers: those given (bnjax.train.fit's
    # measured mask), else the models' (read from the params, as the optimizer does).
    self.optimizer_invariant = invariant
    self.decays = None  # {layer: (learning-rate factor, decoupled decay)}, read once
    self.workdir = pathlib.Path(workdir)
    self.checkpoints = workdirs.Checkpoints(self.workdir)
    self.last_checkpoint: Optional[int] = None
    self.elapsed = 0.0
    self.log = None
    self.events: Optional[events.EventLog] = None
    self.start = time.perf_counter()

  def resume(self, template):
    """The newest intact checkpoint's state (``template`` when there is none)."""
    restored, self.last_checkpoint = self.checkpoints.restore_latest(template)
    state = template
    if restored is not None:
      state = restored
      try:
        progress = workdirs.read_json(self.workdir / workdirs.PROGRESS) or {}
      except workdirs.DamagedFileError as e:  # bookkeeping of the wall time only
        logging.warning('%s; the run resumes counting its time from 0.', e)
        progress = {}
      elapsed = progress.get(str(self.last_checkpoint), 0.0) if isinstance(progress,
                                                                           dict) else 0.0
      self.elapsed = elapsed if isinstance(elapsed, (int, float)) else 0.0
    self.log = workdirs.MetricsLog(self.workdir, self.last_checkpoint or 0,
                                   enabled=self.main_process)
    if self.config.tensorboard and self.main_process:
      self.events = events.EventLog(self.workdir, self.log.records)
    self.start = time.perf_counter()
    return state

  def seconds(self) -> float:
    """Training time of the run so far, over all its resumptions."""
    return self.elapsed + time.perf_counter() - self.start

  def diverged(self, message: str, step: int):
    """Records the run as diverged (strict JSON) and raises :class:`NonFiniteLossError`."""
    good = ('There is no checkpoint yet.' if self.last_checkpoint is None
            else f'The last good checkpoint is step {self.last_checkpoint}.')
    message = f'{message} {good}'
    if self.main_process:
      write_json_atomic(self.workdir / workdirs.SUMMARY, {
          'status': 'diverged', 'error': message, 'steps': step,
          'last_checkpoint': self.last_checkpoint, 'test_loss': None,
          'test_accuracy': None, 'config': self.wanted})
    raise NonFiniteLossError(message)

  def check_window(self, steps, host_metrics, current, step: int) -> None:
    """Every loss of the window and the whole carried state must be finite."""
    for s, m in zip(steps, host_metrics):
      if not math.isfinite(float(m['loss'])):
        self.diverged(f'the training loss became {float(m["loss"])} at step {s}; '
                      'stopped without saving it.', s)
    bad = step_metrics.nonfinite_leaves(step_metrics.trained_state(current))
    if bad:
      self.diverged(f'the state became non-finite by step {step} (in '
                    f'{", ".join(bad[:3])}); stopped without saving it.', step)

  def write_line(self, step: int, epoch: int, host_metrics, current, window_seconds: float,
                 test_metrics: Optional[dict] = None) -> dict:
    """Writes the metrics line of the window ending at ``step``; returns it."""
    line = {'step': step, 'epoch': epoch,
            'learning_rate': float(dynamics.tracked_learning_rate(current.opt_state)),
            'images_per_s': len(host_metrics) * self.config.batch_size / window_seconds,
            'time_s': self.seconds()}
    for key in host_metrics[0]:
      mean = np.mean([np.asarray(m[key], float) for m in host_metrics], axis=0)
      line[key] = mean.tolist() if key.startswith(step_metrics.PER_UNIT) else float(mean)
    if self.invariant is None:  # the params' structure is the run's: read it once
      self.invariant = (step_metrics.invariant_layers(current.params)
                        if self.config.norm in PER_UNIT_INVARIANT else set())
    line.update(step_metrics.layer_metrics(current.opt_state, self.invariant))
    line.update(step_metrics.gain_metrics(current.params))
    if self.decays is None:
      invariant = self.optimizer_invariant
      if invariant is None:
        invariant = step_metrics.invariant_layers(current.params)
      self.decays = decoupled_decays(self.config, step_metrics.kernel_layers(current.params),
                                     invariant)
    line.update(step_metrics.timescale_metrics(line['learning_rate'], self.decays,
                                               self.config.steps_per_epoch()))
    line.update(test_metrics or {})
    if self.log is not None:
      self.log.write(line)
    if self.events is not None:
      self.events.write(line)
    return line

  def save(self, step: int, host_state) -> None:
    """Checkpoints ``host_state`` at ``step`` and records the time trained so far
    (a stop signal meanwhile takes effect once both are written)."""
    with stopping.deferred():
      self.checkpoints.save(step, host_state)
      self.last_checkpoint = step
      if self.main_process:
        write_json_atomic(self.workdir / workdirs.PROGRESS, {str(step): self.seconds()})

  def finish(self, step: int, final, test_metrics: dict) -> dict:
    """Writes ``summary.json`` of the finished run (diverged when the test metrics
    are not finite); returns it."""
    if not all(math.isfinite(v) for v in test_metrics.values()):
      self.diverged(f'the trained model\'s test metrics are not finite ({test_metrics}) '
                    f'after {step} steps.', step)
    summary = dict(test_metrics, status='finished', steps=step, wall_time_s=self.seconds(),
                   fan_in=step_metrics.fan_ins(final.params), config=self.wanted)
    if self.main_process:
      write_json_atomic(self.workdir / workdirs.SUMMARY, summary)
    return summary

  def close(self) -> None:
    if self.log is not None:
      self.log.close()
    if self.events is not None:
      self.events.close()
      self.events = None


def decoupled_decays(config: Config, kernel_layers, invariant_layers) -> dict:
  r"""The kernels a run's decoupled weight decay shrinks, with their rates.

  .. math::
    w \leftarrow (1 - f\,\eta_t\,\lambda)\,w - \dots

  as :func:`bnjax.train.programs.build_optimizer` chains it: ``weight_decay``
  on every kernel (with ``head_weight_decay >= 0``, on the scale-invariant
  ones, and ``head_weight_decay`` on the others), and the learning-rate
  factor ``f = rest_learning_rate / learning_rate`` on the kernels outside
  the invariant ones when ``rest_learning_rate`` is set. Only SGD and Adam
  with ``regularizer='decoupled'`` (AdamW) decay this way.

  Returns:
    ``{layer: (f, lambda)}`` for every kernel with ``lambda > 0``; empty for
    any other optimizer or regularizer.
  """
  if config.regularizer != 'decoupled' or config.optimizer not in ('sgd', 'momentum', 'adam'):
    return {}
  out = {}
  for layer in kernel_layers:
    inside = layer in invariant_layers
    decay = (config.weight_decay if inside or config.head_weight_decay < 0
             else config.head_weight_decay)
    factor = (1.0 if inside or config.rest_learning_rate == -1
              else config.rest_learning_rate / config.learning_rate)
    if decay > 0:
      out[layer] = (factor, decay)
  return out
