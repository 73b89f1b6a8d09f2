"""Symmetry-breaking diagnostics from i-PI outputs.

* :func:`read_properties` -- an i-PI ``.out`` property file: columns from the
  ``# column N --> name{unit}`` / ``# cols. N-M --> name`` header lines, converted to project
  units (energy eV, time ps, temperature K, length Å) with i-PI's own unit tables; a column
  without ``{unit}`` is in i-PI's atomic units.
* :func:`delta_v_statistics` -- ΔV = V_averaged - V_raw (e.g. ``pot_component_raw(1)`` minus
  ``pot_component_raw(0)``): mean, standard deviation, RMS and MAE (meV) with block errors,
  normalised autocorrelation, integrated correlation time (ps), one-sided power spectrum
  (meV²/THz over frequency in THz and cm⁻¹).
* :func:`conserved_drift` -- linear drift of the conserved energy, meV/ps per molecule, with a
  block error (slope fitted in each block).
* :class:`AngularMomentum` -- for a gas-phase molecule with velocities (Å/ps) and forces (eV/Å):
  L(t) = Σ m (r - r_com) × (v - v_com) (amu Å²/ps, also in ħ) and the torque
  τ(t) = Σ (r - r_com) × F (eV), which a rotation-invariant model makes zero.
"""

from __future__ import annotations

import os
import re

import numpy as np
import tidynamics
from MDAnalysis.analysis.base import AnalysisBase
from MDAnalysis.analysis.results import ResultsGroup

from .blocks import DEFAULT_BLOCKS, block_slices, mean_sem, series_mean_sem
from .errors import AnalysisInputError

__all__ = ["read_properties", "delta_v_statistics", "conserved_drift", "AngularMomentum",
           "HBAR_AMU_A2_PS", "PropertyTable"]

HBAR_AMU_A2_PS = 6.350779923  # ħ in amu Å² / ps
_HEAD = re.compile(r"^#\s*(?:column|cols\.)\s+(\d+)(?:\s*-\s*(\d+))?\s*-->\s*(\S+)")
_NAME = re.compile(r"^(?P<key>[^\s{(]+)(?:\{(?P<u1>[^}]*)\})?(?:\((?P<args>[^)]*)\))?(?:\{(?P<u2>[^}]*)\})?$")
_TARGET = {"energy": "electronvolt", "time": "picosecond", "temperature": "kelvin", "length": "angstrom"}


class PropertyTable(dict):
    """``name -> values`` (project units); ``.units[name]`` is the unit now, ``.raw_units`` as written."""

    def __init__(self):
        super().__init__()
        self.units, self.raw_units = {}, {}


def _dimension(key: str, unit: str | None):
    try:
        from ipi.engine.properties import Properties

        d = Properties().property_dict.get(key, {}).get("dimension")
        if d:
            return d
    except Exception:  # pragma: no cover - i-PI internals changed
        pass
    if unit:
        from ipi.utils.units import UnitMap

        for fam, table in UnitMap.items():
            if unit in table and unit not in ("", "automatic", "atomic_unit"):
                return fam
    return "undefined"


