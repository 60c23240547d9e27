"""TensorBoard event files of a run: its ``metrics.jsonl`` lines, written without TensorFlow.

Every run's workdir holds event files beside ``metrics.jsonl``, so
``tensorboard --logdir runs/`` shows each run under its folder's name. The
scalars are the metric lines' fields under their own names (``loss``,
``weight_norm/conv1``, ...: TensorBoard groups the tags by the part before the
first slash, one chart per layer inside), the ``per_unit/`` fields (one value
per unit) are histograms. The events hold exactly the lines ``metrics.jsonl``
holds: a resumed run replaces the workdir's event files by one written from
the lines kept, so no reader sees a step twice.
"""

import math
import pathlib
import socket
import time

import numpy as np

from bnjax.train import step_metrics

__all__ = ['EVENT_FILES', 'EventLog']

# The names TensorBoard's writers give event files (tensorboardX's included).
EVENT_FILES = 'events.out.tfevents.*'


def _tensorboardx():
  try:
    # pylint: disable=g-import-not-at-top
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import RecordWriter
  except ImportError as e:
    raise ImportError(
        '--tensorboard: writing TensorBoard events needs tensorboardX (pip install '
        '"bnjax[experiments]"); or train with --notensorboard (Config(tensorboard=False)).'
    ) from e
  return summary, event_pb2, RecordWriter


class EventLog:
  """TensorBoard event files in a run's workdir holding its metric lines.

  On opening, the workdir's earlier event files are replaced by one holding
  ``records()`` (the lines ``metrics.jsonl`` kept on resume); each
  :meth:`write` appends one line's values and flushes, so a running
  TensorBoard shows it. An event file deleted while the run trains is
  written again, whole, from ``records()`` at the next line.

  Args:
    workdir: the run's folder.
    records: ``() -> lines``, the metric lines logged so far (dicts with an
      integer ``step``; the run's ``MetricsLog.records``, which holds each line
      before it is given to :meth:`write`).

  Example:
    >>> import tempfile
    >>> from bnjax.train import events
    >>> d = tempfile.mkdtemp()
    >>> lines = [{'step': 4, 'loss': 1.5}]
    >>> log = events.EventLog(d, lambda: lines)
    >>> lines.append({'step': 8, 'loss': 1.2, 'per_unit/weight_norm/conv1': [1.0, 2.0]})
    >>> log.write(lines[-1])
    >>> log.close()
    >>> len(list(pathlib.Path(d).glob(events.EVENT_FILES)))
    1

  References:
    TensorBoard's event file format (TFRecord of ``Event`` protos); tensorboardX,
    https://github.com/lanpa/tensorboardX.
  """

  def __init__(self, workdir, records=tuple):
    self._summary, self._event_pb2, self._record_writer = _tensorboardx()
    self.workdir = pathlib.Path(workdir)
    self._records = records
    self._open()

  def _open(self) -> None:
    """A new event file holding every line so far (the others removed)."""
    for old in self.workdir.glob(EVENT_FILES):
      old.unlink()
    # Written in this thread, record by record (tensorboardX's SummaryWriter queues
    # them to a thread through a multiprocessing queue, whose semaphores leak when
    # a worker is stopped).
    self.path = self.workdir / f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}'
    self._writer = self._record_writer(str(self.path))
    self._event(file_version='brain.Event:2')
    for line in self._records():
      self._add(line)
    self._writer.flush()

  def _event(self, **fields) -> None:
    event = self._event_pb2.Event(wall_time=time.time(), **fields)
    self._writer.write(event.SerializeToString())

  def _add(self, line: dict) -> None:
    step = int(line['step'])
    for key, value in line.items():
      if key == 'step':
        continue
      if key.startswith(step_metrics.PER_UNIT):
        values = np.array(value, float)
        values = values[np.isfinite(values)]
        if values.size:
          self._event(step=step, summary=self._summary.histogram(key, values, 'auto'))
      elif isinstance(value, (int, float)) or value is None:
        self._event(step=step, summary=self._summary.scalar(
            key, math.nan if value is None else float(value)))

  def write(self, line: dict) -> None:
    """Appends one metric line and flushes it to disk."""
    if not self.path.exists():  # deleted under the run: all of it again
      self._writer.close()
      self._open()
      return
    self._add(line)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
