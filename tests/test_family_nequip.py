"""NequIP and Allegro packages of nequip-compile, served by the project against nequip's own code.

The models are real (nequip's NequIPGNNModel and Allegro's AllegroModel for H and O, r_max 4.5
Å, trained for two epochs on DFT water frames) and compiled by nequip-compile (AOTInductor, CPU) in
the nequip venv (tests/families/nequip/build.py, cached); the project's venv serves them with
torch alone. The references are nequip's own ASE calculator on the model's checkpoint (the eager
model and nequip's neighbour list), on the build's structures (DFT frames, a water molecule, the
ice cell) and on the configurations the engines produced (i-PI beads, LAMMPS steps: build.py
--reference). Checked:

* in-process Evaluator (all structures in one call) and our ASE calculator = nequip's calculator:
  energies, forces, virial W = −σV (float64 packages to 1e-10 relative, float32 to 1e-5), and
  so do the TorchScript files (``--mode torchscript``) of the float64 checkpoints;
* real i-PI over a socket, 4 beads (several per package call) = nequip on every bead and step;
  i-PI's <ffdirect> = nequip;
* LAMMPS gather = nequip on the dumped steps; the Allegro package decomposed on 2 and 3 ranks
  (owned atoms' edges only) = gather, with --per-atom on 2 ranks (per-atom energies and
  stresses sum to the totals); NequIP's domain route refused in one line;
* structures below the programs' smallest sizes (a lone atom, no edge) = nequip;
* rotational averaging (2i) = the raw model (both models are equivariant, so this checks that
  every rotated copy is rotated back), a committee of the two packages = the mean of the two;
* refusals (a package compiled for another device, one without nequip's metadata, a dtype it was
  not compiled in) in one line, exit 2; ``mlip-server --check`` names the family.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from families import envs
from refusals import assert_refused

from mlip_server import processes
from mlip_server.core.errors import ModelError
from mlip_server.core.graph import Structure
from mlip_server.formats import formats, load_model
from mlip_server.formats.nequip import NequIPModel, is_nequip_package
from mlip_server.loading import load_evaluator

F64 = ("nequip-f64", "allegro-f64")
TOL = {
    "nequip-f64": 1e-10,
    "allegro-f64": 1e-10,
    "nequip-f32": 1e-5,
    "nequip-f64.pth": 1e-10,
    "allegro-f64.pth": 1e-10,
}
"""Relative tolerances (energy: of |E|; forces and virial: of the largest component). float64:
the compiled program and nequip's eager model differ by AOTInductor's reordering of sums only
(measured on the build's structures: energy 4e-16, forces 4e-14, virial 4e-14). float32: the
package and nequip's float32 eager model round the float32 network differently (measured: forces
5e-7, virial 3e-7; the energy 3e-11, its per-atom shifts are added in float64); 1e-5, the
project's float32 bound, is 20 times that."""


@pytest.fixture(scope="module")
def build():
    return envs.built("nequip")


@pytest.fixture(scope="module")
def structures(build):
    import ase.io

    return ase.io.read(build / "structures.xyz", index=":")


@pytest.fixture(scope="module")
def references(build):
    return json.loads((build / "references.json").read_text())


def package(build, name) -> str:
    """The AOTInductor package of model ``name``, or its TorchScript file for ``name.pth``."""
    if name.endswith(".pth"):
        return str(build / f"{name.removesuffix('.pth')}.nequip.pth")
    return str(build / f"{name}.nequip.pt2")


def nequip_reference(build, name, frames, workdir) -> list:
    """nequip's own calculator (the model's checkpoint) on ASE ``frames``, in the nequip venv."""
    import ase.io

    # an ASE trajectory keeps every bit of the positions (extended XYZ rounds them to 1e-8 Å,
    # which moves forces by ~1e-8 relative)
    src, out = Path(workdir) / f"ref-{name}.traj", Path(workdir) / f"ref-{name}.json"
    ase.io.write(src, [f.copy() for f in frames])
    envs.run_in("nequip", "build.py", "--reference", build, name, src, out)
    return json.loads(out.read_text())


def virial_of(ref, atoms) -> np.ndarray:
    """W = −σ V of nequip's stress (ASE's Voigt order xx yy zz yz xz xy), eV."""
    from ase.stress import voigt_6_to_full_3x3_stress

    return -voigt_6_to_full_3x3_stress(np.array(ref["stress"])) * atoms.get_volume()


