"""mlip_server.training.validate_model_md's stability measures on a hand-made two-frame trajectory."""

from __future__ import annotations

import numpy as np
import pytest

from mlip_server.training.validate_model_md import _lowest, max_oh, min_oo


@pytest.fixture()
def two_frames():
    """Two water molecules (O,H,H each) in a 10 Å box; frame 1 stretches an O–H to 1.4 Å and brings
    the oxygens to 2.0 Å through the periodic boundary."""
    import MDAnalysis as mda
    from MDAnalysis.coordinates.memory import MemoryReader

    u = mda.Universe.empty(6, trajectory=True)
    u.add_TopologyAttr("names", ["O", "H", "H"] * 2)
    frame0 = np.array([[1, 1, 1], [1.96, 1, 1], [1, 1.96, 1], [5, 5, 5], [5.96, 5, 5], [5, 5.96, 5]], float)
    frame1 = frame0.copy()
    frame1[1] = [2.4, 1, 1]  # O–H 1.4 Å
    frame1[3:] += [9.0 - 5, 1 - 5, 1 - 5]  # second O at (9, 1, 1): 2.0 Å from the first through x = 10
    u.load_new(
        np.stack([frame0, frame1]).astype(np.float32),
        format=MemoryReader,
        dimensions=[10, 10, 10, 90, 90, 90],
    )
    return u


def test_longest_oh_and_closest_oo_with_minimum_image(two_frames):
    worst, frame = max_oh(two_frames)
    assert worst == pytest.approx(1.4, abs=1e-5) and frame == 1
    closest, frame = min_oo(two_frames)
    assert closest == pytest.approx(2.0, abs=1e-5) and frame == 1


def test_lowest_g_in_window():
    r = np.linspace(0, 6, 61)
    g = 1 + np.cos(r)  # minima at π (inside 3.0–3.7) and beyond
    low = _lowest(r, g, 3.0, 3.7)
    assert low["r_A"] == pytest.approx(3.1) and low["g"] == pytest.approx(1 + np.cos(3.1))
