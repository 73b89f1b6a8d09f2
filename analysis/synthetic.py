"""Synthetic water-like trajectories with known answers, and i-PI-format writers.

Used by the tests and ``bench/analysis_speed.py``. Molecules are rigid (O-H 0.9572 Å,
H-O-H 104.52°), atoms ordered O, H, H. Positions are returned *unwrapped*; write them wrapped
(``np.mod``-style via :func:`wrap`) to exercise the unwrapping. Files are written with i-PI's
own writers (``ipi.utils.io.print_file``) so the tests read exactly what i-PI 3.3 writes.
Units: Å, ps, degrees.
"""

from __future__ import annotations

import numpy as np

from .units import ATOMIC_PER_ANALYSIS

__all__ = [
    "BOND_A",
    "ANGLE_DEG",
    "random_unit_vectors",
    "perpendicular",
    "rigid_water",
    "water_names",
    "water_trajectory",
    "wrap",
    "write_ipi",
]

BOND_A = 0.9572
ANGLE_DEG = 104.52


def random_unit_vectors(rng, shape) -> np.ndarray:
    """Isotropic unit vectors, array of ``shape + (3,)``."""
    v = rng.normal(size=tuple(np.atleast_1d(shape)) + (3,))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def perpendicular(u, rng) -> np.ndarray:
    """Random unit vectors perpendicular to each u."""
    a = np.cross(u, random_unit_vectors(rng, u.shape[:-1]))
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def rigid_water(o, u, a, bond=BOND_A, angle=ANGLE_DEG) -> np.ndarray:
    """Atoms O, H, H of molecules with O at ``o``, dipole direction ``u`` and the H-H direction
    ``a`` (unit, perpendicular to u). Inputs (..., M, 3) -> output (..., 3M, 3)."""
    h = np.radians(angle) / 2.0
    h1 = o + bond * (np.cos(h) * u + np.sin(h) * a)
    h2 = o + bond * (np.cos(h) * u - np.sin(h) * a)
    x = np.stack([o, h1, h2], axis=-2)
    return x.reshape(x.shape[:-3] + (-1, 3))


def water_names(n_molecules: int) -> list:
    return ["O", "H", "H"] * n_molecules


def water_trajectory(n_molecules=64, box_length=12.4, n_frames=100, dt_ps=0.01, D=0.23, rot_step=0.1, seed=0):
    """Rigid molecules whose centres (O) random-walk with diffusion coefficient ``D`` (Å²/ps)
    and whose orientations random-walk by ``rot_step`` rad per frame; they start on randomly
    chosen sites of a jittered cubic grid, so no two molecules overlap in the first frame.
    Returns ``(names, positions (F, 3M, 3) unwrapped Å, dimensions (6,))``."""
    rng = np.random.default_rng(seed)
    M = n_molecules
    o = np.empty((n_frames, M, 3))
    k = int(np.ceil(M ** (1 / 3)))
    a = box_length / k
    sites = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
    o[0] = (sites[rng.permutation(len(sites))[:M]] + 0.5) * a + rng.uniform(-0.1, 0.1, (M, 3)) * a
    o[1:] = rng.normal(0.0, np.sqrt(2 * D * dt_ps), (n_frames - 1, M, 3))
    o = np.cumsum(o, axis=0)
    u = np.empty((n_frames, M, 3))
    a = np.empty((n_frames, M, 3))
    u[0] = random_unit_vectors(rng, M)
    a[0] = perpendicular(u[0], rng)
    for t in range(1, n_frames):
        un = u[t - 1] + rot_step * rng.normal(size=(M, 3)) / np.sqrt(3)
        un /= np.linalg.norm(un, axis=1, keepdims=True)
        an = a[t - 1] - (a[t - 1] * un).sum(1, keepdims=True) * un
        u[t], a[t] = un, an / np.linalg.norm(an, axis=1, keepdims=True)
    dims = np.array([box_length] * 3 + [90.0] * 3)
    return water_names(M), rigid_water(o, u, a), dims


def wrap(positions, dimensions) -> np.ndarray:
    """Wrap positions (..., N, 3) into an orthorhombic box [0, L)."""
    L = np.asarray(dimensions[:3], float)
    return np.mod(positions, L)


def _cell_h_internal(dims):
    """i-PI's cell matrix (Bohr) of MDAnalysis dimensions (Å, degrees)."""
    from ipi.utils.mathtools import abc2h

    a, b, c, al, be, ga = [float(x) for x in dims]
    return abc2h(a, b, c, np.radians(al), np.radians(be), np.radians(ga)) * ATOMIC_PER_ANALYSIS["length"]


def write_ipi(
    path,
    names,
    frames,
    dimensions,
    mode="xyz",
    units="automatic",
    cell_units="automatic",
    key="positions",
    dimension="length",
    to_internal=None,
    steps=None,
    bead=0,
):
    """Write ``frames`` with i-PI's ``print_file``, as i-PI writes a trajectory.

    Parameters
    ----------
    path : str or Path
        File to write.
    names : list of str
        Atom names.
    frames : array_like
        (F, N, 3): positions in Å or, for another ``key``/``dimension``, values in i-PI's
        atomic units unless ``to_internal`` is given.
    dimensions : array_like
        (6,) or (F, 6): box lengths (Å) and angles (degrees).
    mode : str
        i-PI output format: ``xyz``, ``ase`` or ``pdb``.
    units, cell_units : str
        i-PI units to write the values and the cell in (``automatic``: atomic units).
    key, dimension : str
        The i-PI quantity (``positions``, ``velocities``, ``forces``, ...) and its dimension.
    to_internal : float, optional
        Atomic units per unit of ``frames`` (default: Bohr per Å for lengths, else 1).
    steps : array_like, optional
        MD step of each frame for the comment line (default 0, 1, ...).
    bead : int
        Bead index for the comment line.
    """
    from ipi.engine.atoms import Atoms
    from ipi.engine.cell import Cell
    from ipi.utils.io import print_file

    frames = np.asarray(frames, float)
    dims = np.asarray(dimensions, float)
    if dims.ndim == 1:
        dims = np.tile(dims, (len(frames), 1))
    if to_internal is None:
        to_internal = ATOMIC_PER_ANALYSIS["length"] if dimension == "length" else 1.0
    atoms = Atoms(frames.shape[1])
    atoms.names[:] = list(names)
    cell = Cell()
    with open(path, "w") as fh:
        for k, x in enumerate(frames):
            atoms.q[:] = (x * to_internal).ravel()
            cell.h = _cell_h_internal(dims[k])
            step = steps[k] if steps is not None else k
            print_file(
                mode,
                atoms,
                cell,
                fh,
                title="Step:  %10d  Bead:   %5d " % (step, bead),
                key=key,
                dimension=dimension,
                units=units,
                cell_units=cell_units,
            )
