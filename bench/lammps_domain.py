"""LAMMPS domain decomposition vs the gather route, side by side in one run (water, PET).

    python -m bench.lammps_domain                          # all sections
    python -m bench.lammps_domain --sections shells weak   # a subset

Sections (each writes its rows into ``bench/results/lammps_domain.json``):

* ``shells`` — the model cost of the two ghost-shell schemes for one 12,288-atom subdomain
  (the 512-molecule box replicated 2×2×2 and cut into a cube of owned atoms): (b) owned atoms +
  ghosts within R, the energy of the owned terms (what the bridge ships) vs (a) owned + ghosts
  within 2R, the energy of every term (forces of the owned atoms exact without returning ghost
  forces). Both are one Evaluator call on the same server (float32, 1 thread); (a) would need a
  second gradient for the virial, not timed here (its time is a lower bound).
* ``weak`` — weak scaling at fixed atoms per rank (12,288 and, with ``--large``, 49,152): 1 rank
  + 1 one-thread server vs 2 ranks + 2 one-thread servers, cells shaped so that every rank owns
  the same box. Efficiency = step time (1 rank) / step time (2 ranks).
* ``routes`` — 12,288 (and with ``--large`` 98,304) atoms: gather on 1 rank vs domain on 2 ranks
  with one server vs domain on 2 ranks with two servers.
* ``metatomic`` — 12,288 atoms, the project's metatomic export of the model (float32) beside the
  contract model itself, measured back to back: gather on 1 rank vs domain on 2 ranks × 2 servers.
* ``cap`` — the memory cap lifted: 98,304 atoms (the 512-molecule box 4×4×4), which no single
  model call on this machine can hold (gather: one call on every atom), as 8 ranks of 12,288 owned
  atoms on one server with 2 threads (its calls one after the other, so memory is one rank's
  cluster). Reports the machine's peak memory use during the run.

Every domain run reports evaluated/owned atoms (``bridge.json``) next to the cost model
(:func:`cost_model`): a box a×b×c of owned atoms plus the atoms within R of it,
V = abc + 2R(ab + bc + ca) + πR²(a + b + c) + 4πR³/3, over abc. Steps exclude the set-up force
call; the range check is switched off (``--no-range-check``; its cost is one thicker
evaluation on one rank at the first step, reported by the test suite's runs in bridge.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import result_name
from mlip_server.lammps import runner
from mlip_server.machine import describe as machine
from mlip_server.paths import checkout_root, lammps_inputs_dir, shipped_model
from mlip_server.structures import write_water_data

BOX = 24.8  # Å, edge of the 512-molecule box (1 g/cm³)
WATER_MOLECULES_PER_A3 = 0.03343  # liquid water at 1 g/cm³


def cost_model(a: float, b: float, c: float, r: float, surface: bool = False) -> float:
    """Evaluated / owned atoms for an a×b×c box of owned atoms and a shell of range r (Å).

    Continuum (``surface`` False): every point within r of the box counts. With ``surface``,
    the shell is measured from the owned *molecules*, whose outermost layer lies on average half
    a molecular spacing inside the box face: r is reduced by δ = ½ n⁻¹ᐟ³ (water at 1 g/cm³:
    n = 0.03343 molecules/Å³, δ = 1.55 Å). This correction was added after the first measurement
    (the ``shells`` row came out 15 % below the continuum) and is then checked on the LAMMPS runs.
    """
    if surface:
        r = r - 0.5 * WATER_MOLECULES_PER_A3 ** (-1.0 / 3.0)
    v = a * b * c + 2 * r * (a * b + b * c + c * a) + math.pi * r * r * (a + b + c) + 4 * math.pi * r**3 / 3
    return v / (a * b * c)


# --------------------------------------------------------------------------- shells
def shells(model: str, range_: float) -> list[dict]:
    """One subdomain, schemes (a) and (b): atoms evaluated and seconds per evaluation."""
    import torch

    from mlip_server.core.evaluator import Structure
    from mlip_server.lammps.ghosts import near_owned
    from mlip_server.loading import load_evaluator
    from mlip_server.structures import water_box

    torch.set_num_threads(1)
    big = water_box(512, seed=1).repeat((4, 4, 4))  # 99 Å: owned cube of 2×2×2 boxes in its middle
    x = big.get_positions()
    lo, hi = np.full(3, BOX), np.full(3, 3 * BOX)
    owned = np.all((x >= lo) & (x < hi), axis=1)
    ev = load_evaluator(model, dtype="float32")
    rows = []
    for scheme, depth, counted in (
        ("b: shell R, owned terms", range_, True),
        ("a: shell 2R, all terms", 2 * range_, False),
    ):
        ghosts = ~owned & near_owned(x[owned], x, depth)
        positions = np.concatenate([x[owned], x[ghosts]])
        numbers = np.concatenate([big.numbers[owned], big.numbers[ghosts]])
        s = Structure(positions, numbers, owned=int(owned.sum()) if counted else None)
        ev.compute([s])  # warm-up
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            ev.compute([s])
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "scheme": scheme,
                "owned": int(owned.sum()),
                "evaluated": len(positions),
                "evaluated_per_owned": len(positions) / owned.sum(),
                "cost_model": cost_model(2 * BOX, 2 * BOX, 2 * BOX, depth),
                "cost_model_surface": cost_model(2 * BOX, 2 * BOX, 2 * BOX, depth, surface=True),
                "seconds": min(times),
            }
        )
        print(f"lammps_domain shells: {rows[-1]}", flush=True)
    return rows


# --------------------------------------------------------------------------- LAMMPS runs
def _mem_available_gb() -> float:
    """MemAvailable of /proc/meminfo, GB (1e9 bytes)."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


