"""Small TorchScript models under the contract, for tests, benchmarks and the demo stand-in.

* :class:`LennardJones` — the shifted Lennard-Jones pair potential of ASE's
  ``LennardJones`` calculator (``smooth=False``), for peer checks against ASE and LAMMPS.
* :class:`AnisotropicPairModel` — Morse pair terms per species pair plus a small MLP
  of the raw edge vector: deliberately *not* rotation-invariant (strength set by
  ``anisotropy``), smooth at the cutoff. A toy, not a water model.

* :class:`LennardJonesDirect` — :class:`LennardJones` with an analytic direct-force head
  (``direct_forces`` = −∇E plus ``bias`` × the atom's neighbour count: a net force to remove and a
  term fixed in the model's frame, which averaging over a grid with inversion cancels),
  ``direct_virial`` (the analytic pair virial) and ``forward_direct``.
* :class:`LennardJonesDirectCubic` — :class:`LennardJonesDirect` whose head also has a term odd in
  each edge's direction and of angular order 3 (``cubic`` × Σ_j (u_x³, u_y³, u_z³)): inversion does
  not cancel it and a coarse rotation grid does not average it to a covariant force.
* :class:`WaterToyDirect` — the water toy with a direct head that is the force of its Morse part
  only (≠ −∇E by the non-invariant term; no direct virial), for the direct-force experiments.
* :class:`DetachedMorse` — the water toy with its H–H and O–O Morse terms computed from edge
  lengths detached from the autograd graph: forces that are not −∇E (a bug a user's model can have; for
  ``mlip-server --check``).
* :class:`TwoHopDensity` — a two-layer "message-passing" toy: atom i's energy depends on its
  neighbours' densities, so on atoms up to 2 × cutoff away; declares (or, for testing the
  bridge's range check, hides) ``interaction_range``.

All take ``forward(edge_vectors, edge_index, numbers, structure_index, n_structures)``
(Å in, eV out) and carry ``cutoff`` (Å) and ``species``.
"""

import math
from typing import List

import torch

__all__ = [
    "LennardJones",
    "LennardJonesDirect",
    "LennardJonesDirectCubic",
    "AnisotropicPairModel",
    "WaterToyDirect",
    "water_toy_direct",
    "DetachedMorse",
    "water_toy_detached",
    "TwoHopDensity",
    "water_toy",
    "export",
]


def _species_lookup(species: List[int]) -> torch.Tensor:
    lookup = torch.full((max(species) + 1,), -1, dtype=torch.int64)
    for n, z in enumerate(species):
        lookup[z] = n
    return lookup


def _sum_per_structure(edge_energy, edge_index, structure_index, n_structures: int):
    """Σ over edges, assigned to the structure of the centre atom."""
    out = torch.zeros(n_structures, dtype=edge_energy.dtype, device=edge_energy.device)
    return out.index_add(0, structure_index[edge_index[0]], edge_energy)


class LennardJones(torch.nn.Module):
    """E = Σ_pairs 4ε[(σ/r)^12 − (σ/r)^6] − e(rc), for r < rc (ASE's convention).

    Args: epsilon (eV), sigma (Å), cutoff (Å), species (atomic numbers it accepts).
    """

    cutoff: float
    species: List[int]

    def __init__(
        self, epsilon: float = 0.0104, sigma: float = 3.4, cutoff: float = 8.5, species: List[int] = [18]
    ):
        super().__init__()
        self.cutoff = float(cutoff)
        self.species = list(species)
        self.epsilon = float(epsilon)
        self.sigma = float(sigma)
        self.shift = 4 * epsilon * ((sigma / cutoff) ** 12 - (sigma / cutoff) ** 6)

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        r2 = (edge_vectors**2).sum(dim=1)
        c6 = (self.sigma**2 / r2) ** 3
        pair = 4 * self.epsilon * (c6 * c6 - c6) - self.shift
        pair = torch.where(r2 < self.cutoff**2, pair, torch.zeros_like(pair))
        # the full list has each pair twice
        return _sum_per_structure(0.5 * pair, edge_index, structure_index, n_structures)


