"""``mlip-analyse uncertainty``: i-PI extras files of a committee read back and summarised —
checked on hand-written files with known statistics, on a real i-PI run served by a committee
(the worst frame's per-atom spread equals a direct evaluation of that frame), and on bad input."""

from __future__ import annotations

import json

import ase
import ase.io
import ipi_sim
import numpy as np
import pytest

from mlip_server.analysis import cli
from mlip_server.analysis.errors import AnalysisInputError
from mlip_server.analysis.output import read_table
from mlip_server.analysis.run_folder import find_run_files
from mlip_server.analysis.statistics import block_slices
from mlip_server.analysis.uncertainty import extras_column, read_extras
from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.structures import water_box


def write_extras(path, name, frames, per_line=None, bead_header=False, first_step=0):
    """An extras file as i-PI writes it: a header per frame, the values on one line (or
    ``per_line`` per line)."""
    with open(path, "w") as fh:
        for k, values in enumerate(frames):
            values = np.atleast_1d(values)
            if bead_header:
                fh.write(
                    " #EXTRAS_COMPONENT_RAW(%s)# Step:  %10d  Bead:  %5d  \n" % (name, first_step + k, 0)
                )
            else:
                fh.write(" #EXTRAS(%s)# Step:  %10d \n" % (name, first_step + k))
            chunks = [values] if per_line is None else np.array_split(values, -(-len(values) // per_line))
            for c in chunks:
                fh.write(" ".join("%25.16e" % v for v in c) + "\n")
    return str(path)


# σ_i (eV/Å) of 3 atoms (O, H, H) over 5 frames; frames 1 and 3 tie for the largest max
SIGMA = np.array(
    [
        [0.10, 0.20, 0.30],
        [0.50, 0.10, 0.20],
        [0.20, 0.20, 0.20],
        [0.10, 0.50, 0.40],
        [0.30, 0.10, 0.10],
    ]
)
ENERGY_STD = np.array([0.01, 0.03, 0.02, 0.05, 0.04])  # eV
ROTATIONAL = np.array([0.001, 0.002, 0.0015, 0.003, 0.001])  # eV/Å, force_spread_rms
ROT_ENERGY = np.array([1e-4, 2e-4, 3e-4, 4e-4, 5e-4])  # eV, energy_spread


@pytest.fixture
def synthetic_run(tmp_path):
    """A 3-atom run: positions (extxyz), committee_force_std (several lines per frame),
    committee_energy_std, and force_spread_rms,energy_spread stacked in one file."""
    frames = []
    for k in range(len(SIGMA)):
        a = ase.Atoms("OH2", positions=[[1.0 + k, 2.0, 3.0], [1.5, 2.5 + k, 3.0], [0.5, 2.0, 3.5 + 0.1 * k]])
        a.cell, a.pbc = [10.0, 10.0, 10.0], True
        frames.append(a)
    ase.io.write(tmp_path / "sim.pos_0.extxyz", frames, format="extxyz")
    write_extras(tmp_path / "sim.unc_0", "committee_force_std", SIGMA, per_line=2)
    write_extras(tmp_path / "sim.uncE_0", "committee_energy_std", ENERGY_STD)
    write_extras(
        tmp_path / "sim.spread_0",
        "force_spread_rms,energy_spread",
        np.column_stack([ROTATIONAL, ROT_ENERGY]),
    )
    return tmp_path


def test_reader_splits_stacked_quantities_and_tolerates_the_layout(tmp_path):
    """One value per line or all on one line, EXTRAS or EXTRAS_COMPONENT_RAW headers; a stacked
    scalar + per-atom file is split by size."""
    a = read_extras(write_extras(tmp_path / "a_0", "committee_force_std", SIGMA))
    b = read_extras(
        write_extras(tmp_path / "b_0", "committee_force_std", SIGMA, per_line=1, bead_header=True)
    )
    np.testing.assert_array_equal(a.values, SIGMA)
    np.testing.assert_array_equal(b.values, SIGMA)
    np.testing.assert_array_equal(a.steps, np.arange(5))
    both = np.column_stack([ENERGY_STD, SIGMA])
    c = read_extras(write_extras(tmp_path / "c_0", "committee_energy_std,committee_force_std", both))
    np.testing.assert_array_equal(extras_column(c, "committee_energy_std"), ENERGY_STD)
    np.testing.assert_array_equal(extras_column(c, "committee_force_std"), SIGMA)
    d = read_extras(
        write_extras(tmp_path / "d_0", "force_spread_rms,energy_spread", np.c_[ROTATIONAL, ROT_ENERGY])
    )
    np.testing.assert_array_equal(extras_column(d, "energy_spread"), ROT_ENERGY)
    with pytest.raises(AnalysisInputError, match="not committee_energy_std"):
        extras_column(a, "committee_energy_std")
    # discovery by prefix: the file of the quantity alone is preferred, other beads are ignored
    write_extras(tmp_path / "sim.unc_0", "committee_force_std", SIGMA)
    write_extras(tmp_path / "sim.both_0", "committee_energy_std,committee_force_std", both)
    write_extras(tmp_path / "sim.unc_1", "committee_force_std", SIGMA)
    found = find_run_files(str(tmp_path / "sim.unc_0")).extras
    assert found == {
        "committee_force_std": str(tmp_path / "sim.unc_0"),
        "committee_energy_std": str(tmp_path / "sim.both_0"),
    }
    assert find_run_files(str(tmp_path / "sim.unc_0"), bead=1).extras == {
        "committee_force_std": str(tmp_path / "sim.unc_1")
    }


def test_synthetic_statistics_are_exact(synthetic_run):
    d = synthetic_run
    out = d / "out"
    rc = cli.main(
        ["uncertainty", str(d / "sim.pos_0.extxyz"), "--out", str(out), "--timestep", "2", "--quiet"]
        + ["--rotational", str(d / "sim.spread_0")]
    )
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())["uncertainty"]
    assert s["force_std_file"].endswith("sim.unc_0") and s["energy_std_file"].endswith("sim.uncE_0")
    assert s["n_frames"] == 5 and s["n_atoms"] == 3 and s["n_blocks"] == 5

    # per frame
    t = read_table(out / "uncertainty.dat")
    smax, smean = SIGMA.max(1), SIGMA.mean(1)
    np.testing.assert_allclose(t["sigma_max_eV_A"], smax, rtol=1e-8)
    np.testing.assert_allclose(t["sigma_mean_eV_A"], smean, rtol=1e-7)
    np.testing.assert_allclose(t["sigma_rms_eV_A"], np.sqrt((SIGMA**2).mean(1)), rtol=1e-7)
    np.testing.assert_array_equal(t["worst_atom"], [2, 0, 0, 1, 0])
    np.testing.assert_allclose(t["t_ps"], 0.002 * np.arange(5), rtol=1e-8)
    np.testing.assert_allclose(t["energy_std_eV"], ENERGY_STD, rtol=1e-8)
    committee_rms = np.sqrt((SIGMA**2).sum(1) / 9)  # per Cartesian component, 3 atoms
    np.testing.assert_allclose(t["committee_force_rms_eV_A"], committee_rms, rtol=1e-7)
    np.testing.assert_allclose(t["ratio"], ROTATIONAL / committee_rms, rtol=1e-7)
    np.testing.assert_allclose(t["energy_ratio"], ROT_ENERGY / ENERGY_STD, rtol=1e-7)

    # means over frames; 5 blocks of one frame: block error = std(ddof=1) / sqrt(5)
    def sem(x):
        return np.std(x, ddof=1) / np.sqrt(5)

    assert len(block_slices(5, 5)) == 5
    assert s["sigma_max_mean_eV_A"] == pytest.approx(0.36, rel=1e-12)  # (.3 + .5 + .2 + .5 + .3) / 5
    assert s["sigma_max_mean_eV_A_err"] == pytest.approx(sem(smax), rel=1e-12)
    assert s["sigma_mean_mean_eV_A"] == pytest.approx(SIGMA.mean(), rel=1e-12)
    assert s["sigma_mean_mean_eV_A_err"] == pytest.approx(sem(smean), rel=1e-12)
    assert s["sigma_max_overall_eV_A"] == 0.5 and s["sigma_max_overall_frame"] == 1
    assert s["sigma_rms_overall_eV_A"] == pytest.approx(np.sqrt((SIGMA**2).mean()), rel=1e-12)
    assert s["sigma_percentiles_eV_A"]["50"] == pytest.approx(0.2)  # median of the 15 values
    assert s["sigma_percentiles_eV_A"]["90"] == pytest.approx(np.percentile(SIGMA, 90))
    assert s["by_element_eV_A"]["O"] == pytest.approx(
        {"mean": 0.24, "rms": np.sqrt(np.mean(SIGMA[:, 0] ** 2)), "max": 0.5, "n_atoms": 1}
    )
    assert s["by_element_eV_A"]["H"]["mean"] == pytest.approx(SIGMA[:, 1:].mean())
    e = s["energy_std"]
    assert e["mean_eV"] == pytest.approx(0.03) and e["mean_eV_err"] == pytest.approx(sem(ENERGY_STD))
    assert e["max_eV"] == 0.05 and e["mean_eV_per_atom"] == pytest.approx(0.01)
    r = s["rotational_vs_committee"]
    ratio = ROTATIONAL / committee_rms
    assert r["ratio_mean"] == pytest.approx(ratio.mean(), rel=1e-12)
    assert r["ratio_mean_err"] == pytest.approx(sem(ratio), rel=1e-12)
    assert r["ratio_max"] == pytest.approx(ratio.max(), rel=1e-12)
    assert r["ratio_of_rms"] == pytest.approx(
        np.sqrt((ROTATIONAL**2).mean() / (committee_rms**2).mean()), rel=1e-12
    )
    assert r["rotational_force_spread_mean_eV_A"] == pytest.approx(ROTATIONAL.mean(), rel=1e-12)
    assert r["committee_force_rms_mean_eV_A"] == pytest.approx(committee_rms.mean(), rel=1e-12)
    assert r["energy_ratio_mean"] == pytest.approx((ROT_ENERGY / ENERGY_STD).mean(), rel=1e-12)
    assert "small compared" in r["verdict"]  # ratios ~ 0.005

    # histogram: 50 bins over [0, 0.5]; every value counted once, 0.5 in the last bin
    h = read_table(out / "uncertainty_histogram.dat")
    assert s["histogram"] == {"bins": 50, "range_eV_A": [0.0, 0.5]}
    assert h["count"].sum() == 15 and h["count"][-1] == 2 and h["count_O"].sum() == 5
    np.testing.assert_allclose(h["count_O"] + h["count_H"], h["count"])
    np.testing.assert_allclose((h["density_per_eV_A"] * (h["sigma_hi_eV_A"] - h["sigma_lo_eV_A"])).sum(), 1.0)
    k = np.flatnonzero(h["count"])
    centres = 0.5 * (h["sigma_lo_eV_A"][k] + h["sigma_hi_eV_A"][k])
    np.testing.assert_allclose(centres, [0.105, 0.205, 0.305, 0.405, 0.495])
    np.testing.assert_array_equal(h["count"][k], [5, 5, 2, 1, 2])

    # worst frames: 1 and 3 tie at 0.5 (the earlier first), then frame 0 (0.3, before frame 4)
    w = s["worst_frames"]
    assert [x["frame"] for x in w] == [1, 3, 0]
    assert w[0]["top_atoms"][0] == {
        "atom": 0,
        "element": "O",
        "position_A": [2.0, 2.0, 3.0],
        "sigma_eV_A": 0.5,
    }
    assert w[1]["top_atoms"][0]["element"] == "H" and w[1]["top_atoms"][0]["position_A"] == [1.5, 5.5, 3.0]
    wt = read_table(out / "uncertainty_worst.dat")
    np.testing.assert_array_equal(wt["rank"], np.repeat([1, 2, 3], 3))
    np.testing.assert_array_equal(wt["frame"], np.repeat([1, 3, 0], 3))
    np.testing.assert_array_equal(wt["Z"], [8, 1, 1] * 3)
    np.testing.assert_allclose(wt["sigma_eV_A"], SIGMA[[1, 3, 0]].ravel(), rtol=1e-8)
    np.testing.assert_allclose(wt["y_A"][3:6], [2.0, 5.5, 2.0], rtol=1e-7)
    assert (out / "uncertainty.png").stat().st_size > 1000

    # the extras file as TRAJ: positions found next to it; --worst and --start/--stop apply
    out2 = d / "out2"
    rc = cli.main(["uncertainty", str(d / "sim.unc_0"), "--out", str(out2), "--worst", "1", "--start", "2"])
    assert rc == 0
    s2 = json.loads((out2 / "summary.json").read_text())["uncertainty"]
    assert s2["positions_file"].endswith("sim.pos_0.extxyz") and s2["n_frames"] == 3
    assert [x["frame"] for x in s2["worst_frames"]] == [3]
    assert s2["rotational_vs_committee"]["ratio_mean"] == pytest.approx(ratio[2:].mean(), rel=1e-12)


RUN_EXTRAS = "".join(
    f"    <trajectory filename='{name}' stride='1' extra_type='{what}'> extras </trajectory>\n"
    for name, what in (
        ("unc", "committee_force_std"),
        ("uncE", "committee_energy_std"),
        ("spread", "force_spread_rms,energy_spread"),
    )
)


@pytest.mark.timeout(300)
def test_real_committee_run_worst_frame_equals_direct_evaluation(tmp_path, water_pair, monkeypatch):
    """5 NVT steps of 8 water molecules served by a committee with 2i averaging (i-PI writes
    committee_force_std, committee_energy_std, force_spread_rms): the worst frame found is the
    frame of the largest max_i σ_i of a direct evaluation of every frame, and its σ_i, σ_E and
    rotational spread equal load_evaluator([a, b]).compute(frame, '2i') (positions stored to 1e-8 Å)."""
    monkeypatch.setattr(ipi_sim, "EXTRAS", RUN_EXTRAS)
    run = ipi_sim.run(
        tmp_path / "run",
        water_box(8, seed=1),
        list(water_pair),
        steps=5,
        extra="x",
        endpoints=[("mlip", "=2i", 1.0)],
    )
    assert run.codes == [0, 0], run.server_log[-2000:] + run.ipi_log[-2000:]
    out = tmp_path / "out"
    traj = tmp_path / "run" / "sim.pos_0.extxyz"
    assert cli.main(["uncertainty", str(traj), "--out", str(out), "--timestep", "0.5", "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())["uncertainty"]
    assert s["n_frames"] == 6 and s["n_atoms"] == 24
    assert s["energy_std_file"].endswith("sim.uncE_0") and s["rotational_file"].endswith("sim.spread_0")

    frames = ase.io.read(traj, index=":")
    ev = load_evaluator(list(water_pair))
    direct = ev.compute([Structure.from_ase(a) for a in frames], "2i")
    sigma_max = [r.extras["committee_force_std_max"] for r in direct]
    worst = s["worst_frames"][0]["frame"]
    assert worst == int(np.argmax(sigma_max))
    r = direct[worst]
    wt = read_table(out / "uncertainty_worst.dat")
    rows = wt["rank"] == 1
    np.testing.assert_allclose(wt["sigma_eV_A"][rows], r.committee.force_std(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        np.c_[wt["x_A"], wt["y_A"], wt["z_A"]][rows], frames[worst].get_positions(), rtol=0, atol=1e-5
    )
    np.testing.assert_array_equal(wt["Z"][rows], frames[worst].numbers)
    assert s["worst_frames"][0]["sigma_max_eV_A"] == pytest.approx(sigma_max[worst], abs=1e-6)
    t = read_table(out / "uncertainty.dat")
    np.testing.assert_allclose(t["sigma_max_eV_A"], sigma_max, rtol=1e-6)
    np.testing.assert_allclose(
        t["energy_std_eV"], [x.extras["committee_energy_std"] for x in direct], rtol=1e-6
    )
    rot = np.array([x.extras["force_spread_rms"] for x in direct])
    committee_rms = np.array([np.sqrt((x.committee.force_std() ** 2).sum() / 72) for x in direct])
    np.testing.assert_allclose(t["rotational_force_spread_eV_A"], rot, rtol=1e-5)
    np.testing.assert_allclose(t["ratio"], rot / committee_rms, rtol=1e-5)
    ratio = s["rotational_vs_committee"]["ratio_mean"]
    assert ratio == pytest.approx((rot / committee_rms).mean(), rel=1e-5) and 0 < ratio < 0.1


def _error_line(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


def test_bad_input_gives_one_error_line(synthetic_run, tmp_path, capsys):
    d = synthetic_run
    pos = str(d / "sim.pos_0.extxyz")
    out = ["--out", str(tmp_path / "bad")]
    assert "check --committee-forces" in _error_line(
        capsys, ["uncertainty", pos, "--committee-forces", str(d / "nope_0")] + out
    )
    # the positions given as the extras file
    assert "'#EXTRAS(...)# Step:' line" in _error_line(
        capsys, ["uncertainty", pos, "--committee-forces", pos] + out
    )
    # the energy file given as the force file
    assert "extra_type='committee_force_std'" in _error_line(
        capsys, ["uncertainty", pos, "--committee-forces", str(d / "sim.uncE_0")] + out
    )
    # frame count mismatch between the extras files and against the positions
    short = write_extras(tmp_path / "short_0", "committee_energy_std", ENERGY_STD[:4])
    assert "same run and stride" in _error_line(
        capsys, ["uncertainty", pos, "--committee-energy", short] + out
    )
    short = write_extras(tmp_path / "shortF_0", "committee_force_std", SIGMA[:4])
    msg = _error_line(
        capsys, ["uncertainty", pos, "--committee-forces", short, "--committee-energy", short] + out
    )
    assert "not committee_energy_std" in msg
    other = tmp_path / "other"
    other.mkdir()
    (other / "sim.pos_0.extxyz").write_text((d / "sim.pos_0.extxyz").read_text())
    write_extras(other / "sim.unc_0", "committee_force_std", SIGMA[:4])
    msg = _error_line(capsys, ["uncertainty", str(other / "sim.pos_0.extxyz")] + out)
    assert "has 5 frames" in msg and "sim.unc_0 4" in msg and "same stride" in msg
    # wrong atom count, a truncated file, non-numeric values
    wide = write_extras(tmp_path / "wide_0", "committee_force_std", np.c_[SIGMA, SIGMA])
    assert "give the positions of the same run" in _error_line(
        capsys, ["uncertainty", pos, "--committee-forces", wide] + out
    )
    cut = tmp_path / "cut_0"
    cut.write_text((d / "sim.unc_0").read_text()[:-30])
    assert "cut the partial last frame" in _error_line(
        capsys, ["uncertainty", pos, "--committee-forces", str(cut)] + out
    )
    text = tmp_path / "text_0"
    text.write_text(" #EXTRAS(committee_force_std)# Step:  0 \n{'not': 'numbers'}\n")
    assert "non-numeric" in _error_line(capsys, ["uncertainty", pos, "--committee-forces", str(text)] + out)
    # nothing next to a trajectory without extras files; the centroid of a path integral
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "run.pos_0.extxyz").write_text((d / "sim.pos_0.extxyz").read_text())
    assert "pass --committee-forces FILE" in _error_line(
        capsys, ["uncertainty", str(lone / "run.pos_0.extxyz")] + out
    )
    assert "--bead K" in _error_line(capsys, ["uncertainty", pos, "--beads", "centroid"] + out)
    assert not (tmp_path / "bad" / "summary.json").exists()
