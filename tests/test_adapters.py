"""The same Evaluator behind i-PI's in-process <ffdirect> and i-pi-py_driver -m custom."""

from pathlib import Path

import ipi_sim
import numpy as np

from server import processes
from server.ipi import pes

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
