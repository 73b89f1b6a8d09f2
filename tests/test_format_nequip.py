"""The nequip format's mechanics on a file built without nequip (``make test``; the real NequIP and
Allegro models against nequip's own calculator: tests/test_family_nequip.py, ``make
test-families``).

tests/families/nequip/toy.py writes a TorchScript file with nequip's interface (field dictionary
in and out, ``r_max``/``type_names``/``model_dtype`` extra files) and a pair energy: recognised
and described as nequip, species mapped by chemical symbol, forces and virial = finite
differences of the energy (so the virial's sign convention is the server's), beads and rotated
copies in one call = each alone, probed strictly local, so the owned atoms' energies (the LAMMPS
domain route) add up to the whole; a file without nequip's metadata is refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from derivatives import assert_forces_and_virial_are_derivatives
from families.nequip import toy

from mlip_server.core.errors import ModelError
from mlip_server.core.graph import Structure
from mlip_server.formats import load_model
from mlip_server.formats.nequip import NequIPModel
from mlip_server.loading import load_evaluator
from mlip_server.structures import water_box


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-nequip")
    toy.main(str(folder))
    return str(folder / "toy-pair.nequip.pth")


def test_toy_loads_as_nequip_and_says_what_it_read(toy_file):
    model = load_model(toy_file)
    assert isinstance(model, NequIPModel) and model.species == [1, 8] and model.cutoff == 4.0
    lines = model.describe()
    assert "r_max 4 Å, types H→1 O→8 (by chemical symbol)" in lines[0]
    assert model.sums_atomic_energies and model.interaction_range == 4.0 and model.subset_refusal is None


def test_toy_forces_and_virial_are_derivatives_of_its_energy(toy_file):
    """Periodic 8-water box (6.2 Å cell, 4 Å cutoff: images), central differences."""
    ev = load_evaluator(toy_file)
    s = Structure.from_ase(water_box(8, seed=2))
    assert_forces_and_virial_are_derivatives(ev, s, force_tol=1e-8, virial_tol=1e-8)


def test_toy_copies_in_one_call_equal_each_alone(toy_file):
    """Three beads and the 2i copies of a frame in one batched call = each frame alone (a pair
    energy is invariant: the averaged energy equals the raw one, so the rotations were undone)."""
    ev = load_evaluator(toy_file, max_batch_edges=10**9)
    box = water_box(8, seed=3)
    rng = np.random.default_rng(1)
    beads = [
        Structure(
            box.positions + 0.05 * rng.standard_normal(box.positions.shape),
            box.numbers,
            box.cell.array,
            box.pbc,
        )
        for _ in range(3)
    ]
    together = ev.compute(beads)
    for s, r in zip(beads, together):
        alone = ev.compute([s])[0]
        assert abs(r.energy - alone.energy) <= 1e-12 * abs(alone.energy)
        assert np.abs(r.forces - alone.forces).max() <= 1e-12
    averaged = ev.compute([beads[0]], "2i")[0]
    assert abs(averaged.energy - together[0].energy) <= 1e-12 * abs(together[0].energy)
    assert np.abs(averaged.forces - together[0].forces).max() <= 1e-11


def test_toy_owned_atoms_energies_add_up_to_the_whole(toy_file):
    ev = load_evaluator(toy_file)
    box = water_box(16, seed=4)
    s = Structure(box.positions, box.numbers)
    whole = ev.compute([s])[0]
    parts = [
        ev.compute([Structure(np.roll(s.positions, -k, axis=0), np.roll(s.numbers, -k), owned=12)])[0]
        for k in (0, 12, 24, 36)
    ]
    assert abs(sum(p.energy for p in parts) - whole.energy) <= 1e-12 * abs(whole.energy)
    per_atom = ev.compute([Structure(s.positions, s.numbers, per_atom=True)])[0]
    assert abs(per_atom.atom_energies.sum() - whole.energy) <= 1e-12 * abs(whole.energy)


def test_a_torchscript_file_without_nequip_metadata_is_refused(toy_file, tmp_path):
    bare = tmp_path / "bare.nequip.pth"
    torch.jit.save(torch.jit.load(toy_file), str(bare))  # the extra files are not carried over
    with pytest.raises(ModelError) as err:
        load_model(str(bare))
    assert "has no nequip metadata" in str(err.value) and "\n" not in str(err.value)
