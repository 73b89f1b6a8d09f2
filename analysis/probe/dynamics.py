"""MD sections of the probe: i-PI runs through :func:`mlip_server.ipi.launcher.run_many` (real i-PI,
real server), analysed with the ``mlip-analyse`` functions of :mod:`mlip_server.analysis.commands`, and the
section summaries built from those analyses. Times in fs/ps, energies eV.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlip_server.analysis.output import read_table
from mlip_server.analysis.statistics import welch_compare
from mlip_server.core.errors import MLIPError
from mlip_server.ipi.launcher import run_many
from mlip_server.paths import shipped_liquid

__all__ = [
    "RunFailed",
    "INNER_FS",
    "SHELL_FALLBACK_A",
    "OBSERVABLES",
    "run_all",
    "molecule_jobs",
    "liquid_jobs",
    "analyse",
    "n_frames",
    "molecule_summary",
    "liquid_section",
]

INNER_FS = 0.5  # inner time step of every run, fs
CHARGES = {"O": -0.8476, "H": 0.4238}  # SPC/E point charges (e) for the dielectric constant


class RunFailed(MLIPError):
    """A probe MD run failed; the message ends with the tail of its log."""


def run_all(jobs: dict, work: Path) -> dict:
    """Runs ``jobs`` concurrently and waits for all of them.

    Parameters
    ----------
    jobs : dict
        Name -> keywords of :func:`mlip_server.ipi.launcher.run_experiment` with the experiment under
        ``"experiment"`` (as :func:`molecule_jobs` and :func:`liquid_jobs` make them); each run
        goes to ``work/NAME`` and its progress to ``work/NAME.log``.
    work : Path
        Folder of the runs.

    Returns
    -------
    dict
        Name -> ``{"dir": run folder, "wall_s": wall time of the run in s, "exit": 0}``.

    Raises
    ------
    RunFailed
        When a run failed, with the last lines of its log.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    results = run_many({name: {**job, "out": str(work / name)} for name, job in jobs.items()}, logs=work)
    done = {}
    for name in jobs:
        result = results.get(name)
        if result is None or result.code != 0:
            log = work / f"{name}.log"
            tail = log.read_text().strip().splitlines()[-3:] if log.exists() else []
            why = " | ".join(tail) or (result.message if result is not None else "no result")
            code = result.code if result is not None else "none"
            raise RunFailed(f"probe run {name} failed (exit {code}): {why}")
        done[name] = {"dir": str(work / name), "wall_s": result.wall_s, "exit": result.code}
    return done


def molecule_jobs(model, level, device="cpu") -> dict:
    """Gas-phase molecule NVE, raw and ``2i`` (one thread each).

    Parameters
    ----------
    model : str or Path
        TorchScript model.
    level : mlip_server.analysis.probe.levels.Level
        Run lengths (steps of :data:`INNER_FS` fs) and output stride.
    device : str
        Device of the servers.

    Returns
    -------
    dict
        Jobs for :func:`run_all`: ``molecule-raw``, ``molecule-2i``.
    """
    opts = {
        "experiment": "molecule-nve",
        "model": str(model),
        "steps": level.molecule_steps,
        "stride": level.molecule_stride,
        "timestep": INNER_FS,
        "device": device,
        "threads": 1,
    }
    return {"molecule-raw": {**opts, "average": "none"}, "molecule-2i": {**opts, "average": "2i"}}


def liquid_jobs(model, level, device="cpu") -> dict:
    """Bulk liquid NVT at 300 K: the raw model; MTS with the averaged model as the slow force
    every ``nmts`` inner steps (two threads); a fresh random rotation per call. Same inner step
    (:data:`INNER_FS` fs) and output interval.

    Parameters
    ----------
    model : str or Path
        TorchScript model.
    level : mlip_server.analysis.probe.levels.Level
        Molecules, inner steps, ``nmts``, output interval (fs) and the averaging of the MTS run.
    device : str
        Device of the servers.

    Returns
    -------
    dict
        Jobs for :func:`run_all`: ``liquid-raw``, ``liquid-random``, ``liquid-mts-<average>``.
    """
    liquid = shipped_liquid()
    if level.liquid_molecules == 64 and liquid.is_file():
        start = {"structure": str(liquid)}
    else:
        start = {"molecules": level.liquid_molecules}
    start.update(model=str(model), device=device)
    stride = max(1, round(level.liquid_stride_fs / INNER_FS))
    outer_fs = INNER_FS * level.liquid_nmts
    single = {
        **start,
        "experiment": "water-nvt",
        "steps": level.liquid_inner_steps,
        "timestep": INNER_FS,
        "stride": stride,
        "threads": 1,
    }
    mts = {
        **start,
        "experiment": "water-nvt-mts",
        "steps": level.liquid_inner_steps // level.liquid_nmts,
        "timestep": outer_fs,
        "nmts": level.liquid_nmts,
        "stride": max(1, round(level.liquid_stride_fs / outer_fs)),
        "average": level.liquid_average,
        "threads": 2,
    }
    return {
        "liquid-raw": {**single, "average": "none"},
        "liquid-random": {**single, "average": "random", "seed": 7},
        f"liquid-mts-{level.liquid_average}": mts,
    }


