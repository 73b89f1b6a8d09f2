"""The i-PI wire format, both sides: message names, framing, payload layouts, units.

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

i-PI's ``mode='shm'`` (address ``shm:NAME``) keeps the unix socket for the messages but moves
the arrays into shared-memory segments that i-PI creates and owns, one per kind (``pos``
[N, 3·natoms], ``h``, ``ih`` [N, 3, 3], ``pot`` [N], ``force`` [N, 3·natoms], ``vir`` [N, 3, 3],
float64, N = batch size): POSDATA is int32 natoms, plus on the first exchange 6 × (int32 length +
segment name); FORCEREADY carries only the extras, N × (int32 length + JSON), after the driver
wrote pot, force and vir into the segments (:class:`SharedSegments`).

**Domain extension** (only between the LAMMPS bridge and ``mlip-server``; i-PI never sees it). A
host whose INIT string contains ``mlip-domain:1`` may send, besides the messages above:

* GETMODEL → the driver answers MODELINFO: int32 length + JSON (``cutoff``,
  ``interaction_range`` Å, ``declared_range``, ``species``, ``dtype``, ``sums_atomic_energies``,
  ``path``, ``forces``: ``conservative`` or ``direct`` (this endpoint's), ``direct_virial``);
* DOMAINDATA: int32 natoms, int32 owned, int32 flags (bit 0: per-atom energies and virials,
  bit 1: committee members, bit 2: rotated copies),
  natoms int32 atomic numbers, 3·natoms float64 positions (**Å**): one non-periodic cluster
  whose first ``owned`` atoms' energy terms count; the atom count may change every message.
  Then STATUS → HAVEDATA, GETFORCE → DOMAINFORCE: float64 energy (**eV**), int32 natoms,
  3·natoms float64 forces (eV/Å, ghosts included), 9 float64 virial (eV); with flag bit 0 also
  ``owned`` float64 atomic energies (eV) and 9·natoms float64 per-atom virials (eV); with bit 1
  int32 M, M float64 member energies (eV), M·3·natoms float64 member forces (eV/Å) (M = 0 for a
  single model); with bit 2 int32 K, K float64 weights, K float64 energies (eV) and K·3·natoms
  float64 forces (eV/Å) of the rotated copies of an averaged evaluation (K = 0 without
  averaging); then int32 length + JSON extras.

The extension uses the project's units (Å, eV) rather than atomic units: no conversion, so
the decomposed route is exact to the last bit of the model's own arithmetic.

Units are converted with ``ipi.utils.units`` so that they match i-PI's own constants
(:data:`ATOMIC_UNITS` is the one table the project uses).
"""

from __future__ import annotations

import json
import socket
from multiprocessing import resource_tracker, shared_memory

import numpy as np
from ipi.utils.units import unit_to_internal

from ..core.errors import ProtocolError

__all__ = [
    "HEADERS",
    "ATOMIC_UNITS",
    "BOHR_PER_ANGSTROM",
    "HARTREE_PER_EV",
    "UNIX_PREFIX",
    "Wire",
    "SharedSegments",
    "cell_to_rows",
    "encode_result",
    "encode_extras",
    "ipi_extras",
    "parse_init",
    "read_init",
    "read_posdata",
    "read_posdata_shm",
    "send_forceready",
    "send_forceready_shm",
    "send_init",
    "send_posdata",
    "read_forceready",
    "DOMAIN_INIT",
    "PER_ATOM",
    "MEMBERS",
    "parse_domain",
    "send_model_info",
    "read_model_info",
    "send_domaindata",
    "read_domaindata",
    "send_domainforce",
    "read_domainforce",
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
    + ("GETMODEL", "MODELINFO", "DOMAINDATA", "DOMAINFORCE")  # the domain extension
}
DOMAIN_INIT = "mlip-domain:1"
"""The INIT-string token by which a host announces the domain extension."""
PER_ATOM = 1
"""DOMAINDATA flag bit: per-atom energies and virials wanted."""
MEMBERS = 2
"""DOMAINDATA flag bit: every committee member's energy and forces wanted (for the spreads)."""
ROTATIONS = 4
"""DOMAINDATA flag bit: every rotated copy's weight, energy and forces wanted (the cell's
rotational spreads of an averaged model are computed by the bridge from every rank's copies)."""
_KNOWN = {v: k for k, v in HEADERS.items()}


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