class AnisotropicPairModel(torch.nn.Module):
    """Morse pairs (per species pair) + ``anisotropy`` × MLP(r_vec/rc, |r|/rc, species).

    The MLP term depends on the direction of each edge, so the model is not
    rotation-invariant; with ``anisotropy=0`` it is an invariant Morse model.
    Energies in eV, lengths in Å; a cosine cutoff makes everything smooth at ``cutoff``.
    """

    cutoff: float
    species: List[int]

    def __init__(
        self,
        species: List[int] = [1, 8],
        cutoff: float = 4.0,
        anisotropy: float = 0.05,
        hidden: int = 16,
        seed: int = 0,
        well_depth: float = 0.1,
        r0: float = 1.5,
        width: float = 1.5,
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.cutoff = float(cutoff)
        self.species = list(species)
        self.anisotropy = float(anisotropy)
        n = len(species)
        self.register_buffer("lookup", _species_lookup(species))
        self.register_buffer("depth", torch.full((n, n), float(well_depth)))
        self.register_buffer("r0", torch.full((n, n), float(r0)))
        self.register_buffer("a", torch.full((n, n), float(width)))
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(4 + 2 * n, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )
        with torch.no_grad():
            for p in self.mlp.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))

    def set_pair(self, z1: int, z2: int, depth: float, r0: float, width: float):
        """Morse parameters of one species pair: depth (eV), r0 (Å), width a (1/Å)."""
        i, j = int(self.lookup[z1]), int(self.lookup[z2])
        for t, v in ((self.depth, depth), (self.r0, r0), (self.a, width)):
            t[i, j] = v
            t[j, i] = v

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        kind = self.lookup[numbers]
        ki, kj = kind[edge_index[0]], kind[edge_index[1]]
        d = torch.sqrt((edge_vectors**2).sum(dim=1))
        fc = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0)
        fc = torch.where(d < self.cutoff, fc, torch.zeros_like(fc))
        x = torch.exp(-self.a[ki, kj] * (d - self.r0[ki, kj]))
        morse = self.depth[ki, kj] * (x * x - 2.0 * x)
        n = len(self.species)
        onehot_i = torch.nn.functional.one_hot(ki, n).to(edge_vectors.dtype)
        onehot_j = torch.nn.functional.one_hot(kj, n).to(edge_vectors.dtype)
        features = torch.cat(
            [edge_vectors / self.cutoff, (d / self.cutoff).unsqueeze(1), onehot_i, onehot_j], dim=1
        )
        aniso = self.anisotropy * self.mlp(features).squeeze(1)
        return _sum_per_structure(0.5 * (morse + aniso) * fc, edge_index, structure_index, n_structures)


class WaterToyDirect(AnisotropicPairModel):
    """:class:`AnisotropicPairModel` with a direct-force head that is the analytic force of its
    Morse part only: close to −∇E (which also has the ``anisotropy`` MLP term) but not equal, as
    a learned head is; no direct virial (what the shipped PET's head lacks too)."""

    @torch.jit.export
    def direct_forces(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        kind = self.lookup[numbers]
        ki, kj = kind[edge_index[0]], kind[edge_index[1]]
        d = torch.sqrt((edge_vectors**2).sum(dim=1))
        inside = d < self.cutoff
        fc = torch.where(inside, 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0), torch.zeros_like(d))
        dfc = torch.where(
            inside, -0.5 * math.pi / self.cutoff * torch.sin(math.pi * d / self.cutoff), torch.zeros_like(d)
        )
        a, depth = self.a[ki, kj], self.depth[ki, kj]
        x = torch.exp(-a * (d - self.r0[ki, kj]))
        morse, dmorse = depth * (x * x - 2.0 * x), 2.0 * a * depth * (x - x * x)
        g = (0.5 * (dmorse * fc + morse * dfc) / d).unsqueeze(1) * edge_vectors  # ∂u_e/∂r_e, eV/Å
        forces = torch.zeros((numbers.shape[0], 3), dtype=g.dtype, device=g.device)
        return forces.index_add(0, edge_index[0], g).index_add(0, edge_index[1], -g)


def water_toy_direct(anisotropy: float = 0.02, seed: int = 0) -> "WaterToyDirect":
    """:func:`water_toy` with the Morse-only direct head of :class:`WaterToyDirect`."""
    model = WaterToyDirect(species=[1, 8], cutoff=4.0, anisotropy=anisotropy, seed=seed)
    model.set_pair(1, 8, depth=4.0, r0=0.97, width=2.3)
    model.set_pair(1, 1, depth=0.05, r0=2.0, width=1.5)
    model.set_pair(8, 8, depth=0.1, r0=2.9, width=1.5)
    return model


