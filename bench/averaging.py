"""Cost of rotational averaging: batched (ours) vs a serial loop vs i-PI <ffrotations>.

Time per energy+forces evaluation for the specs none, i, 2, 2i, 3i on a gas-phase water
molecule, 192 atoms and 1536 atoms, and the ratio of each to ``none``:

* batched: all rotated copies in one (chunked) model call — ``Evaluator.compute(s, spec)``;
* serial: one model call per rotation, as in the original workflow;
* i-PI: ``<ffrotations>`` around our raw socket endpoint (wall time per MD step, molecule
  and 192 atoms only, ``none`` and ``2i``).

The chunk size: ``batched`` uses the Evaluator's default, measured per model and structure
size (``max_batch_edges=None``, :mod:`mlip_server.core.evaluator`). For the specs of
``--chunk-specs`` (molecule and 192 atoms) it is timed side by side (round robin, median of
``--side-repeat`` rounds after one untimed round) with the serial loop and with fixed chunks of
``--fixed-chunks`` edges per model call; so are ``--beads`` path-integral beads of the 192-atom
frame (rattled copies, raw model): one ``compute`` of all beads vs one ``compute`` per bead.
The JSON gets ``batched_fixed_N_s`` next to ``batched_s``/``serial_s``, ``beads`` and
``calibrations`` (what the automatic choice measured and what that cost).

    python -m bench.averaging [--model M] [--device cuda] [--dtype float32] [--no-ipi] [--specs none,2i,4i]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import default_model, machine, timeit, write
from mlip_server.core.averaging import Averaging
from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.structures import water_box, water_molecule

SPECS = ["none", "i", "2", "2i", "3i"]


def side_by_side(variants: dict, repeat: int) -> tuple[dict, dict]:
    """Times each variant in turn (round robin), so that load on a shared machine hits them alike.

    Parameters
    ----------
    variants : dict
        Name → callable without arguments.
    repeat : int
        Timed rounds, after one untimed round (warm-up; the automatic chunk choice measures there).

    Returns
    -------
    tuple of dict
        Name → median wall time, s; name → every timed wall time, s.
    """
    for fn in variants.values():
        fn()
    samples = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in samples.items()}, samples


def beads_of(atoms, n, seed=0, spread=0.05):
    """``n`` path-integral-like beads: ``atoms`` with Gaussian displacements of ``spread`` Å."""
    rng = np.random.default_rng(seed)
    s = Structure.from_ase(atoms)
    return [
        Structure(s.positions + spread * rng.standard_normal(s.positions.shape), s.numbers, s.cell, s.pbc)
        for _ in range(n)
    ]


def serial(ev, s, spec):
    rot = Averaging(spec).rotations()
    for r, w in zip(rot.matrices, rot.weights):
        if w > 0:
            ev.compute([Structure(s.positions @ r.T, s.numbers, s.cell @ r.T, s.pbc)])


IPI_XML = """<simulation verbosity='quiet'>
  <output prefix='sim'><properties stride='1' filename='out'> [step, potential] </properties></output>
  <total_steps>{steps}</total_steps>
  <ffrotations name='avg'><grid_order>{order}</grid_order><inversion>{inv}</inversion>
    <ffsocket name='raw' mode='unix' pbc='false'><address>{addr}</address><latency>1e-4</latency></ffsocket>
  </ffrotations>
  <system><initialize nbeads='1'><file mode='xyz' units='angstrom'>init.xyz</file>
    <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces><force forcefield='avg'/></forces>
    <motion mode='dynamics'><dynamics mode='nve'>\
<timestep units='femtosecond'>0.5</timestep></dynamics></motion>
  </system>
