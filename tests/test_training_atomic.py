"""Training extras of issue 18: teacher atomic energies as labels, per-set loss weights, source filters.

Physics asserted: a contract model's energy split by ``structure_index = arange(N)`` gives atomic
energies that sum to the frame's total. Machinery asserted: the ``teacher_atomic_energy`` column
round-trips through extended XYZ into batches; ``loss.atomic_energy_weight`` is off by default
(existing configs train bitwise the same with or without the column), adds a term that falls when on,
and is refused without labels; ``data.source_weights`` scales a frame's loss; ``data.sources`` and
``data.max_frames`` select training frames.
"""

import ase.io
import numpy as np
import pytest
import torch

from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.structures import water_box
from mlip_server.training import atomic_energies as atomic_mod
from mlip_server.training import data as data_mod
from mlip_server.training import train as train_mod
from mlip_server.training.toy_models import AnisotropicPairModel
from mlip_server.training.toy_models import export as export_toy

TINY = train_mod.Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    labeller = AnisotropicPairModel(species=[1, 8], cutoff=3.5, anisotropy=0.3, seed=1)
    return export_toy(labeller, tmp_path_factory.mktemp("teacher") / "teacher.pt")


def _frames(path, teacher, n, atomic=True):
    ev = load_evaluator(teacher, dtype="float64")
    frames = []
    for k in range(n):
        atoms = water_box(8, seed=10 + k)
        atoms.rattle(0.1, seed=k)
        r = ev.compute([Structure.from_ase(atoms)])[0]
        atoms.info["energy"] = r.energy
        atoms.info["source"] = "liquid-300K" if k % 3 else "perturbed"
        atoms.arrays["forces"] = r.forces
        frames.append(atoms)
    if atomic:
        atomic_mod.add_atomic_energies(frames, atomic_mod.load_teacher(teacher))
    ase.io.write(path, frames, format="extxyz")
    return str(path)


def _config(tmp_path, train, out, **changes):
    config = train_mod.load_config(TINY)
    config["data"]["train"] = train
    config["output_dir"] = str(tmp_path / out)
    config["epochs"] = 4
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def test_atomic_energies_sum_to_the_total_and_round_trip(tmp_path, teacher):
    path = _frames(tmp_path / "f.extxyz", teacher, 3)
    read = data_mod.read_frames(path)
    for f, atoms in zip(read, ase.io.read(path, index=":")):
        assert f.atomic_energies is not None and f.atomic_energies.shape == (len(atoms),)
        assert abs(f.atomic_energies.sum() - f.energy) < 1e-8 * max(1.0, abs(f.energy))
        assert np.ptp(f.atomic_energies) > 0  # really per atom, not E/N
    assert [f.source for f in read] == ["perturbed", "liquid-300K", "liquid-300K"]
    graphs = data_mod.build_graphs(read, 3.5)
    batch = data_mod.collate(graphs, None, torch.float64)
    assert batch.atomic_energies.shape == (sum(g.n_atoms for g in graphs),)
    assert batch.weights is None
    # the CLI rewrites a set in place and refuses labels of another potential
    plain = _frames(tmp_path / "plain.extxyz", teacher, 2, atomic=False)
    assert atomic_mod.main([plain, "--teacher", teacher]) == 0
    assert data_mod.read_frames(plain)[0].atomic_energies is not None
    frames = ase.io.read(plain, index=":")
    frames[0].calc.results["energy"] += 1.0
    with pytest.raises(ValueError, match="sum to"):
        atomic_mod.add_atomic_energies(frames, atomic_mod.load_teacher(teacher))


def test_atomic_term_is_off_by_default_and_trains_when_on(tmp_path, teacher):
    with_column = _frames(tmp_path / "a.extxyz", teacher, 6)
    without = _frames(tmp_path / "b.extxyz", teacher, 6, atomic=False)
    runs = [train_mod.train(_config(tmp_path, p, name)) for p, name in ((with_column, "a"), (without, "b"))]
    assert [h["train_loss"] for h in runs[0]["history"]] == [h["train_loss"] for h in runs[1]["history"]]
    assert "atomic_energy_mae_mev" not in runs[0]["history"][-1]

    only_atomic = {"atomic_energy_weight": 1.0, "energy_weight": 0.0, "force_weight": 0.0}
    on = train_mod.train(_config(tmp_path, with_column, "on", loss=only_atomic, epochs=15))
    history = on["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["atomic_energy_mae_mev"] < history[0]["atomic_energy_mae_mev"]
    # the baseline is then the per-species mean atomic energy; totals are still on the labels' scale
    ckpt = torch.load(tmp_path / "on" / train_mod.CHECKPOINT, weights_only=False)
    mu = ckpt["stats"]["baseline"]
    frames = data_mod.read_frames(with_column)
    h = np.concatenate([f.atomic_energies[f.numbers == 1] for f in frames])
    assert mu[0] == pytest.approx(h.mean(), abs=0.05)  # training frames only: close to the mean of all

    with pytest.raises(ValueError, match="teacher_atomic_energy"):
        train_mod.train(_config(tmp_path, without, "refused", loss={"atomic_energy_weight": 1.0}))


def test_source_weights_sources_and_max_frames(tmp_path, teacher):
    path = _frames(tmp_path / "w.extxyz", teacher, 9)
    assert train_mod.source_weight("perturbed", {"pert": 0.1, "p": 5}) == 0.1
    assert train_mod.source_weight("liquid-300K", {"pert": 0.1}) == 1.0
    config = _config(tmp_path, path, "w", data={"source_weights": {"perturbed": 0.0}})
    model = train_mod.build(config["model"])
    train, _, _ = train_mod.prepare_data(config, model, torch.device("cpu"))
    assert {g.weight for g in train if g.source == "perturbed"} <= {0.0}
    batch = data_mod.collate(train, None, torch.float64)
    model = model.double()
    energies, forces = train_mod.predict(model, batch, create_graph=False)
    stats = {"sigma_e": 0.1, "sigma_f": 1.0}
    only_forces = {"energy_weight": 0.0, "force_weight": 1.0}
    weighted, _, _ = train_mod.loss_terms(energies, forces, batch, stats, only_forces)
    # weight 0 removes those frames' errors; the mean still runs over all components (absolute weights)
    kept = batch.weights[batch.structure_index] > 0
    expected = ((forces - batch.forces)[kept] ** 2).sum() / batch.forces.numel()
    assert float(weighted) == pytest.approx(float(expected), rel=1e-9)
    batch.weights = None
    plain, _, _ = train_mod.loss_terms(energies, forces, batch, stats, only_forces)
    assert float(plain) == pytest.approx(float(((forces - batch.forces) ** 2).mean()), rel=1e-9)
    assert float(plain) > float(weighted)

    config = _config(tmp_path, path, "s", data={"sources": ["liquid"], "max_frames": 3, "val_fraction": 0.34})
    train, val, stats = train_mod.prepare_data(config, train_mod.build(config["model"]), torch.device("cpu"))
    assert len(train) == 3 and all(g.source.startswith("liquid") for g in train + val)
    with pytest.raises(ValueError, match="leaves no"):
        train_mod.prepare_data(
            _config(tmp_path, path, "n", data={"sources": ["ice"]}), train_mod.build({}), torch.device("cpu")
        )
