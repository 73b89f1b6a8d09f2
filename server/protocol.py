"""The i-PI socket protocol, both sides: addresses, framing, payloads, units.

One module holds the wire format, like ASE's ``IPIProtocol``: the *driver* side (``mlip-server``,
which connects and computes forces) and the *host* side (:class:`HostConnection`, which listens
and asks for forces: the LAMMPS bridge; i-PI is the other host).

Wire format (all little-endian native, as i-PI writes with numpy):

* headers are 12 ASCII bytes, space padded: STATUS, NEEDINIT, READY, HAVEDATA, INIT,
  POSDATA, GETFORCE, FORCEREADY, EXIT;
* INIT: int32 replica index, int32 length, that many bytes (``batch_size:N`` inside
  announces batched messages);
* POSDATA: 9 float64 cell matrix h (lattice vectors as **columns**, C order), 9 float64
  its inverse, int32 natoms, 3·natoms float64 positions (Bohr);
  batched: int32 natoms, N × (h, h⁻¹), N × 3·natoms positions, then GETFORCE;
* FORCEREADY: float64 energy (Hartree), int32 natoms, 3·natoms forces (Hartree/Bohr),
  9 virial (Hartree), int32 length + JSON extras; batched: N energies, int32 natoms,
  N × forces, N × virials, N × (int32 length + extras).

Units are converted with ``ipi.utils.units`` so that they match i-PI's own constants
(:data:`ATOMIC_UNITS` is the one table the project uses).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
from ipi.utils.units import unit_to_internal

from .core.errors import InputError, MLIPError, ProtocolError

__all__ = [
    "Address",
    "Wire",
    "HostConnection",
    "HEADERS",
    "ATOMIC_UNITS",
    "BOHR_PER_ANGSTROM",
    "HARTREE_PER_EV",
    "UNIX_PREFIX",
    "cell_to_rows",
    "encode_result",
    "read_init",
    "read_posdata",
    "send_forceready",
]

HDRLEN = 12
UNIX_PREFIX = "/tmp/ipi_"
"""i-PI's unix sockets are files ``/tmp/ipi_NAME``."""
MAX_ATOMS = 10**8
MAX_INIT_BYTES = 1 << 20
MAX_EXTRAS_BYTES = 1 << 24

BOHR_PER_ANGSTROM = unit_to_internal("length", "angstrom", 1.0)
HARTREE_PER_EV = unit_to_internal("energy", "electronvolt", 1.0)
ATOMIC_UNITS = {
    "length": BOHR_PER_ANGSTROM,  # Bohr per Å
    "energy": HARTREE_PER_EV,  # Hartree per eV
    # forces are energy/length, converted with the two factors above rather than i-PI's own
    # 'force' unit table: its 'ev/ang' entry is rounded differently, and a force that is not
    # exactly the derivative of the energy in the same units breaks energy conservation checks
    "force": HARTREE_PER_EV / BOHR_PER_ANGSTROM,  # (Hartree/Bohr) per (eV/Å)
    "time": unit_to_internal("time", "femtosecond", 1.0),  # atomic time units per fs
}
"""Atomic units per project unit (Å, eV, eV/Å, fs): multiply to go onto i-PI's wire or files."""


def header(name: str) -> bytes:
    """The 12-byte header of message ``name``."""
    return name.upper().ljust(HDRLEN).encode()


HEADERS = {
    h: header(h)
    for h in ("STATUS", "NEEDINIT", "READY", "HAVEDATA", "INIT", "POSDATA", "GETFORCE", "FORCEREADY", "EXIT")
}
_KNOWN = {v: k for k, v in HEADERS.items()}


