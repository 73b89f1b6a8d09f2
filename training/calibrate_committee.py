"""The demonstration committee and its calibration: does the committee spread predict the error?

    python -m mlip_server.training.calibrate_committee [--frames 64] [--out models/validation/committee.json]

Members (no new training): the PET checkpoints the project already has, exported to
``models/committee/`` (TorchScript, float32, the model contract) unless present:

* ``phase3.pt`` — the shipped model (``models/water-pet.pt``, GPU phase 3);
* ``phase4.pt`` — the symmetry-penalised fine-tune of phase 3 (``water-pet-phase4``);
* ``phase2.pt`` — the CPU PIMD-data model before the GPU phase (``water-pet-pimd``);
* ``phase1.pt`` — the first CPU model (``water-pet``).

Calibration against the 190 revPBE0-D3 DFT frames (held out from all training; every
``len/frames``-th is used): the committee mean's force error per atom, |F̄_i − F_i^DFT| (eV/Å),
against the predicted per-atom spread σ_i (:mod:`mlip_server.core.committee`). Atoms are binned by σ_i
(equal counts); per bin the RMS error per Cartesian component and σ_i/√3 (the spread per
component) give the reliability curve; a perfectly calibrated committee lies on the diagonal. The
fitted slope s (RMS error = s · σ, least squares through the origin over all atoms) is the factor
i-PI's ``<ffcommittee>`` ``alpha`` would rescale the spread with; Spearman's ρ between σ_i and the
error tells whether the spread at least *ranks* atoms by their error. The same for energies per
frame (energies after removing the mean offset, which a committee cannot know). Writes the JSON
and a reliability plot next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mlip_server import machine
from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.paths import checkout_root

MEMBERS = {
    "phase3": None,  # the shipped model
    "phase4": "water-pet-phase4",
    "phase2": "water-pet-pimd",
    "phase1": "water-pet",
}


def member_files(root: Path) -> list[str]:
    """The committee's model files, exported from the checkpoints when missing."""
    from mlip_server.training.checkpoints import export

    out = root / "models" / "committee"
    files = []
    for name, folder in MEMBERS.items():
        path = out / f"{name}.pt"
        if not path.exists():
            if folder is None:
                out.mkdir(parents=True, exist_ok=True)
                path.write_bytes((root / "models" / "water-pet.pt").read_bytes())
            else:
                export(root / "models" / "checkpoints" / folder / "checkpoint.pt", path)
        files.append(str(path))
    return files


def reliability(sigma: np.ndarray, error: np.ndarray, bins: int = 10) -> dict:
    """Binned RMS error against the mean spread (equal-count bins), slope through the origin, ρ.

    ``sigma`` and ``error`` are per sample: predicted spread and actual error per component."""
    order = np.argsort(sigma)
    chunks = np.array_split(order, bins)
    curve = [
        {"sigma": float(sigma[c].mean()), "rms_error": float(np.sqrt((error[c] ** 2).mean())), "n": len(c)}
        for c in chunks
    ]
    slope = float(np.sqrt((error**2).sum() / (sigma**2).sum()))  # RMS error = s · RMS σ
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    rho = float(np.corrcoef(ranks(sigma), ranks(np.abs(error)))[0, 1])
    return {"bins": curve, "slope": slope, "spearman": rho}


def calibration(member_f, member_e, ref_f, ref_e, members, serve) -> dict:
    """Reliability of one committee (indices ``members``; ``serve`` mean or first) on the frames."""
    f, e = member_f[:, members], member_e[:, members]
    served_f = f.mean(axis=1) if serve == "mean" else f[:, 0]
    served_e = e.mean(axis=1) if serve == "mean" else e[:, 0]
    dev = f - f.mean(axis=1, keepdims=True)
    sigma_i = np.sqrt((dev**2).sum(axis=(1, 3)) / (len(members) - 1))  # [frames, N], eV/Å
    sig_f = np.repeat(sigma_i[..., None] / np.sqrt(3), 3, axis=-1).reshape(-1)  # per component
    err_f = (served_f - ref_f).reshape(-1)
    sig_e = e.std(axis=1, ddof=1)
    err_e = served_e - ref_e
    err_e = err_e - err_e.mean()  # the offset is a constant no committee can see
    return {
        "serve": serve,
        "force_rmse_served_ev_per_a": float(np.sqrt((err_f**2).mean())),
        "force_spread_rms_ev_per_a": float(np.sqrt((sig_f**2).mean())),
        "forces": reliability(sig_f, err_f),
        "energy_spread_mean_ev": float(sig_e.mean()),
        "energy_error_std_ev": float(err_e.std()),
        "energies": reliability(sig_e, err_e, bins=4),
    }


