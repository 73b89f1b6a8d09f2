"""Direct (non-conservative) forces: served values, no backward pass, averaging, committees, refusals.

The analytic toy (:class:`mlip_server.training.toy_models.LennardJonesDirect`) predicts −∇E plus
``bias`` × the
atom's neighbour count: the served direct forces must be that minus its mean (net force removed),
and its grid average with inversion must be exactly −∇E again.
"""

from __future__ import annotations

import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ipi.utils import mathtools
from refusals import assert_refused

from mlip_server.core.errors import ModelError
from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.training.toy_models import LennardJonesDirect, LennardJonesDirectCubic, export

BIAS = np.array([0.1, -0.2, 0.3])


@pytest.fixture(scope="module")
def lj_direct(models_dir) -> str:
    return export(LennardJonesDirect(bias=BIAS.tolist()), models_dir / "lj-direct.pt")


@pytest.fixture
def argon():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    atoms.rattle(0.15, seed=4)
    return atoms


def _neighbour_counts(evaluator, atoms):
    g = evaluator._graph(Structure.from_ase(atoms), 0)
    return np.bincount(g.edge_index[0], minlength=len(atoms))


def test_served_direct_forces_are_the_head_minus_its_mean(lj_direct, argon):
    ev = load_evaluator(lj_direct)
    assert ev.model.direct_forces and ev.model.direct_virial
    s = Structure.from_ase(argon)
    conservative = ev.compute([s])[0]
    direct = ev.compute([s], "direct")[0]
    head = conservative.forces + _neighbour_counts(ev, argon)[:, None] * BIAS
    np.testing.assert_allclose(direct.forces, head - head.mean(axis=0), rtol=0, atol=1e-12)
    assert abs(direct.energy - conservative.energy) < 1e-12
    np.testing.assert_allclose(direct.virial, conservative.virial, rtol=0, atol=1e-12)  # the analytic one
    net = np.linalg.norm(head.sum(axis=0))
    assert direct.extras["direct_net_force"] == pytest.approx(net, rel=1e-12) and net > 1.0


def test_direct_endpoint_builds_no_autograd_graph(lj_direct, argon):
    """No backward pass, and no graph for one: an op records tensors for backward only when one
    of its inputs requires grad, so with a pack hook on every saved tensor a direct call (plain or
    averaged) must record none; the same hook sees a conservative call's graph."""
    ev = load_evaluator(lj_direct)
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    s = Structure.from_ase(argon)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ev.compute([s, s], ["direct", "direct+2i"])
        assert saved == [], f"the direct endpoint recorded {len(saved)} tensors for a backward pass"
        ev.compute([s])  # the instrument sees a conservative call
    assert len(saved) > 0


@pytest.fixture(scope="module")
def lj_direct_cubic(models_dir) -> str:
    return export(LennardJonesDirectCubic(bias=BIAS.tolist(), cubic=0.05), models_dir / "lj-direct-cubic.pt")


def test_direct_averaging_composes_with_rotations(lj_direct, lj_direct_cubic, argon):
    """``direct+2i`` is the weighted mean of the rotated-back raw direct forces over i-PI's own
    order-2 Legendre grid plus inversion, taken here from ``ipi.utils.mathtools`` (not from
    :class:`Averaging`). The head's cubic term is odd in each edge direction (inversion does not
    cancel it) and of angular order 3: the ``i``, ``2i`` and ``3i`` averages differ by > 1e-2 eV/Å,
    so the grid the spec names is the one checked. Tolerance 1e-12 eV/Å: the same float64
    evaluations summed in another order, at positions rotated with ~1e-15 Å rounding."""
    # the constant bias (the head's model-frame term) cancels between R and -R: -grad E is left
    ev = load_evaluator(lj_direct)
    s = Structure.from_ase(argon)
    conservative = ev.compute([s])[0]
    np.testing.assert_allclose(
        ev.compute([s], "direct+2i")[0].forces, conservative.forces, rtol=0, atol=1e-12
    )

    ev = load_evaluator(lj_direct_cubic)
    averaged = ev.compute([s], "direct+2i")[0]
    quadrature = mathtools.get_rotation_quadrature_legendre(2)
    manual, total = np.zeros_like(averaged.forces), 0.0
    for r, w, _ in quadrature:
        for m in (np.asarray(r), -np.asarray(r)):  # the grid and its inversion, same weights
            rotated = Structure.from_ase(argon)
            rotated.positions = argon.positions @ m.T
            rotated.cell = np.array(argon.cell) @ m.T
            manual += w * ev.compute([rotated], "direct")[0].forces @ m
            total += w
    np.testing.assert_allclose(averaged.forces, manual / total, rtol=0, atol=1e-12)
    assert averaged.extras["n_rotations"] == 2 * len(quadrature) == 36
    for other in ("direct+i", "direct+3i"):
        assert np.abs(ev.compute([s], other)[0].forces - averaged.forces).max() > 1e-2, other
    assert np.abs(averaged.forces - conservative.forces).max() > 1e-2  # the cubic term is not cancelled


