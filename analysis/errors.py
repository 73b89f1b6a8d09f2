"""Exceptions raised for bad analysis input.

Every message is one line that names the problem *and* the fix; the command line
(:mod:`mlip_server.analysis.cli`) prints it as ``error: <message>`` and exits with status 2.
"""

from mlip_server.core.errors import InputError

__all__ = ["AnalysisInputError", "BoxError", "BOX_FIX", "require_box"]


class AnalysisInputError(InputError):
    """Bad input to an analysis: missing file, unknown format or element, inconsistent data.

    A :class:`mlip_server.core.errors.InputError`, so one ``except MLIPError`` covers the whole project."""


class BoxError(AnalysisInputError):
    """A box-dependent analysis was asked for on a trajectory without a periodic box."""


BOX_FIX = (
    "pass --box a b c [alpha beta gamma] (Å, degrees) or use a format that carries the cell "
    "(i-PI xyz with '# CELL(abcABC)', extended XYZ with Lattice=, PDB with CRYST1, LAMMPS dump)"
)


def require_box(universe, what: str) -> None:
    """Raise :class:`BoxError` unless every frame of ``universe`` has a periodic box.

    MDAnalysis reads XYZ files without a box (``dimensions is None``); computing g(r) or
    unwrapping an MSD without periodic images would then be silently wrong, so refuse.
    """
    dims = universe.trajectory.ts.dimensions
    if not _valid(dims):
        name = getattr(universe, "_mlip_source", None) or universe.filename or "trajectory"
        raise BoxError(f"{what} needs a periodic box but {name} has none: {BOX_FIX}")


def _valid(dims) -> bool:
    return dims is not None and all(x > 0 for x in dims[:3])
