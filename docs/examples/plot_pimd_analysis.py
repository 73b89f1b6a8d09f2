"""
Analysing a path-integral run: the bead-averaged g(r)
=====================================================

A path-integral run (``mlip-run water-pimd``) writes one trajectory per bead. The quantum g(r)
is the average over every bead's frames (``mlip-analyse rdf RUN --bead all``); the g(r) of the
ring polymers' centroids (``--bead centroid``) is narrower, because the quantum delocalisation
of the protons is averaged out. This example runs a short PIMD of 64 water molecules with the
shipped model on 4 beads and compares the two. (A production run is much longer: in 30 steps the
curves are noisy and the two differ little; this one shows the commands and the files.)
"""

# %%
# The run, from the shipped equilibrated 64-molecule liquid: ``mlip-run water-pimd --beads 4
# --structure LIQUID --steps 30 --stride 2``, from Python.
import tempfile
from pathlib import Path

from mlip_server.ipi.launcher import run_experiment
from mlip_server.paths import shipped

work = Path(tempfile.mkdtemp())
liquid = str(shipped("ipi_inputs/structures/water-64-liquid-300K.extxyz"))
result = run_experiment("water-pimd", beads=4, structure=liquid, steps=30, stride=2, out=str(work / "run"))
print(f"exit status {result.code}; files: {sorted(p.name for p in (work / 'run').glob('sim.*'))}")

# %%
# The analyses: ``mlip-analyse rdf RUN --bead all`` and ``--bead centroid``; each writes
# ``rdf.dat`` (r in Å, g and running coordination numbers with block errors), ``rdf.png`` and
# ``summary.json``.
import matplotlib.pyplot as plt
import numpy as np

from mlip_server.analysis.cli import main as mlip_analyse

g = {}
for beads in ("all", "centroid"):
    out = work / f"rdf-{beads}"
    status = mlip_analyse(
        [
            "rdf",
            str(work / "run"),
            "--bead",
            beads,
            "--out",
            str(out),
            "--quiet",
            "--blocks",
            "2",
            "--nbins",
            "80",
        ]
    )
    print(f"--bead {beads}: exit status {status}")
    columns = (out / "rdf.dat").read_text().splitlines()[1].lstrip("# ").split()
    g[beads] = dict(zip(columns, np.loadtxt(out / "rdf.dat").T))

# %%
# g_OH and g_OO: the beads' g(r) (quantum) against the centroids'.
fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
for ax, pair in zip(axes, ("g_OH", "g_OO")):
    for beads, label in (("all", "every bead (quantum)"), ("centroid", "centroids")):
        ax.plot(g[beads]["r_A"], g[beads][pair], label=label)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel(f"{pair}(r)")
axes[0].legend()
fig.tight_layout()
plt.show()
