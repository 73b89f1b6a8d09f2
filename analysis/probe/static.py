"""Single-point sections of the probe: error convergence of averaging grids, their cost, ice, and
the symmetry breaking against a committee's uncertainty (optional).

Units: energies eV (tables in meV), forces eV/Å (tables in meV/Å), times s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlip_server import metrics
from mlip_server.core.evaluator import Evaluator, Structure


def convergence(ev: Evaluator, frames, grids, reference_grid: str) -> dict:
    """Differences of each averaging grid against ``reference_grid``, and errors against labels.

    Parameters
    ----------
    ev : Evaluator
    frames : list of ase.Atoms
        The structures (Å); when every frame carries reference labels (energy eV, forces eV/Å),
        the errors against them too (see :func:`mlip_server.metrics.labels`).
    grids : list of str
        Averaging specs to compare.
    reference_grid : str
        The spec taken as converged.

    Returns
    -------
    dict
        ``reference_grid``, ``n_frames``, ``n_atoms``, ``has_labels`` and, per grid under
        ``grids``: ``energy_mae_meV`` (per structure), ``energy_mae_meV_per_atom``,
        ``force_mae_meV_A``, ``force_rmse_meV_A`` (vs the reference grid), and, with labels,
        ``label_force_rmse_meV_A``, ``label_energy_rmse_meV_per_atom`` (after removing the mean
        energy offset per atom, so that a constant shift of the model does not count).
    """
    structures = [Structure.from_ase(a) for a in frames]
    ref = ev.compute(structures, reference_grid)
    refs = [metrics.labels(a) for a in frames]
    labels = all(r is not None for r in refs)
    out = {
        "reference_grid": reference_grid,
        "n_frames": len(frames),
        "n_atoms": [len(a) for a in frames],
        "has_labels": labels,
        "grids": {},
    }
    for grid in grids:
        res = ev.compute(structures, grid)
        diff = metrics.errors(res, ref)
        row = {
            "energy_mae_meV": 1e3 * diff.energy_mae,
            "energy_mae_meV_per_atom": 1e3 * diff.energy_mae_per_atom,
            "force_mae_meV_A": 1e3 * diff.force_mae,
            "force_rmse_meV_A": 1e3 * diff.force_rmse,
        }
        if labels:
            errs = metrics.errors(res, refs)
            row["label_force_rmse_meV_A"] = 1e3 * errs.force_rmse
            row["label_energy_rmse_meV_per_atom"] = 1e3 * errs.energy_spread_per_atom
        out["grids"][grid] = row
    return out


def timings(ev: Evaluator, atoms, grids, nmts_values=(5, 10, 20), repeats: int = 2) -> dict:
    """Cost of each averaging grid on ``atoms``, and of multiple time stepping with it.

    Each grid's time is the best of at least ``repeats`` calls after a warm-up; cheap grids are
    repeated until about a second is spent, at most 20 times, so that one slow moment cannot set
    the raw time that every ratio divides by (:func:`mlip_server.metrics.time_model`).

    Parameters
    ----------
    ev : Evaluator
    atoms : ase.Atoms
        The timing structure (Å).
    grids : list of str
        Averaging specs; ``none`` (the raw model) is the reference of the ratios.
    nmts_values : sequence of int
        Inner steps n per averaged evaluation of the MTS estimate.
    repeats : int
        Timed calls per grid, at least.

    Returns
    -------
    dict
        ``n_atoms``; ``seconds`` (grid → s per energy + forces call); ``relative_to_raw``
        (grid → t_grid / t_raw); ``mts_cost_per_step`` (grid → n → (t_raw + t_grid / n) / t_raw,
        the model cost per inner MD step relative to the raw model).
    """
    s = Structure.from_ase(atoms)
    out = {"n_atoms": len(atoms), "seconds": {}, "relative_to_raw": {}, "mts_cost_per_step": {}}
    for grid in grids:
        timing = metrics.time_model(ev, s, grid, repeats=repeats, warmup=1, budget_s=1.0, max_repeats=20)
        out["seconds"][grid] = timing.min_s
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
        cells.append(
            {
                "file": Path(f).name,
                "n_atoms": len(atoms),
                "raw_eV_per_molecule": raw,
                "avg_eV_per_molecule": avg,
            }
        )
    both = [c for c in cells if c["avg_eV_per_molecule"] is not None]
    out = {"grid": grid, "max_atoms": max_atoms, "cells": cells}
    if len(both) >= 2:
        raw = np.array([c["raw_eV_per_molecule"] for c in both])
        avg = np.array([c["avg_eV_per_molecule"] for c in both])
        rel_raw, rel_avg = 1e3 * (raw - raw.mean()), 1e3 * (avg - avg.mean())
        for c, a, b in zip(both, rel_raw, rel_avg):
            c["rel_raw_meV"], c["rel_avg_meV"], c["rel_delta_meV"] = float(a), float(b), float(b - a)
        out.update(
            {
                "n_compared": len(both),
                "rel_spread_meV": float(np.std(rel_avg)),
                "rel_delta_max_meV": float(np.abs(rel_avg - rel_raw).max()),
                "rel_delta_rms_meV": float(np.sqrt(((rel_avg - rel_raw) ** 2).mean())),
                "ordering_changed": bool((np.argsort(rel_raw) != np.argsort(rel_avg)).any()),
            }
        )
    return out


def committee_vs_rotation(ev: Evaluator, committee: Evaluator, frames, grid: str) -> dict:
    """Symmetry breaking against model uncertainty on the probe's frames: the probed model's
    rotational force spread over ``grid`` next to the committee's force spread.

    Both are RMS over atoms and Cartesian components (eV/Å): the rotational spread is
    ``force_spread_rms`` of the probed model evaluated over ``grid`` (the weighted standard
    deviation of the back-rotated forces over the grid); the committee spread is
    sqrt(Σ_i σ_i² / (3N)) with σ_i = sqrt(Σ_m |F_i^m − F̄_i|² / (M − 1)) of the members, each
    averaged over the same grid (so that the members' own symmetry breaking does not count as
    disagreement). The committee mean's own rotational spread is reported too.

    Parameters
    ----------
    ev : Evaluator
        The probed model.
    committee : Evaluator
        The committee (``load_evaluator([a.pt, b.pt, ...])``).
    frames : list of ase.Atoms
        The structures (Å).
    grid : str
        Averaging spec over which the spreads are taken (the probe's MD average, ``2i``).

    Returns
    -------
    dict
        ``grid``, ``n_members``, ``frames`` (per structure: ``name``, ``n_atoms``,
        ``rotational_rms_eV_A``, ``committee_rms_eV_A``, ``committee_max_eV_A`` (max_i σ_i),
        ``committee_energy_std_eV``, ``committee_rotational_rms_eV_A``, ``ratio`` = rotational /
        committee) and ``all`` (the same, RMS over every atom of every frame, ``ratio`` of those).
    """
    structures = [Structure.from_ase(a) for a in frames]
    model = ev.compute(structures, grid)
    members = committee.compute(structures, grid)
    rows = []
    rot_sq = com_sq = crot_sq = n_comp = 0.0
    for atoms, m, c in zip(frames, model, members):
        sigma = c.committee.force_std()
        n3 = 3 * len(atoms)
        com = float(np.sqrt((sigma**2).sum() / n3))
        rot = float(m.extras["force_spread_rms"])
        crot = float(c.extras["force_spread_rms"])
        rows.append(
            {
                "name": f"{atoms.get_chemical_formula()} ({len(atoms)} atoms)",
                "n_atoms": len(atoms),
                "rotational_rms_eV_A": rot,
                "committee_rms_eV_A": com,
                "committee_max_eV_A": float(c.extras["committee_force_std_max"]),
                "committee_energy_std_eV": float(c.extras["committee_energy_std"]),
                "committee_rotational_rms_eV_A": crot,
                "ratio": rot / com if com > 0 else float("nan"),
            }
        )
        rot_sq, com_sq, crot_sq, n_comp = (
            rot_sq + n3 * rot**2,
            com_sq + n3 * com**2,
            crot_sq + n3 * crot**2,
            n_comp + n3,
        )
    rot, com, crot = (float(np.sqrt(x / n_comp)) for x in (rot_sq, com_sq, crot_sq))
    return {
        "grid": grid,
        "n_members": len(members[0].committee.energies) if members else 0,
        "frames": rows,
        "all": {
            "n_atoms": int(n_comp // 3),
            "rotational_rms_eV_A": rot,
            "committee_rms_eV_A": com,
            "committee_max_eV_A": max(r["committee_max_eV_A"] for r in rows),
            "committee_rotational_rms_eV_A": crot,
            "ratio": rot / com if com > 0 else float("nan"),
        },
    }
