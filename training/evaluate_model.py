"""Numbers for a model card: accuracy, symmetry breaking and speed of a contract model.

    python -m training.evaluate_model --model models/water-pet.pt --out models/validation/water-pet.json \\
        [--dft ../shared/data/dft/water_revpbe0d3_190.xyz] [--val training/data/val.extxyz] \\
        [--symmetry-frames 20] [--grid 3i]

* accuracy against the DFT frames (energy offset and spread per atom, meV; force MAE and
  RMSE, eV/Å) and against held-out teacher-labelled frames;
* symmetry breaking, raw vs the ``--grid`` average on the first ``--symmetry-frames`` DFT
  frames: energy MAE per frame (meV) and force MAE (meV/Å), as the paper's table;
* speed: energy + forces for 192 and 1536 atoms (float32, this CPU, torch threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from server.core.evaluator import Evaluator, Structure


def accuracy(ev: Evaluator, frames) -> dict:
    de, df = [], []
    for start in range(0, len(frames), 8):
        chunk = frames[start:start + 8]
        for a, r in zip(chunk, ev.compute([Structure.from_ase(a) for a in chunk])):
            de.append((r.energy - a.get_potential_energy()) / len(a))
            df.append((r.forces - a.get_forces()).ravel())
    de, df = np.array(de), np.concatenate(df)
    return {"frames": len(frames), "energy_offset_mev_per_atom": 1e3 * de.mean(),
            "energy_spread_mev_per_atom": 1e3 * de.std(), "force_mae_ev_per_a": float(np.abs(df).mean()),
            "force_rmse_ev_per_a": float(np.sqrt((df**2).mean()))}


def symmetry_breaking(ev: Evaluator, frames, grid: str) -> dict:
    de, df = [], []
    for a in frames:
        s = Structure.from_ase(a)
        avg = ev.compute([s], grid)[0]
        de.append(avg.extras["raw_energy"] - avg.energy)
        raw = ev.compute([s])[0]
        df.append((raw.forces - avg.forces).ravel())
    de, df = np.array(de), np.concatenate(df)
    return {"frames": len(frames), "grid": grid, "energy_mae_mev_per_frame": 1e3 * float(np.abs(de).mean()),
            "energy_rms_mev_per_frame": 1e3 * float(np.sqrt((de**2).mean())),
            "force_mae_mev_per_a": 1e3 * float(np.abs(df).mean())}


def speed(ev: Evaluator) -> dict:
    from server.structures import water_box

    out = {}
    for n in (64, 512):
        s = Structure.from_ase(water_box(n, seed=0))
        ev.compute([s])
        times = []
        for _ in range(5 if n == 64 else 3):
            t0 = time.perf_counter()
            ev.compute([s])
            times.append(time.perf_counter() - t0)
        out[f"ms_{3 * n}_atoms"] = 1e3 * float(np.median(times))
    return out


DISTORTED_SOURCES = ("perturbed", "close-contacts", "explore")


def main(argv=None) -> int:
    import ase.io

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    root = Path(__file__).resolve().parents[1]
    p.add_argument("--dft", default=str(root.parent / "shared" / "data" / "dft" / "water_revpbe0d3_190.xyz"))
    p.add_argument("--val", default=str(root / "training" / "data" / "val.extxyz"))
    p.add_argument("--symmetry-frames", type=int, default=20)
    p.add_argument("--grid", default="3i")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ev = Evaluator(args.model, dtype="float32")
    report = {"model": args.model, "torch_threads": args.threads}
    if Path(args.dft).is_file():
        dft = ase.io.read(args.dft, index=":")
        report["dft"] = accuracy(ev, dft)
        report["symmetry_breaking"] = symmetry_breaking(Evaluator(args.model, dtype="float64"),
                                                        dft[:args.symmetry_frames], args.grid)
    if Path(args.val).is_file():
        val = ase.io.read(args.val, index=":")
        report["teacher_val"] = accuracy(ev, val)
        # by kind of run (make_data's names): classical MD, path-integral beads (pimd-*), and distorted
        # frames (perturbed, close-contacts, explore-*: compressed, displaced, or visited by a failing model)
        kinds = {"teacher_val_classical": [], "teacher_val_pimd": [], "teacher_val_distorted": []}
        for a in val:
            source = str(a.info.get("source", ""))
            kind = ("pimd" if source.startswith("pimd") else
                    "distorted" if source.startswith(DISTORTED_SOURCES) else "classical")
            kinds[f"teacher_val_{kind}"].append(a)
        for name, subset in kinds.items():
            if subset and len(subset) < len(val):
                report[name] = accuracy(ev, subset)
    report["speed_float32"] = speed(ev)
    from bench.common import machine

    report["machine"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
