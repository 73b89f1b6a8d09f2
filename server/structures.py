"""Structures the project builds, reads and writes: water boxes, a gas-phase molecule, i-PI xyz
and LAMMPS data files, and the element list a server reads from a structure file.

Atoms are ordered O, H, H per molecule (as in the shared DFT data and i-PI inputs). Lengths in Å.

    python -m mlip_server.structures --molecules 512            # ./water-512.data
    python -m mlip_server.structures --molecules 512 --out runs/water-512.data
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from ase import Atoms

from .core.errors import InputError

__all__ = [
    "water_molecule",
    "water_box",
    "write_ipi_xyz",
    "write_water_data",
    "read_numbers",
    "LAMMPS_SPECORDER",
]

OH_BOND = 0.9572  # Å, TIP3P/experimental gas-phase geometry
HOH_ANGLE = 104.52  # degrees
WATER_MASS = 18.01528  # g/mol
AVOGADRO = 6.02214076e23


def water_molecule(center=(0.0, 0.0, 0.0), rotation=None) -> Atoms:
    """One H2O molecule (Å), optionally rotated by a 3×3 matrix, centred on its O."""
    half = np.radians(HOH_ANGLE) / 2
    local = np.array(
        [
            [0, 0, 0],
            [OH_BOND * np.sin(half), 0, OH_BOND * np.cos(half)],
            [-OH_BOND * np.sin(half), 0, OH_BOND * np.cos(half)],
        ]
    )
    if rotation is not None:
        local = local @ np.asarray(rotation).T
    return Atoms("OH2", positions=local + np.asarray(center))


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


_LATTICES = {
    "sc": np.array([[0.5, 0.5, 0.5]]),
    "bcc": np.array([[0.25, 0.25, 0.25], [0.75, 0.75, 0.75]]),
    "fcc": np.array([[0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]]),
}
"""Sites of one unit cell (fractional) of the lattices the molecules are put on."""
_NEAREST = {"sc": 1.0, "bcc": 3**0.5 / 2, "fcc": 2**-0.5}
"""Nearest-neighbour distance in units of the unit cell's edge."""


def _lattice_sites(n: int) -> np.ndarray:
    """Fractional sites of the cubic lattice (sc, bcc or fcc; m unit cells a side) with at least
    ``n`` sites whose nearest neighbours are farthest apart at a fixed volume: few sites left
    empty, so that no two molecules sit closer than the density requires (a 128-molecule box on a
    6³ simple-cubic grid had O–O pairs at 2.6 Å and started at 72 kbar with the shipped model)."""
    best = None
    for name, basis in _LATTICES.items():
        m = int(np.ceil((n / len(basis)) ** (1 / 3)))
        count = len(basis) * m**3
        nearest = _NEAREST[name] / m * count ** (1 / 3) * (n / count) ** (1 / 3)  # × (V/n)^(1/3)
        if best is None or nearest > best[0]:
            best = (nearest, basis, m)
    _, basis, m = best
    cells = np.array([(i, j, k) for i in range(m) for j in range(m) for k in range(m)], float)
    return ((cells[:, None, :] + basis[None]) / m).reshape(-1, 3)


def water_box(n_molecules: int, density: float = 0.997, seed: int = 0, min_distance: float = 2.2) -> Atoms:
    """A cubic periodic box of ``n_molecules`` randomly oriented waters.

    Molecules sit on a jittered cubic lattice (sc, bcc or fcc: the one whose sites are farthest
    apart for this number of molecules; no overlaps); ``density`` in g/cm³
    sets the edge length. ``min_distance`` (Å) is the smallest intermolecular O–O
    distance accepted; the builder retries orientations/jitter until it holds.
    """
    from ase.geometry import get_distances

    rng = np.random.default_rng(seed)
    volume = n_molecules * WATER_MASS / AVOGADRO / density * 1e24  # Å^3
    edge = volume ** (1 / 3)
    sites = _lattice_sites(n_molecules)  # fractional
    cell = np.eye(3) * edge
    chosen = sites[rng.permutation(len(sites))[:n_molecules]]
    jitter = 0.05 / len(sites) ** (1 / 3)
    atoms = Atoms(cell=cell, pbc=True)
    for site in chosen:
        for _ in range(200):  # random orientations (and jitter) until nothing clashes
            center = (site + rng.uniform(-jitter, jitter, 3)) * edge
            mol = water_molecule(center, _random_rotation(rng))
            if len(atoms) == 0:
                break
            d = get_distances(mol.positions, atoms.positions, cell=cell, pbc=True)[1]
            if d[0][atoms.numbers == 8].min() >= min_distance and d.min() >= 1.5:
                break
        else:
            raise ValueError(
                f"could not place {n_molecules} molecules at density {density} g/cm³ without overlaps"
            )
        atoms += mol
    atoms.wrap()
    return atoms


