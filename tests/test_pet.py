"""The PET-like model (training/pet.py), its data pipeline and its training loop.

Physics asserted: forces are −∇E (finite differences through the server's Evaluator),
energies are continuous when an atom crosses the cutoff, the model is translation- and
permutation-invariant but not rotation-invariant, and batching does not change results.
Machinery asserted: the reverse-edge pairing against a brute-force search, rotation
augmentation, a tiny training run whose loss falls, checkpoints, exact resumption after
SIGTERM, and export to a TorchScript file the server loads.
"""

import copy
import os
import signal

import ase.io
import numpy as np
import pytest
import torch

from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.structures import water_box, water_molecule
from mlip_server.training import data as data_mod
from mlip_server.training import train as train_mod
from mlip_server.training.pet import PET, reverse_edges, to_torchscript
from mlip_server.training.toy_models import AnisotropicPairModel
from mlip_server.training.toy_models import export as export_toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "training", "configs", "tiny.yaml")


def _random_pet(seed=0, **kw) -> PET:
    """A small PET with non-zero heads (a fresh model starts at E = baseline, F = 0)."""
    torch.manual_seed(seed)
    options = dict(d_model=16, n_heads=2, d_ffn=32, n_layers=2, n_transformer_layers=1, cutoff=4.0)
    options.update(kw)
    model = PET(**options)
    with torch.no_grad():
        for layer in model.layers:
            for head in (layer.atom_head, layer.bond_head):
                head[2].weight.normal_(0.0, 0.3)
                head[2].bias.normal_(0.0, 0.1)
        model.baseline.copy_(torch.tensor([-13.6, -430.0]))
        model.bond_norm.fill_(0.1)
    return model


@pytest.fixture(scope="module")
def pet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pet") / "pet.pt"
    torch.jit.save(to_torchscript(_random_pet()), str(path))
    return str(path)


@pytest.fixture(scope="module")
def ev64(pet_file):
    return load_evaluator(pet_file, dtype="float64")


def _energy(ev, positions, numbers, cell=None, pbc=False):
    cell = np.zeros((3, 3)) if cell is None else cell
    return ev.compute([Structure(positions, numbers, cell, np.full(3, pbc))])[0].energy


# -- (a) forces --------------------------------------------------------------------------
def test_forces_are_minus_gradient_with_periodic_images(ev64):
    atoms = water_box(8, seed=1)
    atoms.rattle(0.05, seed=2)
    assert ev64.cutoff > 0.5 * min(atoms.cell.lengths()), "this case must have several images per pair"
    s = Structure.from_ase(atoms)
    res = ev64.compute([s])[0]
    h = 1e-5
    fd = np.zeros((6, 3))
    for i in range(6):  # a few atoms keep the test fast; each sees all images
        for a in range(3):
            e = []
            for sign in (1, -1):
                p = s.positions.copy()
                p[i, a] += sign * h
                e.append(_energy(ev64, p, s.numbers, s.cell, True))
            fd[i, a] = -(e[0] - e[1]) / (2 * h)
    assert np.abs(fd).max() > 1e-2, "forces of the test model must not be trivial"
    assert np.abs(res.forces[:6] - fd).max() <= 1e-6 * np.abs(fd).max()


def test_float32_agrees_with_float64(pet_file, ev64):
    atoms = water_box(8, seed=3)
    s = Structure.from_ase(atoms)
    r64 = ev64.compute([s])[0]
    r32 = load_evaluator(pet_file, dtype="float32").compute([s])[0]
    assert abs(r32.energy - r64.energy) < 1e-5 * abs(r64.energy)
    assert np.abs(r32.forces - r64.forces).max() < 1e-3 * np.abs(r64.forces).max()


