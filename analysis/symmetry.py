"""Symmetry-breaking diagnostics from i-PI outputs (read with :mod:`mlip_server.analysis.ipi_files` and
:mod:`mlip_server.analysis.readers`).

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

import numpy as np
from MDAnalysis.analysis.base import AnalysisBase
from MDAnalysis.analysis.results import ResultsGroup

from .errors import AnalysisInputError
from .statistics import (
    DEFAULT_BLOCKS,
    block_slices,
    integrated_time,
    mean_sem,
    normalised_acf,
    series_mean_sem,
)

__all__ = ["delta_v_statistics", "conserved_drift", "AngularMomentum", "HBAR_AMU_A2_PS", "CM1_PER_THZ"]

HBAR_AMU_A2_PS = 6.350779923  # ħ in amu Å² / ps
CM1_PER_THZ = 33.35640952  # wavenumber (cm⁻¹) of 1 THz


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
    acf = normalised_acf(dv)
    lag = np.arange(len(dv)) * dt
    x = dv - dv.mean()
    spec = np.abs(np.fft.rfft(x)) ** 2 * dt / len(x) * 2.0  # one-sided PSD, meV² / THz (t in ps)
    freq = np.fft.rfftfreq(len(x), d=dt)  # THz
    return {
        "n": len(dv),
        "mean_meV": mean,
        "mean_meV_err": mean_err,
        "std_meV": dv.std(),
        "std_meV_err": mean_sem(std_b)[1],
        "rms_meV": float(np.sqrt((dv**2).mean())),
        "rms_meV_err": mean_sem(rms_b)[1],
        "mae_meV": float(np.abs(dv).mean()),
        "mae_meV_err": mean_sem(mae_b)[1],
        "tau_int_ps": integrated_time(lag, acf),
        "lag_ps": lag,
        "acf": acf,
        "freq_THz": freq,
        "freq_cm1": freq * CM1_PER_THZ,
        "psd_meV2_per_THz": spec,
        "peak_freq_THz": float(freq[1:][np.argmax(spec[1:])]) if len(freq) > 1 else float("nan"),
        "series_meV": dv,
        "time_ps": t,
    }


def conserved_drift(time_ps, conserved_eV, n_molecules=1, n_blocks=DEFAULT_BLOCKS) -> dict:
    """Slope of the conserved energy (meV/ps per molecule) from a linear fit, block error."""
    t = np.asarray(time_ps, float)
    e = np.asarray(conserved_eV, float) * 1000.0 / max(int(n_molecules), 1)
    if len(t) < 3:
        raise AnalysisInputError("the conserved-energy drift needs at least 3 lines: run longer")
    slope = np.polyfit(t, e, 1)[0]
    blocks = [np.polyfit(t[s], e[s], 1)[0] for s in block_slices(len(t), n_blocks) if s.stop - s.start >= 3]
    return {
        "drift_meV_per_ps_per_molecule": float(slope),
        "drift_err": mean_sem(blocks)[1] if len(blocks) > 1 else float("nan"),
        "n_molecules": int(n_molecules),
        "fluctuation_meV_per_molecule": float(np.std(e - np.polyval(np.polyfit(t, e, 1), t))),
    }


class AngularMomentum(AnalysisBase):
    """Angular momentum and torque about the centre of mass of all atoms (a gas-phase molecule).

    Needs a Universe with velocities (Å/ps) and/or forces (eV/Å), e.g. from
    :func:`mlip_server.analysis.readers.load_universe` with ``velocities=`` / ``forces=`` i-PI files.
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
            raise AnalysisInputError(
                "angular momentum/torque need velocities or forces: pass "
                "--velocities/--momenta and --forces files"
            )
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
            out["L_drift_hbar_per_ps"] = np.polyfit(r.time, r.L_hbar, 1)[0] if F > 2 else np.full(3, np.nan)
        if self.has_f:
            tn = np.linalg.norm(r.torque, axis=1)
            out["torque_norm_mean_eV"], out["torque_norm_mean_eV_err"] = series_mean_sem(tn, self.n_blocks)
            out["torque_rms_eV"] = float(np.sqrt((tn**2).mean()))
            out["net_force_rms_eV_per_A"] = float(np.sqrt((np.linalg.norm(r.net_force, axis=1) ** 2).mean()))
        r.summary = out
