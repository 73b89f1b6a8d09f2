"""Structures in, validated neighbour graphs out: the data that every model format is given.

A :class:`Structure` is what a front end (i-PI socket, ASE, LAMMPS) hands the Evaluator; a
:class:`Graph` is the same structure checked (finite positions, known elements, no overlaps) with
its full vesin neighbour list; a :class:`Result` is what comes back. Units: Å, eV, eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .neighbors import neighbor_pairs

__all__ = ["Structure", "Result", "Graph", "build_graph"]

try:  # element symbols for error messages
    from ase.data import chemical_symbols
except ImportError:  # pragma: no cover
    chemical_symbols = None


def element_label(z: int) -> str:
    """``"8 (O)"`` for an atomic number (just ``"8"`` without ASE)."""
    if chemical_symbols is not None and 0 <= z < len(chemical_symbols):
        return f"{z} ({chemical_symbols[z]})"
    return str(z)


@dataclass
class Structure:
    """One configuration.

    Attributes
    ----------
    positions : numpy.ndarray
        [N, 3] Cartesian positions, Å.
    numbers : numpy.ndarray
        [N] atomic numbers.
    cell : numpy.ndarray
        [3, 3] lattice vectors as rows, Å (zeros for a non-periodic structure).
    pbc : numpy.ndarray
        [3] periodicity along each lattice vector.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))

    @classmethod
    def from_ase(cls, atoms) -> "Structure":
        """The structure of an ``ase.Atoms``."""
        return cls(
            atoms.get_positions(), atoms.get_atomic_numbers(), np.array(atoms.cell[:]), atoms.pbc.copy()
        )


@dataclass
class Result:
    """Energy (eV), forces [N,3] (eV/Å), virial [3,3] (eV) and extras of one structure.

    For averaged evaluations ``extras`` holds the symmetry-breaking diagnostics:
    ``raw_energy`` (eV, the un-rotated model), ``delta_energy`` (eV, averaged − raw),
    ``energy_spread`` (eV, weighted std over the grid), ``force_spread_rms``
    (eV/Å, RMS over atoms and components of the weighted std over the grid),
    ``raw_force_delta_rms`` (eV/Å, RMS of averaged − raw forces), ``n_rotations``.
    """

    energy: float
    forces: np.ndarray
    virial: np.ndarray
    extras: dict = field(default_factory=dict)


@dataclass
class Graph:
    """A validated structure with its full neighbour list (Å).

    Attributes
    ----------
    numbers, positions, cell, pbc
        As in :class:`Structure` (float64 arrays, Å).
    edge_index : numpy.ndarray
        int64 [2, E]: row 0 centre i, row 1 neighbour j.
    vectors : numpy.ndarray
        [E, 3] r_ij = x_j − x_i + S·cell, Å.
    lengths2 : numpy.ndarray
        [E] squared edge lengths, Å².
    shifts : numpy.ndarray
        int64 [E, 3] integer cell shifts S.
    """

    numbers: np.ndarray
    edge_index: np.ndarray
    vectors: np.ndarray
    lengths2: np.ndarray
    shifts: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray


def build_graph(
    s: Structure, where: str, species: set, cutoff: float, min_distance: float, model_name: str
) -> Graph:
    """Checks ``s`` and builds its full neighbour list at ``cutoff`` (Å).

    Parameters
    ----------
    s : Structure
        The configuration.
    where : str
        How errors name it (e.g. ``"structure 3"``).
    species : set of int
        Atomic numbers the model supports.
    cutoff : float
        Neighbour-list cutoff, Å.
    min_distance : float
        Atoms closer than this (Å) are refused as overlapping.
    model_name : str
        The model's path, for error messages.

    Raises
    ------
    InputError
        Mismatched arrays, NaN positions or cell, unknown elements, a zero-volume cell, overlaps.
    """
    positions = np.asarray(s.positions, dtype=np.float64).reshape(-1, 3)
    numbers = np.asarray(s.numbers, dtype=np.int64).reshape(-1)
    cell = np.asarray(s.cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(s.pbc, dtype=bool), (3,))
    if len(numbers) != len(positions):
        raise InputError(f"{where}: {len(positions)} positions but {len(numbers)} atomic numbers")
    if not np.isfinite(positions).all():
        bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise InputError(f"{where}: position of atom {bad} is NaN or infinite: the dynamics blew up upstream")
    if not np.isfinite(cell).all():
        raise InputError(f"{where}: the cell contains NaN or infinite values")
    unknown = sorted(set(numbers.tolist()) - species)
    if unknown:
        known = ", ".join(element_label(z) for z in sorted(species))
        raise InputError(
            f"{where}: atomic number {element_label(unknown[0])} is not supported by model "
            f"{model_name} (species: {known}): fix the element names of the input"
        )
    if pbc.any() and abs(np.linalg.det(cell[pbc][:, pbc] if pbc.sum() < 3 else cell)) < 1e-12:
        raise InputError(f"{where}: periodic cell has zero volume: give the cell or set pbc to False")
    edge_index, shifts, vectors = neighbor_pairs(positions, cell, pbc, cutoff)
    d2 = np.einsum("ij,ij->i", vectors, vectors)
    if len(vectors):
        k = int(np.argmin(d2))
        if d2[k] < min_distance**2:
            i, j = edge_index[:, k]
            raise InputError(
                f"{where}: atoms {i} and {j} overlap (distance {np.sqrt(d2[k]):.3g} Å < "
                f"{min_distance} Å): check the input geometry and its units"
            )
    return Graph(numbers, edge_index, vectors, d2, shifts, positions, cell, pbc.copy())
