"""MACE models (mace-torch 0.3.16) served by the project's venv (torch only), checked against MACE's
own ``MACECalculator`` run in the MACE venv (tests/families/envs.py, tests/families/mace/).

The files are real MACE models built by tests/families/mace/build.py (small ScaleShiftMACE
models, H and O, 2 interactions, r_max 4.5 Å: a and b, and c with two heads): the LAMMPS export of MACE's own
``create_lammps_model`` and the scripted model (``e3nn.util.jit.compile``), float64 and float32.

* in-process Evaluator, both files, both dtypes = MACECalculator on DFT water frames, a molecule
  and an ice cell (energy, forces, stress; per-atom energies = MACE's node energies);
* a two-head model (pt_head, default): both files serve the default head = MACECalculator's;
* our ASE calculator; a committee of the two models (mean and members = their references);
* real i-PI over a socket with 4 beads (one batched model call per step) and ``<ffdirect>``:
  i-PI's energies and forces on i-PI's own configurations = MACECalculator on them;
* rotational averaging: our averaged energy and forces = the weighted mean of MACECalculator's
  on the rotated copies;
* real LAMMPS: the gather route = MACECalculator on the ice cell (step 0); the domain route on 2
  (per-atom energies = MACE's node energies) and 3 ranks (2 servers) = the gather route; the
  owned-atoms energy of a cluster = the export's own ``local_or_ghost`` mask;
* ``mlip-server --check`` names the family; refusals in one line: a pickled ``.model``, a
  structure with elements the model lacks (both through the command line, exit 2), a broken
  MACE file (in-process, the same ModelError);
* the format's mechanics on files built without mace-torch: tests/test_format_mace.py (make test).

Tolerances: float64 1e-10 relative (of the energy; of the largest force or stress component).
float32 1e-5 (energies, forces) and 1e-4 for stresses: the stress of these cells is a small
difference of large edge terms (|σ| ~ 3e-4 eV/Å³), so float32 rounding of either side's sum
(measured 1.4e-5 of |σ|max) exceeds 1e-5 of it. i-PI's energies are checked to 1e-10; its forces
and positions are read from binary trajectories, so also to 1e-10.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import ipi_sim
import numpy as np
import pytest
from families import envs
from refusals import assert_refused
from test_lammps import bridge_run, no_leftovers, read_dump, thermo  # noqa: F401 - no_leftovers: autouse
from test_lammps_domain import _ok, _water_deck, domain_run

from mlip_server import processes
from mlip_server.ase_calculator import MLIPCalculator
from mlip_server.core.averaging import Averaging
from mlip_server.core.errors import ModelError
from mlip_server.core.graph import Structure
from mlip_server.formats import formats, load_model
from mlip_server.formats.mace import MaceModel, mace_archive_kind
from mlip_server.loading import load_evaluator
from mlip_server.protocol.messages import BOHR_PER_ANGSTROM, HARTREE_PER_EV
from mlip_server.structures import water_box

NKTV2P = 1.6021765e6  # LAMMPS metal units: bar per eV/Å³ (its own constant)
TOL = {"float64": 1e-10, "float32": 1e-5}
STRESS_TOL = {"float64": 1e-10, "float32": 1e-4}  # module docstring


# --------------------------------------------------------------------------- the built files
@pytest.fixture(scope="module")
def built():
    """The MACE build folder (the MACE venv and build.py run first when needed: minutes)."""
    return envs.built("mace")


def _file(built, member="a", dtype="float64", kind="lammps") -> str:
    return str(
        built
        / (
            f"mace-{member}-{dtype}-lammps.pt"
            if kind == "lammps"
            else f"mace-{member}-{dtype}_compiled.model"
        )
    )


def _structures(built) -> dict:
    with np.load(built / "structures.npz") as store:
        names = sorted({k.rsplit("/", 1)[0] for k in store.files})
        return {
            n: Structure(
                store[f"{n}/positions"], store[f"{n}/numbers"], store[f"{n}/cell"], store[f"{n}/pbc"]
            )
            for n in names
        }


def _reference(built, member="a", dtype="float64") -> dict:
    with np.load(built / f"reference-{member}-{dtype}.npz") as store:
        return {k: store[k] for k in store.files}


def _e0s(built, numbers) -> np.ndarray:
    """Each atom's E0 (eV) as build.py set it."""
    e0s = {int(z): e for z, e in json.loads((built / "build.json").read_text())["e0s"].items()}
    return np.array([e0s[int(z)] for z in numbers])


