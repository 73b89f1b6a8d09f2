"""Radial distribution functions and coordination numbers, with block-averaged errors.

:class:`BlockRDF` is MDAnalysis' :class:`~MDAnalysis.analysis.rdf.InterRDF` (same pair search,
exclusions and normalisation) that also keeps the histogram of every frame, so that g(r) and
the running coordination number n(r) get block-averaged standard errors. It refuses a Universe
without a periodic box (:class:`~mlip_server.analysis.errors.BoxError`). :func:`water_rdfs` computes
g_OO, g_OH and g_HH with the intramolecular O-H and H-H pairs excluded.

Units: r in Å; g(r) dimensionless; n(r) = number of B atoms within r of an A atom.
"""

from __future__ import annotations

import numpy as np
from MDAnalysis.analysis.rdf import InterRDF
from MDAnalysis.analysis.results import ResultsGroup
from MDAnalysis.lib.distances import distance_array, self_distance_array

from .errors import BoxError, require_box
from .statistics import DEFAULT_BLOCKS, block_slices, mean_sem

__all__ = ["BlockRDF", "water_rdfs", "default_rmax", "first_shell"]


def default_rmax(universe, cap: float = 8.0) -> float:
    """Largest r (Å) for which minimum-image pair counts are complete: half the smallest
    perpendicular width of the box (over all frames of a MemoryReader, else the first), capped."""
    traj = universe.trajectory
    dims = getattr(traj, "dimensions_array", None)
    boxes = np.atleast_2d(dims) if dims is not None else np.atleast_2d(traj.ts.dimensions)
    from MDAnalysis.lib.mdamath import triclinic_vectors

    widths = []
    for b in boxes:
        h = triclinic_vectors(b)
        vol = abs(np.linalg.det(h))
        for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
            widths.append(vol / np.linalg.norm(np.cross(h[j], h[k])))
    return float(min(cap, 0.5 * min(widths)))


