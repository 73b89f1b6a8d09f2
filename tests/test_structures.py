"""The water-box builder: the density asked for, whole molecules, no close contacts."""

from __future__ import annotations

import numpy as np
import pytest
from ase.geometry import get_distances

from mlip_server.structures import AVOGADRO, WATER_MASS, water_box


@pytest.mark.parametrize("n", [8, 32, 100, 128, 216])
def test_boxes_have_the_density_and_no_close_oxygen_pairs(n):
    """Every size, not only perfect cubes, keeps its oxygens at liquid-like distances (>= 2.8 Å;
    liquid water's first O-O peak is at 2.8 Å): the 128-molecule box used to have O-O pairs at
    2.6 Å (a 6³ grid with 88 empty sites) and started at 72 kbar with the shipped model."""
    atoms = water_box(n, seed=3)
    density = n * WATER_MASS / AVOGADRO / (atoms.get_volume() * 1e-24)
    assert len(atoms) == 3 * n and density == pytest.approx(0.997, rel=1e-6)
    oxygens = atoms.positions[atoms.numbers == 8]
    d = get_distances(oxygens, cell=atoms.cell, pbc=True)[1]
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 2.8, f"closest O-O pair {d.min():.2f} Å"