def ipi_extras(result, committee_arrays: bool = True) -> dict:
    """The extras i-PI is sent for ``result`` (a :class:`mlip_server.core.graph.Result`).

    Its ``extras`` (eV, eV/Å: the project's own diagnostics) and, for a committee, what i-PI's
    ``<ffcommittee parse_json='true'>`` reads, in i-PI's atomic units: ``committee_pot`` [M]
    (Hartree), ``committee_force`` [M, 3N] (Hartree/Bohr) and ``committee_virial`` [M, 9]
    (Hartree), plus ``committee_force_std`` [N] (eV/Å, the per-atom spread). Without
    ``committee_arrays`` only the scalar statistics travel (they cost 3N·M numbers a step)."""
    c = getattr(result, "committee", None)
    if c is None:
        return result.extras
    out = dict(result.extras)
    if committee_arrays:
        encoded = [encode_result(e, f, v) for e, f, v in zip(c.energies, c.forces, c.virials)]
        out["committee_pot"] = [float(e) for e, _, _ in encoded]
        out["committee_force"] = [f.tolist() for _, f, _ in encoded]
        out["committee_virial"] = [v.tolist() for _, _, v in encoded]
        out["committee_force_std"] = c.force_std().tolist()
    return out


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


class SharedSegments:
    """The driver's view of i-PI's shared-memory segments (``mode='shm'``), attached by name.

    The segments belong to i-PI, which creates and removes them: the driver only maps them
    (and unmaps them in :meth:`close`), so no exit path of ours can leave one behind or remove
    one that i-PI still uses.
    """

    KINDS = ("pos", "h", "ih", "pot", "force", "vir")

    def __init__(self, names: list, natoms: int, batch_size: int, peer: str):
        self._handles, self.views = [], {}
        n = batch_size
        shapes = {
            "pos": (n, 3 * natoms),
            "h": (n, 3, 3),
            "ih": (n, 3, 3),
            "pot": (n,),
            "force": (n, 3 * natoms),
            "vir": (n, 3, 3),
        }
        try:
            for kind, name in zip(self.KINDS, names):
                handle = _attach(name)
                self._handles.append(handle)
                need = int(np.prod(shapes[kind])) * 8
                if handle.size < need:
                    raise ProtocolError(
                        f"{peer}: shared-memory segment {name} has {handle.size} bytes, "
                        f"{need} needed for {natoms} atoms × {n}: corrupt stream"
                    )
                self.views[kind] = np.ndarray(shapes[kind], dtype=np.float64, buffer=handle.buf)
        except FileNotFoundError as err:
            self.close()
            raise ProtocolError(
                f"{peer}: i-PI's shared-memory segment is missing ({err}): is the server on "
                "the same machine as i-PI? (shm needs that: use unix or inet)"
            ) from None
        except ProtocolError:
            self.close()
            raise
        self.natoms, self.batch_size = natoms, batch_size

    def close(self) -> None:
        """Unmaps the segments (i-PI removes them)."""
        self.views.clear()
        for handle in self._handles:
            try:
                handle.close()
            except (BufferError, OSError):
                pass
        self._handles.clear()


def _attach(name: str) -> shared_memory.SharedMemory:
    """Maps an existing segment without letting Python's resource tracker remove it at exit
    (before Python 3.13 attaching registers the segment as if we had created it)."""
    try:
        return shared_memory.SharedMemory(name=name, track=False)
    except TypeError:  # Python < 3.13
        handle = shared_memory.SharedMemory(name=name)
        resource_tracker.unregister(handle._name, "shared_memory")
        return handle


