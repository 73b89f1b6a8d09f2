"""mlip-run: every experiment runs through the launcher; stop, resume and concurrency (the
production faults are in test_production.py)."""

import glob
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from refusals import assert_refused

from mlip_server.ipi.experiments import experiments
from mlip_server.ipi.launcher import main as mlip_run
from mlip_server.paths import experiments_dir
from mlip_server.structures import water_box

RUN = [sys.executable, "-m", "mlip_server.ipi.launcher"]


def _outputs_parse(folder):
    data = np.loadtxt(folder / "sim.out", ndmin=2)
    assert data.shape[0] >= 2 and np.isfinite(data).all()
    for path in folder.glob("*.extxyz"):
        frames = ase.io.read(path, index=":")
        assert frames and frames[0].cell.volume > 0
    return data


def test_all_experiments_are_covered():
    assert set(experiments()) == {
        "water-nvt",
        "water-nvt-mts",
        "water-pimd",
        "water-pimd-rpc-mts",
        "molecule-nve",
        "water-npt",
        "ice-geop",
        "replay",
        # direct-force experiments: need a model with a direct head (tests/test_direct_forces.py)
        "water-nvt-nc-mts",
        "water-nve-nc-mts",
        "water-pimd-nc-rpc",
    }


@pytest.mark.parametrize(
    "experiment",
    [
        "water-nvt",
        "water-nvt-mts",
        "water-pimd",
        "water-pimd-rpc-mts",
        "molecule-nve",
        "water-npt",
        "ice-geop",
    ],
)
def test_experiment_runs_and_outputs_parse(tmp_path, toy_model, experiment):
    import json

    args = [
        experiment,
        "--model",
        toy_model,
        "--steps",
        "4",
        "--stride",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--progress",
        "0",
    ]
    meta = json.loads((experiments_dir() / experiment / "experiment.json").read_text())
    if meta["structure"]["kind"] == "water_box":
        args += ["--molecules", "8"]
    if "$beads" in (experiments_dir() / experiment / "input.xml").read_text():
        args += ["--beads", "4"]
    if experiment == "ice-geop":
        water_box(8, seed=4).write(tmp_path / "cell.extxyz")
        args += ["--structure", str(tmp_path / "cell.extxyz")]
    assert mlip_run(args) == 0
    run = tmp_path / "run"
    for name in meta["outputs"]:
        assert (run / name).exists(), name
    _outputs_parse(run)
    log = (run / "server.log").read_text()
    if experiment == "water-pimd":  # one server process, all 4 beads in one batch
        assert "batch sizes (structures per model call × calls): 4×" in log
    if experiment == "water-nvt-mts":
        delta = [float(l) for l in (run / "sim.diag").read_text().split("\n") if l.strip() and "#" not in l]
        assert len(delta) == 5 and all(abs(d) > 0 for d in delta)


def test_replay_evaluates_every_frame_with_every_spec(tmp_path, toy_model):
    frames = []
    for k in range(3):
        a = water_box(8, seed=10 + k)
        frames.append(a)
    ase.io.write(tmp_path / "traj.extxyz", frames)
    assert (
        mlip_run(
            [
                "replay",
                "--model",
                toy_model,
                "--trajectory",
                str(tmp_path / "traj.extxyz"),
                "--specs",
                "none,i",
                "--dtype",
                "float64",
                "--out",
                str(tmp_path / "run"),
                "--progress",
                "0",
            ]
        )
        == 0
    )
    data = np.loadtxt(tmp_path / "run" / "sim.out")
    from mlip_server.core.evaluator import Structure
    from mlip_server.loading import load_evaluator

    ev = load_evaluator(toy_model)
    for k, atoms in enumerate(frames):  # step k+1 holds frame k
        s = Structure.from_ase(atoms)
        assert data[k + 1, 1] == pytest.approx(ev.compute([s])[0].energy, abs=2e-6)
        assert data[k + 1, 2] == pytest.approx(ev.compute([s], "i")[0].energy, abs=2e-6)


def test_resume_extends_a_finished_run_in_place(tmp_path, toy_model):
    """--resume of a finished run says so and exits 0; with a larger --steps it continues in the
    same folder, and sim.out then holds steps 0..20 once each (stride 5)."""
    run = tmp_path / "a"
    base = ["--steps", "10", "--molecules", "8", "--stride", "5", "--set", "checkpoint=5", "--progress", "0"]
    assert mlip_run(["water-nvt", "--model", toy_model, "--out", str(run), *base]) == 0
    assert mlip_run(["--resume", str(run), "--progress", "0"]) == 0  # finished: nothing to do
    assert mlip_run(["--resume", str(run), "--steps", "20", "--progress", "0"]) == 0
    steps = np.loadtxt(run / "sim.out")[:, 0]
    assert steps.tolist() == [0, 5, 10, 15, 20]
    assert sorted(p.name for p in run.glob("sim.*")) == ["sim.out", "sim.pos_0.extxyz", "sim.restart"]


