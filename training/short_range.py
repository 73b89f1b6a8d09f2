"""A short-range repulsive wall added to a contract model (a prior, like ZBL in other MLIPs).

A model trained only on liquid-like frames has no reason to be repulsive where it never saw data:
the under-trained shipped PET lets oxygens collapse to 0.6 Å within 0.1 ps of NVT. The wall

    E_wall = Σ_{pairs i<j} k · max(0, r0(Z_i, Z_j) − r_ij)³      (eV; r in Å, k in eV/Å³)

is exactly zero (with zero force and curvature) at r ≥ r0, so with r0 below the closest contacts of
the training data it changes no training label. Defaults: r0(O,O) = 2.0 Å, r0(H,H) = 1.0 Å,
r0(O,H) = 0.7 Å (training data: closest O–O 2.27, H–H 1.11, O–H 0.77 Å), k = 50 eV/Å³.

    python -m mlip_server.training.short_range models/water-pet.pt models/local/water-pet-wall.pt
"""

import argparse
import sys
from typing import List

import torch

__all__ = ["ShortRangeWall", "add_wall", "main"]

DEFAULT_R0 = {(8, 8): 2.0, (1, 1): 1.0, (1, 8): 0.7}  # Å


class ShortRangeWall(torch.nn.Module):
    """Contract model + pair wall; keeps the contract (``cutoff`` Å, ``species``, forward)."""

    def __init__(self, model: torch.jit.ScriptModule, r0=None, k: float = 50.0):
        super().__init__()
        self.model = model
        self.cutoff: float = float(model.cutoff)
        self.species: List[int] = [int(z) for z in model.species]
        table = torch.zeros(max(self.species) + 1, max(self.species) + 1, dtype=torch.float64)
        for (a, b), r in (r0 or DEFAULT_R0).items():
            if r > self.cutoff:
                raise ValueError(f"wall radius {r} Å for ({a}, {b}) exceeds the model cutoff {self.cutoff} Å")
            table[a, b] = table[b, a] = r
        self.register_buffer("r0", table)
        self.k = float(k)

    def forward(self, edge_vectors, edge_index, numbers, structure_index, n_structures: int):
        energies = self.model(edge_vectors, edge_index, numbers, structure_index, n_structures)
        r = torch.linalg.norm(edge_vectors, dim=1)
        r0 = self.r0.to(edge_vectors.dtype)[numbers[edge_index[0]], numbers[edge_index[1]]]
        x = torch.clamp(r0 - r, min=0.0)
        per_edge = 0.5 * self.k * x * x * x  # the full list holds every pair twice
        wall = torch.zeros(n_structures, dtype=energies.dtype, device=energies.device)
        wall = wall.index_add(0, structure_index[edge_index[0]], per_edge.to(energies.dtype))
        return energies + wall


def add_wall(model_path, out_path, k: float = 50.0) -> str:
    module = torch.jit.load(str(model_path), map_location="cpu")
    walled = torch.jit.script(ShortRangeWall(module, k=k))
    torch.jit.save(walled, str(out_path))
    return str(out_path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("output")
    p.add_argument("--k", type=float, default=50.0, help="wall stiffness, eV/Å³")
    args = p.parse_args(argv)
    add_wall(args.model, args.output, args.k)
    print(f"short_range: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
