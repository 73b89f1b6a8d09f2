"""Runs a LAMMPS deck with forces from ``mlip-server``: the bridge and the server, in order.

    mlip-lammps-run lammps_inputs/in.water-nvt --model m.pt -e O H --np 2 \\
        --var steps 2000 --out runs/water-nvt

Order, without sleeps: the bridge (``mlip-lammps``, under ``mpiexec -n K`` when K > 1)
executes the deck up to its ``fix external`` line, writes the starting structure and
listens; the launcher waits for that structure file, then starts ``mlip-server``, which
connects (retrying until the socket exists). Output of both is streamed to the terminal
and kept in ``OUT/lammps.out`` and ``OUT/server.log``.

With ``--decomposition domain`` (the default for ``--np`` > 1) every rank listens on its own
address and ``--servers S`` servers share the ranks (rank r on server r mod S); their outputs
are ``OUT/server.log``, ``server-1.log``, ...; the bridge writes ``OUT/bridge.json``
(per rank: owned and ghost atoms, seconds in the callback, waiting for the server, bridge).

If a side fails, the others are stopped: a server that exits before connecting (bad model,
element the model lacks) stops the waiting bridge at once; a server that dies mid-run is
detected by the bridge, which halts LAMMPS (or, with restarts, is restarted; not when it exits
with status 2 or fails with the same error line at the same step again); a LAMMPS error closes
the socket and the server exits. The failure line names the side that failed first and, for a
server, its own ``mlip-server: error: ...`` line (in both routes). A model that cannot serve the
domain route (its energy of a subset of atoms cannot be asked for) is refused by the bridge when
its server connects, with one line saying why. On exit or Ctrl-C everything
started is killed, the socket file is removed, and ``/dev/shm/mpich_shm_*`` files that the run's
MPI processes left behind (MPICH leaves them when a rank is killed) are deleted.

When the deck uses ``${data}`` and no ``--var data`` is given, a water box of
``--molecules`` molecules is built into ``OUT/water-N.data`` (nothing is written outside
OUT). Without ``--model`` the shipped ``models/water-pet.pt`` is used.

Exit status: 0 when both sides finished cleanly, otherwise the failing side's status
(2 bad input, 1 failed run), 130 on Ctrl-C.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import processes
from ..machine import shared_cores_env
from ..progress import Progress, around_bars
from ..protocol import Address
from ..supervision import EXIT_STOPPED, EventLog, RestartBudget, describe_exit
from .checkpoint import PROGRESS_FILE, STATE_FILE, STOP_FILE
from .mpi import find_mpiexec, mpi_env, remove_leftover_shm, shm_files

__all__ = [
    "LammpsRun",
    "RunResult",
    "run",
    "error_line",
    "domain_server_commands",
    "node_addresses",
    "serve_node",
    "PROG",
]

PROG = "mlip-lammps-run"
HANG_GRACE = 5.0
"""Seconds a server the bridge has lost may take to die by itself before it is stopped (hung)."""
BRIDGE_PROG = "mlip-lammps"  # python -m mlip_server.lammps.cli mlip-lammps ... = the bridge


def same_error(a: str | None, b: str | None) -> bool:
    """Whether two server error lines report the same failure. Numbers are left out: in the
    domain route each rank sends its own cluster, so the same overlap or unknown element names
    other (cluster-local) atom indices depending on which rank's call the server takes first."""
    return a is not None and b is not None and re.sub(r"\d+", "#", a) == re.sub(r"\d+", "#", b)


def error_line(text: str) -> str | None:
    """The message of the last ``PROG: error: MESSAGE`` line of a process's output."""
    lines = [l.strip() for l in text.splitlines() if "error: " in l]
    return lines[-1].split("error: ", 1)[1] if lines else None


# the bridge's lines about a lost and a regained force server (bridge.Bridge.reconnect)
_LOST = re.compile(r"force server lost at step (\d+) \(rank (\d+)\)")
_REGAINED = re.compile(r"force server reconnected at step (\d+) \(rank (\d+)\) after ([\d.]+) s")