def test_a_run_of_i_pis_default_1000_steps_finishes_and_extends(tmp_path, toy_model):
    """i-PI leaves <total_steps> out of its checkpoints when it is its default (1000): such a run
    still ends done (exit 0, not 'stopped at an unknown step'), and --resume --steps extends it."""
    run = tmp_path / "a"
    base = ["--steps", "1000", "--molecules", "8", "--stride", "250", "--set", "checkpoint=500"]
    assert mlip_run(["water-nvt", "--model", toy_model, "--out", str(run), *base, "--progress", "0"]) == 0
    assert "<total_steps>" not in (run / "RESTART").read_text()  # what made this case
    assert mlip_run(["--resume", str(run), "--steps", "1250", "--progress", "0"]) == 0
    steps = np.loadtxt(run / "sim.out")[:, 0]
    assert steps.tolist() == [0, 250, 500, 750, 1000, 1250]


def _long_run(run, toy_model, stderr):
    """A launcher in the middle of a long water-nvt run; returns it and its children's pids."""
    proc = subprocess.Popen(
        RUN
        + [
            "water-nvt",
            "--model",
            toy_model,
            "--steps",
            "100000",
            "--molecules",
            "8",
            "--stride",
            "1",
            "--out",
            str(run),
            "--progress",
            "0",
        ],
        stdout=stderr,
        stderr=stderr,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ((run / "sim.out").exists() and len((run / "sim.out").read_text().splitlines()) > 12):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2  # i-PI and mlip-server
    return proc, children


def _alive(pid) -> bool:
    """Whether process ``pid`` runs (a zombie or a vanished one does not)."""
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def _cmdline(pid) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _sockets_of(launcher) -> list:
    """The i-PI socket files of one launcher (their names carry its PID: processes.unique_name), so
    that other runs on the machine at the same time do not count."""
    return glob.glob(f"/tmp/ipi_mlip-{launcher.pid}-*")


def test_killing_the_launcher_leaves_nothing_behind(tmp_path, toy_model):
    proc, children = _long_run(tmp_path / "run", toy_model, subprocess.PIPE)
    assert _sockets_of(proc)  # the pattern matches this run's sockets while it runs
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75 and "continue with `mlip-run --resume" in out, (out, err)
    for pid in children:
        assert not _alive(pid)
    assert _sockets_of(proc) == []


def test_sigkilled_launcher_takes_its_children_along(tmp_path, toy_model):
    """SIGKILL leaves the launcher no chance to clean up; its i-PI and server are tied to its life
    (processes.tie_to_parent), receive SIGTERM from the kernel and exit, removing i-PI's socket."""
    proc, children = _long_run(tmp_path / "run", toy_model, subprocess.DEVNULL)
    assert _sockets_of(proc)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 60
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in children if _alive(pid)]
        time.sleep(0.2)
    names = {pid: _cmdline(pid) for pid in alive}
    assert not alive, f"processes {names} outlived their SIGKILLed launcher"
    deadline = time.monotonic() + 10
    while _sockets_of(proc) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sockets_of(proc) == []


def _tgkill(pid: int, tid: int, sig: int) -> None:
    """Sends ``sig`` to thread ``tid`` of process ``pid`` (Linux tgkill; x86-64 and aarch64 numbers)."""
    import ctypes
    import platform

    number = {"x86_64": 234, "aarch64": 131}[platform.machine()]
    assert ctypes.CDLL(None, use_errno=True).syscall(number, pid, tid, sig) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads are signalled with Linux's tgkill")
def test_a_stop_signal_caught_by_another_i_pi_thread_still_stops_it(tmp_path, toy_model):
    """The kernel may hand a signal sent to i-PI to any of its threads; Python runs the handler in
    the main thread, which i-PI leaves waiting for the step's future. While a step waits for a
    server that does not answer (here stopped with SIGSTOP; a dead one likewise), that wait never
    ended, and i-PI ran on as an orphan after its launcher was SIGKILLed (seen once). With
    mlip_server.ipi.ipi_main the wait wakes up: SIGTERM to a worker thread starts the soft exit at once,
    as when it reaches the main thread, and the run stops resumable (RESTART, exit 75)."""
    run = tmp_path / "run"
    proc, children = _long_run(run, toy_model, subprocess.PIPE)
    ipi = next(int(pid) for pid in children if "ipi_main" in _cmdline(pid))
    server = next(int(pid) for pid in children if int(pid) != ipi)
    threads = sorted(int(t) for t in os.listdir(f"/proc/{ipi}/task") if int(t) != ipi)
    try:
        os.kill(server, signal.SIGSTOP)
        time.sleep(0.5)  # the step now waits for forces
        _tgkill(ipi, threads[-1], signal.SIGTERM)
        deadline = time.monotonic() + 20
        handled = False
        while not handled and time.monotonic() < deadline:
            time.sleep(0.2)
            handled = "Kill signal" in (run / "ipi.log").read_text()
        assert handled, "i-PI did not handle a SIGTERM caught by one of its worker threads"
    finally:
        os.kill(server, signal.SIGCONT)  # (i-PI's soft exit closes the server's socket: let it read)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 75, (out, err)  # stopped cleanly: resumable
    assert (run / "RESTART").is_file()
    for pid in children:
        assert not _alive(pid)


