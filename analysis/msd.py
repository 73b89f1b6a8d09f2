"""Mean-squared displacement and self-diffusion coefficient.

:class:`MSD` collects the wrapped positions of oxygens (or of molecular centres of mass) in
``_single_frame`` (parallel-safe), then in ``_conclude``

1. unwraps them: every frame-to-frame displacement is mapped to its minimum image
   (``MDAnalysis.lib.distances.minimize_vectors``, the same rule as
   ``MDAnalysis.transformations.nojump``; valid while nothing moves half a box between frames);
2. removes the centre-of-mass drift of the analysed group (equal to the system's drift for
   molecular centres, and drift-free-equivalent for oxygens);
3. computes the MSD with the FFT algorithm of ``tidynamics.msd`` (as ``EinsteinMSD(fft=True)``
   does), averaged over particles;
4. fits MSD = 6 D t + b over a window of lag times; the error of D is the standard error of D
   fitted in each of ``n_blocks`` contiguous blocks of the trajectory (same window).

Optional Yeh-Hummer finite-size correction (J. Phys. Chem. B 108, 15873, 2004):
``D_inf = D_PBC + xi k_B T / (6 pi eta L)``, xi = 2.837297, for a cubic box of side L
(V^(1/3) otherwise), shear viscosity eta given by the user in mPa s, temperature in K.

Units: time ps, MSD Å², D in Å²/ps (also reported in 1e-5 cm²/s; 1 Å²/ps = 10 × 1e-5 cm²/s).
"""

from __future__ import annotations

import numpy as np
import tidynamics
from MDAnalysis.analysis.base import AnalysisBase
from MDAnalysis.analysis.results import ResultsGroup
from MDAnalysis.lib.distances import minimize_vectors

from .errors import AnalysisInputError, BoxError, require_box
from .molecules import molecular_centres
from .statistics import DEFAULT_BLOCKS, block_slices, mean_sem

__all__ = ["MSD", "unwrap", "yeh_hummer", "XI_CUBIC"]

XI_CUBIC = 2.837297
KB_J = 1.380649e-23
A2PS_TO_1E5CM2S = 10.0


