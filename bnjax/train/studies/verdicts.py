r"""Verdicts with seed-to-seed uncertainty: three outcomes, one rule per claim.

A study states each claim as a test statistic whose sign decides it, computed
once per seed (paired: both arms of a comparison share the seed), and a rule
fixed before the runs:

* the estimate is the mean over seeds and its uncertainty the half-width of
  the two-sided 95% Student-t interval, :math:`t_{0.975,\,n-1}\, s/\sqrt{n}`;
* the claim **holds** when the whole interval lies on the claimed side of
  the threshold, **does not hold** when it lies wholly on the other side,
  and is **inconclusive** otherwise, or with fewer than :data:`MIN_SEEDS`
  seeds (then the uncertainty is not estimated: ``None`` with one seed).

Each study writes its verdicts as ``verdicts.json`` beside ``report.md``: a
list of ``{id, claim, source, reference, outcome, statistic, value,
uncertainty, seeds, rule}``, ``id`` (``<study>/<slug>``) unique and stable and
``reference`` the prediction the measurement is tested against; README's
table of verdicts is generated from those files
(:func:`results_table` and :func:`summary_table`, ``python -m experiments.verdicts
[--summary] docs/reports/<study> ...``).
"""

import dataclasses
import json
import math
import pathlib
import re
from typing import Optional, Sequence

import numpy as np

__all__ = ['MIN_SEEDS', 'OUTCOMES', 'Verdict', 'interval', 'decide', 'paired', 'write',
           'read', 'results_table', 'summary_table']

OUTCOMES = ('holds', 'does not hold', 'inconclusive')
SIDES = ('below', 'above', 'within', 'equals')
MIN_SEEDS = 3
LEVEL = 0.95


def interval(samples: Sequence[float]) -> tuple:
  r"""``(mean, half-width)`` of the 95% Student-t interval of the mean of ``samples``.

  .. math::
    \bar x \pm t_{0.975,\,n-1}\, \frac{s}{\sqrt n}, \qquad
    s^2 = \frac{1}{n-1}\sum_i (x_i - \bar x)^2

  Args:
    samples: one finite value per seed.

  Returns:
    ``(mean, half_width)``; the half-width is ``None`` for a single sample.

  Example:
    >>> from bnjax.train.studies import verdicts
    >>> mean, half = verdicts.interval([1.0, 2.0, 3.0])
    >>> mean, round(half, 4)   # t(0.975, 2) = 4.3027, s = 1
    (2.0, 2.4841)

  References:
    Student (W. S. Gosset), "The Probable Error of a Mean", Biometrika 1908.
  """
  x = np.asarray(samples, float)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f'samples must be a non-empty list of numbers, got {samples!r}.')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'samples must be finite, got {samples!r}.')
  mean = float(x.mean())
  if x.size == 1:
    return mean, None
  from scipy import stats  # pylint: disable=g-import-not-at-top
  t = float(stats.t.ppf(0.5 + LEVEL / 2, x.size - 1))
  return mean, t * float(x.std(ddof=1)) / math.sqrt(x.size)


