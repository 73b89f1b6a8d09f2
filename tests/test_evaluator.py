"""Physics of the Evaluator: forces, virial, small cells, batching, a peer (ASE)."""

import math

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator


def _energy(ev, positions, numbers, cell, pbc=True):
    return ev.compute([Structure(positions, numbers, cell, np.full(3, pbc))])[0].energy


def finite_difference_forces(ev, s: Structure, h=1e-5):
    f = np.zeros_like(s.positions)
    for i in range(len(s.positions)):
        for a in range(3):
            p, m = s.positions.copy(), s.positions.copy()
            p[i, a] += h
            m[i, a] -= h
            f[i, a] = -(
                _energy(ev, p, s.numbers, s.cell, s.pbc.all())
                - _energy(ev, m, s.numbers, s.cell, s.pbc.all())
            ) / (2 * h)
    return f


def strain_derivative_virial(ev, s: Structure, h=1e-6):
    """W_ab = -dE/dε_ab for x -> (1 + ε) x applied to positions and cell."""
    w = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = []
            for sign in (1, -1):
                eps = np.eye(3)
                eps[a, b] += sign * h
                e.append(_energy(ev, s.positions @ eps.T, s.numbers, s.cell @ eps.T, s.pbc.all()))
            w[a, b] = -(e[0] - e[1]) / (2 * h)
    return w


@pytest.mark.parametrize("which", ["water8", "water32_triclinic"])
def test_forces_and_virial_match_finite_differences(request, which, toy_model):
    atoms = request.getfixturevalue(which)
    atoms.rattle(0.05, seed=4)
    ev = load_evaluator(toy_model, dtype="float64")
    s = Structure.from_ase(atoms)
    if which == "water8":
        assert ev.cutoff > 0.5 * min(atoms.cell.lengths()), "this case must have several images per pair"
        s.positions, s.numbers = s.positions[:9], s.numbers[:9]  # keep the test fast
    res = ev.compute([s])[0]
    fd = finite_difference_forces(ev, s)
    assert np.abs(res.forces - fd).max() <= 1e-6 * np.abs(fd).max()
    w_fd = strain_derivative_virial(ev, s)
    assert np.abs(res.virial - w_fd).max() <= 1e-6 * np.abs(w_fd).max()
    # the toy is not rotation-invariant, so the virial need not be symmetric: the test
    # above checks the full tensor, including its antisymmetric part
    assert np.abs(res.virial - res.virial.T).max() > 1e-8


def test_nonperiodic_forces_match_finite_differences(toy_model):
    from mlip_server.structures import water_molecule

    mol = water_molecule() + water_molecule(center=(2.9, 0.3, 0.1))
    s = Structure(mol.positions, mol.numbers)
    ev = load_evaluator(toy_model)
    res = ev.compute([s])[0]
    fd = finite_difference_forces(ev, s)
    assert np.abs(res.forces - fd).max() <= 1e-6 * np.abs(fd).max()
    # no external field: total force vanishes for any model of edge vectors
    assert np.abs(res.forces.sum(axis=0)).max() < 1e-12


def test_lennard_jones_matches_ase(lj_model):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=1)
    atoms.set_cell(atoms.cell[:] + np.array([[0, 0, 0], [0.3, 0, 0], [0.2, 0.1, 0]]), scale_atoms=True)
    atoms.calc = AseLJ(epsilon=0.0104, sigma=3.4, rc=8.5)
    res = load_evaluator(lj_model).compute([Structure.from_ase(atoms)])[0]
    e_ref = atoms.get_potential_energy()
    assert abs(res.energy - e_ref) <= 1e-10 * abs(e_ref)
    assert np.abs(res.forces - atoms.get_forces()).max() <= 1e-10 * np.abs(atoms.get_forces()).max()
    stress = -res.virial / atoms.get_volume()
    assert np.abs(stress - atoms.get_stress(voigt=False)).max() <= 1e-10 * np.abs(stress).max()


