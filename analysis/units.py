"""Units of the analyses: one table, :data:`mlip_server.protocol.ATOMIC_UNITS`, seen in the analysis
units (Å, eV, eV/Å, ps, Å/ps, K).

Two conversions meet when an i-PI output file is read:

1. i-PI wrote the file in the unit its header declares (``positions{angstrom}``,
   ``forces{atomic_unit}``, ``conserved{electronvolt}``, ...), converting from its internal
   atomic units with **its own** unit tables. :func:`to_atomic` undoes that step with the same
   tables (``ipi.utils.units.unit_to_internal``), so it is exact whatever the declared unit.
2. Atomic units to analysis units (:func:`atomic_to_analysis`): with **our** table,
   :data:`ATOMIC_PER_ANALYSIS`, built from ``ATOMIC_UNITS``, the factors the server used to put
   the model's eV, Å and eV/Å onto i-PI's wire. Reading a force file thus gives back exactly
   the model's forces.

:func:`from_ipi` does both.

Forces are converted as energy/length, (Hartree/Bohr) per (eV/Å) = ``HARTREE_PER_EV /
BOHR_PER_ANGSTROM``, the constant the server puts the model's forces onto the wire with, and not
with i-PI's own ``ev/ang`` table entry, which is rounded differently (by 1e-7): a force converted
with any other constant is not the derivative of the energy converted with the energy's (which
breaks energy-conservation checks), and reading it back with another constant than the one it
was written with does not return the model's forces.
"""

from __future__ import annotations

from mlip_server.protocol import ATOMIC_UNITS

from .errors import AnalysisInputError

__all__ = [
    "ATOMIC_PER_ANALYSIS",
    "ANALYSIS_UNITS",
    "ANGSTROM_PER_BOHR",
    "from_ipi",
    "to_atomic",
    "atomic_to_analysis",
]

PS_PER_FS = 1e-3

ATOMIC_PER_ANALYSIS = {
    "length": ATOMIC_UNITS["length"],  # Bohr per Å
    "energy": ATOMIC_UNITS["energy"],  # Hartree per eV
    "force": ATOMIC_UNITS["force"],  # (Hartree/Bohr) per (eV/Å): energy/length, see the module doc
    "time": ATOMIC_UNITS["time"] / PS_PER_FS,  # atomic time units per ps (MDAnalysis times are ps)
    "velocity": ATOMIC_UNITS["length"] / (ATOMIC_UNITS["time"] / PS_PER_FS),  # (Bohr/a.u. time) per (Å/ps)
}
"""Atomic units per analysis unit: multiply an analysis value to get i-PI's atomic units."""

ANALYSIS_UNITS = {
    "length": "angstrom",
    "energy": "electronvolt",
    "force": "ev/ang",
    "time": "picosecond",
    "temperature": "kelvin",
}
"""The analysis unit of each dimension as i-PI names it (velocities, Å/ps, have no i-PI name)."""

ANGSTROM_PER_BOHR = 1.0 / ATOMIC_UNITS["length"]


def _temperature_atomic_per_kelvin() -> float:
    # The server never converts temperatures (ATOMIC_UNITS has none): a temperature is only ever
    # i-PI's own output, so i-PI's constant is the one that undoes it.
    from ipi.utils.units import unit_to_internal

    return unit_to_internal("temperature", "kelvin", 1.0)


def atomic_to_analysis(dimension: str) -> float:
    """Analysis units per atomic unit of ``dimension``.

    Parameters
    ----------
    dimension : str
        An i-PI dimension: ``length``, ``energy``, ``force``, ``time``, ``velocity`` or
        ``temperature``.

    Returns
    -------
    float
        Å per Bohr, eV per Hartree, (eV/Å) per (Hartree/Bohr), ps per atomic time unit, (Å/ps)
        per atomic velocity unit, or K per atomic temperature unit.
    """
    if dimension == "temperature":
        return 1.0 / _temperature_atomic_per_kelvin()
    return 1.0 / ATOMIC_PER_ANALYSIS[dimension]


def to_atomic(dimension: str, unit: str) -> float:
    """Atomic units per ``unit``, from i-PI's own tables: undoes i-PI's conversion of its output.

    Parameters
    ----------
    dimension : str
        The i-PI dimension of the quantity (``length``, ``velocity``, ``force``, ``momentum``, ...).
    unit : str
        The unit its file declares; ``""`` and ``automatic`` mean i-PI's atomic units.

    Returns
    -------
    float
        Multiply the file's values by it to get atomic units.

    Raises
    ------
    AnalysisInputError
        When i-PI has no unit ``unit`` for ``dimension``.
    """
    from ipi.utils.units import unit_to_internal

    if unit in ("", "automatic"):
        unit = "atomic_unit"
    try:
        return unit_to_internal(dimension, unit, 1.0)
    except (KeyError, ValueError, TypeError) as exc:
        raise AnalysisInputError(
            f"unknown i-PI unit {unit!r} for {dimension}: use a unit i-PI knows (e.g. angstrom, atomic_unit)"
        ) from exc


def from_ipi(dimension: str, unit: str) -> float:
    """Analysis units per ``unit``: :func:`to_atomic` (i-PI's table) times
    :func:`atomic_to_analysis` (ours), see the module doc.

    Parameters
    ----------
    dimension : str
        ``length``, ``energy``, ``force``, ``time``, ``velocity`` or ``temperature``.
    unit : str
        The unit the file declares (``""``, ``automatic``: atomic units).

    Returns
    -------
    float
        Multiply the file's values by it to get Å, eV, eV/Å, ps, Å/ps or K.
    """
    return to_atomic(dimension, unit) * atomic_to_analysis(dimension)
