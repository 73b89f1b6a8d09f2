"""
Bringing your own model: write it, check it, run MD with it
===========================================================

A model of the project's contract is a TorchScript module that turns the edges of a neighbour
list into one energy per structure; the server does the rest (neighbour list, forces and virial
by autograd, batching, averaging). Here: a Lennard-Jones potential for argon, written, checked
with ``mlip-server --check`` and run in NVE through the ASE calculator. The conserved total energy
is the test that the forces are the gradient of the energy.
"""

# %%
# The model: ``cutoff`` (Å), ``species`` (atomic numbers), and ``forward`` from the edge vectors
# (Å) to energies (eV), each pair counted once per direction (hence the ½).
import tempfile
from pathlib import Path
from typing import List

import torch

work = Path(tempfile.mkdtemp())  # a scratch folder for the files this example writes


class ArgonLJ(torch.nn.Module):
    cutoff: float
    species: List[int]

    def __init__(self, epsilon: float = 0.0104, sigma: float = 3.40):
        super().__init__()
        self.cutoff, self.species = 8.5, [18]
        self.epsilon, self.sigma = epsilon, sigma  # eV, Å
        s6 = (sigma / self.cutoff) ** 6
        self.shift = 4.0 * epsilon * (s6 * s6 - s6)  # energy zero at the cutoff

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        r2 = (edge_vectors**2).sum(dim=1)
        s6 = (self.sigma * self.sigma / r2) ** 3
        pair = 4.0 * self.epsilon * (s6 * s6 - s6) - self.shift
        energies = torch.zeros(n_structures, dtype=edge_vectors.dtype, device=edge_vectors.device)
        return energies.index_add(0, structure_index[edge_index[0]], 0.5 * pair)


model_file = str(work / "argon-lj.pt")
torch.jit.save(torch.jit.script(ArgonLJ()), model_file)

# %%
# A 32-atom fcc argon crystal (atoms slightly displaced), and ``mlip-server --check`` on it (the
# command, here as ``python -m mlip_server.ipi.serve``): what the server reads from the file,
# forces against finite differences of the energy, the routes.
import subprocess
import sys

from ase.build import bulk
from ase.io import write

atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
atoms.rattle(0.05, seed=1)  # off the lattice sites, so that there are forces to check
write(work / "argon.xyz", atoms)
check = ["--check", "--model", model_file, "--structure", str(work / "argon.xyz")]
done = subprocess.run([sys.executable, "-m", "mlip_server.ipi.serve", *check], capture_output=True, text=True)
print(done.stdout, f"mlip-server --check exit status: {done.returncode}")

# %%
# NVE with the ASE calculator, 5 fs steps from 60 K: kinetic, potential and total energy.
import matplotlib.pyplot as plt
import numpy as np
from ase import units
from ase.md.verlet import VelocityVerlet

from mlip_server.ase_calculator import MLIPCalculator

atoms.calc = MLIPCalculator(model_file, dtype="float64")
masses = atoms.get_masses()[:, None]  # Maxwell-Boltzmann momenta at 60 K
atoms.set_momenta(np.random.default_rng(1).normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 60))
md = VelocityVerlet(atoms, timestep=5 * units.fs)
kinetic, potential = [], []
for _ in range(200):
    md.run(1)
    kinetic.append(atoms.get_kinetic_energy())
    potential.append(atoms.get_potential_energy())
kinetic, potential = np.array(kinetic), np.array(potential)
total = kinetic + potential
print(f"total energy drift over 1 ps: {1000 * (total[-1] - total[0]) / len(atoms):.4f} meV/atom")

time_ps = 0.005 * np.arange(1, len(total) + 1)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(time_ps, 1000 * (kinetic - kinetic[0]) / len(atoms), label="kinetic")
ax.plot(time_ps, 1000 * (potential - potential[0]) / len(atoms), label="potential")
ax.plot(time_ps, 1000 * (total - total[0]) / len(atoms), label="total", color="black")
ax.set_xlabel("time (ps)")
ax.set_ylabel("change per atom (meV)")
ax.legend()
fig.tight_layout()
plt.show()