class DetachedMorse(AnisotropicPairModel):
    """:class:`AnisotropicPairModel` whose Morse terms of like-species pairs (H–H, O–O in water)
    use the edge lengths detached from the autograd graph: the energy is the water toy's, its
    autograd forces lack those pairs' forces (O–H bonds and the MLP term stay right). A model whose
    forces are not −∇E of its energy, as one with a stray ``.detach()`` (or ``.item()``, numpy) in
    part of its energy is."""

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        kind = self.lookup[numbers]
        ki, kj = kind[edge_index[0]], kind[edge_index[1]]
        d = torch.sqrt((edge_vectors**2).sum(dim=1))
        d = torch.where(ki == kj, d.detach(), d)
        fc = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0)
        fc = torch.where(d < self.cutoff, fc, torch.zeros_like(fc))
        x = torch.exp(-self.a[ki, kj] * (d - self.r0[ki, kj]))
        morse = self.depth[ki, kj] * (x * x - 2.0 * x)
        n = len(self.species)
        onehot_i = torch.nn.functional.one_hot(ki, n).to(edge_vectors.dtype)
        onehot_j = torch.nn.functional.one_hot(kj, n).to(edge_vectors.dtype)
        length = torch.sqrt((edge_vectors**2).sum(dim=1))
        features = torch.cat(
            [edge_vectors / self.cutoff, (length / self.cutoff).unsqueeze(1), onehot_i, onehot_j], dim=1
        )
        aniso = self.anisotropy * self.mlp(features).squeeze(1) * fc
        return _sum_per_structure(0.5 * (morse * fc + aniso), edge_index, structure_index, n_structures)


def water_toy_detached(anisotropy: float = 0.02, seed: int = 0) -> "DetachedMorse":
    """:func:`water_toy`'s energy with the H–H and O–O Morse terms outside the autograd graph
    (:class:`DetachedMorse`): the same energies, forces wrong by those pairs' forces."""
    model = DetachedMorse(species=[1, 8], cutoff=4.0, anisotropy=anisotropy, seed=seed)
    model.set_pair(1, 8, depth=4.0, r0=0.97, width=2.3)
    model.set_pair(1, 1, depth=0.05, r0=2.0, width=1.5)
    model.set_pair(8, 8, depth=0.1, r0=2.9, width=1.5)
    return model


