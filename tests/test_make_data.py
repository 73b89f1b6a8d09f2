"""mlip_server.training.make_data's distorted frames (``--perturb``, ``--close-pairs``): the geometry
they promise."""

from __future__ import annotations

import numpy as np
import pytest

from mlip_server.structures import water_box
from mlip_server.training.make_data import perturbed


def _oo(atoms):
    """O–O distance matrix (Å, minimum image) with an infinite diagonal."""
    o = np.flatnonzero(atoms.numbers == 8)
    d = atoms.get_all_distances(mic=True)[np.ix_(o, o)]
    np.fill_diagonal(d, np.inf)
    return d


@pytest.fixture(scope="module")
def liquid(tmp_path_factory):
    path = tmp_path_factory.mktemp("perturb") / "liquid.extxyz"
    water_box(64, seed=3).write(path)
    return path


def test_compression_without_noise_moves_molecules_rigidly(liquid):
    """max_sigma 0: the cell shrinks, every molecule keeps its O–H bonds exactly, and no O–O contact
    grows (molecule centres are scaled towards the origin with the cell)."""
    import ase.io

    original = ase.io.read(liquid)
    frames = perturbed(str(liquid), 5, seed=0, max_sigma=0.0, max_compression=1.3)
    assert len(frames) == 5
    o = np.flatnonzero(original.numbers == 8)
    for a in frames:
        ratio = a.get_volume() / original.get_volume()
        assert 1 / 1.3 - 1e-9 <= ratio <= 1.0
        for h in (1, 2):
            assert np.allclose(
                a.positions[o + h] - a.positions[o], original.positions[o + h] - original.positions[o]
            )
        scale = ratio ** (1 / 3)
        assert np.allclose(_oo(a)[np.isfinite(_oo(a))], scale * _oo(original)[np.isfinite(_oo(original))])
        assert "forces" not in a.arrays and not a.info


def test_close_pairs_reach_the_requested_contact_range(liquid):
    """close_pairs 3 (no noise, no compression): at least one O–O contact inside 1.75–2.4 Å per frame,
    none below it, and intramolecular geometry unchanged; with noise the frames differ."""
    import ase.io

    original = ase.io.read(liquid)
    assert _oo(original).min() > 2.4
    frames = perturbed(str(liquid), 6, seed=1, max_sigma=0.0, max_compression=1.0, close_pairs=3)
    for a in frames:
        d = _oo(a)
        assert 1.75 - 1e-9 <= d.min() <= 2.4
        assert np.allclose(a.get_distances(0, [1, 2], mic=True), original.get_distances(0, [1, 2], mic=True))
    noisy = perturbed(str(liquid), 2, seed=1, max_sigma=0.1, max_compression=1.0, close_pairs=3)
    assert not np.allclose(noisy[0].positions, frames[0].positions)


def test_no_periodic_192_atom_frames_is_a_clear_error(tmp_path):
    path = tmp_path / "small.extxyz"
    water_box(8, seed=0).write(path)
    with pytest.raises(ValueError, match="no periodic 192-atom frames"):
        perturbed(str(path), 1, seed=0)
