"""``mlip-probe --level tiny`` end to end on the non-invariant water toy model: real i-PI runs,
real analyses, and the physics the report must show (averaging converges, removes the torque)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_tiny_probe_report(tmp_path, strongly_anisotropic_model):
    report = tmp_path / "probe-toy.md"
    out = subprocess.run([sys.executable, "-m", "analysis.probe.cli", strongly_anisotropic_model, "--level", "tiny",
                          "--report", str(report), "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=580, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = report.read_text()
    for heading in ("## 1. Error convergence", "## 2. Cost", "## 3. Gas-phase molecule", "## 4. Bulk liquid"):
        assert heading in text
    assert text.count("**Verdict.**") >= 4
    figures = tmp_path / "probe-toy"
    for png in ("convergence.png", "molecule.png", "liquid.png"):
        assert (figures / png).stat().st_size > 1000
    r = json.loads((figures / "probe.json").read_text())

    # 1. convergence: every rotation grid is far closer to the reference than the raw model;
    # adding inversion to a rotation grid does not make it worse
    g = r["convergence"]["grids"]
    assert g["none"]["force_mae_meV_A"] > 10 * g["2"]["force_mae_meV_A"]
    assert g["none"]["energy_mae_meV"] > 10 * g["2i"]["energy_mae_meV"]
    assert g["2i"]["force_mae_meV_A"] <= 1.01 * g["2"]["force_mae_meV_A"]
    # 2. cost: an 18-rotation grid costs more than one evaluation
    assert r["cost"]["seconds"]["2"] > r["cost"]["seconds"]["none"]
    # 3. the raw model exerts a torque on an isolated molecule; 2i removes most of it
    mol = r["molecule"]
    assert mol["raw"]["torque_rms_eV"] > 1e-5
    assert mol["2i"]["torque_rms_eV"] < 0.1 * mol["raw"]["torque_rms_eV"]
    assert mol["2i"]["L_drift_norm_hbar_per_ps"] < mol["raw"]["L_drift_norm_hbar_per_ps"]
    # 4. three liquid runs, every observable with a value
    liq = r["liquid"]
    assert liq["runs"] == ["raw", "random", "mts-2i"]
    for obs in liq["comparisons"]:
        assert all(v[0] is not None for v in obs["values"]), obs["label"]
    # 5. ice, when the cells are available
    if (ROOT.parent / "shared" / "data" / "structures" / "ice").is_dir():
        assert r["ice"]["n_compared"] >= 2 and "## 5. Ice" in text
