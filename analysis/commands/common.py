"""What the ``mlip-analyse`` commands share: :class:`Options`, writing a command's outputs, the
r_max check, the frame count and the ``input`` section of ``summary.json``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import output
from ..errors import AnalysisInputError
from ..statistics import DEFAULT_BLOCKS
from ..uncertainty import DEFAULT_WORST

__all__ = [
    "Options",
    "TIMESTEP_FIX",
    "write_outputs",
    "checked_rmax",
    "frames_info",
    "water_or_none",
    "input_info",
]

TIMESTEP_FIX = "pass --frame-interval FS (time between stored frames, fs)"


@dataclass
class Options:
    """Settings shared by the sub-commands (units: Å, fs, ps, K, mPa s, e).

    The fields are the ``mlip-analyse`` options: ``out`` the output folder, ``n_blocks`` blocks
    for the errors, ``dt_ps`` time between trajectory frames (ps), ``start``/``stop``/``step``
    the frames analysed, ``charges`` element -> point charge (e) for the dielectric constant, ...
    """

    out: str = "analysis-output"
    n_blocks: int = DEFAULT_BLOCKS
    dt_ps: float | None = None  # time between trajectory frames
    start: int | None = None
    stop: int | None = None
    step: int | None = None
    verbose: bool = True
    workers: int = 1
    rmax: float | None = None
    nbins: int = 200
    references: list = field(default_factory=list)
    msd_group: str = "O"
    fit_window: tuple | None = None
    viscosity: float | None = None
    temperature: float = 300.0
    charges: dict | None = None
    properties: str | None = None
    v_raw: str | None = None
    v_avg: str | None = None
    n_molecules: int | None = None
    n_cos: int = 20
    n_phi: int = 36
    velocities: str | None = None  # i-PI velocity or momentum trajectory (symmetry)
    forces: str | None = None  # i-PI force trajectory (symmetry)
    committee_forces: str | None = None  # i-PI extras file of committee_force_std (uncertainty)
    committee_energy: str | None = None  # i-PI extras file of committee_energy_std (uncertainty)
    rotational: str | None = None  # i-PI extras file of force_spread_rms (uncertainty)
    n_worst: int = DEFAULT_WORST  # frames with the largest committee spread tabulated per atom
    bead: int | None = 0  # bead of the extras files found next to TRAJ; None: centroid (uncertainty)

    def run_kw(self, parallel: bool = True):
        """Keywords of ``AnalysisBase.run``; ``parallel=False`` for the analyses whose per-frame
        work is too small for MDAnalysis' multiprocessing backend to pay (measured in
        ``bench/analysis_speed.py``: MSD, orientation, C1/C2 and the dielectric constant ran
        0.55-0.95x as fast with 2 workers, the g(r) and c_L/c_T 1.7-2.2x)."""
        kw = dict(start=self.start, stop=self.stop, step=self.step)
        if self.workers > 1 and parallel:
            kw.update(backend="multiprocessing", n_workers=self.workers)
        else:
            kw.update(verbose=self.verbose, progressbar_kwargs={"desc": None})
        return kw

    def run_kw_for(self, desc, parallel: bool = True):
        """:meth:`run_kw` with the progress bar labelled ``desc``."""
        kw = self.run_kw(parallel)
        if "progressbar_kwargs" in kw:
            kw["progressbar_kwargs"] = {"desc": desc}
        return kw

    def path(self, name):
        """``name`` in the output folder."""
        return os.path.join(self.out, name)


def write_outputs(opt: Options, section: str, summary: dict, figure=None, png=None, tables=()) -> dict:
    """Write a finished command's outputs into ``opt.out``: ``tables`` (``(file, columns,
    header)`` each, :func:`mlip_server.analysis.output.write_table`), then ``figure`` as ``png``, then the
    ``section`` of ``summary.json``. Returns ``summary``."""
    for name, columns, header in tables:
        output.write_table(opt.path(name), columns, header)
    if figure is not None:
        output.save_figure(figure, opt.path(png))
    output.update_summary(opt.out, section, summary)
    return summary


def checked_rmax(u, opt: Options) -> float:
    """--rmax, or min(L/2, 8 Å) (Å); refuse an r_max beyond half the box (minimum-image counts
    would be incomplete there)."""
    from ..rdf import default_rmax

    half = default_rmax(u, cap=np.inf)
    if opt.rmax is not None and opt.rmax > half + 1e-6:
        raise AnalysisInputError(
            f"--rmax {opt.rmax:g} Å exceeds half the box width ({half:.3f} Å): pass --rmax <= {half:.3f}"
        )
    return opt.rmax or min(half, 8.0)


def frames_info(u, opt: Options) -> dict:
    """``n_frames_analysed``: the frames of ``u`` that --start/--stop/--step select."""
    return {"n_frames_analysed": len(range(*slice(opt.start, opt.stop, opt.step).indices(len(u.trajectory))))}


def water_or_none(u):
    """The water molecules of ``u`` (:func:`mlip_server.analysis.molecules.find_water`), or None when its
    atoms are not water."""
    from ..molecules import find_water

    try:
        return find_water(u)
    except AnalysisInputError:
        return None


def input_info(u, traj: str, fmt: str | None, dt_ps: float | None, beads=None) -> dict:
    """The ``input`` section of ``summary.json``: what was analysed.

    Parameters
    ----------
    u : MDAnalysis.Universe
        The loaded trajectory.
    traj : str
        Its file.
    fmt : str or None
        The format asked for (None: guessed).
    dt_ps : float or None
        Time between frames, ps.
    beads : str or int, optional
        ``centroid`` or the bead read.

    Returns
    -------
    dict
        ``trajectory`` (absolute path), ``format``, ``n_atoms``, ``n_frames``,
        ``box_first_frame_A_deg`` (Å, degrees, or None), ``dt_ps``, ``beads``, ``elements``.
    """
    return {
        "trajectory": os.path.abspath(traj),
        "format": fmt or "auto",
        "n_atoms": int(u.atoms.n_atoms),
        "n_frames": len(u.trajectory),
        "box_first_frame_A_deg": None if u.dimensions is None else [float(x) for x in u.dimensions],
        "dt_ps": dt_ps,
        "beads": beads,
        "elements": sorted(set(map(str, u.atoms.elements))),
    }