def decide(value: float, uncertainty: Optional[float], seeds: int, *, threshold: float,
           side: str) -> str:
  """The outcome of a claim that ``value`` lies ``side`` (``'below'``/``'above'``)
  ``threshold``, given its interval half-width.

  Args:
    value: the estimate.
    uncertainty: the interval's half-width (``None``: not estimated).
    seeds: seeds behind the estimate.
    threshold: the boundary the claim is about.
    side: ``'below'`` or ``'above'``: where the claim puts ``value``;
      ``'within'``: the claim is ``|value| < threshold`` (an equivalence
      claim: holds when the whole interval lies inside ``(-threshold,
      threshold)``, does not hold when it lies wholly outside).

  Returns:
    One of :data:`OUTCOMES`.

  Example:
    >>> from bnjax.train.studies import verdicts
    >>> verdicts.decide(-0.5, 0.2, 3, threshold=0.0, side='below')
    'holds'
    >>> verdicts.decide(-0.1, 0.2, 3, threshold=0.0, side='below')
    'inconclusive'
    >>> verdicts.decide(0.5, 0.2, 3, threshold=0.0, side='below')
    'does not hold'
    >>> verdicts.decide(0.05, 0.03, 3, threshold=0.1, side='within')
    'holds'
    >>> verdicts.decide(0.3, 0.2, 3, threshold=0.5, side='equals')  # excludes 0
    'does not hold'

  References:
    Neyman, "Outline of a Theory of Statistical Estimation Based on the
    Classical Theory of Probability", 1937 (confidence intervals); Schuirmann,
    "A comparison of the two one-sided tests procedure ...", J.
    Pharmacokinet. Biopharm. 1987 (equivalence within a margin).
  """
  if side not in SIDES:
    raise ValueError(f'side must be one of {SIDES}, got {side!r}.')
  if seeds < MIN_SEEDS or uncertainty is None or not math.isfinite(value):
    return 'inconclusive'
  low, high = value - uncertainty, value + uncertainty
  if side == 'equals':
    if low > 0 or high < 0:
      return 'does not hold'
    return 'holds' if -threshold < low and high < threshold else 'inconclusive'
  if side == 'within':  # equivalence: |value| < threshold (Schuirmann 1987)
    if -threshold < low and high < threshold:
      return 'holds'
    if low > threshold or high < -threshold:
      return 'does not hold'
    return 'inconclusive'
  below, above = high < threshold, low > threshold
  if (side == 'below' and below) or (side == 'above' and above):
    return 'holds'
  if (side == 'below' and above) or (side == 'above' and below):
    return 'does not hold'
  return 'inconclusive'


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One claim's verdict, as written to ``verdicts.json``.

  Attributes:
    claim: the claim as README states it.
    source: paper and figure/equation it comes from.
    id: ``<study>/<slug>``, unique and stable: what tables and links cite.
    reference: the prediction the statistic is tested against (a formula and
      where it comes from, e.g. ``Luo et al. 2019 Fig. 1: 1/(2M)``).
    outcome: one of :data:`OUTCOMES`.
    statistic: what ``value`` is.
    value: the estimate (mean over seeds).
    uncertainty: half-width of its 95% interval (``None`` with one seed).
    seeds: seeds behind it.
    rule: the decision rule, fixed before the runs.
    numbers: the report's supporting numbers (not part of the decision).
    threshold, side: the claim puts ``value`` ``side`` of ``threshold``.
  """
  claim: str
  source: str
  outcome: str
  statistic: str
  value: float
  uncertainty: Optional[float]
  seeds: int
  rule: str
  numbers: str = ''
  threshold: float = 0.0
  side: str = 'below'
  id: str = ''  # (verdicts.json written before ids and references read as '')
  reference: str = ''

  def anchor(self) -> str:
    """The id as an HTML anchor name (``/`` becomes ``-``)."""
    return self.id.replace('/', '-')

  def markdown(self) -> str:
    """The report's line: anchor, outcome, claim, source, reference, statistic with
    its interval, rule, supporting numbers."""
    if self.uncertainty is None:
      estimate = f'{self.value:.4g} from {self.seeds} seed (no uncertainty)'
    else:
      estimate = f'{self.value:.4g} ± {self.uncertainty:.4g} over {self.seeds} seeds'
    anchor = f'<a id="{self.anchor()}"></a>' if self.id else ''
    tested = f' Tested against: {self.reference}.' if self.reference else ''
    text = (f'{anchor}**Verdict: {self.outcome}**: {self.claim} [{self.source}]'
            f'{f" (`{self.id}`)" if self.id else ""}.{tested} Statistic: '
            f'{self.statistic} = {estimate}. Rule: {self.rule}.')
    return text + (f' Numbers: {self.numbers}.' if self.numbers else '')


def paired(claim: str, source: str, statistic: str, per_seed: Sequence[float], *,
           id: str, reference: str, threshold: float = 0.0, side: str = 'below',
           numbers: str = '') -> Verdict:  # pylint: disable=redefined-builtin
  """A :class:`Verdict` from one value of the statistic per seed.

  Args:
    claim, source, statistic, numbers, id, reference: as :class:`Verdict`.
    per_seed: the statistic of each seed (e.g. the paired difference of two
      arms run with the same seed).
    threshold, side: the claim puts the mean ``side`` of ``threshold``.

  Returns:
    The verdict under the 95% t-interval rule of :func:`decide`.

  Example:
    >>> from bnjax.train.studies import verdicts
    >>> v = verdicts.paired('A beats B', 'paper, Fig. 1', 'error(A) - error(B)',
    ...                     [-0.30, -0.20, -0.25], id='demo/a-beats-b',
    ...                     reference='error(A) < error(B)')
    >>> v.outcome, v.seeds, round(v.uncertainty, 4)
    ('holds', 3, 0.1242)

  References:
    Student, "The Probable Error of a Mean", Biometrika 1908 (paired t).
  """
  if not isinstance(id, str) or not re.fullmatch(r'[a-z0-9_]+/[a-z0-9][a-z0-9_.-]*', id):
    raise ValueError(f'id must be <study>/<slug> (lower case, digits, - _ .), got {id!r}.')
  value, uncertainty = interval(per_seed)
  if side == 'equals':
    rule = (f'95% t-interval of the mean over seeds excluding 0: does not hold; '
            f'containing 0 and inside (-{threshold:g}, {threshold:g}): holds; else, or '
            f'under {MIN_SEEDS} seeds: inconclusive')
  elif side == 'within':
    rule = (f'whole 95% t-interval of the mean over seeds inside (-{threshold:g}, '
            f'{threshold:g}): holds; wholly outside: does not hold; else, or under '
            f'{MIN_SEEDS} seeds: inconclusive')
  else:
    rule = (f'mean over seeds {"<" if side == "below" else ">"} {threshold:g} with the '
            f'whole 95% t-interval: holds; whole interval on the other side: does not '
            f'hold; else, or under {MIN_SEEDS} seeds: inconclusive')
  return Verdict(claim=claim, source=source, statistic=statistic, value=value,
                 uncertainty=uncertainty, seeds=len(per_seed),
                 outcome=decide(value, uncertainty, len(per_seed), threshold=threshold,
                                side=side),
                 rule=rule, numbers=numbers, threshold=threshold, side=side, id=id,
                 reference=reference)


def write(workdir, verdicts: Sequence[Verdict]) -> pathlib.Path:
  """Writes ``verdicts.json`` (strict JSON, atomically) into ``workdir``."""
  seen = set()
  for v in verdicts:
    if v.outcome not in OUTCOMES:
      raise ValueError(f'outcome must be one of {OUTCOMES}, got {v.outcome!r}.')
    if v.id in seen:
      raise ValueError(f'two verdicts share the id {v.id!r}; ids must be unique.')
    seen.add(v.id)
  path = pathlib.Path(workdir) / 'verdicts.json'
  tmp = path.with_name('.verdicts.json.tmp')
  tmp.write_text(json.dumps([dataclasses.asdict(v) for v in verdicts], indent=1,
                            allow_nan=False) + '\n')
  tmp.replace(path)
  return path


def read(workdir) -> list:
  """The :class:`Verdict` list of a study folder's ``verdicts.json``."""
  path = pathlib.Path(workdir) / 'verdicts.json'
  return [Verdict(**v) for v in json.loads(path.read_text())]


