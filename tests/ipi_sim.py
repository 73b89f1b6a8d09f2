"""Small i-PI runs (tests, benchmarks): render an input, run i-PI and mlip-server, read outputs.

The input is a fixed NVT (SVR) or PIMD (PILE-L) water-like setup at 300 K with 0.5 fs steps;
``ffdirect=True`` evaluates the model in-process (``server/ipi/pes.py``) instead of a socket.
``forces=True`` also writes i-PI's forces (``sim.frc_*.extxyz``, eV/Å: :meth:`Outputs.forces`).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from mlip_server import processes
from mlip_server.ipi import pes
from mlip_server.structures import write_ipi_xyz

FORCEFIELD = """  <ffsocket name='{name}' mode='{mode}' pbc='false'>
    <address>{address}</address>{port}<latency>1e-4</latency><batch_size>{batch}</batch_size>
  </ffsocket>
"""

PES = Path(pes.__file__).resolve()
DIRECT = """  <ffdirect name='{name}' pbc='false'><pes>custom</pes><pes_path>{pes}</pes_path>
    <parameters>{{{source}, structure: init.xyz, average: {average}}}</parameters>
    <batch_size>{batch}</batch_size>
  </ffdirect>
"""

EXTRAS = """    <trajectory filename='extras' stride='1' extra_type='{extra}'> extras </trajectory>
"""
FORCES = """    <trajectory filename='frc' stride='1' format='ase'> forces </trajectory>
"""
"""i-PI's total forces per bead, extended XYZ in ASE units (eV/Å, 8 decimals)."""

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
    forces=False,
):
    """Runs i-PI + one mlip-server; returns the parsed outputs.

    ``model``: a model file, or a list of them (a committee: ``--committee`` for the server,
    ``committee: a;b`` for ``ffdirect``). ``endpoints``: list of (forcefield name, address suffix
    for the server, weight) for several forcefields; default one forcefield 'mlip'. ``forces``:
    also write i-PI's forces (:meth:`Outputs.forces`).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_init(atoms, workdir / "init.xyz")
    base = processes.unique_name("mlip-test")
    endpoints = endpoints or [("mlip", "", 1.0)]
    ffs, forces, addresses, sockets = "", "", [], []
    for k, (name, suffix, weight) in enumerate(endpoints):
        if ffdirect:
            if isinstance(model, (list, tuple)):
                source = "committee: " + ";".join(str(Path(m).resolve()) for m in model)
            else:
                source = f"model: {Path(model).resolve()}"
            ffs += DIRECT.format(
                name=name,
                pes=PES,
                source=source,
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
        extras=(EXTRAS.format(extra=extra) if extra else "") + (FORCES if forces else ""),
    )
    (workdir / "input.xml").write_text(xml)
    ipi = processes.start_ipi("input.xml", workdir)
    server, left_shm = None, None
    try:
        if ffdirect:
            codes = processes.wait([ipi], timeout) + [0]
        else:
            if mode in ("unix", "shm"):
                processes.wait_for_socket(sockets[0], ipi)
            server = processes.start_server(model, "init.xyz", addresses, workdir, extra=list(server_args))
            codes = processes.wait([ipi, server], timeout)
        # what i-PI and the server left behind, before this harness cleans up after a failure
        left_shm = sorted(glob.glob(f"/dev/shm/ipi_shm_{ipi.pid}_*"))
    finally:
        processes.stop([ipi, server], sockets)
        processes.remove_ipi_shm(ipi.pid)
    return Outputs(workdir, codes, nbeads, left_shm)


class Outputs:
    """A finished run: ``codes`` (i-PI's and the server's exit status), ``properties``
    (``sim.out``), the logs, and ``left_shm``: i-PI's shared-memory segments (``/dev/shm``) still
    there once both processes had ended, before the harness removed them (should be empty)."""

    def __init__(self, workdir, codes, nbeads, left_shm=None):
        self.workdir, self.codes, self.nbeads = Path(workdir), codes, nbeads
        self.left_shm = left_shm
        self.properties = np.loadtxt(self.workdir / "sim.out")
        log = self.workdir / "server.log"
        self.server_log = log.read_text() if log.exists() else ""
        self.ipi_log = (self.workdir / "ipi.log").read_text()

    def frames(self, bead=0):
        """Position frames of one bead as ASE Atoms (Å, with the cell)."""
        import ase.io

        (path,) = sorted(self.workdir.glob("sim.pos_*.extxyz"))[bead : bead + 1]
        return ase.io.read(path, index=":")

    def forces(self, bead=0):
        """i-PI's forces of one bead, frame by frame, eV/Å [frames, atoms, 3] (``forces=True``)."""
        import ase.io

        (path,) = sorted(self.workdir.glob("sim.frc_*.extxyz"))[bead : bead + 1]
        frames = ase.io.read(path, index=":")
        return np.array([a.arrays["forces"] if "forces" in a.arrays else a.get_forces() for a in frames])
