"""The i-PI socket protocol, driver side: message framing and unit conversion.

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

Units are converted with ``ipi.utils.units`` so that they match i-PI's own constants.
"""

from __future__ import annotations

import json
import socket

import numpy as np
from ipi.utils.units import unit_to_internal

from .errors import ProtocolError

HDRLEN = 12
BOHR_PER_ANGSTROM = unit_to_internal("length", "angstrom", 1.0)
HARTREE_PER_EV = unit_to_internal("energy", "electronvolt", 1.0)
MAX_ATOMS = 10**8
MAX_INIT_BYTES = 1 << 20


def header(name: str) -> bytes:
    return name.upper().ljust(HDRLEN).encode()


HEADERS = {h: header(h) for h in (
    "STATUS", "NEEDINIT", "READY", "HAVEDATA", "INIT", "POSDATA", "GETFORCE", "FORCEREADY", "EXIT")}
_KNOWN = {v: k for k, v in HEADERS.items()}


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
                raise ProtocolError(f"{self.peer}: connection lost while reading {what} ({err.strerror})") from None
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


def read_natoms(wire: Wire) -> int:
    natoms = wire.read_int("POSDATA")
    if natoms <= 0 or natoms > MAX_ATOMS:
        raise ProtocolError(f"{wire.peer}: absurd atom count {natoms} in POSDATA (must be 1..{MAX_ATOMS}): corrupt stream")
    return natoms


def cell_to_rows(h_bohr: np.ndarray) -> np.ndarray:
    """i-PI cell h (columns = lattice vectors, Bohr) → ASE-style rows in Å."""
    return np.asarray(h_bohr, dtype=np.float64).reshape(3, 3).T / BOHR_PER_ANGSTROM


def encode_result(energy_ev: float, forces_ev_a: np.ndarray, virial_ev: np.ndarray):
    """Energy (Hartree), forces (Hartree/Bohr) and virial (Hartree) for the wire."""
    return (
        np.float64(energy_ev * HARTREE_PER_EV),
        np.ascontiguousarray(forces_ev_a, dtype=np.float64).reshape(-1) * (HARTREE_PER_EV / BOHR_PER_ANGSTROM),
        np.ascontiguousarray(virial_ev, dtype=np.float64).reshape(9) * HARTREE_PER_EV,
    )


def encode_extras(extras: dict) -> bytes:
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
