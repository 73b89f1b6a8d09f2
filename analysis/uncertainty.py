"""Committee uncertainty along a trajectory: i-PI extras files and their statistics.

``mlip-server --committee a.pt b.pt ...`` sends i-PI, for every structure, the committee's
spread as extras (:mod:`mlip_server.core.committee`): ``committee_force_std`` (per atom,
σ_i = sqrt(Σ_m |F_i^m − F̄_i|² / (M − 1)), eV/Å), ``committee_energy_std`` (σ_E, eV,
ddof = 1) and ``committee_force_std_max`` (max_i σ_i, eV/Å); with rotational averaging
also ``force_spread_rms`` (eV/Å: the RMS over atoms and Cartesian components of the weighted
standard deviation of the forces over the rotation grid) and ``energy_spread`` (eV). i-PI
writes them with ``<trajectory filename='unc' extra_type='committee_force_std'> extras
</trajectory>`` to ``PREFIX.unc_<bead>``::

     #EXTRAS(committee_force_std)# Step:           0
       v_1 v_2 ... v_N
     #EXTRAS(committee_force_std)# Step:           1
     ...

(``extra_type='a,b'`` stacks a and b on the same lines; a 2-D quantity is written one row per
line.) :func:`read_extras` reads such a file, :func:`extras_column` cuts one quantity out of it and
:func:`uncertainty_statistics` computes what ``mlip-analyse uncertainty`` reports
(:func:`mlip_server.analysis.run_folder.find_run_files` finds a run's extras files).

Units: forces eV/Å, energies eV, positions Å, time ps.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .errors import AnalysisInputError
from .statistics import DEFAULT_BLOCKS, series_mean_sem

__all__ = [
    "ExtrasTrajectory",
    "read_extras",
    "extras_column",
    "is_extras_file",
    "extras_names",
    "uncertainty_statistics",
    "SCALAR_EXTRAS",
    "HIST_BINS",
    "DEFAULT_WORST",
    "verdict",
]

SCALAR_EXTRAS = frozenset(
    {
        "committee_energy_std",
        "committee_force_std_max",
        "energy_spread",
        "force_spread_rms",
        "raw_energy",
        "delta_energy",
        "raw_force_delta_rms",
        "n_rotations",
        "committee_uncertainty",
    }
)
"""Extras with one number per structure (the others, e.g. ``committee_force_std``, have many)."""

HIST_BINS = 50
"""Bins of the σ_i histogram, from 0 to the largest σ_i of the run."""

DEFAULT_WORST = 3
"""Frames with the largest max_i σ_i whose per-atom spreads are tabulated."""

_HEADER = re.compile(r"^\s*#\s*(EXTRAS\w*)\(([^)]*)\)#\s*Step:\s*(-?\d+)(?:\s+Bead:\s*(\d+))?")


@dataclass
class ExtrasTrajectory:
    """An i-PI extras file: ``names`` the quantities of its header (``extra_type``, in order),
    ``steps`` [n_frames] the step of each frame as written, ``values`` [n_frames, L] every
    number of each frame (the quantities stacked; units as the server sent them)."""

    path: str
    names: tuple
    steps: np.ndarray
    values: np.ndarray

    @property
    def n_frames(self) -> int:
        return len(self.steps)


def is_extras_file(path: str) -> bool:
    """Whether the first non-empty line of ``path`` is an i-PI ``#EXTRAS(...)#`` header."""
    return bool(extras_names(path))


def extras_names(path: str) -> tuple:
    """The quantities named by the first ``#EXTRAS(...)#`` header of ``path`` (empty if none)."""
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                if line.strip():
                    m = _HEADER.match(line)
                    return tuple(x.strip() for x in m.group(2).split(",")) if m else ()
    except OSError:
        return ()
    return ()


