"""Single-point sections of the probe: error convergence of averaging grids, their cost, ice.

Units: energies eV (tables in meV), forces eV/Å (tables in meV/Å), times s.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from server.core.evaluator import Evaluator, Structure


def convergence(ev: Evaluator, frames, grids, reference_grid: str) -> dict:
    """Energy/force differences of each grid against ``reference_grid`` over ``frames``
    (ASE Atoms), and errors against reference labels when the frames carry them.

    Returns per grid: ``energy_mae_meV`` (per structure), ``energy_mae_meV_per_atom``,
    ``force_mae_meV_A``, ``force_rmse_meV_A`` (vs the reference grid), and, with labels,
    ``label_force_rmse_meV_A``, ``label_energy_rmse_meV_per_atom`` (after removing the mean
    energy offset per atom, so that a constant shift of the model does not count).
    """
    structures = [Structure.from_ase(a) for a in frames]
    ref = ev.compute(structures, reference_grid)
    labels = all(_labels(a) is not None for a in frames)
    out = {"reference_grid": reference_grid, "n_frames": len(frames),
           "n_atoms": [len(a) for a in frames], "has_labels": labels, "grids": {}}
    for grid in grids:
        res = ev.compute(structures, grid)
        de = np.array([r.energy - q.energy for r, q in zip(res, ref)])
        n = np.array([len(a) for a in frames])
        df = np.concatenate([(r.forces - q.forces).ravel() for r, q in zip(res, ref)])
        row = {"energy_mae_meV": 1e3 * float(np.abs(de).mean()),
               "energy_mae_meV_per_atom": 1e3 * float(np.abs(de / n).mean()),
               "force_mae_meV_A": 1e3 * float(np.abs(df).mean()),
               "force_rmse_meV_A": 1e3 * float(np.sqrt((df ** 2).mean()))}
        if labels:
            e_lab = np.array([_labels(a)[0] for a in frames])
            f_lab = np.concatenate([_labels(a)[1].ravel() for a in frames])
            f_mod = np.concatenate([r.forces.ravel() for r in res])
            per_atom = np.array([r.energy for r in res]) / n - e_lab / n
            row["label_force_rmse_meV_A"] = 1e3 * float(np.sqrt(((f_mod - f_lab) ** 2).mean()))
            row["label_energy_rmse_meV_per_atom"] = 1e3 * float(np.std(per_atom))
        out["grids"][grid] = row
    return out


def _labels(atoms):
    """(energy eV, forces eV/Å) stored in an extended-XYZ frame, or None."""
    energy = atoms.info.get("energy")
    forces = atoms.arrays.get("forces")
    if energy is None and atoms.calc is not None:
        try:
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        except Exception:
            return None
    if energy is None or forces is None:
        return None
    return float(energy), np.asarray(forces, dtype=float)


def timings(ev: Evaluator, atoms, grids, nmts_values=(5, 10, 20), repeats: int = 2) -> dict:
    """Wall time of one evaluation per grid on ``atoms`` (best of ``repeats`` after a warm-up;
    cheap grids are repeated until about a second is spent, at most 20 times, so that one slow
    moment cannot set the raw time that every ratio divides by), and the model cost per inner MD
    step of MTS with the averaged grid every n steps, relative to the raw model:
    (t_raw + t_grid / n) / t_raw."""
    s = [Structure.from_ase(atoms)]
    out = {"n_atoms": len(atoms), "seconds": {}, "relative_to_raw": {}, "mts_cost_per_step": {}}
    for grid in grids:
        t0 = time.perf_counter()
        ev.compute(s, grid)  # warm-up
        warm = time.perf_counter() - t0
        best = np.inf
        for _ in range(max(repeats, min(20, int(1.0 / max(warm, 1e-3))))):
            t0 = time.perf_counter()
            ev.compute(s, grid)
            best = min(best, time.perf_counter() - t0)
        out["seconds"][grid] = best
    raw = out["seconds"].get("none")
    for grid, t in out["seconds"].items():
        out["relative_to_raw"][grid] = t / raw if raw else float("nan")
        if grid != "none" and raw:
            out["mts_cost_per_step"][grid] = {str(n): (raw + t / n) / raw for n in nmts_values}
    return out


def ice(ev: Evaluator, files, grid: str, max_atoms: int) -> dict:
    """Energies per molecule (eV) of ice cells, raw and averaged (cells up to ``max_atoms``),
    and relative energies (meV/molecule, with respect to the mean over the cells evaluated
    with both), as in the paper's proton-disordered ice experiment."""
    import ase.io

    cells = []
    for f in sorted(files):
        atoms = ase.io.read(f, index=0)
        n_mol = int((atoms.numbers == 8).sum())
        s = Structure.from_ase(atoms)
        raw = ev.compute([s])[0].energy / n_mol
        avg = ev.compute([s], grid)[0].energy / n_mol if len(atoms) <= max_atoms else None
        cells.append({"file": Path(f).name, "n_atoms": len(atoms), "raw_eV_per_molecule": raw,
                      "avg_eV_per_molecule": avg})
    both = [c for c in cells if c["avg_eV_per_molecule"] is not None]
    out = {"grid": grid, "max_atoms": max_atoms, "cells": cells}
    if len(both) >= 2:
        raw = np.array([c["raw_eV_per_molecule"] for c in both])
        avg = np.array([c["avg_eV_per_molecule"] for c in both])
        rel_raw, rel_avg = 1e3 * (raw - raw.mean()), 1e3 * (avg - avg.mean())
        for c, a, b in zip(both, rel_raw, rel_avg):
            c["rel_raw_meV"], c["rel_avg_meV"], c["rel_delta_meV"] = float(a), float(b), float(b - a)
        out.update({"n_compared": len(both),
                    "rel_spread_meV": float(np.std(rel_avg)),
                    "rel_delta_max_meV": float(np.abs(rel_avg - rel_raw).max()),
                    "rel_delta_rms_meV": float(np.sqrt(((rel_avg - rel_raw) ** 2).mean())),
                    "ordering_changed": bool((np.argsort(rel_raw) != np.argsort(rel_avg)).any())})
    return out