class TwoHopDensity(torch.nn.Module):
    """E = Σ_i [a_Z ρ̃_i + b ρ̃_i²] with ρ_i = Σ_j c(r_ij) w_Zj and ρ̃_i = Σ_j c(r_ij) ρ_j, where
    c(r) = (1 − (r/rc)²)² for r < rc: a two-hop (two message-passing layers) energy whose range is
    2 × cutoff; each atom's term goes to its own ``structure_index``.

    Args: cutoff (Å), species, declare_range (set ``interaction_range = 2 × cutoff``; False
    leaves the attribute out, as an exporter that forgot it would).
    """

    cutoff: float
    species: List[int]

    def __init__(self, cutoff: float = 3.0, species: List[int] = [1, 8], declare_range: bool = True):
        super().__init__()
        self.cutoff = float(cutoff)
        self.species = list(species)
        if declare_range:
            self.interaction_range = 2.0 * float(cutoff)
        n = len(species)
        self.register_buffer("lookup", _species_lookup(self.species))
        self.register_buffer("weight", torch.linspace(0.6, 1.4, n, dtype=torch.float64))
        self.register_buffer("linear", torch.linspace(-0.05, -0.02, n, dtype=torch.float64))
        self.quadratic = 0.004

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        kind = self.lookup[numbers]
        r2 = (edge_vectors**2).sum(dim=1)
        c = torch.clamp(1.0 - r2 / self.cutoff**2, min=0.0) ** 2
        i, j = edge_index[0], edge_index[1]
        zeros = torch.zeros(numbers.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        rho = zeros.index_add(0, i, c * self.weight[kind[j]])
        second = zeros.index_add(0, i, c * rho[j])
        atom = self.linear[kind] * second + self.quadratic * second**2
        out = torch.zeros(n_structures, dtype=edge_vectors.dtype, device=edge_vectors.device)
        return out.index_add(0, structure_index, atom)


class LennardJonesDirect(LennardJones):
    """:class:`LennardJones` whose direct head is its analytic force plus ``bias`` (eV/Å) times each
    atom's number of neighbours (not rotation-covariant, and with a net force the server must
    remove), with the analytic pair virial."""

    def __init__(self, *args, bias: List[float] = [0.1, -0.2, 0.3], **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("bias", torch.tensor(bias, dtype=torch.float64))

    def _pair_gradient(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """g_e = ∂E/∂r_e of each edge (eV/Å): E = Σ_e ½ pair(r_e²) gives g_e = pair'(r_e²) r_e."""
        r2 = (edge_vectors**2).sum(dim=1)
        c6 = (self.sigma**2 / r2) ** 3
        slope = 4 * self.epsilon * (-6.0 * c6 * c6 + 3.0 * c6) / r2  # d pair / d(r²), eV/Å²
        slope = torch.where(r2 < self.cutoff**2, slope, torch.zeros_like(slope))
        return slope[:, None] * edge_vectors

    def _biased_head(
        self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, n_atoms: int
    ) -> torch.Tensor:
        """The analytic force plus ``bias`` × each atom's number of neighbours (eV/Å), per atom."""
        g = self._pair_gradient(edge_vectors)
        forces = torch.zeros((n_atoms, 3), dtype=g.dtype, device=g.device)
        forces = forces.index_add(0, edge_index[0], g).index_add(0, edge_index[1], -g)
        counts = torch.bincount(edge_index[0], minlength=n_atoms).to(g.dtype)
        return forces + counts.unsqueeze(1) * self.bias.to(g.dtype)

    @torch.jit.export
    def direct_forces(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        return self._biased_head(edge_vectors, edge_index, numbers.shape[0])

    @torch.jit.export
    def direct_virial(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        g = self._pair_gradient(edge_vectors)
        w = -(g[:, :, None] * edge_vectors[:, None, :])
        out = torch.zeros((n_structures, 3, 3), dtype=g.dtype, device=g.device)
        return out.index_add(0, structure_index[edge_index[0]], w)

    @torch.jit.export
    def forward_direct(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ):
        energies = self.forward(edge_vectors, edge_index, numbers, structure_index, n_structures)
        forces = self.direct_forces(edge_vectors, edge_index, numbers, structure_index, n_structures)
        return energies, forces


class LennardJonesDirectCubic(LennardJonesDirect):
    """:class:`LennardJonesDirect` whose direct head adds ``cubic`` (eV/Å) × Σ_j (u_x³, u_y³, u_z³)
    over the unit vectors u = r_ij/|r_ij| of atom i's edges, in the model's frame: odd in u (so the
    inversion of a grid does not cancel it, unlike the constant ``bias``) and of angular order 3 (so
    a coarse grid's average keeps a part that depends on the grid). Forces only; the direct virial
    stays the pair one."""

    def __init__(self, *args, cubic: float = 0.05, **kwargs):
        super().__init__(*args, **kwargs)
        self.cubic = float(cubic)

    @torch.jit.export
    def direct_forces(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        forces = self._biased_head(edge_vectors, edge_index, numbers.shape[0])
        r2 = (edge_vectors**2).sum(dim=1, keepdim=True)
        u = edge_vectors / torch.sqrt(r2)
        inside = (r2 < self.cutoff**2).to(forces.dtype)
        return forces + torch.zeros_like(forces).index_add(0, edge_index[0], self.cubic * inside * u**3)


def water_toy(anisotropy: float = 0.02, seed: int = 0) -> AnisotropicPairModel:
    """An :class:`AnisotropicPairModel` with O–H bonds near 1 Å, for short runs on water
    geometries (tests and the demo stand-in). Not a physical water model."""
    model = AnisotropicPairModel(species=[1, 8], cutoff=4.0, anisotropy=anisotropy, seed=seed)
    model.set_pair(1, 8, depth=4.0, r0=0.97, width=2.3)
    model.set_pair(1, 1, depth=0.05, r0=2.0, width=1.5)
    model.set_pair(8, 8, depth=0.1, r0=2.9, width=1.5)
    return model


def export(model: torch.nn.Module, path) -> str:
    """Scripts and saves ``model`` in float64 (the precision servers then run it in by default);
    returns the path."""
    torch.jit.save(torch.jit.script(model.double()), str(path))
    return str(path)
