"""Trajectory readers that return an MDAnalysis :class:`~MDAnalysis.core.universe.Universe`
with the right periodic box and element names.

Why this module exists: MDAnalysis 2.x reads every XYZ flavour **without the box**
(``u.dimensions is None``), although i-PI writes the cell into each comment line
(``# CELL(abcABC): a b c alpha beta gamma ... positions{unit} cell{unit}``, lengths in Bohr
unless the header says ``angstrom``) and extended XYZ carries ``Lattice=``. An RDF computed on
such a Universe has no periodic images and is silently wrong. The readers here parse the
cell themselves and load the frames into a :class:`~MDAnalysis.coordinates.memory.MemoryReader`
with ``dimensions``; i-PI's multi-frame PDB (frames separated by ``END`` only, which MDAnalysis
cannot split) is parsed here too. Formats MDAnalysis reads natively (LAMMPS dump, DCD, XTC,
GRO, ...) are opened by MDAnalysis and only get element names (and ``--box`` if asked).

Units of the returned Universe: positions Å, box Å and degrees, time ps (MDAnalysis
convention; ``timestep_fs`` is the time between *stored* frames, in fs). Velocities, when
loaded, are in Å/ps (MDAnalysis convention) and forces in eV/Å (project convention, *not*
MDAnalysis' kJ/(mol Å)).

Path integrals: i-PI writes one file per bead, ``prefix.pos_0.xyz``, ``prefix.pos_1.xyz``, ...
(zero-padded when there are 10 or more beads). ``beads="centroid"`` averages all sibling bead
files (minimum image to bead 0, so a ring polymer split by a wrapped box stays together);
``beads=k`` reads bead ``k``; ``beads=None`` reads just the file given.

i-PI's properties (``.out``) files are read in :mod:`mlip_server.analysis.ipi_files`; the files of a run
(bead files included) are found in :mod:`mlip_server.analysis.run_folder`; unit conversions are in
:mod:`mlip_server.analysis.units`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import AnalysisInputError
from .run_folder import bead_files
from .units import atomic_to_analysis, to_atomic

__all__ = [
    "Frames",
    "load_universe",
    "build_universe",
    "read_frames",
    "read_ipi_xyz",
    "read_extxyz",
    "read_ipi_pdb",
    "read_vectors",
    "parse_box",
    "element_of",
    "FORMATS",
]

#: formats parsed here (names accepted by ``--format``); anything else goes to MDAnalysis.
FORMATS = ("ipi-xyz", "xyz", "extxyz", "pdb", "lammpsdump")
_ALIASES = {
    "ipi": "ipi-xyz",
    "ipi_xyz": "ipi-xyz",
    "ase": "extxyz",
    "exyz": "extxyz",
    "lammps": "lammpsdump",
    "dump": "lammpsdump",
    "lammpstrj": "lammpsdump",
}
_LAMMPS_EXT = (".dump", ".lammpstrj", ".lammpsdump")
_UNIT_RE = re.compile(r"(\w+)\{([^}]*)\}")


@dataclass
class Frames:
    """Frames read from a file, in project units.

    names: atom labels as written; positions: (n_frames, n_atoms, 3) Å (or the vector
    quantity named by ``quantity`` in its project unit); dimensions: (n_frames, 6) Å/degrees or
    None when the file carries no box; steps: MD step of each frame when the file says it.
    """

    names: list
    positions: np.ndarray
    dimensions: np.ndarray | None
    steps: np.ndarray | None = None
    quantity: str = "positions"


# --------------------------------------------------------------------------- elements
def element_of(name: str) -> str:
    """Chemical symbol for an atom label ('O', 'OW', 'H1', 'Hw' -> 'O', 'O', 'H', 'H').

    Raises :class:`AnalysisInputError` when the label is not an element.
    """
    from ase.data import chemical_symbols

    letters = re.sub(r"[^A-Za-z]", "", str(name))
    for cand in (letters[:2], letters[:1]):
        sym = cand[:1].upper() + cand[1:].lower()
        if sym and sym in chemical_symbols[1:] and (len(letters) <= 2 or len(sym) == 1):
            return sym
    raise AnalysisInputError(
        f"unknown element for atom name {name!r}: rename atoms to element symbols "
        "or, for LAMMPS dumps, pass --types with one element per atom type (e.g. --types O H)"
    )


def _masses(elements) -> np.ndarray:
    from ase.data import atomic_masses, atomic_numbers

    return np.array([atomic_masses[atomic_numbers[e]] for e in elements])


# --------------------------------------------------------------------------- i-PI units
_CONVERTED = ("length", "velocity", "force")
"""Trajectory dimensions converted to analysis units; others (momenta: divided by the masses in
:func:`read_vectors`) stay in atomic units."""


def _to_project(dimension: str, unit: str) -> float:
    """Factor converting an i-PI quantity of ``dimension`` written in ``unit`` to analysis units
    (Å, Å/ps, eV/Å; forces as energy/length, see :mod:`mlip_server.analysis.units`)."""
    factor = to_atomic(dimension, unit)
    return factor * atomic_to_analysis(dimension) if dimension in _CONVERTED else factor


def _traj_dimension(key: str) -> str:
    from ipi.engine.properties import Trajectories

    info = Trajectories().traj_dict.get(key)
    return info["dimension"] if info else "length"


# --------------------------------------------------------------------------- text helpers
def _read_lines(path: str) -> list:
    if not os.path.isfile(path):
        raise AnalysisInputError(f"no such file: {path}: check the path")
    with open(path) as fh:
        lines = fh.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _xyz_blocks(path: str, lines: list):
    """Split XYZ text into (comments, atom lines) with a constant atom count."""
    if not lines:
        raise AnalysisInputError(f"{path} is empty: give a trajectory with at least one frame")
    try:
        n = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise AnalysisInputError(
            f"{path} is not an XYZ file (first line is not an atom count): pass --format"
        ) from None
    block = n + 2
    if len(lines) % block:
        raise AnalysisInputError(
            f"{path}: {len(lines)} lines is not a whole number of {n}-atom frames "
            "(truncated file or varying atom count): cut the partial last frame"
        )
    nf = len(lines) // block
    counts = lines[0::block]
    if any(c.split()[0] != lines[0].split()[0] for c in counts):
        raise AnalysisInputError(
            f"{path}: the atom count changes between frames; only fixed-size trajectories are supported"
        )
    comments = lines[1::block]
    body = [ln for k in range(nf) for ln in lines[k * block + 2 : (k + 1) * block]]
    return n, nf, comments, body


def _columns(path, body, n, nf, cols):
    """Names (first column of the first frame) and the float columns ``cols`` of every atom
    line, as (nf, n, len(cols)); numpy's C parser (``np.loadtxt``) does the work."""
    names = [ln.split(maxsplit=1)[0] for ln in body[:n]]
    try:
        data = np.loadtxt(body, usecols=cols, dtype=np.float64, comments=None, ndmin=2)
    except (ValueError, IndexError) as exc:
        raise AnalysisInputError(
            f"{path}: unreadable atom line ({str(exc).splitlines()[0]}): check the file is complete"
        ) from None
    if data.shape[0] != n * nf:
        raise AnalysisInputError(f"{path}: atom lines have inconsistent columns: check the file is complete")
    return names, data.reshape(nf, n, len(cols))


