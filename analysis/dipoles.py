"""Water dipole statistics: orientation distribution, pair correlations, reorientation
dynamics and the static dielectric constant.

The molecular dipole direction is ``u = (midpoint of the two H - O) / |...|`` of the whole
molecule (minimum-image O->H vectors, see :mod:`mlip_server.analysis.molecules`).

* :class:`DipoleOrientation` -- P(cos theta, phi) of u in the lab frame, cos theta = u_z,
  phi = atan2(u_y, u_x), normalised so that an isotropic distribution is 1 everywhere;
  the orientational free energy is -ln P (units of k_B T).
* :class:`DipolePairCorrelation` -- c_L(r) = <(r̂·u_i)(r̂·u_j)> and
  c_T(r) = <u_i·u_j> - c_L(r) averaged over O-O pairs at distance r (Å), i.e. the pair sums
  divided by the pair counts (that is, by g_OO(r)); needs a periodic box.
* :class:`DipoleAutocorrelation` -- C1(t) = <u(t)·u(0)>, C2(t) = <P2(u(t)·u(0))> by FFT
  (``tidynamics.acf``), with integrated reorientation times tau_n = ∫ C_n dt (ps) up to the
  first zero crossing.
* :class:`DielectricConstant` -- total dipole M = Σ_molecules Σ_atoms q_a (r_a - r_O) (e·Å,
  user-supplied point charges, neutral molecules) and
  eps = 1 + (<M²> - <M>²) / (3 eps0 V k_B T) (conducting boundary conditions).

Every class stores per-frame data and computes errors by block averaging
(:mod:`mlip_server.analysis.statistics`); all but the autocorrelation can run with
``backend="multiprocessing"`` (it too, the per-frame vectors are merged in order).
"""

from __future__ import annotations

import numpy as np
import tidynamics
from MDAnalysis.analysis.base import AnalysisBase
from MDAnalysis.analysis.results import ResultsGroup
from MDAnalysis.lib.distances import minimize_vectors, self_capped_distance, self_distance_array

from .errors import AnalysisInputError, BoxError, require_box
from .molecules import dipole_directions, oh_vectors
from .statistics import DEFAULT_BLOCKS, block_slices, integrated_time, mean_sem

__all__ = [
    "DipoleOrientation",
    "DipolePairCorrelation",
    "DipoleAutocorrelation",
    "DielectricConstant",
    "EPS0_E2_PER_EV_A",
    "KB_EV",
    "DEBYE_PER_EA",
]

EPS0_E2_PER_EV_A = 5.5263494e-3  # vacuum permittivity in e² / (eV Å)
KB_EV = 8.617333262e-5  # eV / K
DEBYE_PER_EA = 4.80320471  # 1 e·Å in Debye


class _PerFrame(AnalysisBase):
    """Base: per-frame arrays in ``results`` merged in frame order for parallel runs."""

    _analysis_algorithm_is_parallelizable = True
    _per_frame: tuple = ()

    @classmethod
    def get_supported_backends(cls):
        return ("serial", "multiprocessing", "dask")

    def _get_aggregator(self):
        return ResultsGroup(lookup={k: ResultsGroup.ndarray_vstack for k in self._per_frame})

    def _box(self, need: bool):
        box = self._ts.dimensions
        if need and box is None:
            raise BoxError(f"frame {self._ts.frame} has no periodic box: pass --box a b c")
        return box