def unwrap(positions: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Unwrap (F, M, 3) wrapped positions by minimum-image frame-to-frame displacements."""
    pos = np.asarray(positions, np.float64)
    disp = np.diff(pos, axis=0)
    for t in range(len(disp)):
        disp[t] = minimize_vectors(disp[t], boxes[t + 1].astype(np.float64))
    out = np.empty_like(pos)
    out[0] = pos[0]
    np.cumsum(disp, axis=0, out=out[1:])
    out[1:] += pos[0]
    return out


def particle_msd(x: np.ndarray) -> np.ndarray:
    """MSD(lag) averaged over particles of unwrapped (F, M, 3) positions, by FFT (tidynamics)."""
    F, M, _ = x.shape
    acc = np.zeros(F)
    for i in range(M):
        acc += tidynamics.msd(x[:, i, :])
    return acc / M


def yeh_hummer(box_length_A: float, viscosity_mPas: float, temperature_K: float) -> float:
    """Finite-size correction xi k_B T / (6 pi eta L) in Å²/ps."""
    eta = viscosity_mPas * 1e-3
    L = box_length_A * 1e-10
    return XI_CUBIC * KB_J * temperature_K / (6 * np.pi * eta * L) * 1e8


def _fit(t, msd, window):
    sel = (t >= window[0] - 1e-12) & (t <= window[1] + 1e-12)
    if sel.sum() < 2:
        return np.nan, np.nan
    A = np.vstack([t[sel], np.ones(sel.sum())]).T
    (slope, icpt), *_ = np.linalg.lstsq(A, msd[sel], rcond=None)
    return slope, icpt


class MSD(AnalysisBase):
    """MSD and self-diffusion coefficient of water oxygens or molecular centres.

    Parameters
    ----------
    universe : Universe with a periodic box (refused otherwise: unwrapping needs it)
    water : :class:`mlip_server.analysis.molecules.Water` or None; with ``group="com"`` it is required
    group : "O" (oxygens), "com" (molecular centres of mass) or an AtomGroup
    dt_ps : time between trajectory frames in ps (default: the trajectory's ``dt``)
    fit_window : (t_start, t_end) in ps; default 10 %-50 % of one block's duration
    n_blocks : blocks for the error of D and of the MSD curve
    remove_drift : subtract the group's centre-of-mass displacement
    viscosity : shear viscosity in mPa s for the Yeh-Hummer correction (None: not applied)
    temperature : K, used with ``viscosity``

    Notes
    -----
    Results: ``time`` (ps), ``msd`` (Å²), ``msd_err``, ``D``, ``D_err`` (Å²/ps), ``D_1e5cm2s``,
    ``D_1e5cm2s_err``, ``fit_window``, ``intercept``, and with a viscosity ``D_yh``,
    ``yh_correction`` (Å²/ps).
    """

    _analysis_algorithm_is_parallelizable = True

    @classmethod
    def get_supported_backends(cls):
        return ("serial", "multiprocessing", "dask")

    def __init__(
        self,
        universe,
        water=None,
        group="O",
        dt_ps=None,
        fit_window=None,
        n_blocks=DEFAULT_BLOCKS,
        remove_drift=True,
        viscosity=None,
        temperature=300.0,
        **kwargs,
    ):
        require_box(universe, "MSD unwrapping")
        super().__init__(universe.trajectory, **kwargs)
        self.u = universe
        self.water = water
        if isinstance(group, str):
            if group not in ("O", "com"):
                raise AnalysisInputError(f"unknown MSD group {group!r}: use O or com")
            if water is None:
                sel = universe.select_atoms("element O")
                if group == "com" or len(sel) == 0:
                    raise AnalysisInputError(
                        "MSD of water needs O and H atoms: check element names (--types)"
                    )
                self._idx = sel.indices
            else:
                self._idx = water.o
        else:
            self._idx = group.indices
        self.group = group if isinstance(group, str) else "atoms"
        self.dt_ps = dt_ps
        self.fit_window = fit_window
        self.n_blocks = n_blocks
        self.remove_drift = remove_drift
        self.viscosity = viscosity
        self.temperature = temperature
        self._masses = universe.atoms.masses

    def _prepare(self):
        n = len(self.water.o) if self.group == "com" else len(self._idx)
        self.results.positions = np.zeros((self.n_frames, n, 3), np.float32)
        self.results.boxes = np.zeros((self.n_frames, 6), np.float32)

    def _single_frame(self):
        box = self._ts.dimensions
        if box is None:
            raise BoxError(f"frame {self._ts.frame} has no periodic box: pass --box a b c")
        pos = self._ts.positions
        if self.group == "com":
            pos = molecular_centres(pos, self._masses, self.water, box)
        else:
            pos = pos[self._idx]
        self.results.positions[self._frame_index] = pos
        self.results.boxes[self._frame_index] = box

    def _get_aggregator(self):
        return ResultsGroup(
            lookup={"positions": ResultsGroup.ndarray_vstack, "boxes": ResultsGroup.ndarray_vstack}
        )

    def _frame_dt(self):
        if self.dt_ps is not None:
            step = np.diff(self.frames).min() if len(self.frames) > 1 else 1
            return float(self.dt_ps) * float(step)
        if len(self.times) > 1:
            return float(self.times[1] - self.times[0])
        return 1.0

    def _conclude(self):
        r = self.results
        x = unwrap(r.positions, r.boxes)
        if self.remove_drift:
            if self.group == "O" or self.group == "atoms":
                w = self._masses[self._idx]
            else:
                w = self._masses[self.water.o] + self._masses[self.water.h].sum(axis=1)
            com = (x * w[None, :, None]).sum(axis=1) / w.sum()
            x = x - (com - com[0])[:, None, :]
        dt = self._frame_dt()
        F = len(x)
        r.time = np.arange(F) * dt
        r.msd = particle_msd(x)
        slices = block_slices(F, self.n_blocks)
        nb_min = min(s.stop - s.start for s in slices)
        if self.fit_window is None:
            T = (nb_min - 1) * dt
            self.fit_window = (0.1 * T, 0.5 * T)
        lo, hi = self.fit_window
        if hi <= lo or hi > (F - 1) * dt + 1e-9:
            raise AnalysisInputError(
                f"MSD fit window {lo:g}-{hi:g} ps does not fit the trajectory ({(F - 1) * dt:g} ps): "
                "pass a smaller --fit-window"
            )
        slope, icpt = _fit(r.time, r.msd, (lo, hi))
        r.D = slope / 6.0
        r.intercept = icpt
        D_b, msd_b = [], []
        for s in slices:
            m = particle_msd(x[s])
            D_b.append(_fit(r.time[: len(m)], m, (lo, hi))[0] / 6.0)
            pad = np.full(F, np.nan)
            pad[: len(m)] = m
            msd_b.append(pad)
        r.D_blocks = np.array(D_b)
        r.D_err = mean_sem(D_b)[1] if np.all(np.isfinite(D_b)) else np.nan
        r.msd_err = mean_sem(np.array(msd_b))[1]
        r.fit_window = (lo, hi)
        r.D_1e5cm2s = r.D * A2PS_TO_1E5CM2S
        r.D_1e5cm2s_err = r.D_err * A2PS_TO_1E5CM2S
        if self.viscosity:
            L = float(np.cbrt(np.mean([_volume(b) for b in r.boxes])))
            r.yh_correction = yeh_hummer(L, self.viscosity, self.temperature)
            r.D_yh = r.D + r.yh_correction
        del r["positions"]


def _volume(box) -> float:
    from MDAnalysis.lib.mdamath import box_volume

    return float(box_volume(box))
