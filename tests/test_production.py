"""Production faults of i-PI runs (``mlip-run``), each on real i-PI + mlip-server processes:
a server SIGKILLed or hung mid-run is restarted and the run finishes with the uninterrupted
trajectory; SIGTERM, the walltime and SIGKILL of everything stop a run that ``--resume`` then
finishes in the same folder with every step exactly once; bad input gets one line and exit 2.

The reference for "the uninterrupted trajectory" is one run of the same options (float64, CPU,
same seed): i-PI's checkpoints are written with 17 significant digits (``floatformat`` of the
shipped inputs), so a resumed run follows it to ~1e-8 relative in the potential energy.
"""

from __future__ import annotations

import json
import os
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
    """The uninterrupted run: potential energies (eV) per step."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(RUN + _options(toy_model) + ["--out", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return _each_step_once(run)[:, 5]


def _same_trajectory(data, reference, rtol=1e-6):
    relative = np.abs(data[:, 5] - reference) / np.abs(reference)
    assert relative.max() < rtol, (
        f"potential energies differ from the uninterrupted run by {relative.max():.2e}"
    )


def test_sigkilled_server_is_restarted_and_the_trajectory_is_unchanged(tmp_path, toy_model, reference):
    run = tmp_path / "run"
    proc = _start(_options(toy_model) + ["--out", str(run)], tmp_path / "launcher.log")
    _wait_for_step(run, 300, proc)
    os.kill(_children(proc)["server"], signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, (tmp_path / "launcher.log").read_text()
    _same_trajectory(_each_step_once(run), reference)
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
    _same_trajectory(_each_step_once(run), reference)
    hangs = [e for e in _events(run) if e["event"] == "hang"]
    assert len(hangs) == 1 and hangs[0]["action"] == "restart" and "hung" in hangs[0]["message"]
    assert not Path(f"/proc/{hung}").exists() or open(f"/proc/{hung}/stat").read().split()[2] == "Z"
    assert "<timeout>3</timeout>" in (run / "input.xml").read_text()  # i-PI drops it too


def test_no_restarts_left_fails_once_and_stays_resumable(tmp_path, toy_model):
    run = tmp_path / "run"
    log = tmp_path / "launcher.log"
    proc = _start(_options(toy_model) + ["--out", str(run), "--max-server-restarts", "0"], log)
    _wait_for_step(run, 100, proc)
    os.kill(_children(proc)["server"], signal.SIGKILL)
    assert proc.wait(timeout=120) == 1
    text = log.read_text()
    assert text.count("killed by SIGKILL (out of memory?)") == 2  # the event, then the verdict
    assert text.count("failed:") == 1 and f"mlip-run --resume {run}" in text
    assert (run / "RESTART").exists()  # i-PI was stopped cleanly: nothing is lost


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
    _same_trajectory(_each_step_once(run), reference)
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
    _same_trajectory(_each_step_once(run), reference)
    events = [json.loads(line) for line in (run / "events-server-side.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["crash", "done"] and events[0]["action"] == "restart"


def test_two_servers_share_the_beads_and_one_is_restarted_alone(tmp_path, toy_model):
    """--servers 2 on a 4-bead PIMD run: each server gets two bead connections (batches of 2);
    SIGKILL of server-1 restarts only it, and the run finishes."""
    run = tmp_path / "run"
    args = ["water-pimd", "--model", str(toy_model), "--beads", "4", "--molecules", "8", "--steps", "400"]
    args += ["--stride", "1", "--set", "checkpoint=50", "--servers", "2", "--progress", "0"]
    proc = _start(args + ["--out", str(run)], tmp_path / "launcher.log")
    _wait_for_step(run, 100, proc)
    pids = subprocess.run(
        ["pgrep", "-f", "-P", str(proc.pid), "server-1.heartbeat"], capture_output=True, text=True
    )
    os.kill(int(pids.stdout.split()[0]), signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, (tmp_path / "launcher.log").read_text()
    assert _rows(run)[:, 0].tolist() == list(range(401))
    for name in ("server-0.log", "server-1.log", "server-1.restart-1.log"):
        assert "batch sizes (structures per model call × calls): 2×" in (run / name).read_text(), name
    crashes = [e for e in _events(run) if e["event"] == "crash"]
    assert [e["process"] for e in crashes] == ["server-1"]


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
    _same_trajectory(_each_step_once(run), reference)
