"""The Evaluator: structures in, energies, forces and virials out, batched.

Every force provider of the project (the i-PI socket server, the ASE calculator,
the i-PI in-process PES, the LAMMPS bridge) calls :meth:`Evaluator.compute`. The Evaluator
takes a model that is already loaded (the core imports no format): a model file becomes an
Evaluator through :func:`mlip_server.loading.load_evaluator`.

Physics (ARCHITECTURE.md, "the model contract"). For each structure the server builds the full
neighbour list; the model sees only edge vectors r_e = x_j - x_i + S·cell. With
g_e = ∂E/∂r_e from autograd,

* forces   F_i = Σ_{e: i is centre} g_e - Σ_{e: i is neighbour} g_e   (eV/Å),
* virial   W_ab = -Σ_e g_e,a r_e,b = -∂E/∂ε_ab for the homogeneous strain
  r -> (1 + ε) r (eV). This is i-PI's convention; W is symmetric for invariant models.

Rotational averaging evaluates copies of the graph with rotated edge vectors R_k r_e
in the same batch; E_avg = Σ_k w_k E(R_k ·). The per-copy gradient, rotated back,
gives each copy's forces and virial, and their weighted sum is exactly the gradient of
E_avg. Copies of all structures are packed into model calls of at most
``max_batch_edges`` edges; each model format (:mod:`mlip_server.formats`) evaluates one such chunk.

Chunk size ("auto", the default). Whether batching pays depends on the model and the device: a
small molecule costs one call's overhead whether it is evaluated once or 36 times, while on a
2-core CPU a 192-atom PET call is memory-bound and 10 copies in one call are slower than 10
calls. So, unless ``max_batch_edges`` is given, the Evaluator measures: the first time a
structure of a given size (its edge count rounded up to a power of 2, the *bucket*) has to be
evaluated as more than one copy (rotations × structures of that bucket in one request), it
times :meth:`ModelAdapter.evaluate` on k = 1, 2, 4, 8, ... identity copies of that graph (after
one warm-up; best of :data:`CALIBRATION_REPEATS` per k) while k × edges stays within the memory
budget (:data:`DEFAULT_MAX_BATCH_EDGES`) and k does not exceed the copies needed (that number
itself is the last k tried), and stops once the time per copy is more than
:data:`CALIBRATION_TOLERANCE` worse than the best so far. The times are cached per bucket in
:attr:`Evaluator.calibrations` (a later request needing more copies than were tried extends the
measurement, nothing else measures again). Each request then uses the measured k that makes
its n copies fastest, ceil(n / k) calls of k, as chunks of (k + max(½, 0.1 k)) × edges (room
for frames of the bucket with a few more edges). The choice changes only which copies share a
model call, never what is computed.

A choice is not locked in by one noisy measurement (a first call inflated by another job, say):
every model call is timed anyway, and a call of k copies of one bucket adds its time per copy to
that k's recent times (the last :data:`RECENT_CALLS`); a k's time per copy is the least of them
(noise only ever adds time). Every so often (the :data:`RECHECK_FIRST`-th request of a bucket, then
at doubling intervals while the choice stands, up to :data:`RECHECK_MAX`) one request is evaluated
with another measured k instead (the one measured longest ago, among those not clearly slower:
:data:`RECHECK_WITHIN`), the same copies in other calls; when the times then say another k is
faster, the Evaluator moves to it and logs one line.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Optional

import numpy as np

from .averaging import Averaging
from .committee import committee_statistics
from .errors import ModelError
from .graph import CommitteeResult, Graph, Result, Structure, build_graph

__all__ = ["Evaluator", "Structure", "Result", "DEFAULT_MAX_BATCH_EDGES"]

DEFAULT_MAX_BATCH_EDGES = {"cpu": 20_000, "cuda": 2_000_000}
"""Memory budget by device type: the most edges (rotated copies and structures together) the
automatic chunk size may put in one model call. The chunk actually used is measured per model and
structure size (module docstring) and is often much smaller on CPU (the shipped PET on 2 cores,
192 atoms, ``2i`` in float32, once measured at 2.42 s with 50k edges per call, 1.56 s with 10k and
1.56 s for a serial loop of 36 calls; ``bench/results/averaging.md`` has the latest side by side);
a GPU needs large calls to be busy. The CPU budget was 50k edges until a LAMMPS rank's
~1000-atom cluster (21k edges) spent 55 s calibrating two copies on a loaded machine: with 20k,
a structure of more than 10k edges is never batched on CPU, where batching it has not paid."""

CALIBRATION_REPEATS = 2
"""Timed calls per copy count k in a calibration; the fastest counts (noise on a loaded machine
only ever adds time)."""

CALIBRATION_TOLERANCE = 0.10
"""A calibration stops at the first k whose time per copy exceeds the best so far by this fraction."""

RECENT_CALLS = 5
"""Model calls of k copies whose times per copy are kept per k and bucket; the least counts."""

RECHECK_FIRST = 8
"""The request of a bucket (counted from its calibration) that first tries another measured k."""

RECHECK_MAX = 512
"""The longest interval, in requests of a bucket, between two rechecks (the interval doubles after
each round of rechecks that left the choice standing; it starts again at RECHECK_FIRST after a
change)."""

RECHECK_WITHIN = 3.0
"""A recheck tries only a k whose estimated time for the request is within this factor of the
chosen k's (a recheck then costs at most this factor once per interval)."""

