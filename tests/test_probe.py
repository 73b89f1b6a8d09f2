"""``mlip-probe --level tiny`` end to end on the non-invariant water toy model: real i-PI runs,
real analyses, and the physics the report must show (averaging converges, removes the torque)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def second_anisotropic_model(models_dir) -> str:
    """Same family as ``strongly_anisotropic_model``, other weights: a two-member committee."""
    from mlip_server.training.toy_models import AnisotropicPairModel, export

    model = AnisotropicPairModel(species=[1, 8], cutoff=3.5, anisotropy=0.5, hidden=24, seed=4)
    return export(model, models_dir / "aniso-seed4.pt")


ICE_CELLS = "ice_ih_disordered_*.xyz"


def ice_dir() -> Path:
    """Where ``mlip-probe`` looks for the ice cells of its section 5 (``../shared/data``)."""
    from mlip_server.analysis.probe.pipeline import shared_data

    return shared_data() / "structures" / "ice"


@pytest.fixture(scope="module")
def tiny_probe(tmp_path_factory, strongly_anisotropic_model, second_anisotropic_model):
    """One ``mlip-probe --level tiny`` run (with a two-member committee) for the tests below:
    (report text, figures folder, probe.json)."""
    tmp_path = tmp_path_factory.mktemp("probe")
    report = tmp_path / "probe-toy.md"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlip_server.analysis.probe.cli",
            strongly_anisotropic_model,
            "--level",
            "tiny",
            "--report",
            str(report),
            "--work",
            str(tmp_path / "work"),
            "--committee",
            strongly_anisotropic_model,
            second_anisotropic_model,
        ],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    figures = tmp_path / "probe-toy"
    return report.read_text(), figures, json.loads((figures / "probe.json").read_text())


@pytest.mark.timeout(600)
def test_tiny_probe_report(tiny_probe):
    text, figures, r = tiny_probe
    for heading in ("## 1. Error convergence", "## 2. Cost", "## 3. Gas-phase molecule", "## 4. Bulk liquid"):
        assert heading in text
    assert text.count("**Verdict.**") >= 4
    for png in ("convergence.png", "molecule.png", "liquid.png"):
        assert (figures / png).stat().st_size > 1000

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
    # 5. ice: test_tiny_probe_ice_section (skipped, visibly, without the ice cells)
    # 6. symmetry breaking vs committee spread (numbers checked in the test below)
    com = r["committee"]
    assert "## 6. Symmetry breaking vs model uncertainty" in text and (figures / "committee.png").is_file()
    assert com["n_members"] == 2 and len(com["frames"]) == r["convergence"]["n_frames"]
    assert com["all"]["rotational_rms_eV_A"] > 0 and com["all"]["committee_rms_eV_A"] > 0


@pytest.mark.timeout(600)
def test_tiny_probe_ice_section(request):
    """Section 5 (ice cells of ../shared/data): at least two cells compared. Without the cells the
    probe has no section 5, and this test says so as a skip rather than passing."""
    cells = sorted(ice_dir().glob(ICE_CELLS))
    if not cells:
        pytest.skip(
            f"no ice cells {ice_dir() / ICE_CELLS} (../shared/data): the probe's section 5 is not run"
        )
    text, _, r = request.getfixturevalue("tiny_probe")
    assert "## 5. Ice" in text and r["ice"]["n_compared"] >= 2


def test_committee_section_equals_separately_evaluated_members(
    strongly_anisotropic_model, second_anisotropic_model, water8
):
    """Section 6's numbers from separate evaluators and numpy: the rotational spread of the probed
    model over the grid, σ_i of the two grid-averaged members (M = 2: σ_i = |F_i^a − F_i^b| / √2),
    and the ratio of their RMS per component."""
    from mlip_server.analysis.probe.static import committee_vs_rotation
    from mlip_server.core.graph import Structure
    from mlip_server.loading import load_evaluator

    frames = [water8, water8[:3]]  # the liquid box and one gas-phase molecule
    members = [strongly_anisotropic_model, second_anisotropic_model]
    kw = dict(device="cpu", dtype="float64")
    com = committee_vs_rotation(
        load_evaluator(strongly_anisotropic_model, **kw), load_evaluator(members, **kw), frames, "2i"
    )
    rot_sq = com_sq = 0.0
    for atoms, row in zip(frames, com["frames"]):
        s = Structure.from_ase(atoms)
        rot = (
            load_evaluator(strongly_anisotropic_model, **kw).compute([s], "2i")[0].extras["force_spread_rms"]
        )
        fa, fb = (load_evaluator(m, **kw).compute([s], "2i")[0].forces for m in members)
        sigma = np.linalg.norm(np.asarray(fa) - np.asarray(fb), axis=1) / np.sqrt(2)
        n3 = 3 * len(atoms)
        expect = np.sqrt((sigma**2).sum() / n3)
        assert row["rotational_rms_eV_A"] == pytest.approx(float(rot), rel=1e-10)
        assert row["committee_rms_eV_A"] == pytest.approx(expect, rel=1e-10)
        assert row["committee_max_eV_A"] == pytest.approx(sigma.max(), rel=1e-10)
        assert row["ratio"] == pytest.approx(float(rot) / expect, rel=1e-10)
        rot_sq, com_sq = rot_sq + n3 * float(rot) ** 2, com_sq + n3 * expect**2
    assert com["all"]["ratio"] == pytest.approx(np.sqrt(rot_sq / com_sq), rel=1e-10)
    # the anisotropic toy breaks symmetry strongly: its rotational spread is not negligible
    assert com["all"]["rotational_rms_eV_A"] > 1e-3


def test_liquid_coordination_is_counted_within_one_radius_for_every_run(tmp_path):
    """Each run's own first g_OO minimum can fall in a different shell when the minimum is shallow
    (the shipped model's runs gave 3.85, 4.32 and 4.23 Å, i.e. coordinations 7.3 vs 10.8): the
    comparison must read n_OO(r) of every run at the raw run's radius."""
    from mlip_server.analysis.probe.dynamics import liquid_section
    from mlip_server.analysis.probe.levels import LEVELS

    r = np.arange(0.05, 6.0, 0.1)  # bin centres, 0.1 Å bins: upper edges 0.1, 0.2, ...
    runs = {}
    for name, own_min, slope in (("raw", 3.5, 1.0), ("other", 4.3, 2.0)):
        d = tmp_path / name
        d.mkdir()
        n = slope * r  # running coordination n(r) at the upper edges, distinct per run
        table = np.column_stack([r, np.ones_like(r), 0.1 * np.ones_like(r), n, 0.01 * n])
        np.savetxt(d / "rdf.dat", table, header="r_A g_OO g_OO_err n_OO n_OO_err")
        summary = {
            "rdf": {
                "pairs": {
                    "OO": {
                        "first_peak_r_A": 2.85,
                        "first_peak_g": 2.5,
                        "first_min_r_A": own_min,
                        "coordination_first_shell": slope * own_min,
                    }
                }
            }
        }
        runs[name] = {"summary": summary, "analysis": str(d), "wall_s": 1.0}
    liq = liquid_section(runs, LEVELS["tiny"])
    assert liq["first_shell_r_A"] == 3.5
    (coordination,) = [c for c in liq["comparisons"] if c["label"].startswith("O coordination")]
    (raw, raw_err), (other, other_err) = coordination["values"]
    edge = 3.5 - 0.05  # the tabulated r of the bin whose upper edge is 3.5 Å
    assert raw == pytest.approx(edge) and other == pytest.approx(2 * edge)
    assert other_err == pytest.approx(0.02 * edge)


def test_compare_uses_welch_t_with_few_blocks():
    from mlip_server.analysis.statistics import welch_compare

    # 4 blocks each: 3 + 3 → 6 degrees of freedom; t = 3/√2 = 2.12 passes |z| ≥ 2 but not t(6) = 2.447
    c = welch_compare(0.0, 1.0, 3.0, 1.0, n_blocks=4)
    assert c["t"] == pytest.approx(3 / np.sqrt(2)) and c["dof"] == pytest.approx(6.0)
    assert c["t_crit"] == pytest.approx(2.4469, abs=1e-4) and c["significant"] is False
    assert welch_compare(0.0, 1.0, 4.0, 1.0, n_blocks=4)["significant"] is True
    # unequal errors: Welch–Satterthwaite, between 3 and 6
    assert 3.0 < welch_compare(0.0, 1.0, 4.0, 0.2, n_blocks=4)["dof"] < 3.5
    # an unknown error (NaN from a run too short to estimate it) gives no verdict
    for bad in (None, float("nan")):
        assert welch_compare(0.0, bad, 1.0, 1.0, n_blocks=4)["significant"] is None
