"""Where the shipped files are, and where a run's outputs go.

The shipped files (the default model, the i-PI experiments, the LAMMPS decks, the SLURM templates,
the training configurations) are package data of ``mlip_server``: sub-packages
``mlip_server.models``, ``mlip_server.ipi_inputs``, ``mlip_server.lammps_inputs``,
``mlip_server.hpc`` and the ``configs/`` folder of ``mlip_server.training``, found through
:mod:`importlib.resources`. In a checkout (an editable install) they are the repository's own
folders ``models/``, ``ipi_inputs/``, ``lammps_inputs/``, ``hpc/``, ``training/configs/``; from a
wheel they are inside the installed package. Every module that needs a shipped file asks this one.

Outputs never go into the package: run folders default to ``./runs/`` under the current folder
(:func:`runs_dir`). A user edits a copy of a shipped file (:func:`copy_shipped`), never
site-packages.
"""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

from .core.errors import InputError

__all__ = [
    "SHIPPED_FOLDERS",
    "SHIPPED_PATTERNS",
    "shipped",
    "shipped_model",
    "experiments_dir",
    "shipped_liquid",
    "lammps_inputs_dir",
    "hpc_dir",
    "training_configs_dir",
    "runs_dir",
    "checkout_root",
    "list_shipped",
    "copy_shipped",
]

#: The name a user gives a shipped folder (``hpc/ipi-cpu-server-gpu.slurm``) -> its package.
SHIPPED_FOLDERS = {
    "models": "mlip_server.models",
    "ipi_inputs": "mlip_server.ipi_inputs",
    "lammps_inputs": "mlip_server.lammps_inputs",
    "hpc": "mlip_server.hpc",
    "training/configs": "mlip_server.training",
}

#: The files each shipped folder ships: the same globs as ``[tool.setuptools.package-data]`` of
#: pyproject.toml (tests/test_packaging.py checks that the wheel holds exactly these).
SHIPPED_PATTERNS = {
    "models": ("water-pet.pt", "committee/*.pt", "MODEL_CARD.md"),
    "ipi_inputs": ("README.md", "*/README.md", "*/input.xml", "*/experiment.json", "structures/*.extxyz"),
    "lammps_inputs": ("README.md", "in.*"),
    "hpc": ("README.md", "*.slurm", "local-slurm/*.sh"),
    "training/configs": ("*.yaml",),
}

REINSTALL = "pip install --force-reinstall mlip-server"


def _folder(name: str) -> Path:
    """The real folder of shipped folder ``name`` (a key of :data:`SHIPPED_FOLDERS`)."""
    package = SHIPPED_FOLDERS[name]
    try:
        root = Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        raise InputError(
            f"the shipped files of mlip_server are missing ({package} cannot be imported): "
            f"the installation is broken; reinstall it ({REINSTALL})"
        ) from None
    return root / "configs" if name == "training/configs" else root


def shipped(relative: str) -> Path:
    """The path of one shipped file or folder, named as in the repository (``models/water-pet.pt``,
    ``ipi_inputs/water-nvt``, ``hpc/lammps-domain.slurm``).

    Raises
    ------
    InputError
        When the name is not a shipped file (one line naming what is shipped), or the file is
        missing from the installed package (one line naming how to reinstall).
    """
    relative = relative.strip("/")
    for name in sorted(SHIPPED_FOLDERS, key=len, reverse=True):
        if relative == name or relative.startswith(name + "/"):
            path = _folder(name) / relative[len(name) :].lstrip("/")
            if not path.exists():
                if name == "models" or relative == name:
                    raise InputError(
                        f"the shipped file {relative} is missing from the installed mlip_server package "
                        f"({path}): reinstall it ({REINSTALL})"
                    )
                raise InputError(
                    f"{relative} is not a shipped file; shipped: {', '.join(list_shipped(name))}"
                )
            return path
    raise InputError(f"{relative} is not under a shipped folder ({', '.join(SHIPPED_FOLDERS)})")


def shipped_model() -> Path:
    """``models/water-pet.pt``, the default model of every command."""
    return shipped("models/water-pet.pt")


def experiments_dir() -> Path:
    """``ipi_inputs/``: one folder per i-PI experiment."""
    return _folder("ipi_inputs")


def shipped_liquid() -> Path:
    """An equilibrated 64-molecule liquid water frame at 300 K (extended XYZ, Å)."""
    return shipped("ipi_inputs/structures/water-64-liquid-300K.extxyz")


def lammps_inputs_dir() -> Path:
    """``lammps_inputs/``: the shipped LAMMPS decks (``in.NAME``)."""
    return _folder("lammps_inputs")


def hpc_dir() -> Path:
    """``hpc/``: the shipped SLURM templates."""
    return _folder("hpc")


def training_configs_dir() -> Path:
    """``training/configs/``: the training configurations (YAML)."""
    return _folder("training/configs")


def runs_dir() -> Path:
    """``./runs/`` under the current folder: the default parent of run folders."""
    return Path.cwd() / "runs"


def checkout_root() -> Path:
    """The repository checkout this package is installed from (editable installs only): the
    developer scripts of ``mlip_server.training`` and ``bench/`` read its ``models/checkpoints/``
    and the data beside it (``../shared/data``).

    Raises
    ------
    InputError
        When the package is not installed from a checkout (a wheel).
    """
    root = _folder("models").parent
    if not (root / "pyproject.toml").is_file() or not (root / "server").is_dir():
        raise InputError(
            "this command needs a checkout of the project (git clone, then pip install -e .); "
            f"the installed package at {root} is not one"
        )
    return root


def list_shipped(name: str | None = None) -> list[str]:
    """The shipped files, named as in the repository (``hpc/lammps-domain.slurm``); ``name``
    limits the list to one folder of :data:`SHIPPED_FOLDERS`. Only the files that the package
    ships (:data:`SHIPPED_PATTERNS`) are listed, also in a checkout, whose folders hold more."""
    found = []
    for folder in [name] if name else list(SHIPPED_FOLDERS):
        root = _folder(folder)
        paths = {p for pattern in SHIPPED_PATTERNS[folder] for p in root.glob(pattern) if p.is_file()}
        found += [f"{folder}/{p.relative_to(root).as_posix()}" for p in sorted(paths)]
    return found


def copy_shipped(relative: str, destination: str | Path = ".") -> Path:
    """Copy one shipped file or folder into ``destination`` (a folder; default the current one),
    for the user to edit. Returns the new path. An existing file is never overwritten.

    Raises
    ------
    InputError
        When ``relative`` is not shipped, or the copy would overwrite a file.
    """
    source = shipped(relative)
    destination = Path(destination)
    target = destination / source.name if destination.is_dir() else destination
    if target.exists():
        raise InputError(f"{target} exists already: remove it or copy to another folder (--to)")
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "__init__.py"))
    else:
        shutil.copy2(source, target)
    return target
