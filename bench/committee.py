"""Cost of a committee of 4 against one model, per energy+forces evaluation, side by side.

    python -m bench.committee [--threads 2]

For water at 192 and 1536 atoms (the 64-molecule DFT cell and the 512-molecule box), times
(median, neighbour list included, float32) of: one model (the shipped PET); the committee of four
(``models/committee/``: one neighbour list, members one after the other) through
``load_evaluator([...])``; and the naive alternative, four separate Evaluators called in turn (four
neighbour lists). Writes ``bench/results/committee.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.common import machine, timeit, write
from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.paths import checkout_root
from mlip_server.structures import water_box

MEMBERS = ["phase3", "phase4", "phase2", "phase1"]


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=9, help="interleaved rounds (median)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = [str(checkout_root() / "models" / "committee" / f"{m}.pt") for m in MEMBERS]
    info = machine()
    single = load_evaluator(files[0], device=args.device, dtype="float32")
    committee = load_evaluator(files, device=args.device, dtype="float32")
    separate = [load_evaluator(f, device=args.device, dtype="float32") for f in files]
    rows = []
    for molecules in (64, 512):
        s = Structure.from_ase(water_box(molecules, seed=1))
        calls = {
            "one": lambda: single.compute([s]),
            "committee": lambda: committee.compute([s]),
            "separate": lambda: [e.compute([s]) for e in separate],
        }
        samples = {k: [] for k in calls}
        for call in calls.values():  # warm-up
            call()
        for _ in range(args.repeats):  # interleaved rounds: the machine's load hits all three alike
            for k, call in calls.items():
                samples[k].append(timeit(call, repeat=1, warmup=0))
        t_one, t_com, t_sep = (float(np.median(samples[k])) for k in calls)
        rows.append(
            {
                "atoms": 3 * molecules,
                "one_model_s": t_one,
                "committee_s": t_com,
                "separate_s": t_sep,
                "committee_over_one": t_com / t_one,
                "separate_over_one": t_sep / t_one,
                "samples_s": samples,
            }
        )
        print(f"committee: {rows[-1]}", flush=True)
    lines = [
        "## Committee of 4 vs one model (`bench/committee.py`)",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), device {args.device}, {info['date']}, "
        f"load average {info['load_average_at_start']:.2f} at the start.",
        "Members: models/committee/ (4 PET checkpoints, float32); median of "
        f"{args.repeats} interleaved rounds of one energy+forces call each, neighbour list included; "
        "× = ratio to one model.",
        "",
        "| atoms | one model (ms) | committee of 4, one neighbour list (ms) | 4 separate evaluators (ms) |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['atoms']} | {1e3 * r['one_model_s']:.1f} | {1e3 * r['committee_s']:.1f} "
            f"({r['committee_over_one']:.2f}×) | {1e3 * r['separate_s']:.1f} "
            f"({r['separate_over_one']:.2f}×) |"
        )
    write("committee", {"benchmark": "committee", "machine": info, "rows": rows}, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
