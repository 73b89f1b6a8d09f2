"""metatrain's PET (the PET-MAD/upet architecture), real: small PETs trained with ``mtt train`` and
exported with ``mtt export`` in the metatrain venv (tests/families/metatrain/build.py), served by
the project's venv (torch + metatomic-torch only) and checked against the family's own code:

* in-process Evaluator, the ASE calculator and a committee of two = metatomic-ase's
  ``MetatomicCalculator`` (energy, forces, stress, per-atom energies) on DFT water frames, a
  molecule and a disordered ice cell; direct forces = the model's non-conservative heads;
* real i-PI over sockets (4 beads) = i-PI's own ``-m metatomic`` driver on the same run, and its
  first step = metatomic-ase; our ``2i`` averaging = i-PI's ``<ffrotations>`` around its driver;
  our direct endpoint = i-PI's driver with ``non_conservative=True``;
* real LAMMPS: the gather route's first step = metatomic-ase on the ice cell, the domain route
  on 2 and 3 ranks = the gather route;
* ``mlip-server --check`` names what it read from the file, and a direct endpoint on a PET
  without non-conservative heads is refused in one line.

Tolerances: float64 1e-10 relative (energies to the energy, forces and stresses to their largest
component); float32 1e-5, the same arithmetic in another order (metatomic-ase's neighbour list
comes in vesin's order, ours is cut from one full list: float32 sums in another order differ
by a few ulps of the largest terms).
"""

from __future__ import annotations

import subprocess
import sys

import ase.io
import numpy as np
import pytest
from refusals import assert_refused

pytest.importorskip("metatomic.torch", reason="metatomic-torch not installed: pip install -e .[metatomic]")

import ipi_sim  # noqa: E402
from families import envs  # noqa: E402
from ipi.utils.units import unit_to_internal  # noqa: E402
from test_lammps import bridge_run, no_leftovers, read_dump, thermo, write_data  # noqa: E402, F401
from test_lammps_domain import _ok, _water_deck, domain_run  # noqa: E402
from test_metatomic import XML, _ipi_metatomic_driver, _read_binary_frames, ffrotations_around_ipi_driver  # noqa: E402

from mlip_server import processes  # noqa: E402
from mlip_server.ase_calculator import MLIPCalculator  # noqa: E402
from mlip_server.core.evaluator import Structure  # noqa: E402
from mlip_server.loading import load_evaluator  # noqa: E402
from mlip_server.structures import water_box  # noqa: E402

TOL = {"pet64": 1e-10, "pet64b": 1e-10, "pet32": 1e-5}
HARTREE = unit_to_internal("energy", "electronvolt", 1.0)  # Ha per eV
# i-PI's driver converts forces with its 8-digit 'ev/ang' constant; our server with energy/length
# (test_metatomic.py): the ratio undoes that 1e-7 relative difference before demanding 1e-10
FORCE_RATIO = HARTREE / unit_to_internal("length", "angstrom", 1.0) / unit_to_internal("force", "ev/ang", 1.0)
NKTV2P = 1.6021765e6  # LAMMPS metal units: bar per eV/Å³ (its own constant, src/update.cpp)


@pytest.fixture(scope="module")
def built():
    """The build folder: pet64.pt, pet64b.pt, pet32.pt, structures.extxyz, ref-*.npz."""
    return envs.built("metatrain")


@pytest.fixture(scope="module")
def structures(built):
    frames = ase.io.read(built / "structures.extxyz", index=":")
    names = [a.info["name"] for a in frames]
    assert "molecule" in names
    if envs.ROOT.parent.joinpath("shared", "data", "dft").exists():
        assert names[:3] == ["dft-100", "dft-150", "dft-189"] and names[-1] == "ice", names
    return frames


def _refs(built, name):
    with np.load(built / f"ref-{name}.npz") as data:
        return {key: data[key] for key in data.files}


def _model(built, name):
    return str(built / f"{name}.pt")


