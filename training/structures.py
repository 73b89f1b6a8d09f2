"""Starting structures made by the project: water boxes and a gas-phase molecule.

Atoms are ordered O, H, H per molecule (as in the shared DFT data and i-PI inputs).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

OH_BOND = 0.9572  # Å, TIP3P/experimental gas-phase geometry
HOH_ANGLE = 104.52  # degrees
WATER_MASS = 18.01528  # g/mol
AVOGADRO = 6.02214076e23


def water_molecule(center=(0.0, 0.0, 0.0), rotation=None) -> Atoms:
    """One H2O molecule (Å), optionally rotated by a 3×3 matrix, centred on its O."""
    half = np.radians(HOH_ANGLE) / 2
    local = np.array([[0, 0, 0], [OH_BOND * np.sin(half), 0, OH_BOND * np.cos(half)],
                      [-OH_BOND * np.sin(half), 0, OH_BOND * np.cos(half)]])
    if rotation is not None:
        local = local @ np.asarray(rotation).T
    return Atoms("OH2", positions=local + np.asarray(center))


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def water_box(n_molecules: int, density: float = 0.997, seed: int = 0, min_distance: float = 2.2) -> Atoms:
    """A cubic periodic box of ``n_molecules`` randomly oriented waters.

    Molecules sit on a jittered simple-cubic grid (no overlaps); ``density`` in g/cm³
    sets the edge length. ``min_distance`` (Å) is the smallest intermolecular O–O
    distance accepted; the builder retries orientations/jitter until it holds.
    """
    from ase.geometry import get_distances

    rng = np.random.default_rng(seed)
    volume = n_molecules * WATER_MASS / AVOGADRO / density * 1e24  # Å^3
    edge = volume ** (1 / 3)
    n_side = int(np.ceil(n_molecules ** (1 / 3)))
    spacing = edge / n_side
    sites = np.array([(i, j, k) for i in range(n_side) for j in range(n_side) for k in range(n_side)], float)
    cell = np.eye(3) * edge
    chosen = sites[rng.permutation(len(sites))[:n_molecules]]
    atoms = Atoms(cell=cell, pbc=True)
    for site in chosen:
        for _ in range(200):  # random orientations (and jitter) until nothing clashes
            center = (site + 0.5 + rng.uniform(-0.05, 0.05, 3)) * spacing
            mol = water_molecule(center, _random_rotation(rng))
            if len(atoms) == 0:
                break
            d = get_distances(mol.positions, atoms.positions, cell=cell, pbc=True)[1]
            if d[0][atoms.numbers == 8].min() >= min_distance and d.min() >= 1.5:
                break
        else:
            raise ValueError(f"could not place {n_molecules} molecules at density {density} g/cm³ without overlaps")
        atoms += mol
    atoms.wrap()
    return atoms
