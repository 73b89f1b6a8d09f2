"""One function per ``mlip-analyse`` sub-command: run the analysis, then write its table(s),
PNG plot (:mod:`analysis.plots`) and ``summary.json`` section into the output folder. Nothing
is written before the analysis has finished, so a failure leaves the folder as it was.

Each function takes the loaded Universe (or paths) and an :class:`Options` and returns the
summary dictionary it wrote; :func:`every_analysis` runs all that apply (``mlip-analyse all``).
From Python::

    from analysis.commands import Options, every_analysis
    from analysis.readers import load_universe

    load = lambda path, **kw: load_universe(path, timestep_fs=10, **kw)
    every_analysis(load("run/sim.pos_0.extxyz"), "run/sim.pos_0.extxyz", Options(out="out", dt_ps=0.01), load)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from . import output, plots
from .errors import AnalysisInputError, require_box
from .ipi_files import find_ipi_outputs, ipi_prefix, read_properties, time_axis
from .reference import load_reference
from .statistics import DEFAULT_BLOCKS
from .uncertainty import (
    DEFAULT_WORST,
    extras_column,
    extras_names,
    find_extras,
    read_extras,
    uncertainty_statistics,
    verdict,
)

__all__ = [
    "Options",
    "rdf",
    "msd",
    "orientation",
    "dipole",
    "symmetry",
    "uncertainty",
    "every_analysis",
    "input_info",
    "TIMESTEP_FIX",
]

TIMESTEP_FIX = "pass --timestep FS (time between stored frames, fs)"


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
        kw = self.run_kw(parallel)
        if "progressbar_kwargs" in kw:
            kw["progressbar_kwargs"] = {"desc": desc}
        return kw

    def path(self, name):
        return os.path.join(self.out, name)


def _rmax(u, opt) -> float:
    """--rmax, or min(L/2, 8 Å); refuse an r_max beyond half the box (minimum-image counts
    would be incomplete there)."""
    from .rdf import default_rmax

    half = default_rmax(u, cap=np.inf)
    if opt.rmax is not None and opt.rmax > half + 1e-6:
        raise AnalysisInputError(
            f"--rmax {opt.rmax:g} Å exceeds half the box width ({half:.3f} Å): pass --rmax <= {half:.3f}"
        )
    return opt.rmax or min(half, 8.0)


def _frames_info(u, opt):
    return {"n_frames_analysed": len(range(*slice(opt.start, opt.stop, opt.step).indices(len(u.trajectory))))}


# --------------------------------------------------------------------------- RDF
def rdf(u, opt: Options) -> dict:
    """g_OO, g_OH, g_HH (water, intramolecular pairs excluded) or all element pairs."""
    from .molecules import find_water
    from .rdf import BlockRDF, water_rdfs

    require_box(u, "g(r)")
    refs = [load_reference(s) for s in opt.references]
    rmax = _rmax(u, opt)
    try:
        water = find_water(u)
    except AnalysisInputError:
        water = None
    if water is not None:
        res = water_rdfs(u, water, rmax=rmax, nbins=opt.nbins, n_blocks=opt.n_blocks, run_kw=opt.run_kw())
    else:
        els = sorted(set(u.atoms.elements))
        res = {}
        for i, a in enumerate(els):
            for b in els[i:]:
                ga, gb = u.select_atoms(f"element {a}"), u.select_atoms(f"element {b}")
                res[a + b] = BlockRDF(
                    ga,
                    gb,
                    nbins=opt.nbins,
                    range=(0.0, rmax),
                    exclusion_block=(1, 1) if a == b else None,
                    n_blocks=opt.n_blocks,
                ).run(**opt.run_kw_for(f"g(r) {a}-{b}"))
    first = next(iter(res.values())).results
    cols = {"r_A": first.bins}
    summary = {
        "rmax_A": rmax,
        "nbins": opt.nbins,
        "n_blocks": opt.n_blocks,
        "intramolecular_excluded": water is not None,
        "pairs": {},
    }
    for name, a in res.items():
        r = a.results
        cols[f"g_{name}"] = r.rdf
        cols[f"g_{name}_err"] = r.rdf_err
        cols[f"n_{name}"] = r.cn
        cols[f"n_{name}_err"] = r.cn_err
        summary["pairs"][name] = {
            "first_peak_r_A": r.first_peak[0],
            "first_peak_g": r.first_peak[1],
            "first_min_r_A": r.first_min,
            "coordination_first_shell": r.cn_shell,
            "coordination_first_shell_err": r.cn_shell_err,
        }
    summary.update(_frames_info(u, opt))
    summary["references"] = [{"file": x.label, "partial": x.partial} for x in refs]

    fig = plots.rdf_figure(res, refs, rmax)
    header = (
        f"radial distribution functions; r in Å (bin centres), n = running coordination number; "
        f"errors: block standard errors over {opt.n_blocks} blocks"
    )
    output.write_table(opt.path("rdf.dat"), cols, header)
    output.save_figure(fig, opt.path("rdf.png"))
    output.update_summary(opt.out, "rdf", summary)
    return summary


# --------------------------------------------------------------------------- MSD
def msd(u, opt: Options) -> dict:
    """Oxygen (or molecular-centre) MSD and self-diffusion coefficient."""
    from .molecules import find_water
    from .msd import MSD

    require_box(u, "MSD unwrapping")
    if opt.dt_ps is None:
        raise AnalysisInputError(f"the MSD needs the time between frames: {TIMESTEP_FIX}")
    water = None
    if opt.msd_group == "com":
        water = find_water(u)
    else:
        try:
            water = find_water(u)
        except AnalysisInputError:
            water = None
    m = MSD(
        u,
        water=water,
        group=opt.msd_group,
        dt_ps=opt.dt_ps,
        fit_window=opt.fit_window,
        n_blocks=opt.n_blocks,
        viscosity=opt.viscosity,
        temperature=opt.temperature,
    )
    m.run(**opt.run_kw_for(f"MSD ({opt.msd_group})", parallel=False))
    r = m.results
    summary = {
        "group": opt.msd_group,
        "D_A2_per_ps": r.D,
        "D_A2_per_ps_err": r.D_err,
        "D_1e-5_cm2_per_s": r.D_1e5cm2s,
        "D_1e-5_cm2_per_s_err": r.D_1e5cm2s_err,
        "fit_window_ps": list(r.fit_window),
        "D_blocks_A2_per_ps": r.D_blocks,
        "n_blocks": opt.n_blocks,
        "drift_removed": True,
        "dt_ps": opt.dt_ps,
    }
    if opt.viscosity:
        summary.update(
            {
                "viscosity_mPa_s": opt.viscosity,
                "temperature_K": opt.temperature,
                "yeh_hummer_correction_A2_per_ps": r.yh_correction,
                "D_yeh_hummer_A2_per_ps": r.D_yh,
                "D_yeh_hummer_1e-5_cm2_per_s": r.D_yh * 10.0,
            }
        )
    summary.update(_frames_info(u, opt))
    fig = plots.msd_figure(r)
    output.write_table(
        opt.path("msd.dat"),
        {"t_ps": r.time, "msd_A2": r.msd, "msd_A2_err": r.msd_err},
        f"mean-squared displacement of {opt.msd_group}, unwrapped, centre-of-mass drift removed",
    )
    output.save_figure(fig, opt.path("msd.png"))
    output.update_summary(opt.out, "msd", summary)
    return summary


# --------------------------------------------------------------------------- orientation
def orientation(u, opt: Options) -> dict:
    """P(cos theta, phi) of the water dipoles and -ln P."""
    from .dipoles import DipoleOrientation
    from .molecules import find_water

    water = find_water(u)
    d = DipoleOrientation(u, water, n_cos=opt.n_cos, n_phi=opt.n_phi, n_blocks=opt.n_blocks)
    d.run(**opt.run_kw_for("dipole orientation", parallel=False))
    r = d.results
    cc = 0.5 * (r.cos_edges[1:] + r.cos_edges[:-1])
    pc = 0.5 * (r.phi_edges[1:] + r.phi_edges[:-1])
    C, P = np.meshgrid(cc, pc, indexing="ij")
    summary = {
        "n_cos": opt.n_cos,
        "n_phi": opt.n_phi,
        "n_molecules": water.n_molecules,
        "P_max": float(r.P.max()),
        "P_min": float(r.P.min()),
        "free_energy_range_kT": float(np.nanmax(r.free_energy) - np.nanmin(r.free_energy)),
        "mean_cos_theta": r.mean_cos,
        "mean_cos_theta_err": r.mean_cos_err,
        "P_cos": r.P_cos,
        "P_cos_err": r.P_cos_err,
        "n_blocks": opt.n_blocks,
    }
    summary.update(_frames_info(u, opt))
    fig = plots.orientation_figure(r, cc)
    output.write_table(
        opt.path("orientation.dat"),
        {
            "cos_theta": C.ravel(),
            "phi_rad": P.ravel(),
            "P": r.P.ravel(),
            "P_err": r.P_err.ravel(),
            "minus_ln_P": r.free_energy.ravel(),
        },
        "dipole orientation distribution at bin centres, normalised so isotropic = 1",
    )
    output.save_figure(fig, opt.path("orientation.png"))
    output.update_summary(opt.out, "orientation", summary)
    return summary


# --------------------------------------------------------------------------- dipole
def dipole(u, opt: Options) -> dict:
    """c_L(r), c_T(r); C1(t), C2(t) and reorientation times; dielectric constant (charges)."""
    from .dipoles import DielectricConstant, DipoleAutocorrelation, DipolePairCorrelation
    from .molecules import find_water

    water = find_water(u)
    require_box(u, "c_L(r), c_T(r)")
    rmax = _rmax(u, opt)
    nb = max(10, int(round(rmax / 0.1)))
    pc = DipolePairCorrelation(u, water, rmax=rmax, nbins=nb, n_blocks=opt.n_blocks)
    pc.run(**opt.run_kw_for("c_L, c_T"))
    p = pc.results
    summary = {"rmax_A": rmax, "nbins": nb, "n_blocks": opt.n_blocks}
    ac = None
    if opt.dt_ps is not None:
        ac = DipoleAutocorrelation(u, water, dt_ps=opt.dt_ps, n_blocks=opt.n_blocks)
        ac.run(**opt.run_kw_for("dipole autocorrelation", parallel=False))
        a = ac.results
        summary.update(
            {
                "tau1_ps": a.tau1,
                "tau1_ps_err": a.tau1_err,
                "tau1_complete": a.tau1_complete,
                "tau2_ps": a.tau2,
                "tau2_ps_err": a.tau2_err,
                "tau2_complete": a.tau2_complete,
                "dt_ps": opt.dt_ps,
            }
        )
    else:
        summary["autocorrelation"] = f"skipped: {TIMESTEP_FIX}"
    if opt.charges:
        de = DielectricConstant(u, water, opt.charges, temperature=opt.temperature, n_blocks=opt.n_blocks)
        de.run(**opt.run_kw_for("total dipole", parallel=False))
        e = de.results
        summary.update(
            {
                "charges_e": opt.charges,
                "temperature_K": opt.temperature,
                "epsilon": e.epsilon,
                "epsilon_err": e.epsilon_err,
                "M2_fluctuation_e2A2": e.M2_fluct,
                "M2_fluctuation_err": e.M2_fluct_err,
                "mu_molecule_D": e.mu_molecule,
                "mu_molecule_D_err": e.mu_molecule_err,
            }
        )
    else:
        summary["dielectric"] = "skipped: pass --charges, e.g. O=-0.8476 H=0.4238 (SPC/E)"
    summary.update(_frames_info(u, opt))

    fig = plots.dipole_figure(p, ac.results if ac else None)
    output.write_table(
        opt.path("dipole_correlation.dat"),
        {
            "r_A": p.bins,
            "c_L": p.c_L,
            "c_L_err": p.c_L_err,
            "c_T": p.c_T,
            "c_T_err": p.c_T_err,
            "pairs": p.pairs,
        },
        "longitudinal/transverse dipole correlations over O-O pairs at distance r (Å)",
    )
    if ac:
        a = ac.results
        output.write_table(
            opt.path("dipole_acf.dat"),
            {"t_ps": a.time, "C1": a.C1, "C1_err": a.C1_err, "C2": a.C2, "C2_err": a.C2_err},
            "dipole autocorrelations C1 = <u(t).u(0)>, C2 = <P2(u(t).u(0))>",
        )
    output.save_figure(fig, opt.path("dipole.png"))
    output.update_summary(opt.out, "dipole", summary)
    return summary


# --------------------------------------------------------------------------- symmetry
def _column(props, wanted, fallbacks):
    for name in ([wanted] if wanted else []) + fallbacks:
        if name in props:
            return name
    if wanted:
        raise AnalysisInputError(
            f"no column {wanted!r} in the properties file (has {', '.join(props)}): pick one of those"
        )
    return None


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


def symmetry(traj: str, opt: Options, load, universe=None) -> dict:
    """ΔV statistics, conserved-energy drift (from the .out file) and L(t), torque (from
    positions + velocities/momenta + forces of a gas-phase molecule).

    ``load(path, velocities=..., forces=...)`` opens the positions as a Universe; ``universe``
    (optional, already loaded positions) is used to count molecules for the energy drift."""
    from .symmetry import AngularMomentum, conserved_drift, delta_v_statistics

    prefix = ipi_prefix(traj)
    found = find_ipi_outputs(prefix)
    props_path = opt.properties or (traj if traj.endswith(".out") else found.get("properties"))
    summary, notes = {}, []
    u = None
    pos = None if traj.endswith(".out") else traj
    pos = pos or found.get("positions")
    vel = opt.velocities or found.get("velocities") or found.get("momenta")
    frc = opt.forces or found.get("forces")
    if pos and (vel or frc):
        u = load(pos, velocities=vel, forces=frc)
    elif pos:
        notes.append(
            "angular momentum/torque skipped: no velocity, momentum or force trajectory found "
            "(pass --velocities/--momenta/--forces)"
        )
    if props_path is None and u is None:
        raise AnalysisInputError(
            f"nothing to analyse for symmetry next to {traj}: give the i-PI .out file (--properties) "
            "or velocity/force trajectories (--velocities, --forces)"
        )

    fig_panels = []
    if props_path:
        props = read_properties(props_path)
        summary["properties_file"] = props_path
        t = _time_axis_or_none(props, opt)
        raw = _column(props, opt.v_raw, ["pot_component_raw(0)", "pot_component(0)"])
        avg = _column(props, opt.v_avg, ["pot_component_raw(1)", "pot_component(1)"])
        if raw and avg and t is not None:
            dv = delta_v_statistics(props[avg], props[raw], t, opt.n_blocks)
            summary["delta_v"] = {k: v for k, v in dv.items() if np.ndim(v) == 0}
            summary["delta_v"].update({"v_avg_column": avg, "v_raw_column": raw})
            output.write_table(
                opt.path("symmetry_delta_v.dat"),
                {"t_ps": dv["time_ps"], "dV_meV": dv["series_meV"], "lag_ps": dv["lag_ps"], "acf": dv["acf"]},
                f"dV = {avg} - {raw} in meV; normalised autocorrelation of dV",
            )
            output.write_table(
                opt.path("symmetry_delta_v_spectrum.dat"),
                {
                    "freq_THz": dv["freq_THz"],
                    "freq_cm1": dv["freq_cm1"],
                    "psd_meV2_per_THz": dv["psd_meV2_per_THz"],
                },
                "one-sided power spectral density of dV",
            )
            fig_panels.append(("dv", dv))
        else:
            notes.append(
                "ΔV skipped: no pot_component_raw(0)/(1) columns (pass --v-raw and --v-avg) "
                "or no time axis (--timestep)"
            )
        if "conserved" in props and t is not None:
            nmol = opt.n_molecules or _count_molecules(u if u is not None else universe, pos, load) or 1
            summary["conserved"] = conserved_drift(t, props["conserved"], nmol, opt.n_blocks)
            fig_panels.append(("cons", (t, props["conserved"])))
    if u is not None:
        am = AngularMomentum(u, dt_ps=opt.dt_ps, n_blocks=opt.n_blocks)
        am.run(**opt.run_kw_for("angular momentum / torque"))
        r = am.results
        summary["angular_momentum"] = dict(r.summary)
        summary["angular_momentum"]["trajectory"] = pos
        output.write_table(
            opt.path("symmetry_angular_momentum.dat"),
            {
                "t_ps": r.time,
                "Lx_hbar": r.L_hbar[:, 0],
                "Ly_hbar": r.L_hbar[:, 1],
                "Lz_hbar": r.L_hbar[:, 2],
                "tau_x_eV": r.torque[:, 0],
                "tau_y_eV": r.torque[:, 1],
                "tau_z_eV": r.torque[:, 2],
            },
            "angular momentum about the centre of mass (ħ) and torque Σ(r - r_com) × F (eV)",
        )
        fig_panels.append(("L", r))
    summary["notes"] = notes
    if not fig_panels:
        raise AnalysisInputError(
            f"no symmetry diagnostic could be computed from {props_path or traj}: " + "; ".join(notes)
        )
    fig = plots.symmetry_figure(fig_panels)
    output.save_figure(fig, opt.path("symmetry.png"))
    output.update_summary(opt.out, "symmetry", summary)
    return summary


def _time_axis_or_none(props, opt):
    try:
        return time_axis(props, opt.dt_ps)
    except AnalysisInputError:
        return None


# --------------------------------------------------------------------------- uncertainty
COMMITTEE_FORCES_FIX = (
    "pass --committee-forces FILE (i-PI <trajectory filename='unc' extra_type='committee_force_std'> "
    "extras </trajectory> of a run served by mlip-server --committee)"
)


def _uncertainty_inputs(traj: str, opt: Options) -> dict:
    """The files of ``mlip-analyse uncertainty``: named by the options, else found next to TRAJ
    (TRAJ may itself be the positions or the committee_force_std extras file)."""
    for option, path in (
        ("--committee-forces", opt.committee_forces),
        ("--committee-energy", opt.committee_energy),
        ("--rotational", opt.rotational),
    ):
        if path and not os.path.isfile(path):
            raise AnalysisInputError(f"no such file: {path}: check {option}")
    prefix = ipi_prefix(traj)
    found = find_extras(prefix, opt.bead)
    own = extras_names(traj)
    traj_extras = bool(own)
    forces = opt.committee_forces or (traj if "committee_force_std" in own else None)
    forces = forces or found.get("committee_force_std")
    if forces is None:
        raise AnalysisInputError(
            f"no committee_force_std extras file found next to {traj} ({prefix}.*_{opt.bead}): "
            + COMMITTEE_FORCES_FIX
        )
    own_forces = extras_names(forces)
    energy = opt.committee_energy or (forces if "committee_energy_std" in own_forces else None)
    rotational = opt.rotational or (forces if "force_spread_rms" in own_forces else None)
    positions = None if traj_extras else traj
    if positions is None and opt.bead == 0:
        positions = find_ipi_outputs(prefix).get("positions")
    if positions is None:  # i-PI's default name, also when the comment lines do not say positions{...}
        names = [f"{prefix}.pos_{opt.bead}.{ext}" for ext in ("extxyz", "xyz", "pdb")]
        positions = next((p for p in names if os.path.isfile(p)), None)
    return {
        "forces": forces,
        "energy": energy or found.get("committee_energy_std"),
        "rotational": rotational or found.get("force_spread_rms"),
        "positions": positions,
    }


def _worst_frames(worst, frames, steps, sigma, positions, elements):
    """The frames of ``worst`` (:func:`analysis.uncertainty.uncertainty_statistics`, indices into
    ``frames``) per atom: the table rows (rank, frame, step, atom, with positions Z and x, y, z in Å,
    σ_i in eV/Å), their summary entries (the five atoms of largest σ_i) and (frame, step, σ_i) for
    the plot. ``sigma`` [frames in file, N]; ``positions`` the Universe or None."""
    from ase.data import atomic_numbers

    rows = {k: [] for k in ("rank", "frame", "step", "atom")}
    if positions is not None:
        rows.update({"Z": [], "x_A": [], "y_A": [], "z_A": []})
    rows["sigma_eV_A"] = []
    summary, plot = [], []
    n = sigma.shape[1]
    for rank, w in enumerate(worst, start=1):
        f = int(frames[w["frame"]])
        step, s_f = int(steps[f]), sigma[f]
        rows["rank"] += [rank] * n
        rows["frame"] += [f] * n
        rows["step"] += [step] * n
        rows["atom"] += list(range(n))
        rows["sigma_eV_A"] += list(s_f)
        entry = {
            "rank": rank,
            "frame": f,
            "step": step,
            "sigma_max_eV_A": w["sigma_max"],
            "sigma_mean_eV_A": float(s_f.mean()),
        }
        top = np.argsort(-s_f, kind="stable")[:5]
        if positions is not None:
            x = np.asarray(positions.trajectory[f].positions, dtype=float)
            rows["Z"] += [atomic_numbers.get(e, 0) for e in elements]
            for k, c in enumerate(("x_A", "y_A", "z_A")):
                rows[c] += list(x[:, k])
            entry["top_atoms"] = [
                {
                    "atom": int(i),
                    "element": elements[i],
                    "position_A": np.round(x[i], 6).tolist(),
                    "sigma_eV_A": float(s_f[i]),
                }
                for i in top
            ]
        else:
            entry["top_atoms"] = [{"atom": int(i), "sigma_eV_A": float(s_f[i])} for i in top]
        summary.append(entry)
        plot.append((f, step, s_f))
    return rows, summary, plot


def uncertainty(traj: str, opt: Options, load) -> dict:
    """Committee uncertainty along a run: max_i σ_i and mean σ per frame, the histogram of σ_i,
    the per-atom σ_i of the ``opt.n_worst`` frames with the largest max_i σ_i (with element and
    position when the positions are known), σ_E, and the ratio rotational spread / committee
    spread (:mod:`analysis.uncertainty`; forces eV/Å, energies eV, positions Å).

    ``traj`` is the run's position trajectory or its ``committee_force_std`` extras file; the
    other files come from ``opt.committee_forces``, ``opt.committee_energy``, ``opt.rotational``
    or are found next to it by prefix (bead ``opt.bead``). ``load(path)`` opens positions."""

    if opt.bead is None:
        raise AnalysisInputError(
            "the committee spread is per bead, not of the centroid: pass --beads K (a bead index)"
        )
    if opt.n_worst < 0:
        raise AnalysisInputError("--worst must be 0 or more (frames tabulated per atom)")
    files = _uncertainty_inputs(traj, opt)
    fx = read_extras(files["forces"], "the committee_force_std extras file (--committee-forces)")
    sigma = extras_column(fx, "committee_force_std", "--committee-forces")
    series = {}
    for key, name, option in (
        ("energy", "committee_energy_std", "--committee-energy"),
        ("rotational", "force_spread_rms", "--rotational"),
    ):
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

    elements = positions = None
    if files["positions"]:
        u = load(files["positions"])
        if u.atoms.n_atoms != sigma.shape[1]:
            raise AnalysisInputError(
                f"{files['positions']} has {u.atoms.n_atoms} atoms, {files['forces']} "
                f"{sigma.shape[1]} per-atom values: give the positions of the same run"
            )
        if len(u.trajectory) != fx.n_frames:
            raise AnalysisInputError(
                f"{files['positions']} has {len(u.trajectory)} frames, {files['forces']} {fx.n_frames}: "
                "write positions and extras with the same stride (or pass --committee-forces of this run)"
            )
        steps = getattr(u, "_mlip_steps", None)
        if steps is not None and len(steps) == fx.n_frames and not np.array_equal(steps, fx.steps):
            raise AnalysisInputError(
                f"the steps of {files['positions']} ({steps[0]}..{steps[-1]}) are not those of "
                f"{files['forces']} ({fx.steps[0]}..{fx.steps[-1]}): give files of the same run"
            )
        elements = [str(e) for e in u.atoms.elements]
        positions = u

    frames = np.arange(fx.n_frames)[slice(opt.start, opt.stop, opt.step)]
    if len(frames) == 0:
        raise AnalysisInputError(f"--start/--stop/--step select no frame of {fx.n_frames}: widen the range")
    st = uncertainty_statistics(
        sigma[frames],
        energy_std=series["energy"][frames] if "energy" in series else None,
        rotational=series["rotational"][frames] if "rotational" in series else None,
        rotational_energy=series["rotational_energy"][frames] if "rotational_energy" in series else None,
        elements=elements,
        n_blocks=opt.n_blocks,
        n_worst=opt.n_worst,
    )
    steps = fx.steps[frames]
    t = frames * opt.dt_ps if opt.dt_ps else None

    cols = {"frame": frames, "step": steps}
    if t is not None:
        cols["t_ps"] = t
    cols.update(
        {
            "sigma_max_eV_A": st["sigma_max"],
            "sigma_mean_eV_A": st["sigma_mean"],
            "sigma_rms_eV_A": st["sigma_rms"],
            "worst_atom": st["worst_atom"],
        }
    )
    header = (
        "committee force spread per frame: sigma_i = sqrt(sum_m |F_i^m - mean F_i|^2 / (M-1)) in eV/Å; "
        "sigma_max = max_i sigma_i, sigma_mean = mean_i sigma_i, sigma_rms = sqrt(mean_i sigma_i^2); "
        "worst_atom = index (0-based) of the largest sigma_i"
    )
    if "energy" in st:
        cols["energy_std_eV"] = st["energy_std"]
        header += "\nenergy_std_eV: committee energy spread sigma_E (eV, ddof = 1)"
    if "ratio" in st:
        cols["rotational_force_spread_eV_A"] = st["rotational"]
        cols["committee_force_rms_eV_A"] = st["committee_force_rms"]
        cols["ratio"] = st["ratio"]
        header += (
            "\nrotational_force_spread_eV_A: force_spread_rms (RMS over atoms and components of the std "
            "over the rotation grid, eV/Å); committee_force_rms_eV_A = sqrt(sum_i sigma_i^2 / (3N)) "
            "(the same per-component normalisation); ratio = rotational / committee"
        )
        if "energy_ratio" in st:
            cols["rotational_energy_spread_eV"] = st["rotational_energy"]
            cols["energy_ratio"] = st["energy_ratio"]
            header += "\nrotational_energy_spread_eV: energy_spread (eV); energy_ratio = it / sigma_E"

    edges = st["hist_edges"]
    hist = {
        "sigma_lo_eV_A": edges[:-1],
        "sigma_hi_eV_A": edges[1:],
        "count": st["hist_counts"],
        "density_per_eV_A": st["hist_density"],
    }
    for el, c in st["hist_by_element"].items():
        hist[f"count_{el}"] = c

    worst_rows, worst_summary, worst_plot = _worst_frames(
        st["worst"], frames, fx.steps, sigma, positions, elements
    )

    summary = {
        "force_std_file": os.path.abspath(files["forces"]),
        "energy_std_file": os.path.abspath(files["energy"]) if files["energy"] else None,
        "rotational_file": os.path.abspath(files["rotational"]) if files["rotational"] else None,
        "positions_file": os.path.abspath(files["positions"]) if files["positions"] else None,
        "units": {"force": "eV/Å", "energy": "eV", "position": "Å"},
        "n_frames": st["n_frames"],
        "n_frames_in_file": fx.n_frames,
        "n_atoms": st["n_atoms"],
        "n_blocks": opt.n_blocks,
        "sigma_max_mean_eV_A": st["sigma_max_mean"],
        "sigma_max_mean_eV_A_err": st["sigma_max_mean_err"],
        "sigma_mean_mean_eV_A": st["sigma_mean_mean"],
        "sigma_mean_mean_eV_A_err": st["sigma_mean_mean_err"],
        "sigma_max_overall_eV_A": st["sigma_max_overall"],
        "sigma_max_overall_frame": int(frames[st["sigma_max_overall_frame"]]),
        "sigma_rms_overall_eV_A": st["sigma_rms_overall"],
        "sigma_percentiles_eV_A": st["percentiles"],
        "by_element_eV_A": st["by_element"],
        "histogram": {"bins": len(edges) - 1, "range_eV_A": [float(edges[0]), float(edges[-1])]},
        "worst_frames": worst_summary,
    }
    if "energy" in st:
        e = st["energy"]
        summary["energy_std"] = {
            "mean_eV": e["mean"],
            "mean_eV_err": e["mean_err"],
            "max_eV": e["max"],
            "mean_eV_per_atom": e["mean_per_atom"],
        }
    if "rotational_summary" in st:
        rs = st["rotational_summary"]
        rot = {
            "rotational_force_spread_mean_eV_A": rs["rotational_mean"],
            "rotational_force_spread_mean_eV_A_err": rs["rotational_mean_err"],
            "committee_force_rms_mean_eV_A": rs["committee_mean"],
            "committee_force_rms_mean_eV_A_err": rs["committee_mean_err"],
            "ratio_mean": rs["ratio_mean"],
            "ratio_mean_err": rs["ratio_mean_err"],
            "ratio_max": rs["ratio_max"],
            "ratio_of_rms": rs["ratio_of_rms"],
            "definition": "ratio = force_spread_rms / sqrt(sum_i sigma_i^2 / (3N)) per frame",
            "verdict": verdict(rs["ratio_mean"]),
        }
        if "energy_ratio_mean" in rs:
            rot["energy_ratio_mean"] = rs["energy_ratio_mean"]
            rot["energy_ratio_mean_err"] = rs["energy_ratio_mean_err"]
        summary["rotational_vs_committee"] = rot
    else:
        summary["rotational_vs_committee"] = (
            "skipped: no force_spread_rms extras file (serve with averaging, e.g. address unix:NAME=2i, "
            "write extra_type='force_spread_rms' and pass --rotational FILE)"
        )

    fig = plots.uncertainty_figure(st, t if t is not None else steps, t is not None, worst_plot, elements)
    output.write_table(opt.path("uncertainty.dat"), cols, header)
    output.write_table(
        opt.path("uncertainty_histogram.dat"),
        hist,
        "histogram of the per-atom committee force spread sigma_i (eV/Å) over all atoms and frames; "
        "density normalised to integrate to 1 (per eV/Å); count_EL: atoms of element EL",
    )
    output.write_table(
        opt.path("uncertainty_worst.dat"),
        worst_rows,
        f"per-atom committee force spread sigma_i (eV/Å) of the {len(worst_summary)} frames with the "
        "largest max_i sigma_i (rank 1 = largest); frame = 0-based index in the extras file"
        + ("; Z = atomic number; x, y, z = position (Å)" if positions is not None else ""),
    )
    output.save_figure(fig, opt.path("uncertainty.png"))
    output.update_summary(opt.out, "uncertainty", summary)
    return summary


# --------------------------------------------------------------------------- all
def every_analysis(u, traj: str, opt: Options, load, symmetry_inputs: bool = False) -> dict:
    """``mlip-analyse all``: every analysis that applies, into one output folder.

    Runs :func:`rdf`, :func:`msd`, :func:`orientation`, :func:`dipole`, when an i-PI
    properties file lies next to ``traj`` (or ``symmetry_inputs``) :func:`symmetry`, and when a
    ``committee_force_std`` extras file does (or ``opt.committee_forces``) :func:`uncertainty`; an
    analysis that cannot run on this input (no time step, no water, ...) is skipped with a note
    on stderr. Writes the ``all`` section of ``summary.json`` (analysis -> ``done`` or why it
    was skipped).

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
    for name, fn in (("rdf", rdf), ("msd", msd), ("orientation", orientation), ("dipole", dipole)):
        try:
            results[name] = fn(u, opt)
            done[name] = "done"
        except AnalysisInputError as exc:
            if name == "rdf":
                raise
            done[name] = f"skipped: {exc}"
            print(f"note: {name} {done[name]}", file=sys.stderr)
    found = find_ipi_outputs(ipi_prefix(traj))
    if symmetry_inputs or "properties" in found:
        try:
            results["symmetry"] = symmetry(traj, opt, load, universe=u)
            done["symmetry"] = "done"
        except AnalysisInputError as exc:
            done["symmetry"] = f"skipped: {exc}"
            print(f"note: symmetry {done['symmetry']}", file=sys.stderr)
    else:
        done["symmetry"] = (
            "skipped: no i-PI properties (.out) file next to the trajectory (pass --properties)"
        )
    if opt.committee_forces or "committee_force_std" in find_extras(ipi_prefix(traj), opt.bead or 0):
        try:
            results["uncertainty"] = uncertainty(traj, opt, load)
            done["uncertainty"] = "done"
        except AnalysisInputError as exc:
            done["uncertainty"] = f"skipped: {exc}"
            print(f"note: uncertainty {done['uncertainty']}", file=sys.stderr)
    output.update_summary(opt.out, "all", done)
    return results


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