class BlockRDF(InterRDF):
    """:class:`InterRDF` with per-frame histograms for block errors and coordination numbers.

    Parameters are those of InterRDF (``g1``, ``g2``, ``nbins``, ``range`` in Å,
    ``exclusion_block``) plus ``n_blocks``. Supports ``backend="multiprocessing"``.

    Pair search: when the full A x B distance matrix is small (``nA * nB <= dense_max_pairs``,
    e.g. a 1536-atom water box) every distance is computed with
    ``MDAnalysis.lib.distances.(self_)distance_array`` and histogrammed -- for dense liquids
    with r_max near L/2 this is 2-3x faster than the cell-list search; for identical groups
    only i < j is computed and counted twice. Larger systems use InterRDF's own
    ``capped_distance`` search. Both give the same counts (tested), with InterRDF's exclusion
    rule: pair (i, j) is skipped when ``i // xA == j // xB``.

    Results (in addition to InterRDF's ``bins``, ``edges``, ``count``, ``rdf``):
    ``rdf_err``; ``cn`` and ``cn_err`` (running coordination number n(r) at the upper bin edge);
    ``first_peak`` (r, g), ``first_min`` (r, Å) and ``cn_shell`` / ``cn_shell_err`` (n at the
    first minimum) from :func:`first_shell`.
    """

    _analysis_algorithm_is_parallelizable = True

    def __init__(
        self,
        g1,
        g2,
        nbins=200,
        range=(0.0, 8.0),
        exclusion_block=None,
        n_blocks=DEFAULT_BLOCKS,
        dense_max_pairs=4_000_000,
        **kwargs,
    ):
        require_box(g1.universe, "g(r)")
        super().__init__(
            g1, g2, nbins=nbins, range=range, norm="rdf", exclusion_block=exclusion_block, **kwargs
        )
        self.n_blocks = n_blocks
        self.dense = len(g1) * len(g2) <= dense_max_pairs
        self._same = len(g1) == len(g2) and np.array_equal(g1.ix, g2.ix)

    def _prepare(self):
        super()._prepare()
        nb = self.rdf_settings["bins"]
        self.results.frame_counts = np.zeros((self.n_frames, nb))
        self.results.frame_volumes = np.zeros(self.n_frames)
        if self.dense:
            self._excluded = self._excluded_pairs()

    def _excluded_pairs(self):
        """Indices into the dense distance array of the pairs InterRDF would exclude."""
        nA, nB = len(self.g1), len(self.g2)
        if self._same:
            i, j = np.triu_indices(nA, k=1)
            keep_rule = (
                None
                if self._exclusion_block is None
                else (i // self._exclusion_block[0] == j // self._exclusion_block[1])
            )
            return np.flatnonzero(keep_rule) if keep_rule is not None else np.empty(0, int)
        if self._exclusion_block is None:
            return np.empty(0, int)
        xA, xB = self._exclusion_block
        ia = np.arange(nA)
        jb = np.arange(nB)
        I, J = np.nonzero((ia[:, None] // xA) == (jb[None, :] // xB))
        return I * nB + J

    def _dense_counts(self):
        box = self._ts.dimensions
        if self._same:
            d = self_distance_array(self.g1.positions, box=box, backend=self.backend)
        else:
            d = distance_array(self.g1.positions, self.g2.positions, box=box, backend=self.backend).ravel()
        d[self._excluded] = np.inf
        count, _ = np.histogram(d, **self.rdf_settings)
        # identical groups: i < j only, InterRDF counts both orders (self pairs sit at r = 0
        # and are excluded by any exclusion_block; without one they are InterRDF's bin 0)
        if self._same:
            count = 2 * count
            if self._exclusion_block is None:
                count[0] += len(self.g1)
        return count

    def _single_frame(self):
        if self._ts.dimensions is None:
            raise BoxError(f"frame {self._ts.frame} has no periodic box: pass --box a b c")
        if self.dense:
            count = self._dense_counts()
            self.results.count += count
            self.results.volume_cum += self._ts.volume
        else:
            before = self.results.count.copy()
            super()._single_frame()
            count = self.results.count - before
        self.results.frame_counts[self._frame_index] = count
        self.results.frame_volumes[self._frame_index] = self._ts.volume

    def _get_aggregator(self):
        agg = super()._get_aggregator()
        agg._lookup.update(
            frame_counts=ResultsGroup.ndarray_vstack, frame_volumes=ResultsGroup.ndarray_hstack
        )
        return agg

    def _pairs_norm(self):
        nA, nB = len(self.g1), len(self.g2)
        N = nA * nB
        if self._exclusion_block:
            xA, xB = self._exclusion_block
            N -= xA * xB * (nA / xA)
        return N, nA

    def _conclude(self):
        super()._conclude()
        r = self.results
        edges = r.edges
        shell = 4.0 / 3.0 * np.pi * np.diff(edges**3)
        N, nA = self._pairs_norm()
        g_b, cn_b = [], []
        for s in block_slices(self.n_frames, self.n_blocks):
            c = r.frame_counts[s].sum(axis=0)
            nf = s.stop - s.start
            g_b.append(c / (nf * shell * N / r.frame_volumes[s].mean()))
            cn_b.append(np.cumsum(c) / (nf * nA))
        r.rdf_err = mean_sem(g_b)[1]
        r.cn = np.cumsum(r.count) / (self.n_frames * nA)
        r.cn_err = mean_sem(cn_b)[1]
        peak, rmin, imin = first_shell(r.bins, r.rdf)
        r.first_peak = peak
        r.first_min = rmin
        if imin is None:
            r.cn_shell, r.cn_shell_err = np.nan, np.nan
        else:
            r.cn_shell, r.cn_shell_err = r.cn[imin], r.cn_err[imin]


def first_shell(r, g, smooth: int = 5):
    """First peak (r in Å, g dimensionless) and first minimum after it (r at the upper edge of that
    bin).

    g is smoothed with a ``smooth``-bin running mean; the first peak is the first local maximum
    above 1, the minimum the first local minimum below 1 after it. Returns
    ``((r_peak, g_peak), r_min, i_min)``, with None where none is found.
    """
    g = np.asarray(g, float)
    if len(g) < 3 or not np.any(g > 1):
        return (None, None), None, None
    k = max(1, int(smooth))
    gs = np.convolve(g, np.ones(k) / k, mode="same")
    dr = r[1] - r[0]
    ip = None
    for i in range(1, len(gs) - 1):
        if gs[i] > 1 and gs[i] >= gs[i - 1] and gs[i] >= gs[i + 1] and g[i] > 0:
            ip = i
            break
    if ip is None:
        return (None, None), None, None
    # the real (unsmoothed) peak near the smoothed one
    lo, hi = max(0, ip - k), min(len(g), ip + k + 1)
    ipr = lo + int(np.argmax(g[lo:hi]))
    peak = (float(r[ipr]), float(g[ipr]))
    for i in range(ip + 1, len(gs) - 1):
        if gs[i] < 1 and gs[i] < gs[i + 1] and gs[i] <= gs[i - 1]:
            return peak, float(r[i] + 0.5 * dr), i
    return peak, None, None


def water_rdfs(universe, water, rmax=None, nbins=200, n_blocks=DEFAULT_BLOCKS, run_kw=None):
    """g_OO, g_OH, g_HH of a water Universe; intramolecular O-H and H-H pairs excluded
    (``exclusion_block`` on molecule-ordered groups). ``rmax`` in Å (default: :func:`default_rmax`),
    ``nbins`` bins from 0 to it. Returns ``{"OO": BlockRDF, ...}`` (r in Å, g dimensionless)."""
    require_box(universe, "g(r)")
    rmax = rmax or default_rmax(universe)
    O, H = water.oxygens, water.hydrogens
    out = {}
    for name, g1, g2, excl in (("OO", O, O, (1, 1)), ("OH", O, H, (1, 2)), ("HH", H, H, (2, 2))):
        kw = dict(run_kw or {})
        if "progressbar_kwargs" in kw:
            kw["progressbar_kwargs"] = {"desc": f"g(r) {name[0]}-{name[1]}"}
        out[name] = BlockRDF(
            g1, g2, nbins=nbins, range=(0.0, rmax), exclusion_block=excl, n_blocks=n_blocks
        ).run(**kw)
    return out