</simulation>"""


def ipi_ffrotations(workdir, atoms, model, spec, steps=(2, 6), extra=()):
    from mlip_server import processes
    from mlip_server.structures import write_ipi_xyz

    order, inv = (1, "false") if spec == "none" else (int(spec.rstrip("i")), str(spec.endswith("i")).lower())
    times = []
    for n in steps:
        d = Path(workdir) / f"{spec}-{n}"
        d.mkdir(parents=True)
        write_ipi_xyz(atoms, d / "init.xyz")
        addr = processes.unique_name("bench")
        (d / "input.xml").write_text(IPI_XML.format(steps=n, order=order, inv=inv, addr=addr))
        t0 = time.perf_counter()
        ipi = processes.start_ipi("input.xml", d)
        server = None
        try:
            processes.wait_for_socket(addr, ipi)
            server = processes.start_server(model, "init.xyz", [f"unix:{addr}"], d, extra=list(extra))
            assert processes.wait([ipi, server], 3000) == [0, 0]
        finally:
            processes.stop([ipi, server], [addr])
        times.append(time.perf_counter() - t0)
    return (times[1] - times[0]) / (steps[1] - steps[0])


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--no-ipi", action="store_true")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--specs", default=",".join(SPECS), help="comma-separated averaging specs to time")
    p.add_argument(
        "--chunk-specs",
        default="2i",
        help="specs timed side by side with the serial loop and fixed chunks (molecule, 192 atoms)",
    )
    p.add_argument(
        "--fixed-chunks", default="10000,50000", help="comma-separated fixed max_batch_edges to compare"
    )
    p.add_argument("--beads", type=int, default=8, help="path-integral beads of the 192-atom frame (0: skip)")
    p.add_argument(
        "--side-repeat", type=int, default=7, help="timed rounds of the side-by-side chunk comparisons"
    )
    p.add_argument(
        "--max-serial-evaluations",
        type=int,
        default=400,
        help="skip the serial loop (and 3i at 1536 atoms) where it would need more model calls "
        "× atoms/192 than this (CPU time)",
    )
    args = p.parse_args(argv)
    specs = args.specs.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-avg-"))
    model, label = (args.model, args.model) if args.model else default_model()
    ev = load_evaluator(model, device=args.device, dtype=args.dtype)  # the automatic chunk size
    fixed = {
        int(n): load_evaluator(model, device=args.device, dtype=args.dtype, max_batch_edges=int(n))
        for n in args.fixed_chunks.split(",")
        if n
    }
    chunk_specs = [c for c in args.chunk_specs.split(",") if c in specs]
    mol = water_molecule(center=(5, 5, 5))
    mol.cell, mol.pbc = np.eye(3) * 10, False
    systems = {"molecule (3)": mol, "192 atoms": water_box(64, seed=0), "1536 atoms": water_box(512, seed=0)}
    data = {"machine": machine(), "model": label, "device": args.device, "dtype": args.dtype, "systems": {}}
    lines, chunk_lines = [], []
    for name, atoms in systems.items():
        s = Structure.from_ase(atoms)
        row = {}
        for spec in specs:
            if spec in chunk_specs and len(atoms) < 1000:
                variants = {
                    "batched_s": lambda: ev.compute([s], spec),
                    "serial_s": lambda: serial(ev, s, spec),
                }
                variants.update(
                    {f"batched_fixed_{n}_s": lambda e=e: e.compute([s], spec) for n, e in fixed.items()}
                )
                row[spec], samples = side_by_side(variants, args.side_repeat)
                row[spec]["side_by_side_samples_s"] = samples
                chunk_lines.append(_chunk_line(f"{name}, {spec}", row[spec], fixed))
                continue
            cost = Averaging(spec).n_rotations * max(1.0, len(atoms) / 192)
            big = args.device == "cpu" and len(atoms) > 1000 and Averaging(spec).n_rotations >= 150
            rep = 1 if len(atoms) > 1000 else args.repeat
            batched = np.nan if big else timeit(lambda: ev.compute([s], spec), repeat=rep, warmup=1)
            loop = (
                np.nan
                if (big or cost > args.max_serial_evaluations)
                else timeit(
                    lambda: serial(ev, s, spec),
                    repeat=1 if len(atoms) > 100 else rep,
                    warmup=0 if len(atoms) > 100 else 1,
                )
            )
            row[spec] = {"batched_s": batched, "serial_s": loop}
        if not args.no_ipi and len(atoms) < 1000:
            extra = ["--device", args.device, "--dtype", args.dtype]
            for spec in ("none", "2i"):
                row[spec]["ipi_ffrotations_s_per_step"] = ipi_ffrotations(
                    work / name.split()[0], atoms, model, spec, extra=extra
                )
        data["systems"][name] = row
        if name == "192 atoms" and args.beads > 0:
            beads = beads_of(atoms, args.beads)
            variants = {
                "batched_s": lambda: ev.compute(beads),
                "serial_s": lambda: [ev.compute([b]) for b in beads],
            }
            variants.update({f"batched_fixed_{n}_s": lambda e=e: e.compute(beads) for n, e in fixed.items()})
            times, samples = side_by_side(variants, args.side_repeat)
            data["beads"] = {"system": name, "n_beads": args.beads, "spec": "none", **times}
            data["beads"]["side_by_side_samples_s"] = samples
            chunk_lines.append(_chunk_line(f"{name}, {args.beads} beads", times, fixed))
        base = row["none"]["batched_s"]
        for spec in specs:
            r = row[spec]
            ipi = r.get("ipi_ffrotations_s_per_step")
            ipi_txt = (
                f"{1e3 * ipi:.1f} ({ipi / row['none']['ipi_ffrotations_s_per_step']:.1f}×)" if ipi else "–"
            )
            loop_txt = (
                "–" if np.isnan(r["serial_s"]) else f"{1e3 * r['serial_s']:.1f} ({r['serial_s'] / base:.1f}×)"
            )
            ratio = r["batched_s"] / r["serial_s"] if not np.isnan(r["serial_s"]) else np.nan
            batched_txt = (
                "–"
                if np.isnan(r["batched_s"])
                else f"{1e3 * r['batched_s']:.1f} ({r['batched_s'] / base:.1f}×)"
            )
            lines.append(
                f"| {name} | {spec} | {Averaging(spec).n_rotations} | {batched_txt} | {loop_txt} | "
                f"{'–' if np.isnan(ratio) else f'{ratio:.2f}'} | {ipi_txt} |"
            )
    data["calibrations"] = [{"bucket_edges": b, **c} for b, c in sorted(ev.calibrations.items())]
    data["machine_load_average_at_end"] = os.getloadavg()[0]
    calibration_lines = "\n".join(
        f"- {c['atoms']} atoms ({c['edges']} edges): "
        + (
            "ms per copy "
            + ", ".join(f"k={k} {1e3 * v:.3g}" for k, v in sorted(c["seconds_per_copy"].items()))
            + f"; chosen {', '.join(f'{k} for {n} copies' for n, k in sorted(c['copies_per_call'].items()))}"
            f"; stopped: {c['stopped']}; measuring took {c['cost_s']:.2f} s"
            if c["seconds_per_copy"]
            else "one copy fills the memory budget: one copy per call, nothing measured"
        )
        for c in data["calibrations"]
    )
    m = data["machine"]
    load = f"{m.get('load_average_at_start', float('nan')):.2f} at start, {os.getloadavg()[0]:.2f} at the end"
    md = f"""## Rotational averaging (`bench/averaging.py`)