def read_extras(path: str, what: str = "an i-PI extras file") -> ExtrasTrajectory:
    """Read an i-PI extras trajectory (module doc for the format).

    Parameters
    ----------
    path : str
        ``PREFIX.NAME_<bead>`` as i-PI writes it.
    what : str
        What the file should be, for the error messages (e.g. ``--committee-forces``).

    Returns
    -------
    ExtrasTrajectory

    Raises
    ------
    AnalysisInputError
        Missing or empty file, no ``#EXTRAS(...)#`` header, non-numeric values (``extra_type``
        of a non-numeric quantity), frames with different numbers of values (a truncated file)
        or different quantities.
    """
    if not os.path.isfile(path):
        raise AnalysisInputError(f"no such file: {path}: give {what} (i-PI <trajectory ... > extras)")
    names, steps, frames = None, [], []
    current = bad = None
    with open(path, errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if bad is not None:  # an unreadable line that is not the last one
                raise AnalysisInputError(
                    f"{path}:{bad[0]}: non-numeric value {bad[1][:40]!r}: give {what} of a "
                    "numerical extra_type (e.g. committee_force_std)"
                )
            m = _HEADER.match(line)
            if m:
                these = tuple(x.strip() for x in m.group(2).split(","))
                if names is None:
                    names = these
                elif these != names:
                    raise AnalysisInputError(
                        f"{path}:{lineno}: frame of {','.join(these)} after frames of {','.join(names)}: "
                        "give a file of one extra_type"
                    )
                steps.append(int(m.group(3)))
                current = []
                frames.append(current)
                continue
            if current is None:
                raise AnalysisInputError(
                    f"{path} does not start with an i-PI '#EXTRAS(...)# Step:' line: give {what}"
                )
            try:
                current.extend([float(x) for x in line.split()])
            except ValueError:
                bad = (lineno, line.strip())
    if bad is not None:
        if len(frames) > 1:
            raise AnalysisInputError(
                f"{path}:{bad[0]}: the last line is cut ({bad[1][-30:]!r}): the file is truncated; "
                "cut the partial last frame"
            )
        raise AnalysisInputError(
            f"{path}:{bad[0]}: non-numeric value {bad[1][:40]!r}: give {what} of a "
            "numerical extra_type (e.g. committee_force_std)"
        )
    if names is None:
        raise AnalysisInputError(f"{path} is empty: give {what} with at least one frame")
    lengths = {len(f) for f in frames}
    if len(lengths) != 1:
        n0 = len(frames[0])
        bad = next(k for k, f in enumerate(frames) if len(f) != n0)
        raise AnalysisInputError(
            f"{path}: frame {bad} (step {steps[bad]}) has {len(frames[bad])} values, frame 0 has {n0}: "
            "the file is truncated or mixes runs; cut the partial last frame"
        )
    if 0 in lengths:
        raise AnalysisInputError(f"{path}: frames without values: give {what} of a numerical extra_type")
    return ExtrasTrajectory(path, names, np.array(steps, dtype=int), np.array(frames, dtype=float))


def extras_column(ex: ExtrasTrajectory, name: str, what: str | None = None) -> np.ndarray:
    """One quantity of an extras file.

    The quantities of a stacked file (``extra_type='a,b'``) are split by their sizes: every
    name in :data:`SCALAR_EXTRAS` is one number per frame, and at most one other quantity
    takes the remaining numbers.

    Parameters
    ----------
    ex : ExtrasTrajectory
    name : str
        ``committee_force_std``, ``committee_energy_std``, ``force_spread_rms``, ...
    what : str, optional
        The option that named the file, for the error message.

    Returns
    -------
    ndarray
        [n_frames] for a scalar quantity, [n_frames, n] otherwise.

    Raises
    ------
    AnalysisInputError
        ``name`` is not in the file, or the file stacks several per-atom quantities.
    """
    if name not in ex.names:
        raise AnalysisInputError(
            f"{ex.path} holds {','.join(ex.names)}, not {name}: give the extras file written with "
            f"extra_type='{name}'" + (f" ({what})" if what else "")
        )
    vector = [n for n in ex.names if n not in SCALAR_EXTRAS]
    if len(vector) > 1:
        raise AnalysisInputError(
            f"{ex.path} stacks several per-atom quantities ({','.join(vector)}): write {name} to an "
            "extras trajectory of its own"
        )
    width = ex.values.shape[1]
    n_vec = width - (len(ex.names) - len(vector))
    if n_vec < (1 if vector else 0) or (not vector and n_vec != 0):
        raise AnalysisInputError(
            f"{ex.path}: {width} values per frame do not fit the quantities {','.join(ex.names)}: "
            "give an extras file written by i-PI"
        )
    start = 0
    for n in ex.names:
        size = 1 if n in SCALAR_EXTRAS else n_vec
        if n == name:
            col = ex.values[:, start : start + size]
            return col[:, 0].copy() if n in SCALAR_EXTRAS else col.copy()
        start += size
    raise AssertionError("unreachable")  # pragma: no cover


def _safe_ratio(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


def _per_frame(values, what: str, n_frames: int) -> np.ndarray:
    """``values`` as one float per frame, or a one-line error naming the mismatch."""
    v = np.asarray(values, dtype=float)
    if v.shape != (n_frames,):
        raise AnalysisInputError(
            f"{what} has {v.size} frames, committee_force_std {n_frames}: "
            "give files of the same run and stride"
        )
    return v


def uncertainty_statistics(
    force_std,
    energy_std=None,
    rotational=None,
    rotational_energy=None,
    elements=None,
    n_blocks: int = DEFAULT_BLOCKS,
    n_worst: int = DEFAULT_WORST,
    bins: int = HIST_BINS,
) -> dict:
    """Statistics of a committee's per-atom force spread along a trajectory.

    Parameters
    ----------
    force_std : array_like
        [n_frames, N] per-atom committee spread σ_i (eV/Å), ``committee_force_std``.
    energy_std : array_like, optional
        [n_frames] committee energy spread σ_E (eV), ``committee_energy_std``.
    rotational : array_like, optional
        [n_frames] rotational force spread (eV/Å), ``force_spread_rms``: RMS over atoms and
        Cartesian components of the standard deviation over the rotation grid.
    rotational_energy : array_like, optional
        [n_frames] rotational energy spread (eV), ``energy_spread``.
    elements : sequence of str, optional
        [N] element of each atom, for the per-element statistics and histograms.
    n_blocks : int
        Blocks for the standard errors of the means over frames.
    n_worst : int
        Frames with the largest max_i σ_i reported in ``worst``.
    bins : int
        Histogram bins over [0, max σ_i].

    Returns
    -------
    dict
        Per frame (arrays [n_frames], eV/Å): ``sigma_max`` = max_i σ_i, ``sigma_mean`` =
        mean_i σ_i, ``sigma_rms`` = sqrt(mean_i σ_i²), ``committee_force_rms`` =
        sqrt(Σ_i σ_i² / (3N)) (per Cartesian component: the normalisation of
        ``force_spread_rms``), ``worst_atom`` (index of the largest σ_i).
        Scalars: ``sigma_max_mean`` / ``_err`` (mean over frames, block error),
        ``sigma_mean_mean`` / ``_err``, ``sigma_max_overall`` (largest σ_i of the run) and its
        ``sigma_max_overall_frame``, ``sigma_rms_overall`` (over every atom and frame),
        ``percentiles`` (50, 90, 99 % of all σ_i), ``by_element`` (element -> ``mean``, ``rms``,
        ``max``, ``n_atoms``). Histogram: ``hist_edges`` [bins + 1], ``hist_counts`` [bins],
        ``hist_density`` [bins] (per eV/Å, integrates to 1), ``hist_by_element`` (element ->
        counts). ``worst``: list of ``{"frame", "sigma_max", "atom"}``, largest first (ties: the
        earlier frame). With ``energy_std``: ``energy`` (``mean`` / ``mean_err`` / ``max``, eV).
        With ``rotational``: ``ratio`` [n_frames] = rotational / committee_force_rms and
        ``rotational_summary`` (``rotational_mean`` / ``_err``, ``committee_mean`` / ``_err``,
        ``ratio_mean`` / ``_err``, ``ratio_max``, ``ratio_of_rms`` = sqrt(mean rot²) /
        sqrt(mean committee_force_rms²), and with both energies ``energy_ratio_mean`` / ``_err``
        of energy_spread / σ_E).
    """
    s = np.asarray(force_std, dtype=float)
    if s.ndim != 2 or s.shape[1] == 0 or s.shape[0] == 0:
        raise AnalysisInputError(
            f"committee_force_std must be [frames, atoms], got shape {s.shape}: give the "
            "committee_force_std extras file"
        )
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise AnalysisInputError("committee_force_std has negative or non-finite values: give a valid file")
    nf, n = s.shape
    out = {"n_frames": nf, "n_atoms": n, "n_blocks": n_blocks}
    out["sigma_max"] = s.max(axis=1)
    out["sigma_mean"] = s.mean(axis=1)
    out["sigma_rms"] = np.sqrt((s**2).mean(axis=1))
    out["committee_force_rms"] = out["sigma_rms"] / np.sqrt(3.0)
    out["worst_atom"] = s.argmax(axis=1)
    for key in ("sigma_max", "sigma_mean"):
        m, e = series_mean_sem(out[key], n_blocks)
        out[f"{key}_mean"], out[f"{key}_mean_err"] = float(m), float(e)
    k = int(out["sigma_max"].argmax())
    out["sigma_max_overall"], out["sigma_max_overall_frame"] = float(out["sigma_max"][k]), k
    out["sigma_rms_overall"] = float(np.sqrt((s**2).mean()))
    out["percentiles"] = {str(p): float(np.percentile(s, p)) for p in (50, 90, 99)}

    hi = float(s.max()) or 1.0
    edges = np.linspace(0.0, hi, int(bins) + 1)
    counts, _ = np.histogram(s, bins=edges)
    out["hist_edges"], out["hist_counts"] = edges, counts
    out["hist_density"] = counts / (counts.sum() * np.diff(edges))
    out["by_element"], out["hist_by_element"] = {}, {}
    if elements is not None:
        el = np.asarray([str(x) for x in elements])
        if len(el) != n:
            raise AnalysisInputError(
                f"{len(el)} elements for {n} atoms of committee_force_std: give the positions of the same run"
            )
        for e in sorted(set(el)):
            v = s[:, el == e]
            out["by_element"][e] = {
                "mean": float(v.mean()),
                "rms": float(np.sqrt((v**2).mean())),
                "max": float(v.max()),
                "n_atoms": int((el == e).sum()),
            }
            out["hist_by_element"][e] = np.histogram(v, bins=edges)[0]

    order = np.argsort(-out["sigma_max"], kind="stable")[: max(0, int(n_worst))]
    out["worst"] = [
        {"frame": int(f), "sigma_max": float(out["sigma_max"][f]), "atom": int(out["worst_atom"][f])}
        for f in order
    ]

    if energy_std is not None:
        e = _per_frame(energy_std, "committee_energy_std", nf)
        m, err = series_mean_sem(e, n_blocks)
        out["energy_std"] = e
        out["energy"] = {
            "mean": float(m),
            "mean_err": float(err),
            "max": float(e.max()),
            "mean_per_atom": float(m) / n,
        }
    if rotational is not None:
        r = _per_frame(rotational, "the rotational spread", nf)
        ratio = _safe_ratio(r, out["committee_force_rms"])
        out["rotational"], out["ratio"] = r, ratio
        rs = {}
        for key, v in (("rotational", r), ("committee", out["committee_force_rms"]), ("ratio", ratio)):
            m, err = series_mean_sem(v, n_blocks)
            rs[f"{key}_mean"], rs[f"{key}_mean_err"] = float(m), float(err)
        rs["ratio_max"] = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else float("nan")
        rs["ratio_of_rms"] = float(
            _safe_ratio(np.sqrt((r**2).mean()), np.sqrt((out["committee_force_rms"] ** 2).mean()))
        )
        if rotational_energy is not None and energy_std is not None:
            re_ = np.asarray(rotational_energy, dtype=float)
            if re_.shape == (nf,):
                er = _safe_ratio(re_, out["energy_std"])
                m, err = series_mean_sem(er, n_blocks)
                out["rotational_energy"], out["energy_ratio"] = re_, er
                rs["energy_rotational_mean"] = float(re_.mean())
                rs["energy_ratio_mean"], rs["energy_ratio_mean_err"] = float(m), float(err)
        out["rotational_summary"] = rs
    return out


def verdict(ratio_mean: float) -> str:
    """One sentence on the ratio rotational spread / committee spread."""
    if not np.isfinite(ratio_mean):
        return "no verdict: the committee spread is zero"
    if ratio_mean < 0.1:
        return "the symmetry breaking is small compared to the committee's uncertainty (ratio < 0.1)"
    if ratio_mean < 1.0:
        return "the symmetry breaking is a noticeable fraction of the committee's uncertainty (0.1-1)"
    return "the symmetry breaking exceeds the committee's uncertainty (ratio >= 1)"
