"""The module map of docs/architecture.md against the import graph derived from the
source: every bnjax module has one row, imports exactly what its row names, only
modules above it (so the graph has no cycle), and the library never imports the
training framework or anything outside jax, flax, optax, numpy and the standard
library."""

import ast
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY_OUTSIDE = {'jax', 'flax', 'optax', 'numpy'}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(p): p for p in (ROOT / 'bnjax').rglob('*.py')}


def imports_of(name: str, source: str):
  """``(bnjax modules, outside top-level packages)`` that ``source`` imports
  anywhere (module level or inside functions); the standard library aside."""
  package = name if MODULES[name].name == '__init__.py' else name.rpartition('.')[0]
  inside, outside = set(), set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      targets = [(a.name, None) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      targets = [(base, a.name) for a in node.names]
    else:
      continue
    for base, attr in targets:
      if base.split('.')[0] == 'bnjax':
        full = f'{base}.{attr}' if attr else base
        inside.add(full if full in MODULES else base)
      elif base.split('.')[0] not in sys.stdlib_module_names:
        outside.add(base.split('.')[0])
  inside.discard(name)
  return inside, outside


def graph():
  return {name: imports_of(name, path.read_text()) for name, path in MODULES.items()}


def module_map():
  """``[(module, bnjax imports, outside imports)]`` in the table's order."""
  rows = []
  for line in (ROOT / 'docs' / 'architecture.md').read_text().splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if len(cells) == 4 and re.fullmatch(r'`bnjax[\w.]*`', cells[0]):
      rows.append((cells[0].strip('`'), set(re.findall(r'`([\w.]+)`', cells[2])),
                   {w for w in re.split(r'[,\s]+', cells[3]) if w}))
  return rows


def find_cycle(edges):
  """A list of modules forming a cycle, or None (depth-first search)."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(edges):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_imports_of_reads_every_form_of_import():
  MODULES.setdefault('bnjax.train.fake', ROOT / 'bnjax' / 'train' / 'fake.py')
  try:
    inside, outside = imports_of('bnjax.train.fake', (
        'import os\nimport jax.numpy as jnp\nfrom bnjax import norms, theory as t\n'
        'from bnjax.train.config import Config\nfrom . import data\n'
        'def f():\n  import matplotlib.pyplot\n  from .studies import study\n'))
  finally:
    del MODULES['bnjax.train.fake']
  assert inside == {'bnjax.norms', 'bnjax.theory', 'bnjax.train.config', 'bnjax.train.data',
                    'bnjax.train.studies.study'}
  assert outside == {'jax', 'matplotlib'}


def test_find_cycle_finds_a_planted_cycle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_no_import_cycle_in_bnjax():
  edges = {name: inside for name, (inside, _) in graph().items()}
  assert find_cycle(edges) is None


def test_the_library_imports_neither_the_framework_nor_outside_packages():
  for name, (inside, outside) in graph().items():
    if name.startswith('bnjax.train'):
      continue
    assert not [m for m in inside if m.startswith('bnjax.train')], name
    assert outside <= LIBRARY_OUTSIDE, (name, outside - LIBRARY_OUTSIDE)


def test_the_module_map_is_the_import_graph():
  rows = module_map()
  names = [r[0] for r in rows]
  assert len(names) == len(set(names)), 'a module has two rows'
  assert set(names) == set(MODULES), (
      f'rows without a module: {sorted(set(names) - set(MODULES))}; modules without a row: '
      f'{sorted(set(MODULES) - set(names))}')
  actual = graph()
  for position, (name, inside, outside) in enumerate(rows):
    assert actual[name][0] == inside, (name, 'bnjax imports', actual[name][0] ^ inside)
    assert actual[name][1] == outside, (name, 'outside imports', actual[name][1] ^ outside)
    above = set(names[:position])
    assert inside <= above, (name, 'imports a module below it', sorted(inside - above))


@pytest.mark.parametrize('edit', ['import', 'row'])
def test_the_map_check_fails_when_map_and_source_disagree(edit, monkeypatch):
  rows = module_map()
  if edit == 'import':  # norms importing layers: below it, and not in its row
    original = imports_of
    monkeypatch.setattr(sys.modules[__name__], 'imports_of', lambda n, s: (
        original(n, s)[0] | ({'bnjax.layers'} if n == 'bnjax.norms' else set()),
        original(n, s)[1]))
  else:
    rows = [r for r in rows if r[0] != 'bnjax.nnx']
    monkeypatch.setattr(sys.modules[__name__], 'module_map', lambda: rows)
  with pytest.raises(AssertionError, match='bnjax.norms|bnjax.nnx'):
    test_the_module_map_is_the_import_graph()
