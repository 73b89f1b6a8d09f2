"""Statistics of correlated MD data: block averages, autocorrelation times, Welch's t test.

Block averaging: split the analysed frames into contiguous blocks, compute the observable in
each block, and report the mean with the standard error of the block means,
``sem = std(blocks, ddof=1) / sqrt(n_blocks)``. Blocks longer than the correlation time give
honest error bars for correlated MD data (Flyvbjerg & Petersen, J. Chem. Phys. 91, 461, 1989).

Two block averages (e.g. of the same observable in two runs) are compared with Welch's t and
the Welch–Satterthwaite degrees of freedom (:func:`welch_compare`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = [
    "DEFAULT_BLOCKS",
    "block_slices",
    "mean_sem",
    "series_mean_sem",
    "normalised_acf",
    "integrated_time",
    "welch_compare",
]

DEFAULT_BLOCKS = 5


def block_slices(n_frames: int, n_blocks: int = DEFAULT_BLOCKS) -> list:
    """Contiguous, nearly equal slices covering ``range(n_frames)``.

    Parameters
    ----------
    n_frames : int
        Number of frames (or samples) to split.
    n_blocks : int
        Wanted number of blocks; at most ``n_frames`` are made.

    Returns
    -------
    list of slice
    """
    n_blocks = max(1, min(int(n_blocks), int(n_frames)))
    edges = np.linspace(0, n_frames, n_blocks + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def mean_sem(per_block, axis: int = 0):
    """Mean and standard error over blocks.

    Parameters
    ----------
    per_block : array_like
        The observable in each block along ``axis`` (NaN entries are left out).
    axis : int
        The block axis.

    Returns
    -------
    mean, sem : ndarray or float
        In the unit of ``per_block``; the error is NaN with a single block.
    """
    x = np.asarray(per_block, dtype=float)
    nb = x.shape[axis]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, axis=axis)
        if nb < 2:
            return mean, np.full_like(mean, np.nan)
        sem = np.nanstd(x, axis=axis, ddof=1) / np.sqrt(np.sum(np.isfinite(x), axis=axis))
    return mean, sem


def series_mean_sem(series, n_blocks: int = DEFAULT_BLOCKS):
    """Mean of a time series and its block-averaged standard error.

    Parameters
    ----------
    series : array_like
        Samples along axis 0.
    n_blocks : int
        Blocks for the error.

    Returns
    -------
    mean, sem : ndarray or float
        In the unit of ``series``.
    """
    x = np.asarray(series, dtype=float)
    blocks = [x[s].mean(axis=0) for s in block_slices(len(x), n_blocks)]
    return x.mean(axis=0), mean_sem(blocks)[1]


def normalised_acf(x) -> np.ndarray:
    """Autocorrelation of the fluctuations of ``x``, normalised to 1 at lag 0 (FFT, ``tidynamics``).

    Parameters
    ----------
    x : array_like
        A uniformly sampled series.

    Returns
    -------
    ndarray
        C(k) for lags k = 0 .. len(x) - 1 (unnormalised when ``x`` is constant).
    """
    import tidynamics

    x = np.asarray(x, float)
    c = tidynamics.acf(x - x.mean())
    return c / c[0] if c[0] > 0 else c


def integrated_time(t, c) -> float:
    """∫ C dt (trapezoid) from 0 to the first zero crossing of C (or the end).

    Parameters
    ----------
    t : array_like
        Lags, starting at 0.
    c : array_like
        A correlation function at ``t``, 1 at lag 0.

    Returns
    -------
    float
        The integrated correlation time, in the unit of ``t``.
    """
    c = np.asarray(c, float)
    neg = np.flatnonzero(c <= 0)
    if len(neg):
        k = neg[0]
        # linear interpolation to the crossing
        t0 = t[k - 1] + (t[k] - t[k - 1]) * c[k - 1] / (c[k - 1] - c[k]) if k > 0 else 0.0
        tt = np.append(t[:k], t0)
        cc = np.append(c[:k], 0.0)
        return float(np.trapezoid(cc, tt))
    return float(np.trapezoid(c, t))


def _known(x) -> bool:
    return x is not None and math.isfinite(x)


def welch_compare(a, a_err, b, b_err, n_blocks: int) -> dict:
    """Difference b − a of two block averages with Welch's t test, 95 % two-sided.

    Significant when |t| ≥ the Student-t quantile for the Welch–Satterthwaite degrees of
    freedom ``dof`` (2.45 for 6, not the normal 1.96: with 4 blocks per run the errors
    themselves are uncertain).

    Parameters
    ----------
    a, b : float or None
        The two means (any unit, the same for both).
    a_err, b_err : float or None
        Their standard errors from ``n_blocks`` blocks each, in the unit of the means.
    n_blocks : int
        Blocks behind each error (``n_blocks - 1`` degrees of freedom each).

    Returns
    -------
    dict
        ``delta`` (b − a), ``err`` (combined standard error), ``t``, ``dof``, ``t_crit``,
        ``significant``. A missing or non-finite value or error gives no verdict: ``err``,
        ``t``, ``dof``, ``t_crit`` and ``significant`` are None (``delta`` too without both values).
    """
    from scipy.stats import t as student_t

    if not (_known(a) and _known(b) and _known(a_err) and _known(b_err)):
        return {
            "delta": b - a if _known(a) and _known(b) else None,
            "err": None,
            "t": None,
            "dof": None,
            "t_crit": None,
            "significant": None,
        }
    delta, err = b - a, math.hypot(a_err, b_err)
    nu = n_blocks - 1
    dof = err**4 / (a_err**4 / nu + b_err**4 / nu) if err > 0 else float(nu)
    t = delta / err if err > 0 else (math.inf if delta else 0.0)
    t_crit = float(student_t.ppf(0.975, dof))
    return {
        "delta": delta,
        "err": err,
        "t": t,
        "dof": dof,
        "t_crit": t_crit,
        "significant": bool(abs(t) >= t_crit),
    }
