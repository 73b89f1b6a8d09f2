"""The closing line of an ``mlip-lammps-run`` run: its headline numbers and the next command.

:func:`thermo_column` reads one column of the thermo rows of ``log.lammps`` (every ``Step ...``
header block; a resumed run appends to the same log); :func:`headline` gives the mean
temperature; :func:`next_command` the ``mlip-analyse all`` command for the run's trajectory
dump, with the element of each atom type and the time between its frames (a LAMMPS dump holds
steps, not times).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np

from .checkpoint import STATE_FILE

__all__ = ["thermo_column", "headline", "next_command"]

_DUMP_GLOBS = ("*.lammpstrj", "*.dump", "*.lammpsdump")


def thermo_column(log: Path, name: str) -> np.ndarray:
    """The values of thermo column ``name`` (``Temp``, ``TotEng``, ...) in every thermo block of a
    LAMMPS log, in order (empty when the log or the column is missing)."""
    values, column, width = [], None, 0
    try:
        with open(log, errors="replace") as fh:
            for line in fh:
                words = line.split()
                if words[:1] == ["Step"]:
                    column = words.index(name) if name in words else None
                    width = len(words)
                elif column is not None and len(words) == width and re.fullmatch(r"-?\d+", words[0]):
                    try:
                        values.append(float(words[column]))
                    except ValueError:
                        pass
                elif words[:2] == ["Loop", "time"]:
                    column = None
    except OSError:
        pass
    return np.asarray(values)


def _state(workdir: Path) -> dict:
    try:
        return json.loads((Path(workdir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def headline(workdir: Path) -> str:
    """``mean T 301.2 K`` over the thermo rows of the run's log ('' without a ``Temp`` column)."""
    log = Path(workdir) / (_state(workdir).get("log") or "log.lammps")
    temperature = thermo_column(log, "Temp")
    return f"mean T {temperature.mean():.1f} K" if temperature.size else ""


def _dump(workdir: Path) -> Path | None:
    """The run's trajectory dump: the first the bridge noted (``dump`` commands), else one by name."""
    workdir = Path(workdir)
    dumps = [workdir / p for p in (_state(workdir).get("dumps") or {}).values()]
    dumps += sorted(p for pattern in _DUMP_GLOBS for p in workdir.glob(pattern))
    return next((p for p in dumps if p.is_file()), None)


def _frame_steps(dump: Path) -> int | None:
    """Steps between the first two frames of a text dump (None with fewer than two)."""
    steps = []
    with open(dump, errors="replace") as fh:
        expect = False
        for line in fh:
            if expect:
                steps.append(int(line))
                if len(steps) == 2:
                    return steps[1] - steps[0]
            expect = line.startswith("ITEM: TIMESTEP")
    return None


def next_command(workdir: Path, elements, dt_fs: float | None) -> str:
    """``mlip-analyse all DUMP --types O H --timestep FS --out OUT/analysis`` for the run's dump
    ('' when it wrote none)."""
    workdir = Path(workdir)
    dump = _dump(workdir)
    if dump is None:
        return ""
    args = ["mlip-analyse", "all", str(dump), "--types", *elements]
    try:
        every = _frame_steps(dump)
    except (OSError, ValueError):
        every = None
    if every and dt_fs:
        args += ["--timestep", f"{every * dt_fs:g}"]
    return shlex.join(args + ["--out", str(workdir / "analysis")])