def read_posdata_shm(wire: Wire, batch_size: int, segments):
    """The body of a ``mode='shm'`` POSDATA: (cells h in Bohr, positions [B, N, 3] Bohr, segments).

    ``segments``: the :class:`SharedSegments` attached at the first exchange (None before it:
    the segment names follow the atom count then).
    """
    natoms = read_natoms(wire)
    if segments is None:
        names = []
        for _ in SharedSegments.KINDS:
            length = wire.read_int("POSDATA")
            if length <= 0 or length > 255:
                raise ProtocolError(f"{wire.peer}: absurd shared-memory name length {length}: corrupt stream")
            names.append(wire.read_exact(length, "POSDATA").decode("utf-8", "replace"))
        segments = SharedSegments(names, natoms, batch_size, wire.peer)
    elif natoms != segments.natoms:
        raise ProtocolError(
            f"{wire.peer}: the atom count changed from {segments.natoms} to {natoms}: "
            "i-PI's shared-memory segments are sized once"
        )
    views = segments.views
    cells = [views["h"][i].reshape(9).copy() for i in range(batch_size)]
    return cells, views["pos"].reshape(batch_size, natoms, 3).copy(), segments


def send_forceready_shm(wire: Wire, results, segments, committee_arrays: bool = True) -> None:
    """Writes energies, forces and virials into the segments, then FORCEREADY with the extras
    (:func:`ipi_extras`)."""
    views = segments.views
    parts = [HEADERS["FORCEREADY"]]
    for i, r in enumerate(results):
        energy, forces, virial = encode_result(r.energy, r.forces, r.virial)
        views["pot"][i], views["force"][i], views["vir"][i] = energy, forces, virial.reshape(3, 3)
        extras = encode_extras(ipi_extras(r, committee_arrays))
        parts += [np.int32(len(extras)), extras]
    wire.send(*parts)


def send_forceready(wire: Wire, results, natoms: int, batched: bool, committee_arrays: bool = True) -> None:
    """FORCEREADY for ``results`` (objects with ``energy`` eV, ``forces`` eV/Å, ``virial`` eV,
    ``extras``; the extras sent are :func:`ipi_extras`)."""
    encoded = [encode_result(r.energy, r.forces, r.virial) for r in results]
    extras = [encode_extras(ipi_extras(r, committee_arrays)) for r in results]
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


def send_init(wire: Wire, text: bytes, replica: int = 0) -> None:
    """INIT with replica index ``replica`` and the INIT string ``text``."""
    wire.send(HEADERS["INIT"], np.int32(replica), np.int32(len(text)), text)


# --------------------------------------------------------------------------- host side
def send_posdata(wire: Wire, h: np.ndarray, positions: np.ndarray) -> None:
    """POSDATA for one structure (positions [N, 3] Å, cell h Å with lattice vectors as columns,
    zeros for none), followed by STATUS."""
    hb = np.ascontiguousarray(h, dtype=np.float64) * BOHR_PER_ANGSTROM
    ih = np.linalg.inv(hb) if abs(np.linalg.det(hb)) > 0 else np.zeros((3, 3))
    positions = np.ascontiguousarray(positions, dtype=np.float64) * BOHR_PER_ANGSTROM
    wire.send(HEADERS["POSDATA"], hb, ih, np.int32(len(positions)), positions, HEADERS["STATUS"])


def read_forceready(wire: Wire, n: int):
    """The body of a FORCEREADY for one structure of ``n`` atoms (its header already read):
    energy (eV), forces [n, 3] (eV/Å), virial [3, 3] (eV), extras dict."""
    energy = float(wire.read_array(np.float64, 1, "FORCEREADY")[0])
    natoms = wire.read_int("FORCEREADY")
    if natoms != n:
        raise ProtocolError(f"the force server returned {natoms} forces for {n} atoms: corrupt stream")
    forces = wire.read_array(np.float64, 3 * n, "FORCEREADY").reshape(n, 3)
    virial = wire.read_array(np.float64, 9, "FORCEREADY").reshape(3, 3)
    nextra = wire.read_int("FORCEREADY")
    if nextra < 0 or nextra > MAX_EXTRAS_BYTES:
        raise ProtocolError(f"absurd extras length {nextra} from the force server: corrupt stream")
    extras = {}
    if nextra:
        raw = wire.read_exact(nextra, "FORCEREADY")
        try:
            extras = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            extras = {}
    return (
        energy / HARTREE_PER_EV,
        forces * (BOHR_PER_ANGSTROM / HARTREE_PER_EV),
        virial / HARTREE_PER_EV,
        extras if isinstance(extras, dict) else {},
    )


