"""Writing i-PI input structures."""

from pathlib import Path


def write_ipi_xyz(atoms, path) -> None:
    """An i-PI xyz file (Å) with the cell in the ``# CELL(abcABC)`` comment line."""
    a, b, c = atoms.cell.lengths()
    al, be, ga = atoms.cell.angles()
    lines = [str(len(atoms)),
             f"# CELL(abcABC): {a:.10f} {b:.10f} {c:.10f} {al:.10f} {be:.10f} {ga:.10f} "
             "positions{angstrom} cell{angstrom}"]
    lines += [f"{s} {x:.12f} {y:.12f} {z:.12f}" for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)]
    Path(path).write_text("\n".join(lines) + "\n")