def _abc_from_h(h: np.ndarray) -> np.ndarray:
    """[a, b, c, alpha, beta, gamma] (degrees) from a matrix whose columns are the cell vectors."""
    a, b, c = h[:, 0], h[:, 1], h[:, 2]
    la, lb, lc = (np.linalg.norm(v) for v in (a, b, c))

    def ang(x, y, lx, ly):
        return np.degrees(np.arccos(np.clip(np.dot(x, y) / (lx * ly), -1, 1)))

    return np.array([la, lb, lc, ang(b, c, lb, lc), ang(a, c, la, lc), ang(a, b, la, lb)])


# --------------------------------------------------------------------------- i-PI xyz
def read_ipi_xyz(path: str) -> Frames:
    """Read an i-PI ``xyz`` trajectory (or a plain XYZ, which gets no box).

    The cell is taken from ``CELL(abcABC)``, ``CELL(H)`` or ``CELL(GENH)`` in each comment line;
    units from ``<quantity>{unit}`` and ``cell{unit}`` (i-PI's default, atomic units, when an
    i-PI cell is present but no unit is given). A file without any CELL header is a plain XYZ:
    positions in Å and **no box**.
    """
    from ipi.utils.io.backends.io_xyz import cell_re

    lines = _read_lines(path)
    n, nf, comments, body = _xyz_blocks(path, lines)
    names, data = _columns(path, body, n, nf, (1, 2, 3))

    has_cell = any(r.search(comments[0]) for r in cell_re)
    units = dict(_UNIT_RE.findall(comments[0]))
    quantity = next((k for k in units if k != "cell"), "positions")
    dim = _traj_dimension(quantity)
    if has_cell:
        data *= _to_project(dim, units.get(quantity, "atomic_unit"))
        cell_conv = _to_project("length", units.get("cell", "atomic_unit"))
    else:  # plain XYZ: Å, no box
        if quantity != "positions" and units:
            data *= _to_project(dim, units.get(quantity, "atomic_unit"))

    dims = None
    if has_cell:
        dims = np.empty((nf, 6))
        for k, com in enumerate(comments):
            m = [r.search(com) for r in cell_re]
            if m[0] is not None:
                v = [float(x) for x in m[0].group(1).split()[:6]]
                dims[k] = [v[0] * cell_conv, v[1] * cell_conv, v[2] * cell_conv, v[3], v[4], v[5]]
            elif m[1] is not None or m[2] is not None:
                h = (
                    np.array(m[1 if m[1] is not None else 2].group(1).split()[:9], float).reshape(3, 3)
                    * cell_conv
                )
                dims[k] = _abc_from_h(h)
                if m[2] is not None and quantity == "positions":  # general orientation: rotate into a-along-x
                    from ipi.utils.mathtools import abc2h

                    hu = abc2h(*dims[k, :3], *np.radians(dims[k, 3:]))
                    data[k] = data[k] @ np.linalg.inv(h).T @ hu.T
            else:
                raise AnalysisInputError(
                    f"{path}: frame {k} has no CELL in its comment line: the file is corrupt"
                )
        if not np.all(dims[:, :3] > 0):
            dims = None
    steps = _steps(comments)
    return Frames(names, data.astype(np.float32) if dim == "length" else data, dims, steps, quantity)


