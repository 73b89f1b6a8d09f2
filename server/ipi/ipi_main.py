"""i-PI's own ``i-pi`` command, with two repairs (i-PI 3.3): a driver that dies mid-call, and a
stop signal the kernel hands to another thread than the main one.

i-PI re-queues the request of a driver that disconnects, and a new driver may connect to the
same socket; that is what lets ``mlip-run`` restart a crashed server. But a driver killed while
it computes leaves i-PI's ``GETFORCE`` unread in its socket, and the kernel then resets the
connection: i-PI 3.3.1's bulk force read (``DriverSocket._recv_forces_bulk``) catches a closed
connection (``recv_into`` returning 0) but not ``ConnectionResetError``, which ends i-PI's
dispatch thread, and the simulation waits forever. Here ``recv_into`` reports a reset as the
closed connection it is, so i-PI's own recovery runs.

SIGTERM/SIGINT start i-PI's soft exit (RESTART written) through a Python handler, and Python runs
handlers in the main thread only, when it next executes Python code. The kernel may deliver a
signal sent to the process (a ``kill``, the death signal of a SIGKILLed ``mlip-run``) to any of
its threads, and i-PI's main thread waits for each step's future without a time-out
(``Simulation.run_step``): a signal caught by another thread was then never handled, and i-PI
ran on as an orphan (seen once on a loaded machine, ``tests/test_launcher.py``). Here the main
thread waits for a future in slices of :data:`WAIT_SLICE` s, so a pending handler runs at once.
Nothing else of i-PI changes.

    python -m mlip_server.ipi.ipi_main input.xml     # = i-pi input.xml
"""

from __future__ import annotations

import concurrent.futures
import runpy
import sys
import threading

from ipi.interfaces import sockets

from ..processes import executable

__all__ = ["main", "WAIT_SLICE"]

WAIT_SLICE = 0.2  # s: how long the main thread waits for a future before Python looks at signals

_recv_into = sockets.DriverSocket.recv_into
_result = concurrent.futures.Future.result


def _recv_into_reset_is_eof(self, *args, **kwargs):
    try:
        return _recv_into(self, *args, **kwargs)
    except (ConnectionResetError, BrokenPipeError):
        return 0  # the driver is gone: i-PI raises Disconnected and re-queues the request


def _result_waking_for_signals(self, timeout=None):
    """``Future.result``; in the main thread without a time-out it waits in slices (pending
    signal handlers run between them) instead of in one untimed lock wait."""
    if timeout is None and threading.current_thread() is threading.main_thread():
        while not self.done():
            concurrent.futures.wait([self], timeout=WAIT_SLICE)
    return _result(self, timeout)


def main() -> None:
    sockets.DriverSocket.recv_into = _recv_into_reset_is_eof
    concurrent.futures.Future.result = _result_waking_for_signals
    script = executable("i-pi")
    sys.argv = [script, *sys.argv[1:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
