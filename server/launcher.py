"""``mlip-run``: one command per i-PI experiment, correct by construction.

    mlip-run water-nvt --model models/water-pet.pt --steps 2000
    mlip-run water-nvt-mts --average 2i --molecules 128
    mlip-run water-pimd --beads 8
    mlip-run ice-geop --structure ice.xyz --average 2i
    mlip-run replay --trajectory runs/water-nvt-.../sim.pos_0.extxyz --specs none,i,2,2i,3i
    mlip-run water-nvt --restart runs/water-nvt-20261127-101500

Each experiment is a folder ``ipi_inputs/NAME`` with ``input.xml`` (a ``string.Template``
with ``$steps``, ``$temperature``, ``$address_<endpoint>``, ...), ``experiment.json``
(defaults, structure kind, endpoints and their averaging specs) and a README. The launcher
renders the input into a fresh run folder, writes the starting structure, starts i-PI,
waits until its sockets exist, starts one mlip-server for all endpoints, prints progress,
and on exit, error or Ctrl-C stops everything it started and removes its sockets. Socket
names are unique per run (``mlip-<PID>-<random>-<endpoint>``): concurrent runs never collide.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import string
import sys
import time
from pathlib import Path

from . import processes
from .errors import InputError, MLIPError
from .ipi_sim_files import write_ipi_xyz

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "ipi_inputs"
SHIPPED_MODEL = ROOT / "models" / "water-pet.pt"


def experiments() -> list[str]:
    return sorted(p.name for p in EXPERIMENTS.iterdir() if (p / "experiment.json").exists())


def load_experiment(name: str) -> tuple[dict, str]:
    folder = EXPERIMENTS / name
    if not (folder / "experiment.json").exists():
        raise InputError(f"unknown experiment {name!r}: choose one of {', '.join(experiments())}")
    return json.loads((folder / "experiment.json").read_text()), (folder / "input.xml").read_text()


def _starting_structure(meta, args, out: Path):
    """Writes init.xyz (or the replay files) into ``out``; returns the element source file."""
    from training.structures import water_box, water_molecule

    kind = meta["structure"]["kind"]
    if args.structure:
        import ase.io

        if not Path(args.structure).is_file():
            raise InputError(f"structure file {args.structure!r} not found")
        atoms = ase.io.read(args.structure, index=0)
        if not atoms.cell.any():
            raise InputError(f"{args.structure} has no cell: give a periodic structure (or --molecules)")
    elif kind == "water_box":
        atoms = water_box(args.molecules or meta["structure"]["molecules"], density=args.density, seed=args.seed)
    elif kind == "molecule":
        atoms = water_molecule(center=(50.0, 50.0, 50.0))
        atoms.cell, atoms.pbc = [100.0, 100.0, 100.0], True
    elif kind == "file":
        raise InputError("this experiment needs --structure FILE (e.g. an ice cell in extended XYZ)")
    elif kind == "trajectory":
        return _replay_files(args, out)
    else:  # pragma: no cover - guarded by the experiment files
        raise InputError(f"unknown structure kind {kind!r}")
    write_ipi_xyz(atoms, out / "init.xyz")
    return "init.xyz"


def _replay_files(args, out: Path) -> str:
    import ase.io

    if not args.trajectory or not Path(args.trajectory).is_file():
        raise InputError("replay needs --trajectory FILE (any ASE-readable trajectory with the cell)")
    frames = ase.io.read(args.trajectory, index=":")
    if not frames[0].cell.any():
        raise InputError(f"{args.trajectory} carries no cell: replay needs a format with the cell (extxyz, ...)")
    for a in frames:
        a.info.clear()
    ase.io.write(out / "trajectory.extxyz", frames, format="extxyz")
    ase.io.write(out / "init.extxyz", frames[0], format="extxyz")
    # i-PI evaluates the initial structure (frame 0) at step 0 and frame k-1 at step k
    args.steps = len(frames) if args.steps is None else args.steps
    return "init.extxyz"


def render(name: str, args, out: Path, run_id: str) -> tuple[str, dict, list, dict]:
    """Renders ``input.xml``; returns (xml, endpoint → spec, server args, experiment metadata)."""
    meta, template = load_experiment(name)
    values = {k: str(v) for k, v in meta["defaults"].items()}
    for key in ("steps", "temperature", "timestep", "beads", "nmts", "pressure", "stride", "seed"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = str(value)
    values.setdefault("seed", str(args.seed))
    for key in args.set or []:
        k, sep, v = key.partition("=")
        if not sep:
            raise InputError(f"--set {key!r}: use --set NAME=VALUE")
        values[k] = v
    if meta["endpoints"] == "specs":  # replay: one endpoint per averaging level
        specs = (args.specs or values["specs"]).split(",")
        endpoints = {f"ff{k}": spec.strip() for k, spec in enumerate(specs)}
        values["forcefields"] = "\n".join(
            f"  <ffsocket name='{e}' mode='unix' pbc='false'><address>$address_{e}</address>"
            "<latency>1e-4</latency></ffsocket>" for e in endpoints)
        values["forces"] = "\n".join(f"      <force forcefield='{e}' weight='{1 if k == 0 else 0}'/>"
                                     for k, e in enumerate(endpoints))
        values["pot_columns"] = ", ".join(f"pot_component_raw({k}){{electronvolt}}" for k in range(len(endpoints)))
        template = string.Template(template).safe_substitute(values)
    else:
        endpoints = {e: (args.average if spec == "$average" else spec) for e, spec in meta["endpoints"].items()}
        if args.average != "none" and "avg" in endpoints:
            endpoints["avg"] = args.average
    for e in endpoints:
        values[f"address_{e}"] = f"{run_id}-{e}"
    try:
        xml = string.Template(template).substitute(values)
    except KeyError as err:
        raise InputError(f"experiment {name}: template needs a value for {err}: pass --set {err.args[0]}=VALUE") from None
    return xml, endpoints, list(meta.get("server_args", [])), meta


def _restart(args, out: Path, run_id: str) -> tuple[str, dict]:
    """Rewrites the RESTART of a previous run with fresh socket names."""
    old = Path(args.restart)
    text = (old / "RESTART").read_text() if (old / "RESTART").exists() else None
    if text is None:
        raise InputError(f"no RESTART file in {old}: pass the folder of a run that wrote checkpoints")
    endpoints = json.loads((old / "endpoints.json").read_text())
    for e in endpoints:
        text = re.sub(r"(<ffsocket[^>]*name=['\"]%s['\"][^>]*>.*?<address>)\s*[^<]*(</address>)" % re.escape(e),
                      r"\g<1>%s-%s\g<2>" % (run_id, e), text, flags=re.S)
    if args.steps is not None:  # extend (or shorten) the run: total steps counted from the start
        text = re.sub(r"<total_steps>\s*\d+\s*</total_steps>", f"<total_steps>{args.steps}</total_steps>", text)
    for f in ("init.xyz", "init.extxyz", "trajectory.extxyz"):
        if (old / f).exists():
            shutil.copy(old / f, out / f)
    return text, endpoints


def run(args) -> int:
    meta = load_experiment(args.experiment)[0]  # refuses an unknown experiment before any output
    run_id = processes.unique_name("mlip")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or ROOT / "runs" / f"{args.experiment}-{stamp}-{run_id.rsplit('-', 1)[-1]}")
    out.mkdir(parents=True, exist_ok=False)
    model = Path(args.model or SHIPPED_MODEL)
    if not model.is_file():
        raise InputError(f"model {model} not found: pass --model PATH (a TorchScript model file)")
    if args.restart:
        xml, endpoints = _restart(args, out, run_id)
        server_args = list(meta.get("server_args", []))
        (out / "RESTART.in").write_text(xml)
        xml_name = "RESTART.in"
        element_file = "init.xyz" if (out / "init.xyz").exists() else "init.extxyz"
    else:
        element_file = _starting_structure(meta, args, out)
        xml, endpoints, server_args, _ = render(args.experiment, args, out, run_id)
        (out / "input.xml").write_text(xml)
        xml_name = "input.xml"
    (out / "endpoints.json").write_text(json.dumps(endpoints))
    connections = 1
    if meta.get("connections") == "beads":
        connections = int(re.search(r"nbeads=['\"](\d+)['\"]", xml).group(1))
    addresses = []
    for e, spec in endpoints.items():
        n = connections if e == "raw" else 1
        addresses += [f"unix:{run_id}-{e}={spec}"] * n
    server_args += ["--device", args.device, "--dtype", args.dtype]
    sockets = [f"{run_id}-{e}" for e in endpoints]
    print(f"mlip-run: {args.experiment} in {out}\n  endpoints: " +
          ", ".join(f"{e} ({spec})" for e, spec in endpoints.items()) + f"; {len(addresses)} connection(s)")
    ipi = server = None
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    # SIGINT too: a parent shell may have started us with SIGINT ignored (background jobs)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        ipi = processes.start_ipi(xml_name, out)
        for s in sockets:
            processes.wait_for_socket(s, ipi, timeout=120)
        server = processes.start_server(model.resolve(), element_file, addresses, out, extra=server_args)
        codes = _follow(ipi, server, out, args.progress)
    except KeyboardInterrupt:
        print("mlip-run: interrupted: stopping i-PI and the server", file=sys.stderr)
        return 130
    finally:
        processes.stop([ipi, server], sockets)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if codes != [0, 0]:
        print(f"mlip-run: failed (i-PI exit {codes[0]}, server exit {codes[1]}): see {out}/ipi.log and "
              f"{out}/server.log", file=sys.stderr)
        tail = (out / "server.log").read_text().strip().splitlines()[-1:] if (out / "server.log").exists() else []
        for line in tail:
            print("  server: " + line, file=sys.stderr)
        return 1
    print(f"mlip-run: done; outputs in {out}: " + ", ".join(meta.get("outputs", [])))
    return 0


def _follow(ipi, server, out: Path, every: float) -> list[int]:
    """Waits for both processes, printing i-PI's latest step every ``every`` s. If one of
    them fails, the other is stopped (nothing waits on a dead peer)."""
    last = time.monotonic()
    while True:
        codes = [ipi.poll(), server.poll()]
        if None not in codes:
            return codes
        if any(c not in (None, 0) for c in codes):
            processes.stop([ipi, server], grace=10)
            return [ipi.poll(), server.poll()]
        if codes[0] == 0 and codes[1] is None:  # i-PI done; the server exits on EXIT
            try:
                server.wait(timeout=30)
            except Exception:
                processes.stop([server])
            continue
        if every > 0 and time.monotonic() - last > every:
            last = time.monotonic()
            props = out / "sim.out"
            if props.exists():
                lines = [l for l in props.read_text().splitlines() if l.strip() and not l.startswith("#")]
                if lines:
                    print(f"  step {int(float(lines[-1].split()[0]))}", flush=True)
        time.sleep(0.2)


def build_parser():
    p = argparse.ArgumentParser(prog="mlip-run", description=__doc__.split("\n\n")[0],
                                epilog="experiments: " + ", ".join(experiments()))
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
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="any other template value")
    p.add_argument("--restart", metavar="RUN_DIR", help="continue a previous run from its RESTART file")
    p.add_argument("--out", help="run folder (default runs/EXPERIMENT-DATE-ID)")
    p.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines (0: quiet)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except MLIPError as err:
        print(f"mlip-run: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
