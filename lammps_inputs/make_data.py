"""Writes a water box built by the project (``training.structures.water_box``) as a LAMMPS
data file (``atom_style atomic``, type 1 = O, type 2 = H, masses included, Å).

    python lammps_inputs/make_data.py --molecules 512 --out lammps_inputs/water-512.data

Does nothing when ``--out`` exists and was made with the same molecules and seed
(``--force`` rebuilds). Large cells are made in LAMMPS with ``replicate`` (see
``in.water-large``), not here: the builder places molecules one by one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

SPECORDER = ["O", "H"]  # LAMMPS type 1, 2: pass -e O H to the bridge


def write_water_data(molecules: int, out, seed: int = 0, density: float = 0.997, force: bool = False) -> Path:
    """Builds ``water_box(molecules)`` and writes it to ``out``; returns the path."""
    import ase.io

    from training.structures import water_box

    out = Path(out)
    stamp = f"water_box({molecules}, density={density}, seed={seed})"
    if out.exists() and not force and stamp in out.read_text().splitlines()[0]:
        return out
    atoms = water_box(molecules, density=density, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    ase.io.write(tmp, atoms, format="lammps-data", atom_style="atomic", specorder=SPECORDER, masses=True)
    lines = tmp.read_text().splitlines(keepends=True)
    lines[0] = f"{stamp}: type 1 = O, type 2 = H (mlip-lammps -e O H)\n"
    tmp.write_text("".join(lines))
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecules", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--density", type=float, default=0.997, help="g/cm³")
    p.add_argument("--out", default=None, help="default: lammps_inputs/water-N.data")
    p.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    args = p.parse_args(argv)
    out = args.out or ROOT / "lammps_inputs" / f"water-{args.molecules}.data"
    path = write_water_data(args.molecules, out, seed=args.seed, density=args.density, force=args.force)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
