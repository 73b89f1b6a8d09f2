"""The LAMMPS side's two commands: ``mlip-lammps`` (the bridge, :mod:`mlip_server.lammps.bridge`) and
``mlip-lammps-run`` (bridge + server started in order, :mod:`mlip_server.lammps.runner`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from ..cli_help import HelpFormatter
from ..core.errors import InputError, MLIPError
from ..paths import shipped_model
from ..progress import closing_text
from ..protocol import Address
from ..structures import write_water_data
from ..supervision import EXIT_STOPPED, Deadline, EventLog, StopSignals
from . import bridge, checkpoint, runner, summary
from .bridge import EXIT_BAD_INPUT, EXIT_INTERRUPTED, Bridge, BridgeConfig
from .deck import pressure_fixes, resolve_deck, shipped_decks
from .mpi import Interrupts, get_comm, preload_mpi

__all__ = ["bridge_main", "build_bridge_parser", "run_main", "build_run_parser"]

BRIDGE = bridge.PROG
RUN = runner.PROG
DECOMPOSITION_RULE = "default: domain on more than one MPI rank, gather on one"
"""The one decomposition default of both commands (mlip-lammps: its ranks; mlip-lammps-run: --np)."""


def default_decomposition(ranks: int) -> str:
    """``domain`` for more than one MPI rank, ``gather`` for one (both commands)."""
    return "domain" if ranks > 1 else "gather"


# --------------------------------------------------------------------------- command line
def build_bridge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=BRIDGE,
        description=bridge.__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog="Run it under 'mpiexec -n K' for K MPI ranks (needs mpi4py); the domain route (the "
        "default on K > 1 ranks) listens on ADDRESS-RANK (or PORT+RANK), one address per rank.",
    )
    p.add_argument("deck", help="LAMMPS input with one top-level 'fix ID all external pf/callback 1 1' line")
    p.add_argument(
        "--address",
        required=True,
        help="where to listen for mlip-server: unix:NAME (socket /tmp/ipi_NAME) or inet:HOST:PORT",
    )
    p.add_argument(
        "-e",
        "--elements",
        nargs="+",
        required=True,
        metavar="SYMBOL",
        help="element of LAMMPS atom types 1, 2, ... (e.g. -e O H)",
    )
    p.add_argument(
        "--var",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="LAMMPS variable (as lmp -var NAME VALUE); repeat for several",
    )
    p.add_argument(
        "--write-structure",
        default="lammps-init.xyz",
        metavar="PATH",
        help="starting structure (extxyz, atom-tag order) to give mlip-server as --structure",
    )
    p.add_argument("--log", default="log.lammps", help="LAMMPS log file ('none' for no log)")
    p.add_argument("--screen", default=None, help="LAMMPS screen output: a file, or 'none' (default: stdout)")
    p.add_argument(
        "--connect-timeout", type=float, default=120.0, help="seconds to wait for mlip-server to connect"
    )
    p.add_argument(
        "--call-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="seconds to wait for any answer of the server (one force evaluation included) before "
        "declaring it hung",
    )
    p.add_argument(
        "--timeout", dest="call_timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    p.add_argument(
        "--timings",
        default=None,
        metavar="JSON",
        help="write the force calls' timings (every rank) here (default: not written)",
    )
    p.add_argument(
        "--decomposition",
        choices=bridge.DECOMPOSITIONS,
        default=None,
        help="gather: all atoms to rank 0, one connection (the i-PI protocol); domain: every rank "
        "sends its subdomain + ghost shell on its own connection (ADDRESS-RANK, or PORT+RANK) "
        f"({DECOMPOSITION_RULE})",
    )
    p.add_argument(
        "--per-atom",
        action="store_true",
        help="domain: also pass per-atom energies and virials (compute pe/atom, stress/atom; cost extra)",
    )
    p.add_argument(
        "--no-range-check",
        action="store_true",
        help="domain: skip the first call's check of the model's interaction range (a 2x shell on one rank)",
    )
    p.add_argument(
        "--reconnect-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when the force server is lost mid-run, listen again on the same address this long for "
        "a new one and repeat the force call (0, the default: halt at once; mlip-lammps-run sets it)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="restart files every N steps (needs --state; 0, the default: none)",
    )
    p.add_argument(
        "--state",
        default=None,
        metavar="JSON",
        help="the checkpoint state file to write (and --resume from) (default: none)",
    )
    p.add_argument(
        "--stop-file",
        default=None,
        metavar="PATH",
        help="stop cleanly (restart file, exit 75) once this file exists (default: no stop file)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the restart file named in --state")
    _uncertainty_arguments(p, "domain: ")
    return p


def _uncertainty_arguments(p, prefix: str) -> None:
    p.add_argument(
        "--uncertainty-threshold",
        type=float,
        default=None,
        metavar="EV_PER_A",
        help=f"{prefix}a committee's steps whose largest per-atom force spread (f_mlip[6], eV/Å) exceeds "
        "this are logged (default: none)",
    )
    p.add_argument(
        "--save-uncertain",
        default=None,
        metavar="DIR",
        help="with --uncertainty-threshold: append the whole cell of those steps to DIR/uncertain.extxyz",
    )


def bridge_main(argv=None) -> int:
    args = build_bridge_parser().parse_args(argv)
    preload_mpi()
    try:
        address = Address.parse(args.address, allow_spec=False)
    except MLIPError as err:
        print(f"{BRIDGE}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    comm = get_comm()
    decomposition = args.decomposition or default_decomposition(comm.size)
    interrupts = Interrupts()
    if comm.rank == 0:  # rank 0 turns Ctrl-C / SIGTERM into a clean stop of every rank
        interrupts.install()
    else:  # only rank 0 decides to stop; the others follow through the MPI protocol
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = BridgeConfig(
        deck=args.deck,
        address=address,
        elements=args.elements,
        variables=args.var,
        structure=args.write_structure,
        log=args.log,
        screen=args.screen,
        connect_timeout=args.connect_timeout,
        timeout=args.call_timeout,
        timings=args.timings,
        decomposition=decomposition,
        per_atom=args.per_atom,
        range_check=not args.no_range_check,
        reconnect_timeout=args.reconnect_timeout,
        checkpoint_every=args.checkpoint_every,
        state=args.state,
        stop_file=args.stop_file,
        resume=args.resume,
    )
    if decomposition == "domain" and address.kind not in ("unix", "inet"):
        print(f"{BRIDGE}: error: domain decomposition needs a unix: or inet: address", file=sys.stderr)
        return EXIT_BAD_INPUT
    why = _uncertainty_problem(args)
    if why is None and args.uncertainty_threshold is not None and decomposition != "domain":
        why = "--uncertainty-threshold in the gather route is the server's: give it to mlip-server"
    if why:
        print(f"{BRIDGE}: error: {why}", file=sys.stderr)
        return EXIT_BAD_INPUT
    config.uncertainty_threshold, config.save_uncertain = args.uncertainty_threshold, args.save_uncertain
    bridge = Bridge(config, comm, interrupts)
    escaped = False
    try:
        code = bridge.run()
    except KeyboardInterrupt:  # outside the places that stop every rank together
        bridge.say("interrupted")
        code, escaped = EXIT_INTERRUPTED, True
    finally:
        bridge.close()
    if escaped and comm.size > 1:
        comm.Abort(code)  # the other ranks may be inside a LAMMPS collective
    return code


# --------------------------------------------------------------------------- command line
def build_run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=RUN,
        description=runner.__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog="Outputs (LAMMPS's and the servers' logs, dumps, the data file it builds, checkpoints, "
        "events.jsonl) go to --out only.",
    )
    p.add_argument(
        "deck",
        nargs="?",
        help="LAMMPS deck with a 'fix ID all external pf/callback 1 1' line: a file, or a shipped deck "
        "by name (water-nvt; --list) (not with --resume)",
    )
    p.add_argument("--list", action="store_true", help="print the shipped decks, then exit")
    p.add_argument(
        "--model",
        default=None,
        help="model file: the TorchScript contract, or metatomic (both routes) "
        "(default: the shipped models/water-pet.pt)",
    )
    p.add_argument(
        "--committee",
        nargs="+",
        metavar="MODEL",
        default=None,
        help="instead of --model: a committee of two or more models (mlip-server --committee); "
        "its spreads are f_mlip[5] (energy, eV) and f_mlip[6] (largest per-atom force, eV/Å)",
    )
    p.add_argument(
        "--side",
        choices=["both", "servers"],
        default="both",
        help="both: LAMMPS and its servers here; servers: only this node's force servers of a "
        "multi-node job (LAMMPS runs as 'srun mlip-lammps --decomposition domain'; see hpc/)",
    )
    p.add_argument(
        "--ranks-per-node",
        type=int,
        default=None,
        help="--side servers: LAMMPS ranks on each node (required)",
    )
    p.add_argument(
        "--node",
        type=int,
        default=None,
        help="--side servers: this node's index in the job (default: $SLURM_NODEID)",
    )
    p.add_argument(
        "-e",
        "--elements",
        nargs="+",
        default=["O", "H"],
        metavar="SYMBOL",
        help="element of LAMMPS atom types 1, 2, ... (default: O H)",
    )
    p.add_argument("--np", type=int, default=1, help="MPI ranks for LAMMPS (mpiexec -n NP)")
    p.add_argument(
        "--decomposition",
        choices=bridge.DECOMPOSITIONS,
        default=None,
        help="domain: every rank evaluates its subdomain + ghost shell on its own connection; "
        "gather: all atoms through rank 0 and one server "
        f"({DECOMPOSITION_RULE}, i.e. domain for --np > 1)",
    )
    p.add_argument(
        "--servers",
        type=int,
        default=1,
        help="domain: force servers sharing the ranks (rank r on server r mod S; e.g. one per GPU "
        "with --device cuda:N assigned in turn when --device is cuda)",
    )
    p.add_argument(
        "--per-atom",
        action="store_true",
        help="domain: per-atom energies and virials for compute pe/atom and stress/atom (cost extra)",
    )
    p.add_argument(
        "--no-range-check", action="store_true", help="domain: skip the first call's interaction-range check"
    )
    p.add_argument(
        "--var",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="LAMMPS variable; repeat for several",
    )
    p.add_argument(
        "--molecules",
        type=int,
        default=512,
        help="water molecules of the box built into OUT/water-N.data when the deck uses ${data} "
        "and no --var data is given",
    )
    p.add_argument(
        "--out",
        dest="workdir",
        default="runs/lammps",
        metavar="DIR",
        help="the run's output folder: LAMMPS and the servers run and write everything there",
    )
    p.add_argument("--workdir", dest="workdir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument(
        "--address", default=None, help="unix:NAME or inet:HOST:PORT (default: a unique unix socket)"
    )
    p.add_argument("--device", default="cpu", help="server device: cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float64"],
        help="server precision (default: the model's own)",
    )
    p.add_argument(
        "--average", default="none", help="server rotational averaging spec (e.g. 2i; see mlip-server --help)"
    )
    p.add_argument(
        "--forces",
        default="conservative",
        choices=["conservative", "direct"],
        help="the gradient of the energy, or the model's direct forces (no backward pass; net force "
        "removed; a deck with a barostat needs the model's direct virial; mlip-server --forces)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="the servers serve the model as a package compiled on first use (mlip-server --compile)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="server torch threads (0, the default: torch's own choice)"
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra mlip-server argument (repeat; e.g. --server-arg=--max-batch-edges=500000)",
    )
    p.add_argument(
        "--bridge-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra mlip-lammps argument (repeat; e.g. --bridge-arg=--call-timeout=1200)",
    )
    p.add_argument(
        "--run-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop everything after this many seconds of the whole run (default: no limit; for a clean "
        "stop with a restart file use --walltime)",
    )
    p.add_argument(
        "--timeout", dest="run_timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    p.add_argument("--quiet", action="store_true", help="do not stream the outputs (they are still in OUT)")
    p.add_argument(
        "--progress",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between the timestamped progress lines of a log (step N/M, ns/day, s/step, time "
        "left); a terminal shows a live bar instead (0: neither)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="write LAMMPS restart files OUT/restart.STEP every N steps (the newest two are kept; "
        "0, the default: none)",
    )
    p.add_argument(
        "--walltime",
        default=None,
        metavar="HH:MM:SS",
        help="stop cleanly (restart file, exit 75) before this much time has passed (default under "
        "SLURM: the job's end time)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue the run in the output folder DIR from its newest restart file to the final step",
    )
    _uncertainty_arguments(p, "")
    p.add_argument(
        "--max-server-restarts",
        type=int,
        default=3,
        metavar="N",
        help="restart a force server that dies mid-run on the same addresses, at most N times; LAMMPS "
        "repeats the interrupted force call and never sees the fault; a server exiting with status 2 "
        "or failing with the same error at the same step again is not restarted (0: fail fast; "
        "default 3)",
    )
    return p


def run_main(argv=None) -> int:
    args = build_run_parser().parse_args(argv)
    if args.list:
        print("shipped decks (mlip-run --copy-template lammps_inputs/in.NAME copies one out):")
        for name in shipped_decks():
            print(f"  {name}")
        return 0
    if args.side == "servers":
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.default_int_handler)
        return _serve_node(args)
    try:
        deadline = Deadline.from_options(args.walltime)
    except MLIPError as err:
        print(f"{RUN}: error: {err}", file=sys.stderr)
        return 2
    if args.resume:
        return _resume(args, deadline)
    settings = _fresh_settings(args)
    if settings is None:
        return 2
    return _launch(settings, args, deadline, resume=False)


def _fresh_settings(args) -> dict | None:
    """The run's settings from the command line (None after one error line); written to run.json."""
    if not args.deck:
        print(f"{RUN}: error: give the LAMMPS deck (a file, or a shipped deck: --list)", file=sys.stderr)
        return None
    workdir = Path(args.workdir).resolve()  # LAMMPS runs in it: every path it reads is absolute
    try:
        deck = resolve_deck(args.deck)
    except MLIPError as err:
        print(f"{RUN}: error: {err}", file=sys.stderr)
        return None
    model = _model(args)
    if model is None:
        return None
    if args.max_server_restarts < 0 or args.checkpoint_every < 0:
        print(f"{RUN}: error: --max-server-restarts and --checkpoint-every take 0 or more", file=sys.stderr)
        return None
    decomposition = args.decomposition or default_decomposition(args.np)
    if args.servers < 1 or (args.servers > 1 and decomposition != "domain"):
        print(
            f"{RUN}: error: --servers {args.servers}: several servers need --decomposition domain",
            file=sys.stderr,
        )
        return None
    if args.servers > max(args.np, 1):
        print(
            f"{RUN}: error: --servers {args.servers} exceeds --np {args.np}: at most one server per rank",
            file=sys.stderr,
        )
        return None
    if decomposition == "domain" and args.address and args.address.startswith("shm:"):
        print(f"{RUN}: error: domain decomposition needs a unix: or inet: address", file=sys.stderr)
        return None
    workdir.mkdir(parents=True, exist_ok=True)  # the run's own folder: the only place written to
    variables = list(args.var)
    if "${data}" in deck.read_text() and not any(name == "data" for name, _ in variables):
        data = write_water_data(args.molecules, workdir / f"water-{args.molecules}.data")
        print(f"{RUN}: data file {data} ({args.molecules} water molecules; types 1 = O, 2 = H)", flush=True)
        variables.append(("data", str(data.resolve())))  # LAMMPS runs in OUT: a path that works there
    why = _uncertainty_problem(args)
    if why is None and args.uncertainty_threshold is not None and args.committee is None:
        why = "--uncertainty-threshold needs --committee A.pt B.pt [...]"
    if why:
        print(f"{RUN}: error: {why}", file=sys.stderr)
        return None
    bridge_args = ["--decomposition", decomposition]
    server_args = _server_args(args)
    if args.forces == "direct" and pressure_fixes(deck.read_text()):
        server_args.append("--require-virial")  # the servers refuse a model without a direct virial
    if args.uncertainty_threshold is not None:  # the domain route's bridge sees the cell, gather's server
        options = ["--uncertainty-threshold", repr(args.uncertainty_threshold)]
        if args.save_uncertain is not None:
            options += ["--save-uncertain", str(Path(args.save_uncertain).resolve())]
        if decomposition == "domain":
            bridge_args += options
        else:
            server_args += options
    if args.per_atom:
        bridge_args.append("--per-atom")
    if args.no_range_check:
        bridge_args.append("--no-range-check")
    if args.checkpoint_every:
        bridge_args += ["--checkpoint-every", str(args.checkpoint_every)]
    return {
        "deck": str(deck.resolve()),
        "model": runner.resolved_model(model),
        "elements": args.elements,
        "np": args.np,
        "variables": [list(v) for v in variables],
        "workdir": str(workdir.resolve()),
        "address": args.address,
        "server_args": server_args,
        "bridge_args": bridge_args + args.bridge_arg,
        "decomposition": decomposition,
        "servers": args.servers,
        "device": args.device,
        "max_server_restarts": args.max_server_restarts,
    }


