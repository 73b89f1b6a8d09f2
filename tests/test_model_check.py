"""mlip-server --check: the dry run for one's own model (real models, the real command)."""

from __future__ import annotations

import re
import subprocess
import sys

CHECK = [sys.executable, "-m", "mlip_server.ipi.serve", "--check"]


def test_check_reports_the_model_its_forces_and_routes(toy_model):
    done = subprocess.run(CHECK + ["--model", toy_model], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "cutoff 4 Å; species [1, 8]" in out and "energy is a sum of atomic terms" in out
    error = float(re.search(r"largest error ([0-9.e+-]+) of max \|F\| \(in float64\)", out).group(1))
    assert error < 1e-4  # autograd forces agree with finite differences of the energy
    assert (
        "rotational averaging (spec i): yes" in out
        and "LAMMPS domain route (energy of the owned atoms): yes" in out
    )
    assert re.search(r"time per call: [0-9.]+ ms", out)
    assert "direct (non-conservative) forces: no (no direct_forces method" in out


def test_check_reports_a_direct_head_and_its_distance_from_the_gradient(tmp_path):
    from mlip_server.training.toy_models import export, water_toy_direct

    exact = export(water_toy_direct(anisotropy=0.0), tmp_path / "exact.pt")
    rough = export(water_toy_direct(anisotropy=0.3), tmp_path / "rough.pt")
    found = {}
    for name, path in (("exact", exact), ("rough", rough)):
        done = subprocess.run(CHECK + ["--model", path], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        match = re.search(
            r"direct \(non-conservative\) forces: yes, without \(zero virial: not for NPT\) a "
            r"direct virial; RMS difference from −∇E here ([0-9.e+-]+) eV/Å",
            done.stdout,
        )
        assert match, done.stdout
        found[name] = float(match.group(1))
    assert found["exact"] < 1e-10 < 1e-3 < found["rough"]  # the head is −∇E only without the MLP term


def test_check_refuses_what_cannot_be_served(tmp_path, lj_model):
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    done = subprocess.run(CHECK + ["--model", str(not_a_model)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is not a TorchScript model" in done.stderr
    argon = subprocess.run(CHECK + ["--model", lj_model], capture_output=True, text=True, timeout=120)
    assert argon.returncode == 2 and "give --structure FILE" in argon.stderr
