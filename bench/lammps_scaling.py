"""LAMMPS + mlip-server through the socket bridge: time per MD step vs system size, split
into the model, the rest of the server, the bridge (gather, sockets, scatter on rank 0)
and LAMMPS itself.

    python -m bench.lammps_scaling                      # 1.5k, 12k, 98k atoms; 1 and 2 ranks at 98k
    python -m bench.lammps_scaling --model models/water-pet.pt --replicas 1 2 --np 1 2

Each size is the 512-molecule water box replicated r×r×r in LAMMPS (``in.water-large``,
NVT, 0.5 fs). Sources of the numbers:

* total per step: LAMMPS's own ``Loop time`` / steps;
* model and neighbour lists: the server's cumulative Evaluator timings (its log);
* bridge: rank 0's timings in the force callback (``mlip-lammps --timings``): MPI gather of
  tags and positions, sending positions and receiving forces on the socket with unit
  conversion, MPI scatter of the forces;
* server other = time rank 0 waits for the server − model − neighbour lists (the server's
  socket reads and writes, input checks, autograd bookkeeping);
* LAMMPS = total − the whole force callback (integration, MPI exchange, thermo).

The set-up force call (and the model's warm-up in it) is excluded everywhere. Writes
``bench/results/lammps_scaling.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from bench.common import result_name
from mlip_server.lammps import runner
from mlip_server.machine import describe as machine
from mlip_server.paths import checkout_root, lammps_inputs_dir, shipped_model
from mlip_server.structures import write_water_data

DEFAULT_STEPS = {1: 40, 2: 8, 4: 3}


def parse(workdir: Path, timings: Path) -> dict:
    """Per-step numbers, the first force call (LAMMPS's set-up, with the model's warm-up) excluded."""
    log = (workdir / "log.lammps").read_text()
    m = re.search(r"Loop time of ([\d.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", log)
    loop, procs, steps, natoms = float(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))
    server = (workdir / "server.log").read_text()
    models = [float(x) for x in re.findall(r"time in model ([\d.]+) s", server)]
    lists = [float(x) for x in re.findall(r"neighbou?r lists ([\d.]+) s", server)] or [0.0, 0.0]
    t = json.loads(timings.read_text())
    calls = t["calls"] - 1  # the server logs its totals after evaluation 1 and at the end
    assert calls == steps, (calls, steps)
    per = {k: (t[k] - t["first"][k]) / calls for k in ("callback", "gather", "server", "transfer", "scatter")}
    model, neighbours = (models[-1] - models[0]) / calls, (lists[-1] - lists[0]) / calls
    total = loop / steps
    parts = {
        "model": model,
        "neighbour_lists": neighbours,
        "server_other": max(per["server"] - model - neighbours, 0.0),
        "bridge": per["gather"] + per["transfer"] + per["scatter"],
        "lammps": max(total - per["callback"], 0.0),
    }
    return {
        "atoms": natoms,
        "ranks": procs,
        "steps": steps,
        "step_s": total,
        "per_step_s": dict(
            parts,
            bridge_gather=per["gather"],
            bridge_socket=per["transfer"],
            bridge_scatter=per["scatter"],
            callback=per["callback"],
        ),
        "shares": {k: v / total for k, v in parts.items()},
    }


def run_one(model: str, replicas: int, np_: int, steps: int, threads: int, device: str = "cpu") -> dict:
    data = write_water_data(512, lammps_inputs_dir() / "water-512.data")
    with tempfile.TemporaryDirectory(prefix="lammps-scaling-") as tmp:
        workdir = Path(tmp)
        timings = workdir / "timings.json"
        variables = [
            ("data", data),
            ("nx", replicas),
            ("ny", replicas),
            ("nz", replicas),
            ("steps", steps),
            ("thermo", steps),
            ("dump", 10 * steps),
        ]
        server_args = (["--threads", str(threads)] if threads else []) + ["--device", device]
        t0 = time.perf_counter()
        result = runner.run(
            lammps_inputs_dir() / "in.water-large",
            model,
            ["O", "H"],
            np=np_,
            variables=variables,
            workdir=workdir,
            echo=False,
            server_args=server_args,
            bridge_args=[f"--timings={timings}"],
            timeout=1800,
        )
        wall = time.perf_counter() - t0
        if result.code:
            raise SystemExit(f"lammps_scaling: error: {result.message}")
        row = parse(workdir, timings)
    row["wall_s"] = wall
    return row


def table(rows) -> str:
    lines = [
        "| atoms | MPI ranks | s/step | model | neighbour lists | server other "
        "| bridge (gather/socket/scatter) | LAMMPS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s, p = r["shares"], r["per_step_s"]
        lines.append(
            f"| {r['atoms']:,} | {r['ranks']} | {r['step_s']:.3g} | {s['model']:.1%} | "
            f"{s['neighbour_lists']:.1%} | {s['server_other']:.1%} | {s['bridge']:.2%} "
            f"({1e3 * p['bridge_gather']:.2g} / {1e3 * p['bridge_socket']:.2g} / "
            f"{1e3 * p['bridge_scatter']:.2g} ms) | {s['lammps']:.2%} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="TorchScript model (default: models/water-pet.pt)")
    p.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        help="r: the 512-molecule box replicated r×r×r (1: 1,536 atoms, 2: 12,288, 4: 98,304)",
    )
    p.add_argument("--np", type=int, nargs="+", default=[1, 2], help="MPI ranks at the largest size")
    p.add_argument("--device", default="cpu", help="server device (cpu, cuda)")
    p.add_argument(
        "--steps", type=int, default=None, help="MD steps per size (default 50/10/4 for r = 1/2/4)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="server torch threads (0: torch's default; 1 gives steadier numbers on a shared machine)",
    )
    args = p.parse_args(argv)
    model = args.model or str(shipped_model())
    model_name = args.model or "models/water-pet.pt"
    info = machine()
    runs = [(r, 1) for r in args.replicas] + [(max(args.replicas), n) for n in args.np if n != 1]
    rows = []
    for replicas, np_ in runs:
        steps = args.steps or DEFAULT_STEPS.get(replicas, 4)
        print(
            f"lammps_scaling: {512 * 3 * replicas**3:,} atoms on {np_} rank(s), {steps} steps ...", flush=True
        )
        rows.append(run_one(str(model), replicas, np_, steps, args.threads, args.device))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    info["load_average_at_end"] = os.getloadavg()[0]
    data = {
        "benchmark": "lammps_scaling",
        "model": model_name,
        "deck": "lammps_inputs/in.water-large (NVT, 0.5 fs)",
        "server_threads": args.threads or "torch default",
        "machine": info,
        "runs": rows,
    }
    result = checkout_root() / "bench" / "results" / f"{result_name('lammps_scaling')}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n## LAMMPS through the socket bridge ({model_name}, {info['cpu']}, {info['cores']} cores)\n")
    print(table(rows))
    print(f"\nwrote {result.relative_to(checkout_root())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
