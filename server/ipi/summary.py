"""The closing line of an ``mlip-run`` experiment: its headline numbers and the next command.

:func:`headline` reads the run's i-PI properties file (``PREFIX.out``, the columns its header
names): the mean temperature, the drift of the conserved quantity per atom and ps, or for a run
without time (a geometry optimisation) the last potential energy and its change.
:func:`next_command` is what to do next, as its README says: ``mlip-analyse all RUN`` for
dynamics with positions (``--bead centroid`` when the run wrote one file per bead),
``mlip-analyse symmetry RUN`` for the molecule (no liquid structure to analyse), the same
relaxation at the other averaging level for ``ice-geop`` (the two last potentials are the result),
and where to read a replay's energies (its frames have no time axis to analyse).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np

__all__ = ["properties", "headline", "next_command", "timestep_fs"]

_COLUMN = re.compile(r"#\s*column\s+(\d+)\s*-->\s*([^\s:]+)")
SYMMETRY_EXPERIMENTS = ("molecule-nve",)
"""Experiments whose analysis is ``mlip-analyse symmetry`` (one molecule's conserved energy and
angular momentum)."""


def properties(path: Path) -> dict[str, np.ndarray]:
    """Column name (``temperature{kelvin}``, ...) → values of an i-PI properties file; {} when it
    is missing, has no rows or cannot be read."""
    try:
        names = {}
        with open(path) as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                m = _COLUMN.match(line)
                if m:
                    names[int(m.group(1)) - 1] = m.group(2)
        data = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError):
        return {}
    if data.size == 0:
        return {}
    return {name: data[:, k] for k, name in names.items() if k < data.shape[1]}


def _atoms(folder: Path) -> int | None:
    """Atoms of the run (first line of its structure file ``init.xyz``), None when unknown."""
    try:
        with open(Path(folder) / "init.xyz") as fh:
            return int(fh.readline())
    except (OSError, ValueError):
        return None


def headline(folder: Path, prefix: str = "sim") -> str:
    """``mean T 301.2 K, conserved drift 0.31 meV/atom/ps`` (what the properties file has), or
    ``potential -1234.5678 eV (-0.1234 eV from the start)`` without time; '' without either."""
    cols = properties(Path(folder) / f"{prefix}.out")
    parts = []
    temperature = cols.get("temperature{kelvin}")
    if temperature is not None:
        parts.append(f"mean T {temperature.mean():.1f} K")
    time_ps, conserved = cols.get("time{picosecond}"), cols.get("conserved{electronvolt}")
    atoms = _atoms(folder)
    if time_ps is not None and conserved is not None and len(time_ps) > 1 and time_ps[-1] > time_ps[0]:
        drift = (conserved[-1] - conserved[0]) / (time_ps[-1] - time_ps[0])
        if atoms:
            parts.append(f"conserved drift {1e3 * drift / atoms:+.3g} meV/atom/ps")
        else:
            parts.append(f"conserved drift {drift:+.3g} eV/ps")
    potential = cols.get("potential{electronvolt}")
    if time_ps is None and potential is not None:
        change = potential[-1] - potential[0]
        parts.append(f"potential {potential[-1]:.6f} eV ({change:+.6f} eV from the start)")
    return ", ".join(parts)


def next_command(folder: Path, prefix: str = "sim", experiment: str | None = None) -> str:
    """What to run (or read) next on run ``folder`` ('' when nothing applies)."""
    folder = Path(folder)
    out = ["--out", str(folder / "analysis")]
    if experiment == "replay":
        properties = folder / f"{prefix}.out"
        return f"compare the columns of {properties} (column k+2: the k-th of --specs, eV; row k+1: frame k)"
    if experiment == "ice-geop":
        return _other_average(folder)
    if experiment in SYMMETRY_EXPERIMENTS:
        return shlex.join(["mlip-analyse", "symmetry", str(folder), *out])
    trajectories = [p for p in folder.glob(f"{prefix}.*xyz") if not p.name.startswith("#")]
    if not trajectories:
        return ""
    beads = sorted(folder.glob(f"{prefix}.pos_*"))
    extra = ["--bead", "centroid"] if len(beads) > 1 else []
    return shlex.join(["mlip-analyse", "all", str(folder), *extra, *out])


_FS_PER = {"femtosecond": 1.0, "picosecond": 1e3, "nanosecond": 1e6, "atomic_unit": 0.02418884326585747}


def timestep_fs(xml_text: str) -> float | None:
    """The (outer) ``<timestep>`` of an i-PI input in fs (i-PI's default unit is the atomic
    unit); None without one (a geometry optimisation, a replay) or in a unit not known here."""
    m = re.search(r"<timestep(?:\s+units=['\"](\w+)['\"])?\s*>\s*([^<\s]+)\s*</timestep>", xml_text)
    if not m:
        return None
    try:
        return float(m.group(2)) * _FS_PER[m.group(1) or "atomic_unit"]
    except (KeyError, ValueError):
        return None


def _other_average(folder: Path) -> str:
    """``mlip-run ice-geop`` on the same cell at the other averaging level (none ↔ 2i), into a
    sibling folder: the difference of the two last potentials is the symmetry breaking's effect."""
    try:
        options = json.loads((folder / "run.json").read_text())["options"]
    except (OSError, ValueError, KeyError):
        return ""
    average = "2i" if options.get("average") in (None, "none") else "none"
    args = ["mlip-run", "ice-geop", "--structure", str(options.get("structure")), "--average", average]
    args += ["--model", str(options["model"])] if options.get("model") else []
    return shlex.join(args + ["--out", f"{folder}-{average}"])
