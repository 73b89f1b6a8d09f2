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
import re
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import default_model, machine, write
from server.ipi.launcher import run_experiment
from server.structures import water_box

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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads of i-PI and the server")
    p.add_argument("--device", default="cpu", help="server device (cpu, cuda)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model, label = (args.model, args.model) if args.model else default_model()
    data = {"machine": machine(), "model": label, "steps": args.steps, "threads": args.threads, "sizes": {}}
    rows, lat_rows = [], []
    for n_mol in (64, 512):
        atoms = water_box(n_mol, seed=0)
        structure = work / f"water-{n_mol}.extxyz"
        atoms.write(structure)
        size = {}
        for transport in TRANSPORTS:
            extra = {"port": _free_port()} if transport == "inet" else {}
            t, folder = per_step(
                work / f"{transport}{n_mol}",
                structure,
                model,
                args.steps,
                transport=transport,
                threads=args.threads,
                device=args.device,
                **extra,
            )
            size[f"{transport}_s_per_step"] = t
            if transport == "unix":
                size.update(busy_shares((folder / "server.log").read_text()))
        for transport in TRANSPORTS[1:]:
            size[f"{transport}_over_ffdirect"] = size[f"{transport}_s_per_step"] / size["ffdirect_s_per_step"]
        if n_mol == 64:
            for latency in LATENCIES:
                t, _ = per_step(
                    work / f"lat{latency:g}",
                    structure,
                    model,
                    args.steps,
                    transport="unix",
                    latency=latency,
                    threads=args.threads,
                    device=args.device,
                )
                size[f"unix_latency_{latency:g}_s_per_step"] = t
                lat_rows.append(f"| {latency:g} | {1e3 * t:.1f} | {t / size['ffdirect_s_per_step']:.2f} |")
        data["sizes"][len(atoms)] = size
        rows.append(
            f"| {len(atoms)} | {1e3 * size['ffdirect_s_per_step']:.1f} | "
            + " | ".join(
                f"{1e3 * size[f'{t}_s_per_step']:.1f} ({size[f'{t}_over_ffdirect']:.2f})"
                for t in TRANSPORTS[1:]
            )
            + f" | {100 * size['outside_model_share']:.1f}% |"
        )
    m = data["machine"]
    md = f"""## Transport overhead (`bench/server_overhead.py`)
Machine: {m["cpu"]}, {m["cores"]} cores, server on {args.device}, torch {m["torch"]} \
({m["torch_threads"]} threads), {m["date"]}, load average {m["load_average_at_start"]:.2f} at the start.
Model: {label} in its own precision. i-PI NVT (`water-nvt`), wall time per step from a \
{args.steps}-step minus a {max(args.steps // 4, 2)}-step run, all transports in one run; in brackets \
the ratio to `<ffdirect>`.

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