def _resume(args, deadline) -> int:
    """``--resume OUT``: the stored settings, the outputs cut back to the restart step."""
    workdir = Path(args.resume)
    try:
        settings, state = checkpoint.read_state(workdir)
        if state and state.get("done"):
            print(f"{RUN}: the run in {workdir} is complete (step {state['step']}): nothing to resume")
            return 0
        if not state or not state.get("restart"):
            raise InputError(
                f"{workdir} has no restart file yet (the run ended before its first checkpoint): start "
                "it again without --resume"
            )
        checkpoint.check_restart(workdir / state["restart"])
    except MLIPError as err:
        print(f"{RUN}: error: {err}", file=sys.stderr)
        return 2
    step = int(state["step"])
    cut = checkpoint.cut_log(workdir / (state.get("log") or "log.lammps"), step)
    for path in (state.get("dumps") or {}).values():
        cut += checkpoint.cut_dump(workdir / path, step)
    settings["workdir"] = str(workdir.resolve())
    events = EventLog(workdir, prefix=RUN)
    events.record(
        "resume",
        f"resuming from {state['restart']} at step {step} of {state.get('final_step')}"
        + (f" (cut {cut} bytes of output past it)" if cut else ""),
        step=step,
    )
    return _launch(settings, args, deadline, resume=True, events=events)