class DipoleOrientation(_PerFrame):
    """Orientational distribution P(cos theta, phi) of water dipoles (lab frame).

    Results: ``cos_edges``, ``phi_edges`` (rad); ``P`` and ``P_err`` (n_cos, n_phi), mean 1;
    ``free_energy`` = -ln P (k_B T; NaN where P = 0); ``P_cos`` and ``P_cos_err`` (marginal over
    phi, mean 1); ``mean_cos`` and ``mean_cos_err`` (<u_z>, a net polarisation).
    """

    _per_frame = ("hist", "uz")

    def __init__(self, universe, water, n_cos=20, n_phi=36, n_blocks=DEFAULT_BLOCKS, **kwargs):
        super().__init__(universe.trajectory, **kwargs)
        self.water, self.n_cos, self.n_phi, self.n_blocks = water, int(n_cos), int(n_phi), n_blocks

    def _prepare(self):
        self.results.hist = np.zeros((self.n_frames, self.n_cos * self.n_phi), np.int32)
        self.results.uz = np.zeros((self.n_frames, 1))

    def _single_frame(self):
        u = dipole_directions(self._ts.positions, self.water, self._box(False))
        ic = np.clip(((u[:, 2] + 1.0) * 0.5 * self.n_cos).astype(int), 0, self.n_cos - 1)
        phi = np.arctan2(u[:, 1], u[:, 0])
        ip = np.clip(((phi + np.pi) / (2 * np.pi) * self.n_phi).astype(int), 0, self.n_phi - 1)
        self.results.hist[self._frame_index] = np.bincount(
            ic * self.n_phi + ip, minlength=self.n_cos * self.n_phi
        )
        self.results.uz[self._frame_index] = u[:, 2].mean()

    def _conclude(self):
        r = self.results
        shape = (self.n_cos, self.n_phi)

        def norm(h):
            h = h.reshape(shape).astype(float)
            return h / (h.sum() / h.size)

        def cos_of(h):
            h = h.reshape(shape).astype(float).sum(axis=1)
            return h / (h.sum() / h.size)

        slices = block_slices(self.n_frames, self.n_blocks)
        total = r.hist.sum(axis=0)
        r.cos_edges = np.linspace(-1, 1, self.n_cos + 1)
        r.phi_edges = np.linspace(-np.pi, np.pi, self.n_phi + 1)
        r.P = norm(total)
        r.P_err = mean_sem([norm(r.hist[s].sum(axis=0)) for s in slices])[1]
        with np.errstate(divide="ignore"):
            r.free_energy = np.where(r.P > 0, -np.log(np.where(r.P > 0, r.P, 1.0)), np.nan)
        r.P_cos = cos_of(total)
        r.P_cos_err = mean_sem([cos_of(r.hist[s].sum(axis=0)) for s in slices])[1]
        r.mean_cos = float(r.uz.mean())
        r.mean_cos_err = mean_sem([r.uz[s].mean() for s in slices])[1]


class DipolePairCorrelation(_PerFrame):
    """Longitudinal and transverse dipole correlations c_L(r), c_T(r) over O-O distance r (Å).

    Results: ``bins`` (Å), ``pairs`` (pair count per bin, all frames), ``c_L``, ``c_L_err``,
    ``c_T``, ``c_T_err`` (NaN where no pair was found).
    """

    _per_frame = ("frame_sums",)

    def __init__(
        self,
        universe,
        water,
        rmax=8.0,
        nbins=80,
        n_blocks=DEFAULT_BLOCKS,
        dense_max_pairs=4_000_000,
        **kwargs,
    ):
        require_box(universe, "c_L(r), c_T(r)")
        super().__init__(universe.trajectory, **kwargs)
        self.water, self.rmax, self.nbins, self.n_blocks = water, float(rmax), int(nbins), n_blocks
        # all O-O distances at once (self_distance_array) for small systems, else a cell list
        self.dense = water.n_molecules**2 <= dense_max_pairs

    def _prepare(self):
        self.results.frame_sums = np.zeros((self.n_frames, 3, self.nbins))
        if self.dense:
            self._iu, self._ju = np.triu_indices(self.water.n_molecules, k=1)

    def _single_frame(self):
        box = self._box(True)
        pos = self._ts.positions
        u = dipole_directions(pos, self.water, box)
        xo = pos[self.water.o]
        if self.dense:
            d = self_distance_array(xo, box=box)
            sel = np.flatnonzero((d < self.rmax) & (d > 0))
            i, j, d = self._iu[sel], self._ju[sel], d[sel]
        else:
            pairs, d = self_capped_distance(xo, self.rmax, box=box)
            ok = d > 0
            pairs, d = pairs[ok], d[ok]
            i, j = pairs[:, 0], pairs[:, 1]
        rhat = minimize_vectors(xo[j] - xo[i], box) / d[:, None]
        ui, uj = u[i], u[j]
        cl = np.einsum("ij,ij->i", rhat, ui) * np.einsum("ij,ij->i", rhat, uj)
        ct = np.einsum("ij,ij->i", ui, uj) - cl
        b = np.minimum((d * (self.nbins / self.rmax)).astype(int), self.nbins - 1)
        s = self.results.frame_sums[self._frame_index]
        s[0] = np.bincount(b, minlength=self.nbins)
        s[1] = np.bincount(b, weights=cl, minlength=self.nbins)
        s[2] = np.bincount(b, weights=ct, minlength=self.nbins)

    def _conclude(self):
        r = self.results
        edges = np.linspace(0, self.rmax, self.nbins + 1)
        r.bins = 0.5 * (edges[1:] + edges[:-1])

        def ratio(s):
            with np.errstate(invalid="ignore", divide="ignore"):
                return s[1] / s[0], s[2] / s[0]

        tot = r.frame_sums.sum(axis=0)
        r.pairs = tot[0]
        r.c_L, r.c_T = ratio(tot)
        blocks = [ratio(r.frame_sums[s].sum(axis=0)) for s in block_slices(self.n_frames, self.n_blocks)]
        r.c_L_err = mean_sem([b[0] for b in blocks])[1]
        r.c_T_err = mean_sem([b[1] for b in blocks])[1]


