"""``mlip-analyse uncertainty``: the committee spread along a run, read from i-PI extras files
(:mod:`mlip_server.analysis.uncertainty`) -> ``uncertainty.dat``, ``uncertainty_histogram.dat``,
``uncertainty_worst.dat``, ``uncertainty.png``, summary section ``uncertainty``. This module
gathers and checks the inputs; :mod:`mlip_server.analysis.commands.uncertainty_outputs` builds the tables
and the summary. Units: forces eV/Å, energies eV, positions Å, time ps."""

from __future__ import annotations

import os

import numpy as np

from .. import plots
from ..errors import AnalysisInputError
from ..run_folder import find_run_files
from ..uncertainty import extras_column, extras_names, read_extras, uncertainty_statistics
from . import uncertainty_outputs as outputs
from .common import Options, write_outputs

__all__ = ["uncertainty", "COMMITTEE_FORCES_FIX"]

COMMITTEE_FORCES_FIX = (
    "pass --committee-forces FILE (i-PI <trajectory filename='unc' extra_type='committee_force_std'> "
    "extras </trajectory> of a run served by mlip-server --committee)"
)

_SERIES = (
    ("energy", "committee_energy_std", "--committee-energy"),
    ("rotational", "force_spread_rms", "--rotational"),
)
"""Per-frame series read besides σ_i: key of the inputs, extras quantity, option naming its file."""


def uncertainty(traj: str, opt: Options, load) -> dict:
    """Committee uncertainty along a run: max_i σ_i and mean σ per frame, the histogram of σ_i,
    the per-atom σ_i of the ``opt.n_worst`` frames with the largest max_i σ_i (with element and
    position when the positions are known), σ_E, and the ratio rotational spread / committee
    spread (:mod:`mlip_server.analysis.uncertainty`; forces eV/Å, energies eV, positions Å).

    ``traj`` is the run's position trajectory or its ``committee_force_std`` extras file; the
    other files come from ``opt.committee_forces``, ``opt.committee_energy``, ``opt.rotational``
    or :func:`find_run_files` (bead ``opt.bead``). ``load(path)`` opens positions."""
    _check_options(opt)
    files = _inputs(traj, opt)
    fx, sigma, series = _spreads(files)
    elements, positions = _positions(files, load, fx, sigma.shape[1])
    frames = np.arange(fx.n_frames)[slice(opt.start, opt.stop, opt.step)]
    if len(frames) == 0:
        raise AnalysisInputError(f"--start/--stop/--step select no frame of {fx.n_frames}: widen the range")
    picked = {key: values[frames] for key, values in series.items()}
    st = uncertainty_statistics(
        sigma[frames],
        energy_std=picked.get("energy"),
        rotational=picked.get("rotational"),
        rotational_energy=picked.get("rotational_energy"),
        elements=elements,
        n_blocks=opt.n_blocks,
        n_worst=opt.n_worst,
    )
    steps = fx.steps[frames]
    t = frames * opt.dt_ps if opt.dt_ps else None
    worst_rows, worst_summary, worst_plot = outputs.worst_frames(
        st["worst"], frames, fx.steps, sigma, positions, elements
    )
    summary = outputs.summary(st, files, fx.n_frames, frames, opt.n_blocks, worst_summary)
    fig = plots.uncertainty_figure(st, t if t is not None else steps, t is not None, worst_plot, elements)
    tables = [
        ("uncertainty.dat", *outputs.frame_table(st, frames, steps, t)),
        ("uncertainty_histogram.dat", *outputs.histogram_table(st)),
        (
            "uncertainty_worst.dat",
            worst_rows,
            outputs.worst_header(len(worst_summary), positions is not None),
        ),
    ]
    return write_outputs(opt, "uncertainty", summary, fig, "uncertainty.png", tables)


def _check_options(opt: Options) -> None:
    if opt.bead is None:
        raise AnalysisInputError(
            "the committee spread is per bead, not of the centroid: pass --bead K (a bead index)"
        )
    if opt.n_worst < 0:
        raise AnalysisInputError("--worst must be 0 or more (frames tabulated per atom)")