def test_small_cell_agrees_with_supercell(toy_model, water8):
    """Several images of one pair (cutoff > half cell): E(2×2×2 supercell) = 8 E(cell)."""
    ev = load_evaluator(toy_model)
    small = ev.compute([Structure.from_ase(water8)])[0]
    big = ev.compute([Structure.from_ase(water8 * (2, 2, 2))])[0]
    assert abs(big.energy - 8 * small.energy) < 1e-9 * abs(big.energy)
    assert np.abs(big.forces[: len(water8)] - small.forces).max() < 1e-10


def test_batch_equals_one_by_one(toy_model, water8, water32_triclinic):
    ev = load_evaluator(toy_model)
    structures = [Structure.from_ase(water8), Structure.from_ase(water32_triclinic)]
    batched = ev.compute(structures)
    for s, b in zip(structures, batched):
        single = ev.compute([s])[0]
        assert abs(single.energy - b.energy) < 1e-12 * abs(b.energy)
        assert np.abs(single.forces - b.forces).max() < 1e-12
    # a memory budget smaller than one structure still works (one structure per call)
    tiny = load_evaluator(toy_model, max_batch_edges=10).compute(structures)
    assert np.allclose([r.energy for r in tiny], [r.energy for r in batched], rtol=1e-13, atol=0)


def test_float32_close_to_float64(toy_model, water32_triclinic):
    s = Structure.from_ase(water32_triclinic)
    r64 = load_evaluator(toy_model, dtype="float64").compute([s])[0]
    r32 = load_evaluator(toy_model, dtype="float32").compute([s])[0]
    assert abs(r32.energy - r64.energy) < 1e-5 * abs(r64.energy)
    assert np.abs(r32.forces - r64.forces).max() < 1e-4
    assert r32.forces.dtype == np.float64


def test_ase_calculator_matches_evaluator(toy_model, water32_triclinic):
    from mlip_server.ase_calculator import MLIPCalculator

    atoms = water32_triclinic
    atoms.calc = MLIPCalculator(toy_model)
    res = load_evaluator(toy_model).compute([Structure.from_ase(atoms)])[0]
    assert atoms.get_potential_energy() == pytest.approx(res.energy, rel=1e-14)
    assert np.abs(atoms.get_forces() - res.forces).max() < 1e-14
    sym = 0.5 * (res.virial + res.virial.T)
    assert np.abs(atoms.get_stress(voigt=False) + sym / atoms.get_volume()).max() < 1e-14


def test_the_default_precision_is_the_models_own(models_dir, toy_model, water8):
    """A model exported in float32 runs in float32 unless float64 is asked for; the toy models
    (exported in float64) run in float64; a model without floating parameters (LJ) in float64."""
    import torch

    from mlip_server.training.toy_models import LennardJones, water_toy

    path = models_dir / "water-toy-float32.pt"
    torch.jit.save(torch.jit.script(water_toy(anisotropy=0.02).float()), str(path))
    ev32, ev64 = load_evaluator(str(path)), load_evaluator(str(path), dtype="float64")
    assert ev32.dtype == torch.float32 and not ev32.model.requested_dtype
    assert ev64.dtype == torch.float64 and ev64.model.requested_dtype
    assert load_evaluator(toy_model).dtype == torch.float64
    assert load_evaluator(torch.jit.script(LennardJones())).dtype == torch.float64
    s = Structure.from_ase(water8)
    e32, e64 = ev32.compute([s])[0].energy, ev64.compute([s])[0].energy
    assert e32 != e64 and abs(e32 - e64) < 1e-4 * abs(e64)  # the same model, two precisions


def test_server_logs_the_precision_it_chose(models_dir, water8, tmp_path):
    """mlip-server says which precision it runs in and why (a missing socket ends it quickly)."""
    import subprocess
    import sys

    import torch

    from mlip_server.structures import write_ipi_xyz
    from mlip_server.training.toy_models import water_toy

    path = models_dir / "water-toy-float32-log.pt"
    torch.jit.save(torch.jit.script(water_toy(anisotropy=0.02).float()), str(path))
    write_ipi_xyz(water8, tmp_path / "init.xyz")
    for extra, expected in (
        ([], "float32 (the model's own precision)"),
        (["--dtype", "float64"], "float64 (requested)"),
    ):
        cmd = [
            sys.executable,
            "-m",
            "mlip_server.ipi.serve",
            "--model",
            str(path),
            "--structure",
            "init.xyz",
            "--address",
            "unix:/nonexistent/sock",
            "--connect-timeout",
            "0.2",
        ] + extra
        out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and expected in out.stderr, out.stderr


