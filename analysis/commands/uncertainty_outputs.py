"""The tables and the summary section of ``mlip-analyse uncertainty``
(:mod:`mlip_server.analysis.commands.uncertainty`), from the statistics of
:func:`mlip_server.analysis.uncertainty.uncertainty_statistics` (``st``). Units: forces eV/Å, energies eV,
positions Å, time ps."""

from __future__ import annotations

import os

import numpy as np

from ..uncertainty import verdict

__all__ = ["frame_table", "histogram_table", "worst_frames", "worst_header", "summary"]

_TOP_ATOMS = 5
"""Atoms of largest σ_i listed per worst frame in the summary."""


def frame_table(st: dict, frames, steps, t):
    """(columns, header) of ``uncertainty.dat``: one row per frame analysed (``t`` in ps or None)."""
    cols = {"frame": frames, "step": steps}
    if t is not None:
        cols["t_ps"] = t
    cols.update(
        {
            "sigma_max_eV_A": st["sigma_max"],
            "sigma_mean_eV_A": st["sigma_mean"],
            "sigma_rms_eV_A": st["sigma_rms"],
            "worst_atom": st["worst_atom"],
        }
    )
    header = (
        "committee force spread per frame: sigma_i = sqrt(sum_m |F_i^m - mean F_i|^2 / (M-1)) in eV/Å; "
        "sigma_max = max_i sigma_i, sigma_mean = mean_i sigma_i, sigma_rms = sqrt(mean_i sigma_i^2); "
        "worst_atom = index (0-based) of the largest sigma_i"
    )
    if "energy" in st:
        cols["energy_std_eV"] = st["energy_std"]
        header += "\nenergy_std_eV: committee energy spread sigma_E (eV, ddof = 1)"
    if "ratio" in st:
        cols["rotational_force_spread_eV_A"] = st["rotational"]
        cols["committee_force_rms_eV_A"] = st["committee_force_rms"]
        cols["ratio"] = st["ratio"]
        header += (
            "\nrotational_force_spread_eV_A: force_spread_rms (RMS over atoms and components of the std "
            "over the rotation grid, eV/Å); committee_force_rms_eV_A = sqrt(sum_i sigma_i^2 / (3N)) "
            "(the same per-component normalisation); ratio = rotational / committee"
        )
        if "energy_ratio" in st:
            cols["rotational_energy_spread_eV"] = st["rotational_energy"]
            cols["energy_ratio"] = st["energy_ratio"]
            header += "\nrotational_energy_spread_eV: energy_spread (eV); energy_ratio = it / sigma_E"
    return cols, header


def histogram_table(st: dict):
    """(columns, header) of ``uncertainty_histogram.dat``: the σ_i histogram (eV/Å), also per element."""
    edges = st["hist_edges"]
    hist = {
        "sigma_lo_eV_A": edges[:-1],
        "sigma_hi_eV_A": edges[1:],
        "count": st["hist_counts"],
        "density_per_eV_A": st["hist_density"],
    }
    for el, c in st["hist_by_element"].items():
        hist[f"count_{el}"] = c
    header = (
        "histogram of the per-atom committee force spread sigma_i (eV/Å) over all atoms and frames; "
        "density normalised to integrate to 1 (per eV/Å); count_EL: atoms of element EL"
    )
    return hist, header


def worst_header(n_frames: int, with_positions: bool) -> str:
    """The header of ``uncertainty_worst.dat`` (``n_frames`` worst frames)."""
    return (
        f"per-atom committee force spread sigma_i (eV/Å) of the {n_frames} frames with the "
        "largest max_i sigma_i (rank 1 = largest); frame = 0-based index in the extras file"
        + ("; Z = atomic number; x, y, z = position (Å)" if with_positions else "")
    )


def worst_frames(worst, frames, steps, sigma, positions, elements):
    """The frames of ``worst`` (:func:`mlip_server.analysis.uncertainty.uncertainty_statistics`, indices into
    ``frames``) per atom: the table rows (rank, frame, step, atom, with positions Z and x, y, z in Å,
    σ_i in eV/Å), their summary entries (the five atoms of largest σ_i) and (frame, step, σ_i) for
    the plot. ``sigma`` [frames in file, N]; ``positions`` the Universe or None."""
    rows = {k: [] for k in ("rank", "frame", "step", "atom")}
    if positions is not None:
        rows.update({"Z": [], "x_A": [], "y_A": [], "z_A": []})
    rows["sigma_eV_A"] = []
    summary, plot = [], []
    n = sigma.shape[1]
    for rank, w in enumerate(worst, start=1):
        f = int(frames[w["frame"]])
        step, s_f = int(steps[f]), sigma[f]
        rows["rank"] += [rank] * n
        rows["frame"] += [f] * n
        rows["step"] += [step] * n
        rows["atom"] += list(range(n))
        rows["sigma_eV_A"] += list(s_f)
        entry = {
            "rank": rank,
            "frame": f,
            "step": step,
            "sigma_max_eV_A": w["sigma_max"],
            "sigma_mean_eV_A": float(s_f.mean()),
        }
        entry["top_atoms"] = _top_atoms(rows, f, s_f, positions, elements)
        summary.append(entry)
        plot.append((f, step, s_f))
    return rows, summary, plot