def assert_close(name, got_e, got_f, ref_e, ref_f, got_w=None, ref_w=None, what=""):
    tol = TOL[name]
    assert abs(got_e - ref_e) <= tol * abs(ref_e), (what, got_e, ref_e, (got_e - ref_e) / ref_e)
    scale = np.abs(ref_f).max()
    assert scale > 1e-3
    assert np.abs(np.asarray(got_f) - ref_f).max() <= tol * scale, (what, np.abs(got_f - ref_f).max() / scale)
    if ref_w is not None:
        scale = np.abs(ref_w).max()
        assert scale > 1e-4
        assert np.abs(got_w - ref_w).max() <= tol * scale, (what, np.abs(got_w - ref_w).max() / scale)


# --------------------------------------------------------------------------- loading
def test_the_format_tells_nequip_packages_from_others(tmp_path, build, toy_model):
    names = list(formats())
    assert names.index("nequip") < names.index("compiled") < names.index("contract")
    assert is_nequip_package(package(build, "nequip-f64"))
    assert not is_nequip_package(toy_model)  # a TorchScript zip of the project's contract
    for name in ("allegro-f64", "allegro-f64.pth"):  # recognised by the metadata, not the name
        plain = tmp_path / f"copy-without-suffix-{name}"
        shutil.copy(package(build, name), plain)
        assert is_nequip_package(str(plain))
        assert isinstance(load_model(str(plain)), NequIPModel)


def test_what_the_server_reads_from_the_packages(build):
    nequip, allegro, f32 = (
        load_model(package(build, n)) for n in ("nequip-f64", "allegro-f64", "nequip-f32")
    )
    for m in (nequip, allegro, f32):
        assert m.cutoff == 4.5 and m.species == [1, 8] and m.type_names == ["H", "O"]
    assert str(f32.dtype) == "torch.float32" and str(nequip.dtype) == "torch.float64"
    # NequIP: 2 message-passing layers (probed), the batch target; its owned atoms cannot be counted
    assert nequip.batched and not nequip.images and nequip.layers == 2
    assert nequip.interaction_range == 9.0 and not nequip.sums_atomic_energies
    assert "message-passing" in nequip.subset_refusal and "--decomposition gather" in nequip.subset_refusal
    # Allegro: strictly local, the pair_allegro target (one frame, images as atoms)
    assert not allegro.batched and allegro.images and allegro.strictly_local
    assert allegro.interaction_range == 4.5 and allegro.sums_atomic_energies
    lines = "\n".join(nequip.describe() + allegro.describe())
    assert "types H→1 O→8" in lines and "message passing over 2 hops" in lines
    assert "strictly local" in lines and "periodic images given as atoms" in lines
    # the TorchScript files (--mode torchscript) of the same checkpoints: the same conclusions
    nequip_ts, allegro_ts = (load_model(package(build, n)) for n in ("nequip-f64.pth", "allegro-f64.pth"))
    assert (
        nequip_ts.torchscript and nequip_ts.batched and nequip_ts.layers == 2 and not nequip_ts.strictly_local
    )
    assert allegro_ts.torchscript and allegro_ts.strictly_local and not allegro_ts.images
    assert "TorchScript file of nequip-compile (--mode torchscript)" in nequip_ts.describe()[0]


# --------------------------------------------------------------------------- in-process, ASE
@pytest.mark.parametrize(
    "name", ["nequip-f64", "allegro-f64", "nequip-f32", "nequip-f64.pth", "allegro-f64.pth"]
)
def test_evaluator_and_ase_calculator_equal_nequips_calculator(build, structures, references, name):
    """``name.pth``: the TorchScript file of the same checkpoint (the same references)."""
    from mlip_server.ase_calculator import MLIPCalculator

    refs = references[name.removesuffix(".pth")]
    assert [r["name"] for r in refs] == [a.info["name"] for a in structures]
    assert {"dft-100", "molecule", "ice"} <= {r["name"] for r in refs}  # the shipped data is here
    ev = load_evaluator(package(build, name))
    results = ev.compute([Structure.from_ase(a) for a in structures])  # one call: batched
    calc = MLIPCalculator(package(build, name))
    for atoms, ref, res in zip(structures, refs, results):
        ref_w = virial_of(ref, atoms)
        assert_close(
            name,
            res.energy,
            res.forces,
            ref["energy"],
            np.array(ref["forces"]),
            res.virial,
            ref_w,
            ref["name"],
        )
        a = atoms.copy()
        a.calc = calc
        assert_close(name, a.get_potential_energy(), a.get_forces(), ref["energy"], np.array(ref["forces"]))
        if a.pbc.all():
            stress = a.get_stress(voigt=True)
            scale = np.abs(ref["stress"]).max()
            assert np.abs(stress - ref["stress"]).max() <= TOL[name] * scale