class _Relay:
    """Copies a process's output line by line to a file and, optionally, to our stdout;
    keeps the last ``keep`` lines (for error messages), notes the bridge's connection and its
    lost / regained force servers (``lost``, ``regained``: (step, rank[, seconds]) queues)."""

    def __init__(self, proc: subprocess.Popen, path: Path, echo: bool, keep: int = 5000, append=False):
        self.proc, self.path, self.echo, self.append = proc, path, echo, append
        self.lines: collections.deque = collections.deque(maxlen=keep)
        self.own: collections.deque = collections.deque(maxlen=200)  # this process's lines only
        self.connected = False
        self.lost: collections.deque = collections.deque()
        self.regained: collections.deque = collections.deque()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        with open(self.path, "a" if self.append else "w") as out:
            for line in self.proc.stdout:
                self.lines.append(line)
                self.own.append(line)
                if not self.connected and "force server connected" in line:
                    self.connected = True
                if "force server " in line:
                    m = _LOST.search(line)
                    if m:
                        self.lost.append((int(m[1]), int(m[2])))
                    m = _REGAINED.search(line)
                    if m:
                        self.regained.append((int(m[1]), int(m[2]), float(m[3])))
                out.write(line)
                out.flush()
                if self.echo:
                    console = around_bars(sys.stdout)  # above a live progress bar
                    console.write(line if line.endswith("\n") else line + "\n")
                    console.flush()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def error(self) -> str | None:
        """This process's own error line (not a predecessor's of the same log), once it ended."""
        self.join()
        return error_line("".join(self.own))

    def join(self, timeout=5.0):
        self.thread.join(timeout)


@dataclass
class RunResult:
    """Exit statuses (None: not started), outputs and the launcher's verdict."""

    code: int
    bridge_code: int | None
    server_code: int | None
    bridge_output: str
    server_output: str
    message: str
    workdir: Path
    removed_shm: list = field(default_factory=list)
    seconds_per_step: float | None = None  # the mean since the progress display's first step
    dt_fs: float | None = None