def mace_results(built, structures: dict, member="a", dtype="float64") -> dict:
    """MACECalculator (in the MACE venv) on ``structures`` (name → Structure): name/energy,
    name/forces, name/node_energy, name/stress (periodic)."""
    folder = Path(built) / "on-demand"
    folder.mkdir(exist_ok=True)
    tag = f"{len(list(folder.glob('*.npz')))}"
    store = {}
    for name, s in structures.items():
        store[f"{name}/positions"] = np.asarray(s.positions, dtype=np.float64)
        store[f"{name}/numbers"] = np.asarray(s.numbers)
        store[f"{name}/cell"] = np.asarray(s.cell, dtype=np.float64)
        store[f"{name}/pbc"] = np.broadcast_to(np.asarray(s.pbc, dtype=bool), (3,)).copy()
    inp, out = folder / f"in-{tag}.npz", folder / f"out-{tag}.npz"
    np.savez(inp, **store)
    envs.run_in("mace", "reference.py", built / f"mace-{member}.model", dtype, inp, out, timeout=600)
    with np.load(out) as results:
        return {k: results[k] for k in results.files}


def assert_same(result, ref: dict, name: str, s: Structure, dtype: str):
    """Our Result = MACE's results for structure ``name``, to the dtype's tolerance."""
    tol = TOL[dtype]
    energy = float(ref[f"{name}/energy"])
    assert abs(result.energy - energy) <= tol * abs(energy), (name, result.energy, energy)
    forces = ref[f"{name}/forces"]
    assert np.abs(forces).max() > 1e-3  # a real test: the model's forces are not zero
    err = np.abs(result.forces - forces).max() / np.abs(forces).max()
    assert err <= tol, (name, err)
    if f"{name}/stress" in ref:
        stress = ref[f"{name}/stress"]
        ours = -result.virial / abs(np.linalg.det(s.cell))
        err = np.abs(ours - stress).max() / np.abs(stress).max()
        assert err <= STRESS_TOL[dtype], (name, err)


# --------------------------------------------------------------------------- the format
def test_files_are_recognised_without_loading_and_described(built, toy_model):
    assert mace_archive_kind(_file(built, kind="lammps")) == "lammps"
    assert mace_archive_kind(_file(built, kind="scripted")) == "scripted"
    assert mace_archive_kind(str(built / "mace-a.model")) == "pickled"
    assert mace_archive_kind(toy_model) is None  # a contract model is not MACE
    assert not MaceModel.recognizes(toy_model)
    names = list(formats())
    assert names.index("metatomic") < names.index("mace") < names.index("contract")
    lammps, scripted = load_model(_file(built, kind="lammps")), load_model(_file(built, kind="scripted"))
    assert isinstance(lammps, MaceModel) and isinstance(scripted, MaceModel)
    for m in (lammps, scripted):
        assert m.species == [1, 8] and m.cutoff == 4.5 and m.interaction_range == 9.0 and m.declared_range
        assert m.sums_atomic_energies and m.per_atom_energies and not m.direct_forces
    first, second = lammps.describe()
    assert first.startswith(
        "MACE model (ScaleShiftMACE): 2 interactions, r_max 4.5 Å (interaction range 9 Å)"
    )
    assert (
        "from a LAMMPS export (LAMMPS_MACE, as mace_create_lammps_model writes)" in first
        and "from a scripted MACE model" in scripted.describe()[0]
    )
    assert second.startswith("species H O → one-hot types 0 1; E0s (eV) H -13.6, O -442")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["lammps", "scripted"])
