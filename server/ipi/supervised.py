"""The processes of a run, supervised: i-PI (:class:`SupervisedIpi`, restarted in place from the
latest checkpoint when a signal it did not ask for ends it) and the mlip-server(s)
(:class:`SupervisedServer`, restarted on the same addresses when one dies or hangs;
:func:`start_servers` splits the connections over ``--servers``). Used by
:mod:`mlip_server.ipi.launcher`.
"""

from __future__ import annotations

from pathlib import Path

from .. import processes
from ..core.errors import InputError
from ..machine import shared_cores_env
from ..supervision import (
    EventLog,
    RestartBudget,
    StallWatch,
    describe_exit,
)
from .experiments import RunOptions
from .launch import Launch, continue_in_place
from .run_folder import (
    checkpoints,
    output_prefix,
    trim_outputs,
)

__all__ = ["SupervisedIpi", "SupervisedServer", "start_servers"]


class SupervisedIpi:
    """The run's i-PI, restarted in place when a signal it did not ask for ends it (the OOM killer's
    SIGKILL, a crash): from the run's latest readable checkpoint, the outputs cut back to it (every
    step once), on the same sockets, up to ``--max-ipi-restarts`` times per launch; the servers
    (whose connections ended with it) are started again with it."""

    def __init__(self, launch: Launch, opts: RunOptions, env, events: EventLog):
        self.launch, self.opts, self.env, self.events = launch, opts, env, events
        self.budget = RestartBudget(opts.max_ipi_restarts, "--max-ipi-restarts")
        self.proc = None
        self.starts = 0
        self.spent = None
        """What ended the run when the budget was spent (for the closing line)."""

    def start(self) -> None:
        log = "ipi.log" if self.starts == 0 else f"ipi.restart-{self.starts}.log"
        self.proc = processes.start_ipi(self.launch.rendered.xml_name, self.launch.folder, log, self.env)
        self.starts += 1
        for s in self.launch.rendered.sockets:
            processes.wait_for_socket(s, self.proc, timeout=120)

    def poll(self):
        return self.proc.poll()

    def send_signal(self, signum) -> None:
        self.proc.send_signal(signum)

    def recover(self, servers: list, step) -> bool:
        """After i-PI ended: True when it was killed by a signal and has been restarted (with the
        servers); False when it ended on its own (done, stopped, an error) or no restart is left."""
        code = self.proc.returncode
        if code is None or code >= 0:
            return False
        status = describe_exit(code)
        what = f"i-PI (pid {self.proc.pid}) {status} at step {step if step is not None else '?'}"
        processes.stop([server.proc for server in servers])  # their connections ended with i-PI
        processes.stop([], self.launch.rendered.sockets)  # a killed i-PI leaves its sockets
        processes.remove_ipi_shm(self.proc.pid)
        if not self.budget.take():
            spent = f"no restarts left ({self.budget.flag} {self.budget.limit})"
            self.spent = f"{what}; {spent}"
            self.events.record(
                "crash", f"{what}: {spent}", process="i-PI", status=status, step=step, action="give up"
            )
            return False
        origin = self._back_to_checkpoint()
        self.events.record(
            "crash",
            f"{what}: restarting it from {origin} ({self.budget.used} of {self.budget.limit})",
            process="i-PI",
            status=status,
            step=step,
            action="restart",
        )
        self.start()
        for server in servers:
            server.start()
        return True

    def _back_to_checkpoint(self) -> str:
        """Prepares the restart from the latest readable checkpoint (before the first one: from the
        start, the outputs removed); returns where from, in words."""
        launch = self.launch
        good, bad = checkpoints(launch.folder)
        passed = f"; {', '.join(p.name for p in bad)} unreadable, passed over" if bad else ""
        if good:
            checkpoint = max(good, key=lambda c: c.step)
            launch.rendered, cut = continue_in_place(
                launch.name, self.opts, launch.folder, launch.run_id, checkpoint
            )
            origin = f"its checkpoint of step {checkpoint.step} ({checkpoint.path.name})"
        else:  # killed before its first checkpoint: the fresh input again, on empty outputs
            cut = trim_outputs(launch.folder, -1, output_prefix(launch.rendered.xml))
            for path in bad:
                path.unlink()
            origin = "the start (no checkpoint yet)"
        rows = sum(cut.values())
        return origin + passed + (f", {rows} output records past it cut" if rows else "")


