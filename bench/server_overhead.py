"""Server overhead: i-PI step time through the socket server vs in-process <ffdirect>.

For 192- and 1536-atom water boxes: wall time per i-PI NVT step (difference of a long and a
short run, so start-up cancels) over a unix socket and in-process, and the share of the
server's busy time spent outside the model (neighbour list, unit conversion, transfer).
PIMD with 8 beads: 8 connections of one server (batched) vs 1 connection (serial).

    python -m bench.server_overhead [--model M] [--steps 40]
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path

from bench import ipi_runs
from bench.common import default_model, machine, write
from server.structures import water_box


def per_step(workdir, atoms, model, steps, **kw):
    """Seconds per step (long run minus short run) and the long run's outputs."""
    times, out = [], None
    for n in (max(steps // 4, 2), steps):
        t0 = time.perf_counter()
        out = ipi_runs.run(Path(workdir) / f"{n}", atoms, model, steps=n, timeout=3000, **kw)
        times.append(time.perf_counter() - t0)
        assert out.codes == [0, 0], out.server_log[-1000:]
    return (times[1] - times[0]) / (steps - max(steps // 4, 2)), out


def busy_shares(log: str) -> dict:
    m = re.findall(r"time in model ([\d.]+) s, neighbour lists ([\d.]+) s, server busy ([\d.]+) s", log)[-1]
    model, nl, busy = map(float, m)
    return {"model_s": model, "neighbors_s": nl, "busy_s": busy, "outside_model_share": (busy - model) / busy}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model, label = (args.model, args.model) if args.model else default_model()
    rows, data = [], {"machine": machine(), "model": label, "steps": args.steps, "sizes": {}}
    for n_mol in (64, 512):
        atoms = water_box(n_mol, seed=0)
        sock, out = per_step(work / f"sock{n_mol}", atoms, model, args.steps)
        direct, _ = per_step(work / f"direct{n_mol}", atoms, model, args.steps, ffdirect=True)
        shares = busy_shares(out.server_log)
        data["sizes"][len(atoms)] = {
            "socket_s_per_step": sock,
            "ffdirect_s_per_step": direct,
            "socket_over_ffdirect": sock / direct,
            **shares,
        }
        rows.append(
            f"| {len(atoms)} | {1e3 * sock:.1f} | {1e3 * direct:.1f} | {sock / direct:.2f} | "
            f"{100 * shares['outside_model_share']:.1f}% |"
        )
    atoms = water_box(64, seed=0)
    serial, _ = per_step(work / "pimd1", atoms, model, args.steps // 2, nbeads=8)
    batched, out8 = per_step(work / "pimd8", atoms, model, args.steps // 2, nbeads=8, connections=8)
    sizes = re.findall(r"batch sizes \(structures per model call × calls\): ([^;]+);", out8.server_log)[-1]
    data["pimd8"] = {
        "serial_1conn_s_per_step": serial,
        "batched_8conn_s_per_step": batched,
        "batched_over_serial": batched / serial,
        "batch_sizes": sizes,
    }
    m = data["machine"]
    md = f"""## Server overhead (`bench/server_overhead.py`)
Machine: {m["cpu"]}, {m["cores"]} cores, torch {m["torch"]} ({m["torch_threads"]} threads), {m["date"]}.
Model: {label}. i-PI NVT, wall time per step from a {args.steps}-step \
minus a {max(args.steps // 4, 2)}-step run.

| atoms | socket (ms/step) | in-process ffdirect (ms/step) | socket / ffdirect \
| server time outside the model |
|---|---|---|---|---|
{chr(10).join(rows)}

PIMD, 8 beads, 192 atoms: 8 connections of one server {1e3 * batched:.1f} ms/step vs one connection
{1e3 * serial:.1f} ms/step: ratio {batched / serial:.2f} (batch sizes seen: {sizes}).
"""
    write("server_overhead", data, md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