def test_evaluator_equals_mace_calculator(built, kind, dtype):
    """Every structure of the build in one Evaluator call (one batch), and per-atom energies."""
    structures, ref = _structures(built), _reference(built, "a", dtype)
    assert "molecule" in structures
    ev = load_evaluator(_file(built, "a", dtype, kind))
    assert str(ev.model.dtype) == f"torch.{dtype}"
    results = ev.compute(list(structures.values()))
    for (name, s), result in zip(structures.items(), results):
        assert_same(result, ref, name, s, dtype)
    # per-atom energies (one energy term per atom) = MACE's node energies (E0 + interaction terms)
    name = "dft0" if "dft0" in structures else "molecule"
    s = structures[name]
    per_atom = ev.compute([Structure(s.positions, s.numbers, s.cell, s.pbc, per_atom=True)])[0]
    node = ref[f"{name}/node_energy"] + _e0s(built, s.numbers)  # MACECalculator subtracts E0
    assert np.abs(per_atom.atom_energies - node).max() <= TOL[dtype] * np.abs(node).max()
    assert abs(per_atom.atom_energies.sum() - per_atom.energy) <= TOL[dtype] * abs(per_atom.energy)


@pytest.mark.parametrize("kind", ["lammps", "scripted"])
def test_a_two_head_model_serves_its_default_head(built, kind):
    """Model c has heads pt_head and default: the LAMMPS export (``--head default``) and the
    scripted model (the head named default, as MACECalculator picks) = MACECalculator's default
    head, which differs from pt_head."""
    structures, ref = _structures(built), _reference(built, "c")
    other = _reference(built, "c-pt_head")
    ev = load_evaluator(_file(built, "c", kind=kind))
    assert (
        "head 'default' (2 of 2)" in ev.model.describe()[1]
        and "E0s (eV) H -13.6, O -442" in ev.model.describe()[1]
    )
    for (name, s), result in zip(structures.items(), ev.compute(list(structures.values()))):
        assert_same(result, ref, name, s, "float64")
        assert abs(result.energy - float(other[f"{name}/energy"])) > 1e-2


def test_requested_dtype_casts_the_export(built):
    """--dtype float32 on the float64 export: the float32 model (weights rounded once), = MACE's
    float32 results."""
    structures, ref = _structures(built), _reference(built, "a", "float32")
    ev = load_evaluator(_file(built, "a", "float64"), dtype="float32")
    assert ev.model.requested_dtype and str(ev.model.dtype) == "torch.float32"
    for (name, s), result in zip(structures.items(), ev.compute(list(structures.values()))):
        assert_same(result, ref, name, s, "float32")


def test_ase_calculator_equals_mace_calculator(built):
    import ase

    structures, ref = _structures(built), _reference(built)
    calc = MLIPCalculator(_file(built))
    for name, s in structures.items():
        atoms = ase.Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
        atoms.calc = calc
        energy = float(ref[f"{name}/energy"])
        assert abs(atoms.get_potential_energy() - energy) <= 1e-10 * abs(energy)
        forces = ref[f"{name}/forces"]
        assert np.abs(atoms.get_forces() - forces).max() <= 1e-10 * np.abs(forces).max()
        if f"{name}/stress" in ref:
            stress = ref[f"{name}/stress"]
            got = atoms.get_stress(voigt=False)
            assert np.abs(got - stress).max() <= 1e-10 * np.abs(stress).max(), name


def test_committee_of_two_mace_models_is_the_mean_of_their_references(built):
    """The LAMMPS export of model a and the scripted model b as one committee, on the molecule
    and a DFT frame."""
    structures = {k: v for k, v in _structures(built).items() if k in ("molecule", "dft0")}
    refs = [_reference(built, m) for m in "ab"]
    ev = load_evaluator([_file(built, "a"), _file(built, "b", kind="scripted")])
    for (name, s), result in zip(structures.items(), ev.compute(list(structures.values()))):
        energies = np.array([float(r[f"{name}/energy"]) for r in refs])
        assert abs(energies[0] - energies[1]) > 1e-2  # the members differ far above the tolerance
        np.testing.assert_allclose(result.committee.energies, energies, rtol=1e-10, atol=0)
        assert abs(result.energy - energies.mean()) <= 1e-10 * abs(energies.mean())
        forces = np.mean([r[f"{name}/forces"] for r in refs], axis=0)
        assert np.abs(result.forces - forces).max() <= 1e-10 * np.abs(forces).max()
        for k, r in enumerate(refs):
            f = r[f"{name}/forces"]
            assert np.abs(result.committee.forces[k] - f).max() <= 1e-10 * np.abs(f).max()


