"""TorchScript files with MACE's interface but not MACE's physics, built with torch only (no
mace-torch): a fast check of the ``mace`` format's mechanics where the MACE venv is not built.

    python toy.py OUTDIR

The server recognises MACE files by the names TorchScript gives their code (``mace/modules/models``,
``mace/calculators/lammps_mace``) and calls them with MACE's input dictionary. This script writes a
throw-away package ``mace`` (two small modules, below) to ``OUTDIR/src`` and scripts from it:

* ``toy-scripted.model``: ``ToyMACE``, a smooth pair term plus a two-hop term (the square of each
  neighbour's density) on MACE's edge vectors x_j − x_i + shifts, E0s from ``node_attrs``; the
  buffers ``atomic_numbers`` [1, 8], ``r_max`` 3.5 Å and ``num_interactions`` 2, per-node energies;
* ``toy-lammps.pt``: ``ToyLAMMPS``, a wrapper holding it as ``model`` with a ``head`` buffer and
  ``forward(data, local_or_ghost, compute_virials)`` → ``total_energy_local`` (the masked node
  energies) and ``forces``, as MACE's LAMMPS export does;
* ``toy-absolute.model``: ``ToyMACE`` with a term in absolute positions (the server must refuse it).

Run with the project's python in a subprocess (it puts the throw-away ``mace`` first on sys.path).
"""

from __future__ import annotations

import sys
from pathlib import Path

MODELS = '''
import math
from typing import Dict, List, Optional

import torch


class ToyMACE(torch.nn.Module):
    """Not MACE: a pair + two-hop energy behind MACE's forward interface."""

    heads: List[str]

    def __init__(self, absolute: float = 0.0):
        super().__init__()
        self.register_buffer("atomic_numbers", torch.tensor([1, 8], dtype=torch.int64))
        self.register_buffer("r_max", torch.tensor(3.5, dtype=torch.float64))
        self.register_buffer("num_interactions", torch.tensor(2, dtype=torch.int64))
        self.e0 = torch.nn.Parameter(torch.tensor([-13.6, -442.0], dtype=torch.float64))
        self.pair = torch.nn.Parameter(torch.tensor([0.4, 0.9], dtype=torch.float64))
        self.hop = torch.nn.Parameter(torch.tensor([0.05, -0.03], dtype=torch.float64))
        self.absolute = absolute
        self.heads = ["Default"]

    def forward(
        self,
        data: Dict[str, torch.Tensor],
        training: bool = False,
        compute_force: bool = True,
        compute_virials: bool = False,
        compute_stress: bool = False,
        compute_displacement: bool = False,
    ) -> Dict[str, Optional[torch.Tensor]]:
        positions, edges, attrs = data["positions"], data["edge_index"], data["node_attrs"]
        sender, receiver = edges[0], edges[1]
        vectors = positions[receiver] - positions[sender] + data["shifts"]
        r = torch.linalg.norm(vectors, dim=1)
        fc = 0.5 * (torch.cos(math.pi * r / self.r_max) + 1.0)
        kind = attrs @ torch.arange(2, dtype=attrs.dtype, device=attrs.device)
        w = (attrs @ self.pair)[sender] * (attrs @ self.pair)[receiver]
        pair = torch.zeros_like(kind).index_add(0, sender, 0.5 * w * fc * torch.exp(-r))
        density = torch.zeros_like(kind).index_add(0, sender, fc * (1.0 + 0.2 * vectors[:, 2] / r))
        hop = torch.zeros_like(kind).index_add(0, sender, fc * density[receiver] ** 2)
        node = attrs @ self.e0 + pair + (attrs @ self.hop) * hop + self.absolute * positions[:, 0]
        n_graphs = data["ptr"].numel() - 1
        energy = torch.zeros(n_graphs, dtype=node.dtype, device=node.device).index_add(0, data["batch"], node)
        return {"energy": energy, "node_energy": node, "forces": None, "displacement": None}
'''

LAMMPS = '''
from typing import Dict, List, Optional

import torch


class ToyLAMMPS(torch.nn.Module):
    """Not MACE's LAMMPS_MACE: its interface (model, head, local_or_ghost) around ToyMACE."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_buffer("head", torch.tensor([0], dtype=torch.int64))

    def forward(
        self, data: Dict[str, torch.Tensor], local_or_ghost: torch.Tensor, compute_virials: bool = False
    ) -> Dict[str, Optional[torch.Tensor]]:
        data["head"] = self.head
        data["positions"].requires_grad_(True)
        out = self.model(data, False, False, False, False, False)
        node = out["node_energy"]
        assert node is not None
        n_graphs = data["ptr"].numel() - 1
        local = torch.zeros(n_graphs, dtype=node.dtype, device=node.device)
        local = local.index_add(0, data["batch"], node * local_or_ghost)
        grad_outputs: List[Optional[torch.Tensor]] = [torch.ones_like(local)]
        (gradient,) = torch.autograd.grad(
            [local], [data["positions"]], grad_outputs=grad_outputs, allow_unused=True
        )
        forces = torch.zeros_like(data["positions"]) if gradient is None else -gradient
        return {"total_energy_local": local, "node_energy": node, "forces": forces, "virials": None}
'''


def main(argv) -> int:
    out = Path(argv[0]).resolve()
    src = out / "src" / "mace"
    (src / "modules").mkdir(parents=True, exist_ok=True)
    (src / "calculators").mkdir(parents=True, exist_ok=True)
    for folder in (src, src / "modules", src / "calculators"):
        (folder / "__init__.py").write_text("")
    (src / "modules" / "models.py").write_text(MODELS)
    (src / "calculators" / "lammps_mace.py").write_text(LAMMPS)
    sys.path.insert(0, str(out / "src"))
    import torch
    from mace.calculators.lammps_mace import ToyLAMMPS
    from mace.modules.models import ToyMACE

    torch.jit.script(ToyMACE()).save(str(out / "toy-scripted.model"))
    torch.jit.script(ToyLAMMPS(ToyMACE())).save(str(out / "toy-lammps.pt"))
    torch.jit.script(ToyMACE(absolute=0.01)).save(str(out / "toy-absolute.model"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
