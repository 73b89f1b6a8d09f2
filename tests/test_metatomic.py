"""metatomic AtomisticModel files served by our Evaluator, checked against i-PI's own
``-m metatomic`` driver, i-PI's <ffrotations>, the contract model they wrap, and finite differences."""

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
from refusals import assert_refused

mta = pytest.importorskip(
    "metatomic.torch", reason="metatomic-torch not installed: pip install -e .[metatomic]"
)

import ipi_sim  # noqa: E402
import torch  # noqa: E402
from ipi.utils.units import unit_to_internal  # noqa: E402
from metatensor.torch import Labels, TensorBlock, TensorMap  # noqa: E402

from mlip_server import processes  # noqa: E402
from mlip_server.core.errors import ModelError  # noqa: E402
from mlip_server.core.evaluator import Structure  # noqa: E402
from mlip_server.core.graph import build_graph  # noqa: E402
from mlip_server.formats.metatomic import MetatomicModel, is_metatomic_file  # noqa: E402
from mlip_server.loading import load_evaluator  # noqa: E402
from mlip_server.structures import water_box  # noqa: E402
from mlip_server.training.export_metatomic import export_metatomic  # noqa: E402


@pytest.fixture(scope="module")
def metatomic_model(models_dir, strongly_anisotropic_model):
    """The strongly non-invariant toy contract model, wrapped as a metatomic model (float64)."""
    return export_metatomic(strongly_anisotropic_model, models_dir / "anisotropic-metatomic.pt")


