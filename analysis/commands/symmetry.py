"""``mlip-analyse symmetry``: ΔV statistics and the conserved-energy drift (from the i-PI
properties file), angular momentum and torque (from positions with velocities or momenta and
forces; :mod:`mlip_server.analysis.symmetry`) -> ``symmetry_delta_v.dat``, ``symmetry_delta_v_spectrum.dat``,
``symmetry_angular_momentum.dat``, ``symmetry.png``, summary section ``symmetry``.
Units: ΔV in meV, t in ps, frequencies in THz and cm⁻¹, L in ħ, torque in eV."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import plots
from ..errors import AnalysisInputError
from ..ipi_files import read_properties, time_axis
from ..run_folder import find_run_files
from .common import Options, write_outputs

__all__ = ["symmetry"]


@dataclass
class _Diagnostics:
    """What the diagnostics computed so far: the summary section, notes on what was skipped,
    the tables (``(file, columns, header)``) and the figure panels."""

    summary: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    panels: list = field(default_factory=list)


def symmetry(traj: str, opt: Options, load, universe=None) -> dict:
    """ΔV statistics, conserved-energy drift (from the .out file) and L(t), torque (from
    positions + velocities/momenta + forces of a gas-phase molecule).

    ``traj`` is the run's positions or its ``.out`` file; the other files come from
    ``opt.properties``, ``opt.velocities``, ``opt.forces`` or :func:`find_run_files`.
    ``load(path, velocities=..., forces=...)`` opens the positions as a Universe; ``universe``
    (optional, already loaded positions) is used to count molecules for the energy drift."""
    props_path, pos, vel, frc = _inputs(traj, opt)
    d = _Diagnostics()
    u = None
    if pos and (vel or frc):
        u = load(pos, velocities=vel, forces=frc)
    elif pos:
        d.notes.append(
            "angular momentum/torque skipped: no velocity, momentum or force trajectory found "
            "(pass --velocities/--momenta/--forces)"
        )
    if props_path is None and u is None:
        raise AnalysisInputError(
            f"nothing to analyse for symmetry next to {traj}: give the i-PI .out file (--properties) "
            "or velocity/force trajectories (--velocities, --forces)"
        )
    if props_path:

        def n_molecules():
            return opt.n_molecules or _count_molecules(u if u is not None else universe, pos, load) or 1

        _properties_diagnostics(props_path, opt, n_molecules, d)
    if u is not None:
        _angular_momentum(u, pos, opt, d)
    d.summary["notes"] = d.notes
    if not d.panels:
        raise AnalysisInputError(
            f"no symmetry diagnostic could be computed from {props_path or traj}: " + "; ".join(d.notes)
        )
    fig = plots.symmetry_figure(d.panels)
    return write_outputs(opt, "symmetry", d.summary, fig, "symmetry.png", d.tables)


def _inputs(traj: str, opt: Options):
    """(properties file, positions, velocities or momenta, forces) of the run of ``traj``:
    named by the options, else found by :func:`find_run_files` (None where there are none)."""
    run = find_run_files(traj)
    is_out = traj.endswith(".out")
    props_path = opt.properties or (traj if is_out else run.properties)
    pos = (None if is_out else traj) or run.positions
    vel = opt.velocities or run.velocities or run.momenta
    frc = opt.forces or run.forces
    return props_path, pos, vel, frc


def _properties_diagnostics(props_path: str, opt: Options, n_molecules, d: _Diagnostics) -> None:
    """ΔV (meV) and the conserved-energy drift (meV/ps per molecule) from the properties file
    into ``d``; ``n_molecules()`` counts the molecules."""
    from ..symmetry import conserved_drift

    props = read_properties(props_path)
    d.summary["properties_file"] = props_path
    t = _time_axis_or_none(props, opt)
    raw = _column(props, opt.v_raw, ["pot_component_raw(0)", "pot_component(0)"])
    avg = _column(props, opt.v_avg, ["pot_component_raw(1)", "pot_component(1)"])
    if raw and avg and t is not None:
        _delta_v(props, avg, raw, t, opt, d)
    else:
        d.notes.append(
            "ΔV skipped: no pot_component_raw(0)/(1) columns (pass --v-raw and --v-avg) "
            "or no time axis (--frame-interval)"
        )
    if "conserved" in props and t is not None:
        d.summary["conserved"] = conserved_drift(t, props["conserved"], n_molecules(), opt.n_blocks)
        d.panels.append(("cons", (t, props["conserved"])))


def _delta_v(props, avg: str, raw: str, t, opt: Options, d: _Diagnostics) -> None:
    """ΔV = avg − raw (meV): statistics, autocorrelation and spectrum (THz, cm⁻¹)."""
    from ..symmetry import delta_v_statistics

    dv = delta_v_statistics(props[avg], props[raw], t, opt.n_blocks)
    d.summary["delta_v"] = {k: v for k, v in dv.items() if np.ndim(v) == 0}
    d.summary["delta_v"].update({"v_avg_column": avg, "v_raw_column": raw})
    d.tables.append(
        (
            "symmetry_delta_v.dat",
            {"t_ps": dv["time_ps"], "dV_meV": dv["series_meV"], "lag_ps": dv["lag_ps"], "acf": dv["acf"]},
            f"dV = {avg} - {raw} in meV; normalised autocorrelation of dV",
        )
    )
    d.tables.append(
        (
            "symmetry_delta_v_spectrum.dat",
            {
                "freq_THz": dv["freq_THz"],
                "freq_cm1": dv["freq_cm1"],
                "psd_meV2_per_THz": dv["psd_meV2_per_THz"],
            },
            "one-sided power spectral density of dV",
        )
    )
    d.panels.append(("dv", dv))


def _angular_momentum(u, pos: str, opt: Options, d: _Diagnostics) -> None:
    """L(t) about the centre of mass (ħ) and the torque (eV) into ``d``."""
    from ..symmetry import AngularMomentum

    am = AngularMomentum(u, dt_ps=opt.dt_ps, n_blocks=opt.n_blocks)
    am.run(**opt.run_kw_for("angular momentum / torque"))
    r = am.results
    d.summary["angular_momentum"] = dict(r.summary)
    d.summary["angular_momentum"]["trajectory"] = pos
    columns = {
        "t_ps": r.time,
        "Lx_hbar": r.L_hbar[:, 0],
        "Ly_hbar": r.L_hbar[:, 1],
        "Lz_hbar": r.L_hbar[:, 2],
        "tau_x_eV": r.torque[:, 0],
        "tau_y_eV": r.torque[:, 1],
        "tau_z_eV": r.torque[:, 2],
    }
    header = "angular momentum about the centre of mass (ħ) and torque Σ(r - r_com) × F (eV)"
    d.tables.append(("symmetry_angular_momentum.dat", columns, header))
    d.panels.append(("L", r))


def _column(props, wanted, fallbacks):
    """``wanted`` (which must be there), else the first of ``fallbacks`` the properties have."""
    if wanted:
        if wanted in props:
            return wanted
        raise AnalysisInputError(
            f"no column {wanted!r} in the properties file (has {', '.join(props)}): pick one of those"
        )
    return next((name for name in fallbacks if name in props), None)


def _count_molecules(u, pos, load) -> int | None:
    """Water molecules (= O atoms) of the run, from a loaded Universe or the positions file."""
    if u is None and pos:
        try:
            u = load(pos)
        except AnalysisInputError:
            return None
    if u is None:
        return None
    n_o = int(np.sum(np.asarray(u.atoms.elements) == "O"))
    return n_o or None


def _time_axis_or_none(props, opt: Options):
    try:
        return time_axis(props, opt.dt_ps)
    except AnalysisInputError:
        return None
