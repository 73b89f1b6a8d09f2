"""Writing results: plain-text tables, PNG plots (matplotlib, Agg backend) and ``summary.json``.

Every file is written to a temporary name in the output folder and renamed into place, so an
interrupted or failed analysis never leaves a half-written file; it gets the mode a plain ``open``
would give it (0666 less the umask, normally 0644). ``summary.json`` holds one
section per analysis; writing a section keeps the others.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = [
    "write_table",
    "read_table",
    "save_figure",
    "jsonable",
    "update_summary",
    "new_figure",
    "band",
    "SUMMARY",
]

SUMMARY = "summary.json"


def user_umask() -> int:
    """The process's umask, read without changing it (Linux: ``/proc/self/status``; elsewhere it is
    set and restored at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_path(path, write, mode="w"):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~user_umask())  # mkstemp makes it 0600: the group reads results too
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_table(path: str, columns: dict, header: str = "") -> None:
    """Columns of equal length as whitespace-separated text; the header names each column."""
    names = list(columns)
    data = np.column_stack([np.asarray(columns[k], float) for k in names])

    def w(fh):
        for line in header.strip().splitlines():
            fh.write(f"# {line}\n")
        fh.write("# " + " ".join(names) + "\n")
        np.savetxt(fh, data, fmt="%.8g")

    _atomic_path(path, w)


def read_table(path) -> dict:
    """A table written by :func:`write_table`.

    Parameters
    ----------
    path : str or Path
        The ``.dat`` file.

    Returns
    -------
    dict
        Column name (from the last header line) -> values, in the table's units.
    """
    with open(path) as fh:
        names = [line for line in fh.read().splitlines() if line.startswith("#")][-1][1:].split()
    data = np.loadtxt(path, ndmin=2)
    return {n: data[:, k] for k, n in enumerate(names)}


def save_figure(fig, path: str) -> None:
    """Save a matplotlib figure atomically as PNG and close it."""
    _atomic_path(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"), "wb")
    plt.close(fig)


def jsonable(x):
    """numpy scalars/arrays and NaN -> plain JSON values (NaN/inf -> null)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def update_summary(out_dir: str, section: str, data: dict) -> str:
    """Merge ``{section: data}`` into ``out_dir/summary.json``; returns its path."""
    path = os.path.join(out_dir, SUMMARY)
    current = {}
    if os.path.exists(path):
        try:
            with open(path) as fh:
                current = json.load(fh)
        except (OSError, ValueError):
            current = {}
    current[section] = jsonable(data)
    _atomic_path(path, lambda fh: json.dump(current, fh, indent=2, sort_keys=False))
    return path


def new_figure(nrows=1, ncols=1, size=(6.0, 4.0)):
    fig, ax = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, layout="constrained"
    )
    return fig, ax


def band(ax, x, y, err, label=None, **kw):
    """Line with a shaded ±err band (err may contain NaN)."""
    (line,) = ax.plot(x, y, label=label, **kw)
    e = np.nan_to_num(np.asarray(err, float))
    ax.fill_between(x, y - e, y + e, color=line.get_color(), alpha=0.25, lw=0)
    return line
