"""The installed package's contract with a user (fast; the wheel itself: tests/test_wheel.py).

Shipped files are package data found through :mod:`mlip_server.paths`; every command's ``--help``
works without them; a broken install is one line naming the reinstall; runs go under the current
folder; a shipped file is copied out, never edited in place.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tomllib

from mlip_server import paths
from mlip_server.core.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _entry_points() -> dict:
    return PYPROJECT["project"]["scripts"]


def test_every_entry_point_lives_in_the_one_namespace():
    for command, target in _entry_points().items():
        module, _, function = target.partition(":")
        assert module.split(".")[0] == "mlip_server", command
        assert callable(getattr(importlib.import_module(module), function)), command


def test_shipped_patterns_are_the_package_data_of_pyproject():
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for folder, package in paths.SHIPPED_FOLDERS.items():
        patterns = list(paths.SHIPPED_PATTERNS[folder])
        if folder == "training/configs":
            patterns = [f"configs/{p}" for p in patterns]
        assert package_data[package] == patterns, folder


@pytest.mark.parametrize("command", sorted(_entry_points()))
def test_help_works_without_any_shipped_file(command, monkeypatch, capsys):
    """A broken install (every shipped folder missing) still prints --help, exit 0."""

    def missing(name):
        raise InputError(f"the shipped files of mlip_server are missing ({name})")

    monkeypatch.setattr(paths, "_folder", missing)
    module, _, function = _entry_points()[command].partition(":")
    with pytest.raises(SystemExit) as exit_:
        getattr(importlib.import_module(module), function)(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_a_broken_install_is_one_line_naming_the_reinstall(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "_folder", lambda name: tmp_path / "gone")
    with pytest.raises(InputError) as err:
        paths.shipped_model()
    message = str(err.value)
    assert "\n" not in message and "reinstall" in message and "pip install --force-reinstall" in message


def test_an_unknown_shipped_name_lists_what_is_shipped():
    with pytest.raises(InputError) as err:
        paths.shipped("hpc/no-such.slurm")
    assert "hpc/ipi-cpu-server-gpu.slurm" in str(err.value) and "\n" not in str(err.value)


def test_runs_go_under_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert paths.runs_dir() == tmp_path / "runs"


def test_copy_template_copies_once_and_never_overwrites(tmp_path):
    copied = paths.copy_shipped("hpc/lammps-domain.slurm", tmp_path)
    assert copied == tmp_path / "lammps-domain.slurm"
    assert copied.read_bytes() == paths.shipped("hpc/lammps-domain.slurm").read_bytes()
    folder = paths.copy_shipped("ipi_inputs/water-nvt", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "experiment.json", "input.xml"]
    with pytest.raises(InputError, match="exists already"):
        paths.copy_shipped("hpc/lammps-domain.slurm", tmp_path)


def test_every_shipped_experiment_and_deck_is_listed():
    listed = paths.list_shipped()
    for folder in sorted(p for p in paths.experiments_dir().iterdir() if (p / "input.xml").is_file()):
        assert f"ipi_inputs/{folder.name}/input.xml" in listed
    for deck in paths.lammps_inputs_dir().glob("in.*"):
        assert f"lammps_inputs/{deck.name}" in listed
    assert "models/water-pet.pt" in listed