# --------------------------------------------------------------------------- domain extension
def parse_domain(text: str) -> bool:
    """Whether an INIT string announces the domain extension (:data:`DOMAIN_INIT`)."""
    return any(token.strip() == DOMAIN_INIT for token in text.split(","))


def _send_json(wire: Wire, header_name: str, payload: dict) -> None:
    raw = json.dumps(payload).encode()
    wire.send(HEADERS[header_name], np.int32(len(raw)), raw)


def _read_json(wire: Wire, what: str) -> dict:
    length = wire.read_int(what)
    if length < 0 or length > MAX_EXTRAS_BYTES:
        raise ProtocolError(f"{wire.peer}: absurd {what} length {length}: corrupt stream")
    raw = wire.read_exact(length, what) if length else b""
    if not raw:
        return {}
    try:
        value = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        raise ProtocolError(f"{wire.peer}: {what} is not valid JSON: corrupt stream") from None
    return value if isinstance(value, dict) else {}


def send_model_info(wire: Wire, info: dict) -> None:
    """Driver: MODELINFO with the model's attributes (answer to GETMODEL)."""
    _send_json(wire, "MODELINFO", info)


def read_model_info(wire: Wire) -> dict:
    """Host: the body of MODELINFO (its header already read)."""
    return _read_json(wire, "MODELINFO")


