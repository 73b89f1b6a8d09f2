"""
A first run: the shipped model served to i-PI, and its g(r)
===========================================================

The first thing a user does: run the shipped water model through i-PI (``mlip-run water-nvt``
starts i-PI and ``mlip-server`` and follows the run), then analyse the trajectory
(``mlip-analyse rdf``). This example runs 64 molecules from the shipped equilibrated liquid for
0.1 ps and plots the oxygen-oxygen g(r) against what the model's own 10 ps validation run gave
(``models/validation/water-pet-md.json``: the first peak) and, where the published data are at
hand (``../shared/data/reference/rdf``, not shipped), the published classical NNP curve. In 0.1 ps
the curve is noisy; its first peak already sits where the long run put it.
"""

# %%
# The run: ``mlip-run water-nvt --structure LIQUID --steps 200 --stride 4``, from Python. The
# closing line names the next command.
import json
import tempfile
from pathlib import Path

from mlip_server.ipi.launcher import run_experiment
from mlip_server.paths import checkout_root, shipped

work = Path(tempfile.mkdtemp())
liquid = str(shipped("ipi_inputs/structures/water-64-liquid-300K.extxyz"))
result = run_experiment("water-nvt", structure=liquid, steps=200, stride=4, out=str(work / "run"), progress=0)
print(f"exit status {result.code}")

# %%
# The analysis: ``mlip-analyse rdf RUN --out DIR`` writes ``rdf.dat`` (r in Å, g_OO, g_OH, g_HH
# and running coordination numbers, with block errors), ``rdf.png`` and ``summary.json``.
import matplotlib.pyplot as plt
import numpy as np

from mlip_server.analysis.cli import main as mlip_analyse

args = ["rdf", str(work / "run"), "--out", str(work / "rdf"), "--quiet", "--blocks", "2", "--nbins", "120"]
published = checkout_root().parent / "shared" / "data" / "reference" / "rdf" / "nnp_goo.gdr"
if published.exists():
    args += ["--reference", str(published)]  # .gdr files are read as Bohr
print(f"mlip-analyse exit status {mlip_analyse(args)}")
columns = (work / "rdf" / "rdf.dat").read_text().splitlines()[1].lstrip("# ").split()
rdf = dict(zip(columns, np.loadtxt(work / "rdf" / "rdf.dat").T))

# %%
# g_OO of this 0.1 ps run, the first peak of the model's 10 ps validation run, and the published
# NNP curve (r converted from Bohr) when it is available.
validation = json.loads((checkout_root() / "models" / "validation" / "water-pet-md.json").read_text())
peak = validation["g_OO_first_peak"]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(rdf["r_A"], rdf["g_OO"], label="this run (0.1 ps)")
ax.plot([peak["model_r_A"]], [peak["model_g"]], "o", label="first peak, 10 ps validation run")
if published.exists():
    r_bohr, g = np.loadtxt(published, usecols=(0, 1), unpack=True)
    ax.plot(r_bohr * 0.529177210903, g, "--", label="published NNP (classical)")
ax.set_xlim(2, 6)
ax.set_xlabel("r (Å)")
ax.set_ylabel("g_OO(r)")
ax.legend()
fig.tight_layout()
top = int(np.argmax(np.where(rdf["r_A"] < 3.3, rdf["g_OO"], 0)))
print(
    f"first peak here: g_OO = {rdf['g_OO'][top]:.2f} at {rdf['r_A'][top]:.2f} Å; validation run: "
    f"{peak['model_g']:.2f} at {peak['model_r_A']:.2f} Å"
)
