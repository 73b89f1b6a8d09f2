"""The Evaluator: structures in, energies, forces and virials out, batched.

Every force provider of the project (the i-PI socket server, the ASE calculator,
the i-PI in-process PES, the LAMMPS bridge) calls :meth:`Evaluator.compute`.

Physics (DESIGN.md §3). For each structure the server builds the full neighbour
list; the model sees only edge vectors r_e = x_j - x_i + S·cell. With
g_e = ∂E/∂r_e from autograd,

* forces   F_i = Σ_{e: i is centre} g_e - Σ_{e: i is neighbour} g_e   (eV/Å),
* virial   W_ab = -Σ_e g_e,a r_e,b = -∂E/∂ε_ab for the homogeneous strain
  r -> (1 + ε) r (eV). This is i-PI's convention; W is symmetric for invariant models.

Rotational averaging evaluates copies of the graph with rotated edge vectors R_k r_e
in the same batch; E_avg = Σ_k w_k E(R_k ·). The per-copy gradient, rotated back,
gives each copy's forces and virial, and their weighted sum is exactly the gradient of
E_avg. Copies of all structures are packed into model calls of at most
``max_batch_edges`` edges (default :data:`DEFAULT_MAX_BATCH_EDGES` for the device).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .averaging import Averaging
from .errors import InputError, ModelError
from .model import LoadedModel, load_model
from .neighbors import neighbor_pairs

try:  # element symbols for error messages
    from ase.data import chemical_symbols
except ImportError:  # pragma: no cover
    chemical_symbols = None


def _symbol(z: int) -> str:
    if chemical_symbols is not None and 0 <= z < len(chemical_symbols):
        return f"{z} ({chemical_symbols[z]})"
    return str(z)


@dataclass
class Structure:
    """One configuration.

    Attributes:
        positions: [N, 3] Cartesian positions, Å.
        numbers: [N] atomic numbers.
        cell: [3, 3] lattice vectors as rows, Å (zeros for a non-periodic structure).
        pbc: [3] periodicity along each lattice vector.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))

    @classmethod
    def from_ase(cls, atoms) -> "Structure":
        return cls(atoms.get_positions(), atoms.get_atomic_numbers(), np.array(atoms.cell[:]), atoms.pbc.copy())


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
class _Graph:
    """A validated structure with its full neighbour list (Å)."""

    numbers: np.ndarray
    edge_index: np.ndarray
    vectors: np.ndarray
    lengths2: np.ndarray  # squared edge lengths, Å²
    shifts: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray


DEFAULT_MAX_BATCH_EDGES = {"cpu": 50_000, "cuda": 2_000_000}
"""Edges per model call by device type. On CPU, batching beyond ~10 copies of a 192-atom water
frame only adds memory traffic (measured for the shipped PET on 2 cores, 192 atoms: ``2i`` in
float32 2.7 s per call at 50k edges vs 6.6 s at 200k or 2M; ``4i`` in float64 115 s vs 222 s);
a GPU needs large calls to be busy."""


