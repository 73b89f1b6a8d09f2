"""The i-PI socket protocol, both sides.

``messages`` holds the whole wire format (message names, framing, every payload layout of the
driver side, the host side and i-PI's shared-memory mode, and the units); ``address`` the one
:class:`Address` type that listens and connects; ``host`` the host's conversation
(:class:`HostConnection`, used by the LAMMPS bridge), including the domain extension that only
the bridge and ``mlip-server`` speak. Everything is importable from here.
"""

from .address import Address
from .host import HostConnection
from .messages import (
    ATOMIC_UNITS,
    BOHR_PER_ANGSTROM,
    DOMAIN_INIT,
    HARTREE_PER_EV,
    HEADERS,
    PER_ATOM,
    UNIX_PREFIX,
    SharedSegments,
    Wire,
    cell_to_rows,
    encode_extras,
    encode_result,
    ipi_extras,
    parse_domain,
    parse_init,
    read_domaindata,
    read_domainforce,
    read_forceready,
    read_init,
    read_model_info,
    read_posdata,
    read_posdata_shm,
    send_domaindata,
    send_domainforce,
    send_forceready,
    send_forceready_shm,
    send_init,
    send_model_info,
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
    "ipi_extras",
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
    "DOMAIN_INIT",
    "PER_ATOM",
    "parse_domain",
    "send_model_info",
    "read_model_info",
    "send_domaindata",
    "read_domaindata",
    "send_domainforce",
    "read_domainforce",
]