def _steps(comments):
    out = []
    for c in comments:
        m = re.search(r"Step:\s*(\d+)", c)
        if not m:
            return None
        out.append(int(m.group(1)))
    return np.array(out)


# --------------------------------------------------------------------------- extended XYZ
def read_extxyz(path: str) -> Frames:
    """Read an extended XYZ trajectory (i-PI ``ase`` mode, ASE): box from ``Lattice=`` (Å).

    The comment line is parsed with ASE's own key=value parser; the atom lines with numpy.
    A frame with ``pbc="F F F"`` or without ``Lattice=`` has no box.
    """
    from ase.geometry import cell_to_cellpar
    from ase.io.extxyz import key_val_str_to_dict

    lines = _read_lines(path)
    n, nf, comments, body = _xyz_blocks(path, lines)
    info = key_val_str_to_dict(comments[0])
    props = str(info.get("Properties", "species:S:1:pos:R:3")).split(":")
    # i-PI's 'ase' mode stores velocities/momenta/forces in their own column (positions are
    # zeros) and names the quantity and unit in ipi_comment, e.g. "velocities{ase}"
    units = dict(_UNIT_RE.findall(str(info.get("ipi_comment", ""))))
    quantity = next((k for k in units if k != "cell"), "positions")
    vector = quantity if quantity != "positions" and quantity in props[0::3] else None
    col, species_col, pos_col = 0, None, None
    for name, _typ, cnt in zip(props[0::3], props[1::3], props[2::3]):
        if name == "species":
            species_col = col
        if (vector is None and name in ("pos", "positions")) or name == vector:
            pos_col = col
        col += int(cnt)
    if species_col is None or pos_col is None:
        raise AnalysisInputError(
            f"{path}: Properties= lacks species or pos columns: write positions with ASE or i-PI 'ase' mode"
        )
    if species_col != 0:
        body = [" ".join([ln.split()[species_col]] + [ln]) for ln in body]
        pos_col += 1
    names, pos = _columns(path, body, n, nf, (pos_col, pos_col + 1, pos_col + 2))
    if vector is not None:
        pos = pos * _to_project(_traj_dimension(vector), units.get(vector, "ase"))

    dims = np.empty((nf, 6))
    for k, com in enumerate(comments):
        kv = info if k == 0 else key_val_str_to_dict(com)
        lat = kv.get("Lattice")
        pbc = np.atleast_1d(kv.get("pbc", [True, True, True]))
        if lat is None or not np.all(pbc):
            dims = None
            break
        dims[k] = cell_to_cellpar(_lattice_rows(lat))
    if dims is not None and not np.all(dims[:, :3] > 0):
        dims = None
    # A general lattice orientation is rotated into MDAnalysis' a-along-x convention.
    if dims is not None:
        for k, com in enumerate(comments):
            kv = info if k == 0 else key_val_str_to_dict(com)
            rows = _lattice_rows(kv["Lattice"])
            if abs(rows[0, 1]) + abs(rows[0, 2]) + abs(rows[1, 2]) > 1e-6 * dims[k, 0]:
                from ase.geometry import cellpar_to_cell

                std = cellpar_to_cell(dims[k])
                pos[k] = pos[k] @ np.linalg.inv(rows) @ std
    if vector is not None:  # a vector quantity: no rotation into the a-along-x frame below
        return Frames(names, pos.astype(np.float64), dims, _steps(comments), quantity=vector)
    return Frames(names, pos.astype(np.float32), dims, _steps(comments))


