"""Model metrics: errors against labels, raw-vs-averaged differences, and timing of model calls.

The one place where the project computes an energy or force error or times a model call;
``mlip_server.training.validate_teacher``, ``mlip_server.training.evaluate_model``, ``mlip-probe`` and
``bench/`` use it.

    from mlip_server import metrics
    errs = metrics.label_errors(evaluator, frames, batch=8)
    errs.force_rmse, errs.energy_spread_per_atom           # eV/Å, eV/atom
    metrics.raw_vs_grid(evaluator, structures, "3i").force_mae
    metrics.time_model(evaluator, structure, repeats=5).median_s

Units: energies eV, forces eV/Å, times s everywhere in this module; reports convert (meV, ms).
Errors are *predicted − reference*.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .core.errors import InputError
from .core.evaluator import Evaluator, Result, Structure

__all__ = [
    "Labels",
    "labels",
    "Errors",
    "errors",
    "predict",
    "label_errors",
    "raw_vs_grid",
    "Timing",
    "time_calls",
    "time_model",
]


# -- labels ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Labels:
    """Reference energy and forces of one structure (same attributes as a :class:`Result`).

    Attributes
    ----------
    energy : float
        Total energy, eV.
    forces : numpy.ndarray
        [n_atoms, 3], eV/Å.
    """

    energy: float
    forces: np.ndarray


def labels(atoms, required: bool = False) -> Optional[Labels]:
    """The reference energy and forces stored with an ASE ``Atoms`` (e.g. an extended-XYZ frame).

    Parameters
    ----------
    atoms : ase.Atoms
        Labels in ``info["energy"]`` and ``arrays["forces"]``, or in its calculator's results
        (how ASE reads ``energy=`` and ``forces`` of extended XYZ), eV and eV/Å.
    required : bool
        Raise instead of returning None when the frame carries no labels.

    Returns
    -------
    Labels or None
        None when the frame has no energy or no forces (and ``required`` is False).

    Raises
    ------
    InputError
        ``required`` and no labels.
    """
    energy = atoms.info.get("energy")
    forces = atoms.arrays.get("forces")
    if energy is None and atoms.calc is not None:
        try:
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        except Exception:
            energy, forces = None, None
    if energy is None or forces is None:
        if required:
            raise InputError("a frame has no energy or forces: expected extended XYZ with energy= and forces")
        return None
    return Labels(float(energy), np.asarray(forces, dtype=float))


# -- errors -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Errors:
    """Differences *predicted − reference* over a set of structures.

    Attributes
    ----------
    energy : numpy.ndarray
        [n_structures] total-energy differences, eV.
    n_atoms : numpy.ndarray
        [n_structures] atoms of each structure.
    forces : list of numpy.ndarray
        Per structure, [n_atoms, 3] force differences, eV/Å.
    numbers : list of numpy.ndarray, optional
        Per structure, the atomic numbers (for :meth:`per_element`).
    """

    energy: np.ndarray
    n_atoms: np.ndarray
    forces: list
    numbers: Optional[list] = field(default=None)

    @property
    def n_structures(self) -> int:
        return len(self.energy)

    # energies
    @property
    def energy_per_atom(self) -> np.ndarray:
        """[n_structures] energy difference per atom, eV/atom."""
        return self.energy / self.n_atoms

    @property
    def energy_offset_per_atom(self) -> float:
        """Mean energy difference per atom (a constant shift of the model), eV/atom."""
        return float(self.energy_per_atom.mean())

    @property
    def energy_spread_per_atom(self) -> float:
        """Standard deviation over structures of the energy difference per atom (the error left
        after removing the constant offset), eV/atom."""
        return float(self.energy_per_atom.std())

    @property
    def energy_rmse_per_atom(self) -> float:
        """Root mean square of the energy difference per atom (offset included), eV/atom."""
        return float(np.sqrt(np.mean(self.energy_per_atom**2)))

    @property
    def energy_max_deviation_from_offset_per_atom(self) -> float:
        """Largest |difference per atom − offset| over the structures, eV/atom."""
        e = self.energy_per_atom
        return float(np.abs(e - e.mean()).max())

    @property
    def energy_mae(self) -> float:
        """Mean absolute total-energy difference per structure, eV."""
        return float(np.abs(self.energy).mean())

    @property
    def energy_rms(self) -> float:
        """Root mean square total-energy difference per structure, eV."""
        return float(np.sqrt((self.energy**2).mean()))

    @property
    def energy_mae_per_atom(self) -> float:
        """Mean absolute energy difference per atom, eV/atom."""
        return float(np.abs(self.energy_per_atom).mean())

    # forces
    @property
    def force_components(self) -> np.ndarray:
        """All force-component differences, flattened, eV/Å."""
        return np.concatenate([f.ravel() for f in self.forces])

    @property
    def force_mae(self) -> float:
        """Mean absolute force-component difference, eV/Å."""
        return float(np.abs(self.force_components).mean())

    @property
    def force_rmse(self) -> float:
        """Root mean square force-component difference, eV/Å."""
        return float(np.sqrt((self.force_components**2).mean()))

    def force_rmse_per_structure(self) -> np.ndarray:
        """[n_structures] force RMSE of each structure, eV/Å."""
        return np.array([np.sqrt(np.mean(f**2)) for f in self.forces])

    def per_element(self) -> dict:
        """Force MAE and RMSE by element.

        Returns
        -------
        dict
            Atomic number → ``{"force_mae": eV/Å, "force_rmse": eV/Å}``, sorted by atomic number.

        Raises
        ------
        ValueError
            When the errors were made without atomic numbers.
        """
        if self.numbers is None:
            raise ValueError("per_element needs the atomic numbers: pass numbers= to errors()")
        df, numbers = np.concatenate(self.forces), np.concatenate(self.numbers)
        out = {}
        for z in sorted(set(numbers.tolist())):
            sel = df[numbers == z]
            out[int(z)] = {
                "force_mae": float(np.abs(sel).mean()),
                "force_rmse": float(np.sqrt((sel**2).mean())),
            }
        return out


def errors(predicted: Sequence, reference: Sequence, numbers: Optional[Sequence] = None) -> Errors:
    """Differences between two sets of energies and forces of the same structures.

    Parameters
    ----------
    predicted, reference : sequence of Result or Labels
        Anything with ``energy`` (eV) and ``forces`` ([n_atoms, 3], eV/Å), one per structure, in
        the same order: model results against labels, or one model result against another
        (e.g. the raw model against its average).
    numbers : sequence of numpy.ndarray, optional
        Atomic numbers of each structure (for :meth:`Errors.per_element`).

    Returns
    -------
    Errors
        *predicted − reference*.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"errors: {len(predicted)} predictions for {len(reference)} references")
    energy = np.array([p.energy - r.energy for p, r in zip(predicted, reference)])
    forces = [np.asarray(p.forces) - np.asarray(r.forces) for p, r in zip(predicted, reference)]
    n_atoms = np.array([len(f) for f in forces])
    return Errors(energy, n_atoms, forces, None if numbers is None else [np.asarray(z) for z in numbers])


