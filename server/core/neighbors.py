"""Neighbour lists for the model contract, computed with vesin.

One call, arrays in, arrays out: :func:`neighbor_list` returns every ordered pair
(i, j) with |x_j - x_i + S·cell| < cutoff, including several periodic images of the
same pair when the cutoff exceeds half the cell (vesin handles that case).
"""

from __future__ import annotations

import numpy as np
import vesin

__all__ = ["neighbor_pairs", "neighbor_list"]


def neighbor_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Full neighbour list of one structure as pairs and integer cell shifts.

    Parameters
    ----------
    positions
        [N, 3] Cartesian positions, Å.
    cell
        [3, 3] lattice vectors as rows, Å (ignored along non-periodic axes).
    pbc
        [3] booleans, periodicity along each lattice vector.
    cutoff
        cutoff radius, Å.

    Returns
    -------
    ``(edge_index, shifts, vectors)``: int64 [2, E] (row 0 centre i, row 1 neighbour j),
    int64 [E, 3] cell shifts S and float64 [E, 3] vectors r_ij = x_j - x_i + S·cell in Å.
    The list is symmetric: for every edge i→j with vector r (shift S) there is one edge
    j→i with vector −r (shift −S).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    box = np.array(cell, dtype=np.float64)
    if not pbc.any():
        box = np.zeros((3, 3))
    i, j, shifts = vesin.NeighborList(cutoff=float(cutoff), full_list=True).compute(
        points=positions, box=box, periodic=pbc.tolist(), quantities="ijS", copy=True
    )
    edge_index = np.stack([i, j]).astype(np.int64)
    shifts = shifts.astype(np.int64)
    vectors = positions[j] - positions[i] + shifts.astype(np.float64) @ box
    return edge_index, shifts, vectors


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """``(edge_index, edge_vectors)`` of :func:`neighbor_pairs` (the model contract's inputs)."""
    edge_index, _, vectors = neighbor_pairs(positions, cell, pbc, cutoff)
    return edge_index, vectors
