"""Speed of the trajectory analyses (analysis/) on a water-like system.

Generates a synthetic trajectory of rigid water molecules (default 512 molecules = 1536 atoms,
1000 frames, cubic 24.861 Å box, 10 fs between frames; centres random-walk, dipoles
rotationally diffuse), then measures

* frames per second of every analysis class on an in-memory Universe, serial;
* the speed-up of MDAnalysis' parallel backend (``backend="multiprocessing", n_workers=2``)
  for every class that supports it (same run, side by side);
* the wall time of the whole ``mlip-analyse all`` on the same frames written as an i-PI
  ``xyz`` file (parsing included), against the target of 60 s.

Writes ``bench/results/analysis_speed.json`` and prints a markdown table.

    .venv/bin/python -m bench.analysis_speed [--frames 1000] [--molecules 512]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from mlip_server.analysis import cli
from mlip_server.analysis.dipoles import (
    DielectricConstant,
    DipoleAutocorrelation,
    DipoleOrientation,
    DipolePairCorrelation,
)
from mlip_server.analysis.molecules import find_water
from mlip_server.analysis.msd import MSD
from mlip_server.analysis.rdf import BlockRDF, default_rmax
from mlip_server.analysis.readers import build_universe, load_universe
from mlip_server.analysis.synthetic import water_trajectory, wrap, write_ipi
from mlip_server.machine import describe
from mlip_server.paths import checkout_root

CHARGES = {"O": -0.8476, "H": 0.4238}


def machine() -> dict:
    """:func:`mlip_server.machine.describe` without torch, with MDAnalysis' and numpy's versions, and
    the key names of the committed ``bench/results/analysis_speed.json``."""
    info = describe(torch=False, packages=("MDAnalysis", "numpy"))
    info.update(
        cpu_model=info["cpu"],
        load_average_1min_at_start=info["load_average_at_start"],
        note="2-core machine shared with other jobs; load average shows how busy it was",
    )
    return info


def timed(make, **run_kw):
    """(wall s, CPU s of this process) of constructing and running one analysis."""
    t, c = time.perf_counter(), time.process_time()
    make().run(**run_kw)
    return time.perf_counter() - t, time.process_time() - c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--molecules", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(checkout_root() / "bench" / "results" / "analysis_speed.json"))
    args = ap.parse_args(argv)

    F, M, dt = args.frames, args.molecules, 0.01
    L = 24.861 * (M / 512) ** (1 / 3)
    names, x, dims = water_trajectory(
        n_molecules=M, box_length=L, n_frames=F, dt_ps=dt, D=0.23, rot_step=0.15, seed=1
    )
    xw = wrap(x, dims)
    u = build_universe(names, xw, dims, dt_ps=dt)
    w = find_water(u)
    rmax = default_rmax(u)
    O, H = w.oxygens, w.hydrogens
    cases = {
        "g_OO (BlockRDF)": lambda: BlockRDF(O, O, nbins=200, range=(0, rmax), exclusion_block=(1, 1)),
        "g_OH (BlockRDF)": lambda: BlockRDF(O, H, nbins=200, range=(0, rmax), exclusion_block=(1, 2)),
        "g_HH (BlockRDF)": lambda: BlockRDF(H, H, nbins=200, range=(0, rmax), exclusion_block=(2, 2)),
        "MSD oxygens (MSD)": lambda: MSD(u, water=w, dt_ps=dt),
        "orientation P(cos θ, φ) (DipoleOrientation)": lambda: DipoleOrientation(u, w),
        "c_L, c_T (DipolePairCorrelation)": lambda: DipolePairCorrelation(u, w, rmax=rmax, nbins=80),
        "C1, C2 (DipoleAutocorrelation)": lambda: DipoleAutocorrelation(u, w, dt_ps=dt),
        "dielectric (DielectricConstant)": lambda: DielectricConstant(u, w, CHARGES),
    }
    rows = []
    for name, make in cases.items():
        t_serial, c_serial = timed(make)
        obj = make()
        row = {
            "analysis": name,
            "frames": F,
            "serial_s": t_serial,
            "serial_fps": F / t_serial,
            "serial_cpu_s": c_serial,
            "serial_fps_per_cpu_s": F / c_serial,
        }
        if obj.parallelizable:
            t_par, _ = timed(make, backend="multiprocessing", n_workers=args.workers)
            row.update(parallel_s=t_par, parallel_fps=F / t_par, speedup=t_serial / t_par)
        rows.append(row)
        print(f"{name}: {F / t_serial:.0f} frames/s", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        traj = os.path.join(tmp, "bench.pos_0.xyz")
        write_ipi(traj, names, xw, dims)  # i-PI's own writer, atomic units
        t = time.perf_counter()
        load_universe(traj, timestep_fs=10.0)
        t_read = time.perf_counter() - t
        ends = {}
        for workers in (1, args.workers):  # side by side: serial, then parallel where it pays
            t, c = time.perf_counter(), time.process_time()
            rc = cli.main(
                [
                    "all",
                    traj,
                    "--timestep",
                    "10",
                    "--out",
                    os.path.join(tmp, f"out{workers}"),
                    "--quiet",
                    "--charges",
                    "O=-0.8476",
                    "H=0.4238",
                    "--workers",
                    str(workers),
                ]
            )
            assert rc == 0, "mlip-analyse all failed"
            ends[workers] = (time.perf_counter() - t, time.process_time() - c)
        (t_all, c_all), (t_all_par, _) = ends[1], ends[args.workers]
        size_mb = os.path.getsize(traj) / 1e6

    result = {
        "machine": machine(),
        "system": {
            "atoms": 3 * M,
            "molecules": M,
            "frames": F,
            "box_A": L,
            "rmax_A": rmax,
            "rdf_bins": 200,
            "pair_search": "dense distance_array" if BlockRDF(O, H).dense else "capped_distance",
        },
        "analyses": rows,
        "end_to_end": {
            "command": "mlip-analyse all TRAJ --timestep 10 --charges O=-0.8476 H=0.4238",
            "file": f"i-PI xyz, atomic units, {size_mb:.0f} MB",
            "read_s": t_read,
            "all_s": t_all,
            "all_cpu_s": c_all,
            "all_workers": args.workers,
            "all_parallel_s": t_all_par,
            "target_s": 60.0,
            "met": t_all < 60.0,
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)

    m = result["machine"]
    print(
        f"\nMachine: {m['cpu']}, {m['cpus_available']} cores; MDAnalysis {m['MDAnalysis']}; "
        f"{3 * M} atoms x {F} frames\n"
    )
    print(f"load average (1 min) at start: {m['load_average_1min_at_start']:.2f}\n")
    print(
        "| analysis | serial frames/s (wall) | frames per CPU-second "
        f"| {args.workers} workers frames/s | speed-up |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        par = f"{r['parallel_fps']:.0f} | {r['speedup']:.2f}x" if "speedup" in r else "n/a | n/a"
        print(f"| {r['analysis']} | {r['serial_fps']:.0f} | {r['serial_fps_per_cpu_s']:.0f} | {par} |")
    e = result["end_to_end"]
    print(
        f"| `mlip-analyse all` incl. reading the {e['file']} ({e['read_s']:.1f} s) | "
        f"{F / e['all_s']:.0f} ({e['all_s']:.1f} s wall, target < 60 s) | {F / e['all_cpu_s']:.0f} "
        f"({e['all_cpu_s']:.1f} CPU s) | {F / e['all_parallel_s']:.0f} ({e['all_parallel_s']:.1f} s wall, "
        f"--workers {args.workers}) | {e['all_s'] / e['all_parallel_s']:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