def main(argv=None) -> int:
    import ase.io
    import torch

    root = checkout_root()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dft", default=str(root.parent / "shared" / "data" / "dft" / "water_revpbe0d3_190.xyz"))
    p.add_argument("--frames", type=int, default=64, help="DFT frames used (evenly spaced)")
    p.add_argument("--out", default=str(root / "models" / "validation" / "committee.json"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = ase.io.read(args.dft, index=":")
    frames = frames[:: max(1, len(frames) // args.frames)][: args.frames]
    files = member_files(root)
    ev = load_evaluator(files, dtype="float32")
    member_f, member_e, ref_f, ref_e = [], [], [], []
    for k in range(0, len(frames), 8):
        chunk = frames[k : k + 8]
        for a, r in zip(chunk, ev.compute([Structure.from_ase(a) for a in chunk])):
            member_f.append(r.committee.forces)
            member_e.append(r.committee.energies)
            ref_f.append(a.get_forces())
            ref_e.append(a.get_potential_energy())
    member_f, member_e = np.stack(member_f), np.stack(member_e)  # [frames, M, N, 3], [frames, M]
    ref_f, ref_e = np.stack(ref_f), np.array(ref_e)
    names = list(MEMBERS)
    rmse = np.sqrt(((member_f - ref_f[:, None]) ** 2).mean(axis=(0, 2, 3)))
    report = {
        "members": {name: str(Path(f).relative_to(root)) for name, f in zip(names, files)},
        "frames": len(frames),
        "atoms_per_frame": len(frames[0]),
        "force_rmse_members_ev_per_a": dict(zip(names, rmse.tolist())),
        "committees": {
            "all four, mean served": calibration(member_f, member_e, ref_f, ref_e, [0, 1, 2, 3], "mean"),
            "all four, phase3 served (--committee-serve first)": calibration(
                member_f, member_e, ref_f, ref_e, [0, 1, 2, 3], "first"
            ),
            "phase3 + phase4 + phase2, mean served": calibration(
                member_f, member_e, ref_f, ref_e, [0, 1, 2], "mean"
            ),
        },
        "machine": machine.describe(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, out.with_suffix(".png"))
    for name, c in report["committees"].items():
        f = c["forces"]
        print(
            f"{name}: force RMSE served {c['force_rmse_served_ev_per_a']:.3f} eV/Å, RMS spread per "
            f"component {c['force_spread_rms_ev_per_a']:.3f} eV/Å, slope {f['slope']:.2f}, "
            f"Spearman {f['spearman']:.2f}"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    top = 0.0
    for k, (name, c) in enumerate(report["committees"].items()):
        b = c["forces"]["bins"]
        x, y = [v["sigma"] for v in b], [v["rms_error"] for v in b]
        top = max(top, 1.05 * max(max(x), max(y)))
        ax.plot(x, y, "o-", color=f"C{k}", ms=3, label=f"{name} (slope {c['forces']['slope']:.2f})")
    ax.plot([0, top], [0, top], "k--", lw=1, label="calibrated")
    ax.set_xlabel("predicted spread per component σ_i/√3 (eV/Å)")
    ax.set_ylabel("RMS force error of the served model (eV/Å)")
    ax.set_title(f"{len(report['members'])} PET checkpoints vs DFT ({report['frames']} frames)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
