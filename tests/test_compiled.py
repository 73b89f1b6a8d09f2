"""Compiled models (AOTInductor ``.pt2`` packages, issue 28): a real compile of the water toy
(float64, ~0.5-1 min on 2 cores, once per session), equality with its TorchScript file (molecule,
box, batched structures, 2i rotations, a lone atom), metadata, the cache (a hit does not
compile), the TorchScript fallback with one warning line, refusals.

The shipped PET (float32, ~1.5 min to compile) is compiled only with ``MLIP_TEST_COMPILED_PET=1``
(``make test-compiled``): equality at 3, 192 and 1536 atoms, raw and 2i.
"""

import json
import logging
import os
import shutil
import zipfile
from typing import List

import numpy as np
import pytest
import torch

from server.compile import cache_dir, cache_key, cached_model, file_hash
from server.compile import main as compile_main
from server.core.errors import ModelError
from server.core.evaluator import Evaluator
from server.core.graph import Structure
from server.formats import formats, load_model
from server.formats.compiled import CompiledModel, read_metadata
from server.structures import water_box, water_molecule


@pytest.fixture(scope="module")
def package(toy_model, tmp_path_factory):
    """``mlip-compile`` of the water toy (float64) and the seconds it took."""
    import time

    out = tmp_path_factory.mktemp("compiled") / "toy.pt2"
    t0 = time.perf_counter()
    assert compile_main([toy_model, "--out", str(out)]) == 0
    return str(out), time.perf_counter() - t0


def _structure(atoms, periodic=True):
    cell = np.array(atoms.cell) if periodic else np.zeros((3, 3))
    return Structure(numbers=atoms.numbers, positions=atoms.positions, cell=cell, pbc=periodic)


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _assert_same(results, reference, tol):
    for r, ref in zip(results, reference):
        assert abs(r.energy - ref.energy) <= tol * max(1.0, abs(ref.energy))
        assert _rel(r.forces, ref.forces) <= tol
        assert _rel(r.virial, ref.virial) <= tol


def test_registry_finds_the_package_first(package):
    assert list(formats())[0] == "compiled"
    model = load_model(package[0])
    assert isinstance(model, CompiledModel) and model.label == "compiled model"
    assert model.dtype == torch.float64 and model.direct_forces is False


def test_package_equals_torchscript(package, toy_model):
    """Molecule, periodic box, batched structures, 2i rotations: ≤ 1e-10 relative (float64)."""
    ts, pk = Evaluator(toy_model), Evaluator(package[0])
    molecule = _structure(water_molecule(), periodic=False)
    box, other = _structure(water_box(8, seed=1)), _structure(water_box(16, seed=3))
    for structures in ([molecule], [box], [box, other, molecule]):
        for averaging in (None, "2i"):
            _assert_same(pk.compute(structures, averaging), ts.compute(structures, averaging), 1e-10)


def test_lone_atom_and_per_atom_energies(package, toy_model):
    """Batches below the compiled minimum (no edge, one atom) are padded; per-atom outputs match."""
    ts, pk = load_model(toy_model), load_model(package[0])
    lone = Structure(numbers=np.array([8]), positions=np.zeros((1, 3)), cell=np.zeros((3, 3)), pbc=False)
    _assert_same(Evaluator(pk).compute([lone]), Evaluator(ts).compute([lone]), 1e-12)
    box = water_box(8, seed=1)
    s = Structure(
        numbers=box.numbers, positions=box.positions, cell=np.array(box.cell), pbc=True, per_atom=True
    )
    a, b = Evaluator(pk).compute([s])[0], Evaluator(ts).compute([s])[0]
    assert _rel(a.atom_energies, b.atom_energies) <= 1e-10
    assert pk.sums_atomic_energies == ts.sums_atomic_energies
    assert pk.interaction_range == ts.interaction_range and pk.declared_range == ts.declared_range


def test_metadata(package, toy_model):
    meta = read_metadata(package[0])
    assert meta["programs"] == ["conservative"]
    assert meta["cutoff"] == 4.0 and meta["species"] == [1, 8]
    assert meta["dtype"] == "float64" and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__
    assert meta["source_sha256"] == file_hash(toy_model)
    assert meta["interaction_range"] == 4.0 and meta["declared_range"] is False
    with zipfile.ZipFile(package[0]) as z:  # the program sits under its own model name
        assert any("/data/aotinductor/conservative/" in n for n in z.namelist())