def predict(
    evaluator: Evaluator, structures: Sequence[Structure], averaging=None, batch: Optional[int] = None
) -> list[Result]:
    """Model results of ``structures``, ``batch`` structures per :meth:`Evaluator.compute` call.

    Parameters
    ----------
    evaluator : Evaluator
    structures : sequence of Structure
        Positions Å.
    averaging : str or Averaging, optional
        Averaging spec (None: the raw model).
    batch : int, optional
        Structures per call (None: all in one call). Batching changes results only at the
        level of floating-point rounding.

    Returns
    -------
    list of Result
        Energies eV, forces eV/Å.
    """
    structures = list(structures)
    batch = batch or max(len(structures), 1)
    out: list = []
    for start in range(0, len(structures), batch):
        out += evaluator.compute(structures[start : start + batch], averaging)
    return out


def label_errors(evaluator: Evaluator, frames, batch: Optional[int] = None, averaging=None) -> Errors:
    """Errors of the model against the labels of ASE frames.

    Parameters
    ----------
    evaluator : Evaluator
    frames : sequence of ase.Atoms
        Each with reference energy (eV) and forces (eV/Å), see :func:`labels`.
    batch : int, optional
        Frames per model call (None: all in one call).
    averaging : str or Averaging, optional
        Averaging spec of the model (None: raw).

    Returns
    -------
    Errors
        *model − labels*, with atomic numbers.

    Raises
    ------
    InputError
        A frame without labels.
    """
    refs = [labels(a, required=True) for a in frames]
    results = predict(evaluator, [Structure.from_ase(a) for a in frames], averaging, batch)
    return errors(results, refs, numbers=[a.numbers for a in frames])