def test_owned_atoms_energy_equals_the_exports_own_ghost_mask(built):
    """A cluster whose first atoms are owned (a LAMMPS rank's view): our owned-atoms energy and
    forces on all atoms = LAMMPS_MACE.forward(data, local_or_ghost) of the export itself."""
    import torch

    box = water_box(16, seed=4)
    s = Structure(box.positions, box.numbers)  # open cluster: owned + ghosts, as the domain route sends
    owned = 20
    model = load_model(_file(built))
    ev = load_evaluator(model)
    ours = ev.compute([Structure(s.positions, s.numbers, owned=owned)])[0]
    whole = ev.compute([s])[0].energy
    assert abs(ours.energy - whole) > 1.0  # the ghosts' terms are left out
    graph = ev._graph(s, 0)
    from mlip_server.formats.edges import pack

    batch = pack([(graph, np.eye(3))], model.device, model.dtype, requires_grad=False)
    data, _ = model._inputs([(graph, np.eye(3))], batch)
    data["positions"] = data["positions"].detach().clone()
    data["shifts"] = data["shifts"].detach().clone()
    mask = torch.zeros(len(s.numbers), dtype=model.dtype)
    mask[:owned] = 1.0
    out = model.module(data, mask, False)
    theirs = float(out["total_energy_local"].detach()[0])
    assert abs(ours.energy - theirs) <= 1e-10 * abs(theirs)
    forces = out["forces"].detach().numpy()
    assert np.abs(forces).max() > 1e-3
    assert np.abs(ours.forces - forces).max() <= 1e-10 * np.abs(forces).max()


# --------------------------------------------------------------------------- rotational averaging
def _rotated_copies():
    """Water (8 molecules, periodic) and its copies rotated by the 2i grid (36, with inversion)."""
    s = Structure.from_ase(water_box(8, seed=7))
    avg = Averaging("2i")
    rot = avg.rotations()
    copies = {
        f"r{k}": Structure(s.positions @ r.T, s.numbers, s.cell @ r.T, s.pbc)
        for k, r in enumerate(rot.matrices)
    }
    return s, avg, rot, copies


def test_averaged_equals_the_mean_of_mace_energies_over_rotated_copies(built, on_demand):
    """Spec 2i (36 rotations, with inversion): our averaged energy and forces = the weighted mean
    of MACECalculator's on the rotated copies (forces rotated back, F_k R_k)."""
    _, ref, _ = on_demand
    s, avg, rot, _ = _rotated_copies()
    energy = sum(w * float(ref[f"avg-r{k}/energy"]) for k, w in enumerate(rot.weights))
    forces = sum(w * ref[f"avg-r{k}/forces"] @ r for k, (r, w) in enumerate(zip(rot.matrices, rot.weights)))
    result = load_evaluator(_file(built)).compute([s], avg)[0]
    assert result.extras["n_rotations"] == 36
    assert abs(result.energy - energy) <= 1e-10 * abs(energy)
    assert np.abs(result.forces - forces).max() <= 1e-10 * np.abs(forces).max()
    # MACE is E(3)-invariant: the rotated copies' energies agree to rounding
    spread = np.ptp([float(ref[f"avg-r{k}/energy"]) for k in range(36)])
    assert spread <= 1e-10 * abs(energy) and abs(result.extras["delta_energy"]) <= 1e-10 * abs(energy)


# --------------------------------------------------------------------------- i-PI
XML = """<simulation verbosity='low' floatformat='%25.16e'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [step, {energies}] </properties>
    <trajectory filename='x' stride='1' format='bin'> positions </trajectory>
    <trajectory filename='f' stride='1' format='bin'> forces </trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>27</seed></prng>
{forcefield}  <system>
    <initialize nbeads='{beads}'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces><force forcefield='mace' weight='1'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='nvt'><timestep units='femtosecond'>0.5</timestep>
      <thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat></dynamics></motion>
  </system>
</simulation>"""
SOCKET = (
    "  <ffsocket name='mace' mode='unix' pbc='false'><address>{address}</address>"
    "<latency>1e-4</latency></ffsocket>\n"
)


