"""Sphinx configuration of scorefast's documentation (MyST Markdown, the furo theme).

Build with ``make docs`` (warnings are errors); the CLI reference and the Python API are generated from the
parser and the docstrings at build time.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "scorefast"
author = "the scorefast authors"
copyright = "2026, the scorefast authors"

extensions = ["myst_parser", "sphinx.ext.autodoc", "generated"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = "scorefast"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # torch's own docstrings (forward, ...) are not scorefast's API
autodoc_default_options = {"members": True, "show-inheritance": False}

# Types from other packages have no inventory here (nothing is downloaded at build time): nitpicky mode
# checks scorefast's own references and leaves those alone.
nitpick_ignore_regex = [
    ("py:.*", r"(torch|numpy|np|scipy|argparse|pathlib|collections|typing|types|enum|dataclasses|threading|"
              r"concurrent|contextlib|io|os|abc|Tensor|Path|Callable|Iterator|Sequence|Mapping|Iterable|"
              r"nn|optional|Any)(\..*)?"),
    # a type alias, a TypeVar, and internal types that public signatures mention
    ("py:class", r"(scorefast\.sde\.)?ScoreFn|scorefast\.registry\.T|scorefast\.training\.optim\.EMA|EMAProfile|LogSection"),
]
