"""
Stopping a run and continuing it with ``--resume``
==================================================

A production run rarely fits one job: SLURM ends it at the walltime (with SIGTERM first, or
``--walltime`` lets the run stop itself before), a node is lost, a user stops it. ``mlip-run``
stops cleanly (exit status 75, i-PI's checkpoint written), and ``mlip-run --resume RUN`` continues
in the same folder with every step once. This example stops a run of 8 water molecules with
SIGTERM after step 100, resumes it, and compares its potential energy with the same run left
alone: the curves lie on each other (the checkpoint keeps positions, momenta, thermostat and the
random generator's state with 17 digits; the restarted i-PI rebuilds its derived state in another
order, so the last bits can differ and chaos grows them: ~1e-12 eV after a hundred steps).
"""

# %%
# Two runs of 200 steps from the same seed: one left alone, one stopped with SIGTERM (what SLURM
# sends at the time limit) once its ``sim.out`` reaches step 100.
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

work = Path(tempfile.mkdtemp())
run = [sys.executable, "-m", "mlip_server.ipi.launcher"]  # = the mlip-run command
options = ["water-nvt", "--molecules", "8", "--steps", "200", "--stride", "1", "--set", "checkpoint=50"]
options += ["--dtype", "float64", "--progress", "0"]
whole = subprocess.run(run + options + ["--out", str(work / "whole")], capture_output=True, text=True)
print("uninterrupted:", whole.stdout.strip().splitlines()[-1][:100], "...")


def last_step(folder: Path) -> int:
    rows = [line.split() for line in (folder / "sim.out").read_text().splitlines() if line[:1] != "#"]
    return int(float(rows[-1][0])) if rows and rows[-1] else -1


stopped = work / "stopped"
proc = subprocess.Popen(run + options + ["--out", str(stopped)], stdout=subprocess.PIPE, text=True)
while not (stopped / "sim.out").exists() or last_step(stopped) < 100:
    time.sleep(0.1)
proc.send_signal(signal.SIGTERM)
out = proc.communicate()[0]
stop_step = last_step(stopped)
print(f"exit status {proc.returncode} (75: stopped, resumable) at step {stop_step}")
print(out.strip().splitlines()[-1])

# %%
# ``mlip-run --resume RUN`` (the closing line above names it): the run continues from the
# checkpoint i-PI wrote when it stopped, in place.
done = subprocess.run(run + ["--resume", str(stopped), "--progress", "0"], capture_output=True, text=True)
print(f"exit status {done.returncode}:", done.stdout.strip().splitlines()[-1][:120], "...")

# %%
# Every step once, and the same potential energy as the run left alone.
import matplotlib.pyplot as plt

a, b = np.loadtxt(work / "whole" / "sim.out"), np.loadtxt(stopped / "sim.out")
assert b[:, 0].tolist() == list(range(201)), "every step once"
column = 5  # step, time, conserved, temperature, kinetic, potential (eV)
print(f"largest difference in the potential energy: {np.abs(a[:, column] - b[:, column]).max():.1e} eV")
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(a[:, 0], a[:, column], lw=3, alpha=0.4, label="left alone")
ax.plot(b[:, 0], b[:, column], lw=1, label="stopped at the red line, resumed")
ax.axvline(stop_step, color="r", lw=0.8)
ax.set_xlabel("step (0.5 fs)")
ax.set_ylabel("potential energy (eV)")
ax.legend()
fig.tight_layout()
