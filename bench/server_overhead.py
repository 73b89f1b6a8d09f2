"""Transport overhead: i-PI step time over unix, shm and inet sockets vs in-process <ffdirect>.

For 192- and 1536-atom water boxes (the ``water-nvt`` experiment through ``run_experiment``):
wall time per i-PI NVT step (difference of a long and a short run, so start-up cancels) for
every transport side by side in one run, i-PI's socket ``latency`` scanned on the unix route,
and the share of the server's busy time spent outside the model (neighbour list, unit
conversion, transfer).

    python -m bench.server_overhead [--model M] [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import default_model, machine, write
from mlip_server import processes
from mlip_server.ipi.launcher import run_experiment
from mlip_server.structures import water_box

__all__ = ["main", "per_step"]

TRANSPORTS = ("ffdirect", "unix", "shm", "inet")
LATENCIES = (1e-4, 1e-3, 1e-2)  # s, i-PI's polling interval on the unix route


def per_step(work: Path, structure: Path, model: str, steps: int, **options) -> tuple[float, Path]:
    """Seconds per step (long run minus short run) and the long run's folder."""
    times, folder, short = [], None, max(steps // 4, 2)
    for n in (short, steps):
        folder = work / f"{n}"
        t0 = time.perf_counter()
        result = run_experiment(
            "water-nvt",
            model=model,
            structure=str(structure),
            steps=n,
            stride=1000,
            out=str(folder),
            progress=0,
            **options,
        )
        times.append(time.perf_counter() - t0)
        if result.code:
            raise RuntimeError(f"benchmark run failed: {result.message}")
    return (times[1] - times[0]) / (steps - short), folder


def busy_shares(log: str) -> dict:
    """Model, neighbour-list and busy seconds of the server log's last summary line."""
    m = re.findall(r"time in model ([\d.]+) s, neighbour lists ([\d.]+) s, server busy ([\d.]+) s", log)[-1]
    model, nl, busy = map(float, m)
    return {"model_s": model, "neighbors_s": nl, "busy_s": busy, "outside_model_share": (busy - model) / busy}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument(
        "--steps",
        type=int,
        nargs=2,
        default=[60, 20],
        metavar=("N192", "N1536"),
        help="steps of the long run at 192 and at 1536 atoms (the short run has a quarter)",
    )
    p.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the median is reported")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads of i-PI and the server")
    p.add_argument("--device", default="cpu", help="server device (cpu, cuda)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model, label = (args.model, args.model) if args.model else default_model()
    data = {
        "machine": machine(),
        "model": label,
        "steps": args.steps,
        "repeat": args.repeat,
        "threads": args.threads,
        "sizes": {},
    }
    rows, lat_rows = [], []
    for n_mol, steps in zip((64, 512), args.steps):
        atoms = water_box(n_mol, seed=0)
        structure = work / f"water-{n_mol}.extxyz"
        atoms.write(structure)
        configs = {t: {"transport": t} for t in TRANSPORTS}
        if n_mol == 64:  # i-PI's polling interval, on the unix route (1e-4 s is the shipped default)
            configs.update(
                {f"unix_latency_{lat:g}": {"transport": "unix", "latency": lat} for lat in LATENCIES[1:]}
            )
        samples = {name: [] for name in configs}
        for rep in range(args.repeat):
            names = list(configs)
            names = names[rep % len(names) :] + names[: rep % len(names)]  # rotate the order
            for name in names:
                cfg = dict(configs[name])
                if cfg["transport"] == "inet":
                    cfg["port"] = processes.free_port()
                t, folder = per_step(
                    work / f"{name}-{n_mol}-{rep}",
                    structure,
                    model,
                    steps,
                    threads=args.threads,
                    device=args.device,
                    **cfg,
                )
                samples[name].append(t)
                if name == "unix" and rep == 0:
                    busy = busy_shares((folder / "server.log").read_text())
                shutil.rmtree(work / f"{name}-{n_mol}-{rep}", ignore_errors=True)
        size = {f"{name}_s_per_step": float(np.median(v)) for name, v in samples.items()}
        size["samples_s_per_step"] = samples
        size.update(busy)
        for name in samples:
            if name != "ffdirect":
                size[f"{name}_over_ffdirect"] = size[f"{name}_s_per_step"] / size["ffdirect_s_per_step"]
        if n_mol == 64:
            for lat in LATENCIES:
                key = "unix" if lat == LATENCIES[0] else f"unix_latency_{lat:g}"
                lat_rows.append(
                    f"| {lat:g} | {1e3 * size[f'{key}_s_per_step']:.1f} | "
                    f"{size[f'{key}_over_ffdirect']:.2f} |"
                )
        data["sizes"][len(atoms)] = size
        rows.append(
            f"| {len(atoms)} | {1e3 * size['ffdirect_s_per_step']:.1f} | "
            + " | ".join(
                f"{1e3 * size[f'{t}_s_per_step']:.1f} ({size[f'{t}_over_ffdirect']:.2f})"
                for t in TRANSPORTS[1:]
            )
            + f" | {100 * size['outside_model_share']:.1f}% |"
        )
    data["machine"]["load_average_at_end"] = os.getloadavg()[0]
    m = data["machine"]
    md = f"""## Transport overhead (`bench/server_overhead.py`)
Machine: {m["cpu"]}, {m["cores"]} cores, server on {args.device}, torch {m["torch"]} \
({m["torch_threads"]} threads), {m["date"]}, load average {m["load_average_at_start"]:.2f} at the start.
Model: {label} in its own precision. i-PI NVT (`water-nvt`), wall time per step from a \
long minus a short run ({args.steps[0]}/{args.steps[0] // 4} steps at 192 atoms, \
{args.steps[1]}/{args.steps[1] // 4} at 1536), \
median of {args.repeat} interleaved repeats (samples in the JSON), all transports in one run; in brackets \
the ratio to `<ffdirect>`; load average {data["machine"]["load_average_at_end"]:.2f} at the end.

| atoms | ffdirect (ms/step) | unix | shm | inet | server time outside the model (unix) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

i-PI's `<latency>` on the unix route, 192 atoms:

| latency (s) | ms/step | / ffdirect |
|---|---|---|
{chr(10).join(lat_rows)}
"""
    write("server_overhead", data, md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