def _bin_frames(path: Path, n_frames: int) -> list:
    """(cell h [3,3] with lattice vectors as columns, values [N,3]) of each frame of an i-PI
    ``format='bin'`` trajectory (atomic units): frames have one size (a fixed-width title), so
    the file is cut into ``n_frames`` equal parts, each read as i-PI's print_binary wrote it."""
    data = path.read_bytes()
    size, rest = divmod(len(data), n_frames)
    assert rest == 0, f"{path}: {len(data)} bytes are not {n_frames} frames of one size"
    frames = []
    for k in range(n_frames):
        at = k * size
        cell = np.frombuffer(data, np.float64, 9, at).reshape(3, 3)
        natoms = int(np.frombuffer(data, np.int64, 1, at + 72)[0])
        frames.append((cell, np.frombuffer(data, np.float64, 3 * natoms, at + 80).reshape(natoms, 3)))
    return frames


def _ipi_run(folder: Path, model: str, beads: int, steps: int, ffdirect: bool):
    folder.mkdir(parents=True)
    atoms = water_box(8, seed=5)
    ipi_sim.write_init(atoms, folder / "init.xyz")
    address = processes.unique_name("mlip-test")
    if ffdirect:
        forcefield = ipi_sim.DIRECT.format(
            name="mace",
            pes=ipi_sim.PES,
            source=f"model: {Path(model).resolve()}",
            average="none",
            batch=beads,
        )
    else:
        forcefield = SOCKET.format(address=address)
    energies = ", ".join(f"pot_component_raw(index=0;bead={b})" for b in range(beads))
    xml = XML.format(energies=energies, steps=steps, forcefield=forcefield, beads=beads)
    (folder / "input.xml").write_text(xml)
    ipi = processes.start_ipi("input.xml", folder)
    server = None
    try:
        if ffdirect:
            codes = processes.wait([ipi], 240)
        else:
            processes.wait_for_socket(address, ipi)
            server = processes.start_server(model, "init.xyz", [f"unix:{address}"] * beads, folder)
            codes = processes.wait([ipi, server], 240)
    finally:
        processes.stop([ipi, server], [address])
    assert all(c == 0 for c in codes), (folder / "ipi.log").read_text()[-3000:]
    props = np.loadtxt(folder / "sim.out", ndmin=2)
    assert props.shape == (steps + 1, 1 + beads)
    frames = {}
    for b in range(beads):
        x = _bin_frames(folder / f"sim.x_{b}.bin", steps + 1)
        f = _bin_frames(folder / f"sim.f_{b}.bin", steps + 1)
        for step in range(steps + 1):
            h, q = x[step]
            s = Structure(q / BOHR_PER_ANGSTROM, atoms.numbers, h.T / BOHR_PER_ANGSTROM, np.ones(3, bool))
            frames[f"b{b}s{step}"] = (
                s,
                props[step, 1 + b] / HARTREE_PER_EV,
                f[step][1] * BOHR_PER_ANGSTROM / HARTREE_PER_EV,
            )
    return frames


@pytest.fixture(scope="module")
def on_demand(built, tmp_path_factory):
    """i-PI over a socket (4 beads, 3 steps: one connection per bead, batched by the server) and
    with <ffdirect> (2 beads, 2 steps); MACECalculator, in one call of the MACE venv, on every
    configuration i-PI evaluated and on the rotated copies of the averaging test."""
    folder = tmp_path_factory.mktemp("ipi")
    runs = {
        "socket": _ipi_run(folder / "socket", _file(built), beads=4, steps=3, ffdirect=False),
        "ffdirect": _ipi_run(folder / "ffdirect", _file(built), beads=2, steps=2, ffdirect=True),
    }
    everything = {f"{run}-{name}": s for run, frames in runs.items() for name, (s, _, _) in frames.items()}
    everything.update({f"avg-{name}": s for name, s in _rotated_copies()[3].items()})
    return runs, mace_results(built, everything), folder


