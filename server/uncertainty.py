"""Structures where a committee is unsure: logged, and saved for labelling (active learning).

``mlip-server --committee ... --uncertainty-threshold F [--save-uncertain DIR]``: every
evaluated structure whose largest per-atom committee force spread
(``committee_force_std_max``, eV/Å, :mod:`mlip_server.core.committee`) exceeds ``F`` is logged in one
line and, with a directory, appended to ``DIR/uncertain.extxyz``: positions (Å), cell, pbc, the
served energy (eV) and forces (eV/Å) as ASE's single-point results, the per-atom spread
(``committee_force_std``, eV/Å), every member's energy (``committee_energies``, eV) and where it
came from (``source``). Each structure is one ``write`` on a file opened for appending, so a
crash never leaves half a frame and ``ase.io.read(..., index=":")`` reads every saved one.
"""

from __future__ import annotations

import io
import logging
import os
import re

import numpy as np

from .core.errors import InputError
from .core.graph import Result, Structure

__all__ = ["UncertaintyLog"]

log = logging.getLogger("mlip-server")

FILE_NAME = "uncertain.extxyz"


class UncertaintyLog:
    """Checks results against a force-spread threshold.

    Parameters
    ----------
    threshold : float
        eV/Å on ``committee_force_std_max``; structures above it are reported.
    save_dir : str, optional
        Directory for ``uncertain.extxyz`` (created); None: log only.

    Attributes
    ----------
    n_checked, n_above : int
        Structures seen and structures above the threshold.
    path : str or None
        The file structures are appended to.
    """

    def __init__(self, threshold: float, save_dir: str | None = None):
        if not threshold > 0 or not np.isfinite(threshold):
            raise InputError(f"--uncertainty-threshold must be a positive force in eV/Å, not {threshold}")
        self.threshold = float(threshold)
        self.path = None
        if save_dir is not None:
            try:
                os.makedirs(save_dir, exist_ok=True)
            except OSError as err:
                raise InputError(f"cannot create --save-uncertain directory {save_dir!r}: {err.strerror}")
            self.path = os.path.join(save_dir, FILE_NAME)
        self.n_checked = self.n_above = 0

    def check(self, structure: Structure, result: Result, where: str) -> bool:
        """Logs (and saves) ``structure`` if its spread exceeds the threshold; returns whether it did."""
        if result.committee is None:
            return False
        self.n_checked += 1
        std = result.committee.force_std()
        worst = float(std.max()) if std.size else 0.0
        if not worst > self.threshold:
            return False
        self.n_above += 1
        atom = int(np.argmax(std))
        saved = ""
        if self.path is not None:
            self._append(structure, result, std, where)
            saved = f"; appended to {self.path}"
        log.warning(
            "%s: committee force spread %.4g eV/Å on atom %d above --uncertainty-threshold %.4g "
            "(energy spread %.4g eV)%s",
            where,
            worst,
            atom,
            self.threshold,
            result.extras.get("committee_energy_std", float("nan")),
            saved,
        )
        return True

    def _append(self, structure: Structure, result: Result, std: np.ndarray, where: str) -> None:
        import ase.io
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(
            numbers=structure.numbers, positions=structure.positions, cell=structure.cell, pbc=structure.pbc
        )
        atoms.arrays["committee_force_std"] = np.asarray(std, dtype=float)
        atoms.info["committee_energy_std"] = float(result.extras["committee_energy_std"])
        atoms.info["committee_force_std_max"] = float(std.max())
        atoms.info["committee_energies"] = np.asarray(result.committee.energies, dtype=float)
        atoms.info["source"] = re.sub(r"[^\w:.-]+", "_", where)
        atoms.calc = SinglePointCalculator(atoms, energy=float(result.energy), forces=result.forces)
        buffer = io.StringIO()
        ase.io.write(buffer, atoms, format="extxyz", parallel=False)  # ASE would broadcast under MPI
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, buffer.getvalue().encode())
        finally:
            os.close(fd)

    def summary(self) -> str:
        """One line for the end of a run."""
        where = f", saved in {self.path}" if self.path and self.n_above else ""
        return (
            f"{self.n_above} of {self.n_checked} structures above the committee force-spread threshold "
            f"{self.threshold:g} eV/Å{where}"
        )
