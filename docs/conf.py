"""Sphinx configuration of bnjax's documentation site (``make docs``)."""

import os
import sys

sys.path.insert(0, os.path.abspath('..'))

import bnjax  # pylint: disable=wrong-import-position

project = 'bnjax'
author = 'the bnjax developers'
release = bnjax.__version__
extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'myst_parser',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
root_doc = 'index'
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {'members': True, 'undoc-members': False, 'show-inheritance': False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
html_theme = 'alabaster'
napoleon_use_ivar = True
# Attributes named alike in several modules (epsilon, param_dtype) make napoleon's
# :ivar: references ambiguous; the ambiguity is harmless, broken references still warn.
# The results table links each claim to its line in a report by an HTML anchor
# (<a id=...>, which GitHub and the built pages keep but myst does not index);
# tests/test_readme.py checks every such link against the reports instead.
suppress_warnings = ['ref.python', 'myst.xref_missing']
