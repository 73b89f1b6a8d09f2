"""``mlip-server --check``: a dry run for someone bringing their own model.

Loads the model as the server would, reports what the server reads from it (format, cutoff,
species, precision, interaction range, whether its energy is a sum of atomic terms), evaluates
it on a structure (the given one, or a 32-molecule water box for an H/O model), checks its forces
against finite differences of its energy, times a call, and says which routes it can serve:
i-PI/ASE/LAMMPS gather, rotational averaging, the LAMMPS domain route, direct forces. Nothing is
connected to.
"""

from __future__ import annotations

import time

import numpy as np

from .core.errors import InputError, MLIPError

__all__ = ["check_model"]

FD_STEP = 1e-3
"""Finite-difference displacement, Å."""


def _structure(path, species):
    from .core.graph import Structure
    from .structures import water_box

    if path is not None:
        import ase.io

        try:
            atoms = ase.io.read(path, index=0)
        except (OSError, ValueError, StopIteration) as err:
            raise InputError(f"--structure {path}: not readable by ASE ({err})") from None
        return Structure.from_ase(atoms), str(path)
    if not {1, 8} <= set(species):
        raise InputError(
            f"the model's species are {species}: give --structure FILE with a structure of them to check on"
        )
    return Structure.from_ase(water_box(32, seed=1)), "a generated box of 32 water molecules"


def _finite_difference_error(evaluator, structure, forces, rng) -> float:
    """Largest |F − (−dE/dx)| / max|F| over 3 random coordinates (central differences)."""
    from dataclasses import replace

    worst = 0.0
    scale = max(float(np.abs(forces).max()), 1e-12)
    for _ in range(3):
        i, k = int(rng.integers(len(structure.numbers))), int(rng.integers(3))
        energies = []
        for sign in (1, -1):
            positions = np.array(structure.positions, dtype=float)
            positions[i, k] += sign * FD_STEP
            energies.append(evaluator.compute([replace(structure, positions=positions)])[0].energy)
        numeric = -(energies[0] - energies[1]) / (2 * FD_STEP)
        worst = max(worst, abs(numeric - forces[i, k]) / scale)
    return worst


def _finite_differences(model, ev, structure, device) -> tuple[float, str]:
    """The finite-difference check in float64 where the model allows it (float32 rounding of a
    total energy of ~10^4 eV swamps a 10^-3 Å difference), else in the model's own precision."""
    from .core.evaluator import Evaluator

    try:
        ev = Evaluator(model, device=device, dtype="float64")
    except MLIPError:
        pass
    forces = ev.compute([structure])[0].forces
    error = _finite_difference_error(ev, structure, forces, np.random.default_rng(0))
    return error, str(ev.model.dtype).removeprefix("torch.")


def _route(evaluate) -> str:
    try:
        evaluate()
        return "yes"
    except MLIPError as err:
        return f"no: {err}"


def _direct(ev, s, conservative) -> str:
    """Whether the model has a direct head, and how far its forces are from −∇E here."""
    if not ev.model.direct_forces:
        return "no (no direct_forces method / non_conservative_force output)"
    try:
        direct = ev.compute([s], "direct")[0]
    except MLIPError as err:
        return f"no: {err}"
    rmse = float(np.sqrt(np.mean((direct.forces - conservative) ** 2)))
    virial = "with" if ev.model.direct_virial else "without (zero virial: not for NPT)"
    return (
        f"yes, {virial} a direct virial; RMS difference from −∇E here {rmse:.3g} eV/Å, "
        f"net force removed {direct.extras['direct_net_force']:.3g} eV/Å"
    )


def _averaging(ev, s) -> str:
    try:
        delta = ev.compute([s], "i")[0].extras["delta_energy"]
    except MLIPError as err:
        return f"no: {err}"
    return f"yes; averaged − raw energy {delta:.3g} eV"


def check_model(model, structure=None, device="cpu", dtype=None, repeats=5) -> tuple[list[str], int]:
    """The report of ``mlip-server --check`` as lines, and the exit status (0 usable, 2 not).

    Parameters
    ----------
    model : str or list of str
        A model file (a list: a committee).
    structure : str, optional
        A structure file (ASE-readable); None: 32 water molecules for an H/O model.
    device, dtype : str
        As for ``mlip-server``.
    repeats : int
        Timed calls after one warm-up; the median is reported.
    """
    from dataclasses import replace

    from .core.evaluator import Evaluator

    lines = []
    try:
        ev = Evaluator(model, device=device, dtype=dtype)
        m = ev.model
        lines += [
            f"{m.label} {m.path}: loads",
            f"  cutoff {m.cutoff:.4g} Å; species {list(m.species)}; "
            f"{str(m.dtype).removeprefix('torch.')} "
            f"({'requested' if m.requested_dtype else 'its own'}) on {device}",
            f"  interaction range {m.interaction_range:.4g} Å ("
            + ("declared" if m.declared_range else "not declared: assumed local, = cutoff")
            + f"); energy {'is' if m.sums_atomic_energies else 'is NOT'} a sum of atomic terms",
        ]
        s, where = _structure(structure, list(m.species))
        unknown = sorted(set(np.asarray(s.numbers).tolist()) - set(m.species))
        if unknown:
            raise InputError(f"{where} has atomic numbers {unknown} that the model does not support")
        result = ev.compute([s])[0]
        if not (np.isfinite(result.energy) and np.isfinite(result.forces).all()):
            raise InputError(f"the model gives non-finite energies or forces on {where}")
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            ev.compute([s])
            times.append(time.perf_counter() - t0)
        fd, fd_dtype = _finite_differences(model, ev, s, device)
        net = np.abs(result.forces.sum(axis=0)).max()
        lines += [
            f"on {where} ({len(s.numbers)} atoms): energy {result.energy:.6g} eV, max |F| "
            f"{np.abs(result.forces).max():.4g} eV/Å, net force {net:.2g} eV/Å",
            f"  forces vs finite differences of the energy (±{FD_STEP:g} Å, 3 coordinates): "
            f"largest error {fd:.2g} of max |F| (in {fd_dtype})",
            f"  time per call: {1e3 * float(np.median(times[1:])):.3g} ms "
            f"(median of {repeats}, energy + forces + virial)",
            "routes:",
            "  i-PI, ASE, LAMMPS gather route: yes",
            "  rotational averaging (spec i): " + _averaging(ev, s),
            "  LAMMPS domain route (energy of the owned atoms): "
            + (
                _route(lambda: ev.compute([replace(s, owned=max(1, len(s.numbers) // 2))]))
                if m.sums_atomic_energies
                else "no: its energy is not a sum of atomic terms"
            ),
            "  direct (non-conservative) forces: " + _direct(ev, s, result.forces),
        ]
        return lines, 0
    except MLIPError as err:
        return lines + [f"error: {err}"], 2