def _inputs(traj: str, opt: Options) -> dict:
    """The files (``forces``, ``energy``, ``rotational``, ``positions``; None where absent):
    named by the options, else ``traj`` itself when it holds the quantity, else found by
    :func:`find_run_files`. ``traj`` is the positions or the committee_force_std extras file."""
    for option, path in (
        ("--committee-forces", opt.committee_forces),
        ("--committee-energy", opt.committee_energy),
        ("--rotational", opt.rotational),
    ):
        if path and not os.path.isfile(path):
            raise AnalysisInputError(f"no such file: {path}: check {option}")
    run = find_run_files(traj, opt.bead)
    own = extras_names(traj)
    forces = opt.committee_forces or (traj if "committee_force_std" in own else None)
    forces = forces or run.extras.get("committee_force_std")
    if forces is None:
        raise AnalysisInputError(
            f"no committee_force_std extras file found next to {traj} ({run.prefix}.*_{opt.bead}): "
            + COMMITTEE_FORCES_FIX
        )
    own_forces = extras_names(forces)
    energy = opt.committee_energy or (forces if "committee_energy_std" in own_forces else None)
    rotational = opt.rotational or (forces if "force_spread_rms" in own_forces else None)
    return {
        "forces": forces,
        "energy": energy or run.extras.get("committee_energy_std"),
        "rotational": rotational or run.extras.get("force_spread_rms"),
        "positions": run.bead_positions if own else traj,
    }


def _spreads(files: dict):
    """(the committee_force_std file as read, σ_i [frames, N] in eV/Å, per-frame series:
    ``energy`` σ_E (eV), ``rotational`` force_spread_rms (eV/Å), ``rotational_energy``
    energy_spread (eV), those that the files hold). Refuses files of different frames."""
    fx = read_extras(files["forces"], "the committee_force_std extras file (--committee-forces)")
    sigma = extras_column(fx, "committee_force_std", "--committee-forces")
    series = {}
    for key, name, option in _SERIES:
        if files[key] is None:
            continue
        ex = fx if files[key] == files["forces"] else read_extras(files[key], f"the {name} file ({option})")
        if ex.n_frames != fx.n_frames or not np.array_equal(ex.steps, fx.steps):
            raise AnalysisInputError(
                f"{files[key]} has {ex.n_frames} frames (steps {ex.steps[0]}..{ex.steps[-1]}), "
                f"{files['forces']} {fx.n_frames} (steps {fx.steps[0]}..{fx.steps[-1]}): "
                "give extras files of the same run and stride"
            )
        series[key] = extras_column(ex, name, option)
        if key == "rotational" and "energy_spread" in ex.names:
            series["rotational_energy"] = extras_column(ex, "energy_spread", option)
    return fx, sigma, series


def _positions(files: dict, load, fx, n_atoms: int):
    """(elements, the positions Universe (Å)), or (None, None) without a positions file;
    refuses positions of another number of atoms, frames or steps than the extras ``fx``."""
    path = files["positions"]
    if not path:
        return None, None
    u = load(path)
    if u.atoms.n_atoms != n_atoms:
        raise AnalysisInputError(
            f"{path} has {u.atoms.n_atoms} atoms, {files['forces']} "
            f"{n_atoms} per-atom values: give the positions of the same run"
        )
    if len(u.trajectory) != fx.n_frames:
        raise AnalysisInputError(
            f"{path} has {len(u.trajectory)} frames, {files['forces']} {fx.n_frames}: "
            "write positions and extras with the same stride (or pass --committee-forces of this run)"
        )
    steps = getattr(u, "_mlip_steps", None)
    if steps is not None and len(steps) == fx.n_frames and not np.array_equal(steps, fx.steps):
        raise AnalysisInputError(
            f"the steps of {path} ({steps[0]}..{steps[-1]}) are not those of "
            f"{files['forces']} ({fx.steps[0]}..{fx.steps[-1]}): give files of the same run"
        )
    return [str(e) for e in u.atoms.elements], u
