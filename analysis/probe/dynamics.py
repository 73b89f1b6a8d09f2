"""MD sections of the probe: i-PI runs through ``mlip-run`` (real i-PI, real server), analysed
with ``mlip-analyse``. Times in fs/ps, energies eV.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from server.core.errors import MLIPError
from server.processes import start

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_LIQUID = ROOT / "ipi_inputs" / "structures" / "water-64-liquid-300K.extxyz"
INNER_FS = 0.5  # inner time step of every run, fs


class RunFailed(MLIPError):
    pass


def _launch(experiment, model, out: Path, options, threads: int, log: Path):
    cmd = [sys.executable, "-m", "server.ipi.launcher", experiment, "--model", str(model), "--out", str(out),
           "--progress", "0", *map(str, options)]
    return start(cmd, log=log, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))


def run_all(jobs, work: Path) -> dict:
    """Starts the runs ``jobs`` (name → (experiment, model, options, threads)) concurrently and
    waits; returns name → {"dir", "wall_s"}. A failed run raises with the tail of its log."""
    work.mkdir(parents=True, exist_ok=True)
    procs, t0, done = {}, time.monotonic(), {}
    try:
        for name, (experiment, model, options, threads) in jobs.items():
            procs[name] = _launch(experiment, model, work / name, options, threads, work / f"{name}.log")
        while len(done) < len(procs):
            for name, p in procs.items():
                if name not in done and p.poll() is not None:
                    done[name] = {"dir": str(work / name), "wall_s": time.monotonic() - t0, "exit": p.returncode}
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()  # the launcher stops its i-PI and server on SIGTERM
                p.wait(timeout=60)
    for name, d in done.items():
        if d["exit"] != 0:
            tail = (work / f"{name}.log").read_text().strip().splitlines()[-3:]
            raise RunFailed(f"probe run {name} failed (exit {d['exit']}): " + " | ".join(tail))
    return done


def molecule_jobs(model, level, device="cpu") -> dict:
    """Gas-phase molecule NVE, raw and 2i (one thread each)."""
    opts = ["--steps", level.molecule_steps, "--stride", level.molecule_stride, "--timestep", INNER_FS,
            "--device", device]
    return {"molecule-raw": ("molecule-nve", model, opts + ["--average", "none"], 1),
            "molecule-2i": ("molecule-nve", model, opts + ["--average", "2i"], 1)}


def liquid_jobs(model, level, device="cpu") -> dict:
    """Bulk liquid NVT at 300 K: raw model; MTS with the averaged model as the slow force every
    ``nmts`` inner steps; a fresh random rotation per call. Same inner step and output interval."""
    if level.liquid_molecules == 64 and SHIPPED_LIQUID.is_file():
        start = ["--structure", SHIPPED_LIQUID]
    else:
        start = ["--molecules", level.liquid_molecules]
    start += ["--device", device]
    stride = max(1, round(level.liquid_stride_fs / INNER_FS))
    outer_fs = INNER_FS * level.liquid_nmts
    single = start + ["--steps", level.liquid_inner_steps, "--timestep", INNER_FS, "--stride", stride]
    mts = start + ["--steps", level.liquid_inner_steps // level.liquid_nmts, "--timestep", outer_fs,
                   "--nmts", level.liquid_nmts, "--stride", max(1, round(level.liquid_stride_fs / outer_fs)),
                   "--average", level.liquid_average]
    return {"liquid-raw": ("water-nvt", model, single + ["--average", "none"], 1),
            "liquid-random": ("water-nvt", model, single + ["--average", "random", "--seed", 7], 1),
            f"liquid-mts-{level.liquid_average}": ("water-nvt-mts", model, mts, 2)}


def analyse(run_dir, out, dt_fs: float, n_blocks: int, command: str = "all", start: int | None = None) -> dict:
    """``mlip-analyse COMMAND run_dir/sim.pos_0.extxyz``; returns its summary.json."""
    from analysis.cli import build_parser, run

    argv = [command, str(Path(run_dir) / "sim.pos_0.extxyz"), "--timestep", str(dt_fs), "--out", str(out),
            "--blocks", str(n_blocks), "--quiet"]
    if start:
        argv += ["--start", str(start)]
    if command == "all":
        argv += ["--charges", "O=-0.8476", "H=0.4238"]
    run(build_parser().parse_args(argv))
    return json.loads((Path(out) / "summary.json").read_text())


def n_frames(run_dir) -> int:
    text = (Path(run_dir) / "sim.pos_0.extxyz").read_text().splitlines()
    n, count, i = int(text[0]), 0, 0
    while i + n + 2 <= len(text):
        count, i = count + 1, i + n + 2
    return count
