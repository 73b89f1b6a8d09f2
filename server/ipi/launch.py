"""A launch of an i-PI run: a fresh run folder rendered from a shipped experiment
(:func:`prepare_fresh`), or an existing one continued in place from its latest readable checkpoint
(:func:`prepare_resume`, :func:`continue_in_place`, also used when a killed i-PI is restarted); the
model files, the server's arguments and the environment of the processes. Used by
:mod:`mlip_server.ipi.launcher`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import processes
from ..core.errors import InputError, MLIPError
from ..paths import runs_dir, shipped_model
from ..supervision import (
    EventLog,
    atomic_write,
)
from .experiments import RunOptions, check_options, load_experiment, render, render_resume
from .run_folder import (
    RESUME_FILE,
    RUN_FILE,
    latest_checkpoint,
    output_prefix,
    read_run,
    trim_outputs,
    write_run,
)

__all__ = [
    "PER_LAUNCH",
    "RunResult",
    "Launch",
    "record_options",
    "prepare_fresh",
    "check_direct_virial",
    "prepare_resume",
    "continue_in_place",
    "server_args_of",
    "model_files",
    "run_env",
]


PER_LAUNCH = ("device", "dtype", "threads", "host", "port")
"""Options a resumed run may change (where it runs, not what it computes): a new job of a
two-node chain has another i-PI host and port."""


@dataclass
class RunResult:
    """Outcome of one run: exit status (0 done, 75 stopped cleanly, 1 failed, 130 interrupted),
    folder, message."""

    code: int
    out: Path
    message: str = ""
    wall_s: float = 0.0


@dataclass
class Launch:
    """One launch of a run: the folder, the rendered input and what the server needs."""

    name: str
    folder: Path
    meta: dict
    rendered: object
    model: Path | list  # a list of paths: a committee
    server_args: list
    total_steps: int
    run_id: str = ""
    """The socket names' prefix of this launch (a restarted i-PI opens the same sockets)."""


def record_options(opts: RunOptions) -> dict:
    """The options a resumed run takes over from its start (the per-launch ones excluded)."""
    skip = {
        "resume",
        "walltime",
        "walltime_margin",
        "progress",
        "out",
        "max_server_restarts",
        "max_ipi_restarts",
        "stall_timeout",
    }
    return {k: v for k, v in asdict(opts).items() if k not in skip}


def prepare_fresh(name: str, opts: RunOptions, run_id: str, out) -> Launch:
    meta = load_experiment(name)[0]  # refuses an unknown experiment before any output
    opts.device = opts.device or "cpu"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(opts.out or runs_dir() / f"{name}-{stamp}-{run_id.rsplit('-', 1)[-1]}")
    model = model_files(opts, check=opts.side == "both")
    if folder.exists() and any(folder.iterdir()):
        hint = (
            f"continue it with mlip-run --resume {folder}"
            if (folder / RUN_FILE).exists()
            else "choose another"
        )
        raise InputError(f"run folder {folder} exists and is not empty: {hint}")
    check_options(name, meta, load_experiment(name)[1], opts)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, list):
        opts.committee = [str(m) for m in model]
    else:
        opts.model = str(model)
    try:
        rendered = render(name, opts, folder, run_id)
        if "--require-virial" in rendered.server_args:
            check_direct_virial(name, model, opts)
    except MLIPError:
        if made:
            shutil.rmtree(folder, ignore_errors=True)  # nothing of a refused run stays behind
        raise
    (folder / rendered.xml_name).write_text(rendered.xml)
    (folder / "endpoints.json").write_text(json.dumps(rendered.endpoints))
    total = int(re.search(r"<total_steps>\s*(\d+)", rendered.xml).group(1))
    write_run(folder, {"experiment": name, "total_steps": total, "options": record_options(opts)})
    print(f"mlip-run: {name} in {folder}", file=out, flush=True)
    return Launch(name, folder, meta, rendered, model, server_args_of(rendered, opts), total, run_id)


def check_direct_virial(name: str, model, opts: RunOptions) -> None:
    """Refuses, before anything starts, a run that needs the pressure on direct forces of a model
    without a direct virial (the server would refuse it too, after i-PI started)."""
    from ..loading import load_model

    models = model if isinstance(model, list) else [model]
    lacking = [m for m in models if not load_model(str(m), "cpu", opts.dtype).direct_virial]
    if lacking:
        raise InputError(
            f"{name} needs the pressure but {lacking[0]} has no direct virial: use conservative "
            "forces (drop --forces direct)"
        )


