"""Per-atom teacher energies as extra labels: adds a ``teacher_atomic_energy`` column to extended-XYZ sets.

    python -m mlip_server.training.atomic_energies training/data/train.extxyz training/data/val.extxyz \\
        [--teacher models/local/bpnnp-revpbe0d3.pt]

The teacher (the Behler–Parrinello potential, ``make teacher``) is a sum of atomic energies. Under
the project's model contract an energy is a sum of per-atom terms assigned to structures through
``structure_index``; evaluating a frame with every atom in a structure of its own (same edges,
``structure_index = arange(N)``, ``n_structures = N``) therefore returns the N atomic energies
(the check :func:`mlip_server.formats.contract._sums_atomic_energies` runs at load time). They are
written, in float64 eV, as the per-atom column :data:`mlip_server.training.data.ATOMIC_ENERGY_KEY`; the sum of
each frame's column is checked against its ``energy`` label (the teacher's total, also float64).
``loss.atomic_energy_weight`` of :mod:`mlip_server.training.train` uses the column.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mlip_server.core.neighbors import neighbor_list
from mlip_server.paths import checkout_root

from .data import ATOMIC_ENERGY_KEY

__all__ = ["load_teacher", "atomic_energies", "add_atomic_energies", "main"]


def load_teacher(path):
    """The teacher's TorchScript module in float64 on the CPU (contract: ``cutoff``, ``species``)."""
    module = torch.jit.load(str(path), map_location="cpu").to(torch.float64)
    module.eval()
    return module


def atomic_energies(module, atoms) -> np.ndarray:
    """[N] atomic energies (eV) of ``atoms`` under the contract ``module``: each atom its own structure."""
    edge_index, vectors = neighbor_list(
        atoms.get_positions(), np.array(atoms.cell[:]), atoms.pbc.copy(), float(module.cutoff)
    )
    n = len(atoms)
    with torch.no_grad():
        out = module(
            torch.from_numpy(vectors).to(torch.float64),
            torch.from_numpy(edge_index),
            torch.from_numpy(atoms.get_atomic_numbers().astype(np.int64)),
            torch.arange(n, dtype=torch.int64),
            n,
        )
    return out.detach().to(torch.float64).numpy().reshape(n)


def add_atomic_energies(frames, module, tolerance_ev: float = 1e-6) -> float:
    """Writes the column into every frame (in place); returns the largest |Σ ε_i − E| (eV).

    Raises ValueError when a frame's sum misses its ``energy`` label by more than ``tolerance_ev``
    per atom (the labels then come from another potential, or the model is not a sum of atomic terms).
    """
    worst = 0.0
    for k, atoms in enumerate(frames):
        eps = atomic_energies(module, atoms)
        label = atoms.info.get("energy")
        if label is None and atoms.calc is not None:  # ASE moves energy= onto a calculator when reading
            label = atoms.calc.results.get("energy")
        if label is not None:
            miss = abs(float(eps.sum()) - float(label))
            if miss > tolerance_ev * len(atoms):
                raise ValueError(
                    f"frame {k}: the atomic energies sum to {eps.sum():.6f} eV, the label is {label:.6f} eV: "
                    "label frames with the same teacher"
                )
            worst = max(worst, miss)
        atoms.arrays[ATOMIC_ENERGY_KEY] = eps
    return worst


def main(argv=None) -> int:
    import ase.io

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="extended-XYZ files, rewritten in place")
    p.add_argument("--teacher", default=str(checkout_root() / "models" / "local" / "bpnnp-revpbe0d3.pt"))
    args = p.parse_args(argv)
    if not Path(args.teacher).is_file():
        print(f"error: teacher {args.teacher} not found: run `make teacher`", file=sys.stderr)
        return 2
    module = load_teacher(args.teacher)
    for path in args.files:
        frames = ase.io.read(path, index=":")
        worst = add_atomic_energies(frames, module)
        tmp = Path(str(path) + ".tmp")
        ase.io.write(tmp, frames, format="extxyz")
        tmp.replace(path)
        print(f"{path}: {len(frames)} frames, largest |sum - energy| {worst:.2e} eV")
    return 0


if __name__ == "__main__":
    sys.exit(main())