def _c1_c2(U: np.ndarray):
    """C1, C2 of unit vectors U (F, M, 3), averaged over molecules and time origins."""
    F, M, _ = U.shape
    c1 = tidynamics.acf(U.reshape(F, M * 3)) / M
    prods = [
        U[:, :, k] * U[:, :, l] * (1.0 if k == l else np.sqrt(2.0)) for k in range(3) for l in range(k, 3)
    ]
    c2 = 1.5 * tidynamics.acf(np.concatenate(prods, axis=1)) / M - 0.5
    return c1, c2


class DipoleAutocorrelation(_PerFrame):
    """Dipole reorientation: C1(t) = <u(t)·u(0)>, C2(t) = <P2(u(t)·u(0))>.

    Parameters: ``dt_ps`` time between trajectory frames in ps (default: trajectory ``dt``).
    Results: ``time`` (ps), ``C1``, ``C1_err``, ``C2``, ``C2_err`` (errors from blocks, NaN
    beyond one block's length), ``tau1``, ``tau1_err``, ``tau2``, ``tau2_err`` (ps, integrated
    to the first zero crossing), ``tau1_complete``, ``tau2_complete``.

    ``tau_n_complete`` is False when C_n never reaches zero in the run: τ_n is then the integral
    over the whole run, a lower bound that depends on the run length, not a relaxation time.
    ``tau_n_err`` is the standard error of the same estimator over blocks, so it is given only
    when C_n reaches zero inside every block; otherwise it is NaN (blocks shorter than the decay
    would give a tight scatter of a different, truncated quantity).
    """

    _per_frame = ("u",)

    def __init__(self, universe, water, dt_ps=None, n_blocks=DEFAULT_BLOCKS, **kwargs):
        super().__init__(universe.trajectory, **kwargs)
        self.water, self.dt_ps, self.n_blocks = water, dt_ps, n_blocks

    def _prepare(self):
        self.results.u = np.zeros((self.n_frames, self.water.n_molecules, 3), np.float32)

    def _single_frame(self):
        self.results.u[self._frame_index] = dipole_directions(
            self._ts.positions, self.water, self._box(False)
        )

    def _conclude(self):
        r = self.results
        U = r.u.astype(np.float64)
        F = len(U)
        if self.dt_ps is not None:
            step = np.diff(self.frames).min() if F > 1 else 1
            dt = float(self.dt_ps) * float(step)
        else:
            dt = float(self.times[1] - self.times[0]) if F > 1 else 1.0
        r.time = np.arange(F) * dt
        r.C1, r.C2 = _c1_c2(U)
        r.tau1 = integrated_time(r.time, r.C1)
        r.tau2 = integrated_time(r.time, r.C2)
        r.tau1_complete, r.tau2_complete = bool(np.any(r.C1 <= 0)), bool(np.any(r.C2 <= 0))
        b1, b2, t1, t2 = [], [], [], []
        for s in block_slices(F, self.n_blocks):
            c1, c2 = _c1_c2(U[s])
            n = len(c1)
            t1.append(integrated_time(r.time[:n], c1) if np.any(c1 <= 0) else np.nan)
            t2.append(integrated_time(r.time[:n], c2) if np.any(c2 <= 0) else np.nan)
            b1.append(np.pad(c1, (0, F - n), constant_values=np.nan))
            b2.append(np.pad(c2, (0, F - n), constant_values=np.nan))
        r.C1_err = mean_sem(b1)[1]
        r.C2_err = mean_sem(b2)[1]
        r.tau1_err = mean_sem(t1)[1] if np.all(np.isfinite(t1)) else np.nan
        r.tau2_err = mean_sem(t2)[1] if np.all(np.isfinite(t2)) else np.nan
        del r["u"]


