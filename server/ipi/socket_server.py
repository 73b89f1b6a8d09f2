"""The force server: one model, several i-PI connections, pending requests batched.

The server is a *client* of each socket (i-PI, or the LAMMPS bridge, listens; we
connect, exactly like an i-PI driver). Every endpoint has its own averaging spec, so
one process can serve the raw model and its rotational average side by side (the
multiple-time-stepping setup), sharing one model in memory.

Batching: structures that are pending at the same moment on different connections are
evaluated in one :meth:`Evaluator.compute` call. When one connection of an address has
sent positions, the server waits at most ``batch_wait`` seconds for the other idle
connections *of the same address* (e.g. the other beads), then evaluates. Connections of the
LAMMPS bridge's domain extension (one per MPI rank, :mod:`mlip_server.protocol.messages`) form one
group: the ranks served by one server are one batch.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import Counter

import numpy as np

from ..core.averaging import Averaging
from ..core.errors import ProtocolError
from ..core.evaluator import Evaluator, Structure
from ..protocol import (
    BOHR_PER_ANGSTROM,
    HEADERS,
    Address,
    Wire,
    cell_to_rows,
    parse_domain,
    read_domaindata,
    read_init,
    read_posdata,
    read_posdata_shm,
    send_domainforce,
    send_forceready,
    send_forceready_shm,
    send_model_info,
)

__all__ = ["ForceServer", "Connection"]

log = logging.getLogger("mlip-server")


class Connection:
    """One socket to i-PI (or to one rank of the LAMMPS bridge) and its protocol state."""

    def __init__(
        self,
        address: Address,
        averaging: Averaging,
        sock: socket.socket,
        timeout: float,
        nonperiodic: bool = False,
        on_close: str = "error",
    ):
        self.address, self.averaging = address, averaging
        self.wire = Wire(sock, str(address), timeout)
        self.nonperiodic = nonperiodic
        self.initialized = False
        self.batch_size = 1
        self.natoms = 0
        self.pending: list[Structure] | None = None
        self.results = None
        self.exited = False
        self.numbers: np.ndarray | None = None
        self.segments = None  # i-PI's shared memory (shm addresses), attached at the first POSDATA
        self.on_close = on_close
        self.exchanges = 0  # completed POSDATA → FORCEREADY exchanges
        self.domain = False  # the host announced the domain extension in its INIT string
        self.domain_request: tuple | None = None  # (natoms, owned, per_atom, members) of a DOMAINDATA
        self.model_info: dict = {}  # what GETMODEL answers
        self.committee_arrays = True  # send i-PI the committee members' arrays (ipi_extras)

    @property
    def group(self) -> str:
        """Connections of one group are batched together: the address, or all domain ranks."""
        return "domain" if self.domain else str(self.address)

    def fileno(self):
        return self.wire.sock.fileno()

    @property
    def idle(self) -> bool:
        return not self.exited and self.pending is None and self.results is None

    def close(self):
        if self.segments is not None:
            self.segments.close()
            self.segments = None
        try:
            self.wire.sock.close()
        except OSError:
            pass

    def handle_message(self) -> None:
        """Reads and answers one message (may set ``pending``)."""
        name = self.wire.read_header()
        if name is None and self.on_close == "exit" and self.exchanges > 0 and self.idle:
            # a host such as ASE's SocketIOCalculator ends by closing the socket between messages
            log.info(
                "%s: the peer closed the connection after %d exchanges (--on-close exit)",
                self.address,
                self.exchanges,
            )
            self.exited = True
            self.close()
            return
        if name is None:
            raise ProtocolError(
                f"{self.address}: i-PI closed the connection without EXIT (it "
                "stopped or crashed: see its output)"
            )
        if name == "STATUS":
            state = (
                "NEEDINIT" if not self.initialized else ("HAVEDATA" if self.results is not None else "READY")
            )
            self.wire.send(HEADERS[state])
        elif name == "INIT":
            text, self.batch_size = read_init(self.wire)
            self.domain = parse_domain(text)
            self.initialized = True
            log.info("%s: INIT %r (batch_size %d)", self.address, text, self.batch_size)
        elif name == "POSDATA":
            self._read_positions()
        elif name in ("GETMODEL", "DOMAINDATA") and not self.domain:
            raise ProtocolError(
                f"{self.address}: {name} without the domain extension announced in INIT: the host "
                "is not the LAMMPS bridge, or the stream is corrupt"
            )
        elif name == "GETMODEL":  # the model's attributes and this endpoint's kind of forces
            forces = "direct" if self.averaging.direct else "conservative"
            send_model_info(self.wire, {**self.model_info, "forces": forces})
        elif name == "DOMAINDATA":
            self._read_cluster()
        elif name == "GETFORCE":
            self._send_forces()
        elif name == "EXIT":
            log.info("%s: EXIT received", self.address)
            self.exited = True
            self.close()
        else:
            raise ProtocolError(f"{self.address}: unexpected {name} message from i-PI")

    def _read_positions(self):
        if self.results is not None:
            raise ProtocolError(f"{self.address}: POSDATA before the previous forces were collected")
        if self.address.kind == "shm":
            cells, positions, self.segments = read_posdata_shm(self.wire, self.batch_size, self.segments)
        else:
            cells, positions = read_posdata(self.wire, self.batch_size)
        natoms = positions.shape[1]
        if self.numbers is None:
            raise ProtocolError(
                f"{self.address}: positions without atomic numbers (i-PI protocol): start "
                "mlip-server with --structure (only the LAMMPS bridge's domain connections carry them)"
            )
        if len(self.numbers) != natoms:
            raise ProtocolError(
                f"{self.address}: i-PI sent {natoms} atoms but the server was given "
                f"{len(self.numbers)} elements: pass the matching --structure"
            )
        self.natoms = natoms
        self.pending = [self._structure(h, p) for h, p in zip(cells, positions)]

    def _read_cluster(self):
        if self.results is not None:
            raise ProtocolError(f"{self.address}: DOMAINDATA before the previous forces were collected")
        numbers, positions, owned, per_atom, members, rotations = read_domaindata(self.wire)
        self.domain_request = (len(numbers), owned, per_atom, members, rotations)
        self.pending = [Structure(positions, numbers, owned=owned, per_atom=per_atom)]

    def _structure(self, h, positions_bohr) -> Structure:
        cell = cell_to_rows(h)
        periodic = not self.nonperiodic and bool(np.abs(cell).sum() > 0)
        return Structure(positions_bohr / BOHR_PER_ANGSTROM, self.numbers, cell, np.full(3, periodic))

    def _send_forces(self):
        if self.results is None:
            raise ProtocolError(f"{self.address}: GETFORCE before POSDATA: protocol out of order")
        if self.domain_request is not None:
            send_domainforce(self.wire, self.results[0], *self.domain_request)
            self.domain_request = None
        elif self.segments is not None:
            send_forceready_shm(self.wire, self.results, self.segments, self.committee_arrays)
        else:
            send_forceready(self.wire, self.results, self.natoms, self.batch_size > 1, self.committee_arrays)
        self.results = None
        self.exchanges += 1


class ForceServer:
    """Serves one :class:`Evaluator` on several connections.

    Parameters
    ----------
    evaluator : Evaluator
        The model evaluator.
    addresses : list of Address or str
        Where i-PI (or the LAMMPS bridge) listens, each optionally with ``=SPEC``.
    numbers : array of int or None
        Atomic numbers of the atoms, in i-PI's order (the protocol carries positions only); None
        when only the LAMMPS bridge's domain connections are served (they carry them).
    average : str
        Default averaging spec for addresses without ``=SPEC``.
    seed : int
        Seed for random-rotation specs.
    connect_timeout : float
        Seconds to wait for each i-PI socket to appear.
    timeout : float
        Seconds a message may stall mid-transfer before the peer is declared dead.
    idle_timeout : float
        Seconds without any message before giving up (0: wait forever).
    batch_wait : float
        Seconds to wait for other connections of the same address.
    log_every : int
        Log batch statistics and diagnostics every this many evaluations.
    nonperiodic : bool
        Ignore the cell (gas-phase runs).
    on_close : str
        What a peer that closes its socket without EXIT means: ``error`` (i-PI crashed: the
        server fails) or ``exit`` (after a completed exchange and between messages, the way
        ASE's ``SocketIOCalculator`` ends: that connection is done, like EXIT).
    committee_arrays : bool
        For a committee, send i-PI every member's energy, forces and virial in the extras
        (what ``<ffcommittee parse_json='true'>`` reads); False: the statistics only.
    uncertainty : UncertaintyLog, optional
        Logs (and saves) the structures whose committee force spread exceeds its threshold.
    heartbeat : Heartbeat, optional
        Renewed after each evaluation (the supervisor's sign of life, ``--heartbeat``).
    """

    def __init__(
        self,
        evaluator: Evaluator,
        addresses,
        numbers,
        average="none",
        seed=12345,
        connect_timeout=60.0,
        timeout=60.0,
        idle_timeout=0.0,
        batch_wait=0.005,
        log_every=100,
        nonperiodic=False,
        on_close="error",
        committee_arrays=True,
        uncertainty=None,
        heartbeat=None,
    ):
        self.evaluator = evaluator
        self.heartbeat = heartbeat
        self.committee_arrays, self.uncertainty = committee_arrays, uncertainty
        self.addresses = [a if isinstance(a, Address) else Address.parse(a) for a in addresses]
        self.numbers = None if numbers is None else np.asarray(numbers, dtype=np.int64)
        self.average, self.seed = average, seed
        self.connect_timeout, self.timeout, self.idle_timeout = connect_timeout, timeout, idle_timeout
        self.batch_wait, self.log_every, self.nonperiodic = batch_wait, log_every, nonperiodic
        if on_close not in ("error", "exit"):
            raise ValueError(f"on_close must be 'error' or 'exit', not {on_close!r}")
        self.on_close = on_close
        self.connections: list[Connection] = []
        self.batch_sizes: Counter = Counter()
        self.n_evaluations = 0
        self.busy_seconds = 0.0  # reading, evaluating and answering (not waiting for i-PI)

    def _connect_pending(self) -> None:
        """Connects the addresses not yet connected, as far as the listeners accept now.

        Called from the serve loop, so that the connections already made answer i-PI's
        hand-shake while the others wait: i-PI accepts clients one at a time and its listen
        backlog is small, so connecting all of them first could deadlock."""
        while self._unconnected:
            n, address = self._unconnected[0]
            sock = address.try_connect()
            if sock is None:
                if time.monotonic() > self._connect_deadline:
                    raise ProtocolError(
                        f"no i-PI server listening at {address} after {self.connect_timeout:g} s: start i-PI "
                        "(or the LAMMPS bridge) with the same address, or raise --connect-timeout"
                    )
                return
            self._unconnected.pop(0)
            spec = address.spec or self.average
            # one Averaging per endpoint: random rotations are drawn per endpoint
            averaging = self._specs.setdefault(f"{address}={spec}", Averaging(spec, seed=self.seed + n))
            conn = Connection(address, averaging, sock, self.timeout, self.nonperiodic, self.on_close)
            conn.numbers = self.numbers
            conn.model_info = self._model_info
            conn.committee_arrays = self.committee_arrays
            self.connections.append(conn)
            log.info(
                "connected to %s (averaging %s, %d rotations)", address, averaging.name, averaging.n_rotations
            )

    def model_info(self) -> dict:
        """The model's attributes, as GETMODEL answers them (domain extension)."""
        m = self.evaluator.model
        return {
            "path": m.path,
            "cutoff": m.cutoff,
            "interaction_range": m.interaction_range,
            "declared_range": m.declared_range,
            "species": list(m.species),
            "dtype": str(m.dtype).removeprefix("torch."),
            "sums_atomic_energies": m.sums_atomic_energies,
            "per_atom_energies": getattr(m, "per_atom_energies", True),
            "subset_refusal": getattr(m, "subset_refusal", None),
            "device": str(m.device),
            "committee_size": len(getattr(m, "members", ())),
            "direct_virial": bool(m.direct_virial),
        }

    def serve(self) -> None:
        """Runs until every connection has received EXIT. Raises MLIPError on failure."""
        self._unconnected = list(enumerate(self.addresses))
        self._model_info = self.model_info()
        self._specs = {}
        self._connect_deadline = time.monotonic() + self.connect_timeout
        try:
            self._loop()
        finally:
            for c in self.connections:
                c.close()
            self.log_summary()

    def _loop(self):
        gather_deadline = None
        last_activity = time.monotonic()
        while self._unconnected or not all(c.exited for c in self.connections):
            self._connect_pending()
            listening = [c for c in self.connections if not c.exited and c.pending is None]
            wait = None if gather_deadline is None else max(0.0, gather_deadline - time.monotonic())
            if wait is None and self.idle_timeout > 0:
                wait = self.idle_timeout
            if self._unconnected:
                wait = 0.05 if wait is None else min(wait, 0.05)
            readable = select.select(listening, [], [], wait)[0] if listening else []
            if not listening and self._unconnected:
                time.sleep(0.05)
            t0 = time.perf_counter()
            for conn in readable:
                conn.handle_message()
            self.busy_seconds += time.perf_counter() - t0
            now = time.monotonic()
            if readable:
                last_activity = now
            elif (
                gather_deadline is None and self.idle_timeout > 0 and now - last_activity > self.idle_timeout
            ):
                raise ProtocolError(
                    f"no message from i-PI for {self.idle_timeout:g} s (--idle-timeout): giving up"
                )
            pending = [c for c in self.connections if c.pending is not None]
            if not pending:
                continue
            if gather_deadline is None:
                gather_deadline = now + self.batch_wait
            groups = {c.group for c in pending}
            waiting = [c for c in self.connections if c.idle and c.group in groups]
            if waiting and now < gather_deadline:
                continue
            t0 = time.perf_counter()
            self._evaluate(pending)
            self.busy_seconds += time.perf_counter() - t0
            gather_deadline = None

    def _evaluate(self, pending):
        structures, averagings = [], []
        for conn in pending:
            structures += conn.pending
            averagings += [conn.averaging] * len(conn.pending)
        results = self.evaluator.compute(structures, averagings)
        start = 0
        for conn in pending:
            conn.results = results[start : start + len(conn.pending)]
            if self.uncertainty is not None and not conn.domain:
                for k, (s, r) in enumerate(zip(conn.pending, conn.results)):
                    where = f"{conn.address}, evaluation {conn.exchanges + 1}" + (
                        f", structure {k}" if len(conn.pending) > 1 else ""
                    )
                    self.uncertainty.check(s, r, where)
            start += len(conn.pending)
            conn.pending = None
        self.batch_sizes[len(structures)] += 1
        self.n_evaluations += 1
        if self.heartbeat is not None:
            self.heartbeat.beat()
        if self.n_evaluations == 1 or self.n_evaluations % self.log_every == 0:
            self.log_summary()
            for conn in pending:
                if conn.results and conn.results[0].extras:
                    x = conn.results[0].extras
                    log.info(
                        "%s: %s",
                        conn.address,
                        ", ".join(
                            f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in x.items()
                        ),
                    )

    def log_summary(self):
        sizes = ", ".join(f"{k}×{v}" for k, v in sorted(self.batch_sizes.items()))
        t = self.evaluator.timings
        log.info(
            "evaluations %d; batch sizes (structures per model call × calls): %s; time in model %.3f s, "
            "neighbour lists %.3f s, server busy %.3f s",
            self.n_evaluations,
            sizes or "none",
            t["model"],
            t["neighbors"],
            self.busy_seconds,
        )
        log.info("model-call chunks: %s", self.evaluator.batching_summary())
