"""The probe's pipeline: every section measured, in order, then the report.

Order: timings on the idle machine (section 2); then the MD runs (sections 3 and 4,
:mod:`.dynamics`) while the single-point sections (1, 5 and, with a committee, 6,
:mod:`.static`) run next to them; then the analyses of the runs, the verdicts and the report
(:mod:`.report`).

    from mlip_server.analysis.probe.pipeline import probe
    probe("models/water-pet.pt", level="quick", report="docs/probe-water-pet.md")
    probe("models/water-pet.pt", committee=["a.pt", "b.pt"])  # + section 6
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ase.io
import numpy as np

from mlip_server.core.errors import InputError, MLIPError
from mlip_server.machine import describe
from mlip_server.paths import checkout_root, runs_dir, shipped_liquid

from . import dynamics, report, static
from .levels import LEVELS

__all__ = [
    "probe",
    "default_dataset",
    "load_dataset",
    "shared_data",
    "default_report",
    "output_jsonable",
]


def shared_data() -> Path:
    """``../shared/data`` next to the project checkout (DFT sets, ice cells; absent from an
    installed package: the sections that need it are then left out)."""
    try:
        return checkout_root().parent / "shared" / "data"
    except InputError:
        return Path("/nonexistent/shared/data")


def default_report(model) -> Path:
    """``runs/probe-<model name>-<date>/probe-<model name>.md`` (the git-ignored ``runs/``): a folder
    of this probe's own for the report, its figures, probe.json and the MD runs."""
    name = f"probe-{Path(model).stem}"
    return runs_dir() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}" / f"{name}.md"


def default_dataset():
    """The shipped water structures: a 64-molecule liquid frame, a gas-phase molecule and,
    when the ice cells are available, the smallest proton-disordered cell.

    Returns
    -------
    frames : list of ase.Atoms
    description : str
    """
    from mlip_server.structures import water_molecule

    frames = [ase.io.read(shipped_liquid(), index=0)]
    mol = water_molecule(center=(15.0, 15.0, 15.0))
    mol.cell, mol.pbc = [30.0, 30.0, 30.0], False
    frames.append(mol)
    ice = shared_data() / "structures" / "ice" / "ice_ih_disordered_02.xyz"
    names = "liquid (64 molecules), gas-phase molecule"
    if ice.is_file():
        frames.append(ase.io.read(ice, index=0))
        names += ", ice Ih cell 02"
    return frames, names


def load_dataset(path, n_frames: int):
    """``n_frames`` evenly spaced frames of an ASE-readable test set.

    Parameters
    ----------
    path : str or Path
        Extended XYZ (or any ASE format), optionally with energy/forces labels (eV, eV/Å).
    n_frames : int
        At most this many frames are kept.

    Returns
    -------
    frames : list of ase.Atoms
    description : str
    """
    if not Path(path).is_file():
        raise MLIPError(f"dataset {path} not found: pass --dataset FILE (extended XYZ, ASE-readable)")
    frames = ase.io.read(path, index=":")
    if len(frames) > n_frames:
        frames = [frames[int(k)] for k in np.linspace(0, len(frames) - 1, n_frames)]
    return frames, f"{Path(path).name}, {len(frames)} frames evenly spaced"


def _single_points(model, device, frames, description, level, ice_dir, committee=None) -> dict:
    """Sections 1, 5 and (with ``committee``, an Evaluator of the committee) 6 in float64 on one
    torch thread (they run next to the MD)."""
    import torch

    from mlip_server.loading import load_evaluator

    torch.set_num_threads(1)
    ev64 = load_evaluator(model, device=device, dtype="float64")
    print("probe: convergence of the grids", flush=True)
    out = {"convergence": static.convergence(ev64, frames, level.grids, level.reference_grid)}
    out["convergence"]["description"] = description
    ice_cells = sorted(Path(ice_dir).glob("ice_ih_disordered_*.xyz")) if ice_dir else []
    if ice_cells:
        print("probe: ice cells", flush=True)
        out["ice"] = static.ice(ev64, ice_cells, level.ice_grid, level.ice_max_atoms)
    if committee is not None:
        print("probe: symmetry breaking vs committee uncertainty", flush=True)
        out["committee"] = static.committee_vs_rotation(ev64, committee, frames, level.liquid_average)
        out["committee"]["description"] = description
    return out


