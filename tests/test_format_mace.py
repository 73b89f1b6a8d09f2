"""The MACE format's mechanics on files built without mace-torch (``make test``; the real MACE
models against MACE's own calculator: tests/test_family_mace.py, ``make test-families``).

tests/families/mace/toy.py writes TorchScript files with MACE's interface but not its physics
(torch only): forces and virial = finite differences, rotated copies in one call = copies alone
(the toy is not invariant), owned-atoms energy = its wrapper's ``local_or_ghost`` mask, a model
whose energy uses absolute positions refused, and ``--compile`` serving a MACE file as it is.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from derivatives import assert_forces_and_virial_are_derivatives
from families import envs

from mlip_server.core.averaging import Averaging
from mlip_server.core.errors import ModelError
from mlip_server.core.graph import Structure
from mlip_server.formats import load_model
from mlip_server.formats.mace import MaceModel
from mlip_server.loading import load_evaluator
from mlip_server.structures import water_box


# --------------------------------------------------------------------------- the toy (no mace-torch)
# Files with MACE's interface but not its physics (tests/families/mace/toy.py, torch only): the
# format's mechanics where the MACE venv is not built, and a refusal no real MACE model triggers.
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-mace")
    toy_script = Path(envs.family_dir("mace")) / "toy.py"
    done = subprocess.run([sys.executable, str(toy_script), str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_toy_files_load_as_mace_and_say_what_they_read(toy):
    lammps, scripted = load_model(str(toy / "toy-lammps.pt")), load_model(str(toy / "toy-scripted.model"))
    assert isinstance(lammps, MaceModel) and isinstance(scripted, MaceModel)
    assert lammps.kind == "lammps" and scripted.kind == "scripted"
    assert lammps.describe() == [
        "MACE model (ToyMACE): 2 interactions, r_max 3.5 Å (interaction range 7 Å), from a LAMMPS "
        "export (ToyLAMMPS, as mace_create_lammps_model writes)",
        "species H O → one-hot types 0 1; head 'Default'",
    ]


def test_toy_forces_and_virial_are_derivatives_of_its_energy(toy):
    """Periodic 8-water box (6.2 Å cell, 3.5 Å cutoff: images), central differences."""
    ev = load_evaluator(str(toy / "toy-lammps.pt"))
    s = Structure.from_ase(water_box(8, seed=2))
    assert_forces_and_virial_are_derivatives(ev, s, force_tol=2e-7, virial_tol=1e-6)


def test_toy_rotated_copies_in_one_call_equal_copies_evaluated_alone(toy):
    """The toy is not rotationally invariant: averaging over 2i in one batched call = the weighted
    mean of the rotated copies evaluated one by one (forces rotated back)."""
    ev = load_evaluator(str(toy / "toy-scripted.model"))
    s = Structure.from_ase(water_box(8, seed=3))
    avg = Averaging("2i")
    rot = avg.rotations()
    result = ev.compute([s], avg)[0]
    energy, forces = 0.0, np.zeros_like(s.positions)
    alone = []
    for r, w in zip(rot.matrices, rot.weights):
        one = ev.compute([Structure(s.positions @ r.T, s.numbers, s.cell @ r.T, s.pbc)])[0]
        alone.append(one.energy)
        energy += w * one.energy
        forces += w * one.forces @ r
    assert np.ptp(alone) > 1e-3  # the rotated copies differ: a real test of the rotations
    assert abs(result.energy - energy) <= 1e-10 * abs(energy)
    assert np.abs(result.forces - forces).max() <= 1e-10 * np.abs(forces).max()


def test_toy_owned_atoms_energy_equals_its_wrappers_ghost_mask(toy):
    import torch

    from mlip_server.formats.edges import pack

    model = load_model(str(toy / "toy-lammps.pt"))
    ev = load_evaluator(model)
    box = water_box(16, seed=4)
    s, owned = Structure(box.positions, box.numbers), 20
    ours = ev.compute([Structure(s.positions, s.numbers, owned=owned)])[0]
    per_atom = ev.compute([Structure(s.positions, s.numbers, owned=owned, per_atom=True)])[0]
    assert abs(per_atom.atom_energies.sum() - ours.energy) <= 1e-10 * abs(ours.energy)
    graph = ev._graph(s, 0)
    batch = pack([(graph, np.eye(3))], model.device, model.dtype, requires_grad=False)
    data, _ = model._inputs([(graph, np.eye(3))], batch)
    data = {k: v.detach().clone() for k, v in data.items()}
    mask = torch.zeros(len(s.numbers), dtype=model.dtype)
    mask[:owned] = 1.0
    out = model.module(data, mask, False)
    assert abs(ours.energy - float(out["total_energy_local"].detach()[0])) <= 1e-10 * abs(ours.energy)
    forces = out["forces"].detach().numpy()
    assert np.abs(ours.forces - forces).max() <= 1e-10 * np.abs(forces).max()


def test_a_mace_file_whose_energy_uses_absolute_positions_is_refused(toy):
    with pytest.raises(ModelError) as err:
        load_model(str(toy / "toy-absolute.model"))
    assert "depends on absolute positions" in str(err.value) and "\n" not in str(err.value)


def test_compile_serves_a_mace_file_as_it_is(toy, tmp_path, monkeypatch, caplog):
    """--compile compiles the project's contract models; a MACE file is served as it is, with one
    info line and no warning (nothing is compiled)."""
    import mlip_server.compile as compile_mod

    monkeypatch.setenv("MLIP_COMPILE_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(compile_mod, "compile_module", lambda *args, **kw: calls.append(args))
    with caplog.at_level(logging.INFO, logger="mlip-server"):
        model = compile_mod.cached_model(str(toy / "toy-lammps.pt"))
    assert isinstance(model, MaceModel) and calls == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("served as it is" in r.getMessage() for r in caplog.records)
