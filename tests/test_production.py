"""Production faults of i-PI runs (``mlip-run``), each on real i-PI + mlip-server processes:
a server SIGKILLed or hung mid-run is restarted and the run finishes with the uninterrupted
trajectory; i-PI itself SIGKILLed (the OOM killer) is restarted from its latest checkpoint in
place (NVT and 4-bead PIMD); SIGTERM, the walltime and SIGKILL of everything stop a run that
``--resume`` then finishes in the same folder with every step exactly once; bad input gets one
line and exit 2.

The reference for "the uninterrupted trajectory" is one run of the same options (float64, CPU,
one thread, same seed), compared in two ways that follow from the mechanism:

- the server restarted, i-PI not: i-PI re-sends the lost request and a float64 evaluation of the
  same positions is deterministic, so every column of ``sim.out`` (17 digits) is bitwise the same;
- i-PI restarted from a checkpoint (``--resume``, i-PI killed): the checkpoint holds positions,
  momenta, cell, thermostat energy with 17 significant digits (``floatformat='%.16e'``: every
  float64 reads back exactly) and the random generator's integer state, yet the restarted i-PI
  rebuilds its derived state in another order: measured, a restart is often bitwise, else the
  last bits of the kinetic energy differ a few steps after it. MD amplifies such a ~1e-16 seed:
  measured on this system, 8e-15 relative in the potential 350 steps later and 1.6e-12 1070 steps
  later (one e-fold per ~110 steps), so at most ~1e-16 x e^11 ~ 6e-12 relative within a 1200-step
  run. :data:`RESTART_TOL` (1e-10 of the largest |potential|, 6e-10 eV/atom here) allows 15x
  that; a checkpoint with 12 digits instead of 17 (a 1e-12 seed) already ends 7e-9 apart, one of
  i-PI's default 9 digits 4e-6, and a lost or repeated step is ~1e-3.
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

from mlip_server.ipi.run_folder import trim_outputs
from mlip_server.supervision import EXIT_STOPPED, Deadline, describe_exit, parse_walltime

RUN = [sys.executable, "-m", "mlip_server.ipi.launcher"]
STEPS = 1200
SHORT = 400
"""Steps of the runs compared with the first SHORT + 1 rows of the reference (the total steps do
not enter the dynamics: a shorter run is the reference's beginning, bitwise)."""
ATOMS = 24  # 8 waters
RESTART_TOL = 1e-10
"""Relative difference in the potential energy allowed after i-PI restarted from a checkpoint
(module docstring: a last-bit seed amplified over <= 1200 steps)."""


def _options(model, steps=STEPS):
    return [
        "water-nvt",
        "--model",
        str(model),
        "--molecules",
        "8",
        "--steps",
        str(steps),
        "--stride",
        "1",
        "--set",
        "checkpoint=50",
        "--dtype",
        "float64",
        "--progress",
        "0",
    ]


def _start(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen(RUN + args, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def _rows(run: Path) -> np.ndarray:
    return np.loadtxt(run / "sim.out", ndmin=2)


def _wait_for_step(run: Path, step: int, proc, timeout=120.0) -> None:
    from mlip_server.ipi.run_folder import last_step

    deadline = time.monotonic() + timeout
    while (last_step(run) or -1) < step:
        assert proc.poll() is None, f"the launcher exited ({proc.returncode}) before step {step}"
        assert time.monotonic() < deadline, f"no step {step} in {run} after {timeout} s"
        time.sleep(0.05)


def _children(proc) -> dict:
    """name → pid of the launcher's i-PI and server (the latest of each)."""
    out = subprocess.run(["pgrep", "-a", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        pid, cmd = line.split(" ", 1)
        found["ipi" if "ipi_main" in cmd else "server"] = int(pid)
    return found


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _each_step_once(run: Path, steps=STEPS) -> np.ndarray:
    data = _rows(run)
    assert data[:, 0].tolist() == list(range(steps + 1)), "sim.out must hold every step once, in order"
    frames = [line for line in (run / "sim.pos_0.extxyz").read_text().splitlines() if "Step:" in line]
    assert [int(f.split("Step:")[1].split()[0]) for f in frames] == list(range(steps + 1))
    return data


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy_model):
    """The uninterrupted run: its ``sim.out`` rows (step, time, conserved, T, kinetic, potential
    eV, pressure)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(RUN + _options(toy_model) + ["--out", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return _each_step_once(run)


def _same_trajectory(data, reference, restarted: bool, atoms=ATOMS, column=5):
    """``data`` is the uninterrupted run ``reference``: bitwise when i-PI ran through (only a server
    was restarted), else the potential energy per atom within :data:`RESTART_TOL` of its size."""
    assert data.shape == reference.shape, (data.shape, reference.shape)
    if not restarted:
        differ = np.nonzero((data != reference).any(axis=1))[0]
        assert differ.size == 0, (
            f"sim.out differs from the uninterrupted run from step {data[differ[0], 0]:.0f}"
        )
        return
    per_atom = np.abs(data[:, column] - reference[:, column]) / atoms  # eV/atom
    allowed = RESTART_TOL * np.abs(reference[:, column]).max() / atoms
    assert per_atom.max() <= allowed, (
        f"potential energy differs from the uninterrupted run by {per_atom.max():.2e} eV/atom at step "
        f"{data[per_atom.argmax(), 0]:.0f} (allowed {allowed:.1e} eV/atom after a restart)"
    )


def test_sigkilled_server_is_restarted_and_the_trajectory_is_unchanged(tmp_path, toy_model, reference):
    run = tmp_path / "run"
    proc = _start(_options(toy_model) + ["--out", str(run)], tmp_path / "launcher.log")
    _wait_for_step(run, 300, proc)
    os.kill(_children(proc)["server"], signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, (tmp_path / "launcher.log").read_text()
    _same_trajectory(_each_step_once(run), reference, restarted=False)
    crash = [e for e in _events(run) if e["event"] == "crash"]
    assert len(crash) == 1 and crash[0]["status"] == "killed by SIGKILL (out of memory?)"
    assert crash[0]["action"] == "restart"
    log = (tmp_path / "launcher.log").read_text()
    assert log.count("killed by SIGKILL (out of memory?)") == 1 and "done" in log


def test_hung_server_is_detected_and_restarted(tmp_path, toy_model, reference):
    run = tmp_path / "run"
    proc = _start(
        _options(toy_model) + ["--out", str(run), "--stall-timeout", "3"], tmp_path / "launcher.log"
    )
    _wait_for_step(run, 300, proc)
    hung = _children(proc)["server"]
    os.kill(hung, signal.SIGSTOP)
    assert proc.wait(timeout=180) == 0, (tmp_path / "launcher.log").read_text()
    _same_trajectory(_each_step_once(run), reference, restarted=False)
    hangs = [e for e in _events(run) if e["event"] == "hang"]
    assert len(hangs) == 1 and hangs[0]["action"] == "restart" and "hung" in hangs[0]["message"]
    assert not Path(f"/proc/{hung}").exists() or open(f"/proc/{hung}/stat").read().split()[2] == "Z"
    assert "<timeout>3</timeout>" in (run / "input.xml").read_text()  # i-PI drops it too


def test_no_restarts_left_fails_once_and_stays_resumable(tmp_path, toy_model, reference):
    run = tmp_path / "run"
    log = tmp_path / "launcher.log"
    proc = _start(_options(toy_model, steps=SHORT) + ["--out", str(run), "--max-server-restarts", "0"], log)
    _wait_for_step(run, 100, proc)
    os.kill(_children(proc)["server"], signal.SIGKILL)
    assert proc.wait(timeout=120) == 1
    text = log.read_text()
    assert text.count("killed by SIGKILL (out of memory?)") == 2  # the event, then the verdict
    assert text.count("failed:") == 1 and f"mlip-run --resume {run}" in text
    assert (run / "RESTART").exists()  # i-PI was stopped cleanly: nothing is lost
    done = subprocess.run(RUN + ["--resume", str(run), "--progress", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(RESTART)" in done.stdout and "trim" not in [e["event"] for e in _events(run)]
    _same_trajectory(_each_step_once(run, SHORT), reference[: SHORT + 1], restarted=True)


def _ipi_crashes(run: Path) -> list[dict]:
    return [e for e in _events(run) if e["event"] == "crash" and e["process"] == "i-PI"]


@pytest.mark.parametrize("transport", ["unix", "ffdirect"])
def test_sigkilled_ipi_is_restarted_from_its_checkpoint_in_place(tmp_path, toy_model, reference, transport):
    """i-PI SIGKILLed mid-run (the OOM killer's pick): restarted from sim.restart, the rows past it
    cut, the server started again (unix; ffdirect: the model is in i-PI's process, restarted with
    it); the run finishes by itself with every step once."""
    run = tmp_path / "run"
    log = tmp_path / "launcher.log"
    transport_args = ["--transport", transport] if transport != "unix" else []
    proc = _start(_options(toy_model, steps=SHORT) + transport_args + ["--out", str(run)], log)
    _wait_for_step(run, 220, proc)
    os.kill(_children(proc)["ipi"], signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, log.read_text()
    _same_trajectory(_each_step_once(run, SHORT), reference[: SHORT + 1], restarted=True)
    crashes = _ipi_crashes(run)
    assert len(crashes) == 1 and crashes[0]["status"] == "killed by SIGKILL (out of memory?)", crashes
    assert crashes[0]["action"] == "restart" and "from its checkpoint of step" in crashes[0]["message"]
    assert [e["event"] for e in _events(run)].count("crash") == 1  # the server's lost link is no crash
    text = log.read_text()
    assert text.count("killed by SIGKILL") == 1 and "(1 of 2)" in text and "done" in text
    assert (run / "ipi.restart-1.log").exists() and not list(run.glob("#*"))


def test_ipi_restart_budget_spent_fails_once_and_resumes(tmp_path, toy_model, reference):
    """--max-ipi-restarts 0: i-PI SIGKILLed ends the run (exit 1) with one closing line that says
    the budget is spent; --resume then finishes it with every step once."""
    run = tmp_path / "run"
    log = tmp_path / "launcher.log"
    proc = _start(_options(toy_model, steps=SHORT) + ["--out", str(run), "--max-ipi-restarts", "0"], log)
    _wait_for_step(run, 220, proc)
    os.kill(_children(proc)["ipi"], signal.SIGKILL)
    assert proc.wait(timeout=120) == 1, log.read_text()
    text = log.read_text()
    closing = [line for line in text.splitlines() if "failed:" in line]
    assert len(closing) == 1 and "no restarts left (--max-ipi-restarts 0)" in closing[0], text
    assert f"mlip-run --resume {run}" in closing[0] and text.count("killed by SIGKILL") == 2
    assert [e["action"] for e in _ipi_crashes(run)] == ["give up"]
    done = subprocess.run(RUN + ["--resume", str(run), "--progress", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    _same_trajectory(_each_step_once(run, SHORT), reference[: SHORT + 1], restarted=True)


PIMD_STEPS = 200
PRINTED = 1e-8
"""Å: one unit in the last digit of the positions i-PI's ``ase`` trajectories print (8 decimals):
two positions within the restart tolerance can round to neighbouring printed values."""


def _pimd_options(model):
    args = ["water-pimd", "--model", str(model), "--beads", "4", "--molecules", "8"]
    return (
        args + ["--steps", str(PIMD_STEPS), "--stride", "1", "--set", "checkpoint=50"] + _options(model)[-4:]
    )


def _trajectories(run: Path) -> dict:
    """File name → (steps, positions [frames, atoms, 3] Å) of every trajectory of ``run``."""
    found = {}
    for path in sorted(run.glob("sim.*.extxyz")):
        lines = path.read_text().splitlines()
        steps, frames, k = [], [], 0
        while k < len(lines):
            n = int(lines[k])
            steps.append(int(lines[k + 1].split("Step:")[1].split()[0]))
            frames.append([[float(v) for v in line.split()[1:4]] for line in lines[k + 2 : k + 2 + n]])
            k += n + 2
        found[path.name] = (steps, np.array(frames))
    return found


@pytest.fixture(scope="module")
def pimd_reference(tmp_path_factory, toy_model):
    """The uninterrupted 4-bead PIMD run: its sim.out rows and trajectories (4 beads + centroid)."""
    run = tmp_path_factory.mktemp("pimd-reference") / "run"
    done = subprocess.run(
        RUN + _pimd_options(toy_model) + ["--out", str(run)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    trajectories = _trajectories(run)
    assert sorted(trajectories) == [f"sim.pos_{k}.extxyz" for k in range(4)] + ["sim.xc.extxyz"]
    return _rows(run), trajectories


def _same_pimd_run(run: Path, reference) -> None:
    """Every step once in sim.out and in every bead's (and the centroid's) trajectory, the
    uninterrupted run's potential energy and positions (to the printed digit)."""
    rows, trajectories = reference
    data = _rows(run)
    assert data[:, 0].tolist() == list(range(PIMD_STEPS + 1)), "sim.out must hold every step once, in order"
    _same_trajectory(data, rows, restarted=True)
    got = _trajectories(run)
    assert sorted(got) == sorted(trajectories)
    for name, (steps, positions) in got.items():
        assert steps == list(range(PIMD_STEPS + 1)), f"{name} must hold every step once, in order"
        moved = np.abs(positions - trajectories[name][1]).max()
        assert moved <= PRINTED * (1 + 1e-6), f"{name}: positions differ by {moved:.1e} Å"


def test_sigkilled_ipi_of_a_pimd_run_is_restarted_in_place(tmp_path, toy_model, pimd_reference):
    run = tmp_path / "run"
    log = tmp_path / "launcher.log"
    proc = _start(_pimd_options(toy_model) + ["--out", str(run)], log)
    _wait_for_step(run, 120, proc)
    os.kill(_children(proc)["ipi"], signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, log.read_text()
    _same_pimd_run(run, pimd_reference)
    crashes = _ipi_crashes(run)
    assert len(crashes) == 1 and crashes[0]["action"] == "restart", crashes
    assert "of step 100 (sim.restart)" in crashes[0]["message"]  # checkpoint=50, killed after 120


def test_pimd_run_stopped_and_resumed_has_every_bead_step_once(tmp_path, toy_model, pimd_reference):
    """A 4-bead run stopped twice: SIGTERM to the launcher (exit 75, i-PI's RESTART), --resume, then
    every process SIGKILLed (a lost node: every bead's file and the centroid's hold rows past
    sim.restart), --resume to the end: each trajectory and sim.out hold every step once and the
    uninterrupted run."""
    run = tmp_path / "run"
    log = tmp_path / "launcher.log"
    proc = _start(_pimd_options(toy_model) + ["--out", str(run)], log)
    _wait_for_step(run, 60, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_STOPPED, log.read_text()
    stopped = int(_rows(run)[-1, 0])
    checkpoint = (stopped // 50 + 1) * 50  # the resumed run's first sim.restart (checkpoint=50)
    assert checkpoint < PIMD_STEPS, f"the stop came too late (step {stopped}) to stop the run again"
    proc = _start(["--resume", str(run), "--progress", "0"], log)
    _wait_for_step(run, checkpoint + 15, proc)
    children = _children(proc)
    for pid in (children["ipi"], children["server"], proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert f"from step {stopped} (RESTART)" in log.read_text()
    done = subprocess.run(RUN + ["--resume", str(run), "--progress", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    _same_pimd_run(run, pimd_reference)
    trim = next(e for e in _events(run) if e["event"] == "trim")
    assert trim["step"] == checkpoint and sorted(trim["removed"]) == sorted(
        [*pimd_reference[1], "sim.out"]
    ), trim


def test_stops_and_resumes_give_every_step_once_and_the_same_trajectory(tmp_path, toy_model, reference):
    """Three stops of one run, then a resume to the end: the walltime, SIGTERM to the launcher,
    and SIGKILL of every process (a lost node: rows past the last checkpoint are cut)."""
    run = tmp_path / "run"
    log = tmp_path / "launcher.log"
    # 1. walltime: 25 s minus a 20 s margin
    proc = _start(
        _options(toy_model) + ["--out", str(run), "--walltime", "00:00:25", "--walltime-margin", "20"], log
    )
    assert proc.wait(timeout=120) == EXIT_STOPPED, log.read_text()
    assert f"continue with `mlip-run --resume {run}`" in log.read_text()
    stop1 = int(_rows(run)[-1, 0])
    assert 0 < stop1 < STEPS
    # 2. SIGTERM to the launcher (SLURM at the time limit)
    proc = _start(["--resume", str(run), "--progress", "0"], log)
    _wait_for_step(run, stop1 + 100, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_STOPPED
    stop2 = int(_rows(run)[-1, 0])
    # 3. everything SIGKILLed at once (node lost): no RESTART written, rows past sim.restart remain
    proc = _start(["--resume", str(run), "--progress", "0"], log)
    _wait_for_step(run, stop2 + 120, proc)
    children = _children(proc)
    for pid in (children["ipi"], children["server"], proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert _rows(run)[-1, 0] > stop2 + 100
    # 4. resume to the end (it removes the socket the killed i-PI left behind)
    import re

    killed = re.search(r"<address>\s*([^<\s]+)", (run / "resume.xml").read_text()).group(1)
    assert Path(f"/tmp/ipi_{killed}").exists()
    done = subprocess.run(RUN + ["--resume", str(run), "--progress", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    _same_trajectory(_each_step_once(run), reference, restarted=True)
    assert not Path(f"/tmp/ipi_{killed}").exists()
    kinds = [e["event"] for e in _events(run)]
    assert kinds.count("stopped") == 2 and kinds.count("resume") == 3 and "trim" in kinds
    assert sorted(p.name for p in run.glob("sim.*")) == ["sim.out", "sim.pos_0.extxyz", "sim.restart"]
    assert not list(run.glob("#*"))
    again = subprocess.run(RUN + ["--resume", str(run)], capture_output=True, text=True)
    assert again.returncode == 0 and "is finished" in again.stdout


def _mlip_run(args) -> subprocess.CompletedProcess:
    return subprocess.run(RUN + args, capture_output=True, text=True, timeout=120)


def test_bad_resume_and_walltime_input(tmp_path, toy_model):
    def refused(args, words):
        assert_refused(_mlip_run(args), words)

    refused(["--resume", str(tmp_path)], "not an mlip-run run folder")
    refused(["--resume", str(tmp_path / "nothing")], "no such folder")
    run = tmp_path / "run"
    short = _options(toy_model, steps=4)
    assert _mlip_run(short + ["--out", str(run)]).returncode == 0
    refused(["water-pimd", "--resume", str(run)], "a run of 'water-nvt', not 'water-pimd'")
    for name in ("RESTART", "sim.restart"):
        (run / name).write_text("<simulation><total_steps>9")  # cut short by a kill
    refused(["--resume", str(run)], "is corrupt")
    refused(short + ["--walltime", "2h"], "write it as HH:MM:SS")
    refused(short + ["--walltime", "00:00:10"], "not more than the 20 s stop margin")
    refused(short + ["--out", str(run)], "exists and is not empty: continue it with mlip-run --resume")
    refused(["--steps", "3"], "give the experiment to run")


def test_walltime_formats_and_exit_words():
    assert parse_walltime("01:02:03") == 3723 and parse_walltime("1-00:00:00") == 86400
    assert parse_walltime("05:00") == 300
    assert Deadline(3600).margin == 300 and Deadline(100).margin == 20
    assert describe_exit(-9) == "killed by SIGKILL (out of memory?)" and describe_exit(1) == "exit 1"
    assert describe_exit(-15) == "killed by SIGTERM"


def test_trim_outputs_cuts_rows_frames_and_extras_past_the_checkpoint(tmp_path):
    """Properties rows, xyz frames (one cut short by the kill) and extras records after step 2 go."""
    (tmp_path / "sim.out").write_text(
        "# column   1     --> step : The current step.\n# column   2     --> potential : eV\n"
        + "".join(f"{s}.0 {s * 0.1}\n" for s in range(6))
        + "6.0 0.6e"  # cut mid-row
    )
    frame = "2\nStep: {s} Bead: 0\nO 0 0 0\nH 0 0 1\n"
    (tmp_path / "sim.pos_0.xyz").write_text(
        "".join(frame.format(s=s) for s in range(0, 6, 2)) + "2\nStep: 6\nO 0"
    )
    (tmp_path / "sim.spread").write_text("".join(f" #EXTRAS# Step: {s} Bead: 0\n 1.0\n" for s in range(5)))
    removed = trim_outputs(tmp_path, 2)
    assert removed == {"sim.out": 4, "sim.pos_0.xyz": 2, "sim.spread": 2}
    assert np.loadtxt(tmp_path / "sim.out")[:, 0].tolist() == [0, 1, 2]
    assert (tmp_path / "sim.pos_0.xyz").read_text() == "".join(frame.format(s=s) for s in (0, 2))
    assert (tmp_path / "sim.spread").read_text().count("Step:") == 3


def test_two_sides_server_restarts_and_reconnects_over_inet(tmp_path, toy_model, reference):
    """--side ipi here and --side server there (one machine, inet): the server side's server is
    SIGKILLed mid-run, restarted by that side, reconnects to i-PI's port; the run finishes."""
    from mlip_server.processes import free_port

    run = tmp_path / "run"
    port = free_port()
    inet = ["--transport", "inet", "--host", "127.0.0.1", "--port", str(port)]
    ipi_side = _start(_options(toy_model) + inet + ["--side", "ipi", "--out", str(run)], tmp_path / "ipi.log")
    server_side = _start(
        ["water-nvt", "--side", "server", "--out", str(run), "--model", str(toy_model), "--dtype", "float64"],
        tmp_path / "server.log",
    )
    _wait_for_step(run, 300, ipi_side)
    os.kill(_children(server_side)["server"], signal.SIGKILL)
    assert ipi_side.wait(timeout=180) == 0, (tmp_path / "ipi.log").read_text()
    assert server_side.wait(timeout=60) == 0, (tmp_path / "server.log").read_text()
    _same_trajectory(_each_step_once(run), reference, restarted=False)
    events = [json.loads(line) for line in (run / "events-server-side.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["crash", "done"] and events[0]["action"] == "restart"


def test_two_sides_ipi_killed_is_restarted_and_the_server_side_reconnects(tmp_path, toy_model, reference):
    """--side ipi + --side server over inet: i-PI SIGKILLed on its side is restarted there from its
    checkpoint on the same port; the server side's server loses its link, is restarted and
    reconnects; the run finishes with every step once and the uninterrupted trajectory."""
    from mlip_server.processes import free_port

    run = tmp_path / "run"
    inet = ["--transport", "inet", "--host", "127.0.0.1", "--port", str(free_port())]
    ipi_side = _start(
        _options(toy_model, steps=SHORT) + inet + ["--side", "ipi", "--out", str(run)], tmp_path / "ipi.log"
    )
    server_side = _start(
        ["water-nvt", "--side", "server", "--out", str(run), "--model", str(toy_model), "--dtype", "float64"],
        tmp_path / "server.log",
    )
    _wait_for_step(run, 220, ipi_side)
    os.kill(_children(ipi_side)["ipi"], signal.SIGKILL)
    assert ipi_side.wait(timeout=180) == 0, (tmp_path / "ipi.log").read_text()
    assert server_side.wait(timeout=60) == 0, (tmp_path / "server.log").read_text()
    _same_trajectory(_each_step_once(run, SHORT), reference[: SHORT + 1], restarted=True)
    crashes = _ipi_crashes(run)
    assert len(crashes) == 1 and crashes[0]["action"] == "restart", crashes
    assert "restarting it on the same addresses" in (tmp_path / "server.log").read_text()


def test_two_servers_share_the_beads_and_one_is_restarted_alone(tmp_path, toy_model, pimd_reference):
    """--servers 2 on the 4-bead PIMD run: each server gets two bead connections (batches of 2);
    SIGKILL of server-1 restarts only it, and the run is the uninterrupted one-server run (every
    bead's every step once, its potential and positions: the beads' forces do not depend on which
    server evaluated them, nor on the batch they shared)."""
    run = tmp_path / "run"
    proc = _start(_pimd_options(toy_model) + ["--servers", "2", "--out", str(run)], tmp_path / "launcher.log")
    _wait_for_step(run, 60, proc)
    pids = subprocess.run(
        ["pgrep", "-f", "-P", str(proc.pid), "server-1.heartbeat"], capture_output=True, text=True
    )
    pid = int(pids.stdout.split()[0])
    # two servers on the same cores: OpenMP threads that do not spin (machine.shared_cores_env)
    policy = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    assert f"OMP_WAIT_POLICY={policy}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, (tmp_path / "launcher.log").read_text()
    _same_pimd_run(run, pimd_reference)
    assert (run / "server-1.restart-1.log").exists()  # (it may have connected too late to serve)
    for name in ("server-0.log", "server-1.log"):  # a first request may be 1×1
        assert re.search(
            r"batch sizes \(structures per model call × calls\): [^;]*\b2×", (run / name).read_text()
        ), name
    crashes = [e for e in _events(run) if e["event"] == "crash"]
    assert [e["process"] for e in crashes] == ["server-1"]


def test_resume_with_more_steps_continues_the_same_trajectory(tmp_path, toy_model, reference):
    """A finished run of SHORT steps, extended with ``--resume --steps STEPS``: the extension starts
    from the last checkpoint (the end of the first run) and the whole is the uninterrupted run of
    STEPS, every step once (a restart from the checkpoint: :data:`RESTART_TOL`); positions,
    momenta and thermostat carried over, not re-initialised (thermal velocities drawn again would
    be ~1e-2 eV apart within a few steps)."""
    run = tmp_path / "run"
    first = subprocess.run(
        RUN + _options(toy_model, SHORT) + ["--out", str(run)], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stdout + first.stderr
    more = subprocess.run(
        RUN + ["--resume", str(run), "--steps", str(STEPS), "--progress", "0"], capture_output=True, text=True
    )
    assert more.returncode == 0, more.stdout + more.stderr
    _same_trajectory(_each_step_once(run), reference, restarted=True)


def test_two_sides_resume_on_another_port(tmp_path, toy_model, reference):
    """A two-node chain: the ipi side is stopped (SIGTERM, exit 75) and resumed on another port
    (a new job, another node); a new server side reads the new address; the run finishes."""
    from mlip_server.processes import free_port

    run = tmp_path / "run"
    first, second = free_port(), free_port()
    inet = ["--transport", "inet", "--host", "127.0.0.1", "--port", str(first)]
    server_cmd = [
        "water-nvt",
        "--side",
        "server",
        "--out",
        str(run),
        "--model",
        str(toy_model),
        "--dtype",
        "float64",
    ]
    ipi_side = _start(_options(toy_model) + inet + ["--side", "ipi", "--out", str(run)], tmp_path / "ipi.log")
    server_side = _start(server_cmd, tmp_path / "server.log")
    _wait_for_step(run, 300, ipi_side)
    ipi_side.send_signal(signal.SIGTERM)
    assert ipi_side.wait(timeout=60) == EXIT_STOPPED
    server_side.wait(timeout=60)
    (run / "server.json").unlink()  # as the template does: the new server side waits for the new one
    resumed = ["--resume", str(run), "--side", "ipi", "--port", str(second), "--progress", "0"]
    ipi_side = _start(resumed, tmp_path / "ipi2.log")
    server_side = _start(server_cmd, tmp_path / "server2.log")
    assert ipi_side.wait(timeout=180) == 0, (tmp_path / "ipi2.log").read_text()
    assert server_side.wait(timeout=60) == 0, (tmp_path / "server2.log").read_text()
    assert f"<port>{second}</port>" in (run / "resume.xml").read_text()
    _same_trajectory(_each_step_once(run), reference, restarted=True)
