"""``mlip-analyse``: trajectory analyses for water MD from i-PI / LAMMPS / anything MDAnalysis reads.

Usage::

    mlip-analyse rdf|msd|dipole|orientation|symmetry|uncertainty|all TRAJ [--format FMT] [--out DIR]
                 [--box a b c [alpha beta gamma]] [--reference FILE[:bohr]] [--types O H]
                 [--frame-interval FS] [the command's options: mlip-analyse COMMAND -h]
    mlip-analyse uncertainty sim.pos_0.extxyz [--committee-forces sim.unc_0]
                 [--committee-energy sim.uncE_0] [--rotational sim.spread_0] [--worst K]

Each analysis writes a plain-text table (``*.dat``), a PNG plot and its section of
``DIR/summary.json`` (values with block-averaged standard errors). Bad input gives one line
``error: ...`` naming the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .errors import AnalysisInputError
from .uncertainty import DEFAULT_WORST

__all__ = ["main", "run", "build_parser", "COMMANDS"]

COMMANDS = ("rdf", "msd", "dipole", "orientation", "symmetry", "uncertainty", "all")


_SUMMARIES = {
    "rdf": "g_OO, g_OH, g_HH, running coordination numbers and the first shell",
    "msd": "mean-squared displacement (unwrapped, drift removed) and the self-diffusion coefficient",
    "dipole": "c_L(r), c_T(r), dipole autocorrelations C1(t), C2(t), tau1, tau2 and the dielectric constant",
    "orientation": "P(cos theta, phi) of the molecular dipole direction",
    "symmetry": "symmetry diagnostics of an i-PI run: V_avg - V_raw, conserved-energy drift, L(t) and torque",
    "uncertainty": "committee force and energy spreads along a run (i-PI extras of mlip-server --committee)",
    "all": "every analysis that applies to the trajectory",
}
_TRAJ_HELP = {
    "symmetry": "trajectory file, i-PI .out file or run folder",
    "uncertainty": "trajectory file, committee_force_std extras file or run folder",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mlip-analyse``: one sub-command per analysis, each with only its own options."""
    p = argparse.ArgumentParser(
        prog="mlip-analyse",
        description="RDFs, diffusion, dipole/orientation statistics, symmetry diagnostics and committee "
        "uncertainty of water trajectories (MDAnalysis). Units: Å, fs, ps, K, eV. "
        "mlip-analyse COMMAND --help lists a command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for name, summary in _SUMMARIES.items():
        _add_arguments(sub.add_parser(name, help=summary, description=summary), name)
    # a sub-command without an option gets that option's default (run() reads every one)
    every = argparse.ArgumentParser(add_help=False)
    _add_arguments(every, "all")
    defaults = {a.dest: a.default for a in every._actions}
    for sp in sub.choices.values():
        own = {a.dest for a in sp._actions}
        sp.set_defaults(**{k: v for k, v in defaults.items() if k not in own})
    return p


def _add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """The arguments of sub-command ``command`` (``all``: every one)."""

    def wants(*commands):
        return command == "all" or command in commands

    p.add_argument("traj", metavar="TRAJ", help=_TRAJ_HELP.get(command, "trajectory file or run folder"))
    g = p.add_argument_group("input")
    g.add_argument(
        "--format",
        help="ipi-xyz, extxyz (i-PI 'ase'), pdb, lammpsdump, or an MDAnalysis format "
        "(default: from the extension and the first comment line)",
    )
    g.add_argument(
        "--box",
        nargs="+",
        type=float,
        metavar="L",
        help="periodic box a b c [alpha beta gamma] in Å and degrees (overrides the file's)",
    )
    g.add_argument(
        "--types", nargs="+", metavar="EL", help="element of LAMMPS atom type 1, 2, ... (e.g. O H)"
    )
    g.add_argument(
        "--frame-interval",
        "--timestep",
        dest="timestep",
        type=float,
        metavar="FS",
        help="time between stored frames, fs (default: from the run's sim.out or the frames' steps); "
        "--timestep is its old name, deprecated (mlip-run's --timestep is the MD step)",
    )
    g.add_argument(
        "--bead",
        "--beads",
        dest="beads",
        metavar="centroid|all|K",
        help="i-PI path integrals: which beads to read: the centroid of all bead files prefix.pos_*, "
        "every bead (all: the bead-averaged, quantum g(r); rdf only) or bead K; --beads is its old "
        "name, deprecated (mlip-run's --beads is the number of beads)",
    )
    g.add_argument("--start", type=int, help="first frame")
    g.add_argument("--stop", type=int, help="frame to stop before")
    g.add_argument("--step", type=int, help="analyse every STEP-th frame")
    o = p.add_argument_group("output")
    o.add_argument(
        "--out", default="analysis-output", metavar="DIR", help="output folder (default %(default)s)"
    )
    o.add_argument("--blocks", type=int, default=5, help="blocks for error bars (default %(default)s)")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    o.add_argument(
        "--workers",
        type=int,
        default=1,
        help="MDAnalysis multiprocessing workers for the analyses where they pay (g(r), c_L/c_T; no "
        "progress bars when > 1; default %(default)s)",
    )
    a = p.add_argument_group("analysis settings")
    if wants("rdf"):
        a.add_argument(
            "--reference",
            action="append",
            default=[],
            metavar="FILE[:bohr]",
            help="reference g(r) to overlay; .gdr files are read as Bohr; repeatable (default: none)",
        )
    if wants("rdf", "dipole"):
        a.add_argument("--rmax", type=float, help="largest r for g(r), c_L, c_T in Å (default min(L/2, 8))")
    if wants("rdf"):
        a.add_argument("--nbins", type=int, default=200, help="g(r) bins (default %(default)s)")
    if wants("msd"):
        a.add_argument(
            "--msd-group",
            choices=("O", "com"),
            default="O",
            help="oxygens or molecular centres of mass (default %(default)s)",
        )
    if wants("msd"):
        a.add_argument(
            "--fit-window",
            nargs=2,
            type=float,
            metavar=("T0", "T1"),
            help="MSD fit window in ps (default 10-50%% of one block)",
        )
    if wants("msd"):
        a.add_argument(
            "--viscosity",
            type=float,
            metavar="MPAS",
            help="shear viscosity (mPa s) for the Yeh-Hummer correction",
        )
    if wants("msd", "dipole"):
        a.add_argument(
            "--temperature",
            type=float,
            default=300.0,
            help="K, for Yeh-Hummer and dielectric constant (default %(default)s)",
        )
    if wants("dipole"):
        a.add_argument(
            "--charges",
            nargs="+",
            metavar="EL=Q",
            help="point charges in e for the dielectric constant, e.g. O=-0.8476 H=0.4238",
        )
    if wants("symmetry"):
        s = p.add_argument_group("symmetry diagnostics")
        s.add_argument(
            "--properties", metavar="OUT", help="i-PI properties file (default: PREFIX.out next to TRAJ)"
        )
        s.add_argument(
            "--v-raw", metavar="COLUMN", help="raw potential column (default pot_component_raw(0))"
        )
        s.add_argument(
            "--v-avg", metavar="COLUMN", help="averaged potential column (default pot_component_raw(1))"
        )
        s.add_argument(
            "--velocities",
            "--momenta",
            dest="velocities",
            metavar="FILE",
            help="i-PI velocity or momentum trajectory (default: found next to TRAJ)",
        )
        s.add_argument(
            "--force-file",
            "--forces",
            dest="forces",
            metavar="FILE",
            help="i-PI force trajectory (default: found next to TRAJ); --forces is its old name, deprecated "
            "(mlip-run's --forces chooses conservative or direct forces)",
        )
        s.add_argument("--n-molecules", type=int, help="molecules for the per-molecule energy drift")
    if wants("uncertainty"):
        c = p.add_argument_group(
            "committee uncertainty (i-PI extras files of mlip-server --committee; default: found next to "
            "TRAJ by its prefix, bead 0 or --bead K)"
        )
        c.add_argument(
            "--committee-forces",
            metavar="FILE",
            help="extras file of committee_force_std (per-atom spread, eV/Å), e.g. sim.unc_0",
        )
        c.add_argument(
            "--committee-energy",
            metavar="FILE",
            help="extras file of committee_energy_std (eV), e.g. sim.uncE_0",
        )
        c.add_argument(
            "--rotational",
            metavar="FILE",
            help="extras file of force_spread_rms (eV/Å; served with averaging, e.g. unix:NAME=2i): the "
            "rotational spread compared with the committee's",
        )
        c.add_argument(
            "--worst",
            type=int,
            default=DEFAULT_WORST,
            metavar="K",
            help="frames with the largest max_i sigma_i tabulated per atom (default %(default)s)",
        )


def _bead(beads):
    """--bead as the bead whose extras files are read: None for the centroid."""
    if beads is None:
        return 0
    if beads in ("centroid", "all"):
        return None
    try:
        return int(beads)
    except ValueError:
        raise AnalysisInputError(f"bad --bead {beads!r}: give centroid or a bead index K") from None


def _charges(items):
    if not items:
        return None
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        try:
            if not sep:
                raise ValueError
            out[k.strip()] = float(v)
        except ValueError:
            raise AnalysisInputError(
                f"bad --charges item {it!r}: write ELEMENT=CHARGE, e.g. O=-0.8476 H=0.4238"
            ) from None
    return out


def _options(args, dt_ps):
    from .commands import Options

    if args.blocks < 1:
        raise AnalysisInputError("--blocks must be at least 1")
    return Options(
        out=args.out,
        n_blocks=args.blocks,
        dt_ps=dt_ps,
        start=args.start,
        stop=args.stop,
        step=args.step,
        verbose=not args.quiet,
        workers=max(1, args.workers),
        rmax=args.rmax,
        nbins=args.nbins,
        references=args.reference,
        msd_group=args.msd_group,
        fit_window=tuple(args.fit_window) if args.fit_window else None,
        viscosity=args.viscosity,
        temperature=args.temperature,
        charges=_charges(args.charges),
        properties=args.properties,
        v_raw=args.v_raw,
        v_avg=args.v_avg,
        n_molecules=args.n_molecules,
        velocities=args.velocities,
        forces=args.forces,
        committee_forces=args.committee_forces,
        committee_energy=args.committee_energy,
        rotational=args.rotational,
        n_worst=args.worst,
        bead=_bead(args.beads),
    )


def run(args) -> dict:
    """Run the command in ``args``.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`build_parser` (the analyses themselves take
        :class:`mlip_server.analysis.commands.Options`).

    Returns
    -------
    dict
        Analysis name -> the summary it wrote.
    """
    from . import output
    from .commands import UNIVERSE_COMMANDS, every_analysis, input_info
    from .commands.symmetry import symmetry
    from .commands.uncertainty import uncertainty
    from .readers import load_universe

    if args.box is not None and len(args.box) not in (3, 6):
        raise AnalysisInputError(
            f"--box takes 3 or 6 numbers, got {len(args.box)}: give a b c [alpha beta gamma]"
        )
    if args.beads == "all" and args.command != "rdf":
        raise AnalysisInputError(
            "--bead all (every bead's frames) is for g(r): run mlip-analyse rdf, or use --bead centroid "
            f"or --bead K for {args.command}"
        )
    if args.timestep is not None and args.timestep <= 0:
        raise AnalysisInputError("--frame-interval must be positive (fs between stored frames)")
    for ref in args.reference:
        from .reference import parse_spec

        if not os.path.isfile(parse_spec(ref)[0]):
            raise AnalysisInputError(f"no such reference file: {parse_spec(ref)[0]}: check --reference")
    if os.path.isdir(args.traj):  # a run folder: its (bead-0 or centroid) positions, else sim.out
        from .run_folder import find_run_files

        files = find_run_files(args.traj)
        args.traj = files.positions or files.require("properties")
        print(f"mlip-analyse: reading {args.traj}", file=sys.stderr)
    if not os.path.isfile(args.traj):
        raise AnalysisInputError(f"no such file: {args.traj}: check the path")

    def load(path, velocities=None, forces=None):
        return load_universe(
            path,
            fmt=args.format,
            box=args.box,
            types=args.types,
            beads=args.beads,
            timestep_fs=args.timestep,
            velocities=velocities,
            forces=forces,
        )

    results = {}
    if args.command == "symmetry":
        opt = _options(args, args.timestep / 1000.0 if args.timestep else None)
        results["symmetry"] = symmetry(args.traj, opt, load)
        _report(opt.out, results)
        return results
    if args.command == "uncertainty":
        opt = _options(args, args.timestep / 1000.0 if args.timestep else None)
        results["uncertainty"] = uncertainty(args.traj, opt, load)
        _report(opt.out, results)
        return results

    u = load(args.traj)
    frames = len(range(*slice(args.start, args.stop, args.step).indices(u.trajectory.n_frames)))
    dt_ps = args.timestep / 1000.0 if args.timestep else getattr(u, "_mlip_dt_ps", None)
    opt = _options(args, dt_ps)
    info = input_info(u, args.traj, args.format, dt_ps, args.beads)

    if args.command == "all":
        results.update(
            every_analysis(
                u,
                args.traj,
                opt,
                load,
                symmetry_inputs=bool(args.properties or args.velocities or args.forces),
            )
        )
    else:
        results[args.command] = UNIVERSE_COMMANDS[args.command](u, opt)
    output.update_summary(opt.out, "input", info)
    _report(opt.out, results)
    if frames < args.blocks:
        print(
            f"mlip-analyse: warning: {frames} frame(s) for {args.blocks} blocks: the block error bars "
            f"need a frame per block at least (give --blocks {max(1, frames)} or a longer trajectory)",
            file=sys.stderr,
        )
    return results


def _report(out, results):
    for name in results:
        print(f"{name}: written to {out}/ (summary.json section '{name}')")


def main(argv=None) -> int:
    """Entry point of ``mlip-analyse``; returns the exit status (2 on bad input)."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="MDAnalysis")
    try:
        run(args)
    except AnalysisInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. output folder not writable
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}: check the path and permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