# -- the automatic chunk size (max_batch_edges=None) -----------------------------------


def _count_model_calls(ev):
    """Wraps ``ev.model.evaluate``; returns the list it appends (copies, edges) of every call to."""
    calls, evaluate = [], ev.model.evaluate

    def counted(copies):
        calls.append((len(copies), sum(len(g.vectors) for g, _ in copies)))
        return evaluate(copies)

    ev.model.evaluate = counted
    return calls


def _beads(atoms, n, seed=0):
    """``n`` rattled copies of ``atoms`` as Structures (path-integral beads)."""
    rng = np.random.default_rng(seed)
    s = Structure.from_ase(atoms)
    return [
        Structure(s.positions + 0.02 * rng.standard_normal(s.positions.shape), s.numbers, s.cell, s.pbc)
        for _ in range(n)
    ]


def _fastest(seconds_per_copy, needed):
    """The docstring's rule, written out: ceil(needed / k) calls of k copies, the least total among
    the measured k <= needed (ties: the smaller k)."""
    totals = {k: math.ceil(needed / k) * k * t for k, t in seconds_per_copy.items() if k <= needed}
    best = min(totals.values())
    return min(k for k, total in totals.items() if total == best)


@pytest.mark.parametrize(
    "seconds_per_copy, needed, expected",
    [
        # per-copy time falls to k = 4, then rises: 4 (neither the largest 8 nor 1, nor the slowest 1)
        ({1: 1.0, 2: 0.6, 4: 0.5, 8: 0.75}, 37, 4),
        # the partial last call counts in full: 5 copies as 3 × 2 (4.8 s) beat 2 × 4 (5.6 s),
        # although 4 has the lowest time per copy
        ({1: 1.0, 2: 0.8, 4: 0.7}, 5, 2),
        # a k above the copies needed is never chosen, however fast
        ({1: 1.0, 2: 0.6, 4: 0.1}, 3, 2),
        # batching does not pay: one copy per call
        ({1: 1.0, 2: 1.05}, 37, 1),
        # equal estimates: the smaller k
        ({1: 0.5, 2: 0.5, 4: 0.5}, 4, 1),
        # every copy in one call when that is fastest (the largest measured k)
        ({1: 1.0, 2: 0.6, 4: 0.4, 8: 0.3, 16: 0.2, 32: 0.15, 37: 0.14}, 37, 37),
    ],
)
def test_copies_per_call_is_the_fastest_measured_choice(seconds_per_copy, needed, expected):
    """The choosing step on hand-made timings (s per copy of a k-copy call)."""
    from mlip_server.core.evaluator import _copies_per_call

    assert _fastest(seconds_per_copy, needed) == expected  # the cases are what they claim
    assert _copies_per_call(seconds_per_copy, needed) == expected


class _Clock:
    """A stand-in for the evaluator module's ``time``: only the model calls advance it, by
    ``call_seconds(k)`` for a k-copy call, ``warmup`` s for the very first call, and ``noise`` ×
    that for one of each k's two timed calls (alternately the first and the second: the measurement
    must keep the best, not the first or the last)."""

    def __init__(self, call_seconds, noise=1.5, warmup=100.0):
        self.now, self.count, self.slow = 0.0, {}, {}
        self.call_seconds, self.noise, self.warmup = call_seconds, noise, warmup

    def perf_counter(self):
        return self.now

    def attach(self, ev):
        calls, evaluate = [], ev.model.evaluate

        def timed(copies):
            k = len(copies)
            if not calls:
                self.now += self.warmup
            else:
                n = self.count[k] = self.count.get(k, 0) + 1
                slow = self.slow.setdefault(k, 1 + len(self.slow) % 2)  # k = 1: the first call, ...
                self.now += self.call_seconds(k) * (self.noise if n == slow else 1.0)
            calls.append(k)
            return evaluate(copies)

        ev.model.evaluate = timed
        return calls