class SupervisedServer:
    """The run's mlip-server, restarted on the same addresses when it dies or hangs."""

    def __init__(
        self,
        folder: Path,
        model: Path,
        spec: dict,
        opts: RunOptions,
        env,
        events: EventLog,
        name: str = "server",
        budget: RestartBudget | None = None,
    ):
        self.folder, self.model, self.spec, self.name = folder, model, spec, name
        self.opts, self.env, self.events = opts, env, events
        self.heartbeat = (folder / f"{name}.heartbeat").resolve()
        self.watch = StallWatch(self.heartbeat, opts.stall_timeout)
        self.budget = budget or RestartBudget(opts.max_server_restarts)
        self.proc = None
        self.starts = 0

    def start(self) -> None:
        log = f"{self.name}.log" if self.starts == 0 else f"{self.name}.restart-{self.starts}.log"
        self.proc = processes.start_server(
            self.model,
            self.spec["structure"],
            self.spec["addresses"],
            self.folder,
            log=log,
            extra=self.spec["server_args"] + ["--heartbeat", str(self.heartbeat)],
            env=self.env,
        )
        self.log = self.folder / log
        self.starts += 1
        self.watch.reset()

    def fault(self) -> tuple[str, str] | None:
        """(kind, what) when the server died abnormally or hung; None while it is well (or exited 0)."""
        code = self.proc.poll()
        if code is not None:
            if code == 0:
                return None
            return "crash", f"{self.name} (pid {self.proc.pid}) {describe_exit(code)}" + self._error_line(
                code
            )
        quiet = self.watch.stalled()
        if quiet is not None:
            return "hang", f"{self.name} (pid {self.proc.pid}) hung: no evaluation for {quiet:.0f} s"
        return None

    def _error_line(self, code: int) -> str:
        if code < 0:
            return ""  # a signal: the log's last line is unrelated
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        errors = [line for line in lines if "error:" in line]
        return f": {errors[-1].strip()}" if errors else f" (see {self.log})"

    def recover(self, kind: str, what: str, step) -> bool:
        """Records the fault; restarts the server when allowed. False: the run cannot go on."""
        code = self.proc.poll()
        if kind == "hang":
            processes.stop([self.proc], grace=0)
        fatal = code == 2  # bad model or arguments: a restart would fail the same way
        allowed = not fatal and self.budget.take()
        action = "restart" if allowed else "give up"
        self.events.record(
            kind,
            f"{what} at step {step if step is not None else '?'}: "
            + (
                f"restarting it on the same addresses ({self.budget.used} of {self.budget.limit})"
                if allowed
                else (
                    "not restarted (bad input)"
                    if fatal
                    else f"no restarts left (--max-server-restarts {self.budget.limit})"
                )
            ),
            process=self.name,
            status=describe_exit(self.proc.poll()),
            step=step,
            action=action,
        )
        if allowed:
            self.start()
        return allowed


def start_servers(launch: Launch, spec: dict, opts: RunOptions, env, events: EventLog) -> list:
    """The run's ``opts.servers`` supervised servers: connection k on server k mod S (a PIMD run's
    beads split evenly), server k on ``cuda:k`` when the device is ``cuda``; one restart budget."""
    count = opts.servers
    if count == 1:
        return [SupervisedServer(launch.folder, launch.model, spec, opts, env, events)]
    addresses = spec["addresses"]
    if count > len(addresses):
        raise InputError(f"--servers {count}: the run has only {len(addresses)} connection(s)")
    budget = RestartBudget(opts.max_server_restarts)
    env = shared_cores_env(opts.device, count > 1, env)  # CPU servers sharing cores: no spinning
    servers = []
    for k in range(count):
        args = list(spec["server_args"])
        if opts.device == "cuda":
            args[args.index("--device") + 1] = f"cuda:{k}"
        own = {**spec, "addresses": addresses[k::count], "server_args": args}
        servers.append(
            SupervisedServer(launch.folder, launch.model, own, opts, env, events, f"server-{k}", budget)
        )
    return servers
