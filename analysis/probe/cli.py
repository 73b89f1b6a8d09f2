"""``mlip-probe MODEL [--level quick|full|tiny]``: the paper's symmetry-breaking study for one model.

    mlip-probe models/water-pet.pt --level quick --report docs/probe-water-pet.md
    make probe MODEL=models/water-pet.pt LEVEL=quick

Writes REPORT (markdown), a folder next to it with the PNGs and ``probe.json``, and keeps the
MD runs in ``--work`` (default ``runs/<report name>-<date>``). Order: timings on the idle machine,
then the MD runs in the background while the single-point sections run, then the analyses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ase.io
import numpy as np

from server.core.errors import MLIPError

from . import dynamics, report, static
from .levels import LEVELS

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def default_dataset():
    """The shipped water structures: a 64-molecule liquid frame, a gas-phase molecule and,
    when the ice cells are available, the smallest proton-disordered cell."""
    from server.structures import water_molecule

    frames = [ase.io.read(dynamics.SHIPPED_LIQUID, index=0)]
    mol = water_molecule(center=(15.0, 15.0, 15.0))
    mol.cell, mol.pbc = [30.0, 30.0, 30.0], False
    frames.append(mol)
    ice = SHARED / "structures" / "ice" / "ice_ih_disordered_02.xyz"
    names = "liquid (64 molecules), gas-phase molecule"
    if ice.is_file():
        frames.append(ase.io.read(ice, index=0))
        names += ", ice Ih cell 02"
    return frames, names


def load_dataset(path, n_frames: int):
    if not Path(path).is_file():
        raise MLIPError(f"dataset {path} not found: pass --dataset FILE (extended XYZ, ASE-readable)")
    frames = ase.io.read(path, index=":")
    if len(frames) > n_frames:
        frames = [frames[int(k)] for k in np.linspace(0, len(frames) - 1, n_frames)]
    return frames, f"{Path(path).name}, {len(frames)} frames evenly spaced"


def machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_at_start": os.getloadavg()[0]}


def _molecule_summary(s) -> dict:
    am = s["symmetry"]["angular_momentum"]
    cons = s["symmetry"]["conserved"]
    return {"torque_rms_eV": am["torque_rms_eV"], "L_norm_mean_hbar": am["L_norm_mean_hbar"],
            "L_norm_mean_hbar_err": am["L_norm_mean_hbar_err"],
            "L_drift_norm_hbar_per_ps": float(np.linalg.norm(am["L_drift_hbar_per_ps"])),
            "drift_meV_per_ps": cons["drift_meV_per_ps_per_molecule"], "drift_err": cons["drift_err"]}


def _peak_with_error(analysis_dir, summary):
    p = summary["rdf"]["pairs"]["OO"]
    t = report.read_table(Path(analysis_dir) / "rdf.dat")
    k = int(np.argmin(np.abs(t["r_A"] - p["first_peak_r_A"])))
    return p["first_peak_g"], float(t["g_OO_err"][k])


def _coordination_within(analysis_dir, radius):
    """Running O–O coordination number n(radius) and its block error, from rdf.dat (n is tabulated at
    each bin's upper edge)."""
    t = report.read_table(Path(analysis_dir) / "rdf.dat")
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
    ("⟨cos θ⟩ dipole vs z", lambda s, d, shell: (s["orientation"]["mean_cos_theta"],
                                                s["orientation"]["mean_cos_theta_err"])),
    ("D (1e-5 cm²/s)", lambda s, d, shell: (s["msd"]["D_1e-5_cm2_per_s"], s["msd"]["D_1e-5_cm2_per_s_err"])
     if "msd" in s else (None, None)),
    ("τ1 dipole (ps)", lambda s, d, shell: (s["dipole"].get("tau1_ps"), s["dipole"].get("tau1_ps_err"))),
    ("τ2 dipole (ps)", lambda s, d, shell: (s["dipole"].get("tau2_ps"), s["dipole"].get("tau2_ps_err"))),
]


def liquid_section(runs, level) -> dict:
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
        vs = {names[k]: report.compare(raw[0], raw[1], v[0], v[1], level.n_blocks)
              for k, v in enumerate(values) if k > 0}
        comparisons.append({"label": label, "values": values, "vs_raw": vs})
    return {"runs": names, "comparisons": comparisons, "n_molecules": level.liquid_molecules,
            "length_ps": level.liquid_inner_steps * dynamics.INNER_FS / 1000, "stride_fs": level.liquid_stride_fs,
            "n_blocks": level.n_blocks, "nmts": level.liquid_nmts, "average": level.liquid_average,
            "skip_fraction": 0.1, "first_shell_r_A": shell,
            "wall_ms_per_step": {n: 1e3 * runs[n]["wall_s"] / level.liquid_inner_steps for n in names}}


