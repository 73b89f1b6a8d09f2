"""Shared fixtures: small TorchScript models and water structures made by the project."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from mlip_server.paths import checkout_root
from mlip_server.structures import water_box
from mlip_server.training.toy_models import AnisotropicPairModel, LennardJones, export, water_toy

SHARED_DATA = checkout_root().parent / "shared" / "data"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def toy_model(models_dir) -> str:
    """Water toy model (Morse pairs + a non-invariant MLP term), TorchScript file."""
    return export(water_toy(anisotropy=0.02), models_dir / "water-toy.pt")


@pytest.fixture(scope="session")
def strongly_anisotropic_model(models_dir) -> str:
    """A model whose rotational symmetry breaking is large (for averaging tests)."""
    model = AnisotropicPairModel(species=[1, 8], cutoff=3.5, anisotropy=0.5, hidden=24, seed=3)
    return export(model, models_dir / "aniso.pt")


@pytest.fixture(scope="session")
def water_pair(models_dir):
    """A two-member committee of water toys that differ in their non-invariant term and cutoff
    (4 Å and 3.2 Å)."""
    a = export(water_toy(anisotropy=0.02, seed=0), models_dir / "committee-water-a.pt")
    m = AnisotropicPairModel(species=[1, 8], cutoff=3.2, anisotropy=0.05, seed=7)
    m.set_pair(1, 8, depth=4.2, r0=0.96, width=2.3)
    m.set_pair(1, 1, depth=0.05, r0=2.0, width=1.5)
    m.set_pair(8, 8, depth=0.1, r0=2.9, width=1.5)
    return a, export(m, models_dir / "committee-water-b.pt")


@pytest.fixture(scope="session")
def lj_model(models_dir) -> str:
    return export(LennardJones(epsilon=0.0104, sigma=3.4, cutoff=8.5, species=[18]), models_dir / "lj.pt")


@pytest.fixture
def water8():
    """8 water molecules, cubic 6.2 Å cell (cutoff 4 Å exceeds half the cell)."""
    return water_box(8, seed=1)


@pytest.fixture
def water32_triclinic():
    atoms = water_box(32, seed=2)
    cell = np.array(atoms.cell[:]) + np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.4, -0.7, 0.0]])
    atoms.set_cell(cell, scale_atoms=True)
    return atoms


@pytest.fixture(autouse=True, scope="session")
def no_leftover_sockets():
    """Fails the session if its tests leave i-PI socket files behind. Only names made in
    this process (processes.unique_name puts the PID in them) are checked, so concurrent
    test sessions on one machine do not touch each other's live sockets."""
    pattern = f"/tmp/ipi_mlip-test-{os.getpid()}-*"
    yield
    left = sorted(glob.glob(pattern))
    for path in left:
        os.unlink(path)
    assert not left, f"tests left socket files behind: {left}"
