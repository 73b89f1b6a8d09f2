"""The templates of hpc/ run only project commands, they work together, and a wrong setting is one
line before anything starts.

No SLURM here: the scripts run under bash with stand-ins for ``srun`` (records its arguments,
drops its own options, runs the rest, or only records) and ``scontrol`` (the i-PI host is
127.0.0.1), and a virtual environment (``VENV``) whose ``bin/activate`` puts ``mlip-run`` and
``mlip-lammps-run`` of this Python first on PATH. In the layout of a heterogeneous job
(``SLURM_HET_SIZE=2``) the i-PI template's two ``mlip-run`` sides then run a short path-integral job
with the toy model over an inet socket. tests/test_slurm.py submits the templates to a real SLURM
(``make test-hpc``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mlip_server.ipi.launcher import build_parser
from mlip_server.paths import checkout_root

TEMPLATE = checkout_root() / "hpc" / "ipi-cpu-server-gpu.slurm"


def _free_port() -> int:
    """A free TCP port in [20000, 40000), where the template puts its ports."""
    for _ in range(200):
        port = random.randrange(20000, 40000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 20000-39999")


def _stand_ins(tmp_path: Path, log: Path, run_srun: bool = True) -> Path:
    """A virtual environment (its activate script) whose bin folder has srun, scontrol, mlip-run and
    mlip-lammps-run; returns its folder (the templates' VENV)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "while args[0].startswith('-'):\n"
        "    args.pop(0)\n" + ("os.execvp(args[0], args)\n" if run_srun else "")
    )
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
    (bin_dir / "mlip-run").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m mlip_server.ipi.launcher "$@"\n'
    )
    (bin_dir / "mlip-lammps-run").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m mlip_server.lammps.cli mlip-lammps-run "$@"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return venv


def _clean_env(**settings) -> dict:
    """This environment without any of the templates' settings, plus ``settings``."""
    skip = {"VIRTUAL_ENV", "PROJECT", "MODEL", "EXPERIMENT", "STEPS", "MOLECULES", "RUN", "DECK", "DATA"}
    env = {k: v for k, v in os.environ.items() if k not in skip and not k.startswith("SLURM_")}
    env.update({k: str(v) for k, v in settings.items()}, OMP_NUM_THREADS="1")
    return env


def test_template_uses_only_project_commands():
    """Every command the job runs on a node is mlip-run (one node: in the batch shell; two: one
    srun per side); no inline Python edits the rendered input."""
    text = TEMPLATE.read_text()
    assert "<<" not in text and "python" not in text.lower()
    joined = text.replace("\\\n", " ")
    lines = [line.split() for line in joined.splitlines() if not line.strip().startswith("#")]
    sruns = [words for words in lines if words and words[0] == "srun"]
    assert len(sruns) == 2
    assert all(words[2] == "mlip-run" for words in sruns)
    direct = [words for words in lines if words and words[0] == "mlip-run"]
    assert len(direct) == 1


