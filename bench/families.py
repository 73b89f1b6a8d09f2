"""The model families through our server vs each family's own route, side by side.

For one small real model of each family, built by ``make families`` (``.families/FAMILY/build``:
MACE float32, NequIP float64 TorchScript, metatrain's PET float32 export), the median time of one
energy + forces + stress call on the same structures (192 and 1536 water atoms, CPU), measured
interleaved (ours, theirs, ours, theirs):

* ours: :class:`~mlip_server.ase_calculator.MLIPCalculator` on the file the server reads (MACE's
  LAMMPS export, NequIP's ``.nequip.pth``, the metatomic file), in this venv;
* theirs: the family's own ASE calculator in the family's venv (:mod:`bench.family_timing`:
  ``MACECalculator`` on the Python model, ``NequIPCalculator`` on the same ``.nequip.pth``
  (the build's packages are compiled for batches, ``--target batch``, which its calculator cannot
  read), metatomic-ase's ``MetatomicCalculator`` on the same file);

and, for the PET, i-PI steps through ``mlip-server`` vs i-PI's own ``-m metatomic`` driver
(:mod:`bench.peers`, classical case). The goal: never slower than the family's own route.

    python -m bench.families [--families mace nequip metatrain] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.common import machine, write
from mlip_server.paths import checkout_root
from mlip_server.structures import water_box

__all__ = ["main"]

FAMILIES = ("mace", "nequip", "metatrain")
FILES = {  # family → (the file our server reads, the file the family's calculator reads)
    "mace": ("mace-a-float32-lammps.pt", "mace-a.model"),
    # the packages are compiled for batches (--target batch), which NequIPCalculator cannot read:
    # both sides read the float64 TorchScript deploy file
    "nequip": ("nequip-f64.nequip.pth", "nequip-f64.nequip.pth"),
    "metatrain": ("pet32.pt", "pet32.pt"),
}


def _structures(folder: Path) -> list[Path]:
    """192 and 1536 water atoms (the shipped DFT frame and 512-molecule liquid when
    ``../shared/data`` is there, else water boxes) as extended XYZ files."""
    import ase.io

    shared = checkout_root().parent / "shared" / "data"
    small = shared / "dft" / "water_revpbe0d3_190.xyz"
    large = shared / "structures" / "water_512.xyz"
    boxes = [
        ase.io.read(small, 0) if small.exists() else water_box(64, seed=1),
        ase.io.read(large) if large.exists() else water_box(512, seed=2),
    ]
    paths = []
    for atoms in boxes:
        path = folder / f"water-{len(atoms)}.extxyz"
        atoms.calc = None
        ase.io.write(path, atoms)
        paths.append(path)
    return paths


def _ours(model: str, structures, repeats: int, threads: int) -> dict:
    import ase.io
    import torch

    from bench.family_timing import median_call_seconds
    from mlip_server.ase_calculator import MLIPCalculator

    torch.set_num_threads(threads)
    calc = MLIPCalculator(model=model)
    return {str(path): median_call_seconds(ase.io.read(path), calc, repeats) for path in structures}


def _envs():
    """tests/families/envs.py (the family venvs and builds), importable from the benchmarks."""
    tests = str(checkout_root() / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from families import envs

    return envs


def _theirs(family: str, model: str, structures, repeats: int, threads: int) -> dict:
    script = Path(__file__).with_name("family_timing.py")  # absolute: run_in takes it as it is
    args = [family, model, *structures, "--repeats", repeats, "--threads", threads]
    done = _envs().run_in(family, str(script), *args)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per structure (median)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (best of)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ipi", action="store_true", help="leave out the i-PI comparison of the PET")
    p.add_argument("--ipi-repeats", type=int, default=4, help="interleaved i-PI runs per side (best of)")
    args = p.parse_args(argv)
    envs = _envs()

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mlip-families-"))
    try:
        structures = _structures(work)
        rows = {}
        for family in args.families:
            build = envs.built(family)
            ours_file, theirs_file = (str(build / name) for name in FILES[family])
            runs = {"ours": [], "theirs": []}
            for _ in range(args.rounds):
                runs["ours"].append(_ours(ours_file, structures, args.repeats, args.threads))
                runs["theirs"].append(_theirs(family, theirs_file, structures, args.repeats, args.threads))
            rows[family] = {
                path.name: {side: min(r[str(path)] for r in runs[side]) for side in runs}
                for path in structures
            }
            for name, row in rows[family].items():
                row["ratio"] = row["ours"] / row["theirs"]
                print(
                    f"{family} {name}: ours {1e3 * row['ours']:.1f} ms, theirs {1e3 * row['theirs']:.1f} ms",
                    flush=True,
                )
        ipi = None
        if "metatrain" in args.families and not args.no_ipi:  # the PET through i-PI: ours vs -m metatomic
            import ase.io

            from bench import peers
            from mlip_server.structures import write_ipi_xyz

            (work / "ipi").mkdir()
            write_ipi_xyz(ase.io.read(structures[0]), work / "ipi" / "init.xyz")
            model = str(envs.built("metatrain") / "pet32.pt")
            ipi = peers.ipi_case(work / "ipi", "classical", model, 24, 4, args.ipi_repeats, args.threads)
            ipi["ratio"] = ipi["ours"] / ipi["theirs"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = machine()
    data = {"machine": m, "load_average_1min": [load_before, os.getloadavg()[0]], "seconds_per_call": rows}
    lines = [
        "## Model families: our server vs each family's own route",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}; load average (1 min) "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {args.threads} torch threads each. One "
        "energy + forces + stress call through ASE: ours (`MLIPCalculator` on the file the server reads) vs "
        "the family's own calculator in its venv (`MACECalculator` on the Python model, nequip's "
        "`NequIPCalculator` on the same float64 TorchScript file: the packages are compiled for batches, "
        "which its calculator cannot read; metatomic-ase on the same file); median of "
        f"{args.repeats} calls, best of {args.rounds} interleaved rounds (`python -m bench.families`). "
        "Small models built by `make families` (float32; NequIP float64).",
        "",
        "| family | atoms | ours | theirs | ours / theirs |",
        "|---|---|---|---|---|",
    ]
    for family, per in rows.items():
        for name, row in per.items():
            atoms = name.split("-")[1].split(".")[0]
            lines.append(
                f"| {family} | {atoms} | {1e3 * row['ours']:.1f} ms | {1e3 * row['theirs']:.1f} ms | "
                f"**{row['ratio']:.2f}** |"
            )
    if ipi is not None:
        row = ipi
        data["ipi_classical_pet"] = row
        lines += [
            "",
            f"i-PI, classical NVT of the same 192 atoms with the PET: {1e3 * row['ours']:.1f} ms/step "
            f"through `mlip-server`, {1e3 * row['theirs']:.1f} ms/step through i-PI's `-m metatomic` "
            f"driver (ours / theirs **{row['ratio']:.2f}**). i-PI's MACE driver needs i-PI inside the "
            "MACE venv, and nequip has no i-PI driver: not compared.",
        ]
    lines.append("")
    write("families", data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