def probe(args) -> dict:
    import torch
    from server.core.evaluator import Evaluator

    level = LEVELS[args.level]
    t_start = time.monotonic()
    report_path = Path(args.report)
    figures = report_path.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or ROOT / "runs" / f"{report_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if work.exists() and any(work.iterdir()):
        raise MLIPError(f"work folder {work} is not empty: remove it or pass --work DIR")
    work.mkdir(parents=True, exist_ok=True)
    results = {"model": str(args.model), "level": level.name, "machine": machine(), "device": args.device}
    frames, description = (load_dataset(args.dataset, level.n_dataset_frames) if args.dataset
                           else default_dataset())
    liquid = ase.io.read(dynamics.SHIPPED_LIQUID, index=0)  # the timing structure (192 atoms)

    # 2. cost, on the idle machine, as MD serves the model (float32)
    print("probe: timing the grids", flush=True)
    torch.set_num_threads(args.threads)
    ev32 = Evaluator(args.model, device=args.device, dtype="float32")
    cost = static.timings(ev32, liquid, level.grids, repeats=level.timing_repeats)
    cost.update({"threads": args.threads, "repeats": level.timing_repeats})
    results["cost"] = cost

    # 3./4. MD in the background
    print("probe: starting the molecule and liquid runs", flush=True)
    jobs = {**dynamics.molecule_jobs(Path(args.model).resolve(), level, args.device),
            **dynamics.liquid_jobs(Path(args.model).resolve(), level, args.device)}
    with ThreadPoolExecutor(max_workers=1) as pool:
        md_runs = pool.submit(dynamics.run_all, jobs, work)
        # 1. and 5., single points in float64 while the MD runs
        torch.set_num_threads(1)
        ev64 = Evaluator(args.model, device=args.device, dtype="float64")
        print("probe: convergence of the grids", flush=True)
        conv = static.convergence(ev64, frames, level.grids, level.reference_grid)
        conv["description"] = description
        results["convergence"] = conv
        ice_cells = sorted(Path(args.ice_dir).glob("ice_ih_disordered_*.xyz")) if args.ice_dir else []
        if ice_cells:
            print("probe: ice cells", flush=True)
            results["ice"] = static.ice(ev64, ice_cells, level.ice_grid, level.ice_max_atoms)
        runs = md_runs.result()  # waits for the MD; re-raises a failed run

    print("probe: analysing the runs", flush=True)
    mol = {}
    for name, key in (("molecule-raw", "raw"), ("molecule-2i", "2i")):
        d = runs[name]
        d["analysis"] = str(work / name / "analysis")
        s = dynamics.analyse(d["dir"], d["analysis"], level.molecule_stride * dynamics.INNER_FS, level.n_blocks,
                             command="symmetry")
        mol[key] = _molecule_summary(s)
    mol["length_ps"] = level.molecule_steps * dynamics.INNER_FS / 1000
    results["molecule"] = mol
    liquid_runs = {}
    for name in [n for n in jobs if n.startswith("liquid")]:
        d = runs[name]
        d["analysis"] = str(work / name / "analysis")
        start = int(0.1 * dynamics.n_frames(d["dir"]))
        d["summary"] = dynamics.analyse(d["dir"], d["analysis"], level.liquid_stride_fs, level.n_blocks, start=start)
        liquid_runs[name.replace("liquid-", "")] = d
    results["liquid"] = liquid_section(liquid_runs, level)

    results["verdicts"] = {"convergence": report.verdict_convergence(results["convergence"]),
                           "cost": report.verdict_cost(results["cost"]),
                           "molecule": report.verdict_molecule(results["molecule"]),
                           "liquid": report.verdict_liquid(results["liquid"])}
    report.plot_convergence(results["convergence"], figures / "convergence.png")
    report.plot_molecule({k: runs[n] for k, n in (("raw", "molecule-raw"), ("2i", "molecule-2i"))},
                         figures / "molecule.png")
    report.plot_liquid(liquid_runs, figures / "liquid.png")
    if "ice" in results:
        results["verdicts"]["ice"] = report.verdict_ice(results["ice"])
        if "rel_delta_max_meV" in results["ice"]:
            report.plot_ice(results["ice"], figures / "ice.png")
    results["wall_s"] = time.monotonic() - t_start
    (figures / "probe.json").write_text(json.dumps(output_jsonable(results), indent=1))
    report.write_markdown(results, report_path, figures)
    print(f"probe: report {report_path} ({results['wall_s'] / 60:.1f} min)", flush=True)
    return results


def output_jsonable(x):
    from analysis.output import jsonable

    if isinstance(x, dict):
        return {str(k): output_jsonable(v) for k, v in x.items() if k != "summary"}
    if isinstance(x, (list, tuple)):
        return [output_jsonable(v) for v in x]
    return jsonable(x)


def build_parser():
    p = argparse.ArgumentParser(prog="mlip-probe", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="TorchScript model (contract or metatomic)")
    p.add_argument("--level", default="quick", choices=sorted(LEVELS))
    p.add_argument("--report", help="markdown report to write (default docs/probe-<model name>.md)")
    p.add_argument("--work", help="folder for the MD runs (default runs/<report name>-<date>)")
    p.add_argument("--dataset", help="extended XYZ test set for section 1 (e.g. ../shared/data/dft/"
                   "water_revpbe0d3_190.xyz); with energy/forces labels, errors against them are reported")
    p.add_argument("--ice-dir", default=str(SHARED / "structures" / "ice"),
                   help="folder with ice_ih_disordered_*.xyz cells (section 5 is skipped without it)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the timings")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (single points and MD servers)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.model).is_file():
        print(f"mlip-probe: error: model {args.model} not found: pass a TorchScript model file", file=sys.stderr)
        return 2
    args.report = args.report or str(ROOT / "docs" / f"probe-{Path(args.model).stem}.md")
    try:
        probe(args)
    except MLIPError as err:
        print(f"mlip-probe: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
