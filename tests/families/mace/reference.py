"""MACE's own results (its ASE calculator, ``MACECalculator``) on given structures: run in the MACE
venv (tests/families/envs.py), never in the project's.

    python reference.py MODEL DTYPE STRUCTURES.npz OUT.npz [HEAD]

MODEL is a pickled MACE model (``torch.save``, as mace_run_train writes it), evaluated in DTYPE
(float64 or float32, cast as MACE's calculator does); STRUCTURES.npz holds, for each structure
NAME, ``NAME/positions`` (Å), ``NAME/numbers``, ``NAME/cell`` (rows, Å) and ``NAME/pbc``; OUT.npz
gets ``NAME/energy`` (eV), ``NAME/forces`` (eV/Å), ``NAME/node_energy`` (eV, per atom: MACE's calculator
reports the interaction part, each atom's E0 subtracted) and, for periodic structures, ``NAME/stress``
(eV/Å³, 3×3, ASE's sign: −virial/volume).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 under torch >= 2.6

import numpy as np  # noqa: E402
import torch  # noqa: E402


def structure_names(store) -> list:
    return sorted({key.rsplit("/", 1)[0] for key in store.keys()})


def calculator(model, dtype: str, head=None):
    """MACE's own ASE calculator for a MACE module (a Python model) in ``dtype`` (``head``: the
    head of a multi-head model)."""
    from mace.calculators import MACECalculator

    model = model.double() if dtype == "float64" else model.float()
    extra = {} if head is None else {"head": head}
    return MACECalculator(models=model, device="cpu", default_dtype=dtype, **extra)


def compute(calc, store) -> dict:
    """``NAME/energy``, ``NAME/forces`` and (periodic) ``NAME/stress`` of every structure."""
    import ase

    out = {}
    for name in structure_names(store):
        pbc = np.asarray(store[f"{name}/pbc"], dtype=bool)
        atoms = ase.Atoms(
            numbers=store[f"{name}/numbers"],
            positions=store[f"{name}/positions"],
            cell=store[f"{name}/cell"] if pbc.any() else None,
            pbc=pbc,
        )
        atoms.calc = calc
        out[f"{name}/energy"] = np.float64(atoms.get_potential_energy())
        out[f"{name}/forces"] = np.asarray(atoms.get_forces(), dtype=np.float64)
        out[f"{name}/node_energy"] = np.asarray(calc.results["node_energy"], dtype=np.float64)
        if pbc.all():
            out[f"{name}/stress"] = np.asarray(atoms.get_stress(voigt=False), dtype=np.float64)
    return out


def main(argv) -> int:
    model_path, dtype, structures, out, *head = argv
    model = torch.load(model_path, map_location="cpu", weights_only=False)
    with np.load(structures) as store:
        results = compute(calculator(model, dtype, *head), {k: store[k] for k in store.files})
    np.savez(out, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
