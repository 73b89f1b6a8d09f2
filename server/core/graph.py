"""Structures in, validated neighbour graphs out: the data that every model format is given.

A :class:`Structure` is what a front end (i-PI socket, ASE, LAMMPS) hands the Evaluator; a
:class:`Graph` is the same structure checked (finite positions, known elements, no overlaps) with
its full vesin neighbour list; a :class:`Result` is what comes back. Units: Å, eV, eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

from .errors import InputError
from .neighbors import neighbor_pairs

__all__ = ["Structure", "Result", "Graph", "CopyResult", "CommitteeResult", "build_graph"]

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
    owned : int, optional
        Only the energy terms of the first ``owned`` atoms count (a LAMMPS rank's owned atoms,
        followed by its ghost atoms): the energy, the forces on *all* atoms (ghosts included,
        to be returned to their owners) and the virial are those of the owned atoms' energy.
        None: every atom counts. Needs a model whose energy is a sum of atomic terms.
    per_atom : bool
        Also return the energy of each counted atom and the per-atom virial of every atom.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    owned: Optional[int] = None
    per_atom: bool = False

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

    With :attr:`Structure.per_atom`: ``atom_energies`` [n counted] (eV), the energy term of each
    counted atom (they sum to ``energy``), and ``atom_virials`` [N, 3, 3] (eV),
    W_i = −½ Σ over the edges e touching i of g_e ⊗ r_e (they sum to ``virial``).

    From a committee (:mod:`mlip_server.core.committee`): ``committee`` holds every member's result
    and ``extras`` its statistics ``committee_energy_std`` (eV) and ``committee_force_std_max``
    (eV/Å).

    Averaged: ``rotations`` = (weights [K], energies [K] eV, forces [K,N,3] eV/Å) of the rotated
    copies, in the original frame (a decomposed LAMMPS run sums them over ranks for the cell's
    spreads); None for a raw evaluation.
    """

    energy: float
    forces: np.ndarray
    virial: np.ndarray
    extras: dict = field(default_factory=dict)
    atom_energies: Optional[np.ndarray] = None
    atom_virials: Optional[np.ndarray] = None
    committee: Optional["CommitteeResult"] = None
    rotations: Optional[tuple] = None


@dataclass
class CommitteeResult:
    """Every member's result for one structure (after rotational averaging, if any).

    Attributes
    ----------
    energies : numpy.ndarray
        [M] member energies, eV.
    forces : numpy.ndarray
        [M, N, 3] member forces, eV/Å.
    virials : numpy.ndarray
        [M, 3, 3] member virials, eV.
    """

    energies: np.ndarray
    forces: np.ndarray
    virials: np.ndarray

    def force_std(self) -> np.ndarray:
        """[N] per-atom spread σ_i = sqrt(Σ_m |F_i^m − F̄_i|² / (M − 1)), eV/Å."""
        dev = self.forces - self.forces.mean(axis=0)
        return np.sqrt(np.einsum("mia,mia->i", dev, dev) / (len(self.energies) - 1))


class CopyResult(NamedTuple):
    """What a model format returns for one copy (graph + rotation), in the original frame:
    energy (eV), forces [N,3] (eV/Å), virial [3,3] (eV) and, for graphs with
    ``per_atom``, the counted atoms' energies [G] (eV) and per-atom virials [N,3,3] (eV); from
    a committee, ``members``: each member's own CopyResult (the fields above are then the served
    mean or first member)."""

    energy: float
    forces: np.ndarray
    virial: np.ndarray
    atom_energies: Optional[np.ndarray] = None
    atom_virials: Optional[np.ndarray] = None
    members: Optional[list] = None


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
    groups : numpy.ndarray or None
        int64 [N]: the energy term each atom's energy is counted in (0..G−1), −1 for atoms whose
        own energy term does not count (ghost atoms); None: every atom counts, in one term.
        :attr:`Structure.owned` gives group 0 to the owned atoms, ``per_atom`` one group each.
    per_atom : bool
        Per-atom energies and virials wanted (:attr:`Structure.per_atom`).
    """

    numbers: np.ndarray
    edge_index: np.ndarray
    vectors: np.ndarray
    lengths2: np.ndarray
    shifts: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    groups: Optional[np.ndarray] = None
    per_atom: bool = False

    @property
    def n_groups(self) -> int:
        """The number of counted energy terms (1 without groups)."""
        if self.groups is None:
            return 1
        return int(self.groups.max()) + 1 if len(self.groups) and self.groups.max() >= 0 else 0


def atom_groups(n_atoms: int, owned: Optional[int], per_atom: bool) -> Optional[np.ndarray]:
    """:attr:`Graph.groups` for a structure of ``n_atoms`` whose first ``owned`` count."""
    if owned is None and not per_atom:
        return None
    n = n_atoms if owned is None else owned
    groups = np.full(n_atoms, -1, dtype=np.int64)
    groups[:n] = np.arange(n) if per_atom else 0
    return groups


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
    if s.owned is not None and not 0 <= s.owned <= len(numbers):
        raise InputError(f"{where}: {s.owned} owned atoms of {len(numbers)}: must be 0..{len(numbers)}")
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
    groups = atom_groups(len(numbers), s.owned, s.per_atom)
    return Graph(numbers, edge_index, vectors, d2, shifts, positions, cell, pbc.copy(), groups, s.per_atom)
