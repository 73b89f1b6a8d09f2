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
"""Finite-difference displacement h, Å: central differences at h and 2h."""


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


def _finite_difference_error(evaluator, structure, forces, rng) -> tuple[float, str]:
    """Forces against finite differences of the energy at 3 random coordinates.

    Returns the largest |F − F_fd| / max|F| and, where |F − F_fd| exceeds its tolerance at a
    coordinate (the forces are not −∇E of this energy), the largest such error in words ("" if
    none does).

    F_fd is the Richardson combination (4 D(h) − D(2h)) / 3 of the central differences
    D(s) = −(E(x+s) − E(x−s)) / 2s. What separates it from −∂E/∂x for a model whose forces *are*
    its gradient is only

    * truncation: D(s) = −∂E/∂x − s²/6 ∂³E/∂x³ − s⁴/120 ∂⁵E/∂x⁵ …, so the Richardson value keeps
      only the s⁴ term, which is smaller than the measured |D(h) − D(2h)| = h²/2 |∂³E/∂x³| by
      ~ (h/ℓ)² for a length ℓ over which the energy's curvature changes (ℓ ≳ 0.1 Å for any
      interatomic potential: ≤ 10⁻⁴ at h = 10⁻³ Å). |D(h) − D(2h)| is used as its bound: measured
      at the coordinate, so it is generous where the energy is stiff or not smooth (a step across a
      hard cutoff), and it does not see a wrong force: that moves F, not the energy's curvature;
    * rounding: each energy is rounded to ~ ε·√N·S in the model's dtype (ε its machine epsilon, N
      atomic terms, S = max(|E|, N × 1 eV) the size of what is summed), and the Richardson value
      combines 6 of them with weights (4/(2h)·2 + 1/(4h)·2)/3 = 1.5/h; bounded by 4 ε √N S / h.

    The tolerance at each coordinate is the sum of the two; a model that computes part of its
    energy outside the autograd graph misses that part's force, an error of the size of the forces,
    orders of magnitude above it (float64: ~10⁻⁹ eV/Å rounding for 100 atoms of water).
    """
    from dataclasses import replace

    import torch

    n = len(structure.numbers)
    scale = max(float(np.abs(forces).max()), 1e-12)
    eps = torch.finfo(evaluator.model.dtype).eps
    rounding = 4 * eps * np.sqrt(n) * max(abs(evaluator.compute([structure])[0].energy), n * 1.0) / FD_STEP

    def energy(i, k, step):
        positions = np.array(structure.positions, dtype=float)
        positions[i, k] += step
        return evaluator.compute([replace(structure, positions=positions)])[0].energy

    worst, failed = 0.0, []
    for _ in range(3):
        i, k = int(rng.integers(n)), int(rng.integers(3))
        d1, d2 = (-(energy(i, k, s) - energy(i, k, -s)) / (2 * s) for s in (FD_STEP, 2 * FD_STEP))
        numeric = (4 * d1 - d2) / 3
        tolerance = abs(d1 - d2) + rounding
        error = abs(numeric - forces[i, k])
        worst = max(worst, error / scale)
        if error > tolerance:
            failed.append(
                (
                    error,
                    f"atom {i} {'xyz'[k]}: force {forces[i, k]:.4g} eV/Å, −dE/d{'xyz'[k]} {numeric:.4g} "
                    f"eV/Å, error {error:.3g} eV/Å ({error / scale:.2g} of max |F|; tolerance "
                    f"{tolerance:.2g} eV/Å)",
                )
            )
    return worst, max(failed)[1] if failed else ""


def _finite_differences(model, ev, structure, device) -> tuple[float, str, str]:
    """The finite-difference check in float64 where the model allows it (float32 rounding of a
    total energy of ~10^4 eV swamps a 10^-3 Å difference), else in the model's own precision."""
    from .loading import load_evaluator

    try:
        ev = load_evaluator(model, device=device, dtype="float64")
    except MLIPError:
        pass
    forces = ev.compute([structure])[0].forces
    error, failed = _finite_difference_error(ev, structure, forces, np.random.default_rng(0))
    return error, failed, str(ev.model.dtype).removeprefix("torch.")


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
    """The report of ``mlip-server --check`` as lines, and the exit status (0 usable, 2 not: then
    the last line, "error: ...", is the one-line reason, and the forces failing their
    finite-difference check is one).

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

    from .loading import load_evaluator

    lines = []
    try:
        ev = load_evaluator(model, device=device, dtype=dtype)
        m = ev.model
        lines += [
            f"{m.label} {m.path}: loads",
            *(f"  {line}" for line in m.describe()),
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
        fd, fd_failed, fd_dtype = _finite_differences(model, ev, s, device)
        net = np.abs(result.forces.sum(axis=0)).max()
        lines += [
            f"on {where} ({len(s.numbers)} atoms): energy {result.energy:.6g} eV, max |F| "
            f"{np.abs(result.forces).max():.4g} eV/Å, net force {net:.2g} eV/Å",
            f"  forces vs finite differences of the energy (±{FD_STEP:g} Å, 3 coordinates): "
            f"largest error {fd:.2g} of max |F| (in {fd_dtype})",
        ]
        if fd_failed:
            raise InputError(
                f"the forces are not −∇E of the model's energy (in {fd_dtype}, ±{FD_STEP:g} Å): "
                f"{fd_failed}; does part of the energy use detached tensors?"
            )
        lines += [
            f"  time per call: {1e3 * float(np.median(times[1:])):.3g} ms "
            f"(median of {repeats}, energy + forces + virial)",
            "routes:",
            "  i-PI, ASE, LAMMPS gather route: yes",
            "  rotational averaging (spec i): " + _averaging(ev, s),
            "  LAMMPS domain route (energy of the owned atoms): "
            + (
                _route(lambda: ev.compute([replace(s, owned=max(1, len(s.numbers) // 2))]))
                if m.sums_atomic_energies
                else "no: " + (m.subset_refusal or "its energy is not a sum of atomic terms")
            ),
            "  direct (non-conservative) forces: " + _direct(ev, s, result.forces),
        ]
        return lines, 0
    except MLIPError as err:
        return lines + ["error: " + " ".join(str(err).split())], 2
