"""Fixed small i-PI runs for the benchmarks: one mlip-server over unix sockets, or in-process.

The input is the fixed NVT (SVR, tau 10 fs) or PIMD (PILE-L, tau 100 fs) water setup at 300 K
with 0.5 fs steps that the tests use (``tests/ipi_sim.py``, which bench must not import);
``ffdirect=True`` evaluates the model inside i-PI (``server/ipi/pes.py``) instead of a socket.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from server import processes
from server.structures import write_ipi_xyz

__all__ = ["run", "Outputs"]

FORCEFIELD = """  <ffsocket name='{name}' mode='unix' pbc='false'>
    <address>{address}</address><latency>1e-4</latency><batch_size>1</batch_size>
  </ffsocket>
"""

DIRECT = """  <ffdirect name='{name}' pbc='false'><pes>custom</pes><pes_path>{pes}</pes_path>
    <parameters>{{model: {model}, structure: init.xyz, average: none}}</parameters><batch_size>1</batch_size>
  </ffdirect>
"""

INPUT = """<simulation verbosity='low' floatformat='%25.16e' safe_stride='1000'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> \
[step, conserved, temperature{{kelvin}}, potential{{electronvolt}}] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions </trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
{forcefields}  <system>
    <initialize nbeads='{nbeads}'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces>{forces}</forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='nvt'><timestep units='femtosecond'>0.5</timestep>
      {thermostat}</dynamics></motion>
  </system>
</simulation>
"""


@dataclass
class Outputs:
    """Exit statuses ([i-PI, server]; the server's is 0 with ``ffdirect``) and the server's log."""

    workdir: Path
    codes: list
    server_log: str


def run(
    workdir,
    atoms,
    model,
    *,
    steps: int = 20,
    nbeads: int = 1,
    connections: int = 1,
    timeout: float = 240,
    ffdirect: bool = False,
) -> Outputs:
    """Runs i-PI and one mlip-server (or i-PI alone with the model in-process) to the end.

    Parameters
    ----------
    workdir : path
        Run folder (created).
    atoms : ase.Atoms
        Starting structure (Å, with the cell).
    model : str
        TorchScript model file.
    steps : int
        MD steps (0.5 fs each).
    nbeads : int
        Path-integral beads (PILE-L thermostat when > 1).
    connections : int
        Server connections to the one forcefield (one per bead batches the beads).
    timeout : float
        Seconds until the run is stopped and an error raised.
    ffdirect : bool
        Evaluate the model inside i-PI (``<ffdirect>``) instead of over a socket.

    Returns
    -------
    Outputs
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_ipi_xyz(atoms, workdir / "init.xyz")
    address = f"{processes.unique_name('mlip-bench')}-0"
    if ffdirect:
        pes = importlib.util.find_spec("server.ipi.pes").origin
        forcefields = DIRECT.format(name="mlip", pes=pes, model=Path(model).resolve())
    else:
        forcefields = FORCEFIELD.format(name="mlip", address=address)
    if nbeads > 1:
        thermostat = "<thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat>"
    else:
        thermostat = "<thermostat mode='svr'><tau units='femtosecond'>10</tau></thermostat>"
    xml = INPUT.format(
        steps=steps,
        nbeads=nbeads,
        forcefields=forcefields,
        forces="<force forcefield='mlip' weight='1.0'/>",
        thermostat=thermostat,
    )
    (workdir / "input.xml").write_text(xml)
    ipi = processes.start_ipi("input.xml", workdir)
    server = None
    sockets = [] if ffdirect else [address]
    try:
        if ffdirect:
            codes = processes.wait([ipi], timeout) + [0]
        else:
            processes.wait_for_socket(address, ipi)
            server = processes.start_server(model, "init.xyz", [f"unix:{address}"] * connections, workdir)
            codes = processes.wait([ipi, server], timeout)
    finally:
        processes.stop([ipi, server], sockets)
    log = workdir / "server.log"
    return Outputs(workdir, codes, log.read_text() if log.exists() else "")
