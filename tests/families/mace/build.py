"""Small real MACE models, their TorchScript files and MACE's own reference results: run in the
MACE venv (tests/families/envs.py), never in the project's.

    python build.py OUTDIR

Writes to OUTDIR, for two models ``a`` and ``b`` (a committee of two; same architecture, different
random initialisation, E0s set; training is not the point of these cross-checks):

* ``mace-M.model``: the pickled model (``torch.save``, what ``mace_run_train`` writes);
* ``mace-M-DTYPE-lammps.pt``: its LAMMPS export, written by MACE's own
  ``mace.cli.create_lammps_model`` (``mace_create_lammps_model --dtype DTYPE``);
* ``mace-M-DTYPE_compiled.model``: the scripted model (``e3nn.util.jit.compile``, as
  ``mace_run_train`` writes its ``_compiled.model``);
* ``structures.npz``: the structures (reference.py's layout): three DFT water frames (192 atoms,
  ``../shared/data/dft``, if present), a water molecule, an ice Ih cell (288 atoms, if present);
* ``reference-M-DTYPE.npz``: MACE's ``MACECalculator`` on them (energy, forces, stress);
* ``build.json``: what was built (hyper-parameters, files, structures, times).

DTYPE is float64 and float32. Model a: 2 interactions, r_max 4.5 Å, hidden 8x0e+8x1o, max_ell 2,
correlation 2, species H and O. Model c has two heads (``pt_head`` and ``default``, different E0s,
scales and shifts), float64 only: its LAMMPS export is of head ``default``
(``--head default``), and ``reference-c-pt_head-float64.npz`` holds the other head's results.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 under torch >= 2.6

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data"
DTYPES = ("float64", "float32")
E0S = {1: -13.6, 8: -442.0}
"""E0s (eV): H about the isolated atom, O so that E0(H2O) is revPBE0-D3's energy per molecule of
the DFT frames (−469.2 eV)."""
MODELS = {
    "a": dict(seed=0, r_max=4.5, num_interactions=2, hidden="8x0e+8x1o"),
    "b": dict(seed=1, r_max=4.5, num_interactions=2, hidden="12x0e+12x1o"),
    "c": dict(seed=2, r_max=4.5, num_interactions=2, hidden="8x0e+8x1o", heads=["pt_head", "default"]),
}
"""a and b: a committee of two; c: two heads (as a fine-tuned foundation model has), float64 only."""
HEAD_E0S = {"pt_head": {1: -13.0, 8: -440.0}, "default": E0S}


def make_model(seed: int, r_max: float, num_interactions: int, hidden: str, heads=None):
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    z = sorted(E0S)
    return modules.ScaleShiftMACE(
        r_max=r_max,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=num_interactions,
        num_elements=len(z),
        hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=(
            np.array([E0S[k] for k in z])
            if heads is None
            else np.array([[HEAD_E0S[h][k] for k in z] for h in heads])
        ),
        avg_num_neighbors=38.0,
        atomic_numbers=z,
        correlation=2,
        gate=torch.nn.functional.silu,
        atomic_inter_scale=0.5 if heads is None else [0.7, 0.5],
        atomic_inter_shift=0.0 if heads is None else [0.1, 0.0],
        **({} if heads is None else {"heads": heads}),
    )


def structures() -> dict:
    """reference.py's layout: NAME/positions, NAME/numbers, NAME/cell, NAME/pbc."""
    import ase.build
    import ase.io

    found = {}
    dft = SHARED / "dft" / "water_revpbe0d3_190.xyz"
    if dft.exists():
        for k in (0, 63, 127):
            found[f"dft{k}"] = ase.io.read(dft, k)
    else:
        print(f"[mace build] {dft} absent: no DFT frames", flush=True)
    found["molecule"] = ase.build.molecule("H2O")
    ice = SHARED / "structures" / "ice" / "ice_ih_disordered_02.xyz"
    if ice.exists():
        found["ice"] = ase.io.read(ice, 0)
    else:
        print(f"[mace build] {ice} absent: no ice cell", flush=True)
    store = {}
    for name, atoms in found.items():
        store[f"{name}/positions"] = atoms.get_positions()
        store[f"{name}/numbers"] = atoms.get_atomic_numbers()
        store[f"{name}/cell"] = np.array(atoms.cell[:])
        store[f"{name}/pbc"] = atoms.pbc.copy()
    return store


def lammps_export(pickled: Path, dtype: str, target: Path, head=None):
    """MACE's own create_lammps_model (the mace_create_lammps_model command) on ``pickled``."""
    from mace.cli import create_lammps_model

    argv = sys.argv
    sys.argv = ["mace_create_lammps_model", str(pickled), "--dtype", dtype]
    if head is not None:
        sys.argv += ["--head", head]
    try:
        create_lammps_model.main()
    finally:
        sys.argv = argv
    Path(str(pickled) + "-lammps.pt").rename(target)


def main(argv) -> int:
    from e3nn.util import jit

    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.float64)
    store = structures()
    np.savez(out / "structures.npz", **store)
    record = {"models": {}, "structures": reference.structure_names(store), "e0s": E0S}
    for name, hyper in MODELS.items():
        model = make_model(**hyper)
        pickled = out / f"mace-{name}.model"
        torch.save(model, pickled)
        files = {"pickled": pickled.name}
        heads = hyper.get("heads")
        for dtype in DTYPES if heads is None else ("float64",):
            lammps = out / f"mace-{name}-{dtype}-lammps.pt"
            lammps_export(pickled, dtype, lammps, head=None if heads is None else "default")
            cast = copy.deepcopy(model)
            cast = cast.double() if dtype == "float64" else cast.float()
            scripted = out / f"mace-{name}-{dtype}_compiled.model"
            torch.jit.save(jit.compile(cast), str(scripted))
            t1 = time.perf_counter()
            calc = reference.calculator(copy.deepcopy(model), dtype, None if heads is None else "default")
            results = reference.compute(calc, store)
            np.savez(out / f"reference-{name}-{dtype}.npz", **results)
            if heads is not None:  # the other head, to show which one is served
                calc = reference.calculator(copy.deepcopy(model), dtype, "pt_head")
                np.savez(out / f"reference-{name}-pt_head-{dtype}.npz", **reference.compute(calc, store))
            print(f"[mace build] {name} {dtype}: references {time.perf_counter() - t1:.1f} s", flush=True)
            files[dtype] = {
                "lammps": lammps.name,
                "scripted": scripted.name,
                "reference": f"reference-{name}-{dtype}.npz",
            }
        record["models"][name] = {**hyper, "files": files}
        print(f"[mace build] model {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "build.json").write_text(json.dumps(record, indent=1))
    print(f"[mace build] done in {record['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
