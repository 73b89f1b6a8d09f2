"""The i-PI properties (``.out``) file of a run (:mod:`mlip_server.analysis.run_folder` finds it,
:mod:`mlip_server.analysis.readers` reads the trajectories).

* :func:`read_properties` -- an i-PI ``.out`` property file: columns from the
  ``# column N --> name{unit}`` / ``# cols. N-M --> name`` header lines, converted to analysis
  units (energy eV, time ps, temperature K, length Å; :mod:`mlip_server.analysis.units`); a column without
  ``{unit}`` is in i-PI's atomic units, and columns of other dimensions are kept as written.
* :func:`time_axis` -- the time (ps) of each line of such a file.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .errors import AnalysisInputError
from .units import ANALYSIS_UNITS, from_ipi

__all__ = ["PropertyTable", "read_properties", "time_axis"]

_HEAD = re.compile(r"^#\s*(?:column|cols\.)\s+(\d+)(?:\s*-\s*(\d+))?\s*-->\s*(\S+)")
_NAME = re.compile(r"^(?P<key>[^\s{(]+)(?:\{(?P<u1>[^}]*)\})?(?:\((?P<args>[^)]*)\))?(?:\{(?P<u2>[^}]*)\})?$")
_CONVERTED = ("energy", "time", "temperature", "length")
"""Dimensions of property columns converted to analysis units."""


class PropertyTable(dict):
    """``name -> values`` (analysis units); ``.units[name]`` is the unit now, ``.raw_units`` as written."""

    def __init__(self):
        super().__init__()
        self.units, self.raw_units = {}, {}


def _dimension(key: str, unit: str | None):
    try:
        from ipi.engine.properties import Properties

        d = Properties().property_dict.get(key, {}).get("dimension")
        if d:
            return d
    except Exception:  # pragma: no cover - i-PI internals changed
        pass
    if unit:
        from ipi.utils.units import UnitMap

        for fam, table in UnitMap.items():
            if unit in table and unit not in ("", "automatic", "atomic_unit"):
                return fam
    return "undefined"


def read_properties(path: str) -> PropertyTable:
    """Read an i-PI ``.out`` properties file (see the module doc).

    Parameters
    ----------
    path : str
        The ``.out`` file.

    Returns
    -------
    PropertyTable
        Column name (``potential``, ``pot_component_raw(1)``, ...) -> values (n_lines,) or
        (n_lines, n) for multi-column properties, in eV, ps, K, Å or as written.

    Raises
    ------
    AnalysisInputError
        Missing file, no i-PI header, a truncated file or a unit i-PI does not know.
    """
    if not os.path.isfile(path):
        raise AnalysisInputError(f"no such file: {path}: give the i-PI properties (.out) file")
    cols = []
    with open(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                continue
            m = _HEAD.match(line)
            if m:
                a = int(m.group(1))
                b = int(m.group(2)) if m.group(2) else a
                cols.append((a, b, m.group(3)))
    if not cols:
        raise AnalysisInputError(f"{path} has no '# column N --> name' header: give an i-PI properties file")
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as exc:
        raise AnalysisInputError(f"{path}: unreadable data line ({exc}): cut the partial last line") from None
    out = PropertyTable()
    for a, b, spec in cols:
        nm = _NAME.match(spec)
        if not nm:
            continue
        key, args = nm["key"], nm["args"]
        unit = nm["u2"] or nm["u1"] or ""
        name = f"{key}({args})" if args is not None else key
        if b > data.shape[1]:
            raise AnalysisInputError(
                f"{path}: header names column {b} but lines have {data.shape[1]}: the file is truncated"
            )
        vals = data[:, a - 1 : b] if b > a else data[:, a - 1].copy()
        dim = _dimension(key, unit)
        out.raw_units[name] = unit or "atomic_unit"
        if dim in _CONVERTED:
            try:
                vals = vals * from_ipi(dim, unit or "atomic_unit")
            except AnalysisInputError:
                raise AnalysisInputError(
                    f"{path}: unknown unit {unit!r} for {name}: use an i-PI unit"
                ) from None
            out.units[name] = ANALYSIS_UNITS[dim]
        else:
            out.units[name] = unit or ("" if dim in ("number", "undefined") else "atomic_unit")
        out[name] = np.asarray(vals, float)
    return out


def time_axis(props: PropertyTable, dt_ps=None) -> np.ndarray:
    """The time of each line of a properties file.

    Parameters
    ----------
    props : PropertyTable
        From :func:`read_properties`.
    dt_ps : float, optional
        Time between lines in ps, used when the file has no ``time`` column (with ``step``:
        step × dt_ps; else line index × dt_ps).

    Returns
    -------
    ndarray
        Times in ps.

    Raises
    ------
    AnalysisInputError
        Without a ``time`` column and without ``dt_ps``.
    """
    n = len(next(iter(props.values())))
    if "time" in props:
        return props["time"]
    if dt_ps and "step" in props:
        return props["step"] * float(dt_ps)
    if dt_ps:
        return np.arange(n) * float(dt_ps)
    raise AnalysisInputError(
        "the properties file has no time{picosecond} column: pass --frame-interval (fs between lines)"
    )