# --------------------------------------------------------------------------- the run
class LammpsRun:
    """One bridge (LAMMPS, optionally under mpiexec) and its force server(s), started in order.

    Parameters
    ----------
    deck
        LAMMPS input (see :mod:`mlip_server.lammps.deck`).
    model
        TorchScript model file.
    elements
        element of each LAMMPS atom type, in type order.
    np
        MPI ranks for LAMMPS (1: no mpiexec).
    variables
        (name, value) LAMMPS variables.
    workdir
        where LAMMPS and the server run and write (created).
    address
        ``unix:NAME`` / ``inet:HOST:PORT``; default a unique unix socket. With the domain
        decomposition rank r listens on ``unix:NAME-r`` / port ``PORT + r``.
    server_args / bridge_args
        extra command-line arguments for each side (``--device`` is added per server).
    echo
        stream all outputs to stdout.
    grace
        seconds a side may take to exit by itself after the other one ended.
    decomposition
        ``gather`` (one connection, rank 0) or ``domain`` (one connection per rank).
    servers
        force servers (domain only): rank r is served by server r mod ``servers``.
    device
        the servers' device; ``cuda`` with several servers gives server s ``cuda:s`` (one per GPU).
    progress
        seconds between the timestamped progress lines on stdout when it is no terminal (a
        terminal gets a live bar; 0: neither); read from the bridge's ``progress.json``.
    """

    def __init__(
        self,
        deck,
        model,
        elements,
        *,
        np=1,
        variables=(),
        workdir=".",
        address=None,
        server_args=(),
        bridge_args=(),
        echo=True,
        grace=15.0,
        mpiexec=None,
        decomposition="gather",
        servers=1,
        device="cpu",
        max_server_restarts=0,
        reconnect_timeout=300.0,
        events: EventLog | None = None,
        resume=False,
        stop_event=None,
        deadline=None,
        progress: float = 10.0,
    ):
        self.deck, self.model = Path(deck).resolve(), resolved_model(model)
        self.elements, self.np = list(elements), int(np)
        self.variables = [(str(k), str(v)) for k, v in variables]
        self.workdir = Path(workdir).resolve()
        self.name = processes.unique_name("lammps")
        self.address = address or f"unix:{self.name}"
        self.decomposition, self.n_servers, self.device = decomposition, int(servers), device
        self.server_args, self.bridge_args = list(server_args), list(bridge_args)
        if "--decomposition" not in self.bridge_args:  # explicit: the bridge's own default follows its ranks
            self.bridge_args = ["--decomposition", self.decomposition] + self.bridge_args
        if not any(a.startswith("--timings") for a in self.bridge_args):
            self.bridge_args += ["--timings", str(self.workdir / "bridge.json")]
        self.echo, self.grace = echo, grace
        self.mpiexec = mpiexec
        self.structure = self.workdir / "lammps-init.xyz"
        self.bridge: subprocess.Popen | None = None
        self.servers: list[subprocess.Popen] = []
        self._relays: dict = {}
        self._shm_before: set = set()
        # crashed servers are restarted on the same addresses (the bridge waits and repeats the call)
        self.budget = RestartBudget(max_server_restarts)
        if self.budget.limit and not any(a.startswith("--reconnect-timeout") for a in self.bridge_args):
            self.bridge_args += ["--reconnect-timeout", f"{reconnect_timeout:g}"]
        self.events = events
        self._crashed: dict = {}  # server index → monotonic time of its crash (until LAMMPS goes on)
        self._gave_up: str | None = None
        self._lost: dict = {}  # server index → (step, rank, time) the bridge reported it lost
        self._reported: set = set()  # pids of crashed servers already recorded
        self._errors: dict = {}  # server index → (its error line, step) at its last crash
        # clean stops (stop_event: the launcher's signals; deadline: --walltime) and resume
        self.resume, self.stop_event, self.deadline = resume, stop_event, deadline
        self.stop_file = self.workdir / STOP_FILE
        self._stop_sent = False
        if not any(a.startswith("--state") for a in self.bridge_args):
            self.bridge_args += ["--state", str(self.workdir / STATE_FILE)]
        if not any(a.startswith("--stop-file") for a in self.bridge_args):
            self.bridge_args += ["--stop-file", str(self.stop_file)]
        if resume and "--resume" not in self.bridge_args:
            self.bridge_args.append("--resume")
        self.progress_every = progress
        self.progress: Progress | None = None  # made at the bridge's first progress.json
        self._progress_read = float("-inf")

    @property
    def server(self) -> subprocess.Popen | None:
        """The first force server (the only one of a gather run)."""
        return self.servers[0] if self.servers else None

    def rank_addresses(self) -> list[str]:
        """The address each rank listens on (one entry for the gather route)."""
        if self.decomposition != "domain":
            return [self.address]
        base = Address.parse(self.address, allow_spec=False)
        return [str(base.for_rank(r)) for r in range(self.np)]

    def sockets(self) -> list[str]:
        """Socket files the run's listeners create (removed at the end)."""
        return [a[5:] for a in self.rank_addresses() if a.startswith("unix:")]

    # -- commands -------------------------------------------------------------------------
    def bridge_command(self) -> list:
        cmd = [
            sys.executable,
            "-m",
            "mlip_server.lammps.cli",
            BRIDGE_PROG,
            str(self.deck),
            "--address",
            self.address,
            "-e",
            *self.elements,
            "--write-structure",
            str(self.structure),
        ]
        for name, value in self.variables:
            cmd += ["--var", name, value]
        cmd += self.bridge_args
        if self.np > 1:
            cmd = [self.mpiexec or find_mpiexec(), "-n", str(self.np)] + cmd
        return cmd

    def server_commands(self) -> list[list]:
        """One ``mlip-server`` command per server: the ranks it serves and its device."""
        if self.decomposition != "domain":
            exe = Path(sys.executable).parent / "mlip-server"
            return [
                [exe, *model_args(self.model), "--structure", str(self.structure), "--address", self.address]
                + ["--device", self.device]
                + self.server_args
            ]
        return domain_server_commands(
            self.model, self.rank_addresses(), self.n_servers, self.device, self.server_args
        )

    def _server_env(self) -> dict | None:
        """The servers' environment: OpenMP threads that do not spin (``PASSIVE``) when the servers
        share the CPU cores with LAMMPS's MPI ranks, which poll while they wait, or with each other;
        else this process's (one rank, one server: the runtime's default is the faster one)."""
        return _server_env(self.device, self.np, self.n_servers)

    def _spawn(self, cmd, log_name, env=None, append=False) -> subprocess.Popen:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
            preexec_fn=processes.tie_to_parent,
            bufsize=1,
        )
        old = self._relays.get(log_name)
        relay = _Relay(proc, self.workdir / log_name, self.echo, append=append or self.resume)
        if old is not None:
            old.join()
            relay.lines.extendleft(reversed(old.lines))
        self._relays[log_name] = relay
        return proc

    def _server_log(self, k: int) -> str:
        return "server.log" if k == 0 else f"server-{k}.log"

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> None:
        """Starts the bridge, waits for its structure file (at most ``timeout`` s), starts the server(s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.events is None:
            self.events = EventLog(self.workdir, prefix=PROG)
        self._shm_before = shm_files()
        self.events.console = around_bars(self.events.console)  # above a live progress bar
        self.structure.unlink(missing_ok=True)
        self.stop_file.unlink(missing_ok=True)
        (self.workdir / PROGRESS_FILE).unlink(missing_ok=True)  # a resumed run's: stale
        self.bridge = self._spawn(self.bridge_command(), "lammps.out", env=mpi_env())
        while not self.structure.exists():
            if self.bridge.poll() is not None or (deadline is not None and time.monotonic() > deadline):
                return  # failed (or too slow) before listening: wait() reports it
            time.sleep(0.02)
        for k, cmd in enumerate(self.server_commands()):
            self.servers.append(self._spawn(cmd, self._server_log(k), env=self._server_env()))

    def _named(self):
        names = (
            ["mlip-server"]
            if len(self.servers) == 1
            else [f"mlip-server {k}" for k in range(len(self.servers))]
        )
        return [("LAMMPS", self.bridge)] + list(zip(names, self.servers))

    def wait(self, timeout: float | None = None) -> RunResult:
        """Waits for every side; stops the others when one ends first; always cleans up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        first, message = None, ""
        try:
            while True:
                self._supervise()
                self._stop_when_asked()
                self._show_progress()
                named = [(n, p) for n, p in self._named() if p is not None]
                ended = [(n, p) for n, p in named if p.poll() is not None]
                if first is None and ended:
                    first = ended[0][0]
                if len(ended) == len(named):
                    break
                if ended:
                    # one side ended: the others should notice (EXIT, closed socket) and follow.
                    # A server that failed before connecting leaves the bridge waiting: stop it soon.
                    name, proc = ended[0]
                    grace = self.grace
                    if proc is not self.bridge and proc.returncode != 0 and not self.connected():
                        grace = 0.0  # the bridge would wait for its connect time-out in vain
                    if self._gave_up:
                        grace, message = 0.0, self._gave_up  # the bridge waits for a server in vain
                    others = [(n, p) for n, p in named if p.poll() is None]
                    end = time.monotonic() + grace
                    while grace > 0 and time.monotonic() < end and any(p.poll() is None for _, p in others):
                        time.sleep(0.05)
                    late = [n for n, p in others if p.poll() is None]
                    if late and not self._gave_up:
                        message = f"{', '.join(late)} stopped " + (
                            f"{grace:g} s after {name} ended" if grace > 0 else f"when {name} failed"
                        )
                    if late:
                        processes.stop([p for _, p in others])
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    message = f"the run took longer than {timeout:g} s: stopped it"
                    processes.stop([self.bridge] + self.servers)
                    first = first or "timeout"
                    break
                time.sleep(0.05)
        finally:
            removed = self.stop()
            if self.progress is not None:
                self._show_progress(force=True)
                self.progress.close()
        result = self._result(first, message, removed)
        if self.progress is not None:
            result.seconds_per_step = self.progress.meter.seconds_per_step()
            result.dt_fs = self.progress.timestep_fs
        return result

    def _show_progress(self, force: bool = False) -> None:
        """Every half second: the step of the bridge's ``progress.json`` to the progress display."""
        now = time.monotonic()
        if not force and now - self._progress_read < 0.5:
            return
        self._progress_read = now
        try:
            data = json.loads((self.workdir / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            return  # none yet (or being replaced)
        if self.progress is None:
            self.progress = Progress(
                data.get("final_step"), timestep_fs=data.get("dt_fs"), interval=self.progress_every
            )
        self.progress.update(int(data["step"]))

    def _stop_when_asked(self) -> None:
        """A signal to the launcher or the walltime: the stop file tells the bridge to stop
        cleanly at the next step (restart file, exit 75)."""
        if self._stop_sent or self.bridge is None or self.bridge.poll() is not None:
            return
        why = None
        if self.stop_event is not None and self.stop_event.is_set():
            why = "a stop signal"
        elif self.deadline is not None and self.deadline.due():
            why = self.deadline.describe()
        if why:
            self._stop_sent = True
            self.stop_file.touch()
            self.events.record("stop", f"stopping at the next step ({why})", action="stop")

    # -- crashed servers --------------------------------------------------------------------
    def server_of_rank(self, rank: int) -> int:
        return rank % len(self.servers) if self.decomposition == "domain" else 0

    def _server_name(self, k: int) -> str:
        return "mlip-server" if len(self.servers) == 1 else f"mlip-server {k}"

    def _supervise(self) -> None:
        """Restarts a server that died mid-run (within the restart budget) on the same addresses;
        kills a server the bridge gave up on while its process still runs (hung); records every
        event. The bridge listens again and repeats the interrupted call by itself."""
        relay = self._relays.get("lammps.out")
        if relay is None or self.bridge is None or self.bridge.poll() is not None or self._gave_up:
            return
        now = time.monotonic()
        while relay.lost:
            step, rank = relay.lost.popleft()
            self._crash_step = step
            self._lost.setdefault(self.server_of_rank(rank), (step, rank, now))
        for k, (step, rank, seen) in list(self._lost.items()):
            proc = self.servers[k] if k < len(self.servers) else None
            if proc is None or proc.poll() is not None:
                continue  # died: a crash, handled below
            if self.budget.limit and now - seen > HANG_GRACE:
                name = self._server_name(k)
                self.events.record(
                    "hang",
                    f"{name} stopped answering rank {rank} at step {step} but still runs: stopping it",
                    process=name,
                    step=step,
                    action="kill",
                )
                processes.stop([proc])
        for k, proc in enumerate(self.servers):
            rc = proc.poll()
            if rc is None or rc == 0 or not relay.connected or proc.pid in self._reported:
                continue
            self._reported.add(proc.pid)  # one crash event per process (fail fast: the loop goes on)
            name, log = self._server_name(k), self._server_log(k)
            step = getattr(self, "_crash_step", None)
            err = self._relays[log].error()  # the server's own 'error:' line, if it wrote one
            self.events.record(
                "crash",
                f"{name} {describe_exit(rc)}"
                + (f" at step {step}" if step is not None else "")
                + (f": {err}" if err else "")
                + f" (see {self.workdir / log})",
                process=name,
                status=describe_exit(rc),
                step=step,
            )
            if not self.budget.limit:
                continue  # fail fast: the bridge halts LAMMPS by itself
            last_err, last_step = self._errors.get(k, (None, None))
            same_step = step is None or last_step is None or step == last_step
            again = same_error(err, last_err) and same_step
            self._errors[k] = (err, step)
            if rc == 2 or again:  # a bad model or argument, or the same error again: a restart cannot help
                why = (
                    "exit status 2: a bad model or argument" if rc == 2 else "the same error at the same step"
                )
                self._gave_up = f"{name} {describe_exit(rc)}; not restarted ({why})"
                self.events.record("failed", self._gave_up, process=name, status=describe_exit(rc))
                return
            if not self.budget.take():
                self._gave_up = (
                    f"{name} {describe_exit(rc)}; no restarts left (--max-server-restarts "
                    f"{self.budget.limit})"
                )
                self.events.record("failed", self._gave_up, process=name, status=describe_exit(rc))
                return
            self.servers[k] = self._spawn(self.server_commands()[k], log, env=self._server_env(), append=True)
            self._lost.pop(k, None)
            self._crashed[k] = time.monotonic()
            served = (
                self.rank_addresses()[k :: len(self.servers)]
                if self.decomposition == "domain"
                else [self.address]
            )
            self.events.record(
                "restart",
                f"restarted {name} on {' '.join(served)} (restart {self.budget.used} of {self.budget.limit})",
                process=name,
                action="restart",
            )
        while relay.regained:
            step, rank, waited = relay.regained.popleft()
            k = self.server_of_rank(rank)
            since = self._crashed.get(k)
            after = f"{time.monotonic() - since:.1f} s after the crash" if since else f"after {waited:.1f} s"
            self.events.record(
                "recovered",
                f"LAMMPS continued at step {step} (rank {rank} repeated its force call) {after}",
                step=step,
                process=self._server_name(k),
                seconds=round(time.monotonic() - since, 3) if since else waited,
            )
            self._crashed.pop(k, None)

    def connected(self) -> bool:
        """Whether the bridge has reported the server's connection."""
        relay = self._relays.get("lammps.out")
        return relay is not None and relay.connected

    def stop(self) -> list:
        """Kills whatever still runs, removes the socket files and leftover MPICH shm files."""
        processes.stop([self.bridge] + self.servers, self.sockets())
        self.stop_file.unlink(missing_ok=True)
        for relay in self._relays.values():
            relay.join()
        return remove_leftover_shm(self._shm_before)

    def _result(self, first, message: str, removed: list) -> RunResult:
        b = self.bridge.returncode if self.bridge else None
        codes = [p.returncode for p in self.servers]
        s = next((c for c in codes if c != 0), codes[0]) if codes else None
        bout = self._relays["lammps.out"].text if "lammps.out" in self._relays else ""
        souts = [self._relays[self._server_log(k)].text for k in range(len(self.servers))]
        sout = "".join(souts)
        if b == 0 and codes and all(c == 0 for c in codes) and first != "timeout":
            self.events.record("done", "the deck is complete", action="done")
            return RunResult(0, b, s, bout, sout, message, self.workdir, removed)
        if b == EXIT_STOPPED:
            stopped = re.findall(r"stopped at step \d+ of \S+", bout)
            text = stopped[-1] if stopped else "stopped"
            self.events.record("stopped", text, action="stopped")
            return RunResult(EXIT_STOPPED, b, s, bout, sout, text, self.workdir, removed)
        # the side that failed first is the cause; the others only followed
        sides = [("mlip-lammps", b, bout, "lammps.out")] + [
            ("mlip-server", c, out, self._server_log(k)) for k, (c, out) in enumerate(zip(codes, souts))
        ]
        if (first or "").startswith("mlip-server") or b == 0:
            sides = sides[1:] + sides[:1]
        # when the bridge only reports losing a server, that server's end is the cause (both may
        # have ended between two polls, so which one ended first cannot tell): its own error line
        lost = error_line(bout) or ""
        if "force server" in lost and codes:
            rank = re.search(r"rank (\d+)", lost)
            k = self.server_of_rank(int(rank[1])) if rank else 0
            if k < len(codes) and codes[k] not in (0, None):
                sides.sort(key=lambda side: side[3] != self._server_log(k))
        code = 0
        for name, rc, out, log in sides:
            if rc not in (0, None):
                code = rc if rc > 0 else 1
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                cause = (
                    f"{name}: {error_line(out)}"
                    if error_line(out)
                    else f"{name} {how}: see {self.workdir / log}"
                )
                message = f"{cause}; {message}" if message else cause
                break
        return RunResult(code or 1, b, s, bout, sout, message, self.workdir, removed)


def resolved_model(model):
    """A model path (or a committee's list of paths) made absolute."""
    if isinstance(model, (list, tuple)):
        return [str(Path(m).resolve()) for m in model]
    return str(Path(model).resolve())


def model_args(model) -> list:
    """``mlip-server`` arguments for a model path, or for a list of paths (a committee)."""
    if isinstance(model, (list, tuple)):
        return ["--committee", *map(str, model)]
    return ["--model", str(model)]


def domain_server_commands(model, addresses, n_servers, device, extra=()) -> list[list]:
    """``mlip-server`` commands sharing the ranks listening on ``addresses``: server k serves
    addresses k, k + n, k + 2n, ...; with ``device`` ``cuda`` and several servers, server k runs
    on ``cuda:k`` (one per GPU)."""
    exe = Path(sys.executable).parent / "mlip-server"
    commands = []
    for k in range(n_servers):
        dev = f"cuda:{k}" if device == "cuda" and n_servers > 1 else device
        cmd = [exe, *model_args(model), "--device", dev]
        for a in addresses[k::n_servers]:
            cmd += ["--address", a]
        commands.append(cmd + list(extra))
    return commands


def _server_env(device: str, ranks: int, servers: int) -> dict | None:
    """``PASSIVE`` OpenMP waits (:func:`mlip_server.machine.shared_cores_env`) for CPU servers next to
    several MPI ranks or several servers; None (this process's environment) otherwise."""
    return shared_cores_env(device, ranks > 1 or servers > 1)


def node_addresses(address: str, ranks_per_node: int, node: int) -> list[str]:
    """Addresses of the ranks on node ``node`` of a SLURM job with block distribution (ranks
    node·K … node·K + K − 1), each listening on ``ADDRESS-RANK`` / port ``PORT + RANK``."""
    base = Address.parse(address, allow_spec=False)
    first = node * ranks_per_node
    return [str(base.for_rank(r)) for r in range(first, first + ranks_per_node)]


def serve_node(model, address, ranks_per_node, node, n_servers, device, extra=(), echo=True) -> int:
    """Runs the force servers of one node (SLURM ``--side servers``) until they end; if one fails
    the others are stopped. Returns the worst exit status."""
    commands = domain_server_commands(
        model, node_addresses(address, ranks_per_node, node), n_servers, device, extra
    )
    procs = [
        subprocess.Popen(
            [str(c) for c in cmd],
            start_new_session=True,
            preexec_fn=processes.tie_to_parent,
            env=_server_env(device, ranks_per_node, n_servers),
        )
        for cmd in commands
    ]
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                processes.stop(procs)
                break
            time.sleep(0.1)
    finally:
        processes.stop(procs)
    codes = [p.returncode for p in procs]
    return next((c if c > 0 else 1 for c in codes if c != 0), 0)


def run(deck, model, elements, *, timeout=None, **kwargs) -> RunResult:
    """Starts a :class:`LammpsRun`, waits for it, cleans up (also on Ctrl-C)."""
    job = LammpsRun(deck, model, elements, **kwargs)
    t0 = time.monotonic()
    try:
        job.start(timeout)
        return job.wait(None if timeout is None else max(0.0, timeout - (time.monotonic() - t0)))
    except BaseException:
        job.stop()
        raise
