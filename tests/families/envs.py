"""The model families' own virtual environments, and the model files built in them.

The families' packages conflict with each other (mace-torch pins e3nn 0.4.4, nequip needs
e3nn ≥ 0.6) and with nothing the server needs: serving a family's file takes torch (and, for
metatomic files, metatomic-torch) only. So each family gets its own venv, used only to *build*
small real models of the family and to compute the family's own reference results; the
project's venv (``make install``) serves them.

Layout (under ``.families/`` of the checkout, ignored by git, or ``$MLIP_FAMILIES_DIR``: CI keeps
them in ``~/.cache/mlip-server/families``)::

    .families/<family>/venv/          python -m venv + pip install -r tests/families/<family>/requirements.txt
    .families/<family>/venv/.stamp    SHA-256 of requirements.txt: rebuilt when the pins change
    .families/<family>/build/         what tests/families/<family>/build.py wrote (model files,
                                      reference results), with build/.stamp = SHA-256 of the
                                      requirements, build.py and reference.py

Usage (what ``make families`` runs; tests call :func:`venv_python` and :func:`built`)::

    python tests/families/envs.py [mace nequip metatrain]

A family whose venv cannot be built (no registry) makes its tests fail with pip's last lines,
never skip: ``make test-families`` exists to run them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAMILIES = ("mace", "nequip", "metatrain")
"""The families, each a folder of tests/families/ with requirements.txt and build.py."""
STORE = Path(os.environ.get("MLIP_FAMILIES_DIR", ROOT / ".families"))
BUILD_INPUTS = ("requirements.txt", "build.py", "reference.py")
"""The files of a family's folder whose content stamps its build (toy.py, torch-only files for
make test, is not one of them)."""
TORCH_PIN = "torch==2.13.0"
"""Installed first, alone, as ``make install`` does (the machine's CPU wheel)."""


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def family_dir(family: str) -> Path:
    """tests/families/<family> (requirements.txt, build.py, reference scripts)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    return HERE / family


def venv_python(family: str, log=print) -> Path:
    """The python of the family's venv, created (or rebuilt when its pins changed) first."""
    requirements = family_dir(family) / "requirements.txt"
    venv = STORE / family / "venv"
    stamp = venv / ".stamp"
    want = _digest([requirements])
    python = venv / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    log(f"[families] building the {family} venv in {venv} (its pins changed or it is new)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run(pip + [TORCH_PIN])
    _run(pip + ["-r", str(requirements)])
    stamp.write_text(want)
    return python


def built(family: str, log=print) -> Path:
    """The family's build folder, (re)built by its build.py in its venv when the requirements
    or any script of the family changed."""
    python = venv_python(family, log)
    folder = family_dir(family)
    out = STORE / family / "build"
    stamp = out / ".stamp"
    want = _digest([folder / name for name in BUILD_INPUTS if (folder / name).exists()])
    if stamp.exists() and stamp.read_text() == want:
        return out
    log(f"[families] building the {family} models in {out}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _run([str(python), str(folder / "build.py"), str(out)], cwd=out)
    stamp.write_text(want)
    return out


def run_in(family: str, script: str, *args, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Runs tests/families/<family>/<script> (or ``script`` itself, given as an absolute path) with
    the family's python; raises with its output's tail when it fails."""
    python = venv_python(family)
    return _run([str(python), str(family_dir(family) / script), *map(str, args)], timeout=timeout)


def _run(cmd, cwd=None, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}):\n{tail}")
    return proc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", metavar="FAMILY", help=f"{', '.join(FAMILIES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:  # (argparse's choices refuse an empty nargs="*" list under Python 3.11)
        parser.error(f"unknown family {unknown[0]!r}: choose from {', '.join(FAMILIES)}")
    for family in args.families or FAMILIES:
        print(f"[families] {family}: {built(family)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
