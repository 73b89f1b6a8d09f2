"""``mlip-run --committee A.pt B.pt``: a real i-PI run served by a committee, and its resume."""

import subprocess
import sys

import numpy as np
import pytest
from refusals import assert_refused

from mlip_server.core.evaluator import Structure
from mlip_server.ipi.launcher import main as mlip_run
from mlip_server.loading import load_evaluator

RUN = [sys.executable, "-m", "mlip_server.ipi.launcher"]


def test_committee_run_serves_the_mean_and_resumes_with_it(tmp_path, water_pair):
    import ase.io

    run = tmp_path / "run"
    args = ["water-nvt", "--committee", *water_pair, "--molecules", "8", "--steps", "4", "--stride", "2"]
    done = subprocess.run(
        RUN + args + ["--out", str(run), "--progress", "0", "--set", "checkpoint=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = (run / "server.log").read_text()
    assert "committee of 2 (serving the mean)" in log and "committee_force_std_max" in log
    # i-PI's step-0 potential is the members' mean on the starting structure
    atoms = ase.io.read(run / "init.xyz")
    start = ase.io.read(run / "sim.pos_0.extxyz", index=0)
    np.testing.assert_allclose(start.positions, atoms.positions, atol=1e-6)
    s = Structure.from_ase(start)
    members = [load_evaluator(m).compute([s])[0].energy for m in water_pair]
    potential = np.loadtxt(run / "sim.out", ndmin=2)[0, 5]  # potential{electronvolt}
    assert abs(members[0] - members[1]) > 1e-2  # the members differ
    assert potential == pytest.approx(np.mean(members), abs=1e-5)
    # the resumed launch serves the same committee
    assert mlip_run(["--resume", str(run), "--steps", "8", "--progress", "0"]) == 0
    assert np.loadtxt(run / "sim.out", ndmin=2)[:, 0].tolist() == [0, 2, 4, 6, 8]
    resumed = sorted(run.glob("server*.log"))
    assert all("committee of 2" in p.read_text() for p in resumed), resumed


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--committee", "ONE.pt"], "at least two model files"),
        (["--committee", "A.pt", "B.pt", "--model", "C.pt"], "--model or --committee, not both"),
        (["--committee", "A.pt", "B.pt"], "not found: pass --committee"),
        (["--committee", "A.pt", "B.pt", "--transport", "ffdirect"], "not ffdirect"),
    ],
)
def test_bad_committee_options_are_refused_in_one_line(tmp_path, extra, words):
    done = subprocess.run(
        RUN + ["water-nvt", *extra, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_refused(done, words)
    assert not (tmp_path / "run").exists()
