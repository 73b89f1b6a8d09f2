"""Which force sits at which MTS level in the direct-force experiments, read from i-PI itself.

The three direct-force experiments claim (ipi_inputs/*/experiment.json): the model's direct head
every inner step, and the conservative rotational average (``2i``) minus the head every outer step,
so that over an outer step the forces sum to the conservative one; the PIMD variant applies the
outer correction on the ring polymer contracted to its centroid and the head on every bead.

Each experiment is rendered by the launcher (its shipped input.xml, the endpoints it names) with
``<ffdirect>`` forcefields, loaded into an i-PI ``Simulation`` in this process, and i-PI's own
per-level forces (``forces.mts_forces[level].f``: what its integrator kicks with at that level)
are compared with the two endpoints evaluated here through the ASE calculator. The head is the
water toy's Morse force while the model also has a strongly non-invariant term, so the direct
force, the conservative average and their difference are all far apart: swapping the levels'
``<mts_weights>``, giving an endpoint the other spec, or dropping the contraction fails.

Tolerance: both sides evaluate the same float64 model at positions that differ only by the
bohr/Å conversions (a few ulp of ~10 Å, ~1e-14 Å); with force constants ≲ 100 eV/Å² the forces
differ by ≲ 1e-12 eV/Å, so 1e-9 eV/Å is a wide margin and still 10⁵ times below the differences
between the forces being told apart (asserted > 1e-3 eV/Å).
"""

from __future__ import annotations

import ase
import numpy as np
import pytest

from mlip_server.ase_calculator import MLIPCalculator
from mlip_server.ipi.experiments import RunOptions, render
from mlip_server.training.toy_models import export, water_toy_direct

TOL = 1e-9  # eV/Å (module docstring)
APART = 1e-3  # eV/Å: the forces told apart differ at least this much somewhere


@pytest.fixture(scope="module")
def rough_direct(models_dir) -> str:
    """The water toy with a Morse-force head and a large non-invariant term (anisotropy 0.3): the
    head, the raw −∇E and the 2i average all differ."""
    return export(water_toy_direct(anisotropy=0.3), models_dir / "water-direct-rough.pt")


def _ipi_system(name, model, folder, monkeypatch, beads=None):
    """The experiment as the launcher renders it (4 molecules, ffdirect), loaded into i-PI."""
    from ipi.engine.simulation import Simulation

    folder.mkdir()
    monkeypatch.chdir(folder)  # the <ffdirect> parameters name init.xyz relative to the run folder
    options = RunOptions(
        model=model, molecules=4, steps=1, nmts=3, beads=beads, device="cpu", transport="ffdirect"
    )
    rendered = render(name, options, folder, "levels")
    (folder / "input.xml").write_text(rendered.xml)
    assert rendered.endpoints == {"fast": "direct", "avg": "2i"}, rendered.endpoints
    with open(folder / "input.xml") as xml:
        simulation = Simulation.load_from_xml(xml, request_banner=False, read_only=True)
    return simulation.syslist[0]


def _units():
    from ipi.utils.units import unit_to_internal

    bohr = unit_to_internal("length", "angstrom", 1.0)  # bohr per Å
    force = unit_to_internal("energy", "electronvolt", 1.0) / bohr  # Ha/bohr per eV/Å
    return bohr, force


def _endpoint_forces(model, system, q_bohr):
    """(direct, conservative 2i) forces in eV/Å of the model at positions ``q_bohr`` (i-PI's
    layout, one bead), in the system's cell."""
    bohr, _ = _units()
    h = np.array(system.cell.h) / bohr  # i-PI: cell vectors as columns
    atoms = ase.Atoms(
        symbols=list(system.beads.names),
        positions=np.asarray(q_bohr).reshape(-1, 3) / bohr,
        cell=h.T,
        pbc=True,
    )
    out = []
    for spec in ("direct", "2i"):
        atoms.calc = MLIPCalculator(model, average=spec)
        out.append(atoms.get_forces().copy())
    return out


def _levels(system):
    """i-PI's forces at the outer (0) and inner (1) MTS level, eV/Å, shape [beads, atoms, 3]."""
    _, force = _units()
    assert len(system.forces.mts_forces) == 2
    return [
        np.array(system.forces.mts_forces[k].f).reshape(system.beads.nbeads, -1, 3) / force for k in (0, 1)
    ]


def _assert_apart(*forces):
    for k, a in enumerate(forces):
        for b in forces[k + 1 :]:
            assert np.abs(a - b).max() > APART, "the forces to tell apart are too close"


@pytest.mark.parametrize("name", ["water-nvt-nc-mts", "water-nve-nc-mts"])
def test_direct_head_is_the_inner_force_and_the_conservative_correction_the_outer(
    name, rough_direct, tmp_path, monkeypatch
):
    system = _ipi_system(name, rough_direct, tmp_path / name, monkeypatch)
    direct, conservative = _endpoint_forces(rough_direct, system, system.beads.q[0])
    _assert_apart(direct, conservative, conservative - direct)
    outer, inner = _levels(system)
    np.testing.assert_allclose(inner[0], direct, rtol=0, atol=TOL, err_msg="inner level: the direct head")
    np.testing.assert_allclose(
        outer[0], conservative - direct, rtol=0, atol=TOL, err_msg="outer level: conservative − direct"
    )


def test_pimd_direct_head_on_every_bead_inner_and_the_contracted_correction_outer(
    rough_direct, tmp_path, monkeypatch
):
    """Two beads pulled apart (i-PI starts them on one frame): the inner level is the head at each
    bead, the outer level is (conservative − head) at the centroid, the same on both beads."""
    system = _ipi_system("water-pimd-nc-rpc", rough_direct, tmp_path / "pimd", monkeypatch, beads=2)
    bohr, _ = _units()
    rng = np.random.default_rng(3)
    q = np.array(system.beads.q)
    q[1] += rng.normal(0.0, 0.05 * bohr, q.shape[1])  # ~0.05 Å apart per coordinate
    system.beads.q[:] = q
    centroid = q.mean(axis=0)
    outer, inner = _levels(system)
    beads = [_endpoint_forces(rough_direct, system, q[k]) for k in range(2)]
    direct_c, conservative_c = _endpoint_forces(rough_direct, system, centroid)
    _assert_apart(beads[0][0], beads[1][0], direct_c, conservative_c - direct_c)
    for k in range(2):
        np.testing.assert_allclose(
            inner[k], beads[k][0], rtol=0, atol=TOL, err_msg=f"inner level, bead {k}: the direct head"
        )
        np.testing.assert_allclose(
            outer[k],
            conservative_c - direct_c,
            rtol=0,
            atol=TOL,
            err_msg=f"outer level, bead {k}: conservative − direct at the centroid",
        )
