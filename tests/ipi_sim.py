"""Small i-PI runs (tests, benchmarks): render an input, run i-PI and mlip-server, read outputs.

The input is a fixed NVT (SVR) or PIMD (PILE-L) water-like setup at 300 K with 0.5 fs steps;
``ffdirect=True`` evaluates the model in-process (``server/ipi/pes.py``) instead of a socket.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server import processes
from server.ipi import pes
from server.structures import write_ipi_xyz

FORCEFIELD = """  <ffsocket name='{name}' mode='{mode}' pbc='false'>
    <address>{address}</address>{port}<latency>1e-4</latency><batch_size>{batch}</batch_size>
  </ffsocket>
"""

PES = Path(pes.__file__).resolve()
DIRECT = """  <ffdirect name='{name}' pbc='false'><pes>custom</pes><pes_path>{pes}</pes_path>
    <parameters>{{model: {model}, structure: init.xyz, average: {average}}}</parameters>
    <batch_size>{batch}</batch_size>
  </ffdirect>
"""

EXTRAS = """    <trajectory filename='extras' stride='1' extra_type='{extra}'> extras </trajectory>
"""

INPUT = """<simulation verbosity='low' floatformat='%25.16e' safe_stride='1000'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [step, conserved, temperature{{kelvin}},
      potential{{electronvolt}}] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions </trajectory>
{extras}  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
{forcefields}  <system>
    <initialize nbeads='{nbeads}'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces>{forces}</forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='{mode}'><timestep units='femtosecond'>0.5</timestep>
      {thermostat}</dynamics></motion>
  </system>
</simulation>
"""

FFROTATIONS = """<simulation verbosity='low' floatformat='%25.16e'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [step, pot_component_raw(0), pot_component_raw(1)] </properties>
{trajectories}  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>4</seed></prng>
  <ffrotations name='ipi-avg'>
    <grid_mode>legendre</grid_mode><grid_order>2</grid_order><inversion>true</inversion>
    <ffsocket name='raw' mode='unix' pbc='false'><address>{raw}</address><latency>1e-4</latency></ffsocket>
  </ffrotations>
  <ffsocket name='ours' mode='unix' pbc='false'><address>{ours}</address><latency>1e-4</latency></ffsocket>
  <system>
    <initialize nbeads='1'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces><force forcefield='ipi-avg' weight='1'/><force forcefield='ours' weight='0'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='nve'>
      <timestep units='femtosecond'>0.5</timestep></dynamics></motion>
  </system>
</simulation>"""
"""NVE driven by i-PI's own <ffrotations> (legendre 2 + inversion = our ``2i``) around the socket
``raw``, with a second socket ``ours`` evaluated on the same configurations (weight 0):
``sim.out`` columns 1 and 2 are their energies (Hartree)."""


write_init = write_ipi_xyz


def run(
    workdir,
    atoms,
    model,
    *,
    steps=20,
    nbeads=1,
    mode="unix",
    connections=1,
    batch=1,
    server_args=(),
    endpoints=None,
    extra=None,
    timeout=240,
    ffdirect=False,
):
    """Runs i-PI + one mlip-server; returns the parsed outputs.

    ``endpoints``: list of (forcefield name, address suffix for the server, weight) for
    several forcefields; default one forcefield 'mlip'.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_init(atoms, workdir / "init.xyz")
    base = processes.unique_name("mlip-test")
    endpoints = endpoints or [("mlip", "", 1.0)]
    ffs, forces, addresses, sockets = "", "", [], []
    for k, (name, suffix, weight) in enumerate(endpoints):
        if ffdirect:
            ffs += DIRECT.format(
                name=name,
                pes=PES,
                model=Path(model).resolve(),
                average=suffix.lstrip("=") or "none",
                batch=batch,
            )
            forces += f"<force forcefield='{name}' weight='{weight}'/>"
            continue
        if mode in ("unix", "shm"):
            address, port = f"{base}-{k}", ""
            sockets.append(address)
            server_address = f"{mode}:{address}"
        else:
            address, port_n = "127.0.0.1", processes.free_port()
            port = f"<port>{port_n}</port>"
            server_address = f"inet:127.0.0.1:{port_n}"
        ffs += FORCEFIELD.format(name=name, mode=mode, address=address, port=port, batch=batch)
        forces += f"<force forcefield='{name}' weight='{weight}'/>"
        addresses += [server_address + suffix] * connections
    thermostat = "<thermostat mode='svr'><tau units='femtosecond'>10</tau></thermostat>"
    motion = "nvt"
    if nbeads > 1:
        thermostat = "<thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat>"
    xml = INPUT.format(
        steps=steps,
        nbeads=nbeads,
        forcefields=ffs,
        forces=forces,
        mode=motion,
        thermostat=thermostat,
        extras=EXTRAS.format(extra=extra) if extra else "",
    )
    (workdir / "input.xml").write_text(xml)
    ipi = processes.start_ipi("input.xml", workdir)
    server = None
    try:
        if ffdirect:
            return Outputs(workdir, processes.wait([ipi], timeout) + [0], nbeads)
        if mode in ("unix", "shm"):
            processes.wait_for_socket(sockets[0], ipi)
        server = processes.start_server(model, "init.xyz", addresses, workdir, extra=list(server_args))
        codes = processes.wait([ipi, server], timeout)
    finally:
        processes.stop([ipi, server], sockets)
        processes.remove_ipi_shm(ipi.pid)
    return Outputs(workdir, codes, nbeads)


class Outputs:
    def __init__(self, workdir, codes, nbeads):
        self.workdir, self.codes, self.nbeads = Path(workdir), codes, nbeads
        self.properties = np.loadtxt(self.workdir / "sim.out")
        log = self.workdir / "server.log"
        self.server_log = log.read_text() if log.exists() else ""
        self.ipi_log = (self.workdir / "ipi.log").read_text()

    def frames(self, bead=0):
        """Position frames of one bead as ASE Atoms (Å, with the cell)."""
        import ase.io

        (path,) = sorted(self.workdir.glob("sim.pos_*.extxyz"))[bead : bead + 1]
        return ase.io.read(path, index=":")