@pytest.mark.parametrize("run", ["socket", "ffdirect"])
def test_ipi_equals_mace_calculator_on_ipis_configurations(on_demand, run):
    runs, ref, folder = on_demand
    frames = runs[run]
    positions = [s.positions for s, _, _ in frames.values()]
    assert np.ptp(np.array(positions), axis=0).max() > 1e-3  # beads and steps differ
    for name, (s, energy, forces) in frames.items():
        e_ref, f_ref = float(ref[f"{run}-{name}/energy"]), ref[f"{run}-{name}/forces"]
        assert abs(energy - e_ref) <= 1e-10 * abs(e_ref), (name, energy, e_ref)
        assert np.abs(forces - f_ref).max() <= 1e-10 * np.abs(f_ref).max(), name
    if run == "socket":
        log = (folder / "socket" / "server.log").read_text()
        assert "MACE model (ScaleShiftMACE)" in log
        # the 4 beads of each of the 4 force calls in one model call each
        assert "batch sizes (structures per model call × calls): 4×4;" in log, log[-2000:]


# --------------------------------------------------------------------------- LAMMPS
PRESSURE = ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")


def _deck(folder: Path, data: Path, per_atom=False) -> Path:
    """One step of the water deck, thermo with the virial pressure tensor; ``per_atom``: the per-atom
    computes too, and pe/atom in the dump."""
    return _water_deck(
        folder,
        data,
        steps=1,
        every=1,
        per_atom=per_atom,
        virial=True,
        dump_extra=" c_pea" if per_atom else "",
    )


def _first_dump_frame(path: Path, columns: int) -> np.ndarray:
    """The rows (sorted by id) of the first frame of a text dump, as floats."""
    lines = path.read_text().splitlines()
    n = int(lines[3])
    start = lines.index(next(line for line in lines if line.startswith("ITEM: ATOMS"))) + 1
    return np.array([[float(v) for v in line.split()[:columns]] for line in lines[start : start + n]])


@pytest.fixture(scope="module")
def ice_data(built, tmp_path_factory):
    import ase
    from test_lammps import write_data

    structures = _structures(built)
    if "ice" not in structures:
        pytest.skip("../shared/data/structures/ice is absent: the build has no ice cell")
    s = structures["ice"]
    atoms = ase.Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=True)
    assert np.allclose(atoms.cell[:], np.diag(np.diag(atoms.cell[:])))  # orthorhombic: LAMMPS keeps it
    return write_data(atoms, tmp_path_factory.mktemp("ice") / "ice.data", ["O", "H"])