# -- (b) reverse edges -------------------------------------------------------------------
def _brute_force_reverse(edge_index, vectors):
    rev = np.full(edge_index.shape[1], -1)
    for e in range(edge_index.shape[1]):
        i, j = edge_index[:, e]
        match = np.nonzero(
            (edge_index[0] == j) & (edge_index[1] == i) & (np.abs(vectors + vectors[e]).max(axis=1) < 1e-9)
        )[0]
        assert len(match) == 1, f"edge {e} has {len(match)} reverse edges"
        rev[e] = match[0]
    return rev


@pytest.mark.parametrize("n_molecules", [1, 8])
def test_reverse_edges_match_brute_force(n_molecules):
    """Small cells: several images of a pair, and (one molecule) atoms that see their own images."""
    from mlip_server.core.neighbors import neighbor_list

    atoms = water_box(n_molecules, seed=4)
    edge_index, vectors = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, 4.0)
    pairs = {}
    for i, j in edge_index.T:
        pairs[(i, j)] = pairs.get((i, j), 0) + 1
    assert max(pairs.values()) > 1, "the test needs several images of one pair"
    if n_molecules == 1:
        assert (edge_index[0] == edge_index[1]).any(), "the test needs self-image edges"
    rot = data_mod.random_rotations(1, torch.Generator().manual_seed(0))[0].numpy()
    vectors = vectors @ rot.T  # as the server does for averaging, and training for augmentation
    # shuffle the edge order, so that nothing relies on vesin's order
    perm = np.random.default_rng(0).permutation(edge_index.shape[1])
    edge_index, vectors = edge_index[:, perm], vectors[perm]
    expected = _brute_force_reverse(edge_index, vectors)
    for dtype in (torch.float64, torch.float32):
        got = reverse_edges(torch.from_numpy(edge_index), torch.from_numpy(vectors).to(dtype), len(atoms))
        np.testing.assert_array_equal(got.numpy(), expected)


# -- (c) smoothness at the cutoff --------------------------------------------------------
def test_energy_and_forces_continuous_across_cutoff(ev64):
    mol = water_molecule(rotation=np.eye(3))
    k = int(np.argmax(mol.positions[:, 0]))  # the atom nearest to the newcomer
    cutoff = ev64.cutoff

    def place(d):
        extra = mol.positions[k] + np.array([d, 0.0, 0.0])
        positions = np.vstack([mol.positions, extra])
        numbers = np.append(mol.numbers, 8)
        r = ev64.compute([Structure(positions, numbers)])[0]
        return r.energy, r.forces

    (e_in, f_in), (e_out, f_out) = place(cutoff - 1e-6), place(cutoff + 1e-6)
    e_far, _ = place(cutoff - 0.5)
    assert abs(e_far - e_out) > 1e-4, "the newcomer must interact inside the cutoff"
    assert abs(e_in - e_out) < 1e-9
    assert np.abs(f_in - f_out).max() < 1e-4 * max(np.abs(f_in).max(), 1.0)


# -- (d) symmetries ----------------------------------------------------------------------
def test_not_rotation_invariant_but_translation_permutation_batch_consistent(ev64):
    atoms = water_box(8, seed=5)
    s = Structure.from_ase(atoms)
    ref = ev64.compute([s])[0]

    rot = data_mod.random_rotations(1, torch.Generator().manual_seed(3), inversion=False)[0].numpy()
    rotated = Structure(s.positions @ rot.T, s.numbers, s.cell @ rot.T, s.pbc)
    assert abs(ev64.compute([rotated])[0].energy - ref.energy) > 1e-6

    shifted = Structure(s.positions + np.array([0.7, -1.3, 2.9]), s.numbers, s.cell, s.pbc)
    r = ev64.compute([shifted])[0]
    assert abs(r.energy - ref.energy) < 1e-10 * abs(ref.energy)
    np.testing.assert_allclose(r.forces, ref.forces, atol=1e-9)

    perm = np.random.default_rng(1).permutation(len(atoms))
    r = ev64.compute([Structure(s.positions[perm], s.numbers[perm], s.cell, s.pbc)])[0]
    assert abs(r.energy - ref.energy) < 1e-10 * abs(ref.energy)
    np.testing.assert_allclose(r.forces, ref.forces[perm], atol=1e-9)

    other = Structure.from_ase(water_box(4, seed=6))
    both = ev64.compute([s, other])
    alone = ev64.compute([other])[0]
    assert abs(both[0].energy - ref.energy) < 1e-10 * abs(ref.energy)
    assert abs(both[1].energy - alone.energy) < 1e-10 * abs(alone.energy)
    np.testing.assert_allclose(both[0].forces, ref.forces, atol=1e-9)
    np.testing.assert_allclose(both[1].forces, alone.forces, atol=1e-9)