def _assert_same(got: dict, ref: dict, tol: float, what: str):
    """energy (relative), forces and stress (relative to their largest component)."""
    e = abs(got["energy"] - ref["energy"]) / abs(ref["energy"])
    f = np.abs(got["forces"] - ref["forces"]).max() / np.abs(ref["forces"]).max()
    errors = {"energy": e, "forces": f}
    if "stress" in ref:
        errors["stress"] = np.abs(got["stress"] - ref["stress"]).max() / np.abs(ref["stress"]).max()
    if "energies" in ref and "energies" in got:
        errors["energies"] = np.abs(got["energies"] - ref["energies"]).max() / np.abs(ref["energies"]).max()
    print(f"{what}: " + ", ".join(f"{k} {v:.2g}" for k, v in errors.items()))
    assert all(v <= tol for v in errors.values()), (what, errors)


def _stress(virial, atoms):
    """ASE's stress of a virial: −sym(W)/V (eV/Å³)."""
    w = 0.5 * (virial + virial.T)
    return -w / atoms.get_volume()


# --------------------------------------------------------------------------- in-process, ASE
@pytest.mark.parametrize("name", ["pet64", "pet32"])
def test_evaluator_and_ase_calculator_equal_metatomic_ase(built, structures, name):
    """All structures in one batched call of the Evaluator, each with per-atom energies, and our
    ASE calculator structure by structure = metatomic-ase's calculator."""
    ref = _refs(built, name)
    ev = load_evaluator(_model(built, name))
    assert str(ev.dtype) == ("torch.float64" if name == "pet64" else "torch.float32")
    batch = [
        Structure.from_ase(a)
        if not a.pbc.all()
        else Structure(**{**vars(Structure.from_ase(a)), "per_atom": True})
        for a in structures
    ]
    results = ev.compute(batch)
    calc = MLIPCalculator(ev)
    for k, (atoms, res) in enumerate(zip(structures, results)):
        mine = {key.split("/")[1]: v for key, v in ref.items() if key.startswith(f"{k}/")}
        got = {"energy": res.energy, "forces": res.forces}
        if atoms.pbc.all():
            got["stress"] = _stress(res.virial, atoms)
            got["energies"] = res.atom_energies
        _assert_same(got, mine, TOL[name], f"{name} evaluator {atoms.info['name']}")
        a = atoms.copy()
        a.calc = calc
        got = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
        if atoms.pbc.all():
            got["stress"] = a.get_stress(voigt=False)
        _assert_same(got, mine, TOL[name], f"{name} ASE calculator {atoms.info['name']}")
        assert np.abs(mine["forces"]).max() > 1e-5  # not all zero (the molecule: 6e-4 eV/Å)


def test_direct_forces_equal_the_non_conservative_heads(built, structures):
    """``direct``: the energy and the model's non_conservative_force (net force removed, as
    metatomic-ase does) and non_conservative_stress (the virial −σV) = metatomic-ase with
    ``non_conservative=True``; they differ from the conservative ones (another head)."""
    ref, conservative = _refs(built, "pet64-nc"), _refs(built, "pet64")
    ev = load_evaluator(_model(built, "pet64"))
    assert ev.model.direct_forces and ev.model.direct_virial
    results = ev.compute([Structure.from_ase(a) for a in structures], "direct")
    for k, (atoms, res) in enumerate(zip(structures, results)):
        mine = {key.split("/")[1]: v for key, v in ref.items() if key.startswith(f"{k}/")}
        got = {"energy": res.energy, "forces": res.forces}
        if atoms.pbc.all():
            got["stress"] = _stress(res.virial, atoms)
        _assert_same(got, mine, 1e-10, f"direct {atoms.info['name']}")
        assert np.abs(res.forces.sum(axis=0)).max() < 1e-10
        assert np.abs(res.forces - conservative[f"{k}/forces"]).max() > 1e-3


