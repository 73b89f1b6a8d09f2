"""Where an i-PI host and a driver meet: one :class:`Address` type that listens and connects."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from ..core.errors import InputError, ProtocolError
from .messages import UNIX_PREFIX

__all__ = ["Address"]


@dataclass(frozen=True)
class Address:
    """Where the two sides meet: ``unix:NAME`` (socket file /tmp/ipi_NAME, or NAME itself if it
    starts with /), ``shm:NAME`` (the same socket, arrays in i-PI's shared memory; driver side
    only) or ``inet:HOST:PORT``; on the driver side optionally followed by ``=SPEC`` (the
    endpoint's averaging).

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
        if kind in ("unix", "shm") and sep and rest and (allow_spec or kind == "unix"):
            return cls(kind, rest if rest.startswith("/") else UNIX_PREFIX + rest, 0, spec)
        if kind == "inet" and sep:
            host, sep2, port = rest.rpartition(":")
            if sep2 and host and port.isdigit() and 0 < int(port) < 65536:
                return cls("inet", host, int(port), spec)
        if allow_spec:
            raise InputError(
                f"cannot parse address {text!r}: use unix:NAME, shm:NAME or inet:HOST:PORT, optionally =SPEC"
            )
        raise InputError(
            f"cannot parse address {text!r}: use unix:NAME or inet:HOST:PORT (the address "
            "mlip-server is given)"
        )

    def for_rank(self, rank: int) -> "Address":
        """The address of MPI rank ``rank`` of a domain-decomposed LAMMPS run: ``unix:NAME-RANK``
        or port ``PORT + RANK``."""
        if self.kind == "unix":
            return Address("unix", f"{self.target}-{rank}", 0, self.spec)
        if self.kind == "inet":
            return Address("inet", self.target, self.port + rank, self.spec)
        raise InputError(f"address {self} cannot be split per rank: use unix:NAME or inet:HOST:PORT")

    def __str__(self):
        where = self.target if self.kind in ("unix", "shm") else f"{self.target}:{self.port}"
        return f"{self.kind}:{where}"

    def try_connect(self) -> socket.socket | None:
        """One connection attempt: the socket, or None if nobody listens yet or the listener's
        backlog is full (i-PI accepts and hand-shakes clients one at a time)."""
        if self.kind in ("unix", "shm"):
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
