"""The shipped SLURM templates, submitted unchanged with ``sbatch`` to a real SLURM.

``make test-hpc`` starts a single-node SLURM of its own (hpc/local-slurm/cluster.sh: Debian's
slurm-wlm and munge, installed when missing) and runs these tests with ``MLIP_SLURM_CLUSTER``
set; everywhere else (``make test``) they are skipped, so ``make test`` never starts SLURM.
Settings reach the templates only through the environment variables hpc/README.md shows and sbatch
options, as a user who installed the package submits them: each test copies the template out with
``mlip-run --copy-template hpc/NAME.slurm`` and gives ``VENV`` (this checkout's virtual environment,
where the package is installed) or puts the mlip-* commands on PATH instead. Outcomes
come from SLURM itself (the cluster's job completion log: one record per finished job with its
state and exit code) and from the files the jobs wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mlip_server.paths import checkout_root, copy_shipped

ROOT = checkout_root()
VENV = Path(sys.prefix)  # the virtual environment the package is installed in (make install: .venv)
IPI_TEMPLATE = "hpc/ipi-cpu-server-gpu.slurm"
LAMMPS_TEMPLATE = "hpc/lammps-domain.slurm"
CLUSTER = os.environ.get("MLIP_SLURM_CLUSTER")
JOBCOMP = os.environ.get("MLIP_SLURM_JOBCOMP")

if shutil.which("sbatch") is None:
    _skip = "no sbatch: run make test-hpc, which starts a local SLURM"
elif not CLUSTER:
    _skip = (
        "not under make test-hpc (MLIP_SLURM_CLUSTER unset): run make test-hpc, which starts a local SLURM"
    )
else:
    _skip = None
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


SETTINGS = {
    "VENV", "MODEL", "EXPERIMENT", "BEADS", "STEPS", "MOLECULES", "STRUCTURE", "TRAJECTORY", "DEVICE",
    "DTYPE", "LAYOUT", "MLIP_ARGS", "RUN", "CHAIN", "CHAIN_MAX", "DECK", "DATA", "ELEMENTS", "VARS",
    "NODES", "RANKS", "SERVERS", "CHECKPOINT_EVERY",
}  # fmt: skip
"""The templates' settings as hpc/README.md lists them: the only variables the tests give."""


def _env(venv: bool = True, **settings) -> dict:
    """The submission environment: the settings (documented ones only), one thread per process, no
    settings of the caller's; ``venv``: VENV names the package's virtual environment, else its
    commands are on PATH (as after module load or conda activate)."""
    assert set(settings) <= SETTINGS, set(settings) - SETTINGS
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS | {"VIRTUAL_ENV", "PROJECT"}}
    env["OMP_NUM_THREADS"] = "1"
    if venv:
        env["VENV"] = str(VENV)
    else:
        env["PATH"] = f"{VENV / 'bin'}:{env['PATH']}"
    env.update({k: str(v) for k, v in settings.items()})
    return env


def _copy_template(name: str, folder: Path) -> Path:
    """The user's copy of a shipped template, as ``mlip-run --copy-template NAME --to FOLDER`` makes
    it (its function, in this process: the command's start-up is not what is tested here)."""
    copy = copy_shipped(name, folder)
    assert copy.read_text() == (ROOT / name).read_text()  # the shipped file, unchanged
    return copy


def _sbatch(template: str, options: list[str], cwd: Path, env: dict) -> int:
    script = _copy_template(template, cwd)
    done = subprocess.run(
        ["sbatch", "--parsable", *options, script.name],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().split(";")[0])


def _records() -> list[dict]:
    """The job completion log: one dict per finished job (JobId, JobName, JobState, ExitCode, ...)."""
    if not JOBCOMP or not Path(JOBCOMP).exists():
        return []
    records = []
    for line in Path(JOBCOMP).read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            records.append(fields)
    return records


def _queued(name: str) -> list[str]:
    done = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True)
    if done.returncode != 0:  # a busy controller: ask again, never take it for an empty queue
        return [f"unknown ({done.stderr.strip()})"]
    return done.stdout.split("\n") if done.stdout.strip() else []


