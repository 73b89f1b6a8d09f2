"""``mlip-analyse all``: every analysis that applies to a run, into one output folder."""

from __future__ import annotations

import sys

from .. import output
from ..errors import AnalysisInputError, require_box
from ..run_folder import find_run_files
from .common import Options
from .dipole import dipole
from .msd import msd
from .orientation import orientation
from .rdf import rdf
from .symmetry import symmetry
from .uncertainty import uncertainty

__all__ = ["every_analysis", "UNIVERSE_COMMANDS"]

UNIVERSE_COMMANDS = {"rdf": rdf, "msd": msd, "orientation": orientation, "dipole": dipole}
"""The sub-commands that take the loaded Universe, ``fn(u, opt)``, in the order ``all`` runs them."""


def every_analysis(u, traj: str, opt: Options, load, symmetry_inputs: bool = False) -> dict:
    """``mlip-analyse all``: every analysis that applies, into one output folder.

    Runs :func:`rdf`, :func:`msd`, :func:`orientation`, :func:`dipole`, when the run of ``traj``
    has an i-PI properties file (or ``symmetry_inputs``) :func:`symmetry`, and when it has a
    ``committee_force_std`` extras file (or ``opt.committee_forces``) :func:`uncertainty`
    (the run's files: :func:`mlip_server.analysis.run_folder.find_run_files`); an analysis that cannot run
    on this input (no time step, no water, ...) is skipped with a note on stderr. Writes the
    ``all`` section of ``summary.json`` (analysis -> ``done`` or why it was skipped).

    Parameters
    ----------
    u : MDAnalysis.Universe
        The trajectory ``traj``, loaded (positions Å, with a periodic box).
    traj : str
        Its file, next to which the i-PI outputs of the run are looked for.
    opt : Options
        Settings; ``opt.dt_ps`` (ps between frames) is needed by the MSD and C1/C2.
    load : callable
        ``load(path, velocities=None, forces=None)`` -> Universe, as :func:`symmetry` takes.
    symmetry_inputs : bool
        Run :func:`symmetry` even without a properties file (the caller named its inputs:
        ``opt.properties``, ``opt.velocities`` or ``opt.forces``).

    Returns
    -------
    dict
        Analysis name -> the summary it wrote.

    Raises
    ------
    AnalysisInputError
        No periodic box, or g(r) cannot be computed.
    """
    require_box(u, "'all' (g(r) and MSD unwrapping)")
    results, done = {}, {}
    for name, fn in UNIVERSE_COMMANDS.items():
        _attempt(name, lambda fn=fn: fn(u, opt), results, done, required=name == "rdf")
    run = find_run_files(traj, opt.bead or 0)
    if symmetry_inputs or run.properties:
        _attempt("symmetry", lambda: symmetry(traj, opt, load, universe=u), results, done)
    else:
        done["symmetry"] = (
            "skipped: no i-PI properties (.out) file next to the trajectory (pass --properties)"
        )
    if opt.committee_forces or "committee_force_std" in run.extras:
        _attempt("uncertainty", lambda: uncertainty(traj, opt, load), results, done)
    output.update_summary(opt.out, "all", done)
    return results


def _attempt(name: str, run, results: dict, done: dict, required: bool = False) -> None:
    """``results[name] = run()`` and ``done[name] = "done"``; on bad input, unless ``required``
    (then it raises), ``done[name]`` says why it was skipped, also on stderr."""
    try:
        results[name] = run()
        done[name] = "done"
    except AnalysisInputError as exc:
        if required:
            raise
        done[name] = f"skipped: {exc}"
        print(f"note: {name} {done[name]}", file=sys.stderr)