def probe(
    model,
    *,
    level: str = "quick",
    report_path=None,
    work=None,
    dataset=None,
    ice_dir=None,
    threads: int = 2,
    device: str = "cpu",
    committee=None,
) -> dict:
    """Runs the whole probe of ``model`` and writes its report.

    Parameters
    ----------
    model : str or Path
        TorchScript model (contract or metatomic).
    level : str
        ``tiny``, ``quick`` or ``full`` (:data:`mlip_server.analysis.probe.levels.LEVELS`).
    report_path : str or Path, optional
        Markdown report (default :func:`default_report`); its PNGs and ``probe.json`` go to the
        folder of the same name.
    work : str or Path, optional
        Folder for the MD runs, which must be empty (default ``runs/<report name>-<date>``).
    dataset : str or Path, optional
        Test set of section 1 (default :func:`default_dataset`).
    ice_dir : str or Path, optional
        Folder of ``ice_ih_disordered_*.xyz`` cells (default ``shared/data/structures/ice``;
        ``""``: section 5 skipped).
    threads : int
        Torch threads for the timings.
    device : str
        ``cpu``, ``cuda`` or ``cuda:N``, for the single points and the MD servers.
    committee : list of str or Path, optional
        Two or more models (``--committee``): section 6 compares the probed model's rotational
        force spread with the committee's force spread on the section-1 frames
        (:func:`mlip_server.analysis.probe.static.committee_vs_rotation`). Without it the report is as before.

    Returns
    -------
    dict
        Everything in ``probe.json`` (and the analysis summaries of the liquid runs).

    Raises
    ------
    MLIPError
        A non-empty work folder, a missing dataset, a committee that cannot be loaded (missing
        file, fewer than two members, different elements), or a failed MD run
        (:class:`mlip_server.analysis.probe.dynamics.RunFailed`).
    """
    import torch

    from mlip_server.loading import load_evaluator

    lvl = LEVELS[level]
    t_start = time.monotonic()
    # the committee is loaded (and checked) before anything runs
    committee_ev = (
        load_evaluator([str(m) for m in committee], device=device, dtype="float64") if committee else None
    )
    report_path = Path(report_path or default_report(model))
    figures = report_path.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    work = Path(work or runs_dir() / f"{report_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if work.exists() and any(work.iterdir()):
        raise MLIPError(f"work folder {work} is not empty: remove it or pass --work DIR")
    work.mkdir(parents=True, exist_ok=True)
    ice_dir = shared_data() / "structures" / "ice" if ice_dir is None else ice_dir
    results = {"model": str(model), "level": lvl.name, "machine": describe(device), "device": device}
    frames, description = load_dataset(dataset, lvl.n_dataset_frames) if dataset else default_dataset()
    liquid = ase.io.read(shipped_liquid(), index=0)  # the timing structure (192 atoms)

    # 2. cost, on the idle machine, as MD serves the model (float32)
    print("probe: timing the grids", flush=True)
    torch.set_num_threads(threads)
    ev32 = load_evaluator(model, device=device, dtype="float32")
    cost = static.timings(ev32, liquid, lvl.grids, repeats=lvl.timing_repeats)
    cost.update({"threads": threads, "repeats": lvl.timing_repeats})
    results["cost"] = cost

    # 3./4. MD (here: run_many stops every run on Ctrl-C) while 1. and 5., single points, run next to it
    print("probe: starting the molecule and liquid runs", flush=True)
    resolved = Path(model).resolve()
    jobs = {**dynamics.molecule_jobs(resolved, lvl, device), **dynamics.liquid_jobs(resolved, lvl, device)}
    with ThreadPoolExecutor(max_workers=1) as pool:
        single = pool.submit(_single_points, model, device, frames, description, lvl, ice_dir, committee_ev)
        runs = dynamics.run_all(jobs, work)  # re-raises a failed run
        results.update(single.result())
    if committee:
        results["committee"]["members"] = [str(m) for m in committee]

    print("probe: analysing the runs", flush=True)
    mol = {}
    for name, key in (("molecule-raw", "raw"), ("molecule-2i", "2i")):
        d = runs[name]
        d["analysis"] = str(work / name / "analysis")
        s = dynamics.analyse(
            d["dir"], d["analysis"], lvl.molecule_stride * dynamics.INNER_FS, lvl.n_blocks, command="symmetry"
        )
        mol[key] = dynamics.molecule_summary(s)
    mol["length_ps"] = lvl.molecule_steps * dynamics.INNER_FS / 1000
    results["molecule"] = mol
    liquid_runs = {}
    for name in [n for n in jobs if n.startswith("liquid")]:
        d = runs[name]
        d["analysis"] = str(work / name / "analysis")
        start = int(0.1 * dynamics.n_frames(d["dir"]))
        d["summary"] = dynamics.analyse(
            d["dir"], d["analysis"], lvl.liquid_stride_fs, lvl.n_blocks, start=start
        )
        liquid_runs[name.replace("liquid-", "")] = d
    results["liquid"] = dynamics.liquid_section(liquid_runs, lvl)

    results["verdicts"] = {
        "convergence": report.verdict_convergence(results["convergence"]),
        "cost": report.verdict_cost(results["cost"]),
        "molecule": report.verdict_molecule(results["molecule"]),
        "liquid": report.verdict_liquid(results["liquid"]),
    }
    report.plot_convergence(results["convergence"], figures / "convergence.png")
    report.plot_molecule(
        {k: runs[n] for k, n in (("raw", "molecule-raw"), ("2i", "molecule-2i"))}, figures / "molecule.png"
    )
    report.plot_liquid(liquid_runs, figures / "liquid.png")
    if "ice" in results:
        results["verdicts"]["ice"] = report.verdict_ice(results["ice"])
        if "rel_delta_max_meV" in results["ice"]:
            report.plot_ice(results["ice"], figures / "ice.png")
    if "committee" in results:
        results["verdicts"]["committee"] = report.verdict_committee(results["committee"])
        report.plot_committee(results["committee"], figures / "committee.png")
    results["wall_s"] = time.monotonic() - t_start
    (figures / "probe.json").write_text(json.dumps(output_jsonable(results), indent=1))
    report.write_markdown(results, report_path, figures)
    print(f"probe: report {report_path} ({results['wall_s'] / 60:.1f} min)", flush=True)
    return results


def output_jsonable(x):
    """``results`` as plain JSON values, without the analysis summaries (``summary`` keys)."""
    from mlip_server.analysis.output import jsonable

    if isinstance(x, dict):
        return {str(k): output_jsonable(v) for k, v in x.items() if k != "summary"}
    if isinstance(x, (list, tuple)):
        return [output_jsonable(v) for v in x]
    return jsonable(x)
