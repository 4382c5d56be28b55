"""Sphinx configuration of the API reference (``nox -s docs``; warnings are errors).

Sphinx because our docstrings are reStructuredText (literal blocks after ``::``, double
backticks, ``:func:`` roles): autodoc renders them as written, and ``-W`` fails the build on
any warning, so the reference cannot rot silently.
"""

from __future__ import annotations

project = "bitnet-obs"
author = "bitnet-obs developers"
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
html_theme = "alabaster"
exclude_patterns = ["_build"]
suppress_warnings = ["ref.python"]  # annotations name typing helpers with no page of their own
nitpicky = False