def _lattice_rows(lat) -> np.ndarray:
    """Cell vectors as rows; ASE's key=value parser returns Lattice transposed (Fortran order)."""
    return np.asarray(lat, float).reshape(3, 3).T


# --------------------------------------------------------------------------- PDB
def read_ipi_pdb(path: str) -> Frames:
    """Read a (multi-frame) PDB as i-PI writes it: ``CRYST1`` box, frames ended by ``END``
    (``MODEL``/``ENDMDL`` also accepted). Positions and box in Å. Element from columns 77-78
    when present, else from the atom name.
    """
    lines = _read_lines(path)
    frames, boxes, names, cur, box, cur_names = [], [], None, [], None, []
    for ln in lines + ["END"]:
        rec = ln[:6].strip()
        if rec == "CRYST1":
            box = [
                float(ln[6:15]),
                float(ln[15:24]),
                float(ln[24:33]),
                float(ln[33:40]),
                float(ln[40:47]),
                float(ln[47:54]),
            ]
        elif rec in ("ATOM", "HETATM"):
            cur.append((float(ln[30:38]), float(ln[38:46]), float(ln[46:54])))
            el = ln[76:78].strip() if len(ln) >= 78 else ""
            cur_names.append(el if el and not el.isdigit() else ln[12:16].strip())
        elif rec in ("END", "ENDMDL") and cur:
            if names is None:
                names = cur_names
            elif len(cur) != len(names):
                raise AnalysisInputError(
                    f"{path}: the atom count changes between frames; only fixed-size "
                    "trajectories are supported"
                )
            frames.append(cur)
            boxes.append(box)
            cur, cur_names = [], []
    if not frames:
        raise AnalysisInputError(f"{path} has no ATOM records: give a PDB trajectory")
    dims = None if any(b is None for b in boxes) else np.array(boxes, float)
    if dims is not None and not np.all(dims[:, :3] > 1.0001):  # CRYST1 1 1 1 is PDB's "no box"
        dims = None
    return Frames(names, np.array(frames, np.float32), dims)


