"""Forces and virial checked against central finite differences of the energy (``from derivatives
import assert_forces_and_virial_are_derivatives``): what every format's fast check asks of a
model's forces (−∂E/∂x) and virial (W = −∂E/∂ε for the strain x → (1 + ε) x, cell too)."""

from __future__ import annotations

import numpy as np
import pytest

from mlip_server.core.graph import Structure

STEP = 1e-5
"""Å (positions) and strain: the central differences' step."""


def assert_forces_and_virial_are_derivatives(ev, s: Structure, force_tol: float, virial_tol: float):
    """Three force components and three virial components of ``ev`` on ``s`` against central
    differences of its energy (absolute tolerances, eV/Å and eV)."""
    result = ev.compute([s])[0]
    assert np.abs(result.forces).max() > 1e-2  # forces large enough for the check to mean something
    h = STEP
    for atom, axis in [(0, 0), (4, 2), (17, 1)]:
        energies = []
        for sign in (1, -1):
            x = s.positions.copy()
            x[atom, axis] += sign * h
            energies.append(ev.compute([Structure(x, s.numbers, s.cell, s.pbc)])[0].energy)
        assert result.forces[atom, axis] == pytest.approx(
            -(energies[0] - energies[1]) / (2 * h), abs=force_tol
        )
    for a, b in [(0, 0), (0, 1), (2, 1)]:
        energies = []
        for sign in (1, -1):
            eps = np.eye(3)
            eps[a, b] += sign * h
            strained = Structure(s.positions @ eps.T, s.numbers, s.cell @ eps.T, s.pbc)
            energies.append(ev.compute([strained])[0].energy)
        assert result.virial[a, b] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=virial_tol)
