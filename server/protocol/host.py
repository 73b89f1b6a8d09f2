"""The host's side of the i-PI protocol (i-PI's part): used by the LAMMPS bridge's rank 0."""

from __future__ import annotations

import math
import os
import socket
import time

import numpy as np

from ..core.errors import MLIPError, ProtocolError
from .address import Address
from .messages import (
    DOMAIN_INIT,
    HEADERS,
    Wire,
    read_domainforce,
    read_forceready,
    read_model_info,
    send_domaindata,
    send_init,
    send_posdata,
)

__all__ = ["HostConnection"]


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

    def __init__(self, address: Address, timeout: float, init: bytes = b"host", domain: bool = False):
        self.address, self.timeout = address, timeout
        self.domain = domain
        self.init = init + f",{DOMAIN_INIT}".encode() if domain else init
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
        send_init(self.wire, self.init)
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
        result = self._exchange(
            lambda: send_posdata(self.wire, h, positions),
            "FORCEREADY",
            lambda: read_forceready(self.wire, len(positions)),
        )
        self._require_finite(result[0], result[1])
        return result

    def model_info(self) -> dict:
        """The server's model attributes (domain extension: GETMODEL → MODELINFO)."""
        self._require_domain()
        self.wire.send(HEADERS["GETMODEL"])
        self._expect("MODELINFO", "the model query")
        return read_model_info(self.wire)

    def compute_domain(
        self, numbers, positions, owned: int, per_atom: bool = False, members: bool = False, rotations=False
    ):
        """One rank's cluster (domain extension): energy of the first ``owned`` atoms (eV), forces
        on all atoms [N,3] (eV/Å), virial [3,3] (eV), atomic energies [owned] and per-atom
        virials [N,3,3] (eV; None without ``per_atom``) and extras (with ``members``, a
        committee's ``committee_energies`` and ``committee_forces``; with ``rotations``, an
        averaged evaluation's ``rotation_weights``, ``rotation_energies``, ``rotation_forces``).
        Positions in Å, no cell."""
        self._require_domain()
        result = self._exchange(
            lambda: send_domaindata(self.wire, numbers, positions, owned, per_atom, members, rotations),
            "DOMAINFORCE",
            lambda: read_domainforce(self.wire, len(positions), owned, per_atom, members, rotations),
        )
        self._require_finite(result[0], result[1])
        return result

    def _exchange(self, send, answer: str, read):
        t0 = time.perf_counter()
        send()
        t1 = time.perf_counter()
        self._expect("HAVEDATA", "a force evaluation")
        t2 = time.perf_counter()
        self.wire.send(HEADERS["GETFORCE"])
        self._expect(answer, "a force evaluation")
        result = read()
        t3 = time.perf_counter()
        self.seconds_waiting += t2 - t1
        self.seconds_transfer += (t1 - t0) + (t3 - t2)
        return result

    @staticmethod
    def _require_finite(energy, forces) -> None:
        if not (math.isfinite(energy) and np.isfinite(forces).all()):
            raise ProtocolError(
                "the force server returned a non-finite energy or force: the model failed on this "
                "configuration (see the server's output)"
            )

    def _require_domain(self) -> None:
        if not self.domain:
            raise ProtocolError("the domain extension was not announced on this connection (domain=True)")

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
