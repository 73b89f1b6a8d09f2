"""
Symmetry breaking vs model uncertainty on a liquid frame
========================================================

How much does a model's broken rotational symmetry matter? One yardstick is the model's own
uncertainty: the spread of a committee of models. This example evaluates the shipped
demonstration committee (four water models) on the shipped 64-molecule liquid frame, and the
shipped model averaged over the ``2i`` grid, and compares, atom by atom, the committee's force
spread σ_i with the rotational force spread of the shipped model (both eV/Å).
"""

# %%
# The committee's mean and per-atom spread, and the shipped model's rotational average with its
# rotated copies (``Result.rotations``: weights, energies, forces of every copy, original frame).
import matplotlib.pyplot as plt
import numpy as np
from ase.io import read

from mlip_server.core.graph import Structure
from mlip_server.loading import load_evaluator
from mlip_server.paths import list_shipped, shipped, shipped_model

liquid = read(shipped("ipi_inputs/structures/water-64-liquid-300K.extxyz"))
frame = Structure.from_ase(liquid)
members = [str(shipped(p)) for p in list_shipped("models") if p.startswith("models/committee/")]
committee = load_evaluator(members).compute([frame])[0]
sigma_committee = committee.committee.force_std()

averaged = load_evaluator(str(shipped_model())).compute([frame], "2i")[0]
weights, _, forces = averaged.rotations
mean = np.einsum("k,kia->ia", weights, forces)
sigma_rotation = np.sqrt(np.einsum("k,kia->i", weights, (forces - mean) ** 2))

print(f"{len(members)} members; committee force spread: mean {sigma_committee.mean():.3f} eV/Å")
print(f"rotational force spread of the shipped model: mean {sigma_rotation.mean():.3f} eV/Å")
print(f"ratio rotational / committee, mean over atoms: {(sigma_rotation / sigma_committee).mean():.2f}")

# %%
# Per atom: the rotational spread against the committee's, oxygens and hydrogens apart.
oxygen = liquid.numbers == 8
fig, ax = plt.subplots(figsize=(5, 4.5))
ax.loglog(sigma_committee[oxygen], sigma_rotation[oxygen], "o", ms=4, label="O")
ax.loglog(sigma_committee[~oxygen], sigma_rotation[~oxygen], ".", ms=5, label="H")
lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
ax.plot(lims, lims, color="gray", lw=1, label="equal")
ax.xaxis.set_minor_formatter(plt.NullFormatter())
ax.yaxis.set_minor_formatter(plt.NullFormatter())
ax.set_xlabel("committee force spread σ_i (eV/Å)")
ax.set_ylabel("rotational force spread (eV/Å)")
ax.legend()
fig.tight_layout()
plt.show()
