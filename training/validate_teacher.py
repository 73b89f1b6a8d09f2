"""Validate the exported teacher against the revPBE0-D3 DFT frames, and time it.

    python -m mlip_server.training.validate_teacher --model models/local/bpnnp-revpbe0d3.pt \\
        --dft ../shared/data/dft/water_revpbe0d3_190.xyz --out models

Evaluates every frame with the project's :class:`mlip_server.core.evaluator.Evaluator` and reports

* energy: per-frame error per atom e_k = (E_pred − E_DFT)/N_atoms; its mean ("offset")
  and standard deviation ("spread"), in meV/atom (the absolute offset depends on the DFT
  reference energies of the training set, the spread is the model's accuracy);
* forces: MAE and RMSE over all components, in eV/Å, also per element;
* timings of one energy+forces call (neighbour list included) for the first DFT frame
  (192 atoms) and for ``--large`` (default: ``structures/water_512.xyz`` next to the DFT
  folder, 1536 atoms), on the chosen device.

Writes ``<out>/validation/teacher.json`` and ``<out>/VALIDATION.md``. Exits with 1 when
the acceptance limits (force RMSE ≤ 0.13 eV/Å, spread ≤ 4 meV/atom) are not met.
"""

import argparse
import datetime
import json
import os
import sys
import time

# Idle OpenMP threads sleep instead of spinning: on a shared machine, spinning threads
# of busy neighbours made a 2-thread call 50x slower (must be set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from mlip_server import machine, metrics  # noqa: E402
from mlip_server.core.errors import MLIPError  # noqa: E402
from mlip_server.core.evaluator import Evaluator, Structure  # noqa: E402
from mlip_server.loading import load_evaluator

__all__ = [
    "evaluate_frames",
    "time_structure",
    "machine_info",
    "markdown",
    "main",
    "ACCEPT_FORCE_RMSE",
    "ACCEPT_ENERGY_SPREAD",
]

ACCEPT_FORCE_RMSE = 0.13  # eV/Å
ACCEPT_ENERGY_SPREAD = 4.0  # meV/atom


def _read_frames(path: str, limit=None):
    import ase.io

    if not os.path.isfile(path):
        raise MLIPError(f"{path}: file not found: pass --dft PATH to the extended-XYZ DFT frames")
    frames = ase.io.read(path, ":")
    if limit:
        frames = frames[:limit]
    for k, atoms in enumerate(frames):
        if atoms.calc is None or "forces" not in atoms.calc.results or "energy" not in atoms.calc.results:
            raise MLIPError(
                f"{path}: frame {k} has no energy= or forces: expected extended XYZ with DFT labels"
            )
    return frames


def evaluate_frames(evaluator: Evaluator, frames) -> dict:
    """Errors of the model against DFT-labelled frames, one frame per model call.

    Parameters
    ----------
    evaluator : Evaluator
    frames : list of ase.Atoms
        With DFT energy (eV) and forces (eV/Å).

    Returns
    -------
    dict
        ``energy_*_mev_per_atom`` (offset = mean, spread = std over frames of (E_pred − E_DFT)/N,
        meV/atom), ``force_mae``, ``force_rmse`` and per-frame extremes (eV/Å), ``per_element``
        force errors (eV/Å), and the per-frame lists; the keys of ``models/validation/teacher.json``.
    """
    errs = metrics.label_errors(evaluator, frames, batch=1)
    per_atom = 1000.0 * errs.energy_per_atom  # meV/atom
    frame_rmse = errs.force_rmse_per_structure()
    return {
        "n_frames": errs.n_structures,
        "n_atoms_total": int(errs.n_atoms.sum()),
        "energy_offset_mev_per_atom": 1000.0 * errs.energy_offset_per_atom,
        "energy_spread_mev_per_atom": 1000.0 * errs.energy_spread_per_atom,
        "energy_rmse_mev_per_atom": 1000.0 * errs.energy_rmse_per_atom,
        "energy_max_abs_deviation_from_offset_mev_per_atom": 1000.0
        * errs.energy_max_deviation_from_offset_per_atom,
        "force_mae": errs.force_mae,
        "force_rmse": errs.force_rmse,
        "force_rmse_per_frame_max": float(frame_rmse.max()),
        "force_rmse_per_frame_min": float(frame_rmse.min()),
        "per_element": {str(z): e for z, e in errs.per_element().items()},
        "per_frame_energy_error_mev_per_atom": [round(float(x), 4) for x in per_atom],
        "per_frame_force_rmse": [round(float(x), 5) for x in frame_rmse],
    }