# --------------------------------------------------------------------------- beads
def _every_bead(frames: list) -> Frames:
    """All beads as frames, time-major (t0 b0, t0 b1, ..., t1 b0, ...): averages over these frames
    are averages over beads and time (the quantum g(r) of a path-integral run); block errors
    still block in time. No time axis (``steps`` None)."""
    ref = frames[0]
    if any(f.positions.shape != ref.positions.shape for f in frames[1:]):
        raise AnalysisInputError("bead files differ in frames or atoms: give complete bead files of one run")
    pos = np.stack([f.positions for f in frames], axis=1).reshape(-1, *ref.positions.shape[1:])
    dims = None if ref.dimensions is None else np.repeat(ref.dimensions, len(frames), axis=0)
    return Frames(ref.names, pos, dims, None, ref.quantity)


def _centroid(frames: list) -> Frames:
    ref = frames[0]
    for f in frames[1:]:
        if f.positions.shape != ref.positions.shape:
            raise AnalysisInputError(
                "bead files differ in frames or atoms: give complete bead files of one run"
            )
    from MDAnalysis.lib.distances import minimize_vectors

    acc = np.zeros(ref.positions.shape, np.float64)
    for f in frames[1:]:
        d = f.positions.astype(np.float64) - ref.positions
        if ref.dimensions is not None:
            for k in range(len(d)):
                d[k] = minimize_vectors(d[k], ref.dimensions[k].astype(np.float64))
        acc += d
    pos = ref.positions + acc / len(frames)
    return Frames(ref.names, pos.astype(np.float32), ref.dimensions, ref.steps, ref.quantity)


# --------------------------------------------------------------------------- dispatch
def detect_format(path: str, fmt: str | None) -> str:
    """Normalise ``fmt`` or guess it from the extension and, for .xyz, the first comment line."""
    if fmt:
        f = fmt.lower()
        return _ALIASES.get(f, f)
    low = path.lower()
    if low.endswith((".extxyz", ".exyz")):
        return "extxyz"
    if low.endswith(".xyz"):
        with open(path) as fh:
            fh.readline()
            com = fh.readline()
        return "extxyz" if "Lattice=" in com or "Properties=" in com else "ipi-xyz"
    if low.endswith(".pdb"):
        return "pdb"
    if low.endswith(_LAMMPS_EXT):
        return "lammpsdump"
    return ""


def read_frames(path: str, fmt: str | None = None) -> Frames:
    """Read a whole file in one of the formats parsed here (see :data:`FORMATS`)."""
    if not os.path.isfile(path):
        raise AnalysisInputError(f"no such file: {path}: check the path")
    f = detect_format(path, fmt)
    if f in ("ipi-xyz", "xyz"):
        return read_ipi_xyz(path)
    if f == "extxyz":
        return read_extxyz(path)
    if f == "pdb":
        return read_ipi_pdb(path)
    raise AnalysisInputError(f"format {f or '?'} of {path} is not parsed here: use load_universe")


def parse_box(box) -> np.ndarray | None:
    """``[a, b, c]`` or ``[a, b, c, alpha, beta, gamma]`` (Å, degrees) -> MDAnalysis dimensions."""
    if box is None:
        return None
    b = [float(x) for x in box]
    if len(b) == 3:
        b += [90.0, 90.0, 90.0]
    if len(b) != 6 or min(b[:3]) <= 0 or not all(0 < x < 180 for x in b[3:]):
        raise AnalysisInputError(
            f"bad --box {box}: give three positive lengths in Å, optionally three angles in degrees"
        )
    return np.array(b, np.float32)


