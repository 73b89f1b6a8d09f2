"""What production runs share: walltime, stop signals, exit statuses in words, the event log,
the server heartbeat and the restart budget.

Used by both launchers (``mlip-run`` in :mod:`mlip_server.ipi.launcher`, ``mlip-lammps-run`` in
:mod:`mlip_server.lammps.runner`), so that an i-PI run and a LAMMPS run stop, report and resume the
same way:

- :func:`parse_walltime` and :class:`Deadline`: ``--walltime HH:MM:SS`` (or, under SLURM, the
  job's own end time) minus a stop margin;
- :class:`StopSignals`: SIGTERM, SIGINT, SIGUSR1 and SIGHUP become a request to stop cleanly
  (an :class:`threading.Event`), never an exception in the middle of a write;
- :func:`describe_exit`: "exit 1", "killed by SIGKILL (out of memory?)";
- :class:`EventLog`: one JSON line per event in ``RUN/events.jsonl`` and one console line;
- :class:`Heartbeat`: the file whose modification time a server renews after each evaluation,
  and :class:`StallWatch`, which reads it to tell a hung server from a slow one.

Exit status :data:`EXIT_STOPPED` (75, ``EX_TEMPFAIL``) means "stopped cleanly before the end:
resume me"; SLURM templates resubmit on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from .core.errors import InputError

__all__ = [
    "EXIT_STOPPED",
    "EVENTS_FILE",
    "parse_walltime",
    "slurm_seconds_left",
    "Deadline",
    "StopSignals",
    "describe_exit",
    "EventLog",
    "Heartbeat",
    "StallWatch",
    "RestartBudget",
    "atomic_write",
]

EXIT_STOPPED = 75
"""Exit status of a run stopped cleanly before its last step (walltime, SIGTERM, ...)."""
EVENTS_FILE = "events.jsonl"
"""The machine-readable event log of a run folder: one JSON object per line."""

_WALLTIME = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_walltime(text: str) -> float:
    """Seconds of a walltime written as SLURM writes it: ``HH:MM:SS``, ``MM:SS``, ``D-HH:MM:SS``.

    Raises
    ------
    InputError
        Any other format, or a walltime of zero.
    """
    m = _WALLTIME.match(str(text).strip())
    if not m:
        raise InputError(f"--walltime {text!r}: write it as HH:MM:SS (or D-HH:MM:SS, MM:SS)")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    if minutes >= 60 or seconds >= 60 or (m.group(2) is None and m.group(1) is not None):
        raise InputError(f"--walltime {text!r}: write it as HH:MM:SS (minutes and seconds below 60)")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise InputError(f"--walltime {text!r} is zero: give the time the job has, as HH:MM:SS")
    return float(total)


def slurm_seconds_left(env=None) -> float | None:
    """Seconds until the SLURM job this process runs in reaches its time limit; None outside
    SLURM or when the job has no limit. Reads ``SLURM_JOB_END_TIME`` (epoch seconds, set by newer
    SLURM) or asks ``squeue`` for the job's end time."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    end = env.get("SLURM_JOB_END_TIME")
    if end and end.isdigit():
        return float(end) - time.time()
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        text = subprocess.run(
            [squeue, "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
        return datetime.fromisoformat(text).timestamp() - time.time()
    except (subprocess.SubprocessError, OSError, ValueError):
        return None  # "Unknown", "NONE" or no answer: no limit known


class Deadline:
    """When a run must start stopping: ``seconds`` from now minus ``margin`` (both s).

    ``Deadline.from_options(walltime, margin)`` takes ``--walltime`` (a string) or, when it is
    None, the SLURM job's end time; it is ``None`` when neither is known. The default margin is
    10 % of the time left, at least 20 s and at most 300 s: enough for the step in flight and the
    checkpoint i-PI or LAMMPS writes when told to stop.
    """

    def __init__(self, seconds: float, margin: float | None = None, source: str = "--walltime"):
        self.seconds = float(seconds)
        self.margin = float(min(300.0, max(20.0, 0.1 * seconds)) if margin is None else margin)
        self.source = source
        self.start = time.monotonic()
        if self.seconds - self.margin <= 0:
            raise InputError(
                f"{source} gives {self.seconds:.0f} s, not more than the {self.margin:.0f} s stop margin: "
                "give a longer walltime (or a smaller --walltime-margin)"
            )

    @classmethod
    def from_options(cls, walltime: str | None, margin: float | None = None) -> Deadline | None:
        if walltime is not None:
            return cls(parse_walltime(walltime), margin)
        left = slurm_seconds_left()
        return None if left is None else cls(left, margin, source="the SLURM job's time limit")

    def remaining(self) -> float:
        """Seconds until the stop should begin (negative: overdue)."""
        return self.seconds - self.margin - (time.monotonic() - self.start)

    def due(self) -> bool:
        return self.remaining() <= 0

    def describe(self) -> str:
        return f"{self.source}: {self.seconds:.0f} s, stopping {self.margin:.0f} s before the end"


class StopSignals:
    """Context manager: SIGTERM, SIGINT, SIGUSR1 and SIGHUP set :attr:`event` (and
    :attr:`signal_name`) instead of killing the process; a second SIGINT raises KeyboardInterrupt.
    Outside the main thread (``run_many``) it installs nothing and :attr:`event` is only set by the
    caller."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)

    def __init__(self, event: threading.Event | None = None):
        self.event = event or threading.Event()
        self.signal_name: str | None = None
        self.previous = {}

    def _on_signal(self, signum, frame):
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


def describe_exit(code: int | None) -> str:
    """A process's exit status in words: ``running``, ``exit 0``, ``killed by SIGKILL (out of
    memory?)``. ``code`` as :class:`subprocess.Popen` gives it (negative: the signal)."""
    if code is None:
        return "running"
    if code >= 0:
        return f"exit {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")


class EventLog:
    """The run's events: one JSON object per line in ``folder/events.jsonl`` (appended: a resumed
    run continues the same log) and one line on ``console``.

    Each event has ``time`` (ISO, local), ``event`` (start, crash, hang, restart, stop, resume,
    done, failed, ...), and what applies of ``process``, ``status``, ``step``, ``action``,
    ``message``."""

    def __init__(self, folder: Path, console=None, prefix: str = "mlip-run"):
        self.path = Path(folder) / EVENTS_FILE
        self.console = console if console is not None else sys.stdout
        self.prefix = prefix
        self._lock = threading.Lock()

    def record(self, event: str, message: str, **fields) -> dict:
        entry = {"time": datetime.now().isoformat(timespec="seconds"), "event": event, **fields}
        entry["message"] = message
        with self._lock:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            print(f"{self.prefix}: {message}", file=self.console, flush=True)
        return entry

    def read(self) -> list[dict]:
        return read_events(self.path.parent)


def read_events(folder: Path) -> list[dict]:
    """The events of run ``folder`` (empty when it has none)."""
    path = Path(folder) / EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Heartbeat:
    """The file a server touches after each completed evaluation (``mlip-server --heartbeat``):
    its modification time is the last moment the server did useful work. Cheap: one
    ``os.utime`` at most every ``every`` s."""

    def __init__(self, path: str | Path | None, every: float = 0.2):
        self.path = None if path is None else Path(path)
        self.every = every
        self._last = 0.0
        if self.path is not None:
            self.path.touch()

    def beat(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.path.touch()


class StallWatch:
    """Tells a hung server from a slow one by its :class:`Heartbeat` file.

    ``timeout`` (s) fixed by ``--stall-timeout``; None derives it: 10 × the longest gap between
    beats seen so far, at least ``floor`` s. Before a server's first beat (model loading, the
    first call's measurements) the limit is ``startup`` s (or ``timeout`` if longer)."""

    def __init__(
        self, path: Path, timeout: float | None = None, floor: float = 120.0, startup: float = 600.0
    ):
        self.path = Path(path)
        self.fixed = timeout
        self.floor = floor
        self.startup = startup
        self.reset()

    def reset(self) -> None:
        """A new server: nothing seen yet; waiting starts now."""
        self.since = time.time()
        self.last_beat = None
        self.slowest = 0.0

    def limit(self) -> float:
        if self.last_beat is None:  # loading the model and the first call's measurements
            return max(self.startup, self.fixed or 0.0)
        if self.fixed is not None:
            return self.fixed
        return max(self.floor, 10.0 * self.slowest)

    def stalled(self) -> float | None:
        """Seconds without a beat when that exceeds the limit, else None."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        now = time.time()
        if mtime is not None and mtime > self.since and mtime != self.last_beat:
            if self.last_beat is not None:
                self.slowest = max(self.slowest, mtime - self.last_beat)
            self.last_beat = mtime
        reference = self.last_beat if self.last_beat is not None else self.since
        quiet = now - reference
        return quiet if quiet > self.limit() else None


class RestartBudget:
    """At most ``limit`` restarts (``--max-server-restarts`` of a run's servers, ``--max-ipi-restarts``
    of its i-PI: ``flag``; 0: fail fast)."""

    def __init__(self, limit: int, flag: str = "--max-server-restarts"):
        if limit < 0:
            raise InputError(f"{flag} {limit}: give 0 (fail fast) or more")
        self.limit = int(limit)
        self.flag = flag
        self.used = 0

    def take(self) -> bool:
        """True (and one fewer left) when a restart is still allowed."""
        if self.used >= self.limit:
            return False
        self.used += 1
        return True


def atomic_write(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` so that a kill mid-write leaves the old file or the new one,
    never half of one (a run's records and checkpoints are read back after hard stops)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
