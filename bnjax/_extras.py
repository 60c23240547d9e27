"""Imports of the ``experiments`` extra with an error that says how to install it."""

import importlib


def require(module: str):
  """``importlib.import_module(module)``; ImportError naming the extra when missing."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f'{module} is part of the experiments extra (data, checkpoints, '
                      f"binaries): pip install 'bnjax[experiments]' ({e})") from e
