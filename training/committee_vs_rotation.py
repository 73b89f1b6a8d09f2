"""Symmetry breaking of the shipped PET against the demonstration committee's spread on DFT frames.

    python -m mlip_server.training.committee_vs_rotation [--frames 6] [--grid 2i] \\
        [--members phase3 phase4 phase2]

The probe's section 6 (:func:`mlip_server.analysis.probe.static.committee_vs_rotation`) on evenly spaced
frames of ``../shared/data/dft/water_revpbe0d3_190.xyz``: the rotational force spread of
``models/water-pet.pt`` over the grid next to the spread of ``models/committee/`` (each member
averaged over the same grid), float64, one torch thread. Writes
``models/validation/committee_vs_rotation.json`` (all four members) or
``committee_vs_rotation-<members>.json`` (forces eV/Å, wall time s).
"""

from __future__ import annotations

import argparse
import json
import time

from mlip_server.paths import checkout_root

MEMBERS = ("phase3", "phase4", "phase2", "phase1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mlip_server.training.committee_vs_rotation", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--frames", type=int, default=6, help="DFT frames, evenly spaced (default %(default)s)")
    p.add_argument("--grid", default="2i", help="averaging grid of both spreads (default %(default)s)")
    p.add_argument(
        "--members", nargs="+", default=list(MEMBERS), choices=MEMBERS, help="members of models/committee/"
    )
    args = p.parse_args(argv)
    if len(args.members) < 2:
        p.error("--members needs two or more")

    import torch

    from mlip_server.analysis.probe.pipeline import load_dataset
    from mlip_server.analysis.probe.static import committee_vs_rotation
    from mlip_server.loading import load_evaluator

    torch.set_num_threads(1)
    root = checkout_root()
    frames, description = load_dataset(root.parent / "shared/data/dft/water_revpbe0d3_190.xyz", args.frames)
    members = [str(root / "models/committee" / f"{m}.pt") for m in args.members]
    t0 = time.monotonic()
    result = committee_vs_rotation(
        load_evaluator(str(root / "models/water-pet.pt"), dtype="float64"),
        load_evaluator(members, dtype="float64"),
        frames,
        args.grid,
    )
    result.update(description=description, members=list(args.members), wall_s=time.monotonic() - t0)
    name = "" if list(args.members) == list(MEMBERS) else "-" + "-".join(args.members)
    out = root / f"models/validation/committee_vs_rotation{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    a = result["all"]
    print(
        f"rotational {a['rotational_rms_eV_A'] * 1e3:.1f} meV/Å, "
        f"committee {a['committee_rms_eV_A'] * 1e3:.1f} meV/Å, ratio {a['ratio']:.3f} -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