def read_properties(path: str) -> PropertyTable:
    """Read an i-PI ``.out`` file into a :class:`PropertyTable` (see module doc)."""
    from ipi.utils.units import unit_to_internal, unit_to_user

    if not os.path.isfile(path):
        raise AnalysisInputError(f"no such file: {path}: give the i-PI properties (.out) file")
    cols = []
    with open(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                continue
            m = _HEAD.match(line)
            if m:
                a = int(m.group(1))
                b = int(m.group(2)) if m.group(2) else a
                cols.append((a, b, m.group(3)))
    if not cols:
        raise AnalysisInputError(f"{path} has no '# column N --> name' header: give an i-PI properties file")
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as exc:
        raise AnalysisInputError(f"{path}: unreadable data line ({exc}): cut the partial last line") from None
    out = PropertyTable()
    for a, b, spec in cols:
        nm = _NAME.match(spec)
        if not nm:
            continue
        key, args = nm["key"], nm["args"]
        unit = nm["u2"] or nm["u1"] or ""
        name = f"{key}({args})" if args is not None else key
        if b > data.shape[1]:
            raise AnalysisInputError(f"{path}: header names column {b} but lines have {data.shape[1]}: the file is truncated")
        vals = data[:, a - 1 : b] if b > a else data[:, a - 1].copy()
        dim = _dimension(key, unit)
        out.raw_units[name] = unit or "atomic_unit"
        if dim in _TARGET:
            try:
                vals = unit_to_user(dim, _TARGET[dim], unit_to_internal(dim, unit or "atomic_unit", vals))
            except (KeyError, ValueError, TypeError):
                raise AnalysisInputError(f"{path}: unknown unit {unit!r} for {name}: use an i-PI unit") from None
            out.units[name] = _TARGET[dim]
        else:
            out.units[name] = unit or ("" if dim in ("number", "undefined") else "atomic_unit")
        out[name] = np.asarray(vals, float)
    return out


def _time_axis(props: PropertyTable, dt_ps):
    n = len(next(iter(props.values())))
    if "time" in props:
        return props["time"]
    if dt_ps and "step" in props:
        return props["step"] * float(dt_ps)
    if dt_ps:
        return np.arange(n) * float(dt_ps)
    raise AnalysisInputError("the properties file has no time{picosecond} column: pass --timestep (fs between lines)")


def _acf_norm(x):
    c = tidynamics.acf(x - x.mean())
    return c / c[0] if c[0] > 0 else c


def delta_v_statistics(v_avg, v_raw, time_ps, n_blocks=DEFAULT_BLOCKS) -> dict:
    """Statistics of ΔV = v_avg - v_raw (both eV) sampled at ``time_ps`` (uniform)."""
    dv = (np.asarray(v_avg, float) - np.asarray(v_raw, float)) * 1000.0  # meV
    t = np.asarray(time_ps, float)
    if len(dv) < 4:
        raise AnalysisInputError("ΔV needs at least 4 lines in the properties file: run longer")
    dt = float(np.median(np.diff(t)))
    mean, mean_err = series_mean_sem(dv, n_blocks)
    sl = block_slices(len(dv), n_blocks)
    std_b = [dv[s].std() for s in sl]
    rms_b = [np.sqrt((dv[s] ** 2).mean()) for s in sl]
    mae_b = [np.abs(dv[s]).mean() for s in sl]
    acf = _acf_norm(dv)
    lag = np.arange(len(dv)) * dt
    from .dipoles import integrated_time

    x = dv - dv.mean()
    spec = np.abs(np.fft.rfft(x)) ** 2 * dt / len(x) * 2.0  # one-sided PSD, meV² / THz (t in ps)
    freq = np.fft.rfftfreq(len(x), d=dt)  # THz
    return {
        "n": len(dv),
        "mean_meV": mean, "mean_meV_err": mean_err,
        "std_meV": dv.std(), "std_meV_err": mean_sem(std_b)[1],
        "rms_meV": float(np.sqrt((dv ** 2).mean())), "rms_meV_err": mean_sem(rms_b)[1],
        "mae_meV": float(np.abs(dv).mean()), "mae_meV_err": mean_sem(mae_b)[1],
        "tau_int_ps": integrated_time(lag, acf),
        "lag_ps": lag, "acf": acf,
        "freq_THz": freq, "freq_cm1": freq * 33.35640952, "psd_meV2_per_THz": spec,
        "peak_freq_THz": float(freq[1:][np.argmax(spec[1:])]) if len(freq) > 1 else float("nan"),
        "series_meV": dv, "time_ps": t,
    }


def conserved_drift(time_ps, conserved_eV, n_molecules=1, n_blocks=DEFAULT_BLOCKS) -> dict:
    """Slope of the conserved energy (meV/ps per molecule) from a linear fit, block error."""
    t = np.asarray(time_ps, float)
    e = np.asarray(conserved_eV, float) * 1000.0 / max(int(n_molecules), 1)
    if len(t) < 3:
        raise AnalysisInputError("the conserved-energy drift needs at least 3 lines: run longer")
    slope = np.polyfit(t, e, 1)[0]
    blocks = [np.polyfit(t[s], e[s], 1)[0] for s in block_slices(len(t), n_blocks) if s.stop - s.start >= 3]
    return {"drift_meV_per_ps_per_molecule": float(slope),
            "drift_err": mean_sem(blocks)[1] if len(blocks) > 1 else float("nan"),
            "n_molecules": int(n_molecules),
            "fluctuation_meV_per_molecule": float(np.std(e - np.polyval(np.polyfit(t, e, 1), t)))}


class AngularMomentum(AnalysisBase):
    """Angular momentum and torque about the centre of mass of all atoms (a gas-phase molecule).

    Needs a Universe with velocities (Å/ps) and/or forces (eV/Å), e.g. from
    :func:`analysis.readers.load_universe` with ``velocities=`` / ``forces=`` i-PI files.
    With a box, the molecule is made whole (minimum image to atom 0) first.

    Results: ``time`` (ps); ``L`` (F, 3) amu Å²/ps, ``L_hbar`` (F, 3) in ħ; ``torque`` (F, 3) eV;
    ``net_force`` (F, 3) eV/Å; summaries ``L_norm_mean``, ``torque_norm_mean``,
    ``torque_rms`` (eV) with block errors; ``L_drift`` (ħ/ps, slope of each component).
    """

    _analysis_algorithm_is_parallelizable = True
    _per_frame = ("L", "torque", "net_force")

    @classmethod
    def get_supported_backends(cls):
        return ("serial", "multiprocessing", "dask")

    def __init__(self, universe, dt_ps=None, n_blocks=DEFAULT_BLOCKS, **kwargs):
        super().__init__(universe.trajectory, **kwargs)
        ts = universe.trajectory.ts
        self.has_v, self.has_f = ts.has_velocities, ts.has_forces
        if not (self.has_v or self.has_f):
            raise AnalysisInputError("angular momentum/torque need velocities or forces: pass --velocities/--momenta and --forces files")
        self.m = universe.atoms.masses.astype(float)
        self.dt_ps, self.n_blocks = dt_ps, n_blocks

    def _get_aggregator(self):
        return ResultsGroup(lookup={k: ResultsGroup.ndarray_vstack for k in self._per_frame})

    def _prepare(self):
        for k in self._per_frame:
            self.results[k] = np.full((self.n_frames, 3), np.nan)

    def _single_frame(self):
        x = self._ts.positions.astype(float)
        box = self._ts.dimensions
        if box is not None:
            from MDAnalysis.lib.distances import minimize_vectors

            x = x[0] + minimize_vectors(x - x[0], box.astype(float))
        m = self.m
        rc = x - (m[:, None] * x).sum(0) / m.sum()
        i = self._frame_index
        if self.has_v:
            v = self._ts.velocities.astype(float)
            v = v - (m[:, None] * v).sum(0) / m.sum()
            self.results.L[i] = (m[:, None] * np.cross(rc, v)).sum(0)
        if self.has_f:
            f = self._ts.forces.astype(float)
            self.results.torque[i] = np.cross(rc, f).sum(0)
            self.results.net_force[i] = f.sum(0)

    def _conclude(self):
        r = self.results
        F = self.n_frames
        if self.dt_ps is not None:
            step = np.diff(self.frames).min() if F > 1 else 1
            r.time = np.arange(F) * float(self.dt_ps) * float(step)
        else:
            r.time = self.times - self.times[0]
        r.L_hbar = r.L / HBAR_AMU_A2_PS
        out = {}
        if self.has_v:
            n = np.linalg.norm(r.L_hbar, axis=1)
            out["L_norm_mean_hbar"], out["L_norm_mean_hbar_err"] = series_mean_sem(n, self.n_blocks)
            out["L_drift_hbar_per_ps"] = (np.polyfit(r.time, r.L_hbar, 1)[0] if F > 2 else np.full(3, np.nan))
        if self.has_f:
            tn = np.linalg.norm(r.torque, axis=1)
            out["torque_norm_mean_eV"], out["torque_norm_mean_eV_err"] = series_mean_sem(tn, self.n_blocks)
            out["torque_rms_eV"] = float(np.sqrt((tn ** 2).mean()))
            out["net_force_rms_eV_per_A"] = float(np.sqrt((np.linalg.norm(r.net_force, axis=1) ** 2).mean()))
        r.summary = out
