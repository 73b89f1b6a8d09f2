"""Training data: extended-XYZ frames → graphs under the model contract → batches.

* :func:`read_frames` reads energies (eV) and forces (eV/Å) with ASE; the energy may be
  in ``atoms.info["energy"]`` or on a (single-point) calculator, forces in
  ``atoms.arrays["forces"]`` or on the calculator.
* :func:`build_graphs` makes one :class:`Graph` per frame with the server's own
  neighbour list (:func:`mlip_server.core.neighbors.neighbor_list`), so training sees exactly the
  graphs the server will build.
* :func:`collate` packs several graphs into the contract's tensors, optionally rotating
  each structure (edge vectors and force labels alike) by its own 3×3 matrix;
  :func:`random_rotations` draws uniform proper rotations, each inverted with
  probability ½ (the augmentation of the paper: the model is not invariant, so it
  learns approximate invariance from rotated inputs).

Optional labels: per-atom energies (eV) in an ``atoms.arrays["teacher_atomic_energy"]`` column (written by
:mod:`mlip_server.training.atomic_energies` for a teacher whose energy is a sum of atomic terms) travel with
each frame to the batch (``Batch.atomic_energies``, ``None`` unless every frame of the batch has
them); ``atoms.info["source"]`` (the run a frame comes from, ``make_data``'s names) becomes
``Frame.source`` / ``Graph.source``, used for per-set loss weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from mlip_server.core.neighbors import neighbor_list

__all__ = [
    "ATOMIC_ENERGY_KEY",
    "Frame",
    "Graph",
    "Batch",
    "read_frames",
    "build_graphs",
    "composition_matrix",
    "fit_baseline",
    "random_rotations",
    "collate",
    "forces_from_edge_gradient",
]


@dataclass
class Frame:
    """One labelled structure: positions (Å), cell rows (Å), energy (eV), forces (eV/Å)."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float
    forces: np.ndarray
    source: str = ""
    atomic_energies: Optional[np.ndarray] = None


ATOMIC_ENERGY_KEY = "teacher_atomic_energy"
"""Extended-XYZ per-atom column of teacher atomic energies (eV)."""


@dataclass
class Graph:
    """A frame as the model sees it (tensors on one device).

    ``vectors`` float64 [E, 3] Å, ``edge_index`` int64 [2, E], ``numbers`` int64 [N],
    ``energy`` eV (float64, scalar tensor), ``forces`` float64 [N, 3] eV/Å.
    """

    numbers: torch.Tensor
    edge_index: torch.Tensor
    vectors: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    source: str = ""
    atomic_energies: Optional[torch.Tensor] = None
    weight: float = 1.0

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def to(self, device) -> "Graph":
        return Graph(
            *(t.to(device) for t in (self.numbers, self.edge_index, self.vectors, self.energy, self.forces)),
            self.source,
            None if self.atomic_energies is None else self.atomic_energies.to(device),
            self.weight,
        )


@dataclass
class Batch:
    """Contract tensors of several structures plus their labels.

    ``edge_vectors`` [E, 3] Å (a leaf that requires grad when built with
    ``requires_grad=True``), ``edge_index`` [2, E], ``numbers`` [N], ``structure_index`` [N],
    ``n_structures``, ``energies`` [B] eV (labels), ``forces`` [N, 3] eV/Å (labels, rotated
    like the inputs), ``n_atoms`` [B].
    """

    edge_vectors: torch.Tensor
    edge_index: torch.Tensor
    numbers: torch.Tensor
    structure_index: torch.Tensor
    n_structures: int
    energies: torch.Tensor
    forces: torch.Tensor
    n_atoms: torch.Tensor
    atomic_energies: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None


def _labels(atoms, where: str):
    energy = atoms.info.get("energy")
    forces = atoms.arrays.get("forces")
    calc = atoms.calc
    if energy is None and calc is not None and "energy" in getattr(calc, "results", {}):
        energy = calc.results["energy"]
    if forces is None and calc is not None and "forces" in getattr(calc, "results", {}):
        forces = calc.results["forces"]
    if energy is None or forces is None:
        missing = " and ".join(n for n, v in (("energy", energy), ("forces", forces)) if v is None)
        raise ValueError(
            f"{where}: no {missing} label: extended XYZ needs energy=… in the comment "
            "line and a forces:R:3 column (eV, eV/Å)"
        )
    return float(energy), np.asarray(forces, dtype=np.float64).reshape(-1, 3)