# -- data pipeline -----------------------------------------------------------------------
def test_random_rotations_are_uniform_and_half_inverted():
    rot = data_mod.random_rotations(4000, torch.Generator().manual_seed(0))
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye.expand_as(rot), atol=1e-12)
    det = torch.linalg.det(rot)
    assert torch.allclose(det.abs(), torch.ones_like(det))
    assert abs((det < 0).double().mean().item() - 0.5) < 0.04
    proper = rot * det[:, None, None]
    # uniform on SO(3): E[R] = 0 and the rotated z axis is uniform on the sphere
    assert proper.mean(0).abs().max() < 0.05
    assert abs(proper[:, 2, 2].pow(2).mean().item() - 1 / 3) < 0.03


def test_collate_rotates_vectors_and_forces_alike(tmp_path):
    frames = _labelled_frames(tmp_path, 2)
    graphs = data_mod.build_graphs(data_mod.read_frames(frames), 3.5)
    rot = data_mod.random_rotations(2, torch.Generator().manual_seed(1))
    plain, turned = (
        data_mod.collate(graphs, None, torch.float64),
        data_mod.collate(graphs, rot, torch.float64),
    )
    n0, e0 = graphs[0].n_atoms, graphs[0].edge_index.shape[1]
    assert torch.equal(plain.edge_index[:, e0:].min(dim=1).values >= n0, torch.tensor([True, True]))
    for b, (atoms, edges) in enumerate([(slice(0, n0), slice(0, e0)), (slice(n0, None), slice(e0, None))]):
        assert torch.allclose(turned.edge_vectors[edges], plain.edge_vectors[edges] @ rot[b].T)
        assert torch.allclose(turned.forces[atoms], plain.forces[atoms] @ rot[b].T)
    assert torch.equal(turned.energies, plain.energies)


# -- (e) training ------------------------------------------------------------------------
def _labelled_frames(tmp_path, n, name="frames.extxyz"):
    """Water boxes labelled by a smooth, non-invariant toy model through the Evaluator."""
    path = tmp_path / name
    if path.exists():
        return str(path)
    labeller = AnisotropicPairModel(species=[1, 8], cutoff=3.5, anisotropy=0.3, seed=1)
    ev = load_evaluator(export_toy(labeller, tmp_path / "labeller.pt"))
    frames = []
    for k in range(n):
        atoms = water_box(8, seed=10 + k)
        atoms.rattle(0.1, seed=k)
        r = ev.compute([Structure.from_ase(atoms)])[0]
        atoms.info["energy"] = r.energy
        atoms.arrays["forces"] = r.forces
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return str(path)


