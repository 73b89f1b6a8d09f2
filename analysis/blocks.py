"""Block averaging: split the analysed frames into contiguous blocks, compute the observable
in each block, and report the mean with the standard error of the block means,
``sem = std(blocks, ddof=1) / sqrt(n_blocks)``. Blocks longer than the correlation time give
honest error bars for correlated MD data (Flyvbjerg & Petersen, J. Chem. Phys. 91, 461, 1989).
"""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_BLOCKS = 5


def block_slices(n_frames: int, n_blocks: int = DEFAULT_BLOCKS) -> list:
    """Contiguous, nearly equal slices covering ``range(n_frames)``; at most ``n_frames`` blocks."""
    n_blocks = max(1, min(int(n_blocks), int(n_frames)))
    edges = np.linspace(0, n_frames, n_blocks + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def mean_sem(per_block, axis: int = 0):
    """Mean and standard error over blocks (axis 0). The error is NaN with a single block."""
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
    """Mean of a time series (axis 0) and its block-averaged standard error."""
    x = np.asarray(series, dtype=float)
    blocks = [x[s].mean(axis=0) for s in block_slices(len(x), n_blocks)]
    return x.mean(axis=0), mean_sem(blocks)[1]
