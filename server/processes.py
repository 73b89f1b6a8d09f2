"""Starting and stopping i-PI and force-server processes without sleeps or leftovers.

Used by the launchers (i-PI and LAMMPS), the benchmarks and the tests: unique socket names,
waiting for i-PI's socket to appear (instead of ``sleep``), and a clean stop that
kills what was started and removes the socket files that i-PI leaves behind.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .core.errors import ProtocolError
from .protocol import UNIX_PREFIX

__all__ = [
    "unique_name",
    "free_port",
    "unix_socket_path",
    "tie_to_parent",
    "start",
    "executable",
    "start_ipi",
    "start_server",
    "remove_ipi_shm",
    "wait_for_socket",
    "wait",
    "stop",
]

BIN = Path(sys.executable).parent


def unique_name(prefix: str = "mlip") -> str:
    """A socket name no concurrent run uses: ``prefix-PID-RANDOM``."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now, for an inet run: the inet twin of :func:`unique_name`."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def unix_socket_path(name: str) -> str:
    return name if name.startswith("/") else UNIX_PREFIX + name


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def tie_to_parent() -> None:
    """``preexec_fn`` of every child we start: on Linux the kernel sends the child SIGTERM when
    the process that started it dies, even by SIGKILL (our own SIGTERM handlers cannot run then),
    so no i-PI, server or MD launcher outlives a killed parent. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def start(cmd, cwd=None, log=None, env=None) -> subprocess.Popen:
    """Starts ``cmd`` in its own process group (so a stop reaches its children), tied to this
    process's life (:func:`tie_to_parent`)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=tie_to_parent,
        )
    finally:
        if log:
            out.close()


def executable(name: str) -> str:
    """``name`` next to this Python (the venv), else on PATH."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def start_ipi(xml, cwd, log="ipi.log", env=None) -> subprocess.Popen:
    """i-PI on input ``xml`` in folder ``cwd``, its output in ``cwd/log``: i-PI's own ``i-pi``
    command with the repair of :mod:`mlip_server.ipi.ipi_main` (a driver killed mid-call)."""
    return start(
        [sys.executable, "-m", "mlip_server.ipi.ipi_main", xml], cwd=cwd, log=Path(cwd) / log, env=env
    )


def start_server(model, structure, addresses, cwd, log="server.log", extra=(), env=None) -> subprocess.Popen:
    """``mlip-server`` for ``model`` (a list: ``--committee``) on ``addresses``, elements from
    ``structure``, output in ``cwd/log``."""
    which = ["--committee", *map(str, model)] if isinstance(model, (list, tuple)) else ["--model", model]
    cmd = [sys.executable, "-m", "mlip_server.ipi.serve", *which, "--structure", structure]
    for a in addresses:
        cmd += ["--address", a]
    return start(cmd + list(extra), cwd=cwd, log=Path(cwd) / log, env=env)


def remove_ipi_shm(pid: int) -> list:
    """Removes the shared-memory segments (``mode='shm'``) of the i-PI process ``pid`` that it left
    behind (it removes them itself when it ends normally, not when it is killed)."""
    removed = []
    for path in glob.glob(f"/dev/shm/ipi_shm_{int(pid)}_*"):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def wait_for_socket(name: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Waits until i-PI's unix socket ``name`` exists; fails at once if ``proc`` died."""
    path = unix_socket_path(name)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise ProtocolError(f"i-PI exited (status {proc.returncode}) before opening {path}: see its log")
        if time.monotonic() > deadline:
            raise ProtocolError(f"i-PI did not open {path} within {timeout:g} s")
        time.sleep(0.02)


def wait(procs, timeout: float) -> list[int]:
    """Waits for all ``procs``; kills them all if any is still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        stop(procs)
        raise
    return codes


def stop(procs, sockets=(), grace: float = 5.0) -> None:
    """Terminates ``procs`` (process groups), kills them after ``grace`` s, removes ``sockets``."""
    for p in procs:
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        if p is None:
            continue
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    for name in sockets:
        try:
            os.unlink(unix_socket_path(name))
        except FileNotFoundError:
            pass