def _wait_for_name(name: str, timeout: float) -> list[dict]:
    """Waits until no job named ``name`` is queued or running and at least one has finished;
    returns the finished jobs' records in job id order."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        mine = [r for r in _records() if r.get("Name") == name]
        if mine and not _queued(name):
            return sorted(mine, key=lambda r: int(r["JobId"]))
        time.sleep(2)
    subprocess.run(["scancel", "-n", name])
    pytest.fail(f"jobs named {name} still queued after {timeout:.0f} s: {_queued(name)}")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _rows(path: Path) -> list[int]:
    return [
        int(float(line.split()[0]))
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- LAMMPS
def _thermo_steps(log: Path) -> list[int]:
    """The steps of every thermo row of a LAMMPS log (all runs, in file order): the rows under a
    ``Step ...`` header made of as many numbers as it has columns (a run stopped cleanly ends
    without its ``Loop time`` line; warnings may come between rows)."""
    steps, columns = [], 0
    for line in log.read_text().splitlines():
        words = line.split()
        if words[:1] == ["Step"]:
            columns = len(words)
        elif columns and len(words) == columns and re.fullmatch(r"[-+.\deE ]+", line.strip()):
            steps.append(int(words[0]))
        elif line.startswith("Loop time"):
            columns = 0
    return steps


def _dump_steps(dump: Path) -> list[int]:
    lines = dump.read_text().splitlines()
    return [int(lines[k + 1]) for k, line in enumerate(lines) if line.startswith("ITEM: TIMESTEP")]


CHAIN_JOBS = 3
"""Jobs of each walltime chain test (CHAIN_MAX): their number never depends on the machine's speed.
The run is sized to end in the third job on 2 idle cores; on slower (shared) cores the third job
stops at its walltime and is not continued (exit 75, "stopped, not continued"): both are accepted."""
CHAIN_TIMEOUT = CHAIN_JOBS * 150  # s: 1-minute jobs, their start-up and scheduling on loaded cores


def _chain(records: list[dict], output: str, run: Path, first: int, what: str) -> bool:
    """The checks of a walltime chain of CHAIN_JOBS jobs from SLURM's view and the job output;
    returns whether the run is done (else its last job stopped at its walltime, not continued)."""
    assert len(records) == CHAIN_JOBS, output[-5000:]
    assert records[0]["JobId"] == str(first)
    done = output.rstrip().endswith(f"the run is done ({run})")
    last = ("COMPLETED", "0:0") if done else ("FAILED", "75:0")
    states = [(r["JobState"], r["ExitCode"]) for r in records]
    assert states == [("COMPLETED", "0:0")] * (CHAIN_JOBS - 1) + [last], output[-5000:]
    if not done:
        assert f"stopped, not continued (CHAIN=1, job {CHAIN_JOBS} of at most {CHAIN_JOBS}" in output
    assert {r["TimeLimit"] for r in records} == {"1"}  # every job with the first one's options
    assert len({(r["NodeCnt"], r["ProcCnt"]) for r in records}) == 1
    for before, after in zip(records, records[1:]):
        assert after["StartTime"] >= before["EndTime"]
    assert output.count("stopped before the time limit; job") == CHAIN_JOBS - 1
    assert len(re.findall(rf"^{what} job \d+: resuming", output, re.M)) == CHAIN_JOBS - 1
    return done


LAMMPS_STEPS = 2000  # 50-330 steps per 1-minute job on 2 shared cores, more idle: never 2 jobs


@pytest.mark.timeout(CHAIN_TIMEOUT + 120)
def test_lammps_template_walltime_chain_continues_itself(tmp_path, toy_model):
    """hpc/lammps-domain.slurm as shipped (its default deck, water-large, whose data file nothing but
    the template's mlip-lammps-run builds) on one node, 2 MPI ranks, one force server, --time=00:01:00:
    every job stops cleanly before its time limit (restart file, exit 75), the template submits itself
    again and the next job resumes in place (CHAIN_JOBS jobs). Every step up to the last one is in the
    LAMMPS log exactly once, in order; every dump frame too."""
    name = _name("lchain")
    env = _env(
        MODEL=toy_model,
        MOLECULES=64,
        STEPS=LAMMPS_STEPS,
        VARS="--var nx 1 --var ny 1 --var nz 1 --var thermo 1 --var dump 50",
        DEVICE="cpu",
        CHECKPOINT_EVERY=50,
        CHAIN_MAX=CHAIN_JOBS,
    )
    first = _sbatch(
        LAMMPS_TEMPLATE,
        [f"--job-name={name}", "--time=00:01:00", "--nodes=1", "--ntasks=2", "--output=chain.out"],
        tmp_path,
        env,
    )
    records = _wait_for_name(name, CHAIN_TIMEOUT)
    output = (tmp_path / "chain.out").read_text()
    run = tmp_path / f"lammps-{first}"
    done = _chain(records, output, run, first, "mlip-lammps")
    assert {(r["NodeCnt"], r["ProcCnt"]) for r in records} == {("1", "2")}
    # mlip-lammps-run built the deck's data file and ran it on 2 ranks, domain-decomposed
    assert (run / "water-64.data").exists()
    settings = json.loads((run / "run.json").read_text())
    assert (settings["np"], settings["decomposition"], settings["servers"]) == (2, "domain", 1)
    assert "1 by 1 by 2 MPI processor grid" in (run / "log.lammps").read_text()
    # a walltime stop per job (but a last one that finished) and a resume per job boundary
    events = _events(run)
    kinds = [e["event"] for e in events]
    assert kinds.count("stopped") == CHAIN_JOBS - done and kinds.count("resume") == CHAIN_JOBS - 1
    assert kinds[-1] == ("done" if done else "stopped")
    assert all("time limit" in e["message"] for e in events if e["event"] == "stop")
    resumes = [e["step"] for e in events if e["event"] == "resume"]
    assert resumes == sorted(resumes) and 0 < resumes[0] and resumes[-1] < LAMMPS_STEPS
    state = json.loads((run / "checkpoint.json").read_text())
    assert bool(state.get("done")) == done
    last = state["step"]  # the deck's last step, or where the last job stopped
    assert (last == LAMMPS_STEPS) if done else (resumes[-1] < last < LAMMPS_STEPS)
    assert _thermo_steps(run / "log.lammps") == list(range(last + 1))
    assert _dump_steps(run / "water-large.lammpstrj") == list(range(0, last + 1, 50))


# --------------------------------------------------------------------------- i-PI
IPI_SETTINGS = dict(EXPERIMENT="water-nvt", MOLECULES=8, BEADS="", DEVICE="cpu", DTYPE="float64")


CHAIN_STEPS = 16000  # ~6000-6900 steps per 1-minute job on 2 idle cores (5.8 ms/step): 3 jobs


@pytest.mark.timeout(CHAIN_TIMEOUT + 120)
def test_ipi_template_walltime_chain_continues_itself(tmp_path, toy_model):
    """--time=00:01:00 (SLURM's shortest limit) and a run of CHAIN_STEPS steps (3 such jobs at full
    speed of 2 idle cores): every job stops cleanly before its time limit, the template submits
    itself again with the same options and the next job resumes RUN in place (CHAIN_JOBS jobs),
    until the run is done (idle cores). Every step is in sim.out exactly once, in order."""
    name = _name("chain")
    env = _env(
        MODEL=toy_model,
        STEPS=CHAIN_STEPS,
        MLIP_ARGS="--stride 1",
        CHAIN_MAX=CHAIN_JOBS,
        **IPI_SETTINGS,
    )
    first = _sbatch(
        IPI_TEMPLATE,
        [f"--job-name={name}", "--time=00:01:00", "--ntasks=1", "--cpus-per-task=2", "--output=chain.out"],
        tmp_path,
        env,
    )
    records = _wait_for_name(name, CHAIN_TIMEOUT)
    output = (tmp_path / "chain.out").read_text()
    run = tmp_path / f"run-{first}"
    done = _chain(records, output, run, first, "mlip-ipi")
    assert {r["ProcCnt"] for r in records} == {"2"}
    # the run's own account: a stop and a resume per job boundary, then done (or a last stop)
    events = _events(run)
    kinds = [e["event"] for e in events]
    assert kinds.count("stopped") == CHAIN_JOBS - done and kinds.count("resume") == CHAIN_JOBS - 1
    assert kinds[-1] == ("done" if done else "stopped")
    stops = [e["step"] for e in events if e["event"] == "stopped"]
    resumes = [e["step"] for e in events if e["event"] == "resume"]
    assert stops[: CHAIN_JOBS - 1] == resumes and stops == sorted(stops) and 0 < stops[0]
    assert stops[-1] < CHAIN_STEPS
    assert all("walltime" in e["message"] for e in events if e["event"] == "stop")
    # the output: every step 0..N (or up to the last stop) exactly once, in order
    rows = _rows(run / "sim.out")
    assert rows == list(range(len(rows)))
    assert rows[-1] == CHAIN_STEPS if done else resumes[-1] < rows[-1] <= stops[-1]


def _wait_until_stepping(run: Path, job: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sim = run / "sim.out"
        if sim.exists() and len(_rows(sim)) > 10:
            return
        time.sleep(1)
    subprocess.run(["scancel", str(job)])
    pytest.fail(f"job {job}: no i-PI steps in {run} after {timeout:.0f} s")


@pytest.mark.parametrize("how", ["usr1", "scancel"])
def test_ipi_template_signals(tmp_path, toy_model, how):
    """USR1 to the batch shell (what --signal=B:USR1@N sends) reaches the launcher: i-PI stops
    cleanly, exit 75 (CHAIN=0: no resubmission; the job FAILED with exit code 75). scancel (SIGTERM
    to every process) stops it too, and the chain ends: no job continues the run."""
    name = _name(how)
    settings = dict(MODEL=toy_model, STEPS=10**6, **IPI_SETTINGS)
    if how == "usr1":
        settings["CHAIN"] = 0
    job = _sbatch(
        IPI_TEMPLATE,
        [f"--job-name={name}", "--time=00:05:00", "--ntasks=1", "--cpus-per-task=2", "--output=job.out"],
        tmp_path,
        _env(**settings),
    )
    run = tmp_path / f"run-{job}"
    _wait_until_stepping(run, job)
    if how == "usr1":
        subprocess.run(["scancel", "--batch", "--signal=USR1", str(job)], check=True)
    else:
        subprocess.run(["scancel", str(job)], check=True)
    records = _wait_for_name(name, 120)
    output = (tmp_path / "job.out").read_text()
    assert len(records) == 1, output  # nothing resubmitted
    expected = ("FAILED", "75:0") if how == "usr1" else ("CANCELLED",)
    assert (records[0]["JobState"], records[0]["ExitCode"])[: len(expected)] == expected, output
    assert "stopped, not continued" in output
    events = _events(run)
    stopped = [e for e in events if e["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] > 0, events
    rows = _rows(run / "sim.out")
    assert rows == list(range(0, 10 * len(rows), 10))  # a clean stop: every output step up to it once


def test_ipi_template_experiment_without_molecules(tmp_path, toy_model):
    """An experiment that takes no --molecules (molecule-nve: one molecule) runs through the template
    as documented; the mlip-* commands come from PATH here (no VENV), as after a module load or conda
    activate. (water-pimd-rpc-mts on a STRUCTURE file: tests/test_hpc.py, without SLURM.)"""
    experiment = "molecule-nve"
    name = _name(experiment)
    settings = dict(MODEL=toy_model, EXPERIMENT=experiment, STEPS=4, DEVICE="cpu", DTYPE="float64")
    job = _sbatch(
        IPI_TEMPLATE,
        [f"--job-name={name}", "--time=00:05:00", "--ntasks=1", "--cpus-per-task=2", "--output=job.out"],
        tmp_path,
        _env(venv=False, **settings),
    )
    (record,) = _wait_for_name(name, 300)
    output = (tmp_path / "job.out").read_text()
    run = tmp_path / f"run-{job}"
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    assert output.rstrip().endswith(f"the run is done ({run})")
    options = json.loads((run / "run.json").read_text())["options"]
    assert options["molecules"] is None and options["steps"] == 4
    assert _events(run)[-1]["event"] == "done"


BAD_SETTINGS = [
    (IPI_TEMPLATE, dict(EXPERIMENT="molecule-nve", MOLECULES=8), "molecule-nve does not use --molecules"),
    (LAMMPS_TEMPLATE, dict(MODEL="missing.pt"), "MODEL=missing.pt: no such file"),
]
"""Two of tests/test_hpc.py's wrong settings, here as SLURM jobs (their state and exit code)."""


@pytest.mark.parametrize("template, settings, line", BAD_SETTINGS, ids=["ipi-molecules", "lammps-model"])
def test_templates_refuse_a_wrong_setting_in_one_line(tmp_path, template, settings, line):
    """A missing or wrong setting: the job's whole output is one line naming it, exit status 2,
    before anything starts (no run folder, no i-PI, no LAMMPS)."""
    name = _name("bad")
    env = _env(DEVICE="cpu", **settings)
    _sbatch(template, [f"--job-name={name}", "--time=00:02:00", "--output=job.out"], tmp_path, env)
    (record,) = _wait_for_name(name, 120)
    output = (tmp_path / "job.out").read_text()
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), output
    assert len(output.splitlines()) == 1 and line in output and ": error: " in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["job.out", Path(template).name])