# --------------------------------------------------------------------------- addresses
@dataclass(frozen=True)
class Address:
    """Where the two sides meet: ``unix:NAME`` (socket file /tmp/ipi_NAME, or NAME itself if it
    starts with /) or ``inet:HOST:PORT``; on the driver side optionally followed by ``=SPEC``
    (the endpoint's averaging).

    The host side :meth:`listen`\\ s, the driver side :meth:`try_connect`\\ s.
    """

    kind: str
    target: str
    port: int = 0
    spec: str | None = None

    @classmethod
    def parse(cls, text: str, allow_spec: bool = True) -> "Address":
        """Parses ``unix:NAME[=SPEC]`` or ``inet:HOST:PORT[=SPEC]`` (``=SPEC`` only if ``allow_spec``)."""
        body, sep, spec = text.partition("=")
        if sep and not allow_spec:
            body = ""  # refused below
        kind, sep, rest = body.partition(":")
        spec = spec or None
        if kind == "unix" and sep and rest:
            return cls("unix", rest if rest.startswith("/") else UNIX_PREFIX + rest, 0, spec)
        if kind == "inet" and sep:
            host, sep2, port = rest.rpartition(":")
            if sep2 and host and port.isdigit() and 0 < int(port) < 65536:
                return cls("inet", host, int(port), spec)
        if allow_spec:
            raise InputError(
                f"cannot parse address {text!r}: use unix:NAME or inet:HOST:PORT, optionally =SPEC"
            )
        raise InputError(
            f"cannot parse address {text!r}: use unix:NAME or inet:HOST:PORT (the address "
            "mlip-server is given)"
        )

    def __str__(self):
        where = self.target if self.kind == "unix" else f"{self.target}:{self.port}"
        return f"{self.kind}:{where}"

    def try_connect(self) -> socket.socket | None:
        """One connection attempt: the socket, or None if nobody listens yet or the listener's
        backlog is full (i-PI accepts and hand-shakes clients one at a time)."""
        if self.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = self.target
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target = (self.target, self.port)
        sock.settimeout(0.2)
        try:
            sock.connect(target)
            return sock
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError, socket.timeout):
            sock.close()
            return None
        except socket.gaierror as err:
            sock.close()
            raise ProtocolError(f"cannot resolve host of {self} ({err}): check the address") from None

    def listen(self, backlog: int = 1) -> socket.socket:
        """A listening socket; a unix socket file that already exists is refused, not replaced."""
        if self.kind == "unix":
            if os.path.exists(self.target):
                raise InputError(
                    f"socket file {self.target} already exists (another run, or a stale file of a "
                    "crashed one): pick another address or remove the file"
                )
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self.target)
            except OSError as err:
                sock.close()
                raise InputError(
                    f"cannot create socket {self.target} ({err.strerror}): pick another address"
                ) from None
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.target, self.port))
            except OSError as err:
                sock.close()
                raise InputError(f"cannot listen on {self} ({err.strerror}): pick another port") from None
        sock.listen(backlog)
        return sock


# --------------------------------------------------------------------------- framing
class Wire:
    """Blocking reads and writes of whole protocol items on one connected socket.

    ``timeout`` (s) bounds every read once a message has started: a peer that stops
    mid-message is reported, never waited on forever.
    """

    def __init__(self, sock: socket.socket, peer: str, timeout: float = 60.0):
        self.sock, self.peer, self.timeout = sock, peer, timeout

    def read_exact(self, nbytes: int, what: str) -> bytes:
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = 0
        self.sock.settimeout(self.timeout)
        while got < nbytes:
            try:
                n = self.sock.recv_into(view[got:], nbytes - got)
            except socket.timeout:
                raise ProtocolError(
                    f"{self.peer}: no data for {self.timeout:g} s in the middle of {what}: "
                    "the peer hung or the stream is corrupt"
                ) from None
            except OSError as err:
                raise ProtocolError(
                    f"{self.peer}: connection lost while reading {what} ({err.strerror})"
                ) from None
            if n == 0:
                raise ProtocolError(f"{self.peer}: peer closed the connection in the middle of {what}")
            got += n
        return bytes(buf)

    def read_header(self) -> str | None:
        """Next header name, or None if the peer closed the connection cleanly before it."""
        self.sock.settimeout(self.timeout)
        try:
            first = self.sock.recv(HDRLEN)
        except socket.timeout:
            raise ProtocolError(f"{self.peer}: no message for {self.timeout:g} s") from None
        except OSError as err:
            raise ProtocolError(f"{self.peer}: connection lost ({err.strerror})") from None
        if not first:
            return None
        raw = first if len(first) == HDRLEN else first + self.read_exact(HDRLEN - len(first), "a header")
        if raw not in _KNOWN:
            raise ProtocolError(
                f"{self.peer}: malformed header {raw!r}: the peer does not speak the i-PI protocol "
                "(is the address an i-PI socket?)"
            )
        return _KNOWN[raw]

    def read_array(self, dtype, count: int, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self.read_exact(dtype.itemsize * count, what), dtype=dtype, count=count)

    def read_int(self, what: str) -> int:
        return int(self.read_array(np.int32, 1, what)[0])

    def send(self, *parts) -> None:
        payload = b"".join(p if isinstance(p, bytes) else np.ascontiguousarray(p).tobytes() for p in parts)
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(payload)
        except (OSError, socket.timeout) as err:
            raise ProtocolError(f"{self.peer}: cannot send to peer ({err}): it has probably exited") from None


