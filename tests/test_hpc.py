"""hpc/ipi-cpu-server-gpu.slurm runs only project commands, and they work together.

No SLURM here: the script runs under bash with stand-ins for ``srun`` (records its arguments,
drops its own options, runs the rest) and ``scontrol`` (the i-PI host is 127.0.0.1), and a
project whose ``.venv/bin/activate`` puts ``mlip-run`` of this Python first on PATH. In the
layout of a heterogeneous job (``SLURM_HET_SIZE=2``) its two ``mlip-run`` sides then run a short
path-integral job with the toy model over an inet socket. tests/test_slurm.py submits the
templates to a real SLURM (``make test-hpc``).
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


def _stand_ins(tmp_path: Path, log: Path) -> Path:
    """A fake project (activate script) and bin folder with srun, scontrol and mlip-run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "while args[0].startswith('-'):\n"
        "    args.pop(0)\n"
        "os.execvp(args[0], args)\n"
    )
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
    (bin_dir / "mlip-run").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m mlip_server.ipi.launcher "$@"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    project = tmp_path / "project"
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return project


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
    project = _stand_ins(tmp_path, log)
    port = _free_port()
    job = tmp_path / "job"
    job.mkdir()
    env = dict(
        os.environ,
        PROJECT=str(project),
        MODEL=toy_model,
        BEADS="2",
        STEPS="4",
        MOLECULES="8",
        DEVICE="cpu",
        SLURM_JOB_ID=str(port - 20000),
        SLURM_HET_SIZE="2",
        SLURM_JOB_NODELIST_HET_GROUP_0="cpu-node",
        MLIP_JOB_SCRIPT=str(TEMPLATE),
        OMP_NUM_THREADS="1",
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


def test_lammps_template_runs_only_project_commands_that_fit_together(tmp_path):
    """Renders hpc/lammps-domain.slurm with a recording srun (no SLURM): both commands parse as
    the project's command lines, and node 1's servers serve exactly node 1's ranks."""
    from mlip_server.lammps.cli import build_bridge_parser, build_run_parser
    from mlip_server.lammps.runner import domain_server_commands, node_addresses

    log = tmp_path / "srun.jsonl"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    (bin_dir / "srun").chmod(0o755)
    project = tmp_path / "project"
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    env = dict(os.environ, PROJECT=str(project), SLURM_JOB_ID="77", NODES="2", RANKS="4", SERVERS="2")
    done = subprocess.run(
        ["bash", str(LAMMPS_TEMPLATE)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    servers = next(c for c in calls if "mlip-lammps-run" in c)
    bridge = next(c for c in calls if "mlip-lammps" in c)
    s = build_run_parser().parse_args(servers[servers.index("mlip-lammps-run") + 1 :])
    b = build_bridge_parser().parse_args(bridge[bridge.index("mlip-lammps") + 1 :])
    assert (s.side, s.address, s.ranks_per_node, s.servers, s.device) == (
        "servers",
        "unix:mlip-77",
        4,
        2,
        "cuda",
    )
    assert (b.decomposition, b.address, b.elements) == ("domain", "unix:mlip-77", ["O", "H"])
    assert "--ntasks=8" in bridge and "--ntasks-per-node=4" in bridge
    node1 = node_addresses(s.address, s.ranks_per_node, 1)
    assert node1 == [f"unix:/tmp/ipi_mlip-77-{r}" for r in (4, 5, 6, 7)]
    commands = [[str(w) for w in c] for c in domain_server_commands("m.pt", node1, 2, "cuda")]
    assert [c[c.index("--device") + 1] for c in commands] == ["cuda:0", "cuda:1"]
    served = [[c[k + 1] for k, w in enumerate(c) if w == "--address"] for c in commands]
    assert served == [node1[0::2], node1[1::2]]
