"""``mlip-run``: one command (and one function) per i-PI experiment, correct by construction.

    mlip-run water-nvt --model models/water-pet.pt --steps 2000
    mlip-run water-nvt-mts --average 2i --molecules 128
    mlip-run water-pimd --beads 8
    mlip-run ice-geop --structure ice.xyz --average 2i
    mlip-run replay --trajectory runs/water-nvt-.../sim.pos_0.extxyz --specs none,i,2,2i,3i
    mlip-run water-nvt --restart runs/water-nvt-20261127-101500
    mlip-run water-pimd --transport inet --host node1 --port 31415 --side ipi --out RUN   # i-PI here
    mlip-run water-pimd --side server --out RUN --device cuda                              # server there

From Python, :func:`run_experiment` takes the same options as keywords and :func:`run_many`
runs several experiments at once. The launcher renders the experiment
(:mod:`server.ipi.experiments`) into a fresh run folder, starts i-PI, waits until its sockets
exist, starts one mlip-server for all endpoints, prints progress, and on exit, error or Ctrl-C
stops everything it started and removes its sockets. Socket names are unique per run
(``mlip-<PID>-<random>-<endpoint>``): concurrent runs never collide.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .. import processes
from ..core.errors import InputError, MLIPError
from ..paths import runs_dir, shipped_model
from .experiments import RunOptions, experiments, load_experiment, render

__all__ = ["run_experiment", "run_many", "RunResult", "main", "build_parser"]

SERVER_FILE = "server.json"
"""What the ``ipi`` side leaves for the ``server`` side in the run folder."""


@dataclass
class RunResult:
    """Outcome of one run: exit status (0 ok, 1 failed, 130 stopped or interrupted), folder, message."""

    code: int
    out: Path
    message: str = ""
    wall_s: float = 0.0


def run_experiment(name: str, *, stop: threading.Event | None = None, log=None, **options) -> RunResult:
    """Runs experiment ``name`` of ``ipi_inputs/`` with i-PI and mlip-server.

    Parameters
    ----------
    name : str
        Experiment folder name.
    stop : threading.Event, optional
        Set it to stop the run cleanly (as Ctrl-C does): the result then has code 130.
    log : file, optional
        Where progress lines go (default stdout); errors go there too.
    **options
        Fields of :class:`~server.ipi.experiments.RunOptions` (``model``, ``steps``,
        ``average``, ``molecules``, ``temperature`` K, ``timestep`` fs, ``template={...}``, ...).

    Returns
    -------
    RunResult

    Raises
    ------
    MLIPError
        Bad options (unknown experiment, missing model or structure), before anything starts.
    """
    known = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(
            f"run_experiment: unknown option {unknown[0]!r} (options: {', '.join(sorted(known))})"
        )
    opts = RunOptions(**options)
    meta = load_experiment(name)[0]  # refuses an unknown experiment before any output
    out = log or sys.stdout
    t0 = time.monotonic()
    if opts.side == "server":
        return _serve_only(name, opts, out, stop, t0)
    if opts.side not in ("both", "ipi"):
        raise InputError(f"unknown side {opts.side!r}: use both, ipi or server")
    if opts.transport == "ffdirect" and opts.side != "both":
        raise InputError(
            "--transport ffdirect runs the model inside i-PI: there is no server side to split off"
        )
    run_id = processes.unique_name("mlip")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(opts.out or runs_dir() / f"{name}-{stamp}-{run_id.rsplit('-', 1)[-1]}")
    folder.mkdir(parents=True, exist_ok=False)
    model = Path(opts.model or shipped_model())
    if opts.side == "both" and not model.is_file():
        raise InputError(f"model {model} not found: pass --model PATH (a TorchScript model file)")
    rendered = render(name, opts, folder, run_id)
    (folder / rendered.xml_name).write_text(rendered.xml)
    (folder / "endpoints.json").write_text(json.dumps(rendered.endpoints))
    server_args = (
        rendered.server_args + ["--device", opts.device] + (["--dtype", opts.dtype] if opts.dtype else [])
    )
    (folder / SERVER_FILE).write_text(
        json.dumps(
            {"addresses": rendered.addresses, "server_args": server_args, "structure": rendered.element_file}
        )
    )
    print(
        f"mlip-run: {name} in {folder}\n  endpoints: "
        + ", ".join(f"{e} ({spec})" for e, spec in rendered.endpoints.items())
        + f"; {len(rendered.addresses)} connection(s)",
        file=out,
        flush=True,
    )
    env = _env(opts)
    ipi = server = None
    try:
        with _interrupts():
            ipi = processes.start_ipi(rendered.xml_name, folder, env=env)
            for s in rendered.sockets:
                processes.wait_for_socket(s, ipi, timeout=120)
            if opts.side == "both" and rendered.addresses:
                server = processes.start_server(
                    model.resolve(),
                    rendered.element_file,
                    rendered.addresses,
                    folder,
                    extra=server_args,
                    env=env,
                )
            codes = _follow([ipi] + ([server] if server else []), folder, opts.progress, out, stop)
    except KeyboardInterrupt:
        print("mlip-run: interrupted: stopping i-PI and the server", file=out, flush=True)
        return RunResult(130, folder, "interrupted", time.monotonic() - t0)
    finally:
        processes.stop([ipi, server], rendered.sockets)
        if ipi is not None:
            processes.remove_ipi_shm(ipi.pid)
    names = ["i-PI"] + (["server"] if server is not None else [])
    return _verdict(codes, names, folder, meta, out, time.monotonic() - t0)


def _serve_only(name, opts: RunOptions, out, stop, t0) -> RunResult:
    """The ``server`` side: waits for the ``ipi`` side's run folder, then serves it."""
    if not opts.out:
        raise InputError("--side server needs --out: the run folder that the ipi side writes")
    folder = Path(opts.out)
    spec_file = folder / SERVER_FILE
    deadline = time.monotonic() + 600
    while not spec_file.exists():
        if time.monotonic() > deadline:
            raise InputError(
                f"no {spec_file} after 600 s: start the ipi side first (--side ipi --out {folder})"
            )
        time.sleep(0.5)
    spec = json.loads(spec_file.read_text())
    model = Path(opts.model or shipped_model())
    if not model.is_file():
        raise InputError(f"model {model} not found: pass --model PATH (a TorchScript model file)")
    # this side's own --device and --dtype replace the ipi side's
    server_args, given = [], iter(spec["server_args"])
    for arg in given:
        if arg in ("--device", "--dtype"):
            next(given, None)
        else:
            server_args.append(arg)
    server_args += ["--device", opts.device] + (["--dtype", opts.dtype] if opts.dtype else [])
    server = None
    try:
        with _interrupts():
            server = processes.start_server(
                model.resolve(),
                spec["structure"],
                spec["addresses"],
                folder,
                extra=server_args + ["--connect-timeout", "600"],
                env=_env(opts),
            )
            codes = _follow([server], folder, opts.progress, out, stop)
    except KeyboardInterrupt:
        print("mlip-run: interrupted: stopping the server", file=out, flush=True)
        return RunResult(130, folder, "interrupted", time.monotonic() - t0)
    finally:
        processes.stop([server])
    return _verdict(codes, ["server"], folder, load_experiment(name)[0], out, time.monotonic() - t0)


