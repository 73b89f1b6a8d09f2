"""``mlip-probe MODEL [--level quick|full|tiny]``: the paper's symmetry-breaking study for one model.

    mlip-probe models/water-pet.pt --level quick      # → runs/probe-water-pet-DATE/probe-water-pet.md
    mlip-probe my.pt --level quick --report docs/probe-my.md
    make probe MODEL=models/water-pet.pt LEVEL=quick
    make probe MODEL=models/water-pet.pt COMMITTEE="models/committee/phase3.pt models/committee/phase4.pt"

Writes REPORT (markdown), a folder next to it with the PNGs and ``probe.json``, and keeps the
MD runs in ``--work``. Without ``--report`` everything goes into one new folder of the run's own,
``runs/probe-<model>-<date>/`` (report, figures, ``md/`` for the MD runs); nothing is written
into ``docs/`` or the current folder unless asked. Order: timings on the idle machine,
then the MD runs in the background while the single-point sections run, then the analyses
(:mod:`mlip_server.analysis.probe.pipeline`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlip_server.core.errors import MLIPError

from .levels import LEVELS

__all__ = ["main", "build_parser"]


def build_parser():
    p = argparse.ArgumentParser(prog="mlip-probe", description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="model file (contract, metatomic or .pt2); or --model")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the model (as everywhere else)")
    p.add_argument(
        "--level",
        default="quick",
        choices=sorted(LEVELS),
        help="how long the MD runs are and how fine the reference grid is: quick (minutes to hours on "
        "a CPU), full (the paper's lengths), tiny (tests) (default %(default)s)",
    )
    p.add_argument(
        "--report",
        help="markdown report to write (default: runs/probe-<model name>-<date>/probe-<model name>.md "
        "under ./runs, its figures and probe.json next to it)",
    )
    p.add_argument(
        "--work",
        help="folder for the MD runs (default: md/ in that folder without --report, "
        "runs/<report name>-<date> with it)",
    )
    p.add_argument(
        "--dataset",
        help="extended XYZ test set for section 1 (e.g. ../shared/data/dft/"
        "water_revpbe0d3_190.xyz); with energy/forces labels, errors against them are reported",
    )
    p.add_argument(
        "--ice-dir",
        default=None,
        help="folder with ice_ih_disordered_*.xyz cells (default ../shared/data/structures/ice "
        "next to the project; section 5 is skipped without them)",
    )
    p.add_argument(
        "--committee",
        nargs="+",
        metavar="MODEL",
        help="two or more models of the same elements: adds section 6, the probed model's rotational "
        "spread against the committee's spread (symmetry breaking vs model uncertainty)",
    )
    p.add_argument(
        "--threads", type=int, default=2, help="torch threads for the timings (default %(default)s)"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N (single points and MD servers; default %(default)s)",
    )
    return p


def main(argv=None) -> int:
    """Entry point of ``mlip-probe``; returns the exit status (1 on failure, 2 on a missing model)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model and args.model_option and args.model != args.model_option:
        parser.error("give the model once: MODEL or --model MODEL")
    args.model = args.model or args.model_option
    if not args.model:
        parser.error("the model is required: mlip-probe --model MODEL")
    for m in [args.model, *(args.committee or [])]:
        if not Path(m).is_file():
            print(f"mlip-probe: error: model {m} not found: pass a TorchScript model file", file=sys.stderr)
            return 2
    if args.committee is not None and len(args.committee) < 2:
        print("mlip-probe: error: --committee needs two or more models", file=sys.stderr)
        return 2
    from .pipeline import default_report, probe

    report, work = args.report, args.work
    if report is None:  # one folder of this probe's own: report, figures, MD runs
        report = default_report(args.model)
        work = work or report.parent / "md"
        print(f"mlip-probe: writing {report} (figures, probe.json and the MD runs next to it)", flush=True)
    try:
        probe(
            args.model,
            level=args.level,
            report_path=report,
            work=work,
            dataset=args.dataset,
            ice_dir=args.ice_dir,
            threads=args.threads,
            device=args.device,
            committee=args.committee,
        )
    except MLIPError as err:
        print(f"mlip-probe: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
