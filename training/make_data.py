"""``make training-data``: configurations from i-PI runs with the reference potential, labelled by it.

Runs several i-PI simulations in parallel (:func:`mlip_server.ipi.launcher.run_many`) with the teacher model
(the published revPBE0-D3 Behler–Parrinello water potential, ``make teacher``) served by
``mlip-server``: liquid water (64 molecules) at 250–400 K, path-integral liquid (bead
configurations), proton-disordered ice cells, a gas-phase molecule at high temperature and
small clusters in a large box. After ``--minutes`` each run is stopped cleanly, its frames
are collected and re-labelled by the teacher in float64 (energy eV, forces eV/Å), and
written as extended XYZ: ``OUT/train.extxyz``, ``OUT/val.extxyz`` (10 % of the frames of each
run, chosen at random) and ``OUT/provenance.json``. The 190 DFT frames are never used.

    python -m mlip_server.training.make_data --teacher models/local/bpnnp-revpbe0d3.pt --out training/data \\
        --minutes 30 [--device cuda] [--ice-dir ../shared/data/structures/ice]

Two more families, added to an existing set with ``--append``: active learning
(``--explore-model M``: liquid runs driven by a trained model, e.g. one that collapses, labelled by
the teacher) and distorted copies of the liquid frames (``--perturb N``: compressed up to 1.3× the
density and randomly displaced; with ``--close-pairs K`` also K O–O contacts of 1.75–2.4 Å per
frame). Frames with a teacher force component above ``--max-force`` (25 eV/Å, the largest in the
DFT test frames) are dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mlip_server.paths import checkout_root

__all__ = ["plan", "simulate", "collect", "label", "perturbed", "main", "PIMD_STATES", "EXPLORE_STATES"]


def _cluster(n_molecules: int, seed: int):
    """n molecules cut from a liquid box around its first oxygen, in a 30 Å box."""
    from mlip_server.structures import water_box

    box = water_box(max(8, n_molecules), seed=seed)
    oxygens = np.flatnonzero(box.numbers == 8)
    d = box.get_distances(oxygens[0], oxygens, mic=True)
    keep = np.concatenate([[o, o + 1, o + 2] for o in oxygens[np.argsort(d)[:n_molecules]]])
    cluster = box[keep]
    # unwrap each oxygen next to the first one and each H next to its own oxygen, so that
    # no molecule is split by the periodic boundary, then centre it in a large box
    cell, inv = box.cell[:], np.linalg.inv(box.cell[:])

    def nearest(vec):
        return vec - np.round(vec @ inv) @ cell

    pos = cluster.positions.copy()
    for m in range(0, len(pos), 3):
        pos[m] = pos[0] + nearest(pos[m] - pos[0])
        pos[m + 1 : m + 3] = pos[m] + nearest(pos[m + 1 : m + 3] - pos[m])
    cluster.positions = pos - pos.mean(axis=0) + 15.0
    cluster.cell, cluster.pbc = [30.0, 30.0, 30.0], True
    return cluster


def plan(args, work: Path) -> list[dict]:
    """The simulations.

    Parameters
    ----------
    args : argparse.Namespace
        The command line of :func:`main`.
    work : Path
        Folder for the starting structures written here (and the runs).

    Returns
    -------
    list of dict
        Per simulation: ``name``, ``experiment`` (of ``ipi_inputs/``), ``options`` (keywords of
        :func:`mlip_server.ipi.launcher.run_experiment`: ``temperature`` K, ``timestep`` fs, ...), and
        optionally ``model``, ``dtype``, ``stride``, ``steps`` that replace the defaults of
        :func:`simulate`; ``beads`` of path-integral runs.
    """
    runs = []
    for k, temperature in enumerate((250, 300, 350, 400)):
        runs.append(
            {
                "name": f"liquid-{temperature}K",
                "experiment": "water-nvt",
                "options": {"molecules": 64, "temperature": float(temperature), "seed": k},
            }
        )
    runs.append(
        {
            "name": "liquid-128-320K",
            "experiment": "water-nvt",
            "options": {"molecules": 128, "temperature": 320.0, "seed": 7},
        }
    )
    if args.liquid:
        runs.append(
            {
                "name": "liquid512-300K",
                "experiment": "water-nvt",
                "options": {"structure": str(args.liquid), "temperature": 300.0, "seed": 8},
            }
        )
    # path-integral liquid over a range of densities and temperatures: bead configurations have
    # the quantum O-H spread (and forces of ~2 eV/Å rms) that the DFT test frames show; every bead
    # is a training frame
    for k, (temperature, density) in enumerate(PIMD_STATES):
        start = _liquid_start(work, density, seed=50 + k, source=args.liquid_frames)
        runs.append(
            {
                "name": f"pimd-{temperature}K-d{density:.2f}",
                "experiment": "water-pimd",
                "beads": 8,
                "options": {
                    "structure": str(start),
                    "beads": 8,
                    "timestep": 0.4,
                    "temperature": float(temperature),
                    "seed": 11 + k,
                },
            }
        )
    if args.ice_dir:
        for k, name in enumerate(("ice_ih_disordered_02.xyz", "ice_ih_disordered_03.xyz")):
            path = Path(args.ice_dir) / name
            if path.exists():
                runs.append(
                    {
                        "name": f"ice-{k}-250K",
                        "experiment": "water-nvt",
                        "options": {"structure": str(path), "temperature": 250.0, "seed": 20 + k},
                    }
                )
    for n, temperature in ((4, 300), (8, 350)):
        path = work / f"cluster{n}.extxyz"
        _cluster(n, seed=n).write(path)
        runs.append(
            {
                "name": f"cluster{n}-{temperature}K",
                "experiment": "water-nvt",
                "options": {"structure": str(path), "temperature": float(temperature), "seed": 30 + n},
            }
        )
    runs.append(
        {
            "name": "molecule-600K",
            "experiment": "water-nvt",
            "options": {"structure": str(_molecule(work)), "temperature": 600.0, "seed": 40},
        }
    )
    if args.explore_model:
        # active learning: MD driven by a trained model (which may fail, e.g. molecules collapsing),
        # its configurations labelled by the teacher, so the next model learns where it went wrong
        for k, (temperature, density) in enumerate(EXPLORE_STATES):
            start = _liquid_start(work, density, seed=70 + k, source=args.liquid_frames)
            runs.append(
                {
                    "name": f"explore-{temperature}K-d{density:.2f}",
                    "experiment": "water-nvt",
                    "model": args.explore_model,
                    "dtype": "float32",
                    "stride": args.explore_stride,
                    "steps": args.explore_steps,
                    "options": {"structure": str(start), "temperature": float(temperature), "seed": 80 + k},
                }
            )
    return runs


EXPLORE_STATES = ((300, 1.00), (350, 0.95), (400, 1.05), (300, 1.15))
"""(temperature K, density g/cm³) of the active-learning runs driven by ``--explore-model``."""


def perturbed(
    source: str,
    n_frames: int,
    seed: int,
    max_sigma: float = 0.12,
    max_compression: float = 1.3,
    close_pairs: int = 0,
    close_range: tuple = (1.75, 2.4),
):
    """``n_frames`` distorted copies of the periodic 192-atom frames of ``source`` (unlabelled).

    Each copy has its molecule centres scaled to a density up to ``max_compression`` times the
    original (molecules moved rigidly with their oxygen, so O–O contacts shorten) and every atom
    displaced by Gaussian noise of a standard deviation drawn uniformly in [0, ``max_sigma``] Å:
    the short O–O distances and stretched O–H bonds that MD never visits but a model must see
    to learn the repulsive wall (the DFT test frames reach O–O 1.45 Å, O–H ±0.13 Å). With
    ``close_pairs`` > 0, that many molecules of each copy are also moved rigidly towards their
    nearest oxygen neighbour until the O–O distance is uniform in ``close_range`` (Å): the contacts
    through which a model without such data collapses."""
    import ase.io

    rng = np.random.default_rng(seed)
    frames = [a for a in ase.io.read(source, index=":") if len(a) == 192 and a.pbc.all()]
    if not frames:
        raise ValueError(f"{source}: no periodic 192-atom frames to perturb")
    out = []
    for k in rng.integers(len(frames), size=n_frames):
        # linear factor of a density increase up to max_compression
        atoms = _compressed(frames[k], rng.uniform(1.0, max_compression) ** (1 / 3))
        pos = atoms.positions  # the array itself: the close-pair distances below see each move
        oxygens = np.flatnonzero(atoms.numbers == 8)
        for o in rng.choice(oxygens, size=min(close_pairs, len(oxygens)), replace=False):
            d = atoms.get_distances(o, oxygens, mic=True, vector=True)
            r = np.linalg.norm(d, axis=1)
            r[oxygens == o] = np.inf
            near = int(np.argmin(r))
            pos[o : o + 3] += d[near] * (
                1 - rng.uniform(*close_range) / r[near]
            )  # slide along the O–O vector
        pos += rng.normal(scale=rng.uniform(0.0, max_sigma), size=pos.shape)
        atoms.positions = pos
        out.append(atoms)
    return out


PIMD_STATES = ((300, 1.00), (300, 0.85), (350, 1.15), (400, 0.75), (300, 1.20))
"""(temperature K, density g/cm³) of the path-integral runs: the DFT frames span 24–43 Å³ per molecule."""


def _liquid_start(work: Path, density: float, seed: int, source: str | None) -> Path:
    """A 64-molecule liquid at ``density`` g/cm³: a frame of ``source`` (teacher-equilibrated liquid,
    e.g. an earlier training set) with its molecule centres scaled to the density, else a new box."""
    import ase.io

    from mlip_server.structures import AVOGADRO, WATER_MASS, water_box

    path = work / f"start-d{density:.2f}-{seed}.extxyz"
    frames = []
    if source and Path(source).is_file():
        frames = [
            a
            for a in ase.io.read(source, index=":")
            if len(a) == 192 and str(a.info.get("source", "")).startswith("liquid")
        ]
    if not frames:
        water_box(64, density=density, seed=seed).write(path)
        return path
    atoms = frames[np.random.default_rng(seed).integers(len(frames))]
    scale = (atoms.get_volume() / (64 * WATER_MASS / AVOGADRO / density * 1e24)) ** (1 / 3)
    _compressed(atoms, scale).write(path)
    return path


def _compressed(atoms, scale: float):
    """An unlabelled copy of water ``atoms`` (O,H,H per molecule) with the cell and the molecule
    centres divided by the linear factor ``scale``: each molecule moves rigidly with its oxygen."""
    atoms = atoms.copy()
    pos = atoms.positions
    for m in range(0, len(atoms), 3):
        pos[m : m + 3] += pos[m] * (1 / scale - 1)
    atoms.positions = pos
    atoms.set_cell(atoms.cell[:] / scale)
    atoms.info.clear()
    atoms.arrays.pop("forces", None)
    return atoms


def _molecule(work: Path) -> Path:
    from mlip_server.structures import water_molecule

    mol = water_molecule(center=(15.0, 15.0, 15.0))
    mol.cell, mol.pbc = [30.0, 30.0, 30.0], True
    path = work / "molecule.extxyz"
    mol.write(path)
    return path


def simulate(args, work: Path) -> list[dict]:
    """Runs the simulations of :func:`plan` at once for ``args.minutes``, then stops them cleanly.

    Parameters
    ----------
    args : argparse.Namespace
        The command line of :func:`main` (``teacher``, ``device``, ``stride``, ``minutes``, ``only``).
    work : Path
        Parent of the run folders ``work/NAME`` (and their progress logs ``work/NAME.log``).

    Returns
    -------
    list of dict
        The runs of :func:`plan`, each with ``launcher_exit``: 0 finished, 130 stopped at the
        deadline (outputs kept), 1 failed, 2 refused before it started.
    """
    from mlip_server.ipi.launcher import run_many

    runs = plan(args, work)
    if args.only:
        wanted = set(args.only.split(","))
        runs = [r for r in runs if any(r["name"].startswith(w) for w in wanted)]
    jobs = {}
    for run in runs:
        jobs[run["name"]] = {
            "experiment": run["experiment"],
            "model": str(Path(run.get("model", args.teacher)).resolve()),
            "steps": int(run.get("steps", 10000000)),
            "stride": int(run.get("stride", args.stride)),
            "device": args.device,
            "dtype": run.get("dtype", "float64"),
            "out": str(work / run["name"]),
            **run["options"],
        }
    print(
        f"make_data: {len(runs)} simulations for {args.minutes} min: " + ", ".join(r["name"] for r in runs),
        flush=True,
    )
    results = run_many(jobs, deadline=60 * args.minutes, logs=work)
    for run in runs:
        result = results.get(run["name"])  # none: the run raised (its traceback is printed above)
        run["launcher_exit"] = result.code if result else 1
        if result and result.code not in (0, 130):
            run["launcher_message"] = result.message
    return runs


def collect(runs, work: Path, skip: int, max_frames: int | None = None):
    """Frames of each run (the first ``skip`` output frames are equilibration and dropped;
    at most ``max_frames`` per run, evenly spaced, so cheap small systems do not dominate)."""
    import ase.io

    frames = {}
    for run in runs:
        paths = sorted((work / run["name"]).glob("sim.pos_*.extxyz"))  # one file per bead
        if not paths:
            run["frames"] = 0
            continue
        elements = ase.io.read(work / run["name"] / "init.xyz", index=0)
        atoms = []
        for path in paths:
            try:
                bead = ase.io.read(path, index=":")
            except Exception:  # a frame cut by the stop: read the complete ones
                bead = _read_complete(path)
            for a in bead:
                a.numbers = elements.numbers
                a.pbc = True
            atoms += bead[skip:]
        if max_frames and len(atoms) > max_frames:
            atoms = [atoms[int(k)] for k in np.linspace(0, len(atoms) - 1, max_frames)]
        frames[run["name"]] = atoms
        run["frames"] = len(frames[run["name"]])
    return frames


def _read_complete(path):
    import io

    import ase.io

    text = path.read_text().splitlines(keepends=True)
    out, i = [], 0
    while i < len(text):
        n = int(text[i])
        if i + 2 + n > len(text):
            break
        out.append(ase.io.read(io.StringIO("".join(text[i : i + 2 + n])), format="extxyz"))
        i += 2 + n
    return out


def label(frames: dict, teacher: str, device: str, batch: int):
    """Energies and forces of the teacher (float64) stored in the Atoms (info/arrays)."""
    from mlip_server.core.evaluator import Structure
    from mlip_server.loading import load_evaluator

    ev = load_evaluator(teacher, device=device, dtype="float64")
    for name, atoms in frames.items():
        for start in range(0, len(atoms), batch):
            chunk = atoms[start : start + batch]
            for a, r in zip(chunk, ev.compute([Structure.from_ase(a) for a in chunk])):
                a.info.clear()
                a.info["energy"] = r.energy
                a.info["source"] = name
                a.arrays["forces"] = r.forces


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = checkout_root()
    p.add_argument("--teacher", default=str(root / "models" / "local" / "bpnnp-revpbe0d3.pt"))
    p.add_argument("--out", default=str(root / "training" / "data"))
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--stride", type=int, default=20, help="MD steps between saved frames")
    p.add_argument("--skip", type=int, default=5, help="saved frames dropped at the start of each run")
    p.add_argument("--ice-dir", default=str(root.parent / "shared" / "data" / "structures" / "ice"))
    p.add_argument(
        "--liquid",
        default=str(root.parent / "shared" / "data" / "structures" / "water_512.xyz"),
        help="an equilibrated liquid box to start one more run from (skipped if missing)",
    )
    p.add_argument("--max-frames", type=int, default=400, help="frames kept per simulation (evenly spaced)")
    p.add_argument("--only", help="comma-separated names (or name prefixes) of the simulations to run")
    p.add_argument(
        "--append",
        action="store_true",
        help="add the new frames to an existing OUT/train.extxyz and val.extxyz instead of replacing them",
    )
    p.add_argument(
        "--liquid-frames",
        default=str(root / "training" / "data" / "train.extxyz"),
        help="extended XYZ with 64-molecule liquid frames to start the path-integral runs from "
        "(rescaled to each density); a fresh water box when missing",
    )
    p.add_argument(
        "--explore-model",
        help="a trained model to drive extra liquid runs whose configurations the "
        "teacher labels (active learning; names explore-*)",
    )
    p.add_argument("--explore-steps", type=int, default=2000, help="MD steps of each exploration run")
    p.add_argument("--explore-stride", type=int, default=5)
    p.add_argument(
        "--perturb",
        type=int,
        default=0,
        help="add this many compressed and randomly displaced copies of --liquid-frames (name perturbed)",
    )
    p.add_argument(
        "--max-sigma", type=float, default=0.12, help="Å, largest random displacement of --perturb"
    )
    p.add_argument(
        "--close-pairs",
        type=int,
        default=0,
        help="--perturb also slides this many molecules per frame to an O–O contact of 1.75–2.4 Å "
        "(name close-contacts)",
    )
    p.add_argument(
        "--max-force",
        type=float,
        default=25.0,
        help="eV/Å: frames with a larger teacher force component are dropped",
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import ase.io

    if args.liquid and not Path(args.liquid).is_file():
        args.liquid = None
    if not Path(args.teacher).is_file():
        print(
            f"make_data: error: teacher model {args.teacher} not found: run `make teacher` first",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs = simulate(args, work)
    frames = collect(runs, work, args.skip, args.max_frames)
    if args.perturb:
        name = "close-contacts" if args.close_pairs else "perturbed"
        frames[name] = perturbed(
            args.liquid_frames,
            args.perturb,
            seed=args.seed,
            max_sigma=args.max_sigma,
            close_pairs=args.close_pairs,
        )
        runs.append(
            {
                "name": name,
                "frames": args.perturb,
                "source": str(args.liquid_frames),
                "max_sigma": args.max_sigma,
                "close_pairs": args.close_pairs,
            }
        )
    label(frames, args.teacher, args.device, batch=16)
    for run in runs:  # an exploring model can reach overlapping atoms: forces there only swamp the loss
        labelled = frames.get(run["name"], [])
        kept = [a for a in labelled if np.abs(a.arrays["forces"]).max() <= args.max_force]
        run["dropped_max_force"] = len(labelled) - len(kept)
        if labelled:
            frames[run["name"]] = kept
    rng = np.random.default_rng(args.seed)
    train, val = [], []
    for name, atoms in frames.items():
        is_val = rng.random(len(atoms)) < args.val_fraction
        train += [a for a, v in zip(atoms, is_val) if not v]
        val += [a for a, v in zip(atoms, is_val) if v]
    previous = {}
    if args.append and (out / "train.extxyz").is_file():
        train = ase.io.read(out / "train.extxyz", index=":") + train
        val = ase.io.read(out / "val.extxyz", index=":") + val
        if (out / "provenance.json").is_file():
            previous = json.loads((out / "provenance.json").read_text())
    ase.io.write(out / "train.extxyz", train, format="extxyz")
    ase.io.write(out / "val.extxyz", val, format="extxyz")
    provenance = {
        "previous": previous,
        "teacher": str(args.teacher),
        "device": args.device,
        "minutes": args.minutes,
        "stride": args.stride,
        "skip": args.skip,
        "runs": runs,
        "n_train": len(train),
        "n_val": len(val),
        "wall_s": time.time() - t0,
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2))
    print(f"make_data: {len(train)} training and {len(val)} validation frames in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
