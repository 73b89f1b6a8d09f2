"""The i-PI socket protocol, both sides.

``messages`` holds the whole wire format (message names, framing, every payload layout of the
driver side, the host side and i-PI's shared-memory mode, and the units); ``address`` the one
:class:`Address` type that listens and connects; ``host`` the host's conversation
(:class:`HostConnection`, used by the LAMMPS bridge). Everything is importable from here.
"""

from .address import Address
from .host import HostConnection
from .messages import (
    ATOMIC_UNITS,
    BOHR_PER_ANGSTROM,
    HARTREE_PER_EV,
    HEADERS,
    UNIX_PREFIX,
    SharedSegments,
    Wire,
    cell_to_rows,
    encode_extras,
    encode_result,
    parse_init,
    read_forceready,
    read_init,
    read_posdata,
    read_posdata_shm,
    send_forceready,
    send_forceready_shm,
    send_init,
    send_posdata,
)

__all__ = [
    "Address",
    "HostConnection",
    "ATOMIC_UNITS",
    "BOHR_PER_ANGSTROM",
    "HARTREE_PER_EV",
    "HEADERS",
    "UNIX_PREFIX",
    "SharedSegments",
    "Wire",
    "cell_to_rows",
    "encode_extras",
    "encode_result",
    "parse_init",
    "read_forceready",
    "read_init",
    "read_posdata",
    "read_posdata_shm",
    "send_forceready",
    "send_forceready_shm",
    "send_init",
    "send_posdata",
]
