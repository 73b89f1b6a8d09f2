"""Direct forces vs conservative ones, side by side in one run: model calls, i-PI wall time, NVE drift.

1. Model call (one Evaluator, neighbour list included), direct vs conservative, alternated call by
   call: a water molecule, 64 and 512 molecules (3, 192, 1536 atoms).
2. i-PI NVT, 64 molecules, the same simulated time: conservative raw at 0.5 fs (``water-nvt``),
   the seed's MTS (raw fast + 2i slow, ``water-nvt-mts``) and direct MTS (direct fast +
   conservative 2i slow, ``water-nvt-nc-mts``), both with a 0.5 fs inner step.
3. NVE, 64 molecules from the equilibrated liquid: drift of i-PI's conserved quantity
   (meV/atom/ps, a linear fit) for pure direct forces (0.5 fs), conservative (0.5 fs) and direct
   MTS with M = 4 and 8 (inner 0.5 fs; the slow force is the conservative 2i average).

    python -m bench.direct_forces [--model models/water-pet.pt] [--ps 0.1] [--nve-ps 0.25] [--repeat 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import default_model, machine, write
from mlip_server.core.graph import Structure
from mlip_server.loading import load_evaluator
from mlip_server.paths import experiments_dir
from mlip_server.structures import water_box, water_molecule

__all__ = ["main"]

SIZES = (1, 64, 512)
LIQUID = experiments_dir() / "structures" / "water-64-liquid-300K.extxyz"


def _structure(n: int) -> Structure:
    if n == 1:
        a = water_molecule()
        return Structure(numbers=a.numbers, positions=a.positions, cell=np.zeros((3, 3)), pbc=False)
    return Structure.from_ase(water_box(n, seed=1))


def calls(model: str, repeat: int, device: str = "cpu") -> list:
    """Median ms per call of conservative and direct evaluation, alternated."""
    ev = load_evaluator(model, device=device)
    rows = []
    for n in SIZES:
        s = _structure(n)
        for spec in (None, "direct"):
            ev.compute([s], spec)
            ev.compute([s], spec)
        times = {None: [], "direct": []}
        for _ in range(repeat if n < 512 else max(3, repeat // 3)):
            for spec in (None, "direct"):
                t0 = time.perf_counter()
                ev.compute([s], spec)
                times[spec].append(time.perf_counter() - t0)
        cons, direct = 1e3 * float(np.median(times[None])), 1e3 * float(np.median(times["direct"]))
        rows.append(
            {"atoms": len(s.numbers), "conservative_ms": cons, "direct_ms": direct, "ratio": direct / cons}
        )
        print(f"{len(s.numbers)} atoms: conservative {cons:.1f} ms, direct {direct:.1f} ms", flush=True)
    return rows


def _run(experiment: str, model: str, work: Path, name: str, args: list) -> dict:
    out = work / name
    cmd = [sys.executable, "-m", "mlip_server.ipi.launcher", experiment, "--model", model, "--out", str(out)]
    cmd += ["--progress", "0", "--stride", "1", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{experiment} {args} failed: {done.stderr[-1500:]}")
    data = np.loadtxt(out / "sim.out", ndmin=2)
    t_ps, conserved = data[:, 1], data[:, 2]
    slope = float(np.polyfit(t_ps, conserved, 1)[0]) if len(t_ps) > 2 else float("nan")
    atoms = 192
    return {
        "experiment": experiment,
        "args": " ".join(args),
        "wall_s": wall,
        "simulated_ps": float(t_ps[-1] - t_ps[0]),
        "wall_s_per_ps": wall / max(float(t_ps[-1] - t_ps[0]), 1e-12),
        "drift_meV_per_atom_per_ps": 1e3 * slope / atoms,
        "temperature_mean_K": float(data[:, 3].mean()),
    }


def md(model: str, ps: float, nve_ps: float, work: Path) -> dict:
    steps = lambda dt: str(int(round(ps * 1000 / dt)))  # noqa: E731
    common = ["--structure", str(LIQUID)]
    nvt = [
        _run("water-nvt", model, work, "nvt-cons", [*common, "--timestep", "0.5", "--steps", steps(0.5)]),
        _run(
            "water-nvt-mts",
            model,
            work,
            "nvt-seed-mts",
            [*common, "--timestep", "2.0", "--nmts", "4", "--average", "2i", "--steps", steps(2.0)],
        ),
        _run(
            "water-nvt-nc-mts",
            model,
            work,
            "nvt-nc-mts",
            [*common, "--timestep", "2.0", "--nmts", "4", "--steps", steps(2.0)],
        ),
    ]
    for row in nvt:
        print(f"NVT {row['experiment']}: {row['wall_s_per_ps']:.0f} s per ps", flush=True)
    n = lambda dt: str(int(round(nve_ps * 1000 / dt)))  # noqa: E731
    nve = [
        dict(
            _run(
                "water-nve-nc-mts",
                model,
                work,
                f"nve-nc-mts-{m}",
                [*common, "--timestep", str(0.5 * m), "--nmts", str(m), "--steps", n(0.5 * m)],
            ),
            label=f"direct MTS, M = {m} (outer {0.5 * m:g} fs)",
        )
        for m in (4, 8)
    ]
    # pure conservative and pure direct NVE: the same input, one step level (nmts 1), the slow
    # endpoint the raw conservative model (--average 0), weights picking one force
    pure = [*common, "--timestep", "0.5", "--nmts", "1", "--steps", n(0.5), "--average", "0"]
    for label, fast, slow in (
        ("conservative, 0.5 fs", "[0, 0]", "[0, 1]"),
        ("pure direct, 0.5 fs", "[0, 1]", "[0, 0]"),
    ):
        args = [*pure, "--set", f"fast_weights={fast}", "--set", f"slow_weights={slow}"]
        row = _run("water-nve-nc-mts", model, work, f"nve-{label[:4]}", args)
        nve.append(dict(row, label=label))
    for row in nve:
        print(f"NVE {row['label']}: drift {row['drift_meV_per_atom_per_ps']:.3f} meV/atom/ps", flush=True)
    return {"nvt": nvt, "nve": nve}


def _analyse(folder: Path, work: Path, fit_window) -> dict:
    """g(r) (first peaks of g_OO and g_OH with their block errors) and the O self-diffusion
    coefficient of one run folder, through the ``mlip-analyse`` command line."""
    import json

    out = work / (folder.name + "-analysis")
    blocks = ["--blocks", "4"]
    for command, extra in (("rdf", blocks), ("msd", [*blocks, "--fit-window", *map(str, fit_window)])):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlip_server.analysis.cli",
                command,
                str(folder),
                "--out",
                str(out),
                "--quiet",
                *extra,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mlip-analyse {command} {folder}: {done.stderr[-1500:]}")
    summary = json.loads((out / "summary.json").read_text())
    from mlip_server.analysis.output import read_table

    table = read_table(out / "rdf.dat")
    return {
        "rdf": summary["rdf"],
        "msd": summary["msd"],
        "table": {k: np.asarray(v) for k, v in table.items()},
    }


def _rdf_difference(a: dict, b: dict, column: str) -> float:
    """Largest |g_a − g_b| over r in units of their combined block error (r ≥ 2 Å for g_OO)."""
    ta, tb = a["table"], b["table"]
    r = np.asarray(ta["r_A"])
    ga, gb = np.asarray(ta[column]), np.asarray(tb[column])
    err = np.hypot(np.asarray(ta[column + "_err"]), np.asarray(tb[column + "_err"]))
    keep = (err > 0) & (r > 1.0)
    return float(np.max(np.abs(ga - gb)[keep] / err[keep])) if keep.any() else float("nan")


def long_nve(model: str, ps: float, direct_ps: float, work: Path, stride: int = 10) -> dict:
    """NVE of ``ps`` ps from the equilibrated liquid: conservative (0.5 fs), direct MTS M = 4 and
    8 (inner 0.5 fs, the slow force the raw conservative model minus the head) and pure direct
    (``direct_ps``); drifts, and g(r) and D of the conservative and direct-MTS runs compared."""
    common = ["--structure", str(LIQUID), "--average", "0"]
    n = lambda dt, t=ps: str(int(round(t * 1000 / dt)))  # noqa: E731
    specs = [
        (
            "conservative, 0.5 fs",
            "cons",
            ["--timestep", "0.5", "--nmts", "1", "--steps", n(0.5)]
            + ["--set", "fast_weights=[0, 0]", "--set", "slow_weights=[0, 1]"],
        ),
        ("direct MTS, M = 4 (outer 2 fs)", "nc4", ["--timestep", "2.0", "--nmts", "4", "--steps", n(2.0)]),
        ("direct MTS, M = 8 (outer 4 fs)", "nc8", ["--timestep", "4.0", "--nmts", "8", "--steps", n(4.0)]),
        (
            "pure direct, 0.5 fs",
            "direct",
            ["--timestep", "0.5", "--nmts", "1", "--steps", n(0.5, direct_ps)]
            + ["--set", "fast_weights=[0, 1]", "--set", "slow_weights=[0, 0]"],
        ),
    ]
    rows, analyses = [], {}
    for label, name, args in specs:
        try:
            row = _run(
                "water-nve-nc-mts", model, work, f"long-{name}", [*common, *args, "--stride", str(stride)]
            )
        except RuntimeError as err:
            row = {"experiment": "water-nve-nc-mts", "args": " ".join(args), "failed": str(err)[-300:]}
            rows.append(dict(row, label=label))
            print(f"NVE {label}: FAILED {row['failed'][-200:]}", flush=True)
            continue
        rows.append(dict(row, label=label))
        print(
            f"NVE {label}: {row['simulated_ps']:.2f} ps, drift {row['drift_meV_per_atom_per_ps']:.3f} "
            f"meV/atom/ps, T {row['temperature_mean_K']:.0f} K, {row['wall_s']:.0f} s",
            flush=True,
        )
        if name != "direct":
            # D from MSD(t) between 5 % and 20 % of the run: inside each of the 4 blocks
            analyses[name] = _analyse(work / f"long-{name}", work, (0.05 * ps, 0.2 * ps))
    comparison = {}
    ref = analyses.get("cons")
    for name, a in analyses.items():
        if name == "cons" or ref is None:
            continue
        d_ref, d = ref["msd"], a["msd"]
        comparison[name] = {
            "g_OO_max_sigma": _rdf_difference(ref, a, "g_OO"),
            "g_OH_max_sigma": _rdf_difference(ref, a, "g_OH"),
            "D_conservative": [d_ref.get("D_A2_per_ps"), d_ref.get("D_A2_per_ps_err")],
            "D_direct_mts": [d.get("D_A2_per_ps"), d.get("D_A2_per_ps_err")],
        }
    summaries = {k: {"rdf": v["rdf"], "msd": v["msd"]} for k, v in analyses.items()}
    return {"long_nve": rows, "long_analysis": summaries, "long_comparison": comparison}


def markdown(data: dict) -> str:
    lines = [
        "## Direct forces vs conservative (issue 27)",
        "",
        f"Machine: {data['machine']}. Model: {data['model']}. `python -m bench.direct_forces` "
        f"(one run; {data['notes']}).",
        "",
        "| atoms | conservative ms/call | direct ms/call | direct / conservative |",
        "|---|---|---|---|",
    ]
    for r in data["calls"]:
        lines.append(
            f"| {r['atoms']} | {r['conservative_ms']:.1f} | {r['direct_ms']:.1f} | {r['ratio']:.2f} |"
        )
    if "nvt" in data:
        lines += ["", "i-PI NVT, 64 molecules, the same simulated time:", ""]
        lines += ["| run | wall s per ps | mean T (K) |", "|---|---|---|"]
        for r in data["nvt"]:
            lines.append(f"| {r['experiment']} | {r['wall_s_per_ps']:.0f} | {r['temperature_mean_K']:.0f} |")
        lines += [
            "",
            "NVE, 64 molecules from the equilibrated liquid (drift: a linear fit of i-PI's conserved "
            "quantity):",
            "",
        ]
        lines += ["| forces | simulated ps | drift meV/atom/ps | mean T (K) |", "|---|---|---|---|"]
        for r in data["nve"]:
            lines.append(
                f"| {r['label']} | {r['simulated_ps']:.3f} | {r['drift_meV_per_atom_per_ps']:.3f} | "
                f"{r['temperature_mean_K']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def _pm(value, error) -> str:
    """``value ± error`` (3 decimals; ``-`` for a missing one)."""
    if value is None:
        return "-"
    return f"{value:.3f} ± {error:.3f}" if error is not None else f"{value:.3f}"


def markdown_long(data: dict) -> str:
    lines = [
        "## Direct forces: long NVE, drift and structure (issue 27)",
        "",
        f"Machine: {data['machine']}. Model: {data['model']}. `python -m bench.direct_forces --long "
        f"{data['ps']:g}` (one run; {data['notes']}). NVE from the equilibrated 64-molecule liquid "
        "(thermal velocities at 300 K); the slow force of direct MTS is the raw conservative model minus "
        "the head (no rotational averaging: what is measured is the integrator). Drift: a linear fit of "
        "i-PI's conserved quantity.",
        "",
        "| forces | simulated ps | drift meV/atom/ps | mean T (K) | wall s |",
        "|---|---|---|---|---|",
    ]
    for r in data["long_nve"]:
        if "failed" in r:
            lines.append(f"| {r['label']} | failed: {r['failed'][-120:]} | | | |")
            continue
        lines.append(
            f"| {r['label']} | {r['simulated_ps']:.2f} | {r['drift_meV_per_atom_per_ps']:.3f} | "
            f"{r['temperature_mean_K']:.0f} | {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "Structure and diffusion vs the conservative run (`mlip-analyse rdf`, `msd` on the run folders; "
        "largest |Δg| over r in units of the two runs' combined block error; D of O in Å²/ps ± block error):",
        "",
        "| run | max abs(Δg_OO)/σ | max abs(Δg_OH)/σ | D conservative | D direct MTS |",
        "|---|---|---|---|---|",
    ]
    for name, c in data["long_comparison"].items():
        d = [_pm(*c["D_conservative"]), _pm(*c["D_direct_mts"])]
        lines.append(f"| {name} | {c['g_OO_max_sigma']:.1f} | {c['g_OH_max_sigma']:.1f} | {d[0]} | {d[1]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.direct_forces", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model with a direct head (default: the shipped one)")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--ps", type=float, default=0.1, help="simulated ps of each NVT run")
    p.add_argument("--nve-ps", type=float, default=0.25, help="simulated ps of each NVE run")
    p.add_argument("--no-md", action="store_true", help="model calls only")
    p.add_argument("--device", default="cpu", help="device of the model calls (the MD runs are on the CPU)")
    p.add_argument("--notes", default="", help="what the machine was doing meanwhile")
    p.add_argument(
        "--long",
        type=float,
        default=None,
        metavar="PS",
        help="only the long NVE runs of PS ps (drift, g(r), D; bench/results/direct_forces_long)",
    )
    p.add_argument(
        "--long-direct-ps", type=float, default=0.5, help="simulated ps of the pure-direct long run"
    )
    args = p.parse_args(argv)
    model, description = (args.model, args.model) if args.model else default_model()
    if args.long:
        data = {
            "machine": machine(),
            "model": description,
            "notes": args.notes or "no notes",
            "ps": args.long,
        }
        with tempfile.TemporaryDirectory() as work:
            data.update(long_nve(model, args.long, min(args.long_direct_ps, args.long), Path(work)))
        write("direct_forces_long", data, markdown_long(data))
        return 0
    data = {
        "machine": machine(),
        "model": description,
        "notes": args.notes or "no notes",
        "calls": calls(model, args.repeat, args.device),
    }
    if not args.no_md:
        with tempfile.TemporaryDirectory() as work:
            data.update(md(model, args.ps, args.nve_ps, Path(work)))
    write("direct_forces", data, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
