"""
LAMMPS on two MPI ranks: the domain route against the gather route
===================================================================

``mlip-lammps-run`` runs a LAMMPS deck with forces from ``mlip-server``. On one rank every atom
goes to one server call (*gather*); on several ranks each rank sends its own atoms plus the ghost
atoms within the model's range (*domain*, the route for large cells: no call holds the whole
cell). Both must give the same trajectory. This example runs the shipped NVE water deck on 2 ranks
both ways with a small contract model and compares the potential energy step by step.
"""

# %%
# A pair model of the contract (as in the README), in float64.
import math
import tempfile
from pathlib import Path
from typing import List

import torch

work = Path(tempfile.mkdtemp())  # the runs and the model go here


class PairModel(torch.nn.Module):
    cutoff: float
    species: List[int]

    def __init__(self):
        super().__init__()
        self.cutoff, self.species = 5.0, [1, 8]
        self.scale = torch.nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        d = torch.sqrt((edge_vectors**2).sum(dim=1))
        pair = self.scale * torch.exp(-d) * 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0)
        energies = torch.zeros(n_structures, dtype=edge_vectors.dtype, device=edge_vectors.device)
        return energies.index_add(0, structure_index[edge_index[0]], 0.5 * pair)


model = str(work / "pair.pt")
torch.jit.save(torch.jit.script(PairModel()), model)

# %%
# The same deck, 32 water molecules, 20 steps, on 2 ranks: once gathered, once decomposed
# (``mlip-lammps-run water-nve --np 2 --decomposition gather|domain ...``).
from mlip_server.lammps.cli import run_main as mlip_lammps_run

for route in ("gather", "domain"):
    status = mlip_lammps_run(
        ["water-nve", "--model", model, "--np", "2", "--decomposition", route, "--molecules", "32"]
        + ["--var", "steps", "20", "--var", "thermo", "1", "--out", str(work / route), "--quiet"]
        + ["--progress", "0"]
    )
    print(f"{route}: exit status {status}")

# %%
# The thermo table of each ``log.lammps`` (Step, PotEng in eV, ...) and what the domain route's
# ranks evaluated (``bridge.json``).
import json

import matplotlib.pyplot as plt
import numpy as np


def thermo(log):
    lines = Path(log).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["Step"])
    header, rows = lines[start].split(), []
    for line in lines[start + 1 :]:
        if line.startswith("Loop time"):
            break
        rows.append([float(x) for x in line.split()])
    return {name: np.array(column) for name, column in zip(header, np.array(rows).T)}


gather, domain = (thermo(work / route / "log.lammps") for route in ("gather", "domain"))
for r, rank in enumerate(json.loads((work / "domain" / "bridge.json").read_text())["per_rank"]):
    print(f"domain rank {r}: {rank['owned']} owned atoms, {rank['ghost']} ghosts within the model's range")
difference = np.abs(domain["PotEng"] - gather["PotEng"]) / np.abs(gather["PotEng"])
print(f"largest relative difference of the potential energy: {difference.max():.1e}")

fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
top.plot(gather["Step"], gather["PotEng"], "o-", label="gather")
top.plot(domain["Step"], domain["PotEng"], "x--", label="domain (2 ranks)")
top.set_ylabel("potential energy (eV)")
top.legend()
bottom.semilogy(gather["Step"], np.maximum(difference, 1e-17))
bottom.set_xlabel("step")
bottom.set_ylabel("|domain − gather| / |gather|")
fig.tight_layout()
plt.show()
