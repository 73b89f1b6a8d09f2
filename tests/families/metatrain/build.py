"""Small real PET models (metatrain's PET, the PET-MAD/upet architecture), trained here with
``mtt train`` and exported with ``mtt export``, and metatomic-ase's own results on them.

Runs in the metatrain venv (tests/families/envs.py)::

    python build.py OUTDIR

Writes to OUTDIR:

* ``pet64.pt``: float64 PET (cutoff 3.5 Å, 2 GNN layers: interaction range 7 Å), conservative
  ``energy`` plus the non-conservative heads ``non_conservative_forces`` (trained on the DFT forces)
  and ``non_conservative_stress`` (trained on seeded placeholder labels: the DFT file has no
  stress; the head is what is tested, not its accuracy); 2 epochs;
* ``pet64b.pt``: a second float64 PET (another seed, energy only, 1 epoch): a committee of two;
* ``pet32.pt``: a float32 PET (``base_precision: 32``, 1 epoch);
* ``structures.extxyz``: the reference structures (3 DFT frames not trained on, in their cubic
  cell rounded to 1e-8 Å, a water molecule, the disordered ice Ih cell of 288 atoms),
  ``info["name"]`` naming each;
* ``ref-<model>.npz`` (and ``ref-pet64-nc.npz``: the direct heads): reference.py's results;
* ``build.json``: what was built (models, frames, epochs, seconds).

The training frames are 6 frames of ../shared/data/dft/water_revpbe0d3_190.xyz (192 atoms, revPBE0-D3
energies and forces); without that file (a checkout without ../shared) the models train on water
boxes labelled by ASE's TIP3P and the references skip the DFT frames.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SHARED = ROOT.parent / "shared" / "data"
DFT = SHARED / "dft" / "water_revpbe0d3_190.xyz"
ICE = SHARED / "structures" / "ice" / "ice_ih_disordered_02.xyz"
TRAIN_FRAMES = slice(0, 6)
REFERENCE_FRAMES = (100, 150, 189)

MODEL = """\
    cutoff: 3.5
    d_pet: 16
    d_head: 16
    d_node: 16
    d_feedforward: 16
    num_heads: 2
    num_attention_layers: 1
    num_gnn_layers: 2
"""
OPTIONS = """\
seed: {seed}
base_precision: {precision}
final_eval: false
architecture:
  name: pet
  model:
{model}  training:
    batch_size: 5
    num_epochs: {epochs}
    learning_rate: 1.0e-3
    num_workers: 0
    checkpoint_interval: 1000
training_set:
  systems:
    read_from: train.xyz
    length_unit: angstrom
  targets:
    energy:
      key: energy
      unit: eV
      forces:
        key: forces
{extra_targets}validation_set: 0.2
test_set: 0.0
"""
NON_CONSERVATIVE = """\
    non_conservative_forces:
      key: forces
      unit: eV/Angstrom
      type:
        cartesian:
          rank: 1
      sample_kind: atom
    non_conservative_stress:
      key: nc_stress
      unit: eV/Angstrom^3
      type:
        cartesian:
          rank: 2
      sample_kind: system
"""
METADATA = """\
name: {name}
description: a tiny PET trained for a few epochs on revPBE0-D3 water frames (mlip_server tests)
authors:
  - mlip_server test suite
references:
  model:
    - https://github.com/metatensor/metatrain