def test_committee_of_two_pets_is_the_mean_of_metatomic_ase(built, structures):
    a, b = _refs(built, "pet64"), _refs(built, "pet64b")
    ev = load_evaluator([_model(built, "pet64"), _model(built, "pet64b")])
    results = ev.compute([Structure.from_ase(s) for s in structures])
    for k, (atoms, res) in enumerate(zip(structures, results)):
        mean = {
            key: 0.5 * (a[f"{k}/{key}"] + b[f"{k}/{key}"])
            for key in ("energy", "forces", "stress")
            if f"{k}/{key}" in a
        }
        got = {"energy": res.energy, "forces": res.forces}
        if atoms.pbc.all():
            got["stress"] = _stress(res.virial, atoms)
        _assert_same(got, mean, 1e-10, f"committee {atoms.info['name']}")
        # every member = its own metatomic-ase result
        np.testing.assert_allclose(res.committee.energies, [a[f"{k}/energy"], b[f"{k}/energy"]], rtol=1e-10)
        scale = np.abs(a[f"{k}/forces"]).max()
        np.testing.assert_allclose(
            res.committee.forces, [a[f"{k}/forces"], b[f"{k}/forces"]], rtol=0, atol=1e-10 * scale
        )
        assert abs(a[f"{k}/energy"] - b[f"{k}/energy"]) > 1e-3  # two different models


def test_pet_energies_reach_one_cutoff_further_than_its_export_declares(built, structures):
    """The energy of a slab of the ice cell's atoms from a cluster of them and their periodic
    images within R: metatrain's PET declares 7 Å (2 GNN layers × 3.5 Å), but its feedforward
    featurizer exchanges edge messages once more after the last layer, so the energy still changes
    between R = 7 and 7.5 Å and is exact from (2 + 1) × 3.5 = 10.5 Å: the range the server uses
    (the domain route's ghost shell)."""
    from ase.neighborlist import neighbor_list

    (ice,) = [a for a in structures if a.info["name"] == "ice"]
    ev = load_evaluator(_model(built, "pet64"))
    assert float(ev.model.module.capabilities().interaction_range) == 7.0
    assert ev.model.interaction_range == 10.5
    owned = np.flatnonzero(ice.get_scaled_positions()[:, 0] < 0.25)
    whole = ev.compute([Structure(**{**vars(Structure.from_ase(ice)), "per_atom": True})])[0]
    target = whole.atom_energies[owned].sum()
    cell = np.array(ice.cell[:])

    def slab_energy(reach):
        i, j, shifts = neighbor_list("ijS", ice, reach)
        mine = set(owned.tolist())
        images = {(int(b), tuple(s)) for a, b, s in zip(i, j, shifts) if a in mine}
        images -= {(int(a), (0, 0, 0)) for a in owned}
        images = sorted(images)
        x = np.concatenate([ice.positions[owned], [ice.positions[b] + np.array(s) @ cell for b, s in images]])
        z = np.concatenate([ice.numbers[owned], [ice.numbers[b] for b, _ in images]])
        return ev.compute([Structure(x, z, owned=len(owned))])[0].energy

    declared, corrected = slab_energy(7.0), slab_energy(10.5)
    print(f"slab energy error: declared 7 Å {declared - target:.3g} eV, 10.5 Å {corrected - target:.3g} eV")
    assert abs(declared - target) > 1e-7
    assert abs(corrected - target) <= 1e-10 * abs(target)