class Evaluator:
    """Evaluates a contract model on lists of structures.

    Args:
        model: path to a TorchScript file, a ScriptModule or a :class:`LoadedModel`.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``float32`` or ``float64`` (model and edge vectors; results are float64).
        max_batch_edges: edges per model call (rotated copies count); None: the device's
            default in :data:`DEFAULT_MAX_BATCH_EDGES`.
        min_distance: atoms closer than this (Å) are refused as overlapping.
    """

    def __init__(self, model, device="cpu", dtype="float64", max_batch_edges: Optional[int] = None,
                 min_distance: float = 0.1):
        self.model = model if isinstance(model, LoadedModel) else load_model(model, device, dtype)
        self.device, self.dtype = self.model.device, self.model.dtype
        if max_batch_edges is None:
            max_batch_edges = DEFAULT_MAX_BATCH_EDGES.get(self.device.type, DEFAULT_MAX_BATCH_EDGES["cpu"])
        self.max_batch_edges = int(max_batch_edges)
        self.min_distance = float(min_distance)
        self._species = set(self.model.species)
        # TorchScript's profiling executor re-specialises for new input shapes (every MD step
        # has a different number of edges), costing seconds per call for no gain on CPU;
        # on CUDA its fusers can pay off
        self._jit_optimize = self.device.type == "cuda"
        self.timings = {"neighbors": 0.0, "model": 0.0, "total": 0.0}

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    def compute(self, structures, averaging=None) -> list[Result]:
        """Energies, forces and virials of ``structures`` (a list of :class:`Structure`).

        ``averaging``: an :class:`Averaging`, a spec string, or a list of them (one per
        structure); None means the raw model.
        """
        t0 = time.perf_counter()
        if not isinstance(averaging, (list, tuple)):
            averaging = [averaging] * len(structures)
        converted = {}  # one Averaging per distinct spec string (random ones keep their stream)
        averaging = [a if isinstance(a, Averaging) else converted.setdefault(a, Averaging(a or "none"))
                     for a in averaging]
        graphs = [self._graph(s, n) for n, s in enumerate(structures)]
        t1 = time.perf_counter()
        rotations = [a.rotations() for a in averaging]
        per_copy = self._evaluate_copies(graphs, rotations)
        results = [
            _combine(copies, rot, a.is_raw) for copies, rot, a in zip(per_copy, rotations, averaging)
        ]
        t2 = time.perf_counter()
        self.timings["neighbors"] += t1 - t0
        self.timings["total"] += t2 - t0
        return results

    # -- validation and graphs ------------------------------------------------------
    def _graph(self, s: Structure, n: int) -> _Graph:
        positions = np.asarray(s.positions, dtype=np.float64).reshape(-1, 3)
        numbers = np.asarray(s.numbers, dtype=np.int64).reshape(-1)
        cell = np.asarray(s.cell, dtype=np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(s.pbc, dtype=bool), (3,))
        where = f"structure {n}"
        if len(numbers) != len(positions):
            raise InputError(f"{where}: {len(positions)} positions but {len(numbers)} atomic numbers")
        if not np.isfinite(positions).all():
            bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
            raise InputError(f"{where}: position of atom {bad} is NaN or infinite: the dynamics blew up upstream")
        if not np.isfinite(cell).all():
            raise InputError(f"{where}: the cell contains NaN or infinite values")
        unknown = sorted(set(numbers.tolist()) - self._species)
        if unknown:
            known = ", ".join(_symbol(z) for z in sorted(self._species))
            raise InputError(
                f"{where}: atomic number {_symbol(unknown[0])} is not supported by model "
                f"{self.model.path} (species: {known}): fix the element names of the input"
            )
        if pbc.any() and abs(np.linalg.det(cell[pbc][:, pbc] if pbc.sum() < 3 else cell)) < 1e-12:
            raise InputError(f"{where}: periodic cell has zero volume: give the cell or set pbc to False")
        edge_index, shifts, vectors = neighbor_pairs(positions, cell, pbc, self.cutoff)
        d2 = np.einsum("ij,ij->i", vectors, vectors)
        if len(vectors):
            k = int(np.argmin(d2))
            if d2[k] < self.min_distance**2:
                i, j = edge_index[:, k]
                raise InputError(
                    f"{where}: atoms {i} and {j} overlap (distance {np.sqrt(d2[k]):.3g} Å < "
                    f"{self.min_distance} Å): check the input geometry and its units"
                )
        return _Graph(numbers, edge_index, vectors, d2, shifts, positions, cell, pbc.copy())

    # -- batched evaluation -------------------------------------------------------
    def _evaluate_copies(self, graphs, rotations):
        """Evaluates all rotated copies; returns, per structure, a list over copies of
        (energy, forces [N,3], virial [3,3]) in the original frame."""
        items = [(s, k) for s, rot in enumerate(rotations) for k in range(len(rot.weights))]
        out = [[None] * len(rot.weights) for rot in rotations]
        chunk, edges = [], 0
        for item in items:
            n_edges = max(len(graphs[item[0]].vectors), 1)
            if chunk and edges + n_edges > self.max_batch_edges:
                self._run_chunk(chunk, graphs, rotations, out)
                chunk, edges = [], 0
            chunk.append(item)
            edges += n_edges
        if chunk:
            self._run_chunk(chunk, graphs, rotations, out)
        return out

    def _run_chunk(self, chunk, graphs, rotations, out):
        if self.model.metatomic is not None:
            t0 = time.perf_counter()
            copies = [(graphs[s], rotations[s].matrices[k]) for s, k in chunk]
            results = self.model.metatomic.evaluate(copies)
            self.timings["model"] += time.perf_counter() - t0
            for (s, k), (energy, forces, virial) in zip(chunk, results):
                self._require_finite(energy, forces)
                out[s][k] = (energy, forces, virial)
            return
        dev, dt = self.device, self.dtype
        numbers, centres, neighbours, vectors, struct_index = [], [], [], [], []
        offset = 0
        for b, (s, k) in enumerate(chunk):
            g = graphs[s]
            numbers.append(g.numbers)
            centres.append(g.edge_index[0] + offset)
            neighbours.append(g.edge_index[1] + offset)
            vectors.append(g.vectors @ rotations[s].matrices[k].T)
            struct_index.append(np.full(len(g.numbers), b, dtype=np.int64))
            offset += len(g.numbers)
        t0 = time.perf_counter()
        edge_index = torch.from_numpy(np.stack([np.concatenate(centres), np.concatenate(neighbours)])).to(dev)
        leaf = torch.from_numpy(np.concatenate(vectors)).to(device=dev, dtype=dt).requires_grad_(True)
        numbers_t = torch.from_numpy(np.concatenate(numbers)).to(dev)
        struct_t = torch.from_numpy(np.concatenate(struct_index)).to(dev)
        with torch.jit.optimized_execution(self._jit_optimize):
            energies = self.model.module(leaf, edge_index, numbers_t, struct_t, len(chunk))
            if leaf.shape[0] > 0:
                (grad,) = torch.autograd.grad(energies.sum(), leaf, allow_unused=True)
            else:
                grad = None
        if grad is None:
            grad = torch.zeros_like(leaf)
        # per-atom forces of every copy, still in the rotated frame
        forces = torch.zeros((offset, 3), dtype=dt, device=dev)
        forces.index_add_(0, edge_index[0], grad).index_add_(0, edge_index[1], -grad)
        energies = energies.detach().to("cpu", torch.float64).numpy()
        forces = forces.detach().to("cpu", torch.float64).numpy()
        grad = grad.detach().to("cpu", torch.float64).numpy()
        self.timings["model"] += time.perf_counter() - t0
        self._require_finite(energies, forces)
        atom0, edge0 = 0, 0
        for b, (s, k) in enumerate(chunk):
            g = graphs[s]
            n, e = len(g.numbers), len(g.vectors)
            rot = rotations[s].matrices[k]
            g_e = grad[edge0:edge0 + e] @ rot  # back to the original frame: R^T g
            virial = -g_e.T @ g.vectors
            out[s][k] = (float(energies[b]), forces[atom0:atom0 + n] @ rot, virial)
            atom0, edge0 = atom0 + n, edge0 + e

    def _require_finite(self, energies, forces):
        if not np.isfinite(energies).all() or not np.isfinite(forces).all():
            raise ModelError(f"model {self.model.path} returned non-finite energy or forces: "
                             "the structure is probably far outside its training data")


def _combine(copies, rot, raw_only: bool) -> Result:
    """Weighted average over copies plus the symmetry-breaking diagnostics."""
    w = rot.weights
    energies = np.array([c[0] for c in copies])
    forces = np.stack([c[1] for c in copies])
    virials = np.stack([c[2] for c in copies])
    energy = float(w @ energies)
    f_avg = np.einsum("k,kia->ia", w, forces)
    result = Result(energy, f_avg, np.einsum("k,kab->ab", w, virials))
    if raw_only:
        return result
    extras = {"n_rotations": int((w > 0).sum())}
    if rot.raw_index is not None:
        extras["raw_energy"] = float(energies[rot.raw_index])
        extras["delta_energy"] = energy - extras["raw_energy"]
        extras["raw_force_delta_rms"] = float(np.sqrt(np.mean((f_avg - forces[rot.raw_index]) ** 2)))
    extras["energy_spread"] = float(np.sqrt(max(w @ (energies - energy) ** 2, 0.0)))
    f_var = np.einsum("k,kia->ia", w, (forces - f_avg) ** 2)
    extras["force_spread_rms"] = float(np.sqrt(f_var.mean())) if f_var.size else 0.0
    result.extras = extras
    return result