def write_ipi_xyz(atoms, path) -> None:
    """Writes an i-PI xyz file (Å) with the cell in the ``# CELL(abcABC)`` comment line.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure with its cell.
    path : str or Path
        Output file.
    """
    a, b, c = atoms.cell.lengths()
    al, be, ga = atoms.cell.angles()
    lines = [
        str(len(atoms)),
        f"# CELL(abcABC): {a:.10f} {b:.10f} {c:.10f} {al:.10f} {be:.10f} {ga:.10f} "
        "positions{angstrom} cell{angstrom}",
    ]
    lines += [
        f"{s} {x:.12f} {y:.12f} {z:.12f}"
        for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)
    ]
    Path(path).write_text("\n".join(lines) + "\n")


LAMMPS_SPECORDER = ["O", "H"]
"""Elements of LAMMPS atom types 1, 2 in the data files written here: pass ``-e O H`` to the bridge."""


def write_water_data(molecules: int, out, seed: int = 0, density: float = 0.997, force: bool = False) -> Path:
    """Writes ``water_box(molecules)`` as a LAMMPS data file (``atom_style atomic``, Å, masses).

    Does nothing when ``out`` exists and was made with the same molecules, density and seed
    (``force`` rebuilds). Large cells are made in LAMMPS with ``replicate``, not here: the
    builder places molecules one by one.

    Parameters
    ----------
    molecules : int
        Number of water molecules.
    out : str or Path
        Data file to write.
    seed : int
        Seed of the box builder.
    density : float
        g/cm³.
    force : bool
        Rebuild even if ``out`` exists.

    Returns
    -------
    Path
        ``out``.
    """
    import ase.io

    out = Path(out)
    stamp = f"water_box({molecules}, density={density}, seed={seed})"
    if out.exists() and not force and stamp in out.read_text().splitlines()[0]:
        return out
    atoms = water_box(molecules, density=density, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    ase.io.write(
        tmp, atoms, format="lammps-data", atom_style="atomic", specorder=LAMMPS_SPECORDER, masses=True
    )
    lines = tmp.read_text().splitlines(keepends=True)
    lines[0] = f"{stamp}: type 1 = O, type 2 = H (mlip-lammps -e O H)\n"
    tmp.write_text("".join(lines))
    tmp.replace(out)
    return out


def read_numbers(path: str) -> np.ndarray:
    """Atomic numbers of the first frame of ``path`` (any ASE-readable file).

    Raises
    ------
    InputError
        When the file is missing or ASE cannot read it.
    """
    if not os.path.isfile(path):
        raise InputError(f"structure file {path!r} not found: pass --structure with i-PI's initial structure")
    import ase.io

    try:
        atoms = ase.io.read(path, index=0)
    except Exception as err:
        raise InputError(
            f"cannot read structure file {path!r} with ASE ({str(err)[:100]}): "
            "use xyz/extxyz/pdb or another ASE format"
        ) from None
    return atoms.get_atomic_numbers()


def main(argv=None) -> int:
    """``python -m mlip_server.structures``: writes a water box as a LAMMPS data file (by default in
    the current folder, never into the checkout unless asked)."""
    p = argparse.ArgumentParser(
        prog="python -m mlip_server.structures",
        description="Writes a water box as a LAMMPS data file (types 1 = O, 2 = H).",
    )
    p.add_argument("--molecules", type=int, default=512, help="water molecules (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the box (default: 0)")
    p.add_argument("--density", type=float, default=0.997, help="g/cm³ (default: 0.997)")
    p.add_argument("--out", default=None, help="the data file to write (default: ./water-N.data)")
    p.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    args = p.parse_args(argv)
    out = args.out or f"water-{args.molecules}.data"
    print(write_water_data(args.molecules, out, seed=args.seed, density=args.density, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