def _launch(settings: dict, args, deadline, resume: bool, events=None) -> int:
    workdir = Path(settings["workdir"])
    if not resume:
        checkpoint.write_json(workdir / checkpoint.RUN_FILE, settings)
    kwargs = dict(settings)
    for name in ("deck", "model", "elements"):
        kwargs.pop(name)
    start = int((checkpoint.read_state(workdir)[1] or {}).get("step", 0)) if resume else None
    stop = StopSignals()
    t0 = time.monotonic()
    try:
        with stop:
            result = runner.run(
                settings["deck"],
                settings["model"],
                settings["elements"],
                echo=not args.quiet,
                progress=args.progress,
                timeout=args.run_timeout,
                resume=resume,
                stop_event=stop.event,
                deadline=deadline,
                events=events,
                **kwargs,
            )
    except KeyboardInterrupt:
        print(f"{RUN}: interrupted: stopped LAMMPS and mlip-server", file=sys.stderr)
        return 130
    except FileNotFoundError as err:
        print(f"{RUN}: error: {err}", file=sys.stderr)
        return 2
    except MLIPError as err:
        print(f"{RUN}: error: {err}", file=sys.stderr)
        return 2
    if result.code == EXIT_STOPPED:
        print(f"{RUN}: {result.message}: continue with `{RUN} --resume {workdir}`", flush=True)
    elif result.code:
        print(f"{RUN}: error: {result.message} (outputs in {result.workdir})", file=sys.stderr)
    else:
        print(f"{RUN}: {_closing_line(result, settings, start, time.monotonic() - t0)}", flush=True)
    return result.code