# --------------------------------------------------------------------------- units
def cell_to_rows(h_bohr: np.ndarray) -> np.ndarray:
    """i-PI cell h (columns = lattice vectors, Bohr) → ASE-style rows in Å."""
    return np.asarray(h_bohr, dtype=np.float64).reshape(3, 3).T / BOHR_PER_ANGSTROM


def encode_result(energy_ev: float, forces_ev_a: np.ndarray, virial_ev: np.ndarray):
    """Energy (Hartree), forces (Hartree/Bohr, flat) and virial (Hartree, 9) for the wire."""
    return (
        np.float64(energy_ev * HARTREE_PER_EV),
        np.ascontiguousarray(forces_ev_a, dtype=np.float64).reshape(-1) * ATOMIC_UNITS["force"],
        np.ascontiguousarray(virial_ev, dtype=np.float64).reshape(9) * HARTREE_PER_EV,
    )


def encode_extras(extras: dict) -> bytes:
    """The extras JSON string (empty when there are none)."""
    return json.dumps(extras).encode() if extras else b""


def parse_init(text: str) -> int:
    """The batch size announced in an INIT string (``..., batch_size:N``), default 1."""
    for token in text.split(","):
        key, sep, value = token.partition(":")
        if sep and key.strip() == "batch_size":
            try:
                size = int(value.strip())
            except ValueError:
                raise ProtocolError(f"INIT string has a malformed batch_size {value!r}") from None
            if size < 1 or size > 100000:
                raise ProtocolError(f"INIT string has an absurd batch_size {size}")
            return size
    return 1


# --------------------------------------------------------------------------- driver side
def read_natoms(wire: Wire) -> int:
    natoms = wire.read_int("POSDATA")
    if natoms <= 0 or natoms > MAX_ATOMS:
        raise ProtocolError(
            f"{wire.peer}: absurd atom count {natoms} in POSDATA (must be 1..{MAX_ATOMS}): corrupt stream"
        )
    return natoms


def read_init(wire: Wire) -> tuple[str, int]:
    """The body of an INIT message (its header already read): (INIT string, batch size)."""
    wire.read_int("INIT")  # replica index: the server is stateless
    length = wire.read_int("INIT")
    if length < 0 or length > MAX_INIT_BYTES:
        raise ProtocolError(f"{wire.peer}: absurd INIT string length {length}: corrupt stream")
    text = wire.read_exact(length, "INIT").decode("utf-8", "replace")
    return text, parse_init(text)


def read_posdata(wire: Wire, batch_size: int) -> tuple[list, np.ndarray]:
    """The body of a POSDATA message: (cells h in Bohr, one per structure; positions [B, N, 3] Bohr)."""
    if batch_size == 1:
        h = wire.read_array(np.float64, 9, "POSDATA")
        wire.read_array(np.float64, 9, "POSDATA")  # inverse cell: not needed
        natoms = read_natoms(wire)
        return [h], wire.read_array(np.float64, 3 * natoms, "POSDATA").reshape(1, natoms, 3)
    natoms = read_natoms(wire)
    blocks = wire.read_array(np.float64, 18 * batch_size, "POSDATA").reshape(-1, 18)
    positions = wire.read_array(np.float64, 3 * natoms * batch_size, "POSDATA")
    return [b[:9] for b in blocks], positions.reshape(batch_size, natoms, 3)


def send_forceready(wire: Wire, results, natoms: int, batched: bool) -> None:
    """FORCEREADY for ``results`` (objects with ``energy`` eV, ``forces`` eV/Å, ``virial`` eV, ``extras``)."""
    encoded = [encode_result(r.energy, r.forces, r.virial) for r in results]
    extras = [encode_extras(r.extras) for r in results]
    n = np.int32(natoms)
    if not batched:
        (e, f, v), x = encoded[0], extras[0]
        wire.send(HEADERS["FORCEREADY"], e, n, f, v, np.int32(len(x)), x)
        return
    parts = [HEADERS["FORCEREADY"], np.array([e for e, _, _ in encoded]), n]
    parts += [f for _, f, _ in encoded] + [v for _, _, v in encoded]
    for x in extras:
        parts += [np.int32(len(x)), x]
    wire.send(*parts)