# --------------------------------------------------------------------------- i-PI
def _ipi_pair(tmp_path, model, atoms, beads, ours_spec="", driver_options=""):
    """One i-PI run, two forcefields on the same configurations at every step: our server (weight
    1, one connection per bead) and i-PI's own metatomic driver (weight 0). Returns sim.out's
    energies (Ha) [steps, beads] of each, and their forces per bead (atomic units)."""
    ipi_sim.write_init(atoms, tmp_path / "init.xyz")
    ours, theirs = processes.unique_name("mlip-test"), processes.unique_name("mlip-test")
    energies = ", ".join(f"pot_component_raw(index={k};bead={b})" for b in range(beads) for k in (0, 1))
    trajectories = "".join(
        f"    <trajectory filename='f{k}_{b}' stride='1' format='bin' bead='{b}'> "
        f"forces_component_raw({k}) </trajectory>\n"
        for b in range(beads)
        for k in (0, 1)
    )
    xml = XML.format(ours=ours, theirs=theirs, beads=beads, energies=energies, trajectories=trajectories)
    (tmp_path / "input.xml").write_text(
        xml.replace("<total_steps>8</total_steps>", "<total_steps>4</total_steps>")
    )
    ipi = processes.start_ipi("input.xml", tmp_path)
    driver = server = None
    try:
        processes.wait_for_socket(theirs, ipi)
        driver = _ipi_metatomic_driver(theirs, model, tmp_path, driver_options)
        server = processes.start_server(model, "init.xyz", [f"unix:{ours}{ours_spec}"] * beads, tmp_path)
        codes = processes.wait([ipi, driver, server], 240)
    finally:
        processes.stop([ipi, driver, server], [ours, theirs])
    assert codes[0] == 0 and codes[2] == 0, (tmp_path / "ipi.log").read_text()[-2000:]
    props = np.loadtxt(tmp_path / "sim.out")
    assert props.shape == (5, 1 + 2 * beads)
    forces = [
        (
            np.array(_read_binary_frames(tmp_path / f"sim.f0_{b}.bin")),
            np.array(_read_binary_frames(tmp_path / f"sim.f1_{b}.bin")),
        )
        for b in range(beads)
    ]
    return props[:, 1::2], props[:, 2::2], forces


def test_ipi_server_equals_ipi_metatomic_driver_and_metatomic_ase(tmp_path, built, structures):
    """4 beads of a DFT frame (192 atoms), 4 PIMD steps: our server = i-PI's driver at every step
    and bead, and the first step (every bead at the frame) = metatomic-ase."""
    k = 0
    atoms = structures[k]
    model = _model(built, "pet64")
    e_ours, e_ipi, forces = _ipi_pair(tmp_path, model, atoms, beads=4)
    assert np.ptp(e_ours[:, 0]) > 1e-6  # the configurations change
    np.testing.assert_allclose(e_ours, e_ipi, rtol=1e-10, atol=0)
    for f_ours, f_ipi in forces:
        assert f_ours.shape == f_ipi.shape == (5, len(atoms), 3)
        np.testing.assert_allclose(f_ours, f_ipi * FORCE_RATIO, rtol=0, atol=1e-10 * np.abs(f_ours).max())
    ref = _refs(built, "pet64")
    np.testing.assert_allclose(e_ours[0], ref[f"{k}/energy"] * HARTREE, rtol=1e-10, atol=0)
    f0 = forces[0][0][0] / (HARTREE / unit_to_internal("length", "angstrom", 1.0))  # eV/Å
    np.testing.assert_allclose(f0, ref[f"{k}/forces"], rtol=0, atol=1e-10 * np.abs(f0).max())


def test_ipi_ffdirect_equals_metatomic_ase(tmp_path, built, structures):
    """i-PI's <ffdirect> (the server's evaluator inside i-PI, no socket), 2 beads batched: the
    first step's potential of every bead (at the DFT frame) = metatomic-ase's energy."""
    out = ipi_sim.run(
        tmp_path, structures[0], _model(built, "pet64"), steps=2, nbeads=2, batch=2, ffdirect=True
    )
    assert out.codes[0] == 0, out.ipi_log[-2000:]
    energy = _refs(built, "pet64")["0/energy"]
    assert out.properties.shape == (3, 4)
    assert abs(out.properties[0, 3] - energy) <= 1e-10 * abs(energy), (out.properties[0, 3], energy)
    assert np.ptp(out.properties[:, 3]) > 1e-6  # and then it moves


def test_averaged_equals_ipi_ffrotations_around_ipi_driver(tmp_path, built):
    """i-PI's <ffrotations> (legendre 2 + inversion, 36 rotations) around i-PI's own metatomic
    driver on the real PET = our ``2i`` endpoint on the same file: no code of ours on the
    reference side. PET is not rotation-invariant, so the average differs from the raw energy."""
    model = _model(built, "pet64")
    atoms = water_box(8, seed=6)
    props = ffrotations_around_ipi_driver(tmp_path, model, atoms, steps=3)
    assert len(props) == 4
    raw_energy = load_evaluator(model).compute([Structure.from_ase(atoms)])[0].energy
    assert abs(props[0, 1] - raw_energy * HARTREE) > 1e-7  # averaging changes the energy
    np.testing.assert_allclose(props[:, 2], props[:, 1], rtol=1e-10, atol=0)