def _tiny_config(tmp_path, out, **changes):
    config = train_mod.load_config(TINY)
    config["data"]["train"] = _labelled_frames(tmp_path, 6)
    config["output_dir"] = str(tmp_path / out)
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def test_tiny_training_loss_falls_checkpoints_resumes_and_exports(tmp_path):
    config = _tiny_config(tmp_path, "run")
    summary = train_mod.train(config)
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == config["epochs"]
    assert losses[-1] < 0.8 * losses[0], losses
    ckpt_path = tmp_path / "run" / train_mod.CHECKPOINT
    assert ckpt_path.is_file() and ckpt_path.stat().st_size < 5e6
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["epoch"] == config["epochs"] and ckpt["batch_in_epoch"] == 0
    assert {"model", "best_model", "optimizer", "scheduler", "rng", "best_val"} <= set(ckpt)

    # --resume with more epochs continues the epoch counter and the schedule
    config["epochs"] += 2
    summary = train_mod.train(config, resume=True)
    assert [h["epoch"] for h in summary["history"]] == list(range(1, config["epochs"] + 1))
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["scheduler"]["step_count"] == config["epochs"] * 1  # one full batch per epoch

    # the exported best model obeys the contract and loads in the server
    model_path = tmp_path / "run" / train_mod.EXPORT
    ev = load_evaluator(str(model_path), dtype="float32")
    assert ev.cutoff == config["model"]["cutoff"] and sorted(ev.model.species) == [1, 8]
    res = ev.compute([Structure.from_ase(water_box(8, seed=20))])[0]
    assert np.isfinite(res.energy) and np.isfinite(res.forces).all()
    # the export carries the fitted composition baseline: energies are on the labels' scale
    first = ase.io.read(config["data"]["train"], index=0)
    predicted = ev.compute([Structure.from_ase(first)])[0].energy
    assert abs(predicted - first.get_potential_energy()) / len(first) < 0.05
    # and the command line exports the same model
    out = tmp_path / "cli.pt"
    assert train_mod.main(["--export", str(ckpt_path), str(out)]) == 0
    res2 = load_evaluator(str(out), dtype="float32").compute([Structure.from_ase(water_box(8, seed=20))])[0]
    assert res2.energy == res.energy

    # init_from starts a new run (fresh optimiser) from the best weights of this one
    tuned = _tiny_config(tmp_path, "tuned", init_from=str(ckpt_path), epochs=1)
    start = train_mod.train(tuned)["history"][0]["train_loss"]
    assert start < losses[0], (start, losses[0])


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    changes = dict(epochs=2, batch_size=2, data={"rotate": True, "invert": True})
    straight = train_mod.train(_tiny_config(tmp_path, "straight", **changes))

    def interrupt(epoch, batch):
        if (epoch, batch) == (1, 0):
            os.kill(os.getpid(), signal.SIGTERM)

    config = _tiny_config(tmp_path, "interrupted", **changes)
    with pytest.raises(SystemExit) as stop:
        train_mod.train(config, on_batch=interrupt)
    assert stop.value.code == 128 + signal.SIGTERM
    ckpt = torch.load(tmp_path / "interrupted" / train_mod.CHECKPOINT, weights_only=False)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (1, 1)
    resumed = train_mod.train(config, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = torch.load(tmp_path / "straight" / train_mod.CHECKPOINT, weights_only=False)["model"]
    b = torch.load(tmp_path / "interrupted" / train_mod.CHECKPOINT, weights_only=False)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["history"][-1]["loss"] == straight["history"][-1]["loss"]


class _InvariantPairEnergy(torch.nn.Module):
    """E = Σ_edges exp(−|r|²): rotation-invariant, so its forces rotate with the structure."""

    def atomic_energies(self, vectors, edge_index, numbers, unused: bool):
        per_edge = torch.exp(-(vectors**2).sum(dim=1))
        return torch.zeros(numbers.shape[0], dtype=vectors.dtype).index_add(0, edge_index[0], per_edge)


def test_symmetry_terms_vanish_exactly_for_invariant_models_not_for_pet(tmp_path):
    graphs = data_mod.build_graphs(data_mod.read_frames(_labelled_frames(tmp_path, 2)), 3.5)
    gen = torch.Generator().manual_seed(3)
    pairs = torch.stack([data_mod.random_rotations(2, gen), data_mod.random_rotations(2, gen)], dim=1)
    batch, both = train_mod.paired_batch(graphs, pairs, torch.float64)
    assert batch.n_structures == 4 and torch.equal(both[2:], pairs[:, 1])

    def spread(model, batch, both):
        energies, forces = train_mod.predict(model, batch, create_graph=False)
        e_diff, f_diff = train_mod.symmetry_terms(energies, forces, batch, both)
        assert f_diff.shape == (sum(g.n_atoms for g in graphs), 3)
        return e_diff.abs().max().item(), f_diff.abs().max().item(), forces.abs().max().item()

    e, f, scale = spread(_InvariantPairEnergy(), batch, both)  # back in the lab frame, forces agree
    assert e < 1e-12 and f < 1e-12 * scale and scale > 0.1
    pet = _random_pet().double()
    e, f, scale = spread(pet, batch, both)
    assert e > 1e-6 and f > 1e-4 * scale  # an unconstrained model is not invariant
    same = torch.stack([pairs[:, 0], pairs[:, 0]], dim=1)  # one orientation twice: no spread at all
    e, f, _ = spread(pet, *train_mod.paired_batch(graphs, same, torch.float64))
    assert e == 0.0 and f == 0.0


def test_symmetry_weight_shrinks_the_rotation_spread(tmp_path):
    """Same seed, data and steps; the run that penalises the orientation spread ends with a
    smaller spread on the validation frames than plain rotation augmentation."""
    spreads = {}
    for weight in (0.0, 1000.0):
        config = _tiny_config(
            tmp_path,
            f"w{weight}",
            epochs=20,
            data={"rotate": True, "invert": True},
            loss={"symmetry_weight": weight},
        )
        train_mod.train(config)
        probe = copy.deepcopy(config)
        probe["loss"]["symmetry_weight"] = 1.0  # validation reports the spread when the weight is > 0
        ckpt = torch.load(tmp_path / f"w{weight}" / train_mod.CHECKPOINT, weights_only=False)
        model = train_mod.model_from_checkpoint(ckpt, "model")
        _, val, _ = train_mod.prepare_data(probe, model, torch.device("cpu"))
        spreads[weight] = train_mod.validate(model, val, probe, ckpt["stats"], torch.float32)
    plain, penalised = spreads[0.0], spreads[1000.0]
    assert plain["rotation_force_mad_mev_per_a"] > 0
    assert penalised["rotation_force_mad_mev_per_a"] < 0.2 * plain["rotation_force_mad_mev_per_a"], spreads
    with pytest.raises(ValueError, match="data.rotate"):
        train_mod.train(_tiny_config(tmp_path, "norot", loss={"symmetry_weight": 1.0}))


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlearning_rate: 0.1\n")
    assert train_mod.main([str(bad)]) == 2
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"data: {{train: {tmp_path / 'nope.extxyz'}}}\noutput_dir: {tmp_path / 'o'}\n")
    assert train_mod.main([str(missing)]) == 2


