"""A TorchScript file with nequip's interface but not NequIP's physics, built with torch only (no
nequip): a fast check of the ``nequip`` format's mechanics where the nequip venv is not built.

    python toy.py OUTDIR

``toy-pair.nequip.pth``: what nequip's TorchScript deploy files look like to a third party: a
module taking nequip's field dictionary (``pos``, ``edge_index``, ``atom_types``, ``cell``,
``edge_cell_shift``, ``batch``, ``num_atoms``) and returning ``atomic_energy``, ``total_energy``,
``forces`` and ``virial`` (autograd inside, W = −∂E/∂ε per frame), with the extra files
``r_max`` (4 Å), ``type_names`` (H O) and ``model_dtype`` (float64). Its energy is a smooth pair
term per edge, half to each end, scaled by the centre's type: strictly local (one hop), so the
domain route can ask for owned atoms' energies.
"""

from __future__ import annotations

import math
import sys
from typing import Dict

import torch

R_MAX = 4.0


class ToyNequIP(torch.nn.Module):
    """Not NequIP: a pair energy behind nequip's field-dictionary interface."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([0.3, 0.7], dtype=torch.float64))
        self.r_max = R_MAX

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        pos, edge_index, types = data["pos"], data["edge_index"], data["atom_types"]
        cell = data["cell"].view(-1, 3, 3)
        batch = data["batch"] if "batch" in data else torch.zeros_like(types)
        strain = torch.zeros_like(cell).requires_grad_(True)
        x = pos.detach().requires_grad_(True)
        strained = x + torch.bmm(x.unsqueeze(1), strain[batch]).squeeze(1)
        cells = cell + torch.bmm(cell, strain)
        i, j = edge_index[0], edge_index[1]
        shifts = torch.bmm(data["edge_cell_shift"].unsqueeze(1), cells[batch[i]]).squeeze(1)
        r = torch.linalg.norm(strained[j] - strained[i] + shifts, dim=1)
        smooth = 0.5 * (torch.cos(math.pi * r / self.r_max) + 1.0) * (r < self.r_max).to(r.dtype)
        pair = self.scale[types[i]] * torch.exp(-r) * smooth
        atomic = torch.zeros_like(pos[:, 0]).index_add(0, i, pair)
        total = torch.zeros_like(cell[:, 0, 0]).index_add(0, batch, atomic)
        grads = torch.autograd.grad([total.sum()], [x, strain])
        g_x, g_eps = grads[0], grads[1]
        assert g_x is not None and g_eps is not None
        return {
            "atomic_energy": atomic.unsqueeze(-1),
            "total_energy": total.unsqueeze(-1),
            "forces": -g_x,
            "virial": -g_eps,
        }


def main(out: str) -> int:
    extra = {"r_max": str(R_MAX), "type_names": "H O", "model_dtype": "float64"}
    torch.jit.save(torch.jit.script(ToyNequIP()), f"{out}/toy-pair.nequip.pth", _extra_files=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