def test_template_runs_ipi_and_server_sides_over_inet(tmp_path, toy_model):
    log = tmp_path / "srun.jsonl"
    venv = _stand_ins(tmp_path, log)
    port = _free_port()
    job = tmp_path / "job"
    job.mkdir()
    env = _clean_env(
        VENV=str(venv),
        MODEL=toy_model,
        BEADS="2",
        STEPS="4",
        MOLECULES="8",
        DEVICE="cpu",
        SLURM_JOB_ID=str(port - 20000),
        SLURM_HET_SIZE="2",
        SLURM_JOB_NODELIST_HET_GROUP_0="cpu-node",
        MLIP_JOB_SCRIPT=str(TEMPLATE),
    )
    proc = subprocess.Popen(
        ["bash", str(TEMPLATE)],
        cwd=job,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    job_id = port - 20000
    run = job / f"run-{job_id}"
    logs = {p.name: p.read_text() for p in job.glob("*.log")} | {
        p.name: p.read_text() for p in run.glob("*.log")
    }
    assert proc.returncode == 0, (out, logs)

    # the two commands, as srun got them, parse as mlip-run command lines
    # (the group-0 line runs in the background: the two may reach srun in either order)
    calls = sorted(json.loads(line) for line in log.read_text().splitlines())
    assert [c[0] for c in calls] == ["--het-group=0", "--het-group=1"]
    assert all(c[1] == "mlip-run" for c in calls)
    ipi, server = (build_parser().parse_args(c[2:]) for c in calls)
    assert (ipi.side, ipi.transport, ipi.host, ipi.port, ipi.out) == (
        "ipi",
        "inet",
        "127.0.0.1",
        port,
        str(run),
    )
    assert (ipi.experiment, ipi.beads, ipi.steps, ipi.molecules) == ("water-pimd", 2, 4, 8)
    assert (server.side, server.out, server.model, server.device, server.dtype) == (
        "server",
        str(run),
        toy_model,
        "cpu",
        "float32",
    )

    # what they made: an inet input for i-PI, one connection per bead, a finished run
    xml = (run / "input.xml").read_text()
    assert "mode='inet'" in xml and f"<address>127.0.0.1</address><port>{port}</port>" in xml
    spec = json.loads((run / "server.json").read_text())
    assert spec["addresses"] == [f"inet:127.0.0.1:{port}=none"] * 2
    assert "mlip-run: done" in logs[f"run-{job_id}.ipi-side-{job_id}.log"]
    assert "i-PI sent EXIT" in logs[f"run-{job_id}.server-side-{job_id}.log"]
    assert "the run is done" in out
    rows = [
        line
        for line in (run / "sim.out").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rows and float(rows[0].split()[0]) == 0  # stride 10 of the experiment: step 0 of 4


LAMMPS_TEMPLATE = checkout_root() / "hpc" / "lammps-domain.slurm"


def test_lammps_template_on_several_nodes_runs_commands_that_fit_together(tmp_path):
    """NODES=2: hpc/lammps-domain.slurm with a recording srun (no SLURM): the servers' and the ranks'
    commands parse as the project's command lines, the ranks read the shipped deck (copied into RUN)
    and DATA, and node 1's servers serve exactly node 1's ranks."""
    from mlip_server.lammps.cli import build_bridge_parser, build_run_parser
    from mlip_server.lammps.runner import domain_server_commands, node_addresses
    from mlip_server.structures import write_water_data

    log = tmp_path / "srun.jsonl"
    venv = _stand_ins(tmp_path, log, run_srun=False)
    data = write_water_data(8, tmp_path / "water.data")
    env = _clean_env(VENV=venv, DATA=data.name, SLURM_JOB_ID="77", NODES="2", RANKS="4", SERVERS="2")
    done = subprocess.run(
        ["bash", str(LAMMPS_TEMPLATE)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    servers = next(c for c in calls if "mlip-lammps-run" in c)
    bridge = next(c for c in calls if "mlip-lammps" in c)
    s = build_run_parser().parse_args(servers[servers.index("mlip-lammps-run") + 1 :])
    b = build_bridge_parser().parse_args(bridge[bridge.index("mlip-lammps") + 1 :])
    assert (s.side, s.address, s.ranks_per_node, s.servers, s.device, s.model) == (
        "servers",
        "unix:mlip-77",
        4,
        2,
        "cuda",
        None,  # the shipped model
    )
    assert (b.decomposition, b.address, b.elements) == ("domain", "unix:mlip-77", ["O", "H"])
    assert b.deck == str(tmp_path / "lammps-77" / "in.water-large") and Path(b.deck).is_file()
    assert b.var == [["data", str(data)]]
    assert "--ntasks=8" in bridge and "--ntasks-per-node=4" in bridge
    node1 = node_addresses(s.address, s.ranks_per_node, 1)
    assert node1 == [f"unix:/tmp/ipi_mlip-77-{r}" for r in (4, 5, 6, 7)]
    commands = [[str(w) for w in c] for c in domain_server_commands("m.pt", node1, 2, "cuda")]
    assert [c[c.index("--device") + 1] for c in commands] == ["cuda:0", "cuda:1"]
    served = [[c[k + 1] for k, w in enumerate(c) if w == "--address"] for c in commands]
    assert served == [node1[0::2], node1[1::2]]


def test_lammps_template_on_one_node_starts_then_resumes(tmp_path):
    """One node: the first job runs mlip-lammps-run on the shipped deck (the data file left to it:
    no --var data), RANKS ranks from the job's tasks, checkpoints; a job that finds RUN/run.json
    runs mlip-lammps-run --resume RUN instead (a recording stand-in for mlip-lammps-run)."""
    from mlip_server.lammps.cli import build_run_parser

    log = tmp_path / "calls.jsonl"
    venv = _stand_ins(tmp_path, tmp_path / "srun.jsonl")
    real = (venv.parent / "bin" / "mlip-lammps-run").read_text().splitlines()[1]
    (venv.parent / "bin" / "mlip-lammps-run").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --list ]; then ' + real + "; fi\n"
        f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\" >> {log}\n"
    )
    env = _clean_env(VENV=venv, SLURM_JOB_ID="78", SLURM_NTASKS="2", STEPS="40", DEVICE="cpu")
    run = tmp_path / "lammps-78"
    for job in (1, 2):
        done = subprocess.run(
            ["bash", str(LAMMPS_TEMPLATE)], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.rstrip().endswith(f"the run is done ({run})")
        run.mkdir(exist_ok=True)
        (run / "run.json").write_text("{}")
    start, resume = (json.loads(line) for line in log.read_text().splitlines())
    a = build_run_parser().parse_args(start)
    assert (a.deck, a.np, a.servers, a.device, a.model, a.checkpoint_every, a.workdir) == (
        "water-large",
        2,
        1,
        "cpu",
        None,
        1000,
        str(run),
    )
    assert a.var == [["steps", "40"]] and a.molecules == 512  # the data file: mlip-lammps-run's own
    assert resume == ["--resume", str(run)]


def test_ipi_template_runs_an_experiment_on_a_structure_file(tmp_path, toy_model):
    """STRUCTURE=FILE: water-pimd-rpc-mts on the user's own cell through the template (one node, the
    real mlip-run): --structure passed, no --molecules, the run done."""
    import ase.io

    from mlip_server.structures import water_box

    venv = _stand_ins(tmp_path, tmp_path / "srun.jsonl")
    ase.io.write(tmp_path / "cell.extxyz", water_box(8, seed=3), format="extxyz")
    job = tmp_path / "job"
    job.mkdir()
    env = _clean_env(
        VENV=venv,
        MODEL=toy_model,
        EXPERIMENT="water-pimd-rpc-mts",
        STRUCTURE=tmp_path / "cell.extxyz",
        BEADS=2,
        STEPS=2,
        DEVICE="cpu",
        DTYPE="float64",
        SLURM_JOB_ID="79",
        MLIP_JOB_SCRIPT=TEMPLATE,
    )
    done = subprocess.run(
        ["bash", str(TEMPLATE)], cwd=job, env=env, capture_output=True, text=True, timeout=300
    )
    run = job / "run-79"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    options = json.loads((run / "run.json").read_text())["options"]
    assert (options["structure"], options["molecules"], options["beads"], options["steps"]) == (
        str(tmp_path / "cell.extxyz"),
        None,
        2,
        2,
    )
    assert done.stdout.rstrip().endswith(f"the run is done ({run})")


IPI_BAD = [
    (dict(EXPERIMENT="water-nvtt"), "unknown experiment 'water-nvtt'"),
    (dict(EXPERIMENT="molecule-nve", MOLECULES="8"), "molecule-nve does not use --molecules"),
    (dict(EXPERIMENT="ice-geop"), "needs --structure FILE"),
    (dict(EXPERIMENT="replay"), "replay needs --trajectory FILE"),
    (dict(STEPS="1e4"), "STEPS=1e4: give a whole number"),
    (dict(BEADS="0"), "BEADS=0: give a whole number"),
    (dict(MODEL="missing.pt"), "MODEL=missing.pt: no such file"),
    (dict(STRUCTURE="missing.xyz"), "STRUCTURE=missing.xyz: no such file"),
    (dict(DEVICE="gpu"), "DEVICE=gpu: cpu, cuda or cuda:N"),
    (dict(LAYOUT="three"), "LAYOUT=three: one of"),
    (dict(VENV="/nonexistent"), "VENV=/nonexistent is not a virtual environment"),
    (dict(VENV="", PATH="/usr/bin:/bin"), "mlip-run is not on PATH"),
    (dict(SLURM_JOB_ID=""), "submit this script with sbatch"),
]
LAMMPS_BAD = [
    (dict(MODEL="missing.pt"), "MODEL=missing.pt: no such file"),
    (dict(DECK="water-nvtt"), "DECK=water-nvtt: neither a file nor a shipped deck"),
    (dict(DATA="missing.data"), "DATA=missing.data: no such file"),
    (dict(STEPS="ten"), "STEPS=ten: give a whole number"),
    (dict(RANKS="2", SERVERS="4"), "SERVERS=4 exceeds RANKS=2"),
    (dict(NODES="2"), "NODES=2: give DATA=FILE"),
    (dict(CHAIN="yes"), "CHAIN=yes: 1 (resubmit at the walltime) or 0"),
    (dict(VENV="", PATH="/usr/bin:/bin"), "mlip-lammps-run is not on PATH"),
]
BAD = [(TEMPLATE, *case) for case in IPI_BAD] + [(LAMMPS_TEMPLATE, *case) for case in LAMMPS_BAD]


@pytest.mark.parametrize(
    "template, settings, line",
    BAD,
    ids=[("ipi-" if t == TEMPLATE else "lammps-") + "-".join(s) for t, s, _ in BAD],
)
def test_templates_refuse_a_wrong_setting_in_one_line(tmp_path, template, settings, line):
    """A missing or wrong setting (tests/test_slurm.py submits two of these to SLURM): exit status 2,
    the whole output one line naming it, nothing written, nothing started."""
    venv = _stand_ins(tmp_path, tmp_path / "srun.jsonl")
    job = tmp_path / "job"
    job.mkdir()
    env = _clean_env(VENV=venv, SLURM_JOB_ID="80", DEVICE="cpu", MLIP_JOB_SCRIPT=template)
    env.update(settings)
    done = subprocess.run(["bash", str(template)], cwd=job, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert len(output.splitlines()) == 1 and line in output and ": error: " in output, output
    assert not list(job.iterdir()) and not (tmp_path / "srun.jsonl").exists()