def test_direct_endpoint_equals_ipi_driver_non_conservative(tmp_path, built):
    """Our ``=direct`` endpoint = i-PI's driver with ``non_conservative=True`` on the same run."""
    model = _model(built, "pet64")
    atoms = water_box(8, seed=5)
    e_ours, e_ipi, forces = _ipi_pair(
        tmp_path, model, atoms, beads=1, ours_spec="=direct", driver_options=",non_conservative=True"
    )
    assert "direct forces (no backward pass" in (tmp_path / "server.log").read_text()
    assert np.ptp(e_ours[:, 0]) > 1e-6
    np.testing.assert_allclose(e_ours, e_ipi, rtol=1e-10, atol=0)
    f_ours, f_ipi = forces[0]
    assert np.abs(f_ours.sum(axis=1)).max() < 1e-10  # the net force is removed on both sides
    np.testing.assert_allclose(f_ours, f_ipi * FORCE_RATIO, rtol=0, atol=1e-10 * np.abs(f_ours).max())


# --------------------------------------------------------------------------- LAMMPS
PRESSURE = ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")


def _deck(folder, data, per_atom=False):
    return _water_deck(folder, data, steps=2, every=1, per_atom=per_atom, virial=True)


@pytest.fixture(scope="module")
def ice(structures, tmp_path_factory):
    (atoms,) = [a for a in structures if a.info["name"] == "ice"] or [None]
    if atoms is None:
        pytest.fail("no ice cell in the build: ../shared/data/structures/ice is missing")
    return atoms, write_data(atoms, tmp_path_factory.mktemp("ice") / "ice.data", ["O", "H"])


@pytest.fixture(scope="module")
def lammps_gather(tmp_path_factory, built, ice):
    folder = tmp_path_factory.mktemp("gather")
    deck = _deck(folder, ice[1])
    _ok(bridge_run(folder, deck, _model(built, "pet64"), ["O", "H"]))
    return folder


def test_lammps_gather_first_step_equals_metatomic_ase(built, structures, ice, lammps_gather):
    """Step 0 of the gather route on the ice cell (288 atoms): energy, forces and the virial
    pressure tensor (LAMMPS's bar) = metatomic-ase."""
    k = [a.info["name"] for a in structures].index("ice")
    ref = _refs(built, "pet64")
    log = thermo(lammps_gather / "log.lammps")
    assert abs(log["PotEng"][0] - ref[f"{k}/energy"]) <= 1e-10 * abs(ref[f"{k}/energy"])
    stress = ref[f"{k}/stress"]
    want = -NKTV2P * np.array(
        [stress[0, 0], stress[1, 1], stress[2, 2], stress[0, 1], stress[0, 2], stress[1, 2]]
    )
    got = np.array([log[f"c_pvir[{j}]"][0] for j in range(1, 7)])
    assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max(), (got, want)
    first = ase.io.read(
        lammps_gather / "traj.dump", index=0, format="lammps-dump-text", specorder=["O", "H"], order=True
    )
    f = first.get_forces()
    assert np.abs(f - ref[f"{k}/forces"]).max() <= 1e-10 * np.abs(f).max()