def test_rotational_averaging_and_a_committee(build, structures, references):
    """2i (i-PI's Legendre/Euler grid of order 2, 18 rotations, and their inversions: 36 copies)
    of an E(3)-equivariant model (parity: true) = the raw model, to rounding: every rotated
    copy's forces and virial come back in the original frame. A committee of the
    two float64 packages (different architectures) serves the mean of their energies."""
    ice = next(a for a in structures if a.info["name"] == "ice")
    s = Structure.from_ase(ice)
    for name in F64:
        ev = load_evaluator(package(build, name))
        raw, avg = ev.compute([s])[0], ev.compute([s], "2i")[0]
        assert avg.extras["n_rotations"] > 10
        assert abs(avg.energy - raw.energy) <= 1e-10 * abs(raw.energy)
        assert np.abs(avg.forces - raw.forces).max() <= 1e-9 * np.abs(raw.forces).max()
        assert np.abs(avg.virial - raw.virial).max() <= 1e-9 * np.abs(raw.virial).max()
    res = load_evaluator([package(build, n) for n in F64]).compute([s])[0]
    k = [r["name"] for r in references["nequip-f64"]].index("ice")
    energies = [references[n][k]["energy"] for n in F64]
    np.testing.assert_allclose(res.committee.energies, energies, rtol=1e-10)
    assert res.energy == pytest.approx(np.mean(energies), rel=1e-10)
    assert res.extras["committee_energy_std"] > 1e-3