def test_asymmetric_neighbour_list_is_refused():
    model = _random_pet()
    vectors = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.5, 0.0]], dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 0], [1, 0, 2]])  # 0->2 has no reverse edge
    with pytest.raises(RuntimeError, match="symmetric neighbour list"):
        model.double()(vectors, edge_index, torch.tensor([8, 1, 1]), torch.zeros(3, dtype=torch.long), 1)


def test_short_range_wall_only_acts_below_r0(tmp_path, toy_model):
    """mlip_server.training.short_range: zero change where every pair is beyond its wall radius; below it,
    exactly k·(r0 − r)³ per pair (each pair once, although the list holds it twice)."""
    import torch

    from mlip_server.core.evaluator import Structure
    from mlip_server.loading import load_evaluator
    from mlip_server.structures import water_box
    from mlip_server.training.short_range import add_wall

    walled = add_wall(toy_model, tmp_path / "walled.pt", k=50.0)
    plain, wall = load_evaluator(toy_model), load_evaluator(walled)
    box = Structure.from_ase(water_box(8, seed=2))  # closest O–O well above 2 Å
    a, b = plain.compute([box])[0], wall.compute([box])[0]
    assert b.energy == a.energy and np.array_equal(b.forces, a.forces)
    pair = Structure(np.array([[0.0, 0, 0], [1.5, 0, 0]]), np.array([8, 8]))
    a, b = plain.compute([pair])[0], wall.compute([pair])[0]
    assert b.energy - a.energy == pytest.approx(50.0 * 0.5**3, rel=1e-12)
    assert (b.forces - a.forces)[1, 0] == pytest.approx(3 * 50.0 * 0.5**2, rel=1e-10)  # pushes apart
    assert torch.jit.load(walled).cutoff == torch.jit.load(toy_model).cutoff