log = logging.getLogger("mlip-server")


class Evaluator:
    """Evaluates a loaded model on lists of structures.

    Parameters
    ----------
    model : ModelAdapter or Committee
        A loaded model (any format of :mod:`mlip_server.formats`), or a
        :class:`~mlip_server.core.committee.Committee` of them: one neighbour list, every member
        evaluated, the mean served (or the first member). Its ``device`` and ``dtype`` are the
        Evaluator's (model and edge vectors; results are float64). Model files:
        :func:`mlip_server.loading.load_evaluator` (device, dtype, committees, ``--compile``).
    max_batch_edges : int, optional
        Edges per model call (rotated copies count), fixed: no measurement. None ("auto"): chosen
        per structure size by timing the model (module docstring), within ``memory_budget_edges``.
    min_distance : float
        Atoms closer than this (Å) are refused as overlapping.
    memory_budget_edges : int, optional
        The most edges the automatic choice may put in one model call; None: the device's entry
        of :data:`DEFAULT_MAX_BATCH_EDGES`. Ignored when ``max_batch_edges`` is given.

    Attributes
    ----------
    max_batch_edges : int or None
        The fixed chunk (edges per model call), None when chosen automatically.
    memory_budget_edges : int
        The upper bound of the automatic choice, edges per model call.
    calibrations : dict
        Per bucket (edges per copy rounded up to a power of 2; ``(edges, "direct")`` for direct-force
        calls) the automatic choice:
        ``edges`` and ``atoms`` of the graph it was measured on, ``seconds_per_copy`` {k: s}
        (wall time per copy of a k-copy call: the least of its recent times, ``recent`` {k:
        deque}, which start with the best of :data:`CALIBRATION_REPEATS` calibration calls,
        ``calibrated`` {k: s}),
        ``copies_per_call`` {copies needed: k chosen now} (the requests of more than one copy so
        far), ``stopped`` (why the measurement stopped: ``"slower"``, ``"memory budget"`` or
        ``"copies needed"``), ``cost_s`` (wall time the measurement took, s), ``requests``,
        ``rechecks`` (requests evaluated with another measured k) and ``switches`` (request, copies
        needed, k before, k after) of each change of choice.
    timings : dict
        Accumulated wall times, s: ``neighbors`` (graphs), ``model`` (model calls),
        ``calibration`` (the measurements above) and ``total`` (everything in :meth:`compute`).
    """

    def __init__(
        self,
        model,
        max_batch_edges: Optional[int] = None,
        min_distance: float = 0.1,
        memory_budget_edges: Optional[int] = None,
    ):
        if not callable(getattr(model, "evaluate", None)):  # a file name, a list, a scripted module
            raise TypeError(
                f"Evaluator takes a loaded model (a ModelAdapter or a Committee), not a "
                f"{type(model).__name__}: load files with mlip_server.loading.load_evaluator(model, ...)"
            )
        self.model = model
        self.device, self.dtype = self.model.device, self.model.dtype
        self.max_batch_edges = None if max_batch_edges is None else int(max_batch_edges)
        if memory_budget_edges is None:
            memory_budget_edges = DEFAULT_MAX_BATCH_EDGES.get(
                self.device.type, DEFAULT_MAX_BATCH_EDGES["cpu"]
            )
        self.memory_budget_edges = int(memory_budget_edges)
        self.min_distance = float(min_distance)
        self._species = set(self.model.species)
        self.calibrations: dict[int, dict] = {}
        self.timings = {"neighbors": 0.0, "model": 0.0, "calibration": 0.0, "total": 0.0}

    @property
    def cutoff(self) -> float:
        """The model's neighbour-list cutoff, Å."""
        return self.model.cutoff

    def batching_summary(self) -> str:
        """One line for logs: the fixed chunk, or each measured choice and what it cost."""
        if self.max_batch_edges is not None:
            return f"{self.max_batch_edges} edges per model call (fixed)"
        if not self.calibrations:
            return (
                f"measured per structure size within {self.memory_budget_edges} edges (nothing measured yet)"
            )
        parts = []
        for key, c in self.calibrations.items():
            tried = ", ".join(f"{k}: {1e3 * t:.3g}" for k, t in sorted(c["seconds_per_copy"].items()))
            chosen = ", ".join(f"{k} for {n}" for n, k in sorted(c["copies_per_call"].items()))
            kind = " (direct)" if isinstance(key, tuple) else ""
            parts.append(
                f"{c['atoms']} atoms/{c['edges']} edges{kind}: copies per call {chosen or '-'} "
                f"(ms per copy {tried or '-'}; stopped: {c['stopped']}; took {c['cost_s']:.2f} s"
                + (f"; moved {len(c['switches'])} times in {c['requests']} requests" if c["switches"] else "")
                + ")"
            )
        return f"measured within {self.memory_budget_edges} edges: " + "; ".join(parts)

    def compute(self, structures, averaging=None) -> list[Result]:
        """Energies, forces and virials of ``structures``.

        Parameters
        ----------
        structures : list of Structure
            The configurations (Å).
        averaging : Averaging, str, list or None
            An :class:`Averaging`, a spec string, or a list of them (one per structure);
            None means the raw model.

        Returns
        -------
        list of Result
            One per structure: energy eV, forces eV/Å, virial eV, diagnostics in ``extras``.
        """
        t0 = time.perf_counter()
        if not isinstance(averaging, (list, tuple)):
            averaging = [averaging] * len(structures)
        converted = {}  # one Averaging per distinct spec string (random ones keep their stream)
        averaging = [
            a if isinstance(a, Averaging) else converted.setdefault(a, Averaging(a or "none"))
            for a in averaging
        ]
        graphs = [self._graph(s, n) for n, s in enumerate(structures)]
        if not self.model.sums_atomic_energies and any(g.groups is not None for g in graphs):
            raise ModelError(
                self.model.subset_refusal
                or f"model {self.model.path}: the energy of a subset of atoms (domain decomposition, "
                "per-atom energies) was asked for, but its energy is not a sum of atomic terms over "
                "structure_index (checked at load time): use --decomposition gather"
            )
        direct = [a.direct for a in averaging]
        if any(direct) and not self.model.direct_forces:
            raise ModelError(
                f"{self.model.label} {self.model.path} has no direct forces (a `direct_forces` method, "
                "or metatomic's non_conservative_force output): serve it without 'direct'"
            )
        t1 = time.perf_counter()
        rotations = [a.rotations() for a in averaging]
        per_copy = self._evaluate_copies(graphs, rotations, direct)
        results = [
            _combine(copies, rot, a.is_raw, a.direct and s.owned is None)
            for copies, rot, a, s in zip(per_copy, rotations, averaging, structures)
        ]
        t2 = time.perf_counter()
        self.timings["neighbors"] += t1 - t0
        self.timings["total"] += t2 - t0
        return results

    # -- validation and graphs ------------------------------------------------------
    def _graph(self, s: Structure, n: int) -> Graph:
        return build_graph(
            s, f"structure {n}", self._species, self.cutoff, self.min_distance, self.model.path
        )

    # -- batched evaluation -------------------------------------------------------
    def _evaluate_copies(self, graphs, rotations, direct):
        """Evaluates all rotated copies (conservative and direct ones in separate model calls);
        returns, per structure, a list over copies of (energy, forces [N,3], virial [3,3]) in the
        original frame."""
        out = [[None] * len(rot.weights) for rot in rotations]
        for mode in sorted(set(direct)):
            mine = [s for s in range(len(graphs)) if direct[s] == mode]
            items = [(s, k) for s in mine for k in range(len(rotations[s].weights))]
            budgets = self._budgets([graphs[s] for s in mine], [rotations[s] for s in mine], mode)
            budget = dict(zip(mine, budgets))
            bucket = {s: _bucket(_n_edges(graphs[s]), mode) for s in mine}
            chunk, edges, limit = [], 0, 0
            for item in items:
                n_edges = _n_edges(graphs[item[0]])
                # a chunk of mixed structures keeps the smallest of their budgets
                new_limit = min(limit, budget[item[0]]) if chunk else budget[item[0]]
                if chunk and edges + n_edges > new_limit:
                    self._run_chunk(chunk, graphs, rotations, out, mode, bucket)
                    chunk, edges, new_limit = [], 0, budget[item[0]]
                chunk.append(item)
                edges, limit = edges + n_edges, new_limit
            if chunk:
                self._run_chunk(chunk, graphs, rotations, out, mode, bucket)
        return out

    # -- the chunk size -------------------------------------------------------------
    def _budgets(self, graphs, rotations, direct: bool = False) -> list[int]:
        """Edges per model call for chunks holding copies of each structure (direct calls are
        measured apart: they cost less)."""
        if self.max_batch_edges is not None:
            return [self.max_batch_edges] * len(graphs)
        buckets = [_bucket(_n_edges(g), direct) for g in graphs]
        needed: dict[int, int] = {}
        for b, rot in zip(buckets, rotations):
            needed[b] = needed.get(b, 0) + len(rot.weights)
        budgets, chosen = [], {}
        for g, b in zip(graphs, buckets):
            c = self.calibrations.get(b)
            if needed[b] > 1 and (
                c is None
                or (c["stopped"] == "copies needed" and needed[b] > max(c["seconds_per_copy"], default=1))
            ):
                c = self._calibrate(g, b, needed[b], direct)
            if c is None or not c["seconds_per_copy"]:
                # one copy of this size (nothing to batch), or one copy fills the memory budget
                budgets.append(self.memory_budget_edges)
                continue
            if b not in chosen:
                chosen[b] = self._choose(c, needed[b])
            k = chosen[b]
            # room for frames of this size with a few more edges than this one (still k copies)
            budget = int((k + max(0.5, CALIBRATION_TOLERANCE * k)) * _n_edges(g))
            budgets.append(min(budget, self.memory_budget_edges))
        return budgets

    def _choose(self, c: dict, needed: int) -> int:
        """The copies per call for a request of ``needed`` copies of calibration ``c``: the fastest
        by the recent times, or, at a recheck (module docstring), another measured k once: the
        one measured longest ago among those whose estimated request time is within
        :data:`RECHECK_WITHIN` of the fastest's. A change of the fastest is logged."""
        sps = c["seconds_per_copy"]
        k = _copies_per_call(sps, needed)
        if needed == 1:
            return k
        before = c["copies_per_call"].get(needed)
        c["copies_per_call"][needed] = k
        if before is not None and before != k:
            log.info(
                "batching of %d-atom structures (%d edges): now %d per model call for %d copies (was %d): "
                "%.3g ms per copy measured against %.3g ms",
                c["atoms"],
                c["edges"],
                k,
                needed,
                before,
                1e3 * sps[k],
                1e3 * sps[before],
            )
            c["switches"].append((c["requests"], needed, before, k))
            c["rechecks_since_change"] = 0
            c["next_recheck"] = c["requests"] + RECHECK_FIRST
        c["requests"] += 1
        if c["requests"] < c["next_recheck"]:
            return k

        def request_time(j):
            return -(-needed // j) * j * sps[j]

        others = [
            j for j in sps if j != k and j <= needed and request_time(j) <= RECHECK_WITHIN * request_time(k)
        ]
        if not others:
            c["next_recheck"] = c["requests"] + RECHECK_MAX
            return k
        # the interval doubles after each round that re-measured every candidate
        rounds = c["rechecks_since_change"] // len(others)
        c["next_recheck"] = c["requests"] + min(RECHECK_FIRST << rounds, RECHECK_MAX)
        c["rechecks_since_change"] += 1
        c["rechecks"] += 1
        return min(others, key=lambda j: (c["last_measured"].get(j, 0), request_time(j)))

    def _observe(self, bucket, n_copies: int, n_edges: int, seconds: float):
        """A model call of ``n_copies`` copies of one bucket (``n_edges`` edges in all) took
        ``seconds``: its time per copy joins that k's recent times (only for a k the calibration
        tried, and copies within 25 % of the calibrated graph's edges: a bucket spans a factor 2)."""
        c = self.calibrations.get(bucket)
        if c is None or n_copies not in c["seconds_per_copy"]:
            return
        if abs(n_edges / (n_copies * max(c["edges"], 1)) - 1) > 0.25:
            return
        recent = c["recent"].setdefault(n_copies, deque(maxlen=RECENT_CALLS))
        recent.append(seconds / n_copies)
        c["seconds_per_copy"][n_copies] = min(recent)
        c["last_measured"][n_copies] = c["requests"]

    def _calibrate(self, g: Graph, bucket, needed: int, direct: bool = False) -> dict:
        """Times the model on k identity copies of ``g`` (k = 1, 2, 4, ..., then ``needed``) and
        stores the times per copy for ``bucket`` in :attr:`calibrations` (extending an earlier
        measurement that stopped at the copies needed then)."""
        t_start = time.perf_counter()
        k_memory = max(1, self.memory_budget_edges // _n_edges(g))
        k_max = min(needed, k_memory)
        entry = self.calibrations.get(bucket)
        if entry is None:
            entry = {
                "edges": len(g.vectors),
                "atoms": len(g.numbers),
                "seconds_per_copy": {},
                "calibrated": {},
                "copies_per_call": {},
                "stopped": "",
                "cost_s": 0.0,
                "recent": {},
                "requests": 0,
                "next_recheck": RECHECK_FIRST,
                "rechecks_since_change": 0,
                "last_measured": {},
                "rechecks": 0,
                "switches": [],
            }
            self.calibrations[bucket] = entry
        per_copy = entry["seconds_per_copy"]
        entry["stopped"] = "memory budget" if k_max == k_memory else "copies needed"
        if k_max > 1:
            eye = np.eye(3)
            if not per_copy:
                self._call([(g, eye)], direct)  # warm-up: first-call costs are not the model's
            for k in sorted({1 << j for j in range(k_max.bit_length()) if 1 << j < k_max} | {k_max}):
                if k in per_copy:
                    continue
                best_time = np.inf
                for _ in range(CALIBRATION_REPEATS):
                    t0 = time.perf_counter()
                    self._call([(g, eye)] * k, direct)
                    best_time = min(best_time, time.perf_counter() - t0)
                per_copy[k] = entry["calibrated"][k] = best_time / k
                entry["recent"][k] = deque([per_copy[k]], maxlen=RECENT_CALLS)
                if per_copy[k] > (1 + CALIBRATION_TOLERANCE) * min(per_copy.values()):
                    entry["stopped"] = "slower"
                    break
        spent = time.perf_counter() - t_start
        entry["cost_s"] += spent
        self.timings["calibration"] += spent
        return entry

    def _run_chunk(self, chunk, graphs, rotations, out, direct: bool = False, bucket=None):
        copies = [(graphs[s], rotations[s].matrices[k]) for s, k in chunk]
        t0 = time.perf_counter()
        results = self._call(copies, direct)
        seconds = time.perf_counter() - t0
        self.timings["model"] += seconds
        buckets = {bucket[s] for s, _ in chunk} if bucket else set()
        if len(buckets) == 1:
            self._observe(buckets.pop(), len(chunk), sum(len(g.vectors) for g, _ in copies), seconds)
        for (s, k), result in zip(chunk, results):
            self._require_finite(result.energy, result.forces)
            out[s][k] = result

    def _call(self, copies, direct: bool):
        """One model call (``direct`` passed only when set: conservative is the adapters' default)."""
        return self.model.evaluate(copies, direct=True) if direct else self.model.evaluate(copies)

    def _require_finite(self, energies, forces):
        if not np.isfinite(energies).all() or not np.isfinite(forces).all():
            raise ModelError(
                f"model {self.model.path} returned non-finite energy or forces: "
                "the structure is probably far outside its training data"
            )


def _n_edges(g: Graph) -> int:
    """Edges a copy of ``g`` counts for in a chunk (at least 1: atoms cost something too)."""
    return max(len(g.vectors), 1)


def _copies_per_call(seconds_per_copy: dict, needed: int) -> int:
    """The measured copy count k that evaluates ``needed`` copies fastest, estimating the request
    as ceil(needed / k) calls of k copies (a partial last call counted in full: on a GPU it
    costs about as much)."""
    tried = [k for k in seconds_per_copy if k <= needed] or [min(seconds_per_copy)]
    return min(tried, key=lambda k: (-(-needed // k) * k * seconds_per_copy[k], k))


def _bucket(n_edges: int, direct: bool = False):
    """The size class a calibration is cached for: ``n_edges`` rounded up to a power of 2
    (a direct evaluation's class is ``(edges, "direct")``)."""
    size = 1 << max(n_edges - 1, 0).bit_length()
    return (size, "direct") if direct else size


def _combine(copies, rot, raw_only: bool, remove_net: bool = False) -> Result:
    """Weighted average over copies (:class:`CopyResult`) plus the symmetry-breaking diagnostics;
    with ``remove_net`` (direct forces of a whole structure; a domain rank's cluster keeps them:
    the LAMMPS bridge removes the cell's) the forces lose their net force (reported as
    ``direct_net_force``, eV/Å)."""
    w = rot.weights
    energies = np.array([c.energy for c in copies])
    forces = np.stack([c.forces for c in copies])
    net = None
    if remove_net:
        net = forces.mean(axis=1, keepdims=True)  # per copy: the mean of a linear average is linear
        forces = forces - net
    virials = np.stack([c.virial for c in copies])
    energy = float(w @ energies)
    f_avg = np.einsum("k,kia->ia", w, forces)
    result = Result(energy, f_avg, np.einsum("k,kab->ab", w, virials))
    if net is not None:
        result.extras["direct_net_force"] = float(np.linalg.norm(np.einsum("k,kia->a", w, net)) * len(f_avg))
    if copies[0].atom_energies is not None:
        result.atom_energies = np.einsum("k,ki->i", w, np.stack([c.atom_energies for c in copies]))
        result.atom_virials = np.einsum("k,kiab->iab", w, np.stack([c.atom_virials for c in copies]))
    if copies[0].members is not None:
        members = [[c.members[m] for c in copies] for m in range(len(copies[0].members))]
        member_forces = [np.einsum("k,kia->ia", w, np.stack([c.forces for c in mc])) for mc in members]
        if net is not None:  # each member's direct forces lose their own net force
            member_forces = [f - f.mean(axis=0) for f in member_forces]
        result.committee = CommitteeResult(
            np.array([w @ np.array([c.energy for c in mc]) for mc in members]),
            np.stack(member_forces),
            np.stack([np.einsum("k,kab->ab", w, np.stack([c.virial for c in mc])) for mc in members]),
        )
        result.extras.update(committee_statistics(result.committee))
    if raw_only:
        return result
    result.rotations = (w, energies, forces)
    extras = {"n_rotations": int((w > 0).sum())}
    if rot.raw_index is not None:
        extras["raw_energy"] = float(energies[rot.raw_index])
        extras["delta_energy"] = energy - extras["raw_energy"]
        extras["raw_force_delta_rms"] = float(np.sqrt(np.mean((f_avg - forces[rot.raw_index]) ** 2)))
    extras["energy_spread"] = float(np.sqrt(max(w @ (energies - energy) ** 2, 0.0)))
    f_var = np.einsum("k,kia->ia", w, (forces - f_avg) ** 2)
    extras["force_spread_rms"] = float(np.sqrt(f_var.mean())) if f_var.size else 0.0
    result.extras.update(extras)
    return result