def _closing_line(result, settings: dict, start: int | None, wall: float) -> str:
    """``done: N steps in T (rate); mean T ...; outputs in OUT (...); next: mlip-analyse ...``"""
    state = checkpoint.read_state(result.workdir)[1] or {}
    first = start if start is not None else state.get("first_step")
    numbers = ""
    if state.get("step") is not None and first is not None:
        steps = int(state["step"]) - int(first)
        numbers = " " + closing_text(steps, wall, result.seconds_per_step, result.dt_fs)
        numbers += f" from step {first}" if start else ""
    physics = summary.headline(result.workdir)
    command = summary.next_command(result.workdir, settings["elements"], result.dt_fs)
    return (
        f"done:{numbers}"
        + (f"; {physics}" if physics else "")
        + f"; outputs in {result.workdir} (lammps.out, server.log, log.lammps, dumps)"
        + (f"; next: {command}" if command else "")
    )


def _uncertainty_problem(args) -> str | None:
    """One line when the uncertainty options do not fit together (None: they do)."""
    if args.save_uncertain is not None and args.uncertainty_threshold is None:
        return "--save-uncertain needs --uncertainty-threshold F (eV/Å)"
    t = args.uncertainty_threshold
    if t is not None and not t > 0:
        return f"--uncertainty-threshold must be a positive force in eV/Å, not {t}"
    return None


