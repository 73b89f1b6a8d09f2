"""An i-PI run folder as one run: its record, its checkpoints and its outputs cut to a step.

A run folder made by ``mlip-run`` holds ``run.json`` (the experiment and the options it was
started with), i-PI's input, its outputs (``sim.out``, ``sim.pos_0.extxyz``, extras files, ...)
and its checkpoints: ``sim.restart`` (every ``checkpoint`` steps), ``RESTART`` (written at a
clean stop and at the end) and ``resume.xml`` (the checkpoint a resumed run started from).

i-PI's step convention, measured on i-PI 3.3.1: a checkpoint whose ``<step>`` is C was written
after the outputs of step C; restarting from it, i-PI's first output rows are those of step C+1,
appended to the existing files. After a hard stop (every process SIGKILLed) the outputs hold rows
past C: :func:`trim_outputs` cuts them, so that each step appears exactly once across any number
of stops and resumes.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError
from ..supervision import atomic_write

__all__ = [
    "RUN_FILE",
    "RESUME_FILE",
    "Checkpoint",
    "read_run",
    "write_run",
    "checkpoints",
    "latest_checkpoint",
    "trim_outputs",
    "last_step",
    "output_prefix",
    "output_files",
]

RUN_FILE = "run.json"
"""The run's record: experiment name and the options it was started with."""
RESUME_FILE = "resume.xml"
"""The checkpoint a resumed run starts from (with fresh socket names)."""
IPI_DEFAULT_TOTAL_STEPS = 1000
"""i-PI's default ``total_steps`` (a checkpoint leaves the tag out when the run has it)."""
_STEP = re.compile(r"<step>\s*(\d+)\s*</step>")
_TOTAL = re.compile(r"<total_steps>\s*(\d+)\s*</total_steps>")
_RECORD_STEP = re.compile(r"Step:\s*(\d+)")


@dataclass
class Checkpoint:
    """An i-PI checkpoint file: the step whose outputs it follows (-1: written before step 0's,
    i-PI then starts afresh), and the run's total steps."""

    path: Path
    step: int
    total_steps: int
    text: str


def write_run(folder: Path, record: dict) -> None:
    """Writes ``run.json`` (atomically: a kill mid-write leaves the old one)."""
    atomic_write(Path(folder) / RUN_FILE, json.dumps(record, indent=1))


def read_run(folder: str | Path, experiment: str | None = None) -> dict:
    """The record of run ``folder``; refuses a folder that is not an ``mlip-run`` run, or is a run
    of another experiment than ``experiment``.

    Raises
    ------
    InputError
        No such folder, no ``run.json`` (not a run, or a run from before in-place resume), or a
        different experiment.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--resume {folder}: no such folder (give the run folder mlip-run printed)")
    path = folder / RUN_FILE
    if not path.exists():
        raise InputError(
            f"--resume {folder}: not an mlip-run run folder (no {RUN_FILE}): give the folder mlip-run printed"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise InputError(f"--resume {folder}: {RUN_FILE} is not valid JSON (the folder is damaged)") from None
    if experiment is not None and record.get("experiment") != experiment:
        raise InputError(
            f"--resume {folder}: a run of {record.get('experiment')!r}, not {experiment!r}: "
            "leave out the experiment name or give the matching one"
        )
    return record


def _read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint in ``path``, or None when it is missing, cut short or not i-PI XML."""
    try:
        text = path.read_text()
        ET.fromstring(text)
    except (OSError, ET.ParseError, UnicodeDecodeError):
        return None
    step, total = _STEP.search(text), _TOTAL.search(text)
    if "<simulation" not in text:
        return None
    # i-PI writes only values that differ from its defaults: it leaves <step> out at step 0 (and
    # then restarts as a fresh run, step 0 written again) and <total_steps> out when it is 1000
    total_steps = int(total.group(1)) if total else IPI_DEFAULT_TOTAL_STEPS
    return Checkpoint(path, int(step.group(1)) if step else -1, total_steps, text)


def checkpoints(folder: Path) -> tuple[list[Checkpoint], list[Path]]:
    """(readable checkpoints, unreadable ones) of run ``folder``: ``RESTART``, ``resume.xml`` and
    i-PI's ``*.restart`` files (never its ``#name#N#`` backups)."""
    folder = Path(folder)
    names = ["RESTART", RESUME_FILE] + sorted(p.name for p in folder.glob("*.restart"))
    good, bad = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            continue
        cp = _read_checkpoint(path)
        (good if cp is not None else bad).append(cp if cp is not None else path)
    return good, bad


