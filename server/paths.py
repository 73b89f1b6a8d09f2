"""Where the project's shipped files are: the default model, i-PI experiments, structures, decks.

Every module that needs a shipped file asks this one. The files live in the source tree
(``models/``, ``ipi_inputs/``, ``lammps_inputs/``), not inside the ``server`` package, so they
are found

* in a checkout or an editable install (``pip install -e .``): next to the package;
* from a non-editable install: through the environment variable ``MLIP_PROJECT_ROOT``, which
  must name a checkout of the project. Commands that need no shipped file (``mlip-server``,
  ``mlip-lammps``, ``mlip-analyse``) work without it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .core.errors import InputError

__all__ = [
    "project_root",
    "shipped_model",
    "experiments_dir",
    "shipped_liquid",
    "lammps_inputs_dir",
    "runs_dir",
]

ROOT_VARIABLE = "MLIP_PROJECT_ROOT"


def project_root() -> Path:
    """The project checkout that holds ``ipi_inputs/`` and ``models/``.

    Raises
    ------
    InputError
        When neither ``MLIP_PROJECT_ROOT`` nor the package's parent folder is a checkout.
    """
    given = os.environ.get(ROOT_VARIABLE)
    candidates = [Path(given)] if given else []
    candidates.append(Path(__file__).resolve().parents[1])
    for root in candidates:
        if (root / "ipi_inputs").is_dir():
            return root
    raise InputError(
        f"cannot find the project's shipped files (ipi_inputs/, models/): set {ROOT_VARIABLE} "
        "to a checkout of the project, or install it with pip install -e ."
    )


def shipped_model() -> Path:
    """``models/water-pet.pt``, the default model of every command."""
    return project_root() / "models" / "water-pet.pt"


def experiments_dir() -> Path:
    """``ipi_inputs/``: one folder per i-PI experiment."""
    return project_root() / "ipi_inputs"


def shipped_liquid() -> Path:
    """An equilibrated 64-molecule liquid water frame at 300 K (extended XYZ, Å)."""
    return experiments_dir() / "structures" / "water-64-liquid-300K.extxyz"


def lammps_inputs_dir() -> Path:
    """``lammps_inputs/``: LAMMPS decks (and the water data files built for them)."""
    return project_root() / "lammps_inputs"


def runs_dir() -> Path:
    """``runs/``: the default parent of run folders."""
    return project_root() / "runs"