def read_frames(path, index=":") -> List[Frame]:
    """Reads labelled frames from an extended-XYZ file (anything ASE reads)."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {str(path)!r} not found: check the data paths in the config")
    frames = []
    for n, atoms in enumerate(ase.io.read(str(path), index=index)):
        energy, forces = _labels(atoms, f"{path}, frame {n}")
        atomic = atoms.arrays.get(ATOMIC_ENERGY_KEY)
        frames.append(
            Frame(
                atoms.get_atomic_numbers().astype(np.int64),
                atoms.get_positions(),
                np.array(atoms.cell[:]),
                atoms.pbc.copy(),
                energy,
                forces,
                str(atoms.info.get("source", "")),
                None if atomic is None else np.asarray(atomic, dtype=np.float64).reshape(-1),
            )
        )
    if not frames:
        raise ValueError(f"dataset {str(path)!r} has no frames")
    return frames


def build_graphs(frames: Sequence[Frame], cutoff: float) -> List[Graph]:
    """Neighbour lists (``cutoff`` Å) of all frames, as CPU tensors."""
    graphs = []
    for f in frames:
        edge_index, vectors = neighbor_list(f.positions, f.cell, f.pbc, cutoff)
        graphs.append(
            Graph(
                torch.from_numpy(f.numbers),
                torch.from_numpy(edge_index),
                torch.from_numpy(vectors),
                torch.tensor(f.energy, dtype=torch.float64),
                torch.from_numpy(f.forces),
                f.source,
                None if f.atomic_energies is None else torch.from_numpy(f.atomic_energies),
            )
        )
    return graphs


def composition_matrix(graphs: Sequence[Graph], species: Sequence[int]) -> np.ndarray:
    """[n_frames, n_species] counts of each species."""
    out = np.zeros((len(graphs), len(species)))
    index = {int(z): k for k, z in enumerate(species)}
    for n, g in enumerate(graphs):
        for z, c in zip(*np.unique(g.numbers.cpu().numpy(), return_counts=True)):
            if int(z) not in index:
                raise ValueError(
                    f"frame {n} contains atomic number {int(z)}, not in the model's species {list(species)}"
                )
            out[n, index[int(z)]] = c
    return out


def fit_baseline(graphs: Sequence[Graph], species: Sequence[int]) -> np.ndarray:
    """Per-species energies (eV) minimising Σ (E − Σ_s n_s μ_s)² (minimum-norm least
    squares, so a fixed stoichiometry such as water's H:O = 2:1 is fine)."""
    counts = composition_matrix(graphs, species)
    energies = np.array([float(g.energy) for g in graphs])
    mu, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return mu


def random_rotations(n: int, generator: torch.Generator, inversion: bool = True) -> torch.Tensor:
    """[n, 3, 3] float64 rotations, uniform on SO(3) (normalised Gaussian quaternions),
    each multiplied by −1 (an improper rotation) with probability ½ if ``inversion``."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).view(n, 3, 3)
    if inversion:
        flip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
        rot = torch.where(flip[:, None, None], -rot, rot)
    return rot


def collate(
    graphs: Sequence[Graph],
    rotations: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
    requires_grad: bool = True,
) -> Batch:
    """Packs ``graphs`` (all on one device) into one :class:`Batch`.

    ``rotations`` [B, 3, 3] (float64, any device): structure b's edge vectors and force
    labels become r → R_b r, F → R_b F; energies are unchanged.
    """
    device = graphs[0].vectors.device
    n_atoms = torch.tensor([g.n_atoms for g in graphs], device=device)
    n_edges = torch.tensor([g.edge_index.shape[1] for g in graphs], device=device)
    offsets = torch.cumsum(n_atoms, 0) - n_atoms
    edge_index = torch.cat([g.edge_index for g in graphs], dim=1) + torch.repeat_interleave(offsets, n_edges)
    vectors = torch.cat([g.vectors for g in graphs])
    forces = torch.cat([g.forces for g in graphs])
    structure_index = torch.repeat_interleave(torch.arange(len(graphs), device=device), n_atoms)
    if rotations is not None:
        rotations = rotations.to(device=device, dtype=torch.float64)
        edge_structure = torch.repeat_interleave(torch.arange(len(graphs), device=device), n_edges)
        vectors = torch.einsum("eab,eb->ea", rotations[edge_structure], vectors)
        forces = torch.einsum("iab,ib->ia", rotations[structure_index], forces)
    vectors = vectors.to(dtype).detach().requires_grad_(requires_grad)
    energies = torch.stack([g.energy for g in graphs])
    atomic = None
    if all(g.atomic_energies is not None for g in graphs):
        atomic = torch.cat([g.atomic_energies for g in graphs])
    weights = None
    if any(g.weight != 1.0 for g in graphs):
        weights = torch.tensor([float(g.weight) for g in graphs], dtype=torch.float64, device=device)
    return Batch(
        vectors,
        edge_index,
        torch.cat([g.numbers for g in graphs]),
        structure_index,
        len(graphs),
        energies,
        forces,
        n_atoms,
        atomic,
        weights,
    )


def forces_from_edge_gradient(grad: torch.Tensor, edge_index: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """F_i = Σ_{e: centre i} ∂E/∂r_e − Σ_{e: neighbour i} ∂E/∂r_e (eV/Å), as the server."""
    forces = torch.zeros((n_atoms, 3), dtype=grad.dtype, device=grad.device)
    return forces.index_add(0, edge_index[0], grad).index_add(0, edge_index[1], -grad)