def send_domaindata(
    wire: Wire, numbers, positions, owned: int, per_atom: bool, members: bool = False, rotations: bool = False
) -> None:
    """Host: DOMAINDATA (positions [N,3] Å, atomic numbers [N], the first ``owned`` count), then STATUS."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    numbers = np.ascontiguousarray(numbers, dtype=np.int32)
    n = np.int32(len(positions))
    flags = np.int32(
        (PER_ATOM if per_atom else 0) | (MEMBERS if members else 0) | (ROTATIONS if rotations else 0)
    )
    wire.send(HEADERS["DOMAINDATA"], n, np.int32(owned), flags, numbers, positions, HEADERS["STATUS"])


def read_domaindata(wire: Wire):
    """Driver: the body of DOMAINDATA: (numbers [N] int64, positions [N,3] Å, owned, per_atom,
    members, rotations)."""
    natoms = wire.read_int("DOMAINDATA")
    if natoms < 0 or natoms > MAX_ATOMS:
        raise ProtocolError(f"{wire.peer}: absurd atom count {natoms} in DOMAINDATA: corrupt stream")
    owned = wire.read_int("DOMAINDATA")
    if owned < 0 or owned > natoms:
        raise ProtocolError(f"{wire.peer}: {owned} owned atoms of {natoms} in DOMAINDATA: corrupt stream")
    flags = wire.read_int("DOMAINDATA")
    numbers = wire.read_array(np.int32, natoms, "DOMAINDATA").astype(np.int64)
    positions = wire.read_array(np.float64, 3 * natoms, "DOMAINDATA").reshape(natoms, 3)
    return numbers, positions, owned, bool(flags & PER_ATOM), bool(flags & MEMBERS), bool(flags & ROTATIONS)


def send_domainforce(
    wire: Wire,
    result,
    natoms: int,
    owned: int,
    per_atom: bool,
    members: bool = False,
    rotations: bool = False,
) -> None:
    """Driver: DOMAINFORCE for ``result`` (a :class:`mlip_server.core.graph.Result`, eV, eV/Å); with
    ``members``, int32 M and the M member energies and forces of a committee (M = 0 otherwise);
    with ``rotations``, int32 K and the K rotated copies' weights, energies and forces (K = 0
    for a raw evaluation)."""
    parts = [
        HEADERS["DOMAINFORCE"],
        np.float64(result.energy),
        np.int32(natoms),
        np.ascontiguousarray(result.forces, dtype=np.float64),
        np.ascontiguousarray(result.virial, dtype=np.float64),
    ]
    if per_atom:
        parts += [
            np.ascontiguousarray(result.atom_energies, dtype=np.float64).reshape(owned),
            np.ascontiguousarray(result.atom_virials, dtype=np.float64).reshape(natoms, 9),
        ]
    if members:
        c = result.committee
        if c is None:
            parts.append(np.int32(0))
        else:
            parts += [
                np.int32(len(c.energies)),
                np.ascontiguousarray(c.energies, dtype=np.float64),
                np.ascontiguousarray(c.forces, dtype=np.float64),
            ]
    if rotations:
        r = result.rotations
        if r is None:
            parts.append(np.int32(0))
        else:
            weights, energies, forces = r
            parts += [
                np.int32(len(weights)),
                np.ascontiguousarray(weights, dtype=np.float64),
                np.ascontiguousarray(energies, dtype=np.float64),
                np.ascontiguousarray(forces, dtype=np.float64),
            ]
    extras = encode_extras(result.extras)
    wire.send(*parts, np.int32(len(extras)), extras)


def read_domainforce(
    wire: Wire, natoms: int, owned: int, per_atom: bool, members: bool = False, rotations: bool = False
):
    """Host: the body of DOMAINFORCE: energy (eV), forces [N,3] (eV/Å), virial [3,3] (eV),
    atomic energies [owned] and per-atom virials [N,3,3] (None without ``per_atom``), extras;
    with ``members`` the extras also hold ``committee_energies`` [M] (eV) and
    ``committee_forces`` [M,N,3] (eV/Å) of a committee (absent for a single model); with
    ``rotations`` ``rotation_weights`` [K], ``rotation_energies`` [K] (eV) and
    ``rotation_forces`` [K,N,3] (eV/Å) of an averaged evaluation (absent for a raw one)."""
    energy = float(wire.read_array(np.float64, 1, "DOMAINFORCE")[0])
    n = wire.read_int("DOMAINFORCE")
    if n != natoms:
        raise ProtocolError(f"the force server returned {n} forces for {natoms} atoms: corrupt stream")
    forces = wire.read_array(np.float64, 3 * natoms, "DOMAINFORCE").reshape(natoms, 3)
    virial = wire.read_array(np.float64, 9, "DOMAINFORCE").reshape(3, 3)
    atom_energies = atom_virials = None
    if per_atom:
        atom_energies = wire.read_array(np.float64, owned, "DOMAINFORCE")
        atom_virials = wire.read_array(np.float64, 9 * natoms, "DOMAINFORCE").reshape(natoms, 3, 3)
    member_data = {}
    if members:
        m = wire.read_int("DOMAINFORCE")
        if m < 0 or m > 1000:
            raise ProtocolError(f"absurd committee size {m} from the force server: corrupt stream")
        if m:
            member_data["committee_energies"] = wire.read_array(np.float64, m, "DOMAINFORCE")
            member_data["committee_forces"] = wire.read_array(
                np.float64, 3 * m * natoms, "DOMAINFORCE"
            ).reshape(m, natoms, 3)
    if rotations:
        k = wire.read_int("DOMAINFORCE")
        if k < 0 or k > 100_000:
            raise ProtocolError(f"absurd rotation count {k} from the force server: corrupt stream")
        if k:
            member_data["rotation_weights"] = wire.read_array(np.float64, k, "DOMAINFORCE")
            member_data["rotation_energies"] = wire.read_array(np.float64, k, "DOMAINFORCE")
            member_data["rotation_forces"] = wire.read_array(
                np.float64, 3 * k * natoms, "DOMAINFORCE"
            ).reshape(k, natoms, 3)
    extras = _read_json(wire, "DOMAINFORCE extras")
    extras.update(member_data)
    return energy, forces, virial, atom_energies, atom_virials, extras