def results_table(folders: Sequence, link: str = 'reports') -> str:
  """docs/results.md's table of verdicts, one row per claim of every study folder given.

  Args:
    folders: study folders (each with ``verdicts.json``), in table order.
    link: the folder of the reports, relative to the page the table goes in.

  Returns:
    A markdown table: claim (its id, linking to its line in the report), the
    prediction it is tested against, outcome, statistic ± uncertainty, seeds.
  """
  rows = ['| claim (id) | tested against | verdict | statistic: value ± 95% interval | '
          'seeds |', '|---|---|---|---|---:|']
  cell = lambda text: text.replace('|', '\\|')  # a | inside a cell would end it
  for folder in folders:
    name = pathlib.Path(folder).name
    for v in read(folder):
      u = '(no interval)' if v.uncertainty is None else f'± {v.uncertainty:.3g}'
      outcome = v.outcome if v.outcome == 'holds' else f'**{v.outcome}**'
      rows.append(f'| {cell(v.claim)} ({_cited(v, name, link)}) | {cell(v.reference)} | '
                  f'{outcome} | {cell(v.statistic)}: {v.value:.3g} {u} | {v.seeds} |')
  return '\n'.join(rows)


def _cited(v: Verdict, study: str, link: str) -> str:
  """The verdict's id linking to its line in the study's report (the study's name
  linking to the report for verdicts written before ids)."""
  if not v.id:
    return f'[{study}]({link}/{study}/report.md)'
  return f'[`{v.id}`]({link}/{study}/report.md#{v.anchor()})'


def summary_table(folders: Sequence, link: str = 'docs/reports') -> str:
  """README's results summary: one row per study (its report linked), how many of
  its claims hold, do not hold and are inconclusive; the claims themselves, each
  with its id, are in :func:`results_table`.

  Args:
    folders: study folders (each with ``verdicts.json``), in table order.
    link: the folder of the reports, relative to the page the table goes in.

  Returns:
    A markdown table: study, claims, and a column per outcome.
  """
  rows = ['| study | claims | ' + ' | '.join(OUTCOMES) + ' |',
          '|---|---:|' + '---:|' * len(OUTCOMES)]
  for folder in folders:
    name = pathlib.Path(folder).name
    found = read(folder)
    counts = ' | '.join(str(sum(v.outcome == o for v in found)) for o in OUTCOMES)
    rows.append(f'| [{name}]({link}/{name}/report.md) | {len(found)} | {counts} |')
  return '\n'.join(rows)


def run(argv=None) -> None:
  """``python -m experiments.verdicts [--summary] STUDY_FOLDER...``: prints the
  results table of docs/results.md (or, with ``--summary``, README's)."""
  import sys  # pylint: disable=g-import-not-at-top
  argv = sys.argv if argv is None else argv
  summary = '--summary' in argv[1:]
  folders = [a for a in argv[1:] if a != '--summary']
  if not folders:
    sys.exit('usage: python -m experiments.verdicts [--summary] STUDY_FOLDER [STUDY_FOLDER ...]')
  print(summary_table(folders) if summary else results_table(folders))


if __name__ == '__main__':
  run()