def test_cache_compiles_once_and_hits_afterwards(package, toy_model, tmp_path, monkeypatch):
    """First use compiles into $MLIP_COMPILE_CACHE under the key (hash, torch, device, dtype);
    the second load does not compile."""
    import server.compile as compile_mod

    monkeypatch.setenv("MLIP_COMPILE_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_compile(module, out, device, dtype, source, source_hash):  # the real one ran in `package`
        calls.append((source, str(dtype), source_hash))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy(package[0], out)

    monkeypatch.setattr(compile_mod, "compile_module", fake_compile)
    first = cached_model(toy_model)
    assert isinstance(first, CompiledModel) and len(calls) == 1
    key = cache_key(toy_model, "cpu", "float64")
    assert os.path.isfile(cache_dir() / f"{key}.pt2") and key.startswith(file_hash(toy_model)[:16])
    assert f"torch{torch.__version__.replace('+', '_')}" in key
    second = cached_model(toy_model)
    assert isinstance(second, CompiledModel) and len(calls) == 1  # a cache hit: no compile
    monkeypatch.setenv("MLIP_COMPILE", "1")  # what --compile sets: load_model goes through the cache
    assert isinstance(load_model(toy_model), CompiledModel) and len(calls) == 1
    assert isinstance(load_model(toy_model, compile=False), CompiledModel) is False


class _Guarded(torch.nn.Module):
    """A contract model whose Python branch on the data defeats export."""

    cutoff: float
    species: List[int]

    def __init__(self):
        super().__init__()
        self.cutoff, self.species = 3.0, [1, 8]
        self.k = torch.nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def forward(self, edge_vectors, edge_index, numbers, structure_index, n_structures: int):
        r2 = (edge_vectors**2).sum(dim=1)
        if bool((r2 > 100.0).any()):
            raise RuntimeError("edge longer than 10 A")
        e = self.k * torch.exp(-r2)
        out = torch.zeros(n_structures, dtype=e.dtype, device=e.device)
        return out.index_add(0, structure_index[edge_index[0]], e)


def test_failed_compile_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
    path = tmp_path / "guarded.pt"
    torch.jit.save(torch.jit.script(_Guarded()), str(path))
    monkeypatch.setenv("MLIP_COMPILE_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="mlip-server"):
        model = cached_model(str(path))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "serving the TorchScript model" in warnings[0].getMessage()
    assert type(model).__name__ == "ContractModel"
    assert not list((tmp_path / "cache").glob("*.pt2"))  # nothing half-written left in the cache


def test_refusals(package, tmp_path):
    with pytest.raises(ModelError, match="compiled in float64"):
        load_model(package[0], dtype="float32")
    # a package of another torch version: compile again
    bad = tmp_path / "old.pt2"
    with zipfile.ZipFile(package[0]) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/extra/mlip.json"):
                meta = json.loads(data)
                meta["torch"] = "2.0.0"
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    with pytest.raises(ModelError, match="compile the source model again"):
        load_model(str(bad))
    assert compile_main([str(package[0]), "--out", str(tmp_path / "x.pt")]) == 2  # not TorchScript


@pytest.mark.skipif(
    os.environ.get("MLIP_TEST_COMPILED_PET") != "1",
    reason="compiles the shipped PET (~1.5 min): make test-compiled",
)
def test_shipped_pet_package(tmp_path):
    """models/water-pet.pt compiled in float32: ≤ 1e-5 relative at 3, 192 and 1536 atoms, raw and 2i."""
    out = tmp_path / "pet.pt2"
    assert compile_main(["models/water-pet.pt", "--out", str(out)]) == 0
    ts, pk = Evaluator("models/water-pet.pt"), Evaluator(str(out))
    for s in (
        _structure(water_molecule(), periodic=False),
        _structure(water_box(64, seed=1)),
        _structure(water_box(512, seed=2)),
    ):
        for averaging in (None, "2i"):
            _assert_same(pk.compute([s], averaging), ts.compute([s], averaging), 1e-5)


def test_package_everywhere_a_model_is(package, toy_model):
    """ASE, a committee with a TorchScript member, mlip-server --check and its --compile flag."""
    from server.ase_calculator import MLIPCalculator
    from server.core.committee import load_committee
    from server.ipi.serve import build_parser
    from server.model_check import check_model

    atoms = water_box(8, seed=1)
    energies = []
    for model in (package[0], toy_model):
        atoms.calc = MLIPCalculator(model)
        energies.append((atoms.get_potential_energy(), atoms.get_forces()))
    assert abs(energies[0][0] - energies[1][0]) <= 1e-10 * abs(energies[1][0])
    assert _rel(energies[0][1], energies[1][1]) <= 1e-10
    committee = load_committee([package[0], toy_model])
    assert [type(m).__name__ for m in committee.members] == ["CompiledModel", "ContractModel"]
    lines, code = check_model(package[0])
    assert code == 0 and lines[0].startswith("compiled model")
    assert build_parser().parse_args(["--model", package[0], "--address", "unix:x", "--compile"]).compile