"""
BUILDS = {
    "pet64": dict(seed=0, precision=64, epochs=2, non_conservative=True),
    "pet64b": dict(seed=1, precision=64, epochs=1, non_conservative=False),
    "pet32": dict(seed=2, precision=32, epochs=1, non_conservative=False),
}


def _mtt(*args, cwd: Path) -> None:
    """Runs metatrain's ``mtt`` of this venv; its log tail on failure."""
    mtt = Path(sys.executable).parent / "mtt"
    done = subprocess.run([str(mtt), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise SystemExit(f"mtt {' '.join(args)} failed (exit {done.returncode}):\n{tail}")


def training_frames():
    """6 DFT frames with a placeholder ``nc_stress`` label; TIP3P water boxes without the file."""
    rng = np.random.default_rng(0)
    if DFT.exists():
        frames = ase.io.read(DFT, index=TRAIN_FRAMES)
    else:
        frames = [_tip3p_box(seed) for seed in range(6)]
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info = {"energy": atoms.get_potential_energy()}
        copy.arrays["forces"] = atoms.get_forces()
        a = rng.normal(scale=0.01, size=(3, 3))
        copy.info["nc_stress"] = (a + a.T).reshape(-1)
        out.append(copy)
    return out


def _tip3p_box(seed: int):
    """32 rigid waters in a 9.9 Å box (O H H order), rattled, with ASE's TIP3P energy and forces."""
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.calculators.tip3p import TIP3P

    rng = np.random.default_rng(seed)
    water = molecule("H2O")  # O, H, H
    atoms = None
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(2)]) * [2.475, 2.475, 4.95]
    for shift in grid:
        w = water.copy()
        w.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COP")
        w.translate(shift + 1.0)
        atoms = w if atoms is None else atoms + w
    atoms.set_cell([9.9, 9.9, 9.9])
    atoms.pbc = True
    atoms.rattle(0.02, seed=seed)
    atoms.calc = TIP3P(rc=4.5)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def reference_structures():
    """The structures the references are computed on, each named in ``info["name"]``."""
    from ase.build import molecule

    structures = []
    if DFT.exists():
        for k in REFERENCE_FRAMES:
            atoms = ase.io.read(DFT, index=k)
            # the file's cells are cubic but for off-diagonal entries of 5e-7 Å (a Bohr
            # conversion's rounding) and have 15 digits; i-PI's abc/angles header (10 decimals)
            # holds neither exactly, and the forces of a cell 4e-11 Å longer differ by 5e-10
            # relative: the references use the cubic cell rounded to 1e-8 Å
            cell = np.diag(np.round(np.diag(atoms.cell[:]), 8))
            structures.append(ase.Atoms(atoms.numbers, atoms.positions, cell=cell, pbc=True))
            structures[-1].info["name"] = f"dft-{k}"
    water = molecule("H2O")
    water.info["name"] = "molecule"
    structures.append(water)
    if ICE.exists():
        ice = ase.io.read(ICE)
        structures.append(ase.Atoms(ice.numbers, ice.positions, cell=ice.cell, pbc=True))
        structures[-1].info["name"] = "ice"
    return structures


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:])[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ase.io.write(out / "train.xyz", training_frames())
    record = {"training": str(DFT) if DFT.exists() else "TIP3P water boxes", "models": {}}
    for name, build in BUILDS.items():
        work = out / f"train-{name}"
        work.mkdir()
        (work / "train.xyz").symlink_to(out / "train.xyz")
        options = OPTIONS.format(
            seed=build["seed"],
            precision=build["precision"],
            model=MODEL,
            epochs=build["epochs"],
            extra_targets=NON_CONSERVATIVE if build["non_conservative"] else "",
        )
        (work / "options.yaml").write_text(options)
        (work / "metadata.yaml").write_text(METADATA.format(name=f"tiny PET {name}"))
        t0 = time.perf_counter()
        _mtt("train", "options.yaml", "-o", "trained.pt", cwd=work)
        _mtt("export", "trained.ckpt", "-o", str(out / f"{name}.pt"), "-m", "metadata.yaml", cwd=work)
        record["models"][name] = {**build, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: trained and exported in {record['models'][name]['seconds']} s", flush=True)

    from reference import references

    structures = reference_structures()
    ase.io.write(out / "structures.extxyz", structures)
    for name in BUILDS:
        np.savez(out / f"ref-{name}.npz", **references(str(out / f"{name}.pt"), structures))
    np.savez(out / "ref-pet64-nc.npz", **references(str(out / "pet64.pt"), structures, True))
    record["structures"] = [s.info["name"] for s in structures]
    record["seconds"] = round(time.perf_counter() - start, 1)
    (out / "build.json").write_text(json.dumps(record, indent=1))
    print(f"built in {record['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