def raw_vs_grid(evaluator: Evaluator, structures: Sequence[Structure], grid: str) -> Errors:
    """Symmetry breaking: the raw model minus its average over the rotation grid ``grid``.

    One structure per call: first the ``grid`` average, whose ``raw_energy`` (the identity
    copy of the same call) gives the raw energy, then the raw model for the raw forces.

    Parameters
    ----------
    evaluator : Evaluator
    structures : sequence of Structure
        Positions Å.
    grid : str
        An averaging spec that contains the identity rotation (``2i``, ``3i``, ...).

    Returns
    -------
    Errors
        *raw − averaged*: energies eV per structure, forces eV/Å.
    """
    raw, avg = [], []
    for s in structures:
        a = evaluator.compute([s], grid)[0]
        r = evaluator.compute([s])[0]
        raw.append(Labels(a.extras["raw_energy"], r.forces))
        avg.append(a)
    return errors(raw, avg)


# -- timing ---------------------------------------------------------------------------------
@dataclass
class Timing:
    """Timed calls of one function.

    Attributes
    ----------
    wall_s : list of float
        Wall time of each timed call, s.
    cpu_s : list of float
        Process CPU time (all threads) of each timed call, s: less sensitive to other
        processes than the wall time.
    warmup_s : list of float
        Wall time of each warm-up call (not timed), s.
    neighbors_s : list of float
        Neighbour-list time of each timed call, s (only with an evaluator; else empty).
    load_average_1min : float
        1-minute load average after the calls.
    """

    wall_s: list
    cpu_s: list
    warmup_s: list
    neighbors_s: list
    load_average_1min: float

    @property
    def repeats(self) -> int:
        return len(self.wall_s)

    @property
    def median_s(self) -> float:
        """Median wall time, s."""
        return statistics.median(self.wall_s)

    @property
    def min_s(self) -> float:
        """Best (smallest) wall time, s."""
        return min(self.wall_s)

    @property
    def cpu_median_s(self) -> float:
        """Median process CPU time, s."""
        return statistics.median(self.cpu_s)

    @property
    def neighbors_median_s(self) -> float:
        """Median neighbour-list time, s (NaN without an evaluator)."""
        return statistics.median(self.neighbors_s) if self.neighbors_s else float("nan")


def time_calls(
    call: Callable[[], object],
    repeats: int = 5,
    warmup: int = 1,
    *,
    evaluator: Optional[Evaluator] = None,
    budget_s: Optional[float] = None,
    max_repeats: int = 20,
) -> Timing:
    """Times ``call()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Parameters
    ----------
    call : callable
        No arguments; e.g. ``lambda: evaluator.compute([s])``.
    repeats : int
        Timed calls (at least).
    warmup : int
        Untimed calls first (first-call compilation, caches).
    evaluator : Evaluator, optional
        The evaluator ``call`` uses: its neighbour-list time per call is recorded too.
    budget_s : float, optional
        With at least one warm-up: repeat cheap calls until about ``budget_s`` s would be spent
        (judged from the last warm-up), at most ``max_repeats`` and at least ``repeats`` times,
        so that one slow moment cannot set a best time.
    max_repeats : int
        Cap of the repeats that ``budget_s`` asks for.

    Returns
    -------
    Timing
    """
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        call()
        warm.append(time.perf_counter() - t0)
    if budget_s is not None and warm:
        repeats = max(repeats, min(max_repeats, int(budget_s / max(warm[-1], 1e-3))))
    wall, cpu, neighbors = [], [], []
    for _ in range(repeats):
        before = evaluator.timings["neighbors"] if evaluator is not None else 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        call()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if evaluator is not None:
            neighbors.append(evaluator.timings["neighbors"] - before)
    return Timing(wall, cpu, warm, neighbors, os.getloadavg()[0])


def time_model(
    evaluator: Evaluator, structure: Structure, averaging=None, repeats: int = 5, warmup: int = 1, **kwargs
) -> Timing:
    """Times one energy + forces call of ``evaluator`` on ``structure`` (neighbour list included).

    Parameters
    ----------
    evaluator : Evaluator
    structure : Structure
        Positions Å.
    averaging : str or Averaging, optional
        Averaging spec (None: the raw model).
    repeats, warmup, **kwargs
        As in :func:`time_calls` (``budget_s``, ``max_repeats``).

    Returns
    -------
    Timing
        Wall, CPU and neighbour-list times, s.
    """
    return time_calls(
        lambda: evaluator.compute([structure], averaging), repeats, warmup, evaluator=evaluator, **kwargs
    )
