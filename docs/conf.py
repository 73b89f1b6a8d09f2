"""Sphinx configuration of the mlip-server documentation (``make docs``)."""

import logging
from importlib.metadata import version as _version

project = "mlip-server"
author = "the mlip-server authors"
copyright = "2026, the mlip-server authors"
release = _version("mlip-server")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinxarg.ext",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "examples/GALLERY_HEADER.rst"]

html_theme = "furo"
html_title = "mlip-server"

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# nitpicky (-n): every internal reference must resolve; references into other projects' APIs that
# have no inventory here are named below
nitpicky = True
# The docstrings' numpydoc type fields are prose ("str, or a list of them", "[N, 3] array, Å"):
# napoleon turns them into cross-references, so those that do not name an object of this package
# are exempt; every reference to mlip_server.* must resolve, like every link between the pages
nitpick_ignore_regex = [
    (r"py:.*", r"(?!mlip_server\.).*"),
    (r"py:.*", r"mlip_server\..*\._\w+"),
]  # + private bases

autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
smartquotes = False  # "--list" stays two hyphens in the command reference

# executed examples (docs/examples/plot_*.py → docs/auto_examples/, built, never committed)
extensions.append("sphinx_gallery.gen_gallery")
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "show_signature": False,
    "abort_on_example_error": True,
}

# MDAnalysis reports each analysis step at INFO; the build log keeps warnings only
logging.getLogger("MDAnalysis").setLevel(logging.WARNING)