def test_two_launches_at_once_do_not_interfere(tmp_path, toy_model):
    procs = [
        subprocess.Popen(
            RUN
            + [
                "water-nvt",
                "--model",
                toy_model,
                "--steps",
                "20",
                "--molecules",
                "8",
                "--seed",
                str(seed),
                "--progress",
                "0",
                "--out",
                str(tmp_path / f"run{seed}"),
            ]
        )
        for seed in (1, 2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    a, b = (np.loadtxt(tmp_path / f"run{s}" / "sim.out") for s in (1, 2))
    assert a.shape == b.shape and not np.allclose(a[:, 5], b[:, 5])
    sockets = [set(socket_names(tmp_path / f"run{s}" / "input.xml")) for s in (1, 2)]
    assert not sockets[0] & sockets[1]


def socket_names(xml_path):
    import re

    return re.findall(r"<address>([^<]+)</address>", xml_path.read_text())


def test_shm_and_ffdirect_transports_through_the_launcher(tmp_path, toy_model):
    """mlip-run --transport shm (i-PI's mode='shm', a shm: server address) and --transport ffdirect
    (the model inside i-PI, no server): the same energies as the unix route."""
    runs = {}
    for transport in ("unix", "shm", "ffdirect"):
        out = tmp_path / transport
        assert (
            mlip_run(
                [
                    "water-nvt",
                    "--model",
                    toy_model,
                    "--steps",
                    "4",
                    "--molecules",
                    "8",
                    "--stride",
                    "1",
                    "--transport",
                    transport,
                    "--out",
                    str(out),
                    "--progress",
                    "0",
                ]
            )
            == 0
        )
        runs[transport] = np.loadtxt(out / "sim.out")
    assert "mode='shm'" in (tmp_path / "shm" / "input.xml").read_text()
    assert "<ffdirect" in (tmp_path / "ffdirect" / "input.xml").read_text()
    assert not (tmp_path / "ffdirect" / "server.log").exists()
    for transport in ("shm", "ffdirect"):
        assert np.abs(runs[transport] - runs["unix"]).max() <= 1e-9 * np.abs(runs["unix"]).max()


@pytest.mark.parametrize(
    "args, words",
    [
        (["water-nvt", "--beads", "32"], "water-nvt does not use --beads: experiments with it: water-pimd"),
        (["water-pimd", "--average", "2i"], "water-pimd does not use --average"),
        (
            ["water-nvt", "--nmts", "4"],
            "experiments with it: water-nve-nc-mts, water-nvt-mts, water-nvt-nc-mts, water-pimd-nc-rpc, "
            "water-pimd-rpc-mts",
        ),
        (["ice-geop", "--molecules", "8"], "ice-geop does not use --molecules"),
        (["replay", "--average", "i"], "replay does not use --average"),
    ],
)
def test_options_the_experiment_ignores_are_refused(tmp_path, toy_model, args, words):
    run = tmp_path / "run"
    done = subprocess.run(
        RUN + args + ["--model", toy_model, "--out", str(run)], capture_output=True, text=True, timeout=60
    )
    assert_refused(done, words)
    assert not run.exists()  # nothing of a refused run stays behind


def test_progress_lines_and_closing_line_with_numbers_and_the_next_command(tmp_path, toy_model):
    """Not a terminal (a batch log): timestamped 'step N/M' lines with the rate; the closing line
    has the steps, wall time and rate, the mean temperature, the files and the next command."""
    run = tmp_path / "run"
    args = ["water-pimd", "--beads", "2", "--molecules", "8", "--steps", "100", "--stride", "2"]
    done = subprocess.run(
        RUN + args + ["--model", toy_model, "--out", str(run), "--progress", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    progress = [line for line in lines if re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] step \d+/100 ", line)]
    assert progress and re.search(r"[pn]s/day, [\d.e-]+ s/step", progress[-1]), done.stdout
    last = lines[-1]
    assert re.search(r"done: 100 steps in \S+ \(.* [pn]s/day, .* s/step\); mean T [\d.]+ K", last), last
    assert "sim.pos_0.extxyz, sim.pos_1.extxyz" in last
    hint = last.split("next: ")[1].split()
    assert hint[:3] == ["mlip-analyse", "all", str(run)]
    assert "--bead" in hint and "centroid" in hint
    from mlip_server.analysis.readers import load_universe

    u = load_universe(str(run / "sim.pos_0.extxyz"), beads="centroid")
    assert u._mlip_dt_ps == pytest.approx(0.5e-3)  # no --timestep needed: 0.25 fs x stride 2
    refused = subprocess.run(RUN + ["--resume", str(run), "--beads", "4"], capture_output=True, text=True)
    assert_refused(refused, "leave out --beads (the run has 2)")