# --------------------------------------------------------------------------- host side
class HostConnection:
    """The host's side (i-PI's part): listens, accepts one driver, asks it for forces.

    Parameters
    ----------
    address : Address
        Where to listen.
    timeout : float
        Seconds to wait for any reply of the driver (a force evaluation included) before
        declaring it hung.

    Attributes
    ----------
    seconds_waiting : float
        Time from POSDATA sent to the FORCEREADY header (the driver's work and its I/O), s.
    seconds_transfer : float
        Time sending positions, receiving the forces payload and converting units, s.
    """

    def __init__(self, address: Address, timeout: float, init: bytes = b"host"):
        self.address, self.timeout, self.init = address, timeout, init
        self.listener: socket.socket | None = None
        self.wire: Wire | None = None
        self.seconds_waiting = self.seconds_transfer = 0.0
        self._owns_file = False

    def listen(self) -> None:
        self.listener = self.address.listen()
        self._owns_file = self.address.kind == "unix"

    def accept(self, connect_timeout: float, hint: str) -> None:
        """Waits up to ``connect_timeout`` s for the driver, then does STATUS/INIT."""
        self.listener.settimeout(connect_timeout)
        try:
            conn, _ = self.listener.accept()
        except socket.timeout:
            raise ProtocolError(
                f"no force server connected to {self.address} within {connect_timeout:g} s: start {hint}"
            ) from None
        if self.address.kind == "inet":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wire = Wire(conn, f"force server at {self.address}", self.timeout)
        self.listener.close()
        self.listener = None
        self._remove_file()
        self.wire.send(HEADERS["STATUS"])
        self._expect("NEEDINIT", "the handshake")
        self.wire.send(HEADERS["INIT"], np.int32(0), np.int32(len(self.init)), self.init)
        self.wire.send(HEADERS["STATUS"])
        self._expect("READY", "the handshake")

    def _expect(self, name: str, what: str) -> None:
        got = self.wire.read_header()
        if got is None:
            raise ProtocolError(
                f"the force server closed the connection during {what} (it stopped or crashed: "
                "see its output)"
            )
        if got != name:
            raise ProtocolError(
                f"the force server answered {got} instead of {name} during {what}: is it mlip-server?"
            )

    def compute(self, h: np.ndarray, positions: np.ndarray):
        """Energy (eV), forces [N,3] (eV/Å), virial [3,3] (eV) and the extras dict (the
        averaging diagnostics, empty for the raw model) for ``positions`` (Å).

        ``h``: cell matrix in Å with the lattice vectors as columns (zeros: no cell).
        """
        t0 = time.perf_counter()
        n = len(positions)
        hb = np.ascontiguousarray(h, dtype=np.float64) * BOHR_PER_ANGSTROM
        ih = np.linalg.inv(hb) if abs(np.linalg.det(hb)) > 0 else np.zeros((3, 3))
        self.wire.send(
            HEADERS["POSDATA"],
            hb,
            ih,
            np.int32(n),
            np.ascontiguousarray(positions, dtype=np.float64) * BOHR_PER_ANGSTROM,
            HEADERS["STATUS"],
        )
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
        if nextra < 0 or nextra > MAX_EXTRAS_BYTES:
            raise ProtocolError(f"absurd extras length {nextra} from the force server: corrupt stream")
        extras = {}
        if nextra:
            raw = self.wire.read_exact(nextra, "FORCEREADY")
            try:
                extras = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                extras = {}
        result = (
            energy / HARTREE_PER_EV,
            forces * (BOHR_PER_ANGSTROM / HARTREE_PER_EV),
            virial / HARTREE_PER_EV,
            extras if isinstance(extras, dict) else {},
        )
        t3 = time.perf_counter()
        if not (math.isfinite(result[0]) and np.isfinite(result[1]).all()):
            raise ProtocolError(
                "the force server returned a non-finite energy or force: the model failed on this "
                "configuration (see the server's output)"
            )
        self.seconds_waiting += t2 - t1
        self.seconds_transfer += (t1 - t0) + (t3 - t2)
        return result

    def exit(self) -> None:
        """Sends EXIT (best effort: the driver may already be gone)."""
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
