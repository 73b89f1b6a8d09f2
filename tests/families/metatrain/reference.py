"""metatomic-ase's own results (``MetatomicCalculator``) for an exported metatrain model.

Runs in the metatrain venv (``.families/metatrain/venv``), never in the project's::

    python reference.py MODEL.pt FRAMES.extxyz OUT.npz [--non-conservative]

For each frame: ``energy`` (eV), ``forces`` [N,3] (eV/Å), and for a frame periodic in all three
directions ``stress`` [3,3] (eV/Å³, ASE's sign: −W/V) and the per-atom ``energies`` (eV), as the
arrays ``<index>/<name>`` of OUT.npz. ``--non-conservative``: forces and stress from the model's
``non_conservative_force``/``_stress`` heads (metatomic-ase removes the mean force), the energy
from the same forward pass.
"""

from __future__ import annotations

import argparse
import sys

import ase.io
import numpy as np


def references(model: str, frames, non_conservative: bool = False) -> dict:
    """``{f"{k}/{name}": array}`` of metatomic-ase's calculator on ``frames`` (ase.Atoms)."""
    from ase.calculators.calculator import all_changes
    from ase.stress import voigt_6_to_full_3x3_stress
    from metatomic_ase import MetatomicCalculator

    calc = MetatomicCalculator(model, device="cpu", non_conservative=non_conservative)
    out = {}
    for k, atoms in enumerate(frames):
        periodic = bool(atoms.pbc.all())
        properties = ["energy", "forces"]
        if periodic:  # per-atom energies in the same call (one evaluation per frame)
            properties += ["stress"] if non_conservative else ["stress", "energies"]
        calc.calculate(atoms.copy(), properties, all_changes)
        for name in properties:
            value = np.array(calc.results[name], dtype=np.float64)
            out[f"{k}/{name}"] = voigt_6_to_full_3x3_stress(value) if name == "stress" else value
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("frames")
    parser.add_argument("out")
    parser.add_argument("--non-conservative", action="store_true")
    args = parser.parse_args(argv)
    frames = ase.io.read(args.frames, index=":")
    np.savez(args.out, **references(args.model, frames, args.non_conservative))
    return 0


if __name__ == "__main__":
    sys.exit(main())
