"""The files of one i-PI run: the one place where a run folder is read.

``mlip-run`` keeps a run, resumed or not, in one folder with one file per output and every step
once (:mod:`mlip_server.ipi.run_folder`): ``sim.out`` (properties), ``sim.pos_0.extxyz`` (positions of
bead 0; ``sim.pos_00.extxyz`` ... with 10 beads or more), ``sim.vel_0...``, ``sim.for_0...``,
extras files such as ``sim.unc_0``, and checkpoints (``sim.restart``, ``RESTART``) that are no
outputs and are ignored here.

* :func:`find_run_files` -- given that folder or any one of its files, the :class:`RunFiles`:
  what every ``mlip-analyse`` command reads (properties, trajectories classified by the
  quantity their first comment line names, the extras files of one bead).
* :func:`bead_files` -- the bead files of one trajectory (``sim.pos_3.xyz`` ->
  ``sim.pos_*.xyz``), for centroids of path-integral runs.

Runs of the former ``mlip-run --restart``, scattered over one folder per restart, are read one
folder at a time (each is a run with its own prefix); nothing here joins them.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

from .errors import AnalysisInputError
from .uncertainty import extras_names

__all__ = ["RunFiles", "find_run_files", "bead_files"]

_KINDS = {
    "positions": "positions",
    "x_centroid": "positions",
    "velocities": "velocities",
    "v_centroid": "velocities",
    "momenta": "momenta",
    "p_centroid": "momenta",
    "forces": "forces",
    "f_centroid": "forces",
}
"""Quantity named in a trajectory's first comment line (``positions{angstrom}``) -> its kind."""

_EXTRAS_BEAD = re.compile(r"_(\d+)(?:\.\w+)?$")
_BEAD_RE = re.compile(r"^(?P<stem>.*)_(?P<bead>\d+)(?P<ext>\.[^._]+)$")
_POSITION_EXTS = ("extxyz", "xyz", "pdb")


@dataclass(frozen=True)
class RunFiles:
    """The i-PI outputs of one run, as paths (None, or absent from ``extras``, when not written).

    ``prefix``: the output prefix (``run/sim``); ``properties``: ``PREFIX.out``;
    ``positions``, ``velocities``, ``momenta``, ``forces``: the first bead-0 (or centroid)
    ``.xyz``/``.extxyz`` trajectory of that quantity (by its first comment line);
    ``bead``: the bead of ``extras`` and ``bead_positions``; ``bead_positions``: the positions of
    that bead (``positions`` for bead 0, else i-PI's default name ``PREFIX.pos_<bead>.extxyz``,
    ``.xyz`` or ``.pdb``); ``extras``: quantity (``committee_force_std``, ...) -> the extras
    file of ``bead`` whose header names it (the file of that quantity alone first, else the one
    stacking the fewest quantities, then the first by name).
    """

    prefix: str
    bead: int = 0
    properties: str | None = None
    positions: str | None = None
    velocities: str | None = None
    momenta: str | None = None
    forces: str | None = None
    bead_positions: str | None = None
    extras: dict = field(default_factory=dict)

    def require(self, name: str) -> str:
        """The file of field ``name`` (``properties``, ``bead_positions``, ...); refuses a run
        that did not write it (:class:`~mlip_server.analysis.errors.AnalysisInputError`)."""
        path = getattr(self, name)
        if path is None:
            raise AnalysisInputError(
                f"the run {self.prefix} has no {name.replace('_', ' ')} file: give a run that wrote it"
            )
        return path


def find_run_files(path: str, bead: int = 0) -> RunFiles:
    """The i-PI outputs of the run that ``path`` belongs to.

    Parameters
    ----------
    path : str
        The run folder (holding the outputs of one prefix), or one of the run's files
        (``run/sim.pos_0.extxyz``, ``run/sim.out``, ``run/sim.unc_0``, ...).
    bead : int
        The bead whose extras files and positions are wanted (``_<bead>``, zero padding allowed).

    Returns
    -------
    RunFiles

    Raises
    ------
    AnalysisInputError
        A folder without i-PI outputs, or with the outputs of several prefixes.
    """
    prefix = _folder_prefix(path) if os.path.isdir(path) else _file_prefix(path)
    kinds = _trajectories(prefix)
    return RunFiles(
        prefix=prefix,
        bead=bead,
        properties=prefix + ".out" if os.path.isfile(prefix + ".out") else None,
        bead_positions=(kinds.get("positions") if bead == 0 else None) or _default_positions(prefix, bead),
        extras=_extras(prefix, bead),
        **kinds,
    )


