"""mlip-server --check: the dry run for one's own model (real models, the real command)."""

from __future__ import annotations

import re
import subprocess
import sys

from refusals import assert_refused

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
    assert_refused(done, "error: ", "is not a TorchScript model")
    argon = subprocess.run(CHECK + ["--model", lj_model], capture_output=True, text=True, timeout=120)
    assert_refused(argon, "give --structure FILE")


def test_check_fails_a_model_whose_forces_are_not_its_gradient(tmp_path):
    """The water toy with its H–H and O–O Morse terms on detached edge lengths: the same energy as
    the water toy, forces off by those pairs' forces (~0.3 of max |F| on 32 waters). The report goes
    to stdout, the dry run fails in one line naming the forces and the size of their error, and
    the same model with its graph intact passes (the tolerance is finite-difference truncation +
    float64 rounding, ~10⁻⁴ eV/Å here: far below the error, far above a right model's)."""
    from mlip_server.training.toy_models import export, water_toy, water_toy_detached

    wrong = export(water_toy_detached(), tmp_path / "detached.pt")
    right = export(water_toy(), tmp_path / "right.pt")
    done = subprocess.run(CHECK + ["--model", wrong], capture_output=True, text=True, timeout=120)
    line = assert_refused(done, "error: the forces are not −∇E of the model's energy")
    error, fraction, tolerance = (
        float(x)
        for x in re.search(
            r"error ([0-9.e+-]+) eV/Å \(([0-9.e+-]+) of max \|F\|; tolerance ([0-9.e+-]+) eV/Å\)", line
        ).groups()
    )
    assert fraction > 0.05 and error > 100 * tolerance, line
    assert "largest error" in done.stdout and "routes:" not in done.stdout  # no route is offered
    ok = subprocess.run(CHECK + ["--model", right], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and not ok.stderr.strip() and "routes:" in ok.stdout, ok.stderr
