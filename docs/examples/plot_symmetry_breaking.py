"""
Symmetry breaking of a water molecule, raw vs rotationally averaged
====================================================================

An unconstrained model is not exactly invariant under rotations: the energy of one water
molecule changes when the molecule is turned, and its forces exert a net torque, which no
rotation-invariant potential can. Averaging the model over a rotation grid (``2i``: 18 rotations
and their inversions) removes most of it. This example turns a molecule about one axis, evaluates
the shipped model raw and averaged in one batch each with
:class:`~mlip_server.core.evaluator.Evaluator`, and plots the energy change and the torque.
"""

# %%
# The shipped model and a water molecule (Å); 72 orientations about an oblique axis.
import matplotlib.pyplot as plt
import numpy as np
from scipy.spatial.transform import Rotation

from mlip_server.core.graph import Structure
from mlip_server.loading import load_evaluator
from mlip_server.paths import shipped_model

evaluator = load_evaluator(str(shipped_model()), dtype="float64")
water = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]])
numbers = np.array([8, 1, 1])
angles = np.linspace(0.0, 360.0, 72, endpoint=False)
axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
turned = [Rotation.from_rotvec(np.radians(a) * axis).apply(water) for a in angles]
structures = [Structure(positions=x, numbers=numbers) for x in turned]

# %%
# One batched call per averaging level: energy (eV), forces (eV/Å), and the torque
# τ = Σ_i (r_i − r_com) × F_i (eV), which is zero for an invariant model.
masses = np.array([15.999, 1.008, 1.008])


def energies_and_torques(spec):
    results = evaluator.compute(structures, spec)
    energies = np.array([r.energy for r in results])
    torques = []
    for x, r in zip(turned, results):
        com = (masses[:, None] * x).sum(0) / masses.sum()
        torques.append(np.linalg.norm(np.cross(x - com, r.forces).sum(0)))
    return energies, np.array(torques)


raw_e, raw_t = energies_and_torques("none")
avg_e, avg_t = energies_and_torques("2i")
print(
    f"energy range over orientations: raw {1000 * np.ptp(raw_e):.2f} meV, 2i {1000 * np.ptp(avg_e):.3f} meV"
)
print(f"largest torque: raw {raw_t.max():.2e} eV, 2i {avg_t.max():.2e} eV")

# %%
# The figure: the energy relative to its mean over orientations, and the torque's size.
fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
top.plot(angles, 1000 * (raw_e - raw_e.mean()), label="raw")
top.plot(angles, 1000 * (avg_e - avg_e.mean()), label="2i average")
top.set_ylabel("E − ⟨E⟩ (meV)")
top.legend()
bottom.semilogy(angles, raw_t, label="raw")
bottom.semilogy(angles, np.maximum(avg_t, 1e-12), label="2i average")
bottom.set_xlabel("rotation angle (degrees)")
bottom.set_ylabel("|torque| (eV)")
fig.tight_layout()
plt.show()
