"""One description of the machine that produced a number: CPU, cores, threads, torch, GPU; and
OpenMP's wait policy for servers on shared cores (:func:`shared_cores_env`, :func:`wait_policy_hint`).

Every report that contains timings (``mlip_server.training.validate_teacher``,
``mlip_server.training.evaluate_model``,
``mlip-probe``, the scripts of ``bench/``) stores :func:`describe` next to them, so that a
reader can tell a busy 2-core laptop from an idle GPU node.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Sequence

__all__ = ["describe", "cpu_name", "available_cpus", "shared_cores_env", "wait_policy_hint"]


def cpu_name() -> str:
    """The CPU model name.

    Returns
    -------
    str
        ``model name`` of ``/proc/cpuinfo``, else ``Model name`` of ``lscpu``, else what
        :mod:`platform` knows (e.g. ``x86_64``).
    """
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: str | None = None, *, torch: bool = True, packages: Sequence[str] = ()) -> dict:
    """The machine, as a JSON-ready dict.

    Parameters
    ----------
    device : str, optional
        The device the numbers were measured on (``cpu``, ``cuda``, ``cuda:1``); stored under
        ``device``. With a CUDA device, ``gpu`` names that device; without ``device``, ``gpu``
        names CUDA device 0 whenever one is available.
    torch : bool
        Record torch's version and its CPU threads (imports torch). False for reports that
        do not use it (the analysis benchmark).
    packages : sequence of str
        Distributions whose versions to record as well, e.g. ``("MDAnalysis", "numpy")``;
        each under its own name (``"not installed"`` when missing).

    Returns
    -------
    dict
        ``cpu`` (model name), ``cores`` (logical CPUs of the machine), ``cpus_available``
        (those this process may run on), ``python``, ``date`` (local, ``YYYY-MM-DD HH:MM``),
        ``load_average_at_start`` (1-minute load average now: other processes compete for the
        CPUs when it exceeds ``cores``), ``omp_wait_policy`` (only when set); with ``torch``:
        ``torch`` (version) and ``torch_threads`` (intra-op threads now); ``device`` and
        ``gpu`` as above; one key per entry of ``packages``.
    """
    available = available_cpus()
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cpus_available": available,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": os.getloadavg()[0],
    }
    if os.environ.get("OMP_WAIT_POLICY"):
        info["omp_wait_policy"] = os.environ["OMP_WAIT_POLICY"]
    if torch:
        import torch as _torch

        info["torch"] = _torch.__version__
        info["torch_threads"] = _torch.get_num_threads()
        if device is not None:
            info["device"] = device
        cuda = device is None or str(device).startswith("cuda")
        if cuda and _torch.cuda.is_available():
            info["gpu"] = _torch.cuda.get_device_name(_torch.device(device) if device else 0)
    elif device is not None:
        info["device"] = device
    for name in packages:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = "not installed"
        info[name] = version
    return info


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity; the machine's count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def shared_cores_env(device: str, shared: bool, env=None) -> dict | None:
    """The environment for servers on ``device``: ``env`` (None: this process's, inherited), with
    ``OMP_WAIT_POLICY=PASSIVE`` unless it sets a policy when they run on the CPU and ``shared`` says
    their cores are shared with other busy processes (several servers of one run, LAMMPS's MPI
    ranks, which poll while they wait). Spinning OpenMP threads then take the cores those processes
    need: measured 2× slower model calls with one competing process on 2 cores (``mlip_server``
    module docstring)."""
    if not (shared and str(device).startswith("cpu")):
        return env
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def wait_policy_hint(threads: int) -> str | None:
    """A log line for a server about to run ``threads`` OpenMP threads on a machine whose 1-minute
    load average says other processes already use the cores they need (None otherwise, or when
    ``OMP_WAIT_POLICY`` is set): the fix is ``OMP_WAIT_POLICY=PASSIVE``."""
    if os.environ.get("OMP_WAIT_POLICY") or threads < 2:
        return None
    available = available_cpus()
    load = os.getloadavg()[0]
    if load + threads <= available + 0.5:
        return None
    return (
        f"the 1-minute load average is {load:.1f} on {available} CPUs and this server runs {threads} "
        "OpenMP threads: if other busy processes share these cores, start it with "
        "OMP_WAIT_POLICY=PASSIVE (model calls measured 2x faster that way with one competing process; "
        "on idle cores the default is 1.35x faster)"
    )
