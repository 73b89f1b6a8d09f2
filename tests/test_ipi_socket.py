"""Real i-PI over real sockets: NVT (unix and inet), PIMD batched three ways, ffdirect."""

import ipi_sim
import numpy as np
import pytest

from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator


@pytest.mark.parametrize("mode", ["unix", "inet", "shm"])
def test_nvt_energies_and_forces_equal_a_direct_evaluation(tmp_path, toy_model, water8, mode):
    """What i-PI received over each transport (its potential and its forces, written by i-PI in
    eV and eV/Å) equals the Evaluator called directly on i-PI's own frames: a wrong sign, factor or
    unit of the energy or of the forces on any route fails."""
    out = ipi_sim.run(tmp_path, water8, toy_model, steps=20, mode=mode, forces=True)
    assert out.codes == [0, 0], out.server_log[-2000:] + out.ipi_log[-2000:]
    assert "EXIT received" in out.server_log
    frames, forces = out.frames(), out.forces()
    assert len(frames) == 21 and len(out.properties) == 21 and forces.shape == (21, 24, 3)
    ev = load_evaluator(toy_model, dtype="float64")
    for step in (0, 10, 20):
        atoms = frames[step]
        atoms.numbers = water8.numbers
        direct = ev.compute([Structure.from_ase(atoms)])[0]
        # positions are written with 8 decimals (Å): 1e-8 Å × forces bounds the energy difference,
        # 1e-8 Å × the force constants (< 100 eV/Å²) the force difference; forces have 8 decimals
        assert out.properties[step, 3] == pytest.approx(direct.energy, abs=1e-6)
        assert np.abs(direct.forces).max() > 0.1  # far above the tolerance below
        np.testing.assert_allclose(forces[step], direct.forces, rtol=0, atol=1e-5)
    if mode == "shm":
        assert out.left_shm == [], "i-PI's shared-memory segments were left behind"


def test_pimd_batched_over_connections_and_batch_size(tmp_path, toy_model, water8):
    serial = ipi_sim.run(tmp_path / "serial", water8, toy_model, steps=20, nbeads=4)
    two_conn = ipi_sim.run(tmp_path / "two", water8, toy_model, steps=20, nbeads=4, connections=2)
    batched = ipi_sim.run(tmp_path / "batch", water8, toy_model, steps=20, nbeads=4, batch=4)
    for run in (serial, two_conn, batched):
        assert run.codes == [0, 0], run.server_log[-2000:] + run.ipi_log[-2000:]
    ref = serial.properties
    for run in (two_conn, batched):
        assert run.properties.shape == ref.shape
        np.testing.assert_allclose(run.properties, ref, rtol=1e-8, atol=1e-10)
    # the server log shows that the beads were evaluated together
    assert "1×" in serial.server_log
    assert "2×" in two_conn.server_log
    assert "4×" in batched.server_log


def test_more_connections_than_ipi_backlog(tmp_path, toy_model, water8):
    """8 connections: i-PI accepts and hand-shakes clients one at a time with a small listen
    backlog; the server must answer the first hand-shakes while it connects the others."""
    # a generous batch wait: on a loaded machine the 8 beads may not arrive within the default 5 ms
    run = ipi_sim.run(
        tmp_path,
        water8,
        toy_model,
        steps=5,
        nbeads=8,
        connections=8,
        timeout=120,
        server_args=["--batch-wait", "0.5"],
    )
    assert run.codes == [0, 0], run.server_log[-2000:] + run.ipi_log[-2000:]
    assert "batch sizes (structures per model call × calls): 8×6" in run.server_log


@pytest.mark.parametrize("nbeads, batch", [(1, 1), (4, 4)])
def test_shm_transport_equals_the_unix_route(tmp_path, toy_model, water8, nbeads, batch):
    """i-PI's mode='shm' (messages on the unix socket, arrays in i-PI's shared memory): the same
    trajectory and energies as mode='unix' to 1e-12, single and batched (4 beads in one message);
    no shared-memory segment is left behind (looked for once i-PI and the server have ended, before
    the harness removes what a failed run leaves)."""
    runs = {
        mode: ipi_sim.run(tmp_path / mode, water8, toy_model, steps=10, nbeads=nbeads, batch=batch, mode=mode)
        for mode in ("unix", "shm")
    }
    for run in runs.values():
        assert run.codes == [0, 0], run.server_log[-2000:] + run.ipi_log[-2000:]
    unix, shm = runs["unix"].properties, runs["shm"].properties
    assert unix.shape == shm.shape == (11, 4)
    assert np.abs(shm[:, 3] - unix[:, 3]).max() <= 1e-12 * np.abs(unix[:, 3]).max()
    assert np.abs(shm[:, 1] - unix[:, 1]).max() <= 1e-12 * np.abs(unix[:, 1]).max()  # conserved quantity
    if batch > 1:
        assert "4×" in runs["shm"].server_log  # the 4 beads arrived as one batch
    assert runs["shm"].left_shm == [], "i-PI's shared-memory segments were left behind"
    assert "leaked shared_memory" not in runs["shm"].server_log  # the server never owns (removes) one