def test_owned_atoms_and_per_atom_outputs_of_allegro(build, structures, references):
    """The domain route's questions on a cluster (first atoms owned): the energy of the owned atoms
    (nequip's own per-atom energies summed) and the forces of that energy on every atom, which sum
    to zero; per atom (``--per-atom``): nequip's atomic energies, and per-atom virials (from each
    edge's own image atom) that sum to the virial, raw and averaged. NequIP refuses both (the
    Evaluator's line; the LAMMPS bridge prints the adapter's, which names the reason: see
    test_lammps_domain_route_refuses_nequip_in_one_line)."""
    frame = structures[0]
    ref = references["allegro-f64"][0]
    cell, owned = np.array(frame.cell[:]), 60
    ev = load_evaluator(package(build, "allegro-f64"))
    res = ev.compute([Structure(frame.positions, frame.numbers, cell, frame.pbc, owned=owned)])[0]
    assert res.energy == pytest.approx(float(np.sum(ref["energies"][:owned])), rel=1e-10)
    assert np.abs(res.forces.sum(axis=0)).max() < 1e-9
    assert np.abs(res.forces[owned:]).max() > 1e-3  # ghosts feel the owned atoms
    whole = Structure(frame.positions, frame.numbers, cell, frame.pbc)
    per_atom = Structure(frame.positions, frame.numbers, cell, frame.pbc, per_atom=True)
    plain = ev.compute([whole])[0]
    for spec in ("none", "i"):
        got = ev.compute([per_atom], spec)[0]
        np.testing.assert_allclose(got.atom_energies, ref["energies"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.forces, plain.forces, rtol=0, atol=1e-12)
        scale = np.abs(plain.virial).max()
        np.testing.assert_allclose(got.atom_virials.sum(axis=0), plain.virial, rtol=0, atol=1e-10 * scale)
        assert np.abs(got.atom_virials).max() > 1e-3 * scale
    with pytest.raises(ModelError, match="use --decomposition gather"):
        load_evaluator(package(build, "nequip-f64")).compute([per_atom])


def test_structures_below_the_programs_smallest_sizes(tmp_path, build):
    """nequip-compile's programs take at least 2 atoms and 2 edges: a lone atom and two atoms
    beyond r_max get two padding atoms beyond the cutoff of each other (no force, no virial, their
    energies dropped). Allegro's single-frame package = nequip's calculator on them."""
    from ase import Atoms

    name = "allegro-f64"
    tiny = [
        Atoms("O", positions=[[5.0, 5, 5]]),
        Atoms("OH", positions=[[2.0, 5, 5], [8.0, 5, 5]]),
        Atoms("OHH", positions=[[5.0, 5, 5], [5.95, 5.1, 5], [9.5, 5, 5]]),  # one pair within r_max
    ]
    for atoms in tiny:
        atoms.set_cell([10.0, 10.0, 10.0])
    refs = nequip_reference(build, name, tiny, tmp_path)
    results = load_evaluator(package(build, name)).compute([Structure.from_ase(a) for a in tiny])
    for atoms, ref, res in zip(tiny, refs, results):
        assert res.energy == pytest.approx(ref["energy"], rel=1e-12)
        np.testing.assert_allclose(res.forces, ref["forces"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.virial, virial_of(ref, atoms), rtol=0, atol=1e-12)
    assert np.abs(results[2].forces).max() > 1e-3


# --------------------------------------------------------------------------- i-PI
IPI = """<simulation verbosity='low' floatformat='%25.16e'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [step, {energies}] </properties>
{trajectories}  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>27</seed></prng>
  <ffsocket name='ours' mode='unix' pbc='false'><address>{address}</address><latency>1e-4</latency></ffsocket>
  <system>
    <initialize nbeads='{beads}'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces><force forcefield='ours' weight='1'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='nvt'><timestep units='femtosecond'>0.5</timestep>
      <thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat></dynamics></motion>
  </system>
</simulation>"""


def read_ipi_binary(path, natoms):
    """Frames of an i-PI ``format='bin'`` trajectory: (cell h [3,3], q [natoms,3]), atomic units.
    Per frame: h (9 float64), natoms (int64), q (3N float64), the length L of the '|'-joined names
    (int64), the names (L UTF-32 characters), a title (UTF-32, printable ASCII, unknown length)."""
    data = Path(path).read_bytes()
    frames, at = [], 0
    while at < len(data):
        h = np.frombuffer(data, np.float64, 9, at).reshape(3, 3)
        assert int(np.frombuffer(data, np.int64, 1, at + 72)[0]) == natoms
        q = np.frombuffer(data, np.float64, 3 * natoms, at + 80).reshape(natoms, 3)
        at += 80 + 24 * natoms
        at += 8 + 4 * int(np.frombuffer(data, np.int64, 1, at)[0])
        while at + 4 <= len(data) and 32 <= data[at] < 127 and data[at + 1 : at + 4] == b"\0\0\0":
            at += 4
        frames.append((h.copy(), q.copy()))
    return frames


def test_ipi_beads_over_a_socket_equal_nequip(tmp_path, build, structures):
    """4 beads, 3 PIMD steps of a 192-atom DFT frame through mlip-server (4 connections; the
    server evaluates the 4 beads in one package call): each bead's energy and forces as i-PI
    received them = nequip's calculator on that bead's positions."""
    from ase import Atoms
    from ipi.utils.units import unit_to_internal

    from mlip_server.structures import write_ipi_xyz

    name, beads, steps = "nequip-f64", 4, 3
    atoms = structures[0]
    n = len(atoms)
    write_ipi_xyz(atoms, tmp_path / "init.xyz")
    address = processes.unique_name("mlip-test")
    energies = ", ".join(f"pot_component_raw(index=0;bead={b})" for b in range(beads))
    trajectories = "".join(
        f"    <trajectory filename='{what}{b}' stride='1' format='bin' bead='{b}'> {what} </trajectory>\n"
        for b in range(beads)
        for what in ("positions", "forces")
    )
    (tmp_path / "input.xml").write_text(
        IPI.format(address=address, beads=beads, steps=steps, energies=energies, trajectories=trajectories)
    )
    ipi = processes.start_ipi("input.xml", tmp_path)
    server = None
    try:
        processes.wait_for_socket(address, ipi)
        server = processes.start_server(
            package(build, name), "init.xyz", [f"unix:{address}"] * beads, tmp_path, extra=["--threads", "1"]
        )
        codes = processes.wait([ipi, server], 240)
    finally:
        processes.stop([ipi, server], [address])
    assert codes == [0, 0], (tmp_path / "ipi.log").read_text()[-2000:] + (
        tmp_path / "server.log"
    ).read_text()[-2000:]
    props = np.loadtxt(tmp_path / "sim.out")
    assert props.shape == (steps + 1, 1 + beads)
    bohr = unit_to_internal("length", "angstrom", 1.0)
    hartree = unit_to_internal("energy", "electronvolt", 1.0)
    frames, got_f = [], []
    for b in range(beads):
        (pos_file,) = tmp_path.glob(f"sim.positions{b}_*.bin")  # i-PI appends the bead's index
        (frc_file,) = tmp_path.glob(f"sim.forces{b}_*.bin")
        pos, frc = read_ipi_binary(pos_file, n), read_ipi_binary(frc_file, n)
        assert len(pos) == len(frc) == steps + 1
        for (h, q), (_, f) in zip(pos, frc):
            frames.append(Atoms(atoms.numbers, positions=q / bohr, cell=h.T / bohr, pbc=True))
            got_f.append(f * bohr / hartree)
    assert np.ptp([f.positions[0, 0] for f in frames]) > 1e-6  # beads and steps differ
    refs = nequip_reference(build, name, frames, tmp_path)
    for k, ref in enumerate(refs):
        b, step = divmod(k, steps + 1)
        assert_close(
            name,
            props[step, 1 + b] / hartree,
            got_f[k],
            ref["energy"],
            np.array(ref["forces"]),
            what=f"bead {b} step {step}",
        )
    log = (tmp_path / "server.log").read_text()
    assert "NequIP/Allegro package of nequip-compile" in log
    # several beads went through one package call ("structures per model call × calls": 4×1, …)
    sizes = re.findall(r"(\d+)×\d+", log.split("batch sizes")[-1].split(";")[0])
    assert max(map(int, sizes)) >= 2, log[-1000:]


def test_ffdirect_in_process_equals_nequip(tmp_path, build, structures, references):
    """i-PI's <ffdirect> (mlip_server's pes in i-PI's process): 2 beads start on the DFT frame;
    the step-0 potential of each is nequip's energy of that frame."""
    import ipi_sim

    name = "allegro-f64"
    out = ipi_sim.run(tmp_path, structures[0], package(build, name), steps=1, nbeads=2, ffdirect=True)
    assert out.codes[0] == 0, out.ipi_log[-2000:]
    potential = out.properties[0, 3]  # potential{electronvolt} of the ring polymer = mean over beads
    assert potential == pytest.approx(references[name][0]["energy"], rel=1e-10)


# --------------------------------------------------------------------------- LAMMPS
@pytest.fixture(scope="module")
def lammps_data(tmp_path_factory, structures):
    """The ice cell (288 atoms, orthorhombic 13.5 × 15.6 × 14.7 Å) as a LAMMPS data file."""
    import ase.io

    ice = next(a for a in structures if a.info["name"] == "ice")
    path = tmp_path_factory.mktemp("lammps") / "ice.data"
    ase.io.write(path, ice, format="lammps-data", atom_style="atomic", specorder=["O", "H"])
    return path


def _lammps(workdir, data, model, np_=1, decomposition="gather", steps=2, per_atom=False):
    """LAMMPS through the bridge; ``per_atom``: ``--per-atom`` and the per-atom computes of
    test_lammps_domain (pe/atom and stress/atom summed, the virial pressure, the volume)."""
    from test_lammps import bridge_run
    from test_lammps_domain import _water_deck

    deck = _water_deck(workdir, data, steps=steps, per_atom=per_atom, every=1)
    kwargs = {"bridge_args": ["--per-atom"]} if per_atom else {}
    return bridge_run(
        workdir, deck, model, ["O", "H"], np_=np_, decomposition=decomposition, timeout=180, **kwargs
    )


def _dumped(workdir):
    import ase.io

    return ase.io.read(
        workdir / "traj.dump", index=":", format="lammps-dump-text", specorder=["O", "H"], order=True
    )


def test_lammps_gather_equals_nequip_and_allegro_domain_equals_gather(tmp_path, build, lammps_data):
    """Both float64 packages through the gather route (2 steps): LAMMPS's energy and forces at
    every dumped step = nequip's calculator on those positions. The Allegro package decomposed on
    2 and 3 ranks = its gather route (energy, pressure tensor, forces to 1e-10); on 2 ranks with
    --per-atom, the per-atom energies sum to the energy and −Σ stress/atom to P_virial × V."""
    from test_lammps import thermo

    for name in F64:
        folder = tmp_path / f"gather-{name}"
        result = _lammps(folder, lammps_data, package(build, name))
        assert result.code == 0, result.message + result.bridge_output[-3000:] + result.server_output[-2000:]
        frames = _dumped(folder)
        t = thermo(folder / "log.lammps")
        assert len(frames) == len(t["PotEng"]) == 3
        refs = nequip_reference(build, name, frames, folder)
        for k, (frame, ref) in enumerate(zip(frames, refs)):
            assert_close(
                name,
                t["PotEng"][k],
                frame.get_forces(),
                ref["energy"],
                np.array(ref["forces"]),
                what=f"{name} step {k}",
            )
    gather = tmp_path / "gather-allegro-f64"
    ref_t, ref_f = thermo(gather / "log.lammps"), _dumped(gather)[-1].get_forces()
    for np_ in (2, 3):
        folder = tmp_path / f"domain-{np_}"
        result = _lammps(
            folder,
            lammps_data,
            package(build, "allegro-f64"),
            np_=np_,
            decomposition="domain",
            per_atom=np_ == 2,
        )
        assert result.code == 0, result.message + result.bridge_output[-3000:] + result.server_output[-2000:]
        got = thermo(folder / "log.lammps")
        if np_ == 2:
            assert np.abs(got["c_pesum"] - got["PotEng"]).max() <= 1e-10 * np.abs(got["PotEng"]).max()
            scale = max(np.abs(got[f"c_pvir[{k}]"] * got["v_vol"]).max() for k in range(1, 7))
            for k in range(1, 7):
                total = got[f"c_pvir[{k}]"] * got["v_vol"]
                assert np.abs(-got[f"c_ssum[{k}]"] - total).max() <= 1e-10 * scale, k
        assert "interaction range 4.5 Å" in result.bridge_output
        for key in ("PotEng", "Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz"):
            scale = max(np.abs(ref_t[key]).max(), 1e-3 * np.abs(ref_t["Pxx"]).max())
            assert np.abs(got[key] - ref_t[key]).max() <= 1e-10 * scale, (np_, key)
        forces = _dumped(folder)[-1].get_forces()
        assert np.abs(forces - ref_f).max() <= 1e-10 * np.abs(ref_f).max(), np_


def test_lammps_domain_route_refuses_nequip_in_one_line(tmp_path, build, lammps_data):
    result = _lammps(tmp_path, lammps_data, package(build, "nequip-f64"), np_=2, decomposition="domain")
    assert result.code == 2, result.bridge_output[-3000:]
    errors = [line for line in result.bridge_output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.bridge_output, result.bridge_output[-3000:]
    assert "message-passing model" in errors[0] and "--decomposition gather" in errors[0]


# --------------------------------------------------------------------------- --check, refusals
def _serve(*args):
    import os

    return subprocess.run(
        [sys.executable, "-m", "mlip_server.ipi.serve", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # --check takes torch's default threads
    )


def test_check_names_the_family_and_its_routes(build):
    done = _serve("--check", "--model", package(build, "allegro-f64"))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "nequip model" in out and "NequIP/Allegro package of nequip-compile" in out
    assert "strictly local" in out and "LAMMPS domain route (energy of the owned atoms): yes" in out
    assert "rotational averaging (spec i): yes" in out


def _edited(build, name, tmp_path, edit) -> Path:
    """A copy of a package whose AOTInductor metadata went through ``edit(dict)``."""
    src, dst = build / f"{name}.nequip.pt2", tmp_path / f"edited-{name}.nequip.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("_metadata.json"):
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(info, data)
    return dst


def test_refusals_in_one_line(tmp_path, build, toy_model):
    cuda = _edited(build, "nequip-f64", tmp_path, lambda m: {**m, "AOTI_DEVICE_KEY": "cuda"})
    assert_refused(_serve("--check", "--model", cuda), "compiled by nequip-compile for cuda", "--device cpu")
    bare = _edited(
        build,
        "nequip-f64",
        tmp_path,
        lambda m: {
            k: v for k, v in m.items() if not k.startswith("nequip_") and k not in ("r_max", "type_names")
        },
    )
    assert_refused(_serve("--check", "--model", bare), "has no nequip metadata", "nequip-compile")
    assert_refused(
        _serve("--check", "--model", package(build, "nequip-f32"), "--dtype", "float64"),
        "is a float32 nequip model, asked for float64",
    )
    named = tmp_path / "contract.nequip.pth"  # named like nequip's TorchScript, without its extra files
    shutil.copy(toy_model, named)
    with pytest.raises(ModelError, match="has no nequip metadata"):
        load_model(str(named))