def time_structure(evaluator: Evaluator, structure: Structure, repeats: int, warmup: int = 2) -> dict:
    """Wall time of one energy+forces call, and the process CPU time (all threads), which is
    less sensitive to other processes.

    Parameters
    ----------
    evaluator : Evaluator
    structure : Structure
    repeats : int
        Timed calls.
    warmup : int
        Untimed calls first.

    Returns
    -------
    dict
        ``median_ms``, ``min_ms``, ``neighbour_list_median_ms``, ``process_cpu_median_ms`` (ms),
        ``n_atoms``, ``repeats`` and the 1-minute load average after the calls.
    """
    t = metrics.time_model(evaluator, structure, repeats=repeats, warmup=warmup)
    return {
        "n_atoms": int(len(structure.numbers)),
        "load_average_1min": round(t.load_average_1min, 2),
        "repeats": repeats,
        "median_ms": round(1000.0 * t.median_s, 2),
        "min_ms": round(1000.0 * t.min_s, 2),
        "neighbour_list_median_ms": round(1000.0 * t.neighbors_median_s, 2),
        "process_cpu_median_ms": round(1000.0 * t.cpu_median_s, 2),
    }


def machine_info(device: str) -> dict:
    """:func:`mlip_server.machine.describe` of ``device``, with the key names of the committed
    ``models/validation/teacher.json`` (``cpu_count``, ``torch_default_threads``) as well."""
    info = machine.describe(device)
    info.update(
        cpu_count=info["cores"],
        torch_default_threads=info["torch_threads"],
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
    )
    return info


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def markdown(report: dict) -> str:
    v, m, t = report["validation"], report["machine"], report["timings"]
    acc = report["acceptance"]
    lines = [
        "# Teacher validation: revPBE0-D3 Behler–Parrinello water potential",
        "",
        f"Model `{report['model']}` (n2p2/RuNNer network of Cheng et al., PNAS 2019, exported by "
        "`mlip_server.training.export_teacher`), evaluated with `mlip_server.core.evaluator.Evaluator` "
        f"({report['dtype']}, {m['device']}) on all {v['n_frames']} frames of `{report['dft']}` "
        "(revPBE0-D3 DFT, 192 atoms each). Written by `python -m mlip_server.training.validate_teacher` on "
        f"{report['date']}.",
        "",
        "| quantity | value | acceptance |",
        "|---|---|---|",
        "| energy error offset, mean of (E_pred − E_DFT)/N "
        f"| {v['energy_offset_mev_per_atom']:.3f} meV/atom | — |",
        f"| energy error spread, std over frames | {v['energy_spread_mev_per_atom']:.3f} meV/atom "
        f"| ≤ {ACCEPT_ENERGY_SPREAD} |",
        f"| force MAE (all components) | {v['force_mae']:.4f} eV/Å | — |",
        f"| force RMSE (all components) | {v['force_rmse']:.4f} eV/Å | ≤ {ACCEPT_FORCE_RMSE} |",
    ]
    for z, e in v["per_element"].items():
        lines.append(f"| force RMSE, Z = {z} | {e['force_rmse']:.4f} eV/Å | — |")
    lines += [
        f"| per-frame force RMSE, min–max | {v['force_rmse_per_frame_min']:.4f}–"
        f"{v['force_rmse_per_frame_max']:.4f} eV/Å | — |",
        "",
        f"Acceptance: **{'passed' if acc['passed'] else 'FAILED'}**.",
        "",
        "## Timings (energy + forces, one structure per call, neighbour list included)",
        "",
        "| atoms | torch threads | median | min | of which neighbour list (median) "
        "| process CPU time (median) |",
        "|---|---|---|---|---|---|",
    ]
    for entry in t.values():
        lines.append(
            f"| {entry['n_atoms']} | {entry['threads']} | {entry['median_ms']:.1f} ms "
            f"| {entry['min_ms']:.1f} ms "
            f"| {entry['neighbour_list_median_ms']:.1f} ms | {entry['process_cpu_median_ms']:.1f} ms |"
        )
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} logical CPUs, torch {m['torch']}, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + ". 1-minute load average during the timings: "
        + ", ".join(f"{e['load_average_1min']}" for e in t.values())
        + " (other processes share the CPUs; timings on a busy machine are upper bounds).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Validate the exported teacher against DFT frames and time it."
    )
    parser.add_argument(
        "--model", required=True, help="TorchScript teacher, e.g. models/local/bpnnp-revpbe0d3.pt"
    )
    parser.add_argument("--dft", required=True, help="extended XYZ with DFT energy= and forces (eV, eV/Å)")
    parser.add_argument("--out", required=True, help="folder for validation/teacher.json and VALIDATION.md")
    parser.add_argument(
        "--large",
        default=None,
        help="large structure to time (default: ../structures/water_512.xyz next to --dft)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--frames", type=int, default=None, help="only the first N frames (quick check)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice, usually the number of cores)",
    )
    parser.add_argument(
        "--jit-optimize",
        action="store_true",
        help="keep TorchScript's optimising (profiling) executor on; by default it is off, "
        "since it spends seconds on the first calls of each new input shape of this model "
        "and gains nothing on CPU",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.jit.optimized_execution(args.jit_optimize):
        return _run(args)


def _run(args) -> int:

    try:
        evaluator = load_evaluator(args.model, device=args.device, dtype=args.dtype)
        frames = _read_frames(args.dft, args.frames)
        t0 = time.perf_counter()
        validation = evaluate_frames(evaluator, frames)
        validation["wall_time_s"] = round(time.perf_counter() - t0, 1)
        structures = {"dft_frame_192": Structure.from_ase(frames[0])}
        large = args.large or os.path.join(
            os.path.dirname(os.path.abspath(args.dft)), "..", "structures", "water_512.xyz"
        )
        if os.path.isfile(large):
            import ase.io

            big = Structure.from_ase(ase.io.read(large))
            structures[f"{os.path.splitext(os.path.basename(large))[0]}_{len(big.numbers)}"] = big
        else:
            print(f"note: {large} not found, large-cell timing skipped", file=sys.stderr)
        timings = {}
        default_threads = torch.get_num_threads()
        for threads in sorted({1, default_threads}):  # one thread is robust on a busy machine
            torch.set_num_threads(threads)
            for name, structure in structures.items():
                small = len(structure.numbers) < 1000
                timings[f"{name}_{threads}thread{'s' if threads > 1 else ''}"] = {
                    "threads": threads,
                    **time_structure(
                        evaluator, structure, repeats=7 if small else 3, warmup=2 if small else 1
                    ),
                }
        torch.set_num_threads(default_threads)
    except MLIPError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    passed = (
        validation["force_rmse"] <= ACCEPT_FORCE_RMSE
        and validation["energy_spread_mev_per_atom"] <= ACCEPT_ENERGY_SPREAD
    )
    report = {
        "model": args.model,
        "dft": args.dft,
        "dtype": args.dtype,
        "date": datetime.date.today().isoformat(),
        "units": {"energy": "meV/atom", "forces": "eV/Å", "time": "ms"},
        "validation": validation,
        "acceptance": {
            "force_rmse_max": ACCEPT_FORCE_RMSE,
            "energy_spread_max": ACCEPT_ENERGY_SPREAD,
            "passed": passed,
        },
        "timings": timings,
        "machine": machine_info(args.device),
        "torchscript_optimized_execution": bool(args.jit_optimize),
    }
    _write_atomic(os.path.join(args.out, "validation", "teacher.json"), json.dumps(report, indent=1) + "\n")
    _write_atomic(os.path.join(args.out, "VALIDATION.md"), markdown(report))
    v = validation
    print(
        f"{v['n_frames']} frames: energy offset {v['energy_offset_mev_per_atom']:.3f} meV/atom, spread "
        f"{v['energy_spread_mev_per_atom']:.3f} meV/atom; forces MAE {v['force_mae']:.4f} eV/Å, "
        f"RMSE {v['force_rmse']:.4f} eV/Å -> {'passed' if passed else 'FAILED'}"
    )
    for name, entry in timings.items():
        print(f"timing {name}: {entry['median_ms']:.1f} ms median ({entry['n_atoms']} atoms)")
    print(
        f"wrote {os.path.join(args.out, 'validation', 'teacher.json')} "
        f"and {os.path.join(args.out, 'VALIDATION.md')}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