Machine: {m["cpu"]}, {m["cores"]} cores, torch {m["torch"]} ({m["torch_threads"]} threads)\
{", GPU " + m["gpu"] if "gpu" in m else ""}, {m["date"]}.
Model: {label}; device {args.device}, {args.dtype}. Times in ms per energy+forces \
evaluation (× = ratio to `none`
of the same column); i-PI column: wall time per MD step with `<ffrotations>` around our raw endpoint.
"–": not run (serial loops above {args.max_serial_evaluations} 192-atom model calls, \
and 3i at 1536 atoms, cost too much CPU time here).

| system | spec | rotations | batched (ours) | serial loop | batched / serial | i-PI ffrotations |
|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Chunk size, side by side (round robin, median of {args.side_repeat}; load average {load}): the automatic \
choice (default) vs the serial loop vs fixed `max_batch_edges`; ms per evaluation, ratio to the \
serial loop in brackets.

| case | auto (default) | serial loop | {" | ".join(f"fixed {n}" for n in fixed)} |
|---|---|---|{"---|" * len(fixed)}
{chr(10).join(chunk_lines)}

What the automatic choice measured (time per copy of a k-copy call, best of 2):
{calibration_lines}
"""
    name = "averaging" if args.device == "cpu" else f"averaging_{args.device.split(':')[0]}"
    write(name, data, md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)


def _chunk_line(case, times, fixed):
    serial_s = times["serial_s"]

    def cell(key):
        return f"{1e3 * times[key]:.1f} ({times[key] / serial_s:.2f})"

    fixed_cells = " | ".join(cell(f"batched_fixed_{n}_s") for n in fixed)
    return f"| {case} | {cell('batched_s')} | {1e3 * serial_s:.1f} | {fixed_cells} |"


if __name__ == "__main__":
    main()
