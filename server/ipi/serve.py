"""``mlip-server``: serve a TorchScript model to i-PI (or the LAMMPS bridge) over sockets.

Example::

    mlip-server --model models/water-pet.pt --structure init.xyz --address unix:water
    mlip-server --model m.pt --structure init.xyz --address unix:raw --address unix:avg=2i
    mlip-server --model m.pt --structure init.xyz --address shm:water      # i-PI mode='shm'
    mlip-server --model m.pt --structure init.xyz --address unix:ase --on-close exit   # ASE host
    mlip-server --model m.pt --address unix:run-0 --address unix:run-1  # LAMMPS domain ranks
    mlip-server --committee a.pt b.pt c.pt --structure init.xyz --address unix:water \
                --uncertainty-threshold 0.5 --save-uncertain uncertain/        # a committee

``--structure`` may be left out only for the LAMMPS bridge's domain-decomposed ranks
(``mlip-lammps --decomposition domain``), whose messages carry the atomic numbers.

Exit status: 0 after i-PI's EXIT on every connection (or, with ``--on-close exit``, after a host
closed its socket cleanly between messages); 1 when the run cannot go on (peer died, malformed
message, bad structure); 2 for bad arguments or a bad model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..cli_help import HelpFormatter
from ..core.averaging import DIRECT, VALID_SPECS, Averaging
from ..core.errors import InputError, MLIPError
from ..loading import COMPILE_VARIABLE
from ..paths import shipped_model
from ..structures import read_numbers
from ..supervision import Heartbeat
from ..uncertainty import UncertaintyLog

__all__ = ["main", "build_parser"]

log = logging.getLogger("mlip-server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlip-server",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        help="model file: the TorchScript contract, metatomic, or a compiled .pt2 package "
        "(default: the shipped models/water-pet.pt)",
    )
    which.add_argument(
        "--committee",
        nargs="+",
        metavar="MODEL",
        help="two or more model files (same species; cutoffs may differ) evaluated together: "
        "the mean is served, the spread reported (extras committee_*; i-PI's <ffcommittee "
        "parse_json='true'> reads them)",
    )
    p.add_argument(
        "--structure",
        default=None,
        help="structure file readable by ASE (e.g. i-PI's init.xyz): gives the elements, in "
        "i-PI's atom order (the i-PI protocol carries positions only); not needed for the LAMMPS "
        "bridge's domain-decomposed ranks",
    )
    p.add_argument(
        "--address",
        action="append",
        metavar="ADDR[=SPEC]",
        help="unix:NAME (socket /tmp/ipi_NAME), shm:NAME (i-PI's mode='shm': messages on /tmp/ipi_NAME, "
        "arrays in shared memory) or inet:HOST:PORT; repeat for several connections; '=SPEC' sets this "
        "endpoint's averaging (e.g. unix:slow=2i)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="dry run for your own model: load it, evaluate it on --structure (or 32 waters), check "
        "forces against finite differences, time a call, list the routes it can serve; exit 0 or 2",
    )
    p.add_argument("--average", default="none", help=f"default averaging spec: {VALID_SPECS}")
    p.add_argument(
        "--forces",
        default="conservative",
        choices=["conservative", "direct"],
        help="forces of endpoints without their own spec: the gradient of the energy, or the model's "
        "direct (non-conservative) forces, no backward pass (= spec direct+AVERAGE; per endpoint: "
        "unix:fast=direct)",
    )
    p.add_argument(
        "--require-virial",
        action="store_true",
        help="refuse direct endpoints without a virial (runs that need the pressure: NPT; mlip-run sets it)",
    )
    p.add_argument("--seed", type=int, default=12345, help="seed of random-rotation specs")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float64"],
        help="precision of the model and the edge vectors (default: the precision the model was exported in)",
    )
    p.add_argument(
        "--max-batch-edges",
        type=int,
        default=None,
        help="edges per model call, rotated copies included, fixed (default: measured per model and "
        "structure size at the first request, within 20000 on CPU / 2000000 on a GPU)",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=60.0, help="seconds to wait for the i-PI socket to appear"
    )
    p.add_argument(
        "--message-timeout",
        "--timeout",
        dest="timeout",
        type=float,
        default=60.0,
        help="seconds a message may stall mid-transfer before the peer is declared dead (--timeout: the "
        "old name)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="seconds without any message before giving up (0: no limit)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        default=0.005,
        help="seconds to wait for the other connections of an address before evaluating",
    )
    c = p.add_argument_group("committee")
    c.add_argument(
        "--committee-serve",
        default="mean",
        choices=["mean", "first"],
        help="serve the committee mean (default) or the first member (a baseline)",
    )
    c.add_argument(
        "--committee-extras",
        default="all",
        choices=["all", "stats"],
        help="send i-PI every member's energy/forces/virial (all: what <ffcommittee> needs) or only "
        "committee_energy_std and committee_force_std_max (stats)",
    )
    c.add_argument(
        "--uncertainty-threshold",
        type=float,
        default=None,
        metavar="F",
        help="log every structure whose largest per-atom committee force spread exceeds F (eV/Å)",
    )
    c.add_argument(
        "--save-uncertain",
        metavar="DIR",
        default=None,
        help="with --uncertainty-threshold: append those structures to DIR/uncertain.extxyz",
    )
    p.add_argument("--nonperiodic", action="store_true", help="ignore the cell (gas-phase runs)")
    p.add_argument(
        "--on-close",
        default="error",
        choices=["error", "exit"],
        help="a peer closing its socket without EXIT: an error (i-PI crashed; the default) or, after a "
        "completed exchange, the end of that connection (ASE's SocketIOCalculator ends this way)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); on cores shared with other busy processes, "
        "start the server with OMP_WAIT_POLICY=PASSIVE",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="serve TorchScript contract models as AOTInductor packages, compiled on first use into "
        "a cache (~/.cache/mlip-server/compiled, $MLIP_COMPILE_CACHE; 1-2 min the first time), "
        "TorchScript after one warning line if compiling fails",
    )
    p.add_argument("--log-every", type=int, default=100, help="log statistics every N evaluations")
    p.add_argument(
        "--heartbeat",
        metavar="FILE",
        default=None,
        help="touch FILE after each evaluation (at most every 0.2 s): how mlip-run tells a hung server "
        "from a slow one",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"], help="log detail")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model and not args.committee:
        try:
            args.model = str(shipped_model())
        except MLIPError as err:
            print(f"mlip-server: error: {err}", file=sys.stderr)
            return 2
    if args.threads > 0:  # the dry run's timing and the server's alike
        import torch

        torch.set_num_threads(args.threads)
    if args.check:
        from ..model_check import check_model

        lines, code = check_model(args.model or args.committee, args.structure, args.device, args.dtype)
        # the report on stdout; a failed check's reason, its last line, alone on stderr
        report, error = (lines, []) if code == 0 else (lines[:-1], lines[-1:])
        if report:
            print("\n".join(report))
        for line in error:
            print(line, file=sys.stderr)
        return code
    if not args.address:
        parser.error("--address is required (or --check for a dry run of the model)")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s mlip-server: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    import torch

    from ..loading import load_evaluator
    from ..machine import wait_policy_hint
    from ..protocol import Address
    from .socket_server import ForceServer

    try:
        addresses = [Address.parse(a) for a in args.address]
        average = default_spec(args.average, args.forces)
        specs = {a.spec or average: Averaging(a.spec or average) for a in addresses}  # refuse bad specs
        numbers = None if args.structure is None else read_numbers(args.structure)
        if args.committee is not None and len(args.committee) < 2:
            raise InputError("--committee needs at least two model files (use --model for one)")
        if args.committee is None and (
            args.uncertainty_threshold is not None or args.committee_serve != "mean"
        ):
            raise InputError("--uncertainty-threshold and --committee-serve need --committee A.pt B.pt [...]")
        if args.save_uncertain is not None and args.uncertainty_threshold is None:
            raise InputError("--save-uncertain needs --uncertainty-threshold F (eV/Å)")
        uncertainty = (
            None
            if args.uncertainty_threshold is None
            else UncertaintyLog(args.uncertainty_threshold, args.save_uncertain)
        )
        if args.compile:
            os.environ[COMPILE_VARIABLE] = "1"  # read by load_model (every member of a committee)
        evaluator = load_evaluator(
            args.model or args.committee,
            device=args.device,
            dtype=args.dtype,
            max_batch_edges=args.max_batch_edges,
            committee_serve=args.committee_serve,
        )
        # refusals first: a refused start prints one line, not the model's description before it
        check_direct(
            evaluator.model, [(str(a), specs[a.spec or average]) for a in addresses], args.require_virial
        )
        unknown = [] if numbers is None else sorted(set(numbers.tolist()) - set(evaluator.model.species))
        if unknown:
            raise InputError(
                f"{args.structure} contains atomic numbers {unknown} that {evaluator.model.label} "
                f"{evaluator.model.path} does not support (species {evaluator.model.species})"
            )
        if args.committee is not None:
            log.info(
                "committee of %d (serving the %s): %s",
                len(evaluator.model),
                "mean" if args.committee_serve == "mean" else "first member",
                "; ".join(evaluator.model.describe()),
            )
        log.info(
            "%s %s: cutoff %.3g Å, species %s, %s (%s) on %s",
            evaluator.model.label,
            evaluator.model.path,
            evaluator.cutoff,
            evaluator.model.species,
            str(evaluator.dtype).replace("torch.", ""),
            "requested" if evaluator.model.requested_dtype else "the model's own precision",
            args.device,
        )
        m = evaluator.model
        if args.committee is None:
            for line in m.describe():
                log.info("  %s", line)
        log.info(
            "interaction range %.3g Å (%s); energy %s a sum of atomic terms",
            m.interaction_range,
            "declared" if m.declared_range else "not declared: assumed local",
            "is" if m.sums_atomic_energies else "is NOT",
        )
        hint = wait_policy_hint(torch.get_num_threads())
        if hint:
            log.warning("%s", hint)
    except MLIPError as err:
        print(f"mlip-server: error: {err}", file=sys.stderr)
        return 2
    server = ForceServer(
        evaluator,
        addresses,
        numbers,
        average=average,
        seed=args.seed,
        connect_timeout=args.connect_timeout,
        timeout=args.timeout,
        idle_timeout=args.idle_timeout,
        batch_wait=args.batch_wait,
        log_every=args.log_every,
        nonperiodic=args.nonperiodic,
        on_close=args.on_close,
        committee_arrays=args.committee_extras == "all",
        uncertainty=uncertainty,
        heartbeat=Heartbeat(args.heartbeat),
    )
    try:
        server.serve()
    except MLIPError as err:
        print(f"mlip-server: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlip-server: interrupted", file=sys.stderr)
        return 130
    finally:
        if uncertainty is not None:
            log.info("%s", uncertainty.summary())
    return 0


def default_spec(average: str, forces: str) -> str:
    """The spec of endpoints without their own: ``average``, as direct forces if ``forces`` is
    ``direct`` (``--average 2i --forces direct`` → ``direct+2i``)."""
    if forces != "direct" or Averaging(average).direct:
        return average
    return DIRECT if Averaging(average).is_raw else f"{DIRECT}+{average}"


def check_direct(model, endpoints, require_virial: bool = False) -> None:
    """Refuses direct endpoints of a model without direct forces, and (``require_virial``) without a
    direct virial, in one line; says at start which direct endpoints send a zero virial."""
    direct = [name for name, averaging in endpoints if averaging.direct]
    if direct and not model.direct_forces:
        raise InputError(
            f"{direct[0]} asks for direct forces but {model.label} {model.path} has none (no "
            "direct_forces method / non_conservative_force output): drop 'direct' from its spec"
        )
    if direct and require_virial and not model.direct_virial:
        raise InputError(
            f"this run needs the pressure (NPT) but {direct[0]} serves direct forces and "
            f"{model.path} has no direct virial: use conservative forces (drop --forces direct)"
        )
    for name in direct:
        log.info(
            "%s: direct forces (no backward pass, net force removed); %s",
            name,
            "the model's direct virial"
            if model.direct_virial
            else "the model has no direct virial: a ZERO virial is sent (no pressure: not for NPT)",
        )


if __name__ == "__main__":
    sys.exit(main())
