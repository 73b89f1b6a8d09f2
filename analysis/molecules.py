"""Water molecules: which O owns which two H, and whole-molecule vectors across the box.

Atoms in our water files are ordered O, H, H per molecule; any other order is assigned by
nearest oxygen (minimum image) in the first frame. Molecules are made whole by taking every
O->H vector under the minimum-image convention (``MDAnalysis.lib.distances.minimize_vectors``),
which is exact for molecules smaller than half the box and needs no bond topology.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from MDAnalysis.lib.distances import distance_array, minimize_vectors

from .errors import AnalysisInputError

__all__ = ["Water", "find_water", "oh_vectors", "dipole_directions", "molecular_centres"]


@dataclass
class Water:
    """Index arrays into ``universe.atoms``: ``o`` (M,), ``h`` (M, 2); and the ordered groups
    ``oxygens`` (molecule order) and ``hydrogens`` (mol 0 H, mol 0 H, mol 1 H, ...), so that
    ``InterRDF(..., exclusion_block=(1, 2))`` removes exactly the intramolecular O-H pairs."""

    o: np.ndarray
    h: np.ndarray
    oxygens: object
    hydrogens: object

    @property
    def n_molecules(self) -> int:
        return len(self.o)


def find_water(universe) -> Water:
    """Assign water molecules (O,H,H order, else nearest O). Raises AnalysisInputError if the
    hydrogens cannot be split two per oxygen."""
    el = np.asarray(universe.atoms.elements).astype(str)
    o_idx = np.flatnonzero(el == "O")
    h_idx = np.flatnonzero(el == "H")
    if len(o_idx) == 0 or len(h_idx) != 2 * len(o_idx):
        raise AnalysisInputError(
            f"not a water system ({len(o_idx)} O, {len(h_idx)} H): dipole analyses need two H per O; "
            "check the element names (--types for LAMMPS dumps)"
        )
    ordered = (
        len(el) == 3 * len(o_idx)
        and np.all(el[0::3] == "O")
        and np.all(el[1::3] == "H")
        and np.all(el[2::3] == "H")
    )
    if ordered:
        o = np.arange(0, len(el), 3)
        h = np.stack([o + 1, o + 2], axis=1)
    else:
        pos = universe.atoms.positions
        d = distance_array(pos[h_idx], pos[o_idx], box=universe.trajectory.ts.dimensions)
        owner = d.argmin(axis=1)
        counts = np.bincount(owner, minlength=len(o_idx))
        if np.any(counts != 2):
            raise AnalysisInputError(
                "cannot assign water molecules by nearest oxygen (some O own != 2 H in the first frame): "
                "order atoms O,H,H per molecule"
            )
        order = np.argsort(owner, kind="stable")
        o = o_idx
        h = h_idx[order].reshape(-1, 2)
    atoms = universe.atoms
    return Water(o=o, h=h, oxygens=atoms[o], hydrogens=atoms[h.ravel()])


def oh_vectors(positions, water: Water, box) -> np.ndarray:
    """Whole-molecule O->H vectors (M, 2, 3) in Å, minimum image when ``box`` is given."""
    d = positions[water.h] - positions[water.o][:, None, :]
    if box is not None:
        d = minimize_vectors(d.reshape(-1, 3), box).reshape(d.shape)
    return d


def dipole_directions(positions, water: Water, box) -> np.ndarray:
    """Unit vectors u (M, 3) from O to the midpoint of its two H (the molecular dipole axis)."""
    mid = oh_vectors(positions, water, box).mean(axis=1)
    return mid / np.linalg.norm(mid, axis=1, keepdims=True)


def molecular_centres(positions, masses, water: Water, box) -> np.ndarray:
    """Centre of mass of each whole molecule (M, 3) in Å."""
    d = oh_vectors(positions, water, box)
    mo, mh = masses[water.o], masses[water.h]
    shift = (mh[:, :, None] * d).sum(axis=1) / (mo + mh.sum(axis=1))[:, None]
    return positions[water.o] + shift
