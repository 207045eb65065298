"""Sphinx configuration of joblib_fast's documentation.

Build (warnings are errors, as in CI)::

    pip install ".[docs]"
    python -P -m sphinx -W -b html docs docs/_build/html

The API reference is generated from the installed package's docstrings
(numpydoc style): build after installing, not from the source folder
(which has no compiled core: hence `-P`, which keeps the current folder
off `sys.path`).
"""
import joblib_fast

project = "joblib_fast"
author = "the joblib_fast developers"
copyright = "the joblib_fast developers"
release = version = joblib_fast.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

# The API pages list their members by hand; numpydoc's own member tables
# would repeat them.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
autodoc_typehints = "none"
autosummary_generate = False
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# No network during the build (CI may have none): links to other projects'
# documentation are plain links.
intersphinx_mapping = {}

html_theme = "furo"
html_title = f"joblib_fast {release}"