def _same_as_gather(ref_dir, got_dir, tol=1e-10):
    ref, got = thermo(ref_dir / "log.lammps"), thermo(got_dir / "log.lammps")
    assert len(ref["Step"]) == len(got["Step"]) == 3
    energy = np.abs(got["PotEng"] - ref["PotEng"]).max() / np.abs(ref["PotEng"]).max()
    tensor_ref = np.stack([ref[k] for k in PRESSURE])
    pressure = np.abs(np.stack([got[k] for k in PRESSURE]) - tensor_ref).max() / np.abs(tensor_ref).max()
    fa = read_dump(ref_dir / "traj.dump", ["O", "H"]).get_forces()
    fb = read_dump(got_dir / "traj.dump", ["O", "H"]).get_forces()
    forces = np.abs(fa - fb).max() / np.abs(fa).max()
    print(f"domain vs gather, relative: energy {energy:.2g}, pressure {pressure:.2g}, forces {forces:.2g}")
    assert energy <= tol and pressure <= tol and forces <= tol, (energy, pressure, forces)
    return got


def test_lammps_domain_two_ranks_with_per_atom_outputs_equals_gather(tmp_path, built, ice, lammps_gather):
    """2 ranks, PET's per-atom energies (compute pe/atom) and virials (stress/atom)."""
    deck = _deck(tmp_path, ice[1], per_atom=True)
    result = domain_run(tmp_path, deck, _model(built, "pet64"), ["O", "H"], 2, bridge_args=["--per-atom"])
    _ok(result)
    assert "interaction range 10.5 Å (declared)" in result.bridge_output  # (2 GNN layers + 1) × 3.5 Å
    got = _same_as_gather(lammps_gather, tmp_path)
    assert np.abs(got["c_pesum"] - got["PotEng"]).max() <= 1e-10 * np.abs(got["PotEng"]).max()
    scale = max(np.abs(got[f"c_pvir[{k}]"] * got["v_vol"]).max() for k in range(1, 7))
    for k in range(1, 7):
        total = got[f"c_pvir[{k}]"] * got["v_vol"]
        assert np.abs(-got[f"c_ssum[{k}]"] - total).max() <= 1e-10 * scale, k


def test_lammps_domain_three_ranks_equals_gather(tmp_path, built, ice, lammps_gather):
    """3 ranks of a 13.5 Å cell with a 10.5 Å range: subdomains thinner than the ghost shell."""
    deck = _deck(tmp_path, ice[1])
    _ok(domain_run(tmp_path, deck, _model(built, "pet64"), ["O", "H"], 3))
    _same_as_gather(lammps_gather, tmp_path)


# --------------------------------------------------------------------------- --check, refusals
def test_check_names_the_family_and_what_it_read(tmp_path, built):
    water_box(8, seed=2).write(tmp_path / "water.xyz")
    done = subprocess.run(
        [sys.executable, "-m", "mlip_server.ipi.serve", "--check", "--model", _model(built, "pet64")]
        + ["--structure", str(tmp_path / "water.xyz")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for line in (
        "metatomic file of a PET model 'tiny PET pet64' by mlip_server test suite",
        "references: architecture: https://arxiv.org/abs/2305.19302v3; model: https://github.com/metatensor/metatrain",
        "outputs: energy (per atom, eV), non_conservative_force, non_conservative_stress; also ",
        "atomic types [1, 8]; declared interaction range 7 Å; neighbour lists 3.5 Å full; dtype float64",
        "interaction range 10.5 Å, not the declared 7 Å: metatrain's PET with the feedforward featurizer",
        "direct forces from non_conservative_force and a virial from non_conservative_stress "
        "(--forces direct)",
        "exported with metatomic-torch 0.1.19, torch 2.13.0",
        "LAMMPS domain route (energy of the owned atoms): yes",
        "direct (non-conservative) forces: yes, with a direct virial",
    ):
        assert line in out, (line, out)
    lines = load_evaluator(_model(built, "pet32")).model.describe()
    assert "dtype float32" in lines[3] and not any("direct forces" in line for line in lines), lines


def test_direct_endpoint_on_a_pet_without_direct_heads_is_refused(tmp_path, built):
    water_box(8, seed=2).write(tmp_path / "water.xyz")
    done = subprocess.run(
        [sys.executable, "-m", "mlip_server.ipi.serve", "--model", _model(built, "pet64b")]
        + ["--structure", str(tmp_path / "water.xyz"), "--address", "unix:never-used=direct"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_refused(done, "asks for direct forces", "has none", "drop 'direct'")
