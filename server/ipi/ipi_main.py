"""i-PI's own ``i-pi`` command, with one repair for a driver that dies mid-call (i-PI 3.3).

i-PI re-queues the request of a driver that disconnects, and a new driver may connect to the
same socket; that is what lets ``mlip-run`` restart a crashed server. But a driver killed while
it computes leaves i-PI's ``GETFORCE`` unread in its socket, and the kernel then resets the
connection: i-PI 3.3.1's bulk force read (``DriverSocket._recv_forces_bulk``) catches a closed
connection (``recv_into`` returning 0) but not ``ConnectionResetError``, which ends i-PI's
dispatch thread, and the simulation waits forever. Here ``recv_into`` reports a reset as the
closed connection it is, so i-PI's own recovery runs. Nothing else of i-PI changes.

    python -m server.ipi.ipi_main input.xml     # = i-pi input.xml
"""

from __future__ import annotations

import runpy
import sys

from ipi.interfaces import sockets

from ..processes import executable

__all__ = ["main"]

_recv_into = sockets.DriverSocket.recv_into


def _recv_into_reset_is_eof(self, *args, **kwargs):
    try:
        return _recv_into(self, *args, **kwargs)
    except (ConnectionResetError, BrokenPipeError):
        return 0  # the driver is gone: i-PI raises Disconnected and re-queues the request


def main() -> None:
    sockets.DriverSocket.recv_into = _recv_into_reset_is_eof
    script = executable("i-pi")
    sys.argv = [script, *sys.argv[1:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
