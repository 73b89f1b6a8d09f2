"""Committees of models (``mlip-server --committee``): one neighbour list, every member evaluated,
the mean served, the spread reported — checked analytically, against separately evaluated
members, against i-PI's own ``<ffcommittee>`` of separate endpoints, and through LAMMPS."""

from __future__ import annotations

import subprocess
import sys

import ase.io
import ipi_sim
import numpy as np
import pytest
from refusals import assert_refused

from mlip_server import processes
from mlip_server.core.errors import ModelError
from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.protocol import HARTREE_PER_EV, ipi_extras
from mlip_server.structures import water_box
from mlip_server.training.toy_models import LennardJones, export, water_toy

EV_PER_HARTREE = 1.0 / HARTREE_PER_EV  # i-PI's own constants


@pytest.fixture(scope="module")
def lj_pair(models_dir):
    """Two LJ models whose energies differ by a factor of 2 (ε and 2ε): E_B = 2 E_A, F_B = 2 F_A."""
    a = export(LennardJones(epsilon=0.0104, sigma=3.4, cutoff=8.5, species=[18]), models_dir / "lj-a.pt")
    b = export(LennardJones(epsilon=0.0208, sigma=3.4, cutoff=8.5, species=[18]), models_dir / "lj-b.pt")
    return a, b


def argon_structure():
    from test_lammps import argon

    return Structure.from_ase(argon(triclinic=True))


def test_scaled_lj_committee_is_exact(lj_pair):
    """Members ε and 2ε: mean 1.5 E_A, σ_E = |E_A|/√2, σ_i = |F_A,i|/√2 (sample std, M = 2)."""
    s = argon_structure()
    one = load_evaluator(lj_pair[0]).compute([s])[0]
    r = load_evaluator(list(lj_pair)).compute([s])[0]
    assert r.energy == pytest.approx(1.5 * one.energy, rel=1e-13)
    np.testing.assert_allclose(r.forces, 1.5 * one.forces, rtol=0, atol=1e-13)
    np.testing.assert_allclose(r.virial, 1.5 * one.virial, rtol=0, atol=1e-12)
    assert r.extras["committee_energy_std"] == pytest.approx(abs(one.energy) / np.sqrt(2), rel=1e-13)
    f_norm = np.linalg.norm(one.forces, axis=1)
    np.testing.assert_allclose(r.committee.force_std(), f_norm / np.sqrt(2), rtol=1e-12, atol=1e-15)
    assert r.extras["committee_force_std_max"] == pytest.approx(f_norm.max() / np.sqrt(2), rel=1e-12)
    first = load_evaluator(list(lj_pair), committee_serve="first").compute([s])[0]
    assert first.energy == pytest.approx(one.energy, rel=1e-14)
    assert first.extras["committee_energy_std"] == pytest.approx(r.extras["committee_energy_std"], rel=1e-14)


def test_members_equal_separate_evaluations_with_mixed_cutoffs_averaging_and_batches(water_pair):
    """Each member's result (cut from the larger member's list) equals that model evaluated alone,
    raw and averaged over 2i, for several structures in one batch; the ipi extras are those
    arrays in atomic units."""
    structures = [Structure.from_ase(water_box(8, seed=k)) for k in (1, 2, 3)]
    committee = load_evaluator(list(water_pair))
    assert committee.cutoff == 4.0
    for spec in ("none", "2i"):
        alone = [load_evaluator(m).compute(structures, spec) for m in water_pair]
        together = committee.compute(structures, spec)
        for k, r in enumerate(together):
            for m in range(2):
                assert r.committee.energies[m] == pytest.approx(alone[m][k].energy, abs=1e-11)
                np.testing.assert_allclose(r.committee.forces[m], alone[m][k].forces, atol=1e-11)
                np.testing.assert_allclose(r.committee.virials[m], alone[m][k].virial, atol=1e-11)
            assert r.energy == pytest.approx(0.5 * (alone[0][k].energy + alone[1][k].energy), abs=1e-11)
            if spec == "2i":  # both spreads are reported side by side
                assert r.extras["n_rotations"] == 36 and r.extras["force_spread_rms"] > 0
    x = ipi_extras(together[0])
    assert x["committee_pot"][1] * EV_PER_HARTREE == pytest.approx(
        together[0].committee.energies[1], rel=1e-9
    )
    assert len(x["committee_force"][0]) == 3 * 24 and len(x["committee_virial"][0]) == 9