def analyse(
    run_dir, out, dt_fs: float, n_blocks: int, command: str = "all", start: int | None = None
) -> dict:
    """What ``mlip-analyse COMMAND run_dir/sim.pos_0.extxyz`` computes, by direct calls.

    Parameters
    ----------
    run_dir : str or Path
        Run folder with ``sim.pos_0.extxyz`` (and the run's other i-PI outputs).
    out : str or Path
        Output folder of the analysis.
    dt_fs : float
        Time between stored frames, fs.
    n_blocks : int
        Blocks for the error bars.
    command : str
        ``all`` (every analysis, with SPC/E charges for the dielectric constant) or ``symmetry``.
    start : int, optional
        First frame analysed.

    Returns
    -------
    dict
        The analysis' ``summary.json``.
    """
    from mlip_server.analysis import output
    from mlip_server.analysis.commands import Options, every_analysis, input_info
    from mlip_server.analysis.commands.symmetry import symmetry
    from mlip_server.analysis.readers import load_universe

    traj = positions_file(run_dir)

    def load(path, velocities=None, forces=None):
        return load_universe(path, timestep_fs=dt_fs, velocities=velocities, forces=forces)

    opt = Options(
        out=str(out),
        n_blocks=n_blocks,
        dt_ps=dt_fs / 1000.0,
        start=start or None,
        verbose=False,
        charges=dict(CHARGES) if command == "all" else None,
    )
    if command == "symmetry":
        symmetry(traj, opt, load)
    elif command == "all":
        u = load(traj)
        every_analysis(u, traj, opt, load)
        output.update_summary(opt.out, "input", input_info(u, traj, None, opt.dt_ps))
    else:
        raise ValueError(f"analyse: unknown command {command!r} (all or symmetry)")
    return json.loads((Path(out) / "summary.json").read_text())


def positions_file(run_dir) -> str:
    """The bead-0 positions of run ``run_dir`` (``sim.pos_0.extxyz``), found by
    :func:`mlip_server.analysis.run_folder.find_run_files`."""
    from mlip_server.analysis.run_folder import find_run_files

    return find_run_files(str(run_dir)).require("bead_positions")


def n_frames(run_dir) -> int:
    """Frames in the positions of run ``run_dir`` (:func:`positions_file`)."""
    text = Path(positions_file(run_dir)).read_text().splitlines()
    n, count, i = int(text[0]), 0, 0
    while i + n + 2 <= len(text):
        count, i = count + 1, i + n + 2
    return count


# --------------------------------------------------------------------------- section summaries
def molecule_summary(s) -> dict:
    """Section 3 numbers of one molecule run from its ``symmetry`` summary.

    Parameters
    ----------
    s : dict
        ``summary.json`` of :func:`analyse` with ``command="symmetry"``.

    Returns
    -------
    dict
        ``torque_rms_eV``, ``L_norm_mean_hbar`` and its error (ħ), ``L_drift_norm_hbar_per_ps``,
        ``drift_meV_per_ps`` (per molecule) and ``drift_err``.
    """
    am = s["symmetry"]["angular_momentum"]
    cons = s["symmetry"]["conserved"]
    return {
        "torque_rms_eV": am["torque_rms_eV"],
        "L_norm_mean_hbar": am["L_norm_mean_hbar"],
        "L_norm_mean_hbar_err": am["L_norm_mean_hbar_err"],
        "L_drift_norm_hbar_per_ps": float(np.linalg.norm(am["L_drift_hbar_per_ps"])),
        "drift_meV_per_ps": cons["drift_meV_per_ps_per_molecule"],
        "drift_err": cons["drift_err"],
    }