def _env(opts: RunOptions) -> dict | None:
    if opts.threads is None:
        return None
    return dict(os.environ, OMP_NUM_THREADS=str(opts.threads))


class _interrupts:
    """Inside the main thread, SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt (SIGINT too: a parent
    shell may have started us with SIGINT ignored); elsewhere (run_many's threads) nothing."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum, frame):
                raise KeyboardInterrupt

            self.previous = {
                s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            }
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


def _verdict(codes, names: list, folder: Path, meta: dict, out, wall: float) -> RunResult:
    """The RunResult of exit ``codes`` of the processes ``names`` (None: stopped)."""
    if codes is None:
        return RunResult(130, folder, "stopped", wall)
    if any(c != 0 for c in codes):
        what = ", ".join(f"{n} exit {c}" for n, c in zip(names, codes))
        message = f"failed ({what}): see {folder}/ipi.log and {folder}/server.log"
        print(f"mlip-run: {message}", file=out, flush=True)
        log = folder / "server.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        for line in tail:
            print("  server: " + line, file=out, flush=True)
        return RunResult(1, folder, message + "".join(f" | server: {t}" for t in tail), wall)
    print(f"mlip-run: done; outputs in {folder}: " + ", ".join(meta.get("outputs", [])), file=out, flush=True)
    return RunResult(0, folder, "", wall)


def _follow(procs, folder: Path, every: float, out, stop) -> list[int] | None:
    """Waits for ``procs`` (i-PI first), printing i-PI's latest step every ``every`` s. If one of
    them fails, the others are stopped (nothing waits on a dead peer). None when ``stop`` is set."""
    last = time.monotonic()
    while True:
        if stop is not None and stop.is_set():
            return None
        codes = [p.poll() for p in procs]
        if None not in codes:
            return codes
        if any(c not in (None, 0) for c in codes):
            processes.stop(procs, grace=10)
            return [p.poll() for p in procs]
        if len(procs) == 2 and codes[0] == 0 and codes[1] is None:  # i-PI done; the server exits on EXIT
            try:
                procs[1].wait(timeout=30)
            except Exception:
                processes.stop([procs[1]])
            continue
        if every > 0 and time.monotonic() - last > every:
            last = time.monotonic()
            props = folder / "sim.out"
            if props.exists():
                lines = [
                    line
                    for line in props.read_text().splitlines()
                    if line.strip() and not line.startswith("#")
                ]
                if lines:
                    print(f"  step {int(float(lines[-1].split()[0]))}", file=out, flush=True)
        time.sleep(0.2)


def run_many(jobs: dict, deadline: float | None = None, logs: Path | None = None) -> dict:
    """Runs several experiments at once; returns name → :class:`RunResult`.

    Parameters
    ----------
    jobs : dict
        Name → keyword dict of :func:`run_experiment`, with the experiment under ``"experiment"``.
    deadline : float, optional
        Seconds after which the runs still going are stopped cleanly (their outputs kept, code 130).
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
            results[name] = run_experiment(experiment, stop=stop, log=handle, progress=0, **job)
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
        description=__doc__.split("\n\n")[0],
        epilog="experiments: " + ", ".join(experiments()),
    )
    p.add_argument("experiment", help="folder name in ipi_inputs/")
    p.add_argument("--model", help="TorchScript model (default: models/water-pet.pt)")
    p.add_argument("--structure", help="starting structure (ASE-readable, with a cell)")
    p.add_argument("--trajectory", help="trajectory to re-evaluate (replay)")
    p.add_argument("--molecules", type=int, help="water molecules of the generated box")
    p.add_argument("--density", type=float, default=0.997, help="g/cm³ of the generated box")
    p.add_argument("--steps", type=int)
    p.add_argument("--temperature", type=float, help="K")
    p.add_argument("--pressure", type=float, help="bar")
    p.add_argument("--timestep", type=float, help="fs (outer step for MTS experiments)")
    p.add_argument("--nmts", type=int, help="inner steps per outer step")
    p.add_argument("--beads", type=int)
    p.add_argument("--stride", type=int, help="output stride (steps)")
    p.add_argument("--average", default="none", help="averaging spec of the averaged endpoint")
    p.add_argument("--specs", help="replay: comma-separated averaging specs")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float64"],
        help="server precision (default: the model's own)",
    )
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads of i-PI and the server")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="any other template value")
    p.add_argument("--restart", metavar="RUN_DIR", help="continue a previous run from its RESTART file")
    p.add_argument("--out", help="run folder (default runs/EXPERIMENT-DATE-ID)")
    p.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines (0: quiet)")
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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    template = {}
    for item in args.set or []:
        k, sep, v = item.partition("=")
        if not sep:
            print(f"mlip-run: error: --set {item!r}: use --set NAME=VALUE", file=sys.stderr)
            return 2
        template[k] = v
    options = {k: v for k, v in vars(args).items() if k not in ("experiment", "set")}
    try:
        result = run_experiment(args.experiment, template=template, **options)
    except MLIPError as err:
        print(f"mlip-run: error: {err}", file=sys.stderr)
        return 2
    if result.code == 130:
        print("mlip-run: interrupted", file=sys.stderr)
    elif result.code:
        print(f"mlip-run: {result.message}", file=sys.stderr)
    return result.code


if __name__ == "__main__":
    sys.exit(main())
