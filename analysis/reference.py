"""Reference g(r) curves to overlay on our RDF plots.

``FILE[:bohr|:angstrom]``: two numeric columns r, g (further columns ignored; lines that do
not start with two numbers -- comments, quoted headers -- are skipped). Files ending in
``.gdr`` (the i-PI/NNP reference curves) are in **Bohr** unless ``:angstrom`` is given; other
files are in Å unless ``:bohr`` is given. Which partial a file belongs to is read from its
name (``oo``, ``oh``/``ho``, ``hh``, e.g. ``nnp_goo.gdr``, ``exp_goh_300K.dat``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .errors import AnalysisInputError
from .units import ANGSTROM_PER_BOHR

__all__ = ["Reference", "load_reference", "parse_spec"]

_UNITS = {
    "bohr": ANGSTROM_PER_BOHR,
    "au": ANGSTROM_PER_BOHR,
    "atomic_unit": ANGSTROM_PER_BOHR,
    "angstrom": 1.0,
    "a": 1.0,
    "ang": 1.0,
}


@dataclass
class Reference:
    """A reference g(r) curve: file name, r (Å), g, and the partial (``OO``, ``OH``, ``HH``) or None."""

    label: str
    r: np.ndarray  # Å
    g: np.ndarray
    partial: str | None  # "OO", "OH", "HH" or None


def parse_spec(spec: str):
    """Split a ``--reference`` value.

    Parameters
    ----------
    spec : str
        ``FILE[:unit]``, unit one of ``bohr``, ``au``, ``atomic_unit``, ``angstrom``, ``a``, ``ang``.

    Returns
    -------
    path : str
    factor : float
        Å per file unit of r (default: Bohr for ``.gdr`` files, else Å).
    """
    path, unit = spec, None
    if ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if tail.lower() in _UNITS:
            path, unit = head, tail.lower()
    if unit is None:
        unit = "bohr" if path.lower().endswith(".gdr") else "angstrom"
    return path, _UNITS[unit]


def _partial(name: str):
    base = os.path.basename(name).lower()
    for key, part in (("hh", "HH"), ("oh", "OH"), ("ho", "OH"), ("oo", "OO")):
        if re.search(rf"(^|[^a-z]|g_?){key}", base):
            return part
    return None


def load_reference(spec: str) -> Reference:
    """Read a reference curve (see the module doc).

    Parameters
    ----------
    spec : str
        ``FILE[:unit]`` as for :func:`parse_spec`.

    Returns
    -------
    Reference
        With r converted to Å.

    Raises
    ------
    AnalysisInputError
        Missing file or fewer than two numeric lines.
    """
    path, factor = parse_spec(spec)
    if not os.path.isfile(path):
        raise AnalysisInputError(f"no such reference file: {path}: check --reference")
    rows = []
    with open(path) as fh:
        for line in fh:
            parts = line.replace(",", " ").split()
            if len(parts) < 2:
                continue
            try:
                rows.append((float(parts[0]), float(parts[1])))
            except ValueError:
                continue
    if len(rows) < 2:
        raise AnalysisInputError(f"{path} has no two-column numeric data: give r and g(r) columns")
    a = np.array(rows)
    return Reference(os.path.basename(path), a[:, 0] * factor, a[:, 1], _partial(path))