def _model(args):
    """The model path, or the committee's paths; None (after one error line) when a file is missing."""
    if args.committee is not None and args.model is not None:
        print(f"{RUN}: error: give --model or --committee, not both", file=sys.stderr)
        return None
    if args.committee is not None and len(args.committee) < 2:
        print(f"{RUN}: error: --committee needs at least two model files", file=sys.stderr)
        return None
    models = args.committee or [args.model or str(shipped_model())]
    for m in models:
        if not Path(m).is_file():
            print(
                f"{RUN}: error: model file {m!r} not found: pass --model PATH to a TorchScript file",
                file=sys.stderr,
            )
            return None
    return models if args.committee else models[0]


def _server_args(args) -> list:
    server_args = ["--average", args.average] + (["--compile"] if getattr(args, "compile", False) else [])
    if getattr(args, "forces", "conservative") == "direct":
        server_args += ["--forces", "direct"]
    if args.dtype:
        server_args += ["--dtype", args.dtype]
    if args.threads:
        server_args += ["--threads", str(args.threads)]
    return server_args + args.server_arg


def _serve_node(args) -> int:
    """``--side servers``: this node's servers of a multi-node domain-decomposed job."""
    import os

    node = args.node if args.node is not None else int(os.environ.get("SLURM_NODEID", "-1"))
    if not args.address or not args.ranks_per_node or node < 0:
        print(
            f"{RUN}: error: --side servers needs --address (the bridge's), --ranks-per-node and --node "
            "(or $SLURM_NODEID)",
            file=sys.stderr,
        )
        return 2
    model = _model(args)
    if model is None:
        return 2
    try:
        return runner.serve_node(
            model, args.address, args.ranks_per_node, node, args.servers, args.device, _server_args(args)
        )
    except MLIPError as err:
        print(f"{RUN}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv=None) -> int:
    """``python -m mlip_server.lammps.cli mlip-lammps|mlip-lammps-run ARGS``: either command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {BRIDGE: bridge_main, RUN: run_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m mlip_server.lammps.cli {{{BRIDGE},{RUN}}} ARGS", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