def latest_checkpoint(folder: Path) -> tuple[Checkpoint, list[Path]]:
    """The checkpoint of the latest step in ``folder``, and the unreadable ones passed over.

    Raises
    ------
    InputError
        No readable checkpoint: the run stopped before its first one, or they are corrupt.
    """
    good, bad = checkpoints(folder)
    if not good:
        if bad:
            raise InputError(
                f"--resume {folder}: checkpoint {bad[0].name} is corrupt (not i-PI XML) and no other "
                "is readable: the run cannot be continued; start it again"
            )
        raise InputError(
            f"--resume {folder}: no checkpoint (RESTART, *.restart): the run stopped before its first "
            "one; start it again"
        )
    return max(good, key=lambda c: c.step), bad


def output_prefix(xml_text: str) -> str:
    """The ``<output prefix=...>`` of an i-PI input or checkpoint (i-PI's default ``i-pi``)."""
    m = re.search(r"<output[^>]*prefix=['\"]([^'\"]+)['\"]", xml_text)
    return m.group(1) if m else "i-pi"


def output_files(folder: Path, prefix: str) -> list[Path]:
    """i-PI's output files of ``folder`` (``PREFIX.*``), without checkpoints and i-PI's backups."""
    return sorted(
        p
        for p in Path(folder).glob(f"{prefix}.*")
        if p.is_file() and not p.name.endswith(".restart") and not p.name.startswith("#")
    )


def trim_outputs(folder: Path, step: int, prefix: str = "sim") -> dict[str, int]:
    """Cuts every i-PI output of ``folder`` after step ``step``: properties rows, trajectory
    frames and extras records whose step exceeds it. Returns file name → records removed (only
    files that had some). Each file is rewritten atomically.

    Raises
    ------
    InputError
        A properties file without a ``step`` column (rows could not be placed).
    """
    removed = {}
    for path in output_files(folder, prefix):
        lines = path.read_text().splitlines(keepends=True)
        if step < 0:  # i-PI restarts such a checkpoint as a fresh run: it writes every file anew
            path.unlink()
            removed[path.name] = sum(1 for line in lines if line.strip() and not line.startswith("#"))
            continue
        if any(line.startswith("# column") for line in lines[:5]):
            kept, cut = _trim_properties(path, lines, step)
        else:
            kept, cut = _trim_records(lines, step)
        if cut:
            atomic_write(path, "".join(kept))
            removed[path.name] = cut
    return removed


def _trim_properties(path: Path, lines: list[str], step: int) -> tuple[list[str], int]:
    column = None
    for line in lines:
        m = re.match(r"#\s*column\s+(\d+)\s*-->\s*step\b", line)
        if m:
            column = int(m.group(1)) - 1
            break
    if column is None:
        raise InputError(
            f"{path}: a properties file without a 'step' column: rows past a restart cannot be cut"
        )
    kept, cut = [], 0
    for line in lines:
        if line.startswith("#") or not line.strip():
            kept.append(line)
            continue
        try:
            row_step = int(float(line.split()[column]))
        except (IndexError, ValueError):
            cut += 1  # a row cut short by the stop
            continue
        if row_step <= step:
            kept.append(line)
        else:
            cut += 1
    return kept, cut


def _trim_records(lines: list[str], step: int) -> tuple[list[str], int]:
    """Trajectories (xyz, extxyz: an atom-count line, then a comment with ``Step:``) and extras
    (a ``#...# Step:`` header line, then values): cut at the first record past ``step``."""
    marks = [k for k, line in enumerate(lines) if _RECORD_STEP.search(line)]
    if not marks:
        return lines, 0
    counted = marks[0] >= 1 and lines[marks[0] - 1].strip().isdigit()
    starts = [k - 1 if counted else k for k in marks]
    for n, (start, mark) in enumerate(zip(starts, marks)):
        if int(_RECORD_STEP.search(lines[mark]).group(1)) > step:
            return lines[:start], len(starts) - n
    # the last record may be cut short: a frame needs its count line + comment + that many atoms
    if counted:
        natoms = int(lines[starts[-1]].strip())
        if len(lines) - starts[-1] < natoms + 2:
            return lines[: starts[-1]], 1
    return lines, 0


def last_step(folder: Path, prefix: str = "sim") -> int | None:
    """The step of the last row of ``folder/PREFIX.out`` (read from its end: cheap on long runs);
    None before the first row."""
    path = Path(folder) / f"{prefix}.out"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            tail = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        if line.strip() and not line.startswith("#"):
            try:
                return int(float(line.split()[0]))
            except ValueError:
                continue
    return None
