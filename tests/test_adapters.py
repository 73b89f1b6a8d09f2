"""The same Evaluator behind i-PI's in-process <ffdirect> and i-pi-py_driver -m custom."""

import sys
from pathlib import Path

import ipi_sim
import numpy as np
import pytest

from mlip_server import processes
from mlip_server.ipi import pes

PES = Path(pes.__file__).resolve()


def _xml(forcefield):
    return ipi_sim.INPUT.format(
        steps=10,
        nbeads=2,
        forcefields=forcefield,
        forces="<force forcefield='mlip'/>",
        mode="nvt",
        extras="",
        thermostat="<thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat>",
    )


def test_ffdirect_and_py_driver_match_socket_server(tmp_path, toy_model, water8):
    socket_run = ipi_sim.run(tmp_path / "socket", water8, toy_model, steps=10, nbeads=2)
    assert socket_run.codes == [0, 0]

    direct = tmp_path / "direct"
    direct.mkdir()
    ipi_sim.write_init(water8, direct / "init.xyz")
    ff = (
        f"  <ffdirect name='mlip' pbc='false'><pes>custom</pes><pes_path>{PES}</pes_path>"
        f"<parameters>{{model: {toy_model}, structure: init.xyz}}</parameters></ffdirect>\n"
    )
    (direct / "input.xml").write_text(_xml(ff))
    ipi = processes.start_ipi("input.xml", direct)
    assert processes.wait([ipi], 120) == [0], (direct / "ipi.log").read_text()[-2000:]
    np.testing.assert_allclose(np.loadtxt(direct / "sim.out"), socket_run.properties, rtol=1e-10, atol=1e-12)

    driver = tmp_path / "driver"
    driver.mkdir()
    ipi_sim.write_init(water8, driver / "init.xyz")
    name = processes.unique_name("mlip-test")
    ff = (
        f"  <ffsocket name='mlip' mode='unix' pbc='false'><address>{name}</address>"
        "<latency>1e-4</latency></ffsocket>\n"
    )
    (driver / "input.xml").write_text(_xml(ff))
    ipi = processes.start_ipi("input.xml", driver)
    client = None
    try:
        processes.wait_for_socket(name, ipi)
        client = processes.start(
            [
                processes.executable("i-pi-py_driver"),
                "-m",
                "custom",
                "-P",
                PES,
                "-u",
                "-a",
                name,
                "-o",
                f"model={toy_model},structure=init.xyz",
            ],
            cwd=driver,
            log=driver / "driver.log",
        )
        assert processes.wait([ipi, client], 120)[0] == 0
    finally:
        processes.stop([ipi, client], [name])
    np.testing.assert_allclose(np.loadtxt(driver / "sim.out"), socket_run.properties, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transport", ["unix", "inet"])
def test_ase_socketio_host_drives_the_server(tmp_path, toy_model, water8, transport):
    """ASE's SocketIOCalculator (an independent i-PI-protocol host) drives mlip-server: energies,
    forces and stress equal the in-process calculator's (ASE's own Hartree and Bohr constants: 1e-7
    relative); ASE closes its socket without EXIT, which ends the server with status 0 and an info
    line under --on-close exit, and stays an error without it."""
    from ase.calculators.socketio import SocketIOCalculator

    from mlip_server.ase_calculator import MLIPCalculator
    from mlip_server.structures import write_ipi_xyz

    write_ipi_xyz(water8, tmp_path / "init.xyz")
    reference = water8.copy()
    reference.calc = MLIPCalculator(toy_model)
    e_ref, f_ref = reference.get_potential_energy(), reference.get_forces()
    s_ref = reference.get_stress()
    for on_close in ("exit", "error"):
        if transport == "unix":
            name = processes.unique_name("mlip-test")
            host_kwargs, address = {"unixsocket": name}, f"unix:{name}"
        else:
            port = processes.free_port()
            host_kwargs, address = {"port": port}, f"inet:127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "mlip_server.ipi.serve",
            "--model",
            toy_model,
            "--structure",
            "init.xyz",
            "--address",
            address,
            "--on-close",
            on_close,
        ]
        server = processes.start(cmd, cwd=tmp_path, log=tmp_path / f"server-{on_close}.log")
        try:
            atoms = water8.copy()
            with SocketIOCalculator(**host_kwargs) as calc:
                atoms.calc = calc
                energies = []
                for shift in (0.0, 0.01):
                    atoms.positions[0, 0] += shift
                    energies.append(atoms.get_potential_energy())
                    if shift == 0.0:
                        forces, stress = atoms.get_forces(), atoms.get_stress()
            code = server.wait(timeout=60)
        finally:
            processes.stop([server])
        log = (tmp_path / f"server-{on_close}.log").read_text()
        assert abs(energies[0] - e_ref) <= 1e-7 * abs(e_ref)
        # ASE converts positions and cell with its own Bohr: a uniform strain of ~1e-7, whose
        # effect on forces and stress is larger than on the energy
        assert np.abs(forces - f_ref).max() <= 2e-6 * np.abs(f_ref).max()
        assert np.abs(stress - s_ref).max() <= 2e-5 * np.abs(s_ref).max()
        assert energies[1] != energies[0]  # the second exchange saw the moved atom
        if on_close == "exit":
            assert code == 0 and "closed the connection after 2 exchanges (--on-close exit)" in log, log
        else:
            assert code == 1 and "without EXIT" in log, log
