"""The family's own route, timed: run with a family's python (``.families/FAMILY/venv``) by
:mod:`bench.families`; imports the family's package, never the project.

    FAMILY_PYTHON bench/family_timing.py FAMILY MODEL STRUCTURE.xyz [...] --repeats 5 --threads 2

Prints one JSON object: structure file → median seconds of one energy + forces + stress call of
the family's ASE calculator (``MACECalculator``, nequip's ``NequIPCalculator``, metatomic-ase's
``MetatomicCalculator``), a new configuration each call (one coordinate moved by 1e-4 Å).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def calculator(family: str, model: str):
    """The family's own ASE calculator for ``model`` (CPU, the model's own precision)."""
    if family == "mace":  # the pickled Python model (the LAMMPS export is for LAMMPS)
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 under torch >= 2.6
        import torch
        from mace.calculators import MACECalculator

        module = torch.load(model, map_location="cpu", weights_only=False)
        dtype = "float64" if next(module.parameters()).dtype == torch.float64 else "float32"
        return MACECalculator(models=module, device="cpu", default_dtype=dtype)
    if family == "nequip":
        from nequip.integrations.ase import NequIPCalculator

        return NequIPCalculator.from_compiled_model(
            model, device="cpu", chemical_species_to_atom_type_map=True
        )
    if family == "metatrain":
        from metatomic_ase import MetatomicCalculator

        return MetatomicCalculator(model, device="cpu")
    raise SystemExit(f"unknown family {family!r}")


def median_call_seconds(atoms, calc, repeats: int) -> float:
    """Median seconds of one energy + forces + stress call of ``calc`` on ``atoms`` after three
    warm-up calls (TorchScript's profiling runs optimise the first calls), a new configuration each
    call (one coordinate moved by 1e-4 Å: no cached result)."""
    atoms.calc = calc
    times = []
    for k in range(3 + repeats):
        atoms.positions[0, 0] += 1e-4 * (-1) ** k
        t0 = time.perf_counter()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("family")
    p.add_argument("model")
    p.add_argument("structures", nargs="+")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import ase.io
    import torch

    torch.set_num_threads(args.threads)
    calc = calculator(args.family, args.model)
    out = {path: median_call_seconds(ase.io.read(path), calc, args.repeats) for path in args.structures}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
