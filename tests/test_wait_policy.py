"""OpenMP's wait policy: left to the runtime for a lone server, PASSIVE for servers our launchers
start next to other busy processes, and a log hint on a loaded machine (``mlip_server`` module
docstring has the measurements behind the choice)."""

import os
import subprocess
import sys

import pytest

from mlip_server import machine


def test_importing_the_package_leaves_the_wait_policy_alone():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", "import os, mlip_server.ipi.serve; print(os.environ.get('OMP_WAIT_POLICY'))"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == "None"


def test_shared_cores_env_is_passive_unless_the_user_chose():
    passive = machine.shared_cores_env("cpu", True, {"PATH": "/bin"})
    assert passive == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    assert machine.shared_cores_env("cpu", True, {"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    assert machine.shared_cores_env("cpu", False, {"PATH": "/bin"}) == {"PATH": "/bin"}  # alone: as given


@pytest.mark.parametrize(
    "load, threads, policy, hinted",
    [
        (0.1, 2, None, False),  # idle cores: the runtime's default is the faster one
        (1.2, 2, None, True),  # one busy process on 2 cores: say how to fix it
        (1.2, 1, None, False),  # one thread never waits at a barrier
        (1.2, 2, "PASSIVE", False),  # the user chose
    ],
)
def test_wait_policy_hint_only_when_the_cores_are_busy(monkeypatch, load, threads, policy, hinted):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    hint = machine.wait_policy_hint(threads)
    assert (hint is not None) == hinted
    if hinted:
        assert "OMP_WAIT_POLICY=PASSIVE" in hint and f"{load:.1f} on 2 CPUs" in hint


@pytest.mark.parametrize(
    "device, ranks, servers, passive",
    [
        ("cpu", 1, 1, False),  # one rank, one server: nothing else computes while the server does
        ("cpu", 2, 1, True),  # MPI ranks poll while the server computes
        ("cpu", 1, 2, True),  # two servers on the same cores
        ("cuda", 4, 2, False),  # the GPU computes, the threads wait anyway
    ],
)
def test_lammps_servers_wait_passively_only_next_to_other_busy_processes(
    monkeypatch, device, ranks, servers, passive
):
    from mlip_server.lammps.runner import _server_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = _server_env(device, ranks, servers)
    assert (env is not None and env["OMP_WAIT_POLICY"] == "PASSIVE") == passive
