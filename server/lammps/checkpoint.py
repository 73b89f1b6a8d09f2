"""Checkpoints of a LAMMPS run and their resume: the state file, restart files, outputs cut back.

The bridge (``mlip-lammps --checkpoint-every N --state FILE``) has LAMMPS write restart files
``restart.STEP`` every N steps (``restart N restart.*``; the newest two are kept) and one,
``restart.stop``, at a clean stop. After each complete restart file (noted at the next force
call, so a file being written when everything is killed is never named) it rewrites the state
file (``checkpoint.json``, atomically): the restart file, its step, the deck's first and final
steps, the dump files; at the end of the deck ``done``.

``mlip-lammps-run --resume OUT`` reads the run's settings (``run.json``, written by the
launcher) and the state, cuts ``log.lammps``'s thermo rows and the dump frames at and past the
restart step (a hard stop leaves steps beyond it; the resumed run prints its first step again),
and starts the bridge with ``--resume``: the deck's ``read_data`` becomes ``read_restart``,
commands that change the atoms (``velocity``, ...) and outputs (``write_data``, ...) are skipped up
to the resumed run, that run becomes ``run END upto start START stop END`` (the total step count
of the original run), dumps get ``dump_modify append yes`` and the log is appended to.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..core.errors import InputError
from ..supervision import atomic_write

__all__ = [
    "STATE_FILE",
    "PROGRESS_FILE",
    "RUN_FILE",
    "STOP_FILE",
    "RESTART_PATTERN",
    "STOP_RESTART",
    "write_json",
    "read_state",
    "check_restart",
    "cut_log",
    "cut_dump",
    "NotARun",
]

STATE_FILE = "checkpoint.json"
PROGRESS_FILE = "progress.json"
"""Beside the state file, rewritten by the bridge at most once a second: the step LAMMPS is at, the
deck's first and final steps and the timestep in fs (the launcher's progress display reads it)."""
RUN_FILE = "run.json"
STOP_FILE = "STOP"
RESTART_PATTERN = "restart.*"  # LAMMPS replaces * by the step
STOP_RESTART = "restart.stop"
MAGIC = b"LammpS RestartT"


class NotARun(InputError):
    """``--resume`` of a folder that holds no run of ``mlip-lammps-run``."""


def write_json(path: Path, data: dict) -> None:
    """Writes ``data`` to ``path`` atomically (a kill leaves the old file or the new one)."""
    atomic_write(path, json.dumps(data, indent=1))


def read_state(workdir: Path) -> tuple[dict, dict | None]:
    """The run's settings (``run.json``) and its checkpoint state (None: none written yet)."""
    workdir = Path(workdir)
    run = workdir / RUN_FILE
    if not workdir.is_dir() or not run.is_file():
        raise NotARun(
            f"{workdir} is not a run folder of mlip-lammps-run (no {RUN_FILE}): give the --out folder "
            "of a run started with --checkpoint-every"
        )
    try:
        settings = json.loads(run.read_text())
        state_path = workdir / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.exists() else None
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the run's state in {workdir}: {err}") from None
    return settings, state


def check_restart(path: Path) -> None:
    """Raises InputError unless ``path`` is (the start of) a LAMMPS binary restart file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC))
    except OSError as err:
        raise InputError(
            f"restart file {path} cannot be read ({err.strerror}): the checkpoint is lost"
        ) from None
    if head != MAGIC:
        raise InputError(
            f"restart file {path} is corrupt (not a LAMMPS restart file): remove {STATE_FILE} and start "
            "the run again, or restore the file"
        )


def _cut(path: Path, keep: int) -> int:
    """Truncates ``path`` to its first ``keep`` bytes; returns the bytes removed."""
    size = path.stat().st_size
    if keep < size:
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return size - keep


def cut_log(path: Path, step: int) -> int:
    """Cuts a LAMMPS log at its first thermo row of step ``step`` or later (and everything after
    it: the resumed run prints that step again). Returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    offset, header = 0, None
    with open(path, "rb") as fh:
        for raw in fh:
            words = raw.decode(errors="replace").split()
            if words[:1] == ["Step"]:
                header = len(words)
            elif header and len(words) == header and re.fullmatch(r"-?\d+", words[0]):
                if int(words[0]) >= step:
                    return _cut(path, offset)
            elif header and words[:2] == ["Loop", "time"]:
                header = None
            offset += len(raw)
    return 0


_XYZ_STEP = re.compile(rb"Timestep:\s*(\d+)")


def cut_dump(path: Path, step: int) -> int:
    """Cuts a text dump (``ITEM: TIMESTEP`` frames, or xyz ``Atoms. Timestep: N``) before its first
    frame of step ``step`` or later; a frame cut short by a kill goes too. Returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    offset, previous, expect_step, frame_start = 0, 0, False, 0
    with open(path, "rb") as fh:
        for raw in fh:
            if expect_step:
                expect_step = False
                if not raw.strip().isdigit() or int(raw) >= step:
                    return _cut(path, frame_start)
            if raw.startswith(b"ITEM: TIMESTEP"):
                frame_start, expect_step = offset, True
            else:
                m = _XYZ_STEP.search(raw) if raw.startswith(b"Atoms") else None
                if m and int(m[1]) >= step:
                    return _cut(path, previous)  # the atom-count line before the comment
            previous = offset
            offset += len(raw)
    return 0
