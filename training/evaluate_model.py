"""Numbers for a model card: accuracy, symmetry breaking and speed of a contract model.

    python -m mlip_server.training.evaluate_model --model models/water-pet.pt \\
        --out models/validation/water-pet.json \\
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
from pathlib import Path

import torch

from mlip_server import machine, metrics
from mlip_server.core.evaluator import Evaluator, Structure
from mlip_server.loading import load_evaluator
from mlip_server.paths import checkout_root

__all__ = ["accuracy", "symmetry_breaking", "speed", "main", "DISTORTED_SOURCES"]


def accuracy(ev: Evaluator, frames) -> dict:
    """Errors of the model against labelled frames (8 frames per model call).

    Parameters
    ----------
    ev : Evaluator
    frames : list of ase.Atoms
        With reference energy (eV) and forces (eV/Å).

    Returns
    -------
    dict
        ``frames``, ``energy_offset_mev_per_atom`` and ``energy_spread_mev_per_atom`` (mean and
        standard deviation of (E_model − E_ref)/N, meV/atom), ``force_mae_ev_per_a`` and
        ``force_rmse_ev_per_a`` (all components, eV/Å).
    """
    errs = metrics.label_errors(ev, frames, batch=8)
    return {
        "frames": len(frames),
        "energy_offset_mev_per_atom": 1e3 * errs.energy_offset_per_atom,
        "energy_spread_mev_per_atom": 1e3 * errs.energy_spread_per_atom,
        "force_mae_ev_per_a": errs.force_mae,
        "force_rmse_ev_per_a": errs.force_rmse,
    }


def symmetry_breaking(ev: Evaluator, frames, grid: str) -> dict:
    """The raw model against its ``grid`` average (:func:`mlip_server.metrics.raw_vs_grid`).

    Parameters
    ----------
    ev : Evaluator
    frames : list of ase.Atoms
    grid : str
        Averaging spec with the identity rotation, e.g. ``3i``.

    Returns
    -------
    dict
        ``energy_mae_mev_per_frame``, ``energy_rms_mev_per_frame`` (meV per structure) and
        ``force_mae_mev_per_a`` (meV/Å), with ``frames`` and ``grid``.
    """
    errs = metrics.raw_vs_grid(ev, [Structure.from_ase(a) for a in frames], grid)
    return {
        "frames": len(frames),
        "grid": grid,
        "energy_mae_mev_per_frame": 1e3 * errs.energy_mae,
        "energy_rms_mev_per_frame": 1e3 * errs.energy_rms,
        "force_mae_mev_per_a": 1e3 * errs.force_mae,
    }


def speed(ev: Evaluator) -> dict:
    """Median wall time of one energy + forces call on water boxes of 192 and 1536 atoms.

    Parameters
    ----------
    ev : Evaluator

    Returns
    -------
    dict
        ``ms_192_atoms``, ``ms_1536_atoms``: ms per call (one warm-up, median of 5 or 3 calls).
    """
    from mlip_server.structures import water_box

    out = {}
    for n in (64, 512):
        s = Structure.from_ase(water_box(n, seed=0))
        timing = metrics.time_model(ev, s, repeats=5 if n == 64 else 3, warmup=1)
        out[f"ms_{3 * n}_atoms"] = 1e3 * float(timing.median_s)
    return out


DISTORTED_SOURCES = ("perturbed", "close-contacts", "explore")


def main(argv=None) -> int:
    import ase.io

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    root = checkout_root()
    p.add_argument("--dft", default=str(root.parent / "shared" / "data" / "dft" / "water_revpbe0d3_190.xyz"))
    p.add_argument("--val", default=str(root / "training" / "data" / "val.extxyz"))
    p.add_argument("--symmetry-frames", type=int, default=20)
    p.add_argument("--grid", default="3i")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ev = load_evaluator(args.model, dtype="float32")
    report = {"model": args.model, "torch_threads": args.threads}
    if Path(args.dft).is_file():
        dft = ase.io.read(args.dft, index=":")
        report["dft"] = accuracy(ev, dft)
        report["symmetry_breaking"] = symmetry_breaking(
            load_evaluator(args.model, dtype="float64"), dft[: args.symmetry_frames], args.grid
        )
    if Path(args.val).is_file():
        val = ase.io.read(args.val, index=":")
        report["teacher_val"] = accuracy(ev, val)
        # by kind of run (make_data's names): classical MD, path-integral beads (pimd-*), and distorted
        # frames (perturbed, close-contacts, explore-*: compressed, displaced, or visited by a failing model)
        kinds = {"teacher_val_classical": [], "teacher_val_pimd": [], "teacher_val_distorted": []}
        for a in val:
            source = str(a.info.get("source", ""))
            kind = (
                "pimd"
                if source.startswith("pimd")
                else "distorted"
                if source.startswith(DISTORTED_SOURCES)
                else "classical"
            )
            kinds[f"teacher_val_{kind}"].append(a)
        for name, subset in kinds.items():
            if subset and len(subset) < len(val):
                report[name] = accuracy(ev, subset)
    report["speed_float32"] = speed(ev)
    report["machine"] = machine.describe()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