def build_universe(
    names, positions, dimensions=None, dt_ps=None, velocities=None, forces=None, elements=None, source=None
):
    """Universe on a MemoryReader: positions (n_frames, n_atoms, 3) Å, dimensions (6,) or
    (n_frames, 6) Å/degrees or None, dt_ps the time between frames in ps (None: unknown, 1 ps
    placeholder and ``u._mlip_time_known = False``)."""
    import MDAnalysis as mda
    from MDAnalysis.coordinates.memory import MemoryReader

    positions = np.asarray(positions, np.float32)
    if positions.ndim == 2:
        positions = positions[None]
    n = positions.shape[1]
    if elements is None:
        elements = [element_of(x) for x in names]
    u = mda.Universe.empty(n, trajectory=False)
    u.add_TopologyAttr("names", list(names))
    u.add_TopologyAttr("types", list(elements))
    u.add_TopologyAttr("elements", list(elements))
    u.add_TopologyAttr("masses", _masses(elements))
    kw = {}
    if velocities is not None:
        kw["velocities"] = np.asarray(velocities, np.float32)
    if forces is not None:
        kw["forces"] = np.asarray(forces, np.float32)
    if dimensions is not None:
        dimensions = np.asarray(dimensions, np.float32)
        if dimensions.ndim == 1:
            dimensions = np.tile(dimensions, (positions.shape[0], 1))
    u.load_new(positions, format=MemoryReader, dimensions=dimensions, dt=dt_ps if dt_ps else 1.0, **kw)
    u._mlip_time_known = bool(dt_ps)
    u._mlip_dt_ps = dt_ps
    u._mlip_source = source
    return u


def read_vectors(path: str, names=None, fmt: str | None = None) -> np.ndarray:
    """Read an i-PI velocity / momentum / force trajectory into project units.

    Returns (n_frames, n_atoms, 3): velocities in Å/ps (momenta are divided by the masses of
    the atom names), forces in eV/Å. The quantity and its unit come from the comment line
    (``velocities{atomic_unit}``, ``momenta{...}``, ``forces{...}``).
    """
    fr = read_frames(path, fmt)
    if fr.quantity == "momenta":
        from ipi.utils.units import Elements

        m = np.array([Elements.mass(x) for x in fr.names])  # atomic units (electron masses)
        v_au = fr.positions / m[None, :, None]
        return v_au * _to_project("velocity", "atomic_unit")
    return np.asarray(fr.positions, np.float64)


def frame_interval_ps(path: str, steps) -> float | None:
    """ps between the frames of an i-PI trajectory, from the frames' ``Step:`` numbers and the
    run's properties file (``step`` and ``time{picosecond}`` columns: ps per step); None when
    either is missing or the frames are not evenly spaced."""
    from .ipi_files import read_properties
    from .run_folder import find_run_files

    steps = np.asarray([] if steps is None else [s for s in steps if s is not None], dtype=float)
    if len(steps) < 2 or not np.allclose(np.diff(steps), np.diff(steps)[0]) or np.diff(steps)[0] <= 0:
        return None
    try:
        properties = find_run_files(path).properties
    except AnalysisInputError:
        return None
    if properties is None:
        return None
    table = read_properties(properties)
    step, t = np.atleast_1d(table.get("step", [])), np.atleast_1d(table.get("time", []))
    if len(step) < 2 or len(t) != len(step) or step[-1] == step[0]:
        return None
    return float((t[-1] - t[0]) / (step[-1] - step[0]) * np.diff(steps)[0])