@pytest.fixture(scope="module")
def lammps_gather(built, ice_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gather")
    deck = _deck(folder, ice_data)
    _ok(bridge_run(folder, deck, _file(built), ["O", "H"]))
    return folder


def test_lammps_gather_equals_mace_calculator_on_the_ice_cell(built, lammps_gather):
    """Step 0 of the gather route (before any move): PotEng, the virial pressure tensor and the
    forces = MACECalculator on the ice cell."""
    ref, s = _reference(built), _structures(built)["ice"]
    got = thermo(lammps_gather / "log.lammps")
    energy = float(ref["ice/energy"])
    assert abs(got["PotEng"][0] - energy) <= 1e-10 * abs(energy)
    stress = ref["ice/stress"]
    voigt = [stress[0, 0], stress[1, 1], stress[2, 2], stress[0, 1], stress[0, 2], stress[1, 2]]
    virial_pressure = np.array([got[f"c_pvir[{k}]"][0] for k in range(1, 7)])
    expected = -np.array(voigt) * NKTV2P
    assert np.abs(virial_pressure - expected).max() <= 1e-10 * np.abs(expected).max()
    rows = _first_dump_frame(lammps_gather / "traj.dump", 8)
    forces = ref["ice/forces"]
    assert rows.shape == (len(s.numbers), 8)
    assert np.abs(rows[:, 5:8] - forces).max() <= 1e-10 * np.abs(forces).max()


def _same_as_gather(gather: Path, got_dir: Path) -> dict:
    ref, got = thermo(gather / "log.lammps"), thermo(got_dir / "log.lammps")
    assert len(ref["Step"]) == len(got["Step"]) == 2
    for name in ("PotEng", "TotEng", "Press", *PRESSURE):
        scale = np.abs(ref[name]).max()
        assert np.abs(got[name] - ref[name]).max() <= 1e-10 * scale, (name, got[name] - ref[name])
    fa = read_dump(gather / "traj.dump", ["O", "H"]).get_forces()
    fb = read_dump(got_dir / "traj.dump", ["O", "H"]).get_forces()
    assert np.abs(fa - fb).max() <= 1e-10 * np.abs(fa).max()
    return got


def test_lammps_domain_two_ranks_equals_gather_with_mace_node_energies(
    built, ice_data, lammps_gather, tmp_path
):
    """2 ranks with per-atom energies and virials (compute pe/atom, stress/atom): = the gather
    route; step 0's per-atom energies = MACE's node energies (+ E0s) and sum to PotEng; the
    per-atom virials sum to the virial."""
    deck = _deck(tmp_path, ice_data, per_atom=True)
    result = domain_run(tmp_path, deck, _file(built), ["O", "H"], 2, bridge_args=["--per-atom"])
    _ok(result)
    assert "interaction range 9 Å (declared)" in result.bridge_output
    got = _same_as_gather(lammps_gather, tmp_path)
    assert np.abs(got["c_pesum"] - got["PotEng"]).max() <= 1e-10 * np.abs(got["PotEng"]).max()
    # per-atom virials (stress/atom, bar·Å³) sum to the virial: −Σ stress/atom = P_virial × V
    scale = max(np.abs(got[f"c_pvir[{k}]"] * got["v_vol"]).max() for k in range(1, 7))
    for k in range(1, 7):
        total = got[f"c_pvir[{k}]"] * got["v_vol"]
        assert np.abs(-got[f"c_ssum[{k}]"] - total).max() <= 1e-10 * scale, k
    node = _reference(built)["ice/node_energy"] + _e0s(built, _structures(built)["ice"].numbers)
    rows = _first_dump_frame(tmp_path / "traj.dump", 9)
    assert np.abs(rows[:, 8] - node).max() <= 1e-10 * np.abs(node).max()
    report = json.loads((tmp_path / "bridge.json").read_text())
    assert report["decomposition"] == "domain" and len(report["per_rank"]) == 2


def test_lammps_domain_three_ranks_two_servers_equals_gather(built, ice_data, lammps_gather, tmp_path):
    """3 ranks of a 13.5 Å cell with a 9 Å range (subdomains thinner than the ghost shell), the
    scripted model served by 2 servers."""
    deck = _deck(tmp_path, ice_data)
    scripted = _file(built, kind="scripted")
    _ok(domain_run(tmp_path, deck, scripted, ["O", "H"], 3, servers=2))
    _same_as_gather(lammps_gather, tmp_path)


# --------------------------------------------------------------------------- --check and refusals
def _server(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "mlip_server.ipi.serve", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_check_names_the_family_and_its_routes(built):
    done = _server("--check", "--model", _file(built))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "MACE model" in out and "MACE model (ScaleShiftMACE): 2 interactions, r_max 4.5 Å" in out
    assert "from a LAMMPS export" in out and "species H O → one-hot types 0 1" in out
    assert "interaction range 9 Å (declared)" in out
    assert "LAMMPS domain route (energy of the owned atoms): yes" in out


def test_a_pickled_mace_model_is_refused_with_the_export_command(built):
    assert_refused(
        _server("--check", "--model", built / "mace-a.model"),
        "pickled MACE model",
        "mace_create_lammps_model",
    )


def test_a_broken_mace_file_is_refused_in_one_line(built, tmp_path):
    """A MACE export torch cannot read (its pickle cut in half): one line naming the export
    command (in-process: the same ModelError the command line prints as its one line)."""
    broken = tmp_path / "broken-lammps.pt"
    with zipfile.ZipFile(_file(built)) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, data[: len(data) // 2] if info.filename.endswith("/data.pkl") else data)
    assert mace_archive_kind(str(broken)) == "lammps"
    with pytest.raises(ModelError) as err:
        load_model(str(broken))
    line = str(err.value)
    assert "\n" not in line and "looks like a MACE TorchScript file" in line and "export it again" in line


def test_a_structure_with_elements_the_model_lacks_is_refused(built, tmp_path):
    from ase import Atoms

    Atoms("NaCl", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[10, 10, 10], pbc=True).write(
        tmp_path / "nacl.xyz"
    )
    done = _server(
        "--model", _file(built), "--structure", tmp_path / "nacl.xyz", "--address", "unix:never-used"
    )
    assert_refused(done, "atomic numbers [11, 17]", "MACE model", "species [1, 8]")