def test_direct_head_keeps_the_pet_bitwise_is_local_and_learns(tmp_path):
    """training/direct_head.PETWithDirectForces on a small PET: the exported file's conservative
    energies and forces are bitwise the PET's own file's; ``forward_direct`` = ``forward`` +
    ``direct_forces``; an atom's direct force depends on atoms within the interaction range only
    (a domain rank's cluster gives its owned atoms' forces); and fitting the head with the backbone
    frozen lowers its error against the model's own conservative forces."""
    from mlip_server.training.direct_head import PETWithDirectForces, cache, fit_head, rmse
    from mlip_server.training.direct_head import to_torchscript as direct_to_torchscript

    pet = _random_pet(seed=3).float().eval()
    plain = tmp_path / "pet.pt"
    torch.jit.save(to_torchscript(pet), str(plain))
    model = PETWithDirectForces(copy.deepcopy(pet), hidden=16, reverse=True)
    for q in model.pet.parameters():
        q.requires_grad_(False)
    frames = [water_box(8, seed=k) for k in range(4)]
    conservative = load_evaluator(str(plain))
    items = cache(model.pet, frames, conservative)
    before = rmse(model, items[3:])
    fit_head(model, items[:3], items[3:], epochs=6, lr=5e-3, log=lambda line: None)
    after = rmse(model, items[3:])
    assert after < 0.8 * before, (before, after)
    with_head = tmp_path / "with-head.pt"
    torch.jit.save(direct_to_torchscript(model), str(with_head))
    a, b = load_evaluator(str(plain)), load_evaluator(str(with_head))
    s = Structure.from_ase(water_box(8, seed=11))
    ra, rb = a.compute([s])[0], b.compute([s])[0]
    assert ra.energy == rb.energy and np.array_equal(ra.forces, rb.forces)
    module = torch.jit.load(str(with_head))
    g = b._graph(s, 0)
    inputs = (
        torch.tensor(g.vectors, dtype=torch.float32),
        torch.from_numpy(g.edge_index.copy()),
        torch.from_numpy(g.numbers.copy()),
        torch.zeros(len(g.numbers), dtype=torch.int64),
        1,
    )
    energies, forces = module.forward_direct(*inputs)
    assert torch.equal(energies, module.forward(*inputs))
    assert torch.equal(forces, module.direct_forces(*inputs))
    # locality: atom 0's direct force from a cluster of the atoms (periodic images included)
    # within the interaction range of it, as a domain rank sends it
    atoms = water_box(8, seed=11)
    n = len(atoms)
    images = atoms.repeat(5)  # the central copy (index 62 of 125) has a 12.4 Å margin
    centre = images.positions[62 * n]
    d = np.linalg.norm(images.positions - centre, axis=1)
    inner = np.flatnonzero(d < module.interaction_range + 1e-6)
    inner = np.concatenate([[62 * n], inner[inner != 62 * n]])
    cluster = Structure(images.positions[inner], images.numbers[inner], owned=1)
    part = b.compute([cluster], "direct")[0]
    raw_whole = module.direct_forces(*inputs)[0].double().numpy()
    assert np.abs(raw_whole).max() > 1e-3
    np.testing.assert_allclose(part.forces[0], raw_whole, rtol=0, atol=1e-4 * np.abs(raw_whole).max())