class DielectricConstant(_PerFrame):
    """Total-dipole fluctuation and static dielectric constant from point charges.

    Parameters: ``charges`` {element: charge in e} (e.g. {"O": -0.8476, "H": 0.4238}, SPC/E);
    molecules must be neutral. ``temperature`` in K.

    Results: ``M`` (F, 3) total dipole (e·Å); ``M2_fluct`` = <M²> - <M>² (e²Å²) and error;
    ``epsilon`` and ``epsilon_err``; ``mu_molecule`` and error (mean molecular dipole, Debye);
    ``volume`` (mean, Å³).
    """

    _per_frame = ("M", "mu", "volume")

    def __init__(self, universe, water, charges, temperature=300.0, n_blocks=DEFAULT_BLOCKS, **kwargs):
        require_box(universe, "the dielectric constant")
        super().__init__(universe.trajectory, **kwargs)
        try:
            qo, qh = float(charges["O"]), float(charges["H"])
        except KeyError as exc:
            raise AnalysisInputError(
                f"no charge for element {exc.args[0]}: pass --charges O=-0.8476 H=0.4238"
            ) from None
        if abs(qo + 2 * qh) > 1e-6:
            raise AnalysisInputError(
                f"charges O={qo} H={qh} make each water carry {qo + 2 * qh:+g} e: give "
                "neutral molecules (q_O = -2 q_H)"
            )
        self.water, self.qh, self.T, self.n_blocks = water, qh, float(temperature), n_blocks

    def _prepare(self):
        self.results.M = np.zeros((self.n_frames, 3))
        self.results.mu = np.zeros((self.n_frames, 1))
        self.results.volume = np.zeros((self.n_frames, 1))

    def _single_frame(self):
        box = self._box(True)
        d = oh_vectors(self._ts.positions, self.water, box)  # the O charge sits at the origin
        mu = self.qh * d.sum(axis=1)
        self.results.M[self._frame_index] = mu.sum(axis=0)
        self.results.mu[self._frame_index] = np.linalg.norm(mu, axis=1).mean() * DEBYE_PER_EA
        self.results.volume[self._frame_index] = self._ts.volume

    def _eps(self, M, V):
        fl = (M**2).sum(axis=1).mean() - (M.mean(axis=0) ** 2).sum()
        return fl, 1.0 + fl / (3.0 * EPS0_E2_PER_EV_A * V.mean() * KB_EV * self.T)

    def _conclude(self):
        r = self.results
        V = r.volume[:, 0]
        r.M2_fluct, r.epsilon = self._eps(r.M, V)
        blocks = [self._eps(r.M[s], V[s]) for s in block_slices(self.n_frames, self.n_blocks)]
        r.M2_fluct_err = mean_sem([b[0] for b in blocks])[1]
        r.epsilon_err = mean_sem([b[1] for b in blocks])[1]
        r.mu_molecule = float(r.mu.mean())
        r.mu_molecule_err = mean_sem([r.mu[s].mean() for s in block_slices(self.n_frames, self.n_blocks)])[1]
        r.volume_mean = float(V.mean())
        r.temperature = self.T