def _top_atoms(rows: dict, f: int, s_f, positions, elements) -> list:
    """The summary entries of the atoms of largest σ_i (eV/Å) of frame ``f``; with positions,
    also appends its atoms' Z and x, y, z (Å) to ``rows``."""
    from ase.data import atomic_numbers

    top = np.argsort(-s_f, kind="stable")[:_TOP_ATOMS]
    if positions is None:
        return [{"atom": int(i), "sigma_eV_A": float(s_f[i])} for i in top]
    x = np.asarray(positions.trajectory[f].positions, dtype=float)
    rows["Z"] += [atomic_numbers.get(e, 0) for e in elements]
    for k, c in enumerate(("x_A", "y_A", "z_A")):
        rows[c] += list(x[:, k])
    return [
        {
            "atom": int(i),
            "element": elements[i],
            "position_A": np.round(x[i], 6).tolist(),
            "sigma_eV_A": float(s_f[i]),
        }
        for i in top
    ]


def summary(st: dict, files: dict, n_frames_in_file: int, frames, n_blocks: int, worst_summary: list) -> dict:
    """The ``uncertainty`` section of ``summary.json``: the input files, σ statistics (eV/Å),
    σ_E (eV) and the rotational/committee comparison (or why it was skipped)."""
    edges = st["hist_edges"]
    out = {
        **{f"{key}_file": _abspath(files[name]) for key, name in _FILE_KEYS},
        "units": {"force": "eV/Å", "energy": "eV", "position": "Å"},
        "n_frames": st["n_frames"],
        "n_frames_in_file": n_frames_in_file,
        "n_atoms": st["n_atoms"],
        "n_blocks": n_blocks,
        "sigma_max_mean_eV_A": st["sigma_max_mean"],
        "sigma_max_mean_eV_A_err": st["sigma_max_mean_err"],
        "sigma_mean_mean_eV_A": st["sigma_mean_mean"],
        "sigma_mean_mean_eV_A_err": st["sigma_mean_mean_err"],
        "sigma_max_overall_eV_A": st["sigma_max_overall"],
        "sigma_max_overall_frame": int(frames[st["sigma_max_overall_frame"]]),
        "sigma_rms_overall_eV_A": st["sigma_rms_overall"],
        "sigma_percentiles_eV_A": st["percentiles"],
        "by_element_eV_A": st["by_element"],
        "histogram": {"bins": len(edges) - 1, "range_eV_A": [float(edges[0]), float(edges[-1])]},
        "worst_frames": worst_summary,
    }
    if "energy" in st:
        e = st["energy"]
        out["energy_std"] = {
            "mean_eV": e["mean"],
            "mean_eV_err": e["mean_err"],
            "max_eV": e["max"],
            "mean_eV_per_atom": e["mean_per_atom"],
        }
    out["rotational_vs_committee"] = _rotational_vs_committee(st)
    return out


_FILE_KEYS = (
    ("force_std", "forces"),
    ("energy_std", "energy"),
    ("rotational", "rotational"),
    ("positions", "positions"),
)
"""Summary key ``<key>_file`` -> the input file it names."""


def _abspath(path):
    return os.path.abspath(path) if path else None


def _rotational_vs_committee(st: dict):
    """The ratio rotational spread / committee spread (mean, error, max, verdict), or why skipped."""
    if "rotational_summary" not in st:
        return (
            "skipped: no force_spread_rms extras file (serve with averaging, e.g. address unix:NAME=2i, "
            "write extra_type='force_spread_rms' and pass --rotational FILE)"
        )
    rs = st["rotational_summary"]
    rot = {
        "rotational_force_spread_mean_eV_A": rs["rotational_mean"],
        "rotational_force_spread_mean_eV_A_err": rs["rotational_mean_err"],
        "committee_force_rms_mean_eV_A": rs["committee_mean"],
        "committee_force_rms_mean_eV_A_err": rs["committee_mean_err"],
        "ratio_mean": rs["ratio_mean"],
        "ratio_mean_err": rs["ratio_mean_err"],
        "ratio_max": rs["ratio_max"],
        "ratio_of_rms": rs["ratio_of_rms"],
        "definition": "ratio = force_spread_rms / sqrt(sum_i sigma_i^2 / (3N)) per frame",
        "verdict": verdict(rs["ratio_mean"]),
    }
    if "energy_ratio_mean" in rs:
        rot["energy_ratio_mean"] = rs["energy_ratio_mean"]
        rot["energy_ratio_mean_err"] = rs["energy_ratio_mean_err"]
    return rot