class PeakMemory:
    """Samples the machine's available memory every ``interval`` s while active: ``peak_gb`` is
    the largest drop below the value at the start (GB), i.e. what the run used at its peak."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_gb = interval, 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self._start = _mem_available_gb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_gb = max(self.peak_gb, self._start - _mem_available_gb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def lammps(model, replicas, np_, decomposition, servers, steps, threads=1, dtype=None) -> dict:
    with tempfile.TemporaryDirectory(prefix="lammps-domain-") as tmp, PeakMemory() as memory:
        workdir = Path(tmp)
        data = write_water_data(512, workdir / "water-512.data")
        nx, ny, nz = replicas
        variables = [("data", data), ("nx", nx), ("ny", ny), ("nz", nz), ("steps", steps)]
        variables += [("thermo", steps), ("dump", 100 * steps)]
        bridge_args = ["--no-range-check"] if decomposition == "domain" else []
        t0 = time.perf_counter()
        result = runner.run(
            lammps_inputs_dir() / "in.water-large",
            model,
            ["O", "H"],
            np=np_,
            variables=variables,
            workdir=workdir,
            echo=False,
            server_args=["--threads", str(threads)] + (["--dtype", dtype] if dtype else []),
            bridge_args=bridge_args,
            decomposition=decomposition,
            servers=servers,
            timeout=3600,
        )
        wall = time.perf_counter() - t0
        if result.code:
            raise SystemExit(f"lammps_domain: error: {result.message}")
        log = (workdir / "log.lammps").read_text()
        m = re.search(r"Loop time of ([\d.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", log)
        loop, steps_done, natoms = float(m.group(1)), int(m.group(3)), int(m.group(4))
        report = json.loads((workdir / "bridge.json").read_text())
    row = {
        "atoms": natoms,
        "ranks": np_,
        "servers": servers,
        "decomposition": decomposition,
        "steps": steps_done,
        "step_s": loop / steps_done,
        "wall_s": wall,
        "threads": threads,
        "peak_memory_gb": memory.peak_gb,
    }
    if decomposition == "domain":
        ranks = report["per_rank"]
        calls = [r["calls"] - r["first"]["calls"] for r in ranks]
        per = lambda key: max((r[key] - r["first"][key]) / c for r, c in zip(ranks, calls))  # noqa: E731
        evaluated = sum(r["evaluated_sum"] - r["first"]["evaluated_sum"] for r in ranks)
        owned = sum(r["owned_sum"] - r["first"]["owned_sum"] for r in ranks)
        grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", log)
        sub = np.array([nx, ny, nz], dtype=float) * BOX / np.array([int(g) for g in grid.groups()])
        row.update(
            evaluated_per_owned=evaluated / owned,
            cost_model=cost_model(*sub, report["interaction_range"]),
            cost_model_surface=cost_model(*sub, report["interaction_range"], surface=True),
            per_rank=[{k: r[k] for k in ("rank", "owned", "ghost", "ghost_lammps")} for r in ranks],
            server_s=per("server_s"),
            bridge_s=per("bridge_s"),
            bridge_share=per("bridge_s") / (loop / steps_done),
        )
    else:
        t = report
        calls = t["calls"] - t["first"]["calls"]
        row["server_s"] = (t["server"] - t["first"]["server"]) / calls
        bridge = sum(t[k] - t["first"][k] for k in ("gather", "transfer", "scatter")) / calls
        row.update(bridge_s=bridge, bridge_share=bridge / (loop / steps_done))
    print(f"lammps_domain: {row}", flush=True)
    return row


def metatomic_rows(model: str, steps: int) -> list[dict]:
    """12,288 atoms, gather 1 × 1 and domain 2 × 2, for the contract model and its metatomic
    export (float32), one after the other under the same conditions."""
    from mlip_server.training.export_metatomic import export_metatomic

    rows = []
    with tempfile.TemporaryDirectory(prefix="lammps-metatomic-") as tmp:
        exported = export_metatomic(model, Path(tmp) / "model-metatomic.pt", "float32")
        for label, path, dtype in (("contract", model, "float32"), ("metatomic", exported, None)):
            for np_, route, servers in ((1, "gather", 1), (2, "domain", 2)):
                row = lammps(path, (2, 2, 2), np_, route, servers, steps, dtype=dtype)
                rows.append(dict(row, format=label))
    return rows


def table(rows) -> str:
    lines = [
        "| atoms | route | ranks × servers | s/step | evaluated/owned (continuum; surface) | bridge share |",
        "|---:|---|---|---:|---|---:|",
    ]
    for r in rows:
        ratio = (
            f"{r['evaluated_per_owned']:.3f} ({r['cost_model']:.3f}; {r['cost_model_surface']:.3f})"
            if "evaluated_per_owned" in r
            else "1"
        )
        route = r["decomposition"] + (f" ({r['format']})" if "format" in r else "")
        lines.append(
            f"| {r['atoms']:,} | {route} | {r['ranks']} × {r['servers']} | {r['step_s']:.3g} | "
            f"{ratio} | {r['bridge_share']:.2%} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="TorchScript model (default: models/water-pet.pt)")
    p.add_argument(
        "--sections",
        nargs="+",
        default=["shells", "weak", "routes"],
        help="shells weak routes metatomic cap (metatomic and cap: not default)",
    )
    p.add_argument("--large", action="store_true", help="also 49,152 atoms per rank / 98,304 atoms")
    p.add_argument("--steps", type=int, default=3, help="MD steps per run (after the set-up call)")
    args = p.parse_args(argv)
    model = args.model or str(shipped_model())
    info = machine()
    out = {"benchmark": "lammps_domain", "model": args.model or "models/water-pet.pt", "machine": info}
    sections = ("shells", "weak", "routes", "metatomic", "cap")
    path = checkout_root() / "bench" / "results" / f"{result_name('lammps_domain')}.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    out.update({k: v for k, v in earlier.items() if k in sections or k == "machine_by_section"})
    # sections kept from an earlier run keep the machine (date, load) they were measured on
    by_section = out.setdefault("machine_by_section", {})
    for sec in sections:
        if sec in args.sections:
            by_section[sec] = info
        elif sec in out and sec not in by_section and "machine" in earlier:
            by_section[sec] = earlier["machine"]
    if "shells" in args.sections:
        out["shells"] = shells(model, 8.0)
    if "weak" in args.sections:
        sizes = [((2, 2, 2), (4, 2, 2))] + ([((4, 4, 2), (4, 4, 4))] if args.large else [])
        weak = []
        for one, two in sizes:
            a = lammps(model, one, 1, "domain", 1, args.steps)
            b = lammps(model, two, 2, "domain", 2, args.steps)
            weak.append(
                {"atoms_per_rank": a["atoms"], "one": a, "two": b, "efficiency": a["step_s"] / b["step_s"]}
            )
        out["weak"] = weak
    if "routes" in args.sections:
        sizes = [(2, 2, 2)] + ([(4, 4, 4)] if args.large else [])
        routes = []
        for rep in sizes:
            routes.append(lammps(model, rep, 1, "gather", 1, args.steps))
            routes.append(lammps(model, rep, 2, "domain", 1, args.steps))
            routes.append(lammps(model, rep, 2, "domain", 2, args.steps))
        out["routes"] = routes
    if "metatomic" in args.sections:
        out["metatomic"] = metatomic_rows(model, args.steps)
    if "cap" in args.sections:
        out["cap"] = [lammps(model, (4, 4, 4), 8, "domain", 1, args.steps, threads=2)]
    info["load_average_at_end"] = os.getloadavg()[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for w in out.get("weak", []):
        print(f"weak scaling at {w['atoms_per_rank']:,} atoms per rank: efficiency {w['efficiency']:.2f}")
    print(
        table(
            [w[k] for w in out.get("weak", []) for k in ("one", "two")]
            + out.get("routes", [])
            + out.get("metatomic", [])
            + out.get("cap", [])
        )
    )
    print(f"\nwrote {path.relative_to(checkout_root())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
