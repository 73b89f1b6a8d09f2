"""``mlip-run``: one command (and one function) per i-PI experiment, correct by construction.

    mlip-run water-nvt --model models/water-pet.pt --steps 2000
    mlip-run water-nvt-mts --average 2i --molecules 128
    mlip-run water-pimd --beads 8
    mlip-run ice-geop --structure ice.xyz --average 2i
    mlip-run replay --trajectory runs/water-nvt-.../sim.pos_0.extxyz --specs none,i,2,2i,3i
    mlip-run --resume runs/water-nvt-20261127-101500-ab12cd34              # continue in place
    mlip-run water-pimd --beads 32 --walltime 23:50:00 --out RUN            # exit 75 before the end
    mlip-run water-pimd --transport inet --host node1 --port 31415 --side ipi --out RUN   # i-PI here
    mlip-run water-pimd --side server --out RUN --device cuda                              # server there

From Python, :func:`run_experiment` takes the same options as keywords and :func:`run_many`
runs several experiments at once. The launcher renders the experiment
(:mod:`mlip_server.ipi.experiments`) into a fresh run folder, starts i-PI, waits until its sockets
exist, starts one mlip-server for all endpoints, prints progress, and on exit, error or Ctrl-C
stops everything it started and removes its sockets. Socket names are unique per launch
(``mlip-<PID>-<random>-<endpoint>``): concurrent runs never collide.

Production (docs/topics/production.md): the server is supervised — one that dies or hangs (no
evaluation for ``--stall-timeout`` s) is restarted on the same sockets, up to
``--max-server-restarts`` times, and i-PI re-sends the request it lost. SIGTERM, SIGINT, SIGUSR1,
SIGHUP and the walltime (``--walltime``, or the SLURM job's end time) make i-PI stop cleanly and
write its RESTART; the launcher then exits with :data:`~mlip_server.supervision.EXIT_STOPPED` (75).
``--resume RUN`` continues RUN in place from its latest readable checkpoint, after cutting the
output rows written past it (a hard stop), so that every step is in RUN once. Every event goes to
``RUN/events.jsonl`` and one console line.

Exit status: 0 done (also ``--resume`` of a finished run), 75 stopped cleanly (resume it),
1 failed, 2 bad input, 130 interrupted twice (hard stop).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from .. import processes
from ..cli_help import HelpFormatter
from ..core.errors import InputError, MLIPError
from ..loading import COMPILE_VARIABLE
from ..progress import Progress, around_bars, closing_text
from ..supervision import (
    EXIT_STOPPED,
    Deadline,
    EventLog,
    RestartBudget,
    StopSignals,
    atomic_write,
    describe_exit,
)
from .experiments import RunOptions, check_options, experiments, load_experiment, render
from .launch import (
    Launch,
    RunResult,
    check_direct_virial,
    model_files,
    prepare_fresh,
    prepare_resume,
    run_env,
)
from .run_folder import (
    last_step,
    latest_checkpoint,
    output_files,
    output_prefix,
)
from .summary import headline, next_command, timestep_fs
from .supervised import SupervisedIpi, SupervisedServer, start_servers

__all__ = ["run_experiment", "run_many", "RunResult", "main", "build_parser"]

SERVER_FILE = "server.json"
"""What the ``ipi`` side leaves for the ``server`` side in the run folder."""


def run_experiment(
    name: str | None, *, stop: threading.Event | None = None, log=None, **options
) -> RunResult:
    """Runs experiment ``name`` of ``ipi_inputs/`` with i-PI and a supervised mlip-server.

    Parameters
    ----------
    name : str or None
        Experiment folder name; None only with ``resume`` (the run folder knows it).
    stop : threading.Event, optional
        Set it to stop the run cleanly (as SIGTERM does): i-PI writes its RESTART, the result
        has code 75 and ``resume`` continues it.
    log : file, optional
        Where progress and event lines go (default stdout).
    **options
        Fields of :class:`~mlip_server.ipi.experiments.RunOptions` (``model``, ``steps``,
        ``average``, ``molecules``, ``temperature`` K, ``timestep`` fs, ``resume``,
        ``walltime``, ``max_server_restarts``, ``stall_timeout`` s, ``template={...}``, ...).

    Returns
    -------
    RunResult
        Code 0 done, 75 stopped cleanly (resume it), 1 failed, 130 interrupted hard.

    Raises
    ------
    MLIPError
        Bad options (unknown experiment, missing model or structure, a folder that is not a
        run, a bad walltime), before anything starts.
    """
    known = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(
            f"run_experiment: unknown option {unknown[0]!r} (options: {', '.join(sorted(known))})"
        )
    opts = RunOptions(**options)
    out = around_bars(log or sys.stdout)  # a live progress bar never splits a printed line
    t0 = time.monotonic()
    if opts.side not in ("both", "ipi", "server"):
        raise InputError(f"unknown side {opts.side!r}: use both, ipi or server")
    if opts.side == "server":
        if name is None:
            raise InputError("--side server needs the experiment name (as the ipi side was given)")
        load_experiment(name)
        return _serve_only(name, opts, out, stop, t0)
    if opts.transport == "ffdirect" and opts.side != "both":
        raise InputError(
            "--transport ffdirect runs the model inside i-PI: there is no server side to split off"
        )
    deadline = Deadline.from_options(opts.walltime, opts.walltime_margin)  # refuses a bad walltime
    RestartBudget(opts.max_server_restarts)  # refuses a negative count before anything starts
    RestartBudget(opts.max_ipi_restarts, "--max-ipi-restarts")
    run_id = processes.unique_name("mlip")
    if opts.resume:
        launch = prepare_resume(name, opts, run_id, out)
        if isinstance(launch, RunResult):
            return launch
    else:
        if name is None:
            raise InputError("give the experiment to run (or --resume RUN to continue one)")
        launch = prepare_fresh(name, opts, run_id, out)
    return _run(launch, opts, out, stop, deadline, t0)


def _run(launch: Launch, opts: RunOptions, out, stop, deadline, t0) -> RunResult:
    folder, rendered = launch.folder, launch.rendered
    spec = {
        "addresses": rendered.addresses,
        "server_args": launch.server_args,
        "structure": rendered.element_file,
    }
    atomic_write(folder / SERVER_FILE, json.dumps(spec))
    print(
        "  endpoints: "
        + ", ".join(f"{e} ({spec})" for e, spec in rendered.endpoints.items())
        + f"; {len(rendered.addresses)} connection(s)"
        + (f"; {deadline.describe()}" if deadline else ""),
        file=out,
        flush=True,
    )
    env = run_env(opts)
    events = EventLog(folder, out)
    ipi = SupervisedIpi(launch, opts, env, events)
    servers = []
    try:
        with StopSignals(stop) as signals:
            ipi.start()
            if opts.side == "both" and rendered.addresses:
                servers = start_servers(launch, spec, opts, env, events)
                for server in servers:
                    server.start()
            outcome = _supervise(ipi, servers, launch, opts, out, events, signals, deadline)
    except KeyboardInterrupt:
        events.record("interrupted", "interrupted twice: stopping i-PI and the server now", action="kill")
        return RunResult(130, folder, "interrupted", time.monotonic() - t0)
    finally:
        processes.stop([ipi.proc] + [server.proc for server in servers], launch.rendered.sockets)
        if ipi.proc is not None:
            processes.remove_ipi_shm(ipi.proc.pid)
    return _verdict(outcome, launch, events, out, time.monotonic() - t0)


def _supervise(ipi, servers: list, launch: Launch, opts, out, events, signals, deadline) -> dict:
    """Follows i-PI and the server until i-PI ends: restarts a failed server, asks i-PI to stop
    cleanly on a signal or at the deadline. Returns what happened (``ipi`` exit, ``why``)."""
    folder = launch.folder
    prefix = output_prefix(launch.rendered.xml)
    stopping = None
    failure = None
    last = time.monotonic()
    start = last_step(folder, prefix)  # None: a fresh run; else the step a resumed run goes on from
    progress = Progress(
        launch.total_steps, timestep_fs=timestep_fs(launch.rendered.xml), out=out, interval=opts.progress
    )
    while True:
        code = ipi.poll()
        if code is not None:
            if stopping is None and ipi.recover(servers, last_step(folder, prefix)):
                continue  # killed from outside: restarted from its latest checkpoint
            break
        if stopping is None:
            if signals.event.is_set():
                stopping = f"{signals.signal_name or 'stop request'} received"
            elif deadline is not None and deadline.due():
                stopping = f"walltime reached ({deadline.describe()})"
            if stopping:
                events.record(
                    "stop",
                    f"{stopping}: asking i-PI to stop cleanly",
                    step=last_step(folder, prefix),
                    action="soft-exit",
                )
                ipi.send_signal(signal.SIGTERM)
        for server in servers if stopping is None else ():
            fault = server.fault()
            if fault is not None and ipi.poll() is not None:
                break  # i-PI ended first and the server's connections with it: i-PI's turn above
            if fault is not None and not server.recover(*fault, last_step(folder, prefix)):
                failure = fault[1]
                stopping = "failure"
                ipi.send_signal(signal.SIGTERM)  # i-PI saves a RESTART: nothing is lost
                break
        if time.monotonic() - last >= 0.5:  # the last step i-PI wrote: a live bar or a line per --progress s
            last = time.monotonic()
            progress.update(last_step(folder, prefix))
        time.sleep(0.2)
    progress.update(last_step(folder, prefix))
    progress.close()
    for server in servers:
        try:  # a server exits on i-PI's EXIT
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            processes.stop([server.proc])
    return {
        "ipi": code,
        "ipi_spent": ipi.spent,
        "failure": failure,
        "stopping": stopping,
        "start_step": start or 0,
        "seconds_per_step": progress.meter.seconds_per_step(),
    }


def _verdict(outcome: dict, launch: Launch, events: EventLog, out, wall: float) -> RunResult:
    folder = launch.folder
    done = _latest_checkpoint_or_none(folder)
    step = done.step if done else None
    total = launch.total_steps
    where = f"step {max(step, 0)} of {total}" if step is not None else f"an unknown step of {total}"
    if outcome["failure"] is not None:
        message = f"failed: {outcome['failure']}; stopped at {where}: fix it, then mlip-run --resume {folder}"
        events.record("failed", message, step=step, action="stop")
        return RunResult(1, folder, message, wall)
    if outcome.get("ipi_spent"):
        message = (
            f"failed: {outcome['ipi_spent']}; stopped at {where}: continue with `mlip-run --resume {folder}`"
        )
        events.record("failed", message, step=step, process="i-PI", status=describe_exit(outcome["ipi"]))
        return RunResult(1, folder, message, wall)
    if outcome["ipi"] != 0:
        message = f"failed: i-PI {describe_exit(outcome['ipi'])}: see {folder}/ipi.log"
        events.record("failed", message, step=step, process="i-PI", status=describe_exit(outcome["ipi"]))
        return RunResult(1, folder, message, wall)
    if step is None or step < total:
        message = f"stopped at {where}: continue with `mlip-run --resume {folder}`"
        events.record("stopped", message, step=step, action="exit 75")
        return RunResult(EXIT_STOPPED, folder, message, wall)
    prefix = output_prefix(launch.rendered.xml)
    outputs = ", ".join(sorted(p.name for p in output_files(folder, prefix)))
    start = outcome.get("start_step", 0)
    numbers = closing_text(
        step - start, wall, outcome.get("seconds_per_step"), timestep_fs(launch.rendered.xml)
    ) + (f" from step {start}" if start else "")
    physics = headline(folder, prefix)
    command = next_command(folder, prefix, launch.name)
    events.record(
        "done",
        f"done: {numbers}"
        + (f"; {physics}" if physics else "")
        + f"; outputs in {folder}: {outputs}"
        + (f"; next: {command}" if command else ""),
        step=step,
    )
    return RunResult(0, folder, "", wall)


def _latest_checkpoint_or_none(folder: Path):
    try:
        return latest_checkpoint(folder)[0]
    except InputError:
        return None


def _serve_only(name, opts: RunOptions, out, stop, t0) -> RunResult:
    """The ``server`` side: waits for the ``ipi`` side's run folder, then serves it (supervised:
    a server that dies or hangs is restarted and reconnects)."""
    folder = Path(opts.out or opts.resume or "")
    if not (opts.out or opts.resume):
        raise InputError("--side server needs --out: the run folder that the ipi side writes")
    spec_file = folder / SERVER_FILE
    deadline = time.monotonic() + 600
    while not spec_file.exists():
        if time.monotonic() > deadline:
            raise InputError(
                f"no {spec_file} after 600 s: start the ipi side first (--side ipi --out {folder})"
            )
        time.sleep(0.5)
    spec = json.loads(spec_file.read_text())
    model = model_files(opts)
    # this side's own --device and --dtype replace the ipi side's
    server_args, given = [], iter(spec["server_args"])
    for arg in given:
        if arg in ("--device", "--dtype"):
            next(given, None)
        else:
            server_args.append(arg)
    server_args += ["--device", opts.device or "cpu"] + (["--dtype", opts.dtype] if opts.dtype else [])
    spec["server_args"] = server_args + ["--connect-timeout", "600"]
    events = EventLog(folder, out)
    events.path = folder / "events-server-side.jsonl"  # the ipi side writes events.jsonl
    servers = SupervisedServer(folder, model, spec, opts, run_env(opts), events)
    try:
        with StopSignals(stop) as signals:
            servers.start()
            while True:
                if signals.event.is_set():
                    events.record(
                        "stop", f"{signals.signal_name or 'stop request'} received: stopping the server"
                    )
                    processes.stop([servers.proc])
                    return RunResult(EXIT_STOPPED, folder, "stopped", time.monotonic() - t0)
                code = servers.proc.poll()
                if code == 0:
                    break
                fault = servers.fault()
                if fault is not None and not servers.recover(*fault, None):
                    return RunResult(1, folder, f"failed: {fault[1]}", time.monotonic() - t0)
                time.sleep(0.2)
    except KeyboardInterrupt:
        return RunResult(130, folder, "interrupted", time.monotonic() - t0)
    finally:
        processes.stop([servers.proc])
    events.record("done", "done: server side done (i-PI sent EXIT)")
    return RunResult(0, folder, "", time.monotonic() - t0)


def run_many(jobs: dict, deadline: float | None = None, logs: Path | None = None) -> dict:
    """Runs several experiments at once; returns name → :class:`RunResult`.

    Parameters
    ----------
    jobs : dict
        Name → keyword dict of :func:`run_experiment`, with the experiment under ``"experiment"``.
    deadline : float, optional
        Seconds after which the runs still going are stopped cleanly (outputs and RESTART kept, code 75).
    logs : Path, optional
        Folder for one ``NAME.log`` of each run's progress (default: no logs).

    A Ctrl-C stops every run and is raised again once all have stopped.
    """
    stop = threading.Event()
    results, threads, files = {}, [], []

    def one(name, job):
        job = dict(job)
        experiment = job.pop("experiment")
        handle = open(logs / f"{name}.log", "w") if logs else open(os.devnull, "w")
        files.append(handle)
        try:
            job.setdefault("progress", 10.0 if logs else 0)  # a log gets a progress line every 10 s
            results[name] = run_experiment(experiment, stop=stop, log=handle, **job)
        except MLIPError as err:
            print(f"mlip-run: error: {err}", file=handle, flush=True)
            results[name] = RunResult(2, Path(job.get("out", ".")), str(err))

    if logs:
        Path(logs).mkdir(parents=True, exist_ok=True)
    end = None if deadline is None else time.monotonic() + deadline
    try:
        for name, job in jobs.items():
            threads.append(threading.Thread(target=one, args=(name, job), daemon=True))
            threads[-1].start()
        while any(t.is_alive() for t in threads):
            if end is not None and time.monotonic() > end:
                stop.set()
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
        raise
    finally:
        for handle in files:
            handle.close()
    return results


def build_parser():
    p = argparse.ArgumentParser(
        prog="mlip-run",
        formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog=_experiments_line(),
    )
    p.add_argument(
        "experiment", nargs="?", help="a shipped experiment (mlip-run --list; not needed with --resume)"
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="print the shipped experiments, LAMMPS decks, SLURM templates and models, then exit",
    )
    p.add_argument(
        "--copy-template",
        metavar="SHIPPED",
        help="copy a shipped file or folder (as --list names it, e.g. hpc/ipi-cpu-server-gpu.slurm or "
        "ipi_inputs/water-nvt) into --to, to edit the copy; then exit",
    )
    p.add_argument("--to", default=".", metavar="DIR", help="where --copy-template copies to (default: .)")
    p.add_argument(
        "--check",
        action="store_true",
        help="check a start as it would be checked (the experiment, the model file, options the "
        "experiment does not use, its --structure or --trajectory) without starting or writing "
        "anything: one line, exit 0, or the error line, exit 2 (what hpc/ templates run first)",
    )
    p.add_argument("--model", help="TorchScript model (default: the shipped models/water-pet.pt)")
    p.add_argument(
        "--committee",
        nargs="+",
        metavar="MODEL",
        default=None,
        help="instead of --model: two or more models served as a committee (mlip-server --committee: "
        "the mean served, the spreads in i-PI's extras) (default: one model)",
    )
    p.add_argument("--structure", help="starting structure (ASE-readable, with a cell)")
    p.add_argument("--trajectory", help="trajectory to re-evaluate (replay)")
    p.add_argument(
        "--molecules", type=int, help="water molecules of the generated box (default: the experiment's)"
    )
    p.add_argument("--density", type=float, default=0.997, help="g/cm³ of the generated box")
    p.add_argument(
        "--steps",
        type=int,
        help="(outer) steps in all (default: the experiment's; with --resume: a new total)",
    )
    p.add_argument("--temperature", type=float, help="K (default: the experiment's)")
    p.add_argument("--pressure", type=float, help="bar (water-npt; default: the experiment's)")
    p.add_argument(
        "--timestep", type=float, help="fs, the outer step of MTS experiments (default: the experiment's)"
    )
    p.add_argument(
        "--nmts", type=int, help="inner steps per outer step (MTS experiments; default: the experiment's)"
    )
    p.add_argument("--beads", type=int, help="path-integral beads (water-pimd*; default: the experiment's)")
    p.add_argument("--stride", type=int, help="output stride, steps (default: the experiment's)")
    p.add_argument(
        "--average",
        default="none",
        help="averaging spec of the averaged endpoint (default: the experiment's own, e.g. none for "
        "water-nvt, 2i for the MTS experiments, which none keeps; 0 switches averaging off there)",
    )
    p.add_argument(
        "--forces",
        default="conservative",
        choices=["conservative", "direct"],
        help="experiments of one endpoint: the gradient of the energy, or the model's direct forces "
        "(no backward pass; models with a direct head); the *-nc-* experiments mix both themselves",
    )
    p.add_argument("--specs", help="replay: comma-separated averaging specs")
    p.add_argument(
        "--seed", type=int, default=12345, help="seed of i-PI's thermostat/velocities and of the box"
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cpu; with --resume the run's)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float64"],
        help="server precision (default: the model's own)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="OpenMP threads of i-PI and the server (default: inherited)"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="serve the model as an AOTInductor package compiled on first use (mlip-server --compile)",
    )
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="any other template value")
    g = p.add_argument_group("production runs: crashes, hangs, walltime, resume")
    g.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN in place from its latest checkpoint to its total steps (--steps: a new total)",
    )
    g.add_argument(
        "--walltime",
        metavar="HH:MM:SS",
        help="time the run may take; it stops cleanly before (default: the SLURM job's end time, if any)",
    )
    g.add_argument(
        "--walltime-margin",
        type=float,
        metavar="S",
        help="seconds before the walltime to stop (default: 10%%, 20-300 s)",
    )
    g.add_argument(
        "--max-server-restarts",
        type=int,
        default=3,
        metavar="N",
        help="restarts of a server that died or hung, per launch (0: fail at once; default 3)",
    )
    g.add_argument(
        "--max-ipi-restarts",
        type=int,
        default=2,
        metavar="N",
        help="restarts of i-PI killed by a signal (the OOM killer), per launch, each from the run's latest "
        "checkpoint in place (0: fail at once; default 2)",
    )
    g.add_argument(
        "--stall-timeout",
        type=float,
        metavar="S",
        help="seconds without an evaluation after which the server counts as hung and is restarted, also "
        "i-PI's socket <timeout> (default: 10x the slowest gap seen, at least 120 s; a new server "
        "has 600 s for its first)",
    )
    p.add_argument("--out", help="run folder (default: ./runs/EXPERIMENT-DATE-ID under the current folder)")
    p.add_argument(
        "--progress",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between the timestamped progress lines of a log (step N/M, ps/day, s/step, time "
        "left); a terminal shows a live bar instead (0: neither)",
    )
    p.add_argument(
        "--transport",
        default="unix",
        choices=["unix", "shm", "inet", "ffdirect"],
        help="sockets between i-PI and the server: unix; shm (unix, arrays in shared memory); "
        "inet (--host, --port, one port per endpoint); ffdirect (the model inside i-PI, no server)",
    )
    p.add_argument("--host", default="127.0.0.1", help="inet: the host i-PI listens on")
    p.add_argument("--latency", type=float, default=1e-4, help="i-PI's socket polling interval, s")
    p.add_argument("--port", type=int, default=None, help="inet: the first port")
    p.add_argument(
        "--side",
        default="both",
        choices=["both", "ipi", "server"],
        help="start both, only i-PI, or only the server (for the run folder --out of an ipi side)",
    )
    p.add_argument(
        "--servers",
        type=int,
        default=1,
        metavar="S",
        help="force servers (one per GPU: server k on cuda:k with --device cuda); connection k (a bead) "
        "goes to server k mod S",
    )
    return p


def _experiments_line() -> str:
    """The help's closing line: the shipped experiments (a pointer to --list when the shipped files
    cannot be read, so that --help never fails)."""
    try:
        return "experiments: " + ", ".join(experiments())
    except MLIPError:
        return "experiments: see mlip-run --list"


def _list_shipped() -> int:
    """``mlip-run --list``: the shipped experiments (with their descriptions) and files."""
    from ..paths import list_shipped

    print("experiments (mlip-run NAME):")
    for name in experiments():
        description = load_experiment(name)[0].get("description", "")
        print(f"  {name:22s} {description.split('. ')[0].rstrip('.')}")
    print("shipped files (mlip-run --copy-template NAME copies one out):")
    for name in list_shipped():
        print(f"  {name}")
    return 0


def check_start(name: str | None, **options) -> str:
    """``mlip-run EXPERIMENT ... --check``: the checks a start makes before anything runs (the
    experiment, the model file, options the experiment would not use, its structure or trajectory
    file) with the experiment rendered into a folder that is removed again; nothing starts.

    Returns
    -------
    str
        One line: what would run.

    Raises
    ------
    MLIPError
        The first problem, in one line (as the start would raise it).
    """
    import tempfile

    opts = RunOptions(**options)
    if opts.resume:
        raise InputError("--check checks a start: leave out --resume")
    if name is None:
        raise InputError("give the experiment to check (mlip-run --list)")
    meta, template = load_experiment(name)
    Deadline.from_options(opts.walltime, opts.walltime_margin)
    RestartBudget(opts.max_server_restarts)
    if opts.steps is not None and opts.steps < 1:
        raise InputError(f"--steps {opts.steps}: give 1 or more")
    model = model_files(opts, check=True)
    if opts.out and Path(opts.out).is_dir() and any(Path(opts.out).iterdir()):
        raise InputError(f"run folder {opts.out} exists and is not empty: choose another")
    check_options(name, meta, template, opts)
    if isinstance(model, list):
        opts.committee = [str(m) for m in model]
    else:
        opts.model = str(model)
    with tempfile.TemporaryDirectory(prefix="mlip-check-") as tmp:
        rendered = render(name, opts, Path(tmp), "mlip-check")
        if "--require-virial" in rendered.server_args:
            check_direct_virial(name, model, opts)
    total = re.search(r"<total_steps>\s*(\d+)", rendered.xml)
    return f"{name} checked: {total[1] if total else '?'} steps, model {model}; nothing started"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list or args.copy_template:
        from ..paths import copy_shipped

        try:
            if args.list:
                return _list_shipped()
            print(f"mlip-run: copied {args.copy_template} to {copy_shipped(args.copy_template, args.to)}")
            return 0
        except MLIPError as err:
            print(f"mlip-run: error: {err}", file=sys.stderr)
            return 2
    template = {}
    for item in args.set or []:
        k, sep, v = item.partition("=")
        if not sep:
            print(f"mlip-run: error: --set {item!r}: use --set NAME=VALUE", file=sys.stderr)
            return 2
        template[k] = v
    skip = ("experiment", "set", "compile", "list", "copy_template", "to", "check")
    options = {k: v for k, v in vars(args).items() if k not in skip}
    if args.check:
        try:
            print(f"mlip-run: {check_start(args.experiment, template=template, **options)}")
            return 0
        except MLIPError as err:
            print(f"mlip-run: error: {err}", file=sys.stderr)
            return 2
    if args.compile:  # servers and <ffdirect> load models through load_model, which reads it
        os.environ[COMPILE_VARIABLE] = "1"
    try:
        result = run_experiment(args.experiment, template=template, **options)
    except MLIPError as err:
        print(f"mlip-run: error: {err}", file=sys.stderr)
        return 2
    if result.code == 130:
        print("mlip-run: interrupted", file=sys.stderr)
    return result.code


if __name__ == "__main__":
    sys.exit(main())