def test_calibration_measures_stops_and_chooses_on_a_controlled_clock(
    monkeypatch, strongly_anisotropic_model, water8
):
    """The whole automatic choice with model-call times made by hand (per copy 1, 0.6, 0.5, 0.75 s
    for k = 1, 2, 4, 8): the warm-up is not counted, each k keeps its best of two calls, the
    measurement stops at k = 8 (more than 10 % slower per copy than k = 4), and the 37 copies of a
    2i request are evaluated 4 per model call."""
    import mlip_server.core.evaluator as evaluator_module

    per_copy = {1: 1.0, 2: 0.6, 4: 0.5, 8: 0.75, 16: 0.1, 32: 0.1, 37: 0.1}
    clock = _Clock(lambda k: k * per_copy[k])
    monkeypatch.setattr(evaluator_module, "time", clock)
    ev = load_evaluator(strongly_anisotropic_model)
    calls = clock.attach(ev)
    ev.compute([Structure.from_ase(water8)], "2i")
    (c,) = ev.calibrations.values()
    assert c["seconds_per_copy"] == pytest.approx({1: 1.0, 2: 0.6, 4: 0.5, 8: 0.75}, rel=1e-12)
    assert c["stopped"] == "slower" and c["copies_per_call"] == {37: 4}
    calibration = [1] + [1, 1, 2, 2, 4, 4, 8, 8]  # warm-up, then two timed calls per k
    assert calls == calibration + [4] * 9 + [1]
    assert c["cost_s"] == pytest.approx(100 + sum(k * per_copy[k] * 2.5 for k in (1, 2, 4, 8)))
    assert ev.timings["calibration"] == pytest.approx(c["cost_s"])


def test_calibration_within_the_memory_budget_on_a_controlled_clock(
    monkeypatch, strongly_anisotropic_model, water8
):
    """Per-copy time falling with k all the way: the measurement stops at the memory budget (the
    largest k whose edges fit), and that k is chosen; a second request of the same size measures
    nothing more."""
    import mlip_server.core.evaluator as evaluator_module

    clock = _Clock(lambda k: 1.0 + 0.1 * k)  # a fixed cost per call: batching always pays
    monkeypatch.setattr(evaluator_module, "time", clock)
    s = Structure.from_ase(water8)
    n_edges = 382
    ev = load_evaluator(strongly_anisotropic_model, memory_budget_edges=6 * n_edges + 10)
    assert len(ev._graph(s, 0).vectors) == n_edges
    calls = clock.attach(ev)
    ev.compute([s], "2i")
    (c,) = ev.calibrations.values()
    assert sorted(c["seconds_per_copy"]) == [1, 2, 4, 6] and c["stopped"] == "memory budget"
    assert c["copies_per_call"] == {37: 6}
    assert calls == [1] + [1, 1, 2, 2, 4, 4, 6, 6] + [6] * 6 + [1]
    del calls[:]
    ev.compute([s], "2i")
    assert calls == [6] * 6 + [1]