def prepare_resume(name: str | None, opts: RunOptions, run_id: str, out) -> Launch | RunResult:
    """Continues run ``opts.resume`` in place: the latest readable checkpoint, the outputs cut
    to its step, fresh socket names. A finished run gives a RunResult with code 0."""
    folder = Path(opts.resume)
    record = read_run(folder, name)
    name = record["experiment"]
    meta = load_experiment(name)[0]
    stored = record["options"]
    defaults = RunOptions()
    for key, value in stored.items():  # the physics of the run is the run's own
        given = getattr(opts, key)
        if key == "model" and given is not None:
            given = str(Path(given).resolve())
        if key not in (*PER_LAUNCH, "steps") and given not in (
            getattr(defaults, key),
            value,
        ):
            flag = "--" + key.replace("_", "-")
            raise InputError(
                f"--resume continues {folder} with its own options: leave out {flag} "
                f"(the run has {value!r}); only --steps, --servers, "
                f"{', '.join('--' + k for k in PER_LAUNCH)} may change"
            )
        if key in PER_LAUNCH:  # where this launch runs: given ones win, else the run's
            if given == getattr(defaults, key):
                setattr(opts, key, value)
        elif key != "steps":
            setattr(opts, key, value)
    opts.device = opts.device or "cpu"
    checkpoint, unreadable = latest_checkpoint(folder)
    total = opts.steps if opts.steps is not None else checkpoint.total_steps
    if checkpoint.step >= total:
        print(f"mlip-run: {folder} is finished (step {checkpoint.step} of {total}): nothing to do", file=out)
        return RunResult(0, folder, "finished", 0.0)
    model = [Path(m) for m in opts.committee] if opts.committee else Path(opts.model)
    missing = [m for m in (model if isinstance(model, list) else [model]) if not m.is_file()]
    if opts.side == "both" and missing:
        raise InputError(
            f"model {missing[0]} of run {folder} not found: restore it (the run needs the same model)"
        )
    events = EventLog(folder, out)
    for path in unreadable:
        events.record(
            "corrupt-checkpoint",
            f"{path.name} is unreadable (cut short by a kill?): not used",
            file=path.name,
        )
    rendered, cut = continue_in_place(name, opts, folder, run_id, checkpoint)
    if cut:
        events.record(
            "trim",
            f"cut the rows past step {checkpoint.step} (written after the last checkpoint): "
            + ", ".join(f"{n} {f}" for f, n in cut.items()),
            step=checkpoint.step,
            removed=cut,
        )
    events.record(
        "resume",
        f"resuming {name} in {folder} from step {checkpoint.step} ({checkpoint.path.name}) to step {total}",
        step=checkpoint.step,
        action="resume",
    )
    record["total_steps"] = total
    write_run(folder, record)
    return Launch(name, folder, meta, rendered, model, server_args_of(rendered, opts), total, run_id)


def continue_in_place(name: str, opts: RunOptions, folder: Path, run_id: str, checkpoint) -> tuple:
    """i-PI's continuation of run ``folder`` from ``checkpoint``: the sockets a killed i-PI left
    removed, the output rows past the checkpoint cut (every step once), ``resume.xml`` written
    (socket names of ``run_id``), the older checkpoints and i-PI's backups removed. Returns the
    rendered input and the rows cut per file."""
    for socket in re.findall(
        r"<ffsocket[^>]*mode=['\"](?:unix|shm)['\"][^>]*>.*?<address>\s*([^<\s]+)", checkpoint.text, re.S
    ):
        path = Path(processes.unix_socket_path(socket))  # a hard stop left the last launch's sockets
        path.unlink(missing_ok=True)
    cut = trim_outputs(folder, checkpoint.step, output_prefix(checkpoint.text))
    rendered = render_resume(name, opts, folder, run_id, checkpoint.text)
    atomic_write(folder / RESUME_FILE, rendered.xml)
    for stale in ("RESTART", *(p.name for p in folder.glob("*.restart"))):
        if stale != RESUME_FILE and (folder / stale).exists():
            (folder / stale).unlink()  # resume.xml now holds the latest state
    for backup in folder.glob("#*#"):
        backup.unlink()
    return rendered, cut


def server_args_of(rendered, opts: RunOptions) -> list:
    return rendered.server_args + ["--device", opts.device] + (["--dtype", opts.dtype] if opts.dtype else [])


def model_files(opts: RunOptions, check: bool = True) -> Path | list:
    """The model file (resolved), or the committee's files (``opts.committee``); with ``check``
    refuses a missing file in one line."""
    if opts.committee is not None:
        if opts.model is not None:
            raise InputError("give --model or --committee, not both")
        if len(opts.committee) < 2:
            raise InputError("--committee needs at least two model files: --committee A.pt B.pt [...]")
        if opts.transport == "ffdirect":
            raise InputError("--committee needs a server (--transport unix, shm or inet), not ffdirect")
        models = [Path(m).resolve() for m in opts.committee]
    else:
        models = [Path(opts.model or shipped_model()).resolve()]
    for m in models if check else []:
        if not m.is_file():
            flag = "--committee" if opts.committee is not None else "--model"
            raise InputError(f"model {m} not found: pass {flag} PATH (a TorchScript or metatomic model file)")
    return models if opts.committee is not None else models[0]


def run_env(opts: RunOptions) -> dict | None:
    if opts.threads is None:
        return None
    return dict(os.environ, OMP_NUM_THREADS=str(opts.threads))
