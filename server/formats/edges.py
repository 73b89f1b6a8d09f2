"""Edge batches: what every edge-vector format (TorchScript contract, compiled packages) shares.

A model call of the contract evaluates one *chunk* of copies (graph + rotation) as one batch:
:func:`pack` concatenates their edges (rotated, r' = R r), atoms and structure indices into the
contract's tensors; the format runs its program on them; the program's outputs are turned back
into one :class:`~mlip_server.core.graph.CopyResult` per copy, in the original frame, by

* :func:`assemble_gradients` for conservative outputs: energies [B] (eV) and g_e = ∂E/∂r_e [E,3]
  (eV/Å) give forces F_i = Σ_{e: i centre} g_e − Σ_{e: i neighbour} g_e (eV/Å), the virial
  W = −Σ_e r_e ⊗ g_e (eV, i-PI's convention) and, for ``per_atom`` graphs, per-atom virials
  W_i = −½ Σ_{e ∋ i} g_e ⊗ r_e;
* :func:`assemble_direct` for direct (non-conservative) outputs: energies [B], forces [N,3]
  (eV/Å) and optionally virials [B,3,3] (eV) predicted by a head of the model.

Structure indices: copy b's counted energy terms (its atoms of group ≥ 0; one group for a whole
structure, one per owned atom with per-atom energies) are structures ``first[b] + group``;
uncounted atoms (ghosts of a domain-decomposed rank) go to one extra structure ``n_counted`` at
the end, whose energy is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.graph import CopyResult

__all__ = ["EdgeBatch", "pack", "assemble_gradients", "assemble_direct"]


@dataclass
class EdgeBatch:
    """The contract's inputs for one chunk of copies, and how to split results back.

    Attributes
    ----------
    copies : list of (Graph, numpy.ndarray)
        The copies (graph, rotation R [3,3]) in order.
    edge_vectors : torch.Tensor
        [E,3] rotated edge vectors, Å, in the model's dtype on its device.
    edge_index : torch.Tensor
        int64 [2,E], atoms numbered across the batch.
    numbers : torch.Tensor
        int64 [N] atomic numbers.
    structure_index : torch.Tensor
        int64 [N]: counted terms 0 … n_counted − 1, uncounted atoms n_counted.
    n_counted : int
        Number of counted energy terms; the program is called with ``n_counted + 1`` structures.
    first_group : list of int
        Copy b's first counted term.
    """

    copies: list
    edge_vectors: torch.Tensor
    edge_index: torch.Tensor
    numbers: torch.Tensor
    structure_index: torch.Tensor
    n_counted: int
    first_group: list

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def n_structures(self) -> int:
        """What the program is called with (the counted terms plus the dropped one)."""
        return self.n_counted + 1

    def inputs(self) -> tuple:
        """``(edge_vectors, edge_index, numbers, structure_index, n_structures)``."""
        return self.edge_vectors, self.edge_index, self.numbers, self.structure_index, self.n_structures


def pack(copies, device: torch.device, dtype: torch.dtype, requires_grad: bool = True) -> EdgeBatch:
    """Concatenates ``copies`` (list of (Graph, rotation)) into one :class:`EdgeBatch`; the edge
    vectors are an autograd leaf when ``requires_grad``."""
    numbers, centres, neighbours, vectors, struct_index = [], [], [], [], []
    offset, first_group, n_counted = 0, [], 0
    for g, rot in copies:
        numbers.append(g.numbers)
        centres.append(g.edge_index[0] + offset)
        neighbours.append(g.edge_index[1] + offset)
        vectors.append(g.vectors @ rot.T)
        groups = np.zeros(len(g.numbers), dtype=np.int64) if g.groups is None else g.groups
        struct_index.append(np.where(groups >= 0, groups + n_counted, -1))
        first_group.append(n_counted)
        n_counted += g.n_groups
        offset += len(g.numbers)
    struct = np.concatenate(struct_index)
    struct[struct < 0] = n_counted
    edge_index = torch.from_numpy(np.stack([np.concatenate(centres), np.concatenate(neighbours)])).to(device)
    leaf = torch.from_numpy(np.concatenate(vectors)).to(device=device, dtype=dtype)
    if requires_grad:
        leaf.requires_grad_(True)
    return EdgeBatch(
        copies,
        leaf,
        edge_index,
        torch.from_numpy(np.concatenate(numbers)).to(device),
        torch.from_numpy(struct).to(device),
        n_counted,
        first_group,
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def assemble_gradients(batch: EdgeBatch, energies: torch.Tensor, grad) -> list[CopyResult]:
    """Per-copy results from conservative outputs.

    Parameters
    ----------
    batch : EdgeBatch
    energies : torch.Tensor
        [n_counted] (or longer: the dropped term is ignored), eV.
    grad : torch.Tensor or None
        [E,3] ∂E/∂r_e in the rotated frame, eV/Å; None: no edge (or nothing counted).
    """
    leaf, edge_index = batch.edge_vectors, batch.edge_index
    if grad is None:
        grad = torch.zeros_like(leaf)
    grad = grad.detach()
    forces = torch.zeros((batch.n_atoms, 3), dtype=grad.dtype, device=grad.device)
    forces.index_add_(0, edge_index[0], grad).index_add_(0, edge_index[1], -grad)
    atom_virials = None
    if any(g.per_atom for g, _ in batch.copies):
        half = -0.5 * grad[:, :, None] * leaf.detach()[:, None, :]
        atom_virials = torch.zeros((batch.n_atoms, 3, 3), dtype=grad.dtype, device=grad.device)
        atom_virials.index_add_(0, edge_index[0], half).index_add_(0, edge_index[1], half)
        atom_virials = _numpy(atom_virials)
    energies, forces, grad = _numpy(energies[: batch.n_counted]), _numpy(forces), _numpy(grad)
    results, atom0, edge0 = [], 0, 0
    for b, (g, rot) in enumerate(batch.copies):
        n, e = len(g.numbers), len(g.vectors)
        g_e = grad[edge0 : edge0 + e] @ rot  # back to the original frame: R^T g
        virial = -g_e.T @ g.vectors
        mine = energies[batch.first_group[b] : batch.first_group[b] + g.n_groups]
        result = CopyResult(float(mine.sum()), forces[atom0 : atom0 + n] @ rot, virial)
        if g.per_atom:
            w = atom_virials[atom0 : atom0 + n]
            result = result._replace(atom_energies=mine.copy(), atom_virials=rot.T @ w @ rot)
        results.append(result)
        atom0, edge0 = atom0 + n, edge0 + e
    return results


def assemble_direct(batch: EdgeBatch, energies: torch.Tensor, forces: torch.Tensor, virials=None):
    """Per-copy results from direct outputs: energies [≥ n_counted] eV, forces [N,3] eV/Å and
    virials [≥ n_counted,3,3] eV (None: zero), all in the rotated frame. Forces are returned as
    predicted (the net force is removed by the Evaluator, per structure, after averaging); per-atom
    virials of ``per_atom`` graphs are zero (a direct head predicts no per-atom virials)."""
    energies, forces = _numpy(energies[: batch.n_counted]), _numpy(forces)
    virials = None if virials is None else _numpy(virials[: batch.n_counted])
    results, atom0 = [], 0
    for b, (g, rot) in enumerate(batch.copies):
        n = len(g.numbers)
        first, last = batch.first_group[b], batch.first_group[b] + g.n_groups
        mine = energies[first:last]
        virial = np.zeros((3, 3)) if virials is None else rot.T @ virials[first:last].sum(axis=0) @ rot
        result = CopyResult(float(mine.sum()), forces[atom0 : atom0 + n] @ rot, virial)
        if g.per_atom:
            result = result._replace(atom_energies=mine.copy(), atom_virials=np.zeros((n, 3, 3)))
        results.append(result)
        atom0 += n
    return results