def test_batching_moves_off_a_choice_made_on_an_inflated_first_measurement(
    monkeypatch, caplog, strongly_anisotropic_model, water8
):
    """Issue 40: a PIMD run whose start-up measurement of 1 copy per call was inflated (another job
    on the cores: 2.56 s per copy, 1.0 s once the machine is quiet) chose 2 copies per call (1.3 s
    per copy); the times of the run's own calls, and rechecks of the other measured choices, move
    it to 1 copy per call, with one log line. Hand-made call times on a controlled clock (the
    evaluator module's ``time``); the results never depend on the choice."""
    import logging

    import mlip_server.core.evaluator as evaluator_module
    from mlip_server.core.evaluator import RECHECK_FIRST

    per_copy = {1: 1.0, 2: 1.3, 4: 1.6, 8: 2.0}
    clock = _Clock(lambda k: k * per_copy[k], noise=1.0)
    inflated = {"k=1 calls left": 2}  # the calibration's two timed calls of one copy

    def seconds(k):
        if k == 1 and inflated["k=1 calls left"]:
            inflated["k=1 calls left"] -= 1
            return 2.56
        return k * per_copy[k]

    clock.call_seconds = seconds
    monkeypatch.setattr(evaluator_module, "time", clock)
    ev = load_evaluator(strongly_anisotropic_model, dtype="float64")
    calls = clock.attach(ev)
    beads = _beads(water8, 8, seed=7)
    caplog.set_level(logging.INFO, logger="mlip-server")
    first = ev.compute(beads)
    (c,) = ev.calibrations.values()
    assert c["calibrated"] == pytest.approx({1: 2.56, 2: 1.3, 4: 1.6}) and c["stopped"] == "slower"
    assert calls == [1] + [1, 1, 2, 2, 4, 4] + [2] * 4 and c["copies_per_call"] == {8: 2}
    per_request = []
    for _ in range(2 * RECHECK_FIRST + 2):
        del calls[:]
        results = ev.compute(beads)
        per_request.append(list(calls))
        for a, b in zip(results, first):
            assert (
                abs(a.energy - b.energy) < 1e-12 * abs(b.energy) and np.abs(a.forces - b.forces).max() < 1e-12
            )
    # requests 2..8 as chosen; the 8th rechecks k = 4 (the runner-up: measured as slower, the
    # choice stands), the 16th k = 1 (measured longest ago: now 1.0 s per copy), then k = 1
    expected = [[2] * 4] * (RECHECK_FIRST - 2) + [[4] * 2] + [[2] * 4] * (RECHECK_FIRST - 1) + [[1] * 8]
    assert per_request[: len(expected)] == expected
    assert per_request[len(expected) :] == [[1] * 8] * (len(per_request) - len(expected))
    assert c["copies_per_call"] == {8: 1} and c["seconds_per_copy"][1] == pytest.approx(1.0)
    assert c["switches"] == [(2 * RECHECK_FIRST, 8, 2, 1)] and c["rechecks"] == 2
    moved = [r.getMessage() for r in caplog.records if "per model call" in r.getMessage()]
    assert moved == [
        f"batching of {c['atoms']}-atom structures ({c['edges']} edges): now 1 per model call for 8 copies "
        "(was 2): 1e+03 ms per copy measured against 1.3e+03 ms"
    ]


def test_auto_chunks_stay_within_the_memory_budget(strongly_anisotropic_model, water8, water32_triclinic):
    structures = [Structure.from_ase(water8), Structure.from_ase(water32_triclinic)]
    budget = 3 * 1856 + 100  # three copies of the larger structure, ~14 of the smaller
    ev = load_evaluator(strongly_anisotropic_model, memory_budget_edges=budget)
    assert ev.max_batch_edges is None and ev.memory_budget_edges == budget
    calls = _count_model_calls(ev)
    ev.compute(structures, "2i")
    assert calls and max(edges for _, edges in calls) <= budget  # calibration calls included
    assert len(ev.calibrations) == 2
    for c in ev.calibrations.values():
        assert list(c["copies_per_call"]) == [37]
        # the choice is a measured k whose estimated request time is the least of those measured
        # (by the calibration: the request's own calls, timed too, came after the choice)
        assert c["copies_per_call"][37] == _fastest(c["calibrated"], 37)
        assert max(c["seconds_per_copy"]) * c["edges"] <= budget and c["cost_s"] > 0
    assert ev.timings["calibration"] > 0
    assert "copies per call" in ev.batching_summary()


def test_explicit_max_batch_edges_disables_calibration(strongly_anisotropic_model, water8):
    ev = load_evaluator(strongly_anisotropic_model, max_batch_edges=1000)
    calls = _count_model_calls(ev)
    ev.compute([Structure.from_ase(water8)], "2i")
    assert ev.calibrations == {} and ev.timings["calibration"] == 0.0
    assert [n for n, _ in calls] == [2] * 18 + [1]  # 37 copies of 382 edges, 2 per 1000 edges
    assert ev.batching_summary() == "1000 edges per model call (fixed)"