def test_direct_committee_reports_direct_spreads(models_dir, argon):
    a = export(LennardJonesDirect(bias=[0.1, 0.0, 0.0]), models_dir / "lj-direct-a.pt")
    b = export(LennardJonesDirect(bias=[0.0, 0.2, 0.0]), models_dir / "lj-direct-b.pt")
    ev = load_evaluator([a, b])
    s = Structure.from_ase(argon)
    result = ev.compute([s], "direct")[0]
    members = [load_evaluator(m).compute([s], "direct")[0] for m in (a, b)]
    np.testing.assert_allclose(result.forces, 0.5 * (members[0].forces + members[1].forces), atol=1e-12)
    spread = np.linalg.norm(members[0].forces - members[1].forces, axis=1) / np.sqrt(2)
    assert result.extras["committee_force_std_max"] == pytest.approx(spread.max(), rel=1e-10)
    assert spread.max() > 0.1  # the heads differ: a spread of direct forces, not of -grad E (zero here)


def test_model_without_direct_head_is_refused_in_one_line(lj_model, tmp_path, argon):
    ev = load_evaluator(lj_model)
    assert not ev.model.direct_forces
    with pytest.raises(ModelError, match="has no direct forces"):
        ev.compute([Structure.from_ase(argon)], "direct")
    argon.write(tmp_path / "init.xyz")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlip_server.ipi.serve",
            "--model",
            lj_model,
            "--structure",
            str(tmp_path / "init.xyz"),
        ]
        + ["--address", "unix:never-used=direct"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_refused(run, "drop 'direct'")


# -- experiments through real i-PI ---------------------------------------------------------------
def _run(args, tmp_path, name):
    out = tmp_path / name
    done = subprocess.run(
        [sys.executable, "-m", "mlip_server.ipi.launcher", *args, "--out", str(out), "--progress", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, out


@pytest.fixture(scope="module")
def water_direct(models_dir):
    """The water toy whose direct head is its Morse force (≠ −∇E by the non-invariant term)."""
    from mlip_server.training.toy_models import water_toy_direct

    return export(water_toy_direct(anisotropy=0.02), models_dir / "water-direct.pt")


@pytest.fixture(scope="module")
def water_direct_exact(models_dir):
    """The same toy without its non-invariant term: direct head = −∇E, raw = averaged."""
    from mlip_server.training.toy_models import water_toy_direct

    return export(water_toy_direct(anisotropy=0.0), models_dir / "water-direct-exact.pt")


def test_toy_direct_head_is_the_morse_force(water_direct_exact, water8):
    ev = load_evaluator(water_direct_exact)
    s = Structure.from_ase(water8)
    np.testing.assert_allclose(ev.compute([s], "direct")[0].forces, ev.compute([s])[0].forces, atol=1e-12)


def test_nc_mts_equals_the_seeds_mts_when_direct_equals_conservative(tmp_path, water_direct_exact):
    """Direct MTS (direct fast, conservative 2i slow) and the seed's MTS (raw fast, 2i slow) are the
    same dynamics when the head is exact and the model invariant: the plumbing puts each force at
    its level. The same run with a non-exact head differs."""
    common = ["--model", water_direct_exact, "--molecules", "8", "--steps", "6", "--stride", "1"]
    common += ["--timestep", "2.0", "--nmts", "4"]
    nc, nc_out = _run(["water-nvt-nc-mts", *common], tmp_path, "nc")
    seed, seed_out = _run(["water-nvt-mts", *common], tmp_path, "seed")
    assert nc.returncode == 0 and seed.returncode == 0, nc.stderr[-2000:] + seed.stderr[-2000:]
    a, b = np.loadtxt(nc_out / "sim.out"), np.loadtxt(seed_out / "sim.out")
    assert a.shape == b.shape == (7, 7)
    np.testing.assert_allclose(a[:, 2:5], b[:, 2:5], rtol=1e-10, atol=1e-10)  # conserved, T, potential
    pa = [f.positions for f in ase.io.read(nc_out / "sim.pos_0.extxyz", ":")]
    pb = [f.positions for f in ase.io.read(seed_out / "sim.pos_0.extxyz", ":")]
    assert np.abs(np.array(pa) - np.array(pb)).max() < 1e-9
    assert "direct forces (no backward pass, net force removed)" in (nc_out / "server.log").read_text()


def test_nc_experiments_run_through_ipi(tmp_path, water_direct):
    common = ["--model", water_direct, "--molecules", "8", "--steps", "4", "--stride", "1"]
    nvt, nvt_out = _run(["water-nvt-nc-mts", *common], tmp_path, "nvt")
    nve, nve_out = _run(["water-nve-nc-mts", *common], tmp_path, "nve")
    pimd, pimd_out = _run(["water-pimd-nc-rpc", *common, "--beads", "4"], tmp_path, "pimd")
    for done in (nvt, nve, pimd):
        assert done.returncode == 0, done.stderr[-3000:]
    out = np.loadtxt(nvt_out / "sim.out")
    # components: 0 the direct endpoint's energy (the model's), 1 the conservative 2i average
    assert np.isfinite(out).all() and np.all(np.abs(out[:, 5] - out[:, 6]) > 0)
    lines = (nvt_out / "sim.net").read_text().splitlines()
    net = [float(v) for line in lines if "#" not in line for v in line.split()]
    assert net and max(abs(v) for v in net) < 1e-10  # a pairwise head: no net force to remove
    assert (pimd_out / "sim.xc.extxyz").exists() and np.isfinite(np.loadtxt(pimd_out / "sim.out")).all()
    log = (pimd_out / "server.log").read_text()
    assert "4×" in log  # the 4 beads of the direct endpoint in one model call


def test_npt_refuses_a_direct_endpoint_without_virial(tmp_path, water_direct):
    done, _ = _run(
        ["water-npt", "--model", water_direct, "--molecules", "8", "--steps", "2", "--forces", "direct"],
        tmp_path,
        "npt",
    )
    assert_refused(done, "water-npt needs the pressure", "drop --forces direct")
    assert not (tmp_path / "npt").exists()  # nothing of a refused run stays behind


def test_forces_direct_is_refused_where_the_experiment_mixes_forces(tmp_path, water_direct):
    done, _ = _run(["water-nvt-nc-mts", "--model", water_direct, "--forces", "direct"], tmp_path, "x")
    assert_refused(done, "water-nvt-nc-mts does not use --forces")


def test_ase_calculator_and_ffdirect_serve_direct_forces(lj_direct, argon, tmp_path):
    """The spec word reaches the in-process routes: the ASE calculator (``average="direct"``) and
    i-PI's ``<ffdirect>`` PES (``average: direct``) give the server's direct forces."""
    from mlip_server.ase_calculator import MLIPCalculator
    from mlip_server.ipi.pes import MLIPDriver
    from mlip_server.protocol.messages import BOHR_PER_ANGSTROM

    ref = load_evaluator(lj_direct).compute([Structure.from_ase(argon)], "direct")[0]
    atoms = argon.copy()
    atoms.calc = MLIPCalculator(lj_direct, average="direct")
    np.testing.assert_allclose(atoms.get_forces(), ref.forces, rtol=0, atol=1e-12)
    assert np.abs(atoms.get_forces().sum(axis=0)).max() < 1e-10
    ase.io.write(tmp_path / "argon.xyz", argon)
    pes = MLIPDriver(model=lj_direct, structure=str(tmp_path / "argon.xyz"), average="direct")
    cell = np.array(argon.cell).T * BOHR_PER_ANGSTROM  # i-PI: columns, Bohr
    energy, forces, virial, _ = pes.compute(cell, argon.positions * BOHR_PER_ANGSTROM)
    from ipi.utils.units import unit_to_internal

    per_ev_per_angstrom = unit_to_internal("energy", "electronvolt", 1.0) / BOHR_PER_ANGSTROM
    got = forces.reshape(-1, 3) / per_ev_per_angstrom  # Hartree/Bohr → eV/Å
    np.testing.assert_allclose(got, ref.forces, rtol=0, atol=1e-10 * np.abs(ref.forces).max())
    direct_conservative = load_evaluator(lj_direct).compute([Structure.from_ase(argon)])[0]
    assert np.abs(ref.forces - direct_conservative.forces).max() > 0.01  # the head's bias is there