def test_metatomic_member(models_dir, strongly_anisotropic_model):
    """A metatomic member next to a contract model: its results equal the metatomic model alone."""
    from mlip_server.training.export_metatomic import export_metatomic

    meta = export_metatomic(strongly_anisotropic_model, models_dir / "committee-metatomic.pt")
    toy = export(water_toy(seed=2), models_dir / "committee-toy.pt")
    s = Structure.from_ase(water_box(8, seed=4))
    r = load_evaluator([toy, meta]).compute([s])[0]
    alone = load_evaluator(meta).compute([s])[0]
    assert r.committee.energies[1] == pytest.approx(alone.energy, abs=1e-10)
    np.testing.assert_allclose(r.committee.forces[1], alone.forces, atol=1e-10)


def test_incompatible_or_missing_members_are_refused(models_dir, water_pair, lj_pair, tmp_path):
    with pytest.raises(ModelError, match="same elements"):
        load_evaluator([water_pair[0], lj_pair[0]])
    with pytest.raises(ModelError, match="not found"):
        load_evaluator([water_pair[0], str(tmp_path / "nope.pt")])
    atoms = water_box(8, seed=1)
    ipi_sim.write_init(atoms, tmp_path / "init.xyz")
    for members, expected in (
        ([water_pair[0], lj_pair[0]], "every member must support the same elements"),
        ([water_pair[0], str(tmp_path / "missing.pt")], "not found"),
        ([water_pair[0]], "at least two"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "mlip_server.ipi.serve", "--committee", *members]
            + ["--structure", str(tmp_path / "init.xyz"), "--address", "unix:never-used"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert_refused(proc, expected)


COMMITTEE_INPUT = """<simulation verbosity='low' floatformat='%25.16e' safe_stride='1000'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [step, potential{{electronvolt}}] </properties>
    <trajectory filename='frc' stride='1' format='xyz'> forces </trajectory>
    <trajectory filename='unc' stride='1' extra_type='committee_uncertainty'> extras </trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>2718</seed></prng>
  <ffcommittee name='comm'>
    <alpha>2.0</alpha><parse_json>{parse}</parse_json>
{members}  </ffcommittee>
  <system>
    <initialize nbeads='{nbeads}'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces><force forcefield='comm'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='nve'><timestep units='femtosecond'>0.5</timestep>
      </dynamics></motion>
  </system>
</simulation>
"""
MEMBER = """    <ffsocket name='{name}' mode='unix' pbc='false'><address>{address}</address>
      <latency>1e-4</latency><batch_size>{batch}</batch_size></ffsocket>
"""


def _ipi_committee(workdir, atoms, servers, steps=8, nbeads=2, batch=1, server_args=()):
    """i-PI NVE with an <ffcommittee> of one socket per entry of ``servers`` (a model path or a
    list of paths: one committee server); returns (potential eV, forces, uncertainty, server logs)."""
    workdir.mkdir(parents=True)
    ipi_sim.write_init(atoms, workdir / "init.xyz")
    base = processes.unique_name("mlip-committee")
    names = [f"{base}-{k}" for k in range(len(servers))]
    members = "".join(MEMBER.format(name=f"m{k}", address=n, batch=batch) for k, n in enumerate(names))
    parse = "true" if any(isinstance(s, list) for s in servers) else "false"
    xml = COMMITTEE_INPUT.format(steps=steps, nbeads=nbeads, members=members, parse=parse)
    (workdir / "input.xml").write_text(xml)
    ipi = processes.start_ipi("input.xml", workdir)
    procs = [ipi]
    try:
        processes.wait_for_socket(names[0], ipi)
        for k, (model, name) in enumerate(zip(servers, names)):
            procs.append(
                processes.start_server(
                    model,
                    "init.xyz",
                    [f"unix:{name}"],
                    workdir,
                    log=f"server-{k}.log",
                    extra=list(server_args),
                )
            )
        codes = processes.wait(procs, 240)
    finally:
        processes.stop(procs, names)
    logs = [(workdir / f"server-{k}.log").read_text() for k in range(len(servers))]
    assert codes == [0] * len(procs), (workdir / "ipi.log").read_text()[-3000:] + "".join(logs)[-3000:]
    potential = np.loadtxt(workdir / "sim.out")[:, 1]
    forces = np.array([a.get_positions() for a in ase.io.read(workdir / "sim.frc_0.xyz", index=":")])
    unc = [
        float(line) for line in (workdir / "sim.unc_0").read_text().splitlines() if not line.startswith(" #")
    ]
    return potential, forces, np.array(unc), logs


def test_ipi_ffcommittee_around_one_endpoint_equals_separate_endpoints(tmp_path, water_pair):
    """i-PI's <ffcommittee parse_json='true'> around ONE committee server reproduces i-PI's committee
    of two separate servers (α = 2 rescaling, 2 beads in one batched message on our side):
    potential, forces and committee_uncertainty along 8 NVE steps."""
    atoms = water_box(8, seed=1)
    ours = _ipi_committee(tmp_path / "ours", atoms, [list(water_pair)], batch=2)
    theirs = _ipi_committee(tmp_path / "theirs", atoms, list(water_pair))
    for a, b in zip(ours[:3], theirs[:3]):
        assert a.shape == b.shape and len(a) >= 9
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert theirs[2].min() > 0  # the members do differ
    assert "2×" in ours[3][0]  # the two beads were evaluated in one call


def test_uncertain_structures_are_saved_once_and_complete(tmp_path, water_pair):
    """--uncertainty-threshold below every spread: every evaluation is logged and written once;
    the frames read back with the served energy, forces and the per-atom spread."""
    atoms = water_box(8, seed=1)
    out = ipi_sim.run(
        tmp_path,
        atoms,
        list(water_pair),
        steps=4,
        server_args=["--uncertainty-threshold", "0.01", "--save-uncertain", str(tmp_path / "unc")],
    )
    assert out.codes == [0, 0], out.server_log[-3000:]
    frames = ase.io.read(tmp_path / "unc" / "uncertain.extxyz", index=":")
    assert len(frames) == 5  # steps 0..4, each once
    assert out.server_log.count("above --uncertainty-threshold") == 5
    assert "5 of 5 structures above" in out.server_log
    ev = load_evaluator(list(water_pair))
    for frame, potential in zip(frames, out.properties[:, 3]):
        r = ev.compute([Structure.from_ase(frame)])[0]  # positions stored to 1e-8 Å
        assert frame.get_potential_energy() == pytest.approx(r.energy, abs=1e-6)
        assert frame.get_potential_energy() == pytest.approx(potential, abs=1e-6)
        np.testing.assert_allclose(frame.get_forces(), r.forces, atol=1e-6)
        np.testing.assert_allclose(frame.arrays["committee_force_std"], r.committee.force_std(), atol=1e-6)
        assert frame.info["committee_force_std_max"] > 0.01
    quiet = ipi_sim.run(
        tmp_path / "quiet",
        atoms,
        list(water_pair),
        steps=2,
        server_args=["--uncertainty-threshold", "1e6", "--save-uncertain", str(tmp_path / "none")],
    )
    assert quiet.codes == [0, 0]
    assert not (tmp_path / "none" / "uncertain.extxyz").exists()
    assert "0 of 3 structures above" in quiet.server_log


def test_ipi_ffdirect_committee_equals_the_mean_of_members_evaluated_alone(tmp_path, water_pair):
    """i-PI with the in-process PES (<ffdirect>, committee: a;b; 2 beads in one batched call), 4 NVT
    steps: the forces i-PI wrote (eV/Å), its potential (eV, the bead mean) and the member energies
    of its extras (Hartree) equal each member evaluated on i-PI's frames by an Evaluator of its own,
    and their mean; committee_energy_std is |E_a − E_b| / √2 (M = 2, sample std)."""
    atoms = water_box(8, seed=3)
    out = ipi_sim.run(
        tmp_path,
        atoms,
        list(water_pair),
        steps=4,
        nbeads=2,
        batch=2,
        ffdirect=True,
        forces=True,
        extra="committee_pot,committee_energy_std",
    )
    assert out.codes == [0, 0], out.ipi_log[-3000:]
    alone = [load_evaluator(m, dtype="float64") for m in water_pair]
    served = np.zeros((5, 2))  # step, bead
    for bead in range(2):
        frames, forces = out.frames(bead), out.forces(bead)
        extras = np.loadtxt(tmp_path / f"sim.extras_{bead}", ndmin=2)  # E_a, E_b (Hartree), σ_E (eV)
        assert len(frames) == 5 and forces.shape == (5, 24, 3) and extras.shape == (5, 3)
        for step, frame in enumerate(frames):
            frame.numbers = atoms.numbers
            a, b = (ev.compute([Structure.from_ase(frame)])[0] for ev in alone)
            assert abs(a.energy - b.energy) > 1e-2  # the members differ far above the tolerances
            assert np.abs(a.forces - b.forces).max() > 1e-2
            # positions and forces are written with 8 decimals (Å, eV/Å)
            np.testing.assert_allclose(forces[step], 0.5 * (a.forces + b.forces), rtol=0, atol=1e-5)
            np.testing.assert_allclose(extras[step, :2] * EV_PER_HARTREE, [a.energy, b.energy], atol=1e-6)
            assert extras[step, 2] == pytest.approx(abs(a.energy - b.energy) / np.sqrt(2), abs=1e-6)
            served[step, bead] = 0.5 * (a.energy + b.energy)
    np.testing.assert_allclose(out.properties[:, 3], served.mean(axis=1), rtol=0, atol=1e-6)
