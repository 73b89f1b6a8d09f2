"""Rotational averaging: invariance, exactness of batching, derivatives, i-PI agreement."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_evaluator import finite_difference_forces, strain_derivative_virial

from mlip_server.core.averaging import Averaging
from mlip_server.core.errors import InputError
from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.structures import water_box, water_molecule


def _cluster():
    atoms = water_molecule() + water_molecule(
        (2.8, 0.2, 0.3), Rotation.from_euler("xyz", [0.3, 1.0, 2.0]).as_matrix()
    )
    atoms += water_molecule((0.5, 2.7, -0.4), Rotation.from_euler("xyz", [1.3, -0.4, 0.5]).as_matrix())
    return Structure(atoms.positions, atoms.numbers)


def _rotated(s: Structure, rot: np.ndarray) -> Structure:
    return Structure(s.positions @ rot.T, s.numbers, s.cell @ rot.T, s.pbc)


def test_grid_sizes_match_the_paper():
    assert [Averaging(s).n_rotations for s in ["none", "i", "2", "2i", "3", "3i"]] == [1, 2, 18, 36, 75, 150]
    assert Averaging("lebedev:3").n_rotations == 18 and Averaging("lebedev:5i").n_rotations == 140
    rot = Averaging("2i").rotations()
    assert rot.weights.sum() == pytest.approx(1.0)
    assert rot.weights[rot.raw_index] == 0.0  # the identity is added, weight 0, for diagnostics
    for bad in ["7q", "lebedev:", "lebedev:4", "random-x", "-2"]:
        with pytest.raises(InputError, match="(?i)lebedev|valid specs"):
            Averaging(bad)


def test_averaging_restores_invariance_monotonically(strongly_anisotropic_model):
    ev = load_evaluator(strongly_anisotropic_model)
    s = _cluster()
    rotations = Rotation.random(4, random_state=7).as_matrix()
    spreads = {}
    for spec in ["none", "2", "3", "4"]:
        energies = [ev.compute([_rotated(s, r)], spec)[0].energy for r in rotations]
        energies.append(ev.compute([s], spec)[0].energy)
        spreads[spec] = np.ptp(energies)
    # measured (this model and cluster): none 8.4e-2 eV, 2 2.4e-4, 3 8.4e-6, 4 3.8e-7
    assert spreads["none"] > 1e-2
    assert spreads["none"] > 30 * spreads["2"] > 30 * 10 * spreads["3"] > 30 * 10 * 10 * spreads["4"]
    assert spreads["4"] < 1e-4 * spreads["none"]


@pytest.mark.parametrize("spec", ["i", "2i", "lebedev:3i"])
def test_inversion_specs_are_exactly_inversion_invariant(strongly_anisotropic_model, spec):
    ev = load_evaluator(strongly_anisotropic_model)
    s = _cluster()
    a = ev.compute([s], spec)[0]
    b = ev.compute([_rotated(s, -np.eye(3))], spec)[0]
    assert abs(a.energy - b.energy) < 1e-10
    np.testing.assert_allclose(b.forces, -a.forces, atol=1e-10)


@pytest.mark.parametrize("spec", ["2i", "lebedev:3"])
def test_batched_average_equals_loop_over_rotations(strongly_anisotropic_model, spec):
    ev = load_evaluator(strongly_anisotropic_model)
    box = water_box(8, seed=3)
    structures = [_cluster(), Structure.from_ase(box)]
    batched = ev.compute(structures, spec)
    rot = Averaging(spec).rotations()
    for s, res in zip(structures, batched):
        energy, forces, virial = 0.0, np.zeros_like(s.positions), np.zeros((3, 3))
        for r, w in zip(rot.matrices, rot.weights):
            raw = ev.compute([_rotated(s, r)])[0]
            energy += w * raw.energy
            forces += w * raw.forces @ r
            virial += w * r.T @ raw.virial @ r
        assert abs(res.energy - energy) < 1e-10 * max(1.0, abs(energy))
        np.testing.assert_allclose(res.forces, forces, atol=1e-10)
        np.testing.assert_allclose(res.virial, virial, atol=1e-10)
    # chunking by a small memory budget gives the same numbers
    chunked = load_evaluator(strongly_anisotropic_model, max_batch_edges=500).compute(structures, spec)
    for a, b in zip(batched, chunked):
        assert abs(a.energy - b.energy) < 1e-10 and np.abs(a.forces - b.forces).max() < 1e-10


def test_averaged_forces_and_virial_are_derivatives(strongly_anisotropic_model):
    ev = load_evaluator(strongly_anisotropic_model)
    box = water_box(8, seed=5)
    s = Structure.from_ase(box)
    s.positions, s.numbers = s.positions[:6], s.numbers[:6]
    avg = Averaging("2i")
    res = ev.compute([s], avg)[0]

    class Averaged:  # finite-difference helpers call .compute(structures)
        def compute(self, structures):
            return ev.compute(structures, avg)

    fd = finite_difference_forces(Averaged(), s)
    assert np.abs(res.forces - fd).max() <= 1e-6 * np.abs(fd).max()
    w = strain_derivative_virial(Averaged(), s)
    assert np.abs(res.virial - w).max() <= 1e-6 * np.abs(w).max()


def test_diagnostics_describe_the_symmetry_breaking(strongly_anisotropic_model):
    ev = load_evaluator(strongly_anisotropic_model)
    s = _cluster()
    avg = ev.compute([s], "3i")[0]
    raw = ev.compute([s])[0]
    x = avg.extras
    assert x["n_rotations"] == 150
    assert x["raw_energy"] == pytest.approx(raw.energy, abs=1e-12)
    assert x["delta_energy"] == pytest.approx(avg.energy - raw.energy, abs=1e-12)
    assert x["energy_spread"] > 0 and x["force_spread_rms"] > 0
    assert x["raw_force_delta_rms"] == pytest.approx(np.sqrt(np.mean((avg.forces - raw.forces) ** 2)))
    assert ev.compute([s])[0].extras == {}


def test_random_rotation_changes_every_call_and_is_reproducible(strongly_anisotropic_model):
    ev = load_evaluator(strongly_anisotropic_model)
    s = _cluster()
    first = [ev.compute([s], a)[0].energy for a in [Averaging("random", seed=1)] * 3]
    again = [ev.compute([s], a)[0].energy for a in [Averaging("random", seed=1)] * 3]
    assert len(set(np.round(first, 12))) == 3
    assert first == again
    rot = Averaging("random-i", seed=2)
    dets = {round(np.linalg.det(rot.rotations().matrices[0])) for _ in range(20)}
    assert dets == {-1, 1}


def test_agrees_with_ipi_ffrotations(tmp_path, strongly_anisotropic_model):
    """i-PI's engine-side <ffrotations> (legendre 2 + inversion) around our raw endpoint
    equals our 2i endpoint, step by step, on the same trajectory."""
    import ipi_sim

    from mlip_server import processes

    atoms = water_box(8, seed=6)
    ipi_sim.write_init(atoms, tmp_path / "init.xyz")
    raw, avg = processes.unique_name("mlip-test"), processes.unique_name("mlip-test")
    xml = ipi_sim.FFROTATIONS.format(
        raw=raw,
        ours=avg,
        steps=10,
        trajectories="    <trajectory filename='f0' stride='5' format='xyz'> "
        "forces_component_raw(0) </trajectory>\n"
        "    <trajectory filename='f1' stride='5' format='xyz'> forces_component_raw(1) </trajectory>\n",
    )
    (tmp_path / "input.xml").write_text(xml)
    ipi = processes.start_ipi("input.xml", tmp_path)
    server = None
    try:
        processes.wait_for_socket(raw, ipi)
        server = processes.start_server(
            strongly_anisotropic_model, "init.xyz", [f"unix:{raw}", f"unix:{avg}=2i"], tmp_path
        )
        assert processes.wait([ipi, server], 240) == [0, 0], (tmp_path / "server.log").read_text()[-2000:]
    finally:
        processes.stop([ipi, server], [raw, avg])
    props = np.loadtxt(tmp_path / "sim.out")
    assert len(props) == 11
    np.testing.assert_allclose(props[:, 2], props[:, 1], rtol=1e-8, atol=0)
    # forces agree too (within the 6 significant digits of the xyz output)
    from ipi.utils.parsing import read_trajectory

    f0 = np.array([a.positions for a in read_trajectory(str(tmp_path / "sim.f0.xyz"))])
    f1 = np.array([a.positions for a in read_trajectory(str(tmp_path / "sim.f1.xyz"))])
    assert np.abs(f1 - f0).max() <= 1e-4 * np.abs(f0).max()  # xyz output has 6 significant digits
