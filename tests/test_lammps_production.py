"""Production behaviour of ``mlip-lammps-run``: crashed servers restarted mid-run, checkpoints,
clean stops and resume. Real LAMMPS, real servers, real sockets; small argon cells, float64.

The reference for every comparison is one uninterrupted run of the same deck: a recovered or
resumed run must give the same potential energy at every step, with each thermo row and dump
frame exactly once. Thermo is printed with 17 digits, so the comparison sees every bit:

- a server restarted in the gather route: the bridge repeats the force call with the same
  positions in tag order and the float64 server is deterministic, so the run is bitwise the same;
- 2 ranks (either route: per-rank sums + Allreduce, against the 1-rank reference) and a resume
  from a binary restart file (LAMMPS rebuilds its atom order and bins): the same terms summed in
  another order. Summing N per-atom terms in float64 moves the total by at most N·ε·Σ|e_i| (256 × 1.1e-16 ×
  19.5 eV = 5.5e-13 eV, 2.2e-15 eV/atom), and 60 NVE steps (0.12 ps) of argon at 60 K barely
  amplify it (measured: 8.7e-16 eV/atom at most). :data:`SUM_ORDER_TOL` = 1e-14 eV/atom (1.3e-13
  relative) is 4.5x that bound; a float32 evaluation (1e-7 relative, ~1e-9 eV/atom) or a step
  taken twice (~1e-4 eV/atom) is far outside it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from refusals import assert_refused
from test_lammps import (
    BRIDGE,
    HAVE_MPI4PY,
    LJ_COMMON,
    NVE,
    _wait_for,
    argon,
    no_leftovers,  # noqa: F401 - autouse fixture
    pytestmark,  # noqa: F401 - skip without the lammps module
    thermo,
    write_data,
)

from mlip_server.lammps.mpi import leftover_shm_files, shm_files
from mlip_server.lammps.runner import LammpsRun
from mlip_server.supervision import read_events

SERVER_ARGS = ["--threads", "1", "--dtype", "float64"]
STEPS = 60
ATOMS = 256
SUM_ORDER_TOL = 1e-14
"""eV/atom: the potential energy of a run whose sums ran in another order (module docstring)."""
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed")


def _deck(folder: Path, steps=STEPS, dump_every=5) -> Path:
    """256 argon atoms, NVE, thermo every step, a dump every ``dump_every`` steps."""
    data = folder / "argon.data"
    if not data.exists():
        write_data(argon(), data, ["Ar"])
    text = LJ_COMMON.format(data=data, forces=BRIDGE, ensemble=NVE).replace("thermo 10", "thermo 1")
    text = text.replace("dump d all custom 100", f"dump d all custom {dump_every}")
    deck = folder / "in.lj"
    deck.write_text(text.replace("run 100", f"run {steps}"))
    return deck


def _steps_once(table) -> np.ndarray:
    steps = table["Step"].astype(int)
    assert len(np.unique(steps)) == len(steps), f"a thermo row repeats: {steps}"
    return steps


def _same_energies(ref, got, exact=False) -> None:
    """Every step once and the reference's potential energy: bitwise (``exact``), or per atom
    within :data:`SUM_ORDER_TOL` (the same sums in another order)."""
    steps = _steps_once(got)
    assert list(steps) == list(ref["Step"].astype(int)), (steps, ref["Step"])
    per_atom = np.abs(got["PotEng"] - ref["PotEng"]) / ATOMS
    if exact:
        differ = np.nonzero(per_atom)[0]
        assert differ.size == 0, (
            f"PotEng differs from step {steps[differ[0]]} by {per_atom.max():.1e} eV/atom"
        )
    assert per_atom.max() <= SUM_ORDER_TOL, (
        f"PotEng differs by {per_atom.max():.1e} eV/atom at step {steps[per_atom.argmax()]}"
    )


def _frames(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    return [int(lines[i + 1]) for i, line in enumerate(lines) if line.startswith("ITEM: TIMESTEP")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, lj_model):
    """The uninterrupted gather run: its thermo table and dump frames."""
    folder = tmp_path_factory.mktemp("reference")
    job = LammpsRun(_deck(folder), lj_model, ["Ar"], workdir=folder, echo=False, server_args=SERVER_ARGS)
    job.start(120)
    result = job.wait(120)
    assert result.code == 0, result.message
    return thermo(folder / "log.lammps"), _frames(folder / "traj.dump")


# --------------------------------------------------------------------------- crashed servers
def _kill_server_mid_run(job: LammpsRun, k: int, after_step: int = 5):
    relay = job._relays["lammps.out"]
    _wait_for(
        lambda: (
            any(line.split()[:1] == [str(after_step)] for line in relay.lines)
            or job.bridge.poll() is not None
        ),
        60,
        f"{after_step} MD steps",
    )
    assert job.bridge.poll() is None, relay.text
    os.killpg(job.servers[k].pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "np_, decomposition",
    [(1, "gather"), pytest.param(2, "domain", marks=needs_mpi4py)],
)
def test_killed_server_is_restarted_and_lammps_never_sees_it(
    tmp_path, lj_model, reference, np_, decomposition, capsys
):
    job = LammpsRun(
        _deck(tmp_path),
        lj_model,
        ["Ar"],
        np=np_,
        workdir=tmp_path,
        echo=False,
        server_args=SERVER_ARGS,
        decomposition=decomposition,
        servers=np_,
        max_server_restarts=2,
    )
    try:
        job.start(120)
        _kill_server_mid_run(job, np_ - 1)  # domain: rank 1's server only
        result = job.wait(120)
    finally:
        job.stop()
    assert result.code == 0, result.message + result.bridge_output[-3000:]
    _same_energies(reference[0], thermo(tmp_path / "log.lammps"), exact=decomposition == "gather")
    assert _frames(tmp_path / "traj.dump") == reference[1]
    events = read_events(tmp_path)
    kinds = [e["event"] for e in events]
    assert kinds.count("crash") == 1 and kinds.count("restart") == 1 and "recovered" in kinds, events
    assert "hang" not in kinds, events
    crash = next(e for e in events if e["event"] == "crash")
    assert crash["status"] == "killed by SIGKILL (out of memory?)"
    recovered = next(e for e in events if e["event"] == "recovered")
    assert recovered["seconds"] < 60
    # the console (the event log's lines on stdout, what a user watching the run reads), not the
    # events file: one line says which server died, how, and that it was restarted
    console = capsys.readouterr().out.splitlines()
    killed = [line for line in console if "killed by SIGKILL (out of memory?)" in line]
    assert len(killed) == 1 and killed[0].startswith("mlip-lammps-run: mlip-server"), console
    assert sum(line.startswith("mlip-lammps-run: restarted mlip-server") for line in console) == 1, console


def test_hung_server_is_killed_and_restarted_and_lammps_never_sees_it(tmp_path, lj_model, reference, capsys):
    """A server that stops answering (SIGSTOP: alive, silent) in a gather run: the bridge gives up
    on it after --call-timeout, the launcher finds it still running, kills it (hang), restarts it
    (crash of the killed process, restart) and the bridge repeats the call: the uninterrupted run."""
    job = LammpsRun(
        _deck(tmp_path),
        lj_model,
        ["Ar"],
        workdir=tmp_path,
        echo=False,
        server_args=SERVER_ARGS,
        bridge_args=["--call-timeout", "3"],
        max_server_restarts=2,
    )
    try:
        job.start(120)
        relay = job._relays["lammps.out"]
        _wait_for(lambda: any(line.split()[:1] == ["5"] for line in relay.lines), 60, "5 MD steps")
        hung = job.servers[0].pid
        os.killpg(hung, signal.SIGSTOP)
        result = job.wait(120)
    finally:
        job.stop()
    assert result.code == 0, result.message + result.bridge_output[-3000:]
    _same_energies(reference[0], thermo(tmp_path / "log.lammps"), exact=True)
    assert _frames(tmp_path / "traj.dump") == reference[1]
    events = read_events(tmp_path)
    kinds = [e["event"] for e in events]
    assert kinds.count("hang") == 1 and kinds.count("restart") == 1 and "recovered" in kinds, events
    hang = next(e for e in events if e["event"] == "hang")
    assert hang["action"] == "kill" and "still runs" in hang["message"], hang
    assert not Path(f"/proc/{hung}").exists() or open(f"/proc/{hung}/stat").read().split()[2] == "Z"
    console = capsys.readouterr().out.splitlines()
    assert sum("stopped answering" in line for line in console) == 1, console


def test_restart_budget_spent_fails_with_one_line(tmp_path, lj_model):
    import threading

    job = LammpsRun(
        _deck(tmp_path, steps=100000),
        lj_model,
        ["Ar"],
        workdir=tmp_path,
        echo=False,
        server_args=SERVER_ARGS,
        max_server_restarts=1,
    )
    results = []
    try:
        job.start(120)
        waiter = threading.Thread(target=lambda: results.append(job.wait(120)), daemon=True)
        waiter.start()
        _kill_server_mid_run(job, 0, after_step=3)
        _wait_for(lambda: "recovered" in [e["event"] for e in read_events(tmp_path)], 60, "the recovery")
        step = next(e["step"] for e in read_events(tmp_path) if e["event"] == "recovered")
        _kill_server_mid_run(job, 0, after_step=step + 3)
        t0 = time.monotonic()
        waiter.join(60)
    finally:
        job.stop()
    assert time.monotonic() - t0 < 30 and results
    result = results[0]
    assert result.code != 0
    assert "no restarts left (--max-server-restarts 1)" in result.message, result.message
    assert [e["event"] for e in read_events(tmp_path)].count("crash") == 2


# --------------------------------------------------------------------------- stops and resume
def _launcher(*args) -> list:
    return [sys.executable, "-m", "mlip_server.lammps.cli", "mlip-lammps-run", *map(str, args)]


def _start(tmp_path, lj_model, *extra, np_=1):
    cmd = _launcher(_deck(tmp_path), "--model", lj_model, "-e", "Ar", "--out", tmp_path / "run")
    cmd += ["--threads", "1", "--dtype", "float64", "--np", str(np_), *map(str, extra)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _read_until_step(proc, step: int) -> list:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        words = line.split()
        if words[:1] and words[0].isdigit() and len(words) > 5 and int(words[0]) >= step:
            return seen
    raise AssertionError("".join(seen))


def _resume(folder: Path, *extra):
    return subprocess.run(_launcher("--resume", folder, *extra), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("np_", [1, pytest.param(2, marks=needs_mpi4py)])
def test_stop_signal_then_resume_equals_an_uninterrupted_run(tmp_path, lj_model, reference, np_):
    proc = _start(tmp_path, lj_model, "--checkpoint-every", 10, np_=np_)
    try:
        seen = _read_until_step(proc, 17)
        proc.send_signal(signal.SIGTERM)
        out = "".join(seen) + proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 75, out[-3000:]
    run = tmp_path / "run"
    line = next(l for l in out.splitlines() if "continue with" in l)
    step = int(re.search(r"stopped at step (\d+) of 60", line)[1])
    assert 17 <= step < 60 and f"`mlip-lammps-run --resume {run}`" in line, line
    assert (run / "restart.stop").exists()
    done = _resume(run)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    _same_energies(reference[0], thermo(run / "log.lammps"))
    assert _frames(run / "traj.dump") == reference[1]
    kinds = [e["event"] for e in read_events(run)]
    assert kinds.count("stop") == 1 and "stopped" in kinds and "resume" in kinds and kinds[-1] == "done", (
        kinds
    )
    again = _resume(run)
    assert again.returncode == 0 and "complete" in again.stdout, again.stdout + again.stderr


@pytest.mark.parametrize("np_", [1, pytest.param(2, marks=needs_mpi4py)])
def test_hard_kill_then_resume_cuts_the_outputs_back(tmp_path, lj_model, reference, np_):
    shm_before = shm_files()
    proc = _start(tmp_path, lj_model, "--checkpoint-every", 10, np_=np_)
    try:
        _read_until_step(proc, 27)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher; its children die with it
        proc.wait(30)
    finally:
        proc.kill()
    run = tmp_path / "run"
    state = json.loads((run / "checkpoint.json").read_text())
    assert state["step"] in (20, 30) and state["restart"] == f"restart.{state['step']}", state
    time.sleep(1.0)  # the orphaned bridge and server notice their parent's death
    for path in leftover_shm_files(shm_before):  # nobody was left to remove MPICH's files
        Path(path).unlink(missing_ok=True)
    done = _resume(run)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    _same_energies(reference[0], thermo(run / "log.lammps"))
    assert _frames(run / "traj.dump") == reference[1]


def test_walltime_stop_then_resume_equals_an_uninterrupted_run(tmp_path, lj_model, reference):
    """--walltime 21 s with its 20 s margin: the run stops itself (exit 75, restart.stop written at
    the step it reached), and --resume finishes it: the uninterrupted run's energies, every thermo
    row and dump frame once."""
    proc = _start(tmp_path, lj_model, "--walltime", "00:00:21", "--checkpoint-every", 10)
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == 75, out[-3000:]
    step = int(re.search(r"stopped at step (\d+) of 60", out)[1])
    assert 0 < step < 60, out[-3000:]
    run = tmp_path / "run"
    assert (run / "restart.stop").exists()
    done = _resume(run)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    _same_energies(reference[0], thermo(run / "log.lammps"))
    assert _frames(run / "traj.dump") == reference[1]
    kinds = [e["event"] for e in read_events(run)]
    assert "stopped" in kinds and "resume" in kinds and kinds[-1] == "done", kinds


def test_bad_resume_and_walltime_are_one_line_errors(tmp_path, lj_model):
    (tmp_path / "empty").mkdir()
    for done in (_resume(tmp_path / "empty"), _resume(tmp_path / "nowhere")):
        assert_refused(done, "is not a run folder")
    bad = subprocess.run(
        _launcher(_deck(tmp_path), "--model", lj_model, "-e", "Ar", "--walltime", "1:2:3:4"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_refused(bad, "--walltime '1:2:3:4'")
    # a run stopped by its walltime, then its restart file damaged
    proc = _start(tmp_path, lj_model, "--walltime", "00:00:21")
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == 75 and "stopped at step" in out, out[-3000:]
    run = tmp_path / "run"
    (run / "restart.stop").write_bytes(b"garbage")
    done = _resume(run)
    assert_refused(done, "is corrupt")
