"""The shipped SLURM templates, submitted unchanged with ``sbatch`` to a real SLURM.

``make test-hpc`` starts a single-node SLURM of its own (hpc/local-slurm/cluster.sh: Debian's
slurm-wlm and munge, installed when missing) and runs these tests with ``MLIP_SLURM_CLUSTER``
set; everywhere else (``make test``) they are skipped, so ``make test`` never starts SLURM.
Settings reach the templates only through environment variables and sbatch options. Outcomes
come from SLURM itself (the cluster's job completion log: one record per finished job with its
state and exit code) and from the files the jobs wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from mlip_server.paths import checkout_root
from mlip_server.structures import write_water_data

ROOT = checkout_root()
IPI_TEMPLATE = ROOT / "hpc" / "ipi-cpu-server-gpu.slurm"
LAMMPS_TEMPLATE = ROOT / "hpc" / "lammps-domain.slurm"
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


def _env(**settings) -> dict:
    """The submission environment: this checkout as PROJECT, one thread per process."""
    env = dict(os.environ, PROJECT=str(ROOT), OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in settings.items()})
    return env


def _sbatch(script: Path, options: list[str], cwd: Path, env: dict) -> int:
    done = subprocess.run(
        ["sbatch", "--parsable", *options, str(script)],
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
def test_lammps_domain_template_on_one_node_two_ranks(tmp_path, toy_model):
    """hpc/lammps-domain.slurm, NODES=1 RANKS=2 SERVERS=1 DEVICE=cpu: a 64-molecule box, 4 steps,
    two MPI ranks launched by srun, one force server serving both over node-local unix sockets."""
    write_water_data(64, tmp_path / "water.data", seed=5)
    name = _name("lammps")
    env = _env(
        MODEL=toy_model,
        DECK=ROOT / "lammps_inputs" / "in.water-nvt",
        VARS="--var data water.data --var steps 4 --var thermo 1 --var dump 2",
        NODES=1,
        RANKS=2,
        SERVERS=1,
        DEVICE="cpu",
    )
    job = _sbatch(
        LAMMPS_TEMPLATE,
        [f"--job-name={name}", "--nodes=1", "--ntasks=2", "--time=00:05:00", "--output=job-%j.out"],
        tmp_path,
        env,
    )
    (record,) = _wait_for_name(name, 240)
    output = (tmp_path / f"job-{job}.out").read_text()
    servers = (tmp_path / f"servers-{job}.log").read_text()
    assert (record["JobId"], record["JobState"], record["ExitCode"]) == (str(job), "COMPLETED", "0:0"), (
        output[-3000:] + servers[-2000:]
    )
    assert (record["NodeCnt"], record["ProcCnt"]) == ("1", "2")
    # LAMMPS ran on two MPI ranks, steps 0..4 in its thermo output, and wrote its final data
    log = (tmp_path / "log.lammps").read_text()
    assert "on 2 procs for 4 steps" in log
    thermo = re.findall(r"^\s+(\d+)\s+[-\d.]+\s", log.split("Step")[1], re.M)
    assert [int(s) for s in thermo[:5]] == [0, 1, 2, 3, 4]
    assert (tmp_path / "water-nvt.final.data").exists()
    # one server process on the node served both ranks' sockets (rank r on /tmp/ipi_mlip-JOB-r)
    for rank in (0, 1):
        assert f"connected to unix:/tmp/ipi_mlip-{job}-{rank}" in servers
        assert f"unix:/tmp/ipi_mlip-{job}-{rank}: EXIT received" in servers
    timings = json.loads((tmp_path / f"bridge-{job}.json").read_text())
    assert timings


# --------------------------------------------------------------------------- i-PI
IPI_SETTINGS = dict(EXPERIMENT="water-nvt", MOLECULES=8, BEADS="", DEVICE="cpu", DTYPE="float64")


CHAIN_STEPS = 24000  # ~6000 steps per 1-minute job on 2 idle cores (5.8 ms/step): ~4 jobs


def test_ipi_template_walltime_chain_continues_itself(tmp_path, toy_model):
    """--time=00:01:00 (SLURM's shortest limit) and a run of CHAIN_STEPS steps (about 4 such jobs
    at full speed of 2 idle cores, more when they are shared): every job stops cleanly before its
    time limit, the template submits itself again with the same options and the next job resumes
    RUN in place, until the run is done. Every step is in sim.out exactly once, in order."""
    name = _name("chain")
    env = _env(MODEL=toy_model, STEPS=CHAIN_STEPS, MLIP_ARGS="--stride 1", CHAIN_MAX=12, **IPI_SETTINGS)
    first = _sbatch(
        IPI_TEMPLATE,
        [f"--job-name={name}", "--time=00:01:00", "--ntasks=1", "--cpus-per-task=2", "--output=chain.out"],
        tmp_path,
        env,
    )
    records = _wait_for_name(name, 12 * 90)
    output = (tmp_path / "chain.out").read_text()
    run = tmp_path / f"run-{first}"
    # SLURM's view: >= 3 jobs, one after the other, every one with the first one's options, all
    # completed (a stop before the time limit is a clean end of that job)
    assert len(records) >= 3, output
    assert records[0]["JobId"] == str(first)
    assert all((r["JobState"], r["ExitCode"]) == ("COMPLETED", "0:0") for r in records), output
    assert {r["TimeLimit"] for r in records} == {"1"}
    assert {r["ProcCnt"] for r in records} == {"2"}
    for before, after in zip(records, records[1:]):
        assert after["StartTime"] >= before["EndTime"]
    assert output.count("stopped before the time limit; job") == len(records) - 1
    assert len(re.findall(r"^mlip-ipi job \d+: resuming", output, re.M)) == len(records) - 1
    assert output.rstrip().endswith(f"the run is done ({run})")
    # the run's own account: a stop and a resume per job boundary, then done
    events = _events(run)
    kinds = [e["event"] for e in events]
    assert kinds.count("stopped") == len(records) - 1 == kinds.count("resume")
    assert kinds[-1] == "done"
    stops = [e["step"] for e in events if e["event"] == "stopped"]
    resumes = [e["step"] for e in events if e["event"] == "resume"]
    assert stops == resumes and stops == sorted(stops) and 0 < stops[0] and stops[-1] < CHAIN_STEPS
    assert all("walltime" in e["message"] for e in events if e["event"] == "stop")
    # the output: every step 0..N exactly once, in order
    assert _rows(run / "sim.out") == list(range(CHAIN_STEPS + 1))


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