class HalfListPair(torch.nn.Module):
    """A metatomic model written directly against metatomic: a non-invariant pair energy over a
    *half* list at 3.5 Å plus a term over a full list at 2.5 Å (two requests, two cutoffs)."""

    def __init__(self):
        super().__init__()
        self.half = mta.NeighborListOptions(cutoff=3.5, full_list=False, strict=True)
        self.full = mta.NeighborListOptions(cutoff=2.5, full_list=True, strict=True)

    def requested_neighbor_lists(self) -> List[mta.NeighborListOptions]:
        return [self.half, self.full]

    def forward(
        self,
        systems: List[mta.System],
        outputs: Dict[str, mta.ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        energies: List[torch.Tensor] = []
        for system in systems:
            v = system.get_neighbor_list(self.half).values.reshape(-1, 3)
            r = torch.linalg.norm(v, dim=1)
            e = (torch.exp(-r) * (1.0 + 0.3 * v[:, 0] * v[:, 2] + 0.2 * v[:, 1])).sum()
            w = system.get_neighbor_list(self.full).values.reshape(-1, 3)
            e = e + 0.05 * (torch.cos(torch.linalg.norm(w, dim=1)) * (1.0 + 0.1 * w[:, 0])).sum()
            energies.append(e.reshape(1))
        values = torch.cat(energies).reshape(-1, 1)
        empty: List[Labels] = []
        block = TensorBlock(
            values,
            Labels("system", torch.arange(len(systems), dtype=torch.int32).reshape(-1, 1)),
            empty,
            Labels("energy", torch.zeros((1, 1), dtype=torch.int32)),
        )
        return {"energy": TensorMap(Labels("_", torch.zeros((1, 1), dtype=torch.int32)), [block])}


@pytest.fixture(scope="module")
def half_list_model(models_dir):
    capabilities = mta.ModelCapabilities(
        outputs={"energy": mta.ModelOutput(unit="eV", sample_kind="system")},
        atomic_types=[1, 8],
        interaction_range=3.5,
        length_unit="angstrom",
        supported_devices=["cpu"],
        dtype="float64",
    )
    model = mta.AtomisticModel(HalfListPair().eval(), mta.ModelMetadata(name="half-list pair"), capabilities)
    path = models_dir / "half-list-metatomic.pt"
    model.save(str(path))
    return str(path)


def _structures():
    box = water_box(8, seed=3)
    cell = box.cell[:] + np.array([[0, 0, 0], [1.1, 0, 0], [0.4, -0.7, 0]])  # triclinic, small: many images
    tri = Structure(box.positions, box.numbers, cell, np.ones(3, bool))
    cluster = Structure(box.positions[:9], box.numbers[:9])  # not periodic
    return [tri, cluster]


def test_detects_metatomic_files(metatomic_model, strongly_anisotropic_model):
    assert is_metatomic_file(metatomic_model)
    assert not is_metatomic_file(strongly_anisotropic_model)


def test_equals_the_contract_model_it_wraps(metatomic_model, strongly_anisotropic_model):
    ours, wrapped = load_evaluator(strongly_anisotropic_model), load_evaluator(metatomic_model)
    assert isinstance(wrapped.model, MetatomicModel) and wrapped.cutoff == ours.cutoff
    structures = _structures()
    for spec in ("none", "2i"):
        for a, b in zip(ours.compute(structures, spec), wrapped.compute(structures, spec)):
            assert abs(a.energy) > 1e-3
            assert b.energy == pytest.approx(a.energy, rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=1e-11)
            np.testing.assert_allclose(b.virial, a.virial, rtol=0, atol=1e-11)  # incl. its antisymmetric part
    raw = ours.compute(structures[:1])[0]
    assert np.abs(raw.virial - raw.virial.T).max() > 1e-3  # the check above covers a non-invariant virial


def test_half_lists_forces_and_virial_are_derivatives(half_list_model):
    ev = load_evaluator(half_list_model)
    assert ev.cutoff == 3.5
    s = _structures()[0]
    res = ev.compute([s])[0]
    h = 1e-5
    for i, a in [(0, 0), (4, 2), (13, 1)]:
        e = []
        for sign in (1, -1):
            x = s.positions.copy()
            x[i, a] += sign * h
            e.append(ev.compute([Structure(x, s.numbers, s.cell, s.pbc)])[0].energy)
        assert res.forces[i, a] == pytest.approx(-(e[0] - e[1]) / (2 * h), rel=1e-6, abs=1e-8)
    for a, b in [(0, 0), (0, 1), (2, 1)]:
        e = []
        for sign in (1, -1):
            eps = np.eye(3)
            eps[a, b] += sign * h
            e.append(ev.compute([Structure(s.positions @ eps.T, s.numbers, s.cell @ eps.T, s.pbc)])[0].energy)
        assert res.virial[a, b] == pytest.approx(-(e[0] - e[1]) / (2 * h), rel=1e-6, abs=1e-8)
    # a half list holds each pair once: the pair sum over a full list would be twice as large
    assert abs(res.energy) > 1e-2


XML = """<simulation verbosity='low' floatformat='%25.16e'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [step, {energies}] </properties>
{trajectories}  </output>
  <total_steps>8</total_steps>
  <prng><seed>27</seed></prng>
  <ffsocket name='ours' mode='unix' pbc='false'><address>{ours}</address><latency>1e-4</latency></ffsocket>
  <ffsocket name='ipi' mode='unix' pbc='false'><address>{theirs}</address><latency>1e-4</latency></ffsocket>
  <system>
    <initialize nbeads='{beads}'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces><force forcefield='ours' weight='1'/><force forcefield='ipi' weight='0'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='nvt'><timestep units='femtosecond'>0.5</timestep>
      <thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat></dynamics></motion>
  </system>
</simulation>"""


def _ipi_metatomic_driver(address, model, workdir, options=""):
    """i-PI's own ``i-pi-py_driver -m metatomic`` client on unix socket ``address`` (``options``:
    more of its ``-o`` parameters, e.g. ``,non_conservative=True``)."""
    return processes.start(
        [
            processes.executable("i-pi-py_driver"),
            "-m",
            "metatomic",
            "-u",
            "-a",
            address,
            "-o",
            f"template=init.xyz,model={model}{options}",
        ],
        cwd=workdir,
        log=workdir / "driver.log",
    )


def _read_binary_frames(path):
    """Frames of an i-PI ``format='bin'`` trajectory: arrays [natoms, 3] (atomic units).

    Layout per frame: cell (9 float64), natoms (int64), 3·natoms float64, the length of the
    '|'-joined names (int64), the names and a title as UTF-32 strings of unknown length; the
    title is read as ASCII characters (4 bytes, 3 of them zero) up to the next frame's cell."""
    data = Path(path).read_bytes()
    frames, at = [], 0
    while at < len(data):
        natoms = int(np.frombuffer(data, np.int64, 1, at + 72)[0])
        at += 80
        frames.append(np.frombuffer(data, np.float64, 3 * natoms, at).reshape(natoms, 3))
        at += 24 * natoms
        at += 8 + 4 * int(np.frombuffer(data, np.int64, 1, at)[0])
        while at + 4 <= len(data) and 32 <= data[at] < 127 and data[at + 1 : at + 4] == b"\0\0\0":
            at += 4
    return frames


@pytest.mark.parametrize("beads", [1, 4])
def test_server_equals_ipi_metatomic_driver(tmp_path, metatomic_model, beads):
    """One i-PI run, two forcefields on the same configurations at every step: our server
    (weight 1, one connection per bead) and i-PI's own ``-m metatomic`` driver (weight 0)."""
    atoms = water_box(8, seed=5)
    ipi_sim.write_init(atoms, tmp_path / "init.xyz")
    ours, theirs = processes.unique_name("mlip-test"), processes.unique_name("mlip-test")
    energies = ", ".join(f"pot_component_raw(index={k};bead={b})" for b in range(beads) for k in (0, 1))
    trajectories = "".join(
        f"    <trajectory filename='f{k}_{b}' stride='1' format='bin' bead='{b}'> "
        f"forces_component_raw({k}) </trajectory>\n"
        for b in range(beads)
        for k in (0, 1)
    )
    (tmp_path / "input.xml").write_text(
        XML.format(ours=ours, theirs=theirs, beads=beads, energies=energies, trajectories=trajectories)
    )
    ipi = processes.start_ipi("input.xml", tmp_path)
    driver = server = None
    try:
        processes.wait_for_socket(theirs, ipi)
        driver = _ipi_metatomic_driver(theirs, metatomic_model, tmp_path)
        server = processes.start_server(metatomic_model, "init.xyz", [f"unix:{ours}"] * beads, tmp_path)
        codes = processes.wait([ipi, driver, server], 240)
    finally:
        processes.stop([ipi, driver, server], [ours, theirs])
    assert codes[0] == 0 and codes[2] == 0, (tmp_path / "ipi.log").read_text()[-2000:]
    props = np.loadtxt(tmp_path / "sim.out")
    assert props.shape == (9, 1 + 2 * beads)
    e_ours, e_ipi = props[:, 1::2], props[:, 2::2]
    assert np.ptp(e_ours[:, 0]) > 1e-6  # the configurations change
    np.testing.assert_allclose(e_ours, e_ipi, rtol=1e-10, atol=0)
    # i-PI's driver converts forces with i-PI's 8-digit 'ev/ang' constant (0.019446904); we use
    # energy/length (0.0194469061 Ha/Bohr per eV/Å), so that forces are the exact gradient of the
    # energy in i-PI's units. Undo that 1e-7 relative difference, then demand 1e-10.
    ratio = (
        unit_to_internal("energy", "electronvolt", 1.0)
        / unit_to_internal("length", "angstrom", 1.0)
        / unit_to_internal("force", "ev/ang", 1.0)
    )
    assert abs(ratio - 1) > 1e-8
    for b in range(beads):
        f_ours = np.array(_read_binary_frames(tmp_path / f"sim.f0_{b}.bin"))
        f_ipi = np.array(_read_binary_frames(tmp_path / f"sim.f1_{b}.bin"))
        assert f_ours.shape == f_ipi.shape == (9, len(atoms), 3)
        assert np.abs(f_ours).max() > 1e-3
        np.testing.assert_allclose(f_ours, f_ipi * ratio, rtol=0, atol=1e-10 * np.abs(f_ours).max())


def ffrotations_around_ipi_driver(tmp_path, model, atoms, steps) -> np.ndarray:
    """An NVE run driven by i-PI's <ffrotations> (legendre 2 + inversion) around i-PI's own
    metatomic driver serving ``model``, with our ``=2i`` endpoint on the same file evaluated on the
    same configurations (ipi_sim.FFROTATIONS): ``sim.out`` rows (step, theirs, ours; Hartree)."""
    ipi_sim.write_init(atoms, tmp_path / "init.xyz")
    raw, avg = processes.unique_name("mlip-test"), processes.unique_name("mlip-test")
    xml = ipi_sim.FFROTATIONS.format(raw=raw, ours=avg, steps=steps, trajectories="")
    (tmp_path / "input.xml").write_text(xml)
    ipi = processes.start_ipi("input.xml", tmp_path)
    driver = server = None
    try:
        processes.wait_for_socket(raw, ipi)
        driver = _ipi_metatomic_driver(raw, model, tmp_path)
        server = processes.start_server(model, "init.xyz", [f"unix:{avg}=2i"], tmp_path)
        codes = processes.wait([ipi, driver, server], 240)
    finally:
        processes.stop([ipi, driver, server], [raw, avg])
    assert codes[0] == 0 and codes[2] == 0, (tmp_path / "server.log").read_text()[-2000:]
    return np.loadtxt(tmp_path / "sim.out")


def test_averaged_equals_ipi_ffrotations_around_ipi_driver(tmp_path, metatomic_model):
    """i-PI's <ffrotations> (legendre 2 + inversion) around i-PI's own metatomic driver
    equals our 2i endpoint serving the same file: no code of ours on the reference side."""
    atoms = water_box(8, seed=6)
    props = ffrotations_around_ipi_driver(tmp_path, metatomic_model, atoms, steps=6)
    assert len(props) == 7
    raw_energy = load_evaluator(metatomic_model).compute([Structure.from_ase(atoms)])[0].energy
    assert abs(props[0, 1] - raw_energy / 27.211386245988) > 1e-4  # averaging changes the energy here
    np.testing.assert_allclose(props[:, 2], props[:, 1], rtol=1e-10, atol=0)


def test_server_cli_reports_a_metatomic_model(tmp_path, metatomic_model):
    """``mlip-server`` loads it and says so; unknown elements still give one clear line."""
    import subprocess
    import sys

    from ase import Atoms

    Atoms("NaCl", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[10, 10, 10], pbc=True).write(
        tmp_path / "nacl.xyz"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlip_server.ipi.serve",
            "--model",
            metatomic_model,
            "--structure",
            str(tmp_path / "nacl.xyz"),
            "--address",
            "unix:never-used",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_refused(out, "atomic numbers [11, 17]", "metatomic model")


# --------------------------------------------------------------------------- subsets of atoms
def test_owned_atoms_and_per_atom_outputs_equal_the_contract_model(
    metatomic_model, strongly_anisotropic_model
):
    """A LAMMPS rank's cluster (the first atoms owned, the rest ghosts) through ``selected_atoms``
    and the per-atom ``energy`` output: the same energy, forces on every atom, virial, atomic
    energies and per-atom virials as the contract model; per-atom virials sum to the virial."""
    ours, wrapped = load_evaluator(strongly_anisotropic_model), load_evaluator(metatomic_model)
    assert wrapped.model.sums_atomic_energies and wrapped.model.per_atom_energies
    cluster = _structures()[1]
    for owned, per_atom in [(4, False), (4, True), (None, True)]:
        s = Structure(cluster.positions, cluster.numbers, owned=owned, per_atom=per_atom)
        for spec in ("none", "i"):
            a, b = ours.compute([s], spec)[0], wrapped.compute([s], spec)[0]
            assert b.energy == pytest.approx(a.energy, rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=1e-11)
            np.testing.assert_allclose(b.virial, a.virial, rtol=0, atol=1e-11)
            if per_atom:
                np.testing.assert_allclose(b.atom_energies, a.atom_energies, rtol=0, atol=1e-12)
                np.testing.assert_allclose(b.atom_virials, a.atom_virials, rtol=0, atol=1e-11)
                assert b.atom_energies.sum() == pytest.approx(b.energy, rel=1e-12)
                np.testing.assert_allclose(b.atom_virials.sum(axis=0), b.virial, rtol=0, atol=1e-11)
    whole = Structure(cluster.positions, cluster.numbers)
    full = wrapped.compute([whole])[0].energy
    part = wrapped.compute([Structure(cluster.positions, cluster.numbers, owned=4)])[0].energy
    assert abs(full - part) > 1e-3  # the ghosts' terms were dropped


def test_a_model_that_ignores_selected_atoms_is_refused_for_subsets(half_list_model):
    """HalfListPair returns every atom's energy whatever ``selected_atoms`` says: found at load
    time, and a subset of atoms is refused in one line that says why."""
    model = MetatomicModel.load(half_list_model, torch.device("cpu"), None)
    assert not model.sums_atomic_energies and not model.per_atom_energies
    assert "ignores selected_atoms" in model.subset_refusal
    assert "use --decomposition gather" in model.subset_refusal
    s = _structures()[1]
    g = load_evaluator(model).compute([Structure(s.positions, s.numbers)])[
        0
    ]  # the whole structure still works
    assert abs(g.energy) > 0
    with pytest.raises(ModelError, match="cannot be asked for"):
        model.evaluate([(_graph(model, Structure(s.positions, s.numbers, owned=3)), np.eye(3))])


def test_variant_outputs_are_declared_and_energy_is_served(models_dir, strongly_anisotropic_model):
    """An export with a variant ``energy/double`` (metatomic's variants): the server serves the
    plain ``energy``; the variant is the energy × 2 through metatomic itself."""
    path = export_metatomic(
        strongly_anisotropic_model, models_dir / "aniso-variant.pt", variants={"double": 2.0}
    )
    module = mta.load_atomistic_model(path)
    assert set(module.capabilities().outputs.keys()) == {"energy", "energy/double"}
    s = _structures()[1]
    plain = load_evaluator(strongly_anisotropic_model).compute([Structure(s.positions, s.numbers, owned=5)])[
        0
    ]
    served = load_evaluator(path).compute([Structure(s.positions, s.numbers, owned=5)])[0]
    assert served.energy == pytest.approx(plain.energy, rel=1e-12)
    full = load_evaluator(path).compute([Structure(s.positions, s.numbers)])[0].energy

    from ase import Atoms

    try:  # metatomic's own calculator and neighbour lists
        from metatomic_ase import MetatomicCalculator
    except ImportError:  # older metatomic-torch
        from metatomic.torch.ase_calculator import MetatomicCalculator

    atoms = Atoms(numbers=s.numbers, positions=s.positions)
    atoms.calc = MetatomicCalculator(path, variants={"energy": "double"})
    assert atoms.get_potential_energy() == pytest.approx(2 * full, rel=1e-10)


def _graph(model, s):
    return build_graph(s, "test", set(model.species), model.cutoff, 0.1, model.path)


@pytest.fixture(scope="module")
def system_energy_model(models_dir, strongly_anisotropic_model):
    """The wrapper of the contract model, declaring its energy per system only: selected_atoms
    works, per-atom energies are not offered."""
    from mlip_server.training.metatomic_wrapper import ContractAsMetatomic

    module = torch.jit.load(strongly_anisotropic_model)
    capabilities = mta.ModelCapabilities(
        outputs={"energy": mta.ModelOutput(unit="eV", sample_kind="system")},
        atomic_types=[1, 8],
        interaction_range=float(module.cutoff),
        length_unit="angstrom",
        supported_devices=["cpu"],
        dtype="float64",
    )
    path = models_dir / "system-energy-metatomic.pt"
    mta.AtomisticModel(
        ContractAsMetatomic(module).eval(), mta.ModelMetadata(name="system"), capabilities
    ).save(str(path))
    return str(path)


def test_a_model_without_per_atom_energies_serves_subsets_but_refuses_per_atom(
    system_energy_model, strongly_anisotropic_model
):
    ev = load_evaluator(system_energy_model)
    assert ev.model.sums_atomic_energies and not ev.model.per_atom_energies
    s = _structures()[1]
    owned = Structure(s.positions, s.numbers, owned=4)
    a, b = load_evaluator(strongly_anisotropic_model).compute([owned])[0], ev.compute([owned])[0]
    assert b.energy == pytest.approx(a.energy, rel=1e-12)
    np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=1e-11)
    with pytest.raises(ModelError, match="no per-atom energy output.*run without --per-atom"):
        ev.compute([Structure(s.positions, s.numbers, owned=4, per_atom=True)])


@pytest.fixture(scope="module")
def direct_metatomic(models_dir):
    """A direct-force toy on water (LJ force + bias × neighbour count: a net force to remove, and
    the analytic pair virial) as a contract file and as its metatomic export (non-conservative
    force and stress outputs)."""
    from mlip_server.training.toy_models import LennardJonesDirect
    from mlip_server.training.toy_models import export as export_contract

    model = LennardJonesDirect(epsilon=0.01, sigma=0.9, cutoff=4.0, species=[1, 8], bias=[0.05, -0.1, 0.15])
    contract = export_contract(model, models_dir / "lj-water-direct.pt")
    return contract, export_metatomic(contract, models_dir / "lj-water-direct-metatomic.pt")


def test_non_conservative_outputs_equal_the_contract_direct_head(direct_metatomic):
    """The metatomic export's non_conservative_force/_stress, served with ``direct``, equal the
    contract model's direct head: whole cells (net force removed, virial −σV), averaged, and a
    domain rank's cluster (selected atoms: the owned atoms' forces)."""
    contract, exported = direct_metatomic
    ours, theirs = load_evaluator(contract), load_evaluator(exported)
    assert isinstance(theirs.model, MetatomicModel)
    assert theirs.model.direct_forces and theirs.model.direct_virial
    atoms = water_box(8, seed=5)
    s = Structure.from_ase(atoms)
    for spec in ("direct", "direct+2i"):
        a, b = ours.compute([s], spec)[0], theirs.compute([s], spec)[0]
        assert abs(a.energy - b.energy) <= 1e-12 * abs(a.energy)
        np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=1e-12 * np.abs(a.forces).max())
        np.testing.assert_allclose(b.virial, a.virial, rtol=0, atol=1e-12 * np.abs(a.virial).max())
        assert b.extras["direct_net_force"] == pytest.approx(a.extras["direct_net_force"], rel=1e-10)
        if spec == "direct":  # the bias: a net force the server removed
            assert a.extras["direct_net_force"] > 1.0
    cluster = Structure(atoms.positions, atoms.numbers, owned=10)
    a, b = ours.compute([cluster], "direct")[0], theirs.compute([cluster], "direct")[0]
    assert abs(a.energy - b.energy) <= 1e-12 * abs(a.energy)
    np.testing.assert_allclose(b.forces[:10], a.forces[:10], rtol=0, atol=1e-12 * np.abs(a.forces).max())


def test_direct_endpoint_equals_ipi_metatomic_driver_non_conservative(tmp_path, direct_metatomic):
    """One i-PI run, two forcefields: our server's direct endpoint on the metatomic file (weight 1)
    and i-PI's own metatomic driver with ``non_conservative=True`` on the same file (weight 0):
    energies and net-force-free forces agree at every step."""
    _, model = direct_metatomic
    atoms = water_box(8, seed=5)
    ipi_sim.write_init(atoms, tmp_path / "init.xyz")
    ours, theirs = processes.unique_name("mlip-test"), processes.unique_name("mlip-test")
    energies = "pot_component_raw(index=0;bead=0), pot_component_raw(index=1;bead=0)"
    trajectories = "".join(
        f"    <trajectory filename='f{k}_0' stride='1' format='bin' bead='0'> "
        f"forces_component_raw({k}) </trajectory>\n"
        for k in (0, 1)
    )
    (tmp_path / "input.xml").write_text(
        XML.format(ours=ours, theirs=theirs, beads=1, energies=energies, trajectories=trajectories)
    )
    ipi = processes.start_ipi("input.xml", tmp_path)
    driver = server = None
    try:
        processes.wait_for_socket(theirs, ipi)
        driver = _ipi_metatomic_driver(theirs, model, tmp_path, ",non_conservative=True")
        server = processes.start_server(model, "init.xyz", [f"unix:{ours}=direct"], tmp_path)
        codes = processes.wait([ipi, driver, server], 240)
    finally:
        processes.stop([ipi, driver, server], [ours, theirs])
    assert codes[0] == 0 and codes[2] == 0, (tmp_path / "ipi.log").read_text()[-2000:]
    assert "direct forces (no backward pass" in (tmp_path / "server.log").read_text()
    props = np.loadtxt(tmp_path / "sim.out")
    assert props.shape == (9, 3)
    assert np.ptp(props[:, 1]) > 1e-6
    np.testing.assert_allclose(props[:, 1], props[:, 2], rtol=1e-10, atol=0)
    ratio = (  # i-PI's driver converts with its 8-digit 'ev/ang' constant (see above)
        unit_to_internal("energy", "electronvolt", 1.0)
        / unit_to_internal("length", "angstrom", 1.0)
        / unit_to_internal("force", "ev/ang", 1.0)
    )
    f_ours = np.array(_read_binary_frames(tmp_path / "sim.f0_0.bin"))
    f_ipi = np.array(_read_binary_frames(tmp_path / "sim.f1_0.bin"))
    assert f_ours.shape == f_ipi.shape == (9, len(atoms), 3)
    assert np.abs(f_ours.sum(axis=1)).max() < 1e-10  # the net force is removed on both sides
    np.testing.assert_allclose(f_ours, f_ipi * ratio, rtol=0, atol=1e-10 * np.abs(f_ours).max())