def load_universe(
    path: str,
    fmt: str | None = None,
    box=None,
    types=None,
    beads=None,
    timestep_fs: float | None = None,
    velocities: str | None = None,
    forces: str | None = None,
):
    """Open any supported trajectory as a Universe with box and elements (see module doc).

    path: trajectory file; fmt: one of :data:`FORMATS` or an MDAnalysis format name (guessed
    from the extension when None); box: ``[a, b, c(, alpha, beta, gamma)]`` in Å/degrees,
    overriding or supplying the cell; types: elements of LAMMPS atom types 1, 2, ...;
    beads: None, "centroid", "all" (every bead's frames: averages over beads and time, no time
    axis) or a bead index; timestep_fs: time between stored frames in fs;
    velocities / forces: i-PI trajectory files to attach (MemoryReader formats only).
    """
    if not os.path.isfile(path):
        raise AnalysisInputError(f"no such file: {path}: check the path")
    f = detect_format(path, fmt)
    dt_ps = timestep_fs / 1000.0 if timestep_fs else None
    user_box = parse_box(box)

    if f in ("ipi-xyz", "xyz", "extxyz", "pdb"):
        files = [path]
        if beads is not None:
            files = bead_files(path)
            if beads not in ("centroid", "all"):
                k = int(beads)
                if k >= len(files) or k < 0:
                    raise AnalysisInputError(
                        f"bead {k} not found next to {path} ({len(files)} bead files): "
                        f"pick 0..{len(files) - 1}"
                    )
                files = [files[k]]
        frames = [read_frames(p, f) for p in files]
        if beads == "all":
            fr = _every_bead(frames)
        else:
            fr = frames[0] if len(frames) == 1 else _centroid(frames)
        if types is not None and all(str(x).isdigit() for x in fr.names):
            fr.names = [_type_element(x, types) for x in fr.names]
        dims = user_box if user_box is not None else fr.dimensions
        vel = frc = None
        if velocities:
            vel = read_vectors(velocities)
        if forces:
            frc = read_vectors(forces)
        for arr, what in ((vel, velocities), (frc, forces)):
            if arr is not None and arr.shape != fr.positions.shape:
                raise AnalysisInputError(
                    f"{what} has shape {arr.shape}, positions {fr.positions.shape}: give "
                    "files of the same run and stride"
                )
        if dt_ps is None:
            dt_ps = frame_interval_ps(path, fr.steps)
        u = build_universe(fr.names, fr.positions, dims, dt_ps, vel, frc, source=path)
        u._mlip_steps = fr.steps
        return u

    if velocities or forces:
        raise AnalysisInputError(
            "--velocities/--forces are read only with i-PI xyz/extxyz/pdb positions: convert the trajectory"
        )
    return _mdanalysis_universe(path, f, user_box, types, dt_ps)


def _type_element(t, types) -> str:
    k = int(t)
    if not 1 <= k <= len(types):
        raise AnalysisInputError(
            f"atom type {k} has no element in --types {' '.join(types)}: give one element per type"
        )
    return element_of(types[k - 1])


def _mdanalysis_universe(path, f, user_box, types, dt_ps):
    import MDAnalysis as mda

    kw = {"format": "LAMMPSDUMP"} if f == "lammpsdump" else ({"format": f.upper()} if f else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            u = mda.Universe(path, **kw)
        except (ValueError, TypeError, KeyError, IndexError, OSError, NotImplementedError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AnalysisInputError(
                f"cannot read {path} ({msg}): pass --format, one of {', '.join(FORMATS)} "
                "or an MDAnalysis format"
            ) from None
    if types is not None:
        elements = [_type_element(t, types) for t in u.atoms.types]
    elif hasattr(u.atoms, "elements") and all(str(e).strip() for e in u.atoms.elements):
        elements = [element_of(e) for e in u.atoms.elements]
    elif hasattr(u.atoms, "names"):
        elements = [element_of(x) for x in u.atoms.names]
    else:
        if all(str(t).isdigit() for t in u.atoms.types):
            raise AnalysisInputError(
                f"{path} has numeric atom types only: pass --types with one element "
                "per type (e.g. --types O H)"
            )
        elements = [element_of(x) for x in u.atoms.types]
    if hasattr(u.atoms, "elements"):
        u.atoms.elements = elements
    else:
        u.add_TopologyAttr("elements", elements)
    if not hasattr(u.atoms, "names"):
        u.add_TopologyAttr("names", elements)
    u.add_TopologyAttr("masses", _masses(elements))
    if user_box is not None:
        from MDAnalysis.transformations.boxdimensions import set_dimensions

        u.trajectory.add_transformations(set_dimensions(user_box))
    u._mlip_time_known = bool(dt_ps) or (f != "lammpsdump" and _has_time(u))
    u._mlip_dt_ps = dt_ps or (u.trajectory.dt if u._mlip_time_known else None)
    u._mlip_source = path
    return u


def _has_time(u) -> bool:
    try:
        return len(u.trajectory) > 1 and "dt" in u.trajectory.ts.data
    except Exception:
        return False