def test_auto_and_explicit_chunks_give_the_same_results(strongly_anisotropic_model, water8):
    structures = _beads(water8, 2, seed=1) + [Structure.from_ase(water8)]
    auto = load_evaluator(strongly_anisotropic_model, dtype="float64")
    reference = {
        n: load_evaluator(strongly_anisotropic_model, dtype="float64", max_batch_edges=n).compute(
            structures, "2i"
        )
        for n in (1, 10**9)  # one copy per call; everything in one call
    }
    for results in (auto.compute(structures, "2i"), auto.compute(structures, "2i"), reference[10**9]):
        for a, b in zip(results, reference[1]):
            assert abs(a.energy - b.energy) < 1e-10 * max(1.0, abs(b.energy))
            assert np.abs(a.forces - b.forces).max() < 1e-10
            assert np.abs(a.virial - b.virial).max() < 1e-10
            assert a.extras == pytest.approx(b.extras, rel=1e-8, abs=1e-10)
    assert auto.calibrations  # the auto evaluator did measure


def test_calibration_is_cached_per_structure_size(strongly_anisotropic_model, water8):
    ev = load_evaluator(strongly_anisotropic_model)
    s = Structure.from_ase(water8)
    ev.compute([s])  # one copy: nothing to batch, nothing measured
    assert ev.calibrations == {}
    ev.compute(_beads(water8, 1, seed=3) + [s])  # two beads of one size: k = 1, 2
    (entry,) = ev.calibrations.values()
    assert sorted(entry["seconds_per_copy"]) == [1, 2] and entry["copies_per_call"].keys() == {2}
    first_stop = entry["stopped"]  # "copies needed", or "slower" if 2 copies per call were slower
    ev.compute([s], "2i")  # 37 copies needed: the measurement goes on from where it stopped
    assert list(ev.calibrations.values()) == [entry]
    assert (max(entry["seconds_per_copy"]) > 2) == (first_stop == "copies needed")
    cost, spent = entry["cost_s"], ev.timings["calibration"]
    calls = _count_model_calls(ev)
    ev.compute([s], "2i")
    k = entry["copies_per_call"][37]
    n_edges = len(ev._graph(s, 0).vectors)
    per_call = min(37, int((k + max(0.5, 0.1 * k)) * n_edges) // n_edges)
    assert [n for n, _ in calls] == [per_call] * (37 // per_call) + ([37 % per_call] if 37 % per_call else [])
    ev.compute(_beads(water8, 1, seed=4), "2i")  # another frame of the same size
    (same,) = ev.calibrations.values()
    assert same is entry and entry["cost_s"] == cost and ev.timings["calibration"] == spent
    ev.compute(_beads(water8, 4, seed=5), "2i")  # 148 copies: measured further unless it had stopped
    assert entry["stopped"] != "copies needed" and (entry["cost_s"] > cost) == (
        max(entry["seconds_per_copy"]) > 37
    )


def test_interaction_range_and_the_atomic_sum_check(models_dir, toy_model):
    """Contract models expose interaction_range (declared, or the cutoff for a model that does not
    declare it) and whether their energy is a sum of per-atom terms (checked at load): true for the
    pair toy models and PET, false for a model whose energy is not additive over atoms; a range
    below the cutoff is refused."""
    from typing import List

    import torch

    from mlip_server.core.errors import ModelError
    from mlip_server.training.pet import PET

    pair = load_evaluator(toy_model).model
    assert not pair.declared_range and pair.interaction_range == pair.cutoff and pair.sums_atomic_energies
    pet = load_evaluator(torch.jit.script(PET(cutoff=3.0, d_model=16, n_heads=2, d_ffn=16, n_layers=2))).model
    assert pet.declared_range and pet.interaction_range == 6.0 and pet.sums_atomic_energies

    class Squared(torch.nn.Module):
        cutoff: float
        species: List[int]
        interaction_range: float

        def __init__(self, interaction_range: float):
            super().__init__()
            self.cutoff, self.species, self.interaction_range = 3.0, [1, 8], interaction_range

        def forward(self, edge_vectors, edge_index, numbers, structure_index, n_structures: int):
            e = (edge_vectors**2).sum(dim=1)
            per_structure = torch.zeros(n_structures, dtype=e.dtype).index_add(
                0, structure_index[edge_index[0]], e
            )
            return per_structure**2  # not a sum over atoms

    squared = load_evaluator(torch.jit.script(Squared(3.0)).double()).model
    assert squared.declared_range and not squared.sums_atomic_energies
    with pytest.raises(ModelError, match="interaction_range=1.0 Å below its cutoff"):
        load_evaluator(torch.jit.script(Squared(1.0)).double())