def _peak_with_error(analysis_dir, summary):
    p = summary["rdf"]["pairs"]["OO"]
    t = read_table(Path(analysis_dir) / "rdf.dat")
    k = int(np.argmin(np.abs(t["r_A"] - p["first_peak_r_A"])))
    return p["first_peak_g"], float(t["g_OO_err"][k])


def _coordination_within(analysis_dir, radius):
    """Running O–O coordination number n(radius) and its block error, from rdf.dat (n is tabulated at
    each bin's upper edge)."""
    t = read_table(Path(analysis_dir) / "rdf.dat")
    edges = t["r_A"] + 0.5 * (t["r_A"][1] - t["r_A"][0])
    k = int(np.argmin(np.abs(edges - radius)))
    return float(t["n_OO"][k]), float(t["n_OO_err"][k])


SHELL_FALLBACK_A = 3.5
"""O–O first-shell radius (Å) when the raw run's g_OO has no first minimum below 1."""

OBSERVABLES = [  # label, function(summary, analysis dir, first-shell radius Å) -> (value, error)
    ("g_OO first peak height", lambda s, d, shell: _peak_with_error(d, s)),
    # every run is integrated to the same radius (the raw run's first minimum): each run's own
    # minimum can land in a different shell when the first minimum is shallow
    ("O coordination, first shell", lambda s, d, shell: _coordination_within(d, shell)),
    (
        "⟨cos θ⟩ dipole vs z",
        lambda s, d, shell: (s["orientation"]["mean_cos_theta"], s["orientation"]["mean_cos_theta_err"]),
    ),
    (
        "D (1e-5 cm²/s)",
        lambda s, d, shell: (
            (s["msd"]["D_1e-5_cm2_per_s"], s["msd"]["D_1e-5_cm2_per_s_err"]) if "msd" in s else (None, None)
        ),
    ),
    ("τ1 dipole (ps)", lambda s, d, shell: (s["dipole"].get("tau1_ps"), s["dipole"].get("tau1_ps_err"))),
    ("τ2 dipole (ps)", lambda s, d, shell: (s["dipole"].get("tau2_ps"), s["dipole"].get("tau2_ps_err"))),
]


def liquid_section(runs, level) -> dict:
    """Section 4: every observable of every liquid run, each compared with the raw run.

    Parameters
    ----------
    runs : dict
        Run name (the raw run first) -> ``{"summary": summary.json of :func:`analyse`,
        "analysis": its folder, "wall_s": wall time of the run in s}``.
    level : mlip_server.analysis.probe.levels.Level
        For the run lengths and the number of blocks.

    Returns
    -------
    dict
        ``runs``, ``comparisons`` (label, (value, error) per run, ``vs_raw`` from
        :func:`mlip_server.analysis.statistics.welch_compare`), the run settings, ``first_shell_r_A`` (Å)
        and ``wall_ms_per_step`` (ms per inner step).
    """
    names = list(runs)
    shell = runs[names[0]]["summary"]["rdf"]["pairs"]["OO"].get("first_min_r_A") or SHELL_FALLBACK_A
    comparisons = []
    for label, fn in OBSERVABLES:
        values = []
        for name in names:
            try:
                v, e = fn(runs[name]["summary"], runs[name]["analysis"], shell)
            except (KeyError, TypeError):
                v, e = None, None
            values.append((v, e))
        raw = values[0]
        vs = {
            names[k]: welch_compare(raw[0], raw[1], v[0], v[1], level.n_blocks)
            for k, v in enumerate(values)
            if k > 0
        }
        comparisons.append({"label": label, "values": values, "vs_raw": vs})
    return {
        "runs": names,
        "comparisons": comparisons,
        "n_molecules": level.liquid_molecules,
        "length_ps": level.liquid_inner_steps * INNER_FS / 1000,
        "stride_fs": level.liquid_stride_fs,
        "n_blocks": level.n_blocks,
        "nmts": level.liquid_nmts,
        "average": level.liquid_average,
        "skip_fraction": 0.1,
        "first_shell_r_A": shell,
        "wall_ms_per_step": {n: 1e3 * runs[n]["wall_s"] / level.liquid_inner_steps for n in names},
    }