def bead_files(path: str) -> list:
    """All bead files that belong with ``path`` (``prefix.pos_3.xyz`` -> ``prefix.pos_*.xyz``),
    sorted by bead index; ``[path]`` when the name has no bead suffix."""
    m = _BEAD_RE.match(path)
    if not m:
        return [path]
    idx = {}
    for c in glob.glob(glob.escape(m["stem"]) + "_*" + glob.escape(m["ext"])):
        mc = _BEAD_RE.match(c)
        if mc and mc["stem"] == m["stem"] and mc["ext"] == m["ext"]:
            idx[int(mc["bead"])] = c
    return [idx[k] for k in sorted(idx)]


def _file_prefix(path: str) -> str:
    """``run/sim.pos_0.xyz`` or ``run/sim.out`` -> ``run/sim``."""
    d, base = os.path.split(path)
    if base.endswith(".out"):
        return os.path.join(d, base[:-4])
    parts = base.split(".")
    return os.path.join(d, ".".join(parts[:-2]) if len(parts) > 2 else parts[0])


def _folder_prefix(folder: str) -> str:
    """The one prefix of the position trajectories (``PREFIX.pos_*``) of ``folder``, else of its
    ``*.out`` files (so a scheduler's ``slurm-N.out`` beside the trajectories is no run; i-PI's
    ``#name#N#`` backups are skipped)."""
    found = []
    for pattern in ("*.pos_*", "*.out"):
        files = glob.glob(os.path.join(glob.escape(folder), pattern))
        found = sorted({_file_prefix(f) for f in files if not os.path.basename(f).startswith("#")})
        if found:
            break
    if not found:
        raise AnalysisInputError(
            f"no i-PI outputs (PREFIX.out, PREFIX.pos_0.*) in {folder}: give the run folder or a trajectory"
        )
    if len(found) > 1:
        names = ", ".join(os.path.basename(p) for p in found)
        raise AnalysisInputError(
            f"{folder} holds the outputs of several runs ({names}): give one of their files"
        )
    return found[0]


def _trajectories(prefix: str) -> dict:
    """Kind (positions, velocities, momenta, forces) -> the first bead-0 or centroid
    ``.xyz``/``.extxyz`` file of ``prefix`` whose first comment line names that quantity."""
    found = {}
    for f in sorted(glob.glob(glob.escape(prefix) + ".*")):
        if not f.endswith((".xyz", ".extxyz")) or (
            re.search(r"_(\d+)\.\w+$", f) and not re.search(r"_0+\.\w+$", f)
        ):
            continue
        kind = _trajectory_kind(f)
        if kind and kind not in found:
            found[kind] = f
    return found


def _trajectory_kind(path: str) -> str | None:
    try:
        with open(path) as fh:
            fh.readline()
            comment = fh.readline()
    except OSError:
        return None
    return next((_KINDS[k] for k in re.findall(r"(\w+)\{", comment) if k in _KINDS), None)


def _default_positions(prefix: str, bead: int) -> str | None:
    """i-PI's default name of the positions of ``bead``, also when its comment lines do not say
    ``positions{...}``."""
    names = [f"{prefix}.pos_{bead}.{ext}" for ext in _POSITION_EXTS]
    return next((p for p in names if os.path.isfile(p)), None)


def _extras(prefix: str, bead: int) -> dict:
    """Quantity -> the extras file of ``bead`` that names it (see :class:`RunFiles`)."""
    files = []
    for f in sorted(glob.glob(glob.escape(prefix) + ".*")):
        m = _EXTRAS_BEAD.search(os.path.basename(f))
        if m and int(m.group(1)) == bead and os.path.isfile(f):
            names = extras_names(f)
            if names:
                files.append((len(names), f, names))
    found = {}
    for _, f, names in sorted(files):  # a file of the quantity alone first
        for name in names:
            found.setdefault(name, f)
    return found
