"""The LAMMPS bridge: real LAMMPS (Python module, MPI), real mlip-server processes, real sockets.

* A Lennard-Jones TorchScript model served through the bridge reproduces LAMMPS's native
  ``pair_style lj/cut`` + ``pair_modify shift yes`` (positions, energies, pressure), on 1 and
  2 MPI ranks, in a cubic and a triclinic box.
* A water run with the toy model conserves energy, and its thermo energy equals a direct
  Evaluator call on the dumped frame.
* Failures on either side end the other with a one-line error, in bounded time; bad
  mappings are refused before the run; nothing is left in /tmp or /dev/shm.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlip_server import processes
from mlip_server.lammps import runner as lammps_run
from mlip_server.lammps.deck import DeckError, split_deck
from mlip_server.lammps.mpi import find_mpiexec, leftover_shm_files, shm_files
from mlip_server.lammps.mpi import mpi_env as bridge_env
from mlip_server.lammps.runner import LammpsRun
from mlip_server.paths import lammps_inputs_dir

DECKS = lammps_inputs_dir()

try:
    _spec = importlib.util.find_spec("lammps")
except ValueError:
    _spec = None
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
pytestmark = pytest.mark.skipif(
    _spec is None, reason="the lammps module is not installed: pip install -e .[lammps]"
)
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed: pip install -e .[lammps]")
SERVER_ARGS = ["--threads", "1"]

LJ_COMMON = """units metal
atom_style atomic
boundary p p p
read_data {data}
{forces}
neighbor 2.0 bin
neigh_modify every 1 delay 0 check yes
comm_modify cutoff 11.0
velocity all create 60.0 4928459 mom yes rot yes dist gaussian loop all
timestep 0.002
{ensemble}
thermo_style custom step pe ke etotal press pxx pyy pzz pxy pxz pyz vol
thermo_modify format float %.17g
thermo 10
dump d all custom 100 traj.dump id type x y z
dump_modify d sort id format float %.17g
run 100
"""
NATIVE = "pair_style lj/cut 8.5\npair_coeff 1 1 0.0104 3.4\npair_modify shift yes"
BRIDGE = "fix mlip all external pf/callback 1 1"
NVE = "fix nve all nve"
NPT_TRI = "fix npt all npt temp 60.0 60.0 0.1 tri 0.0 0.0 0.5"  # all 6 virial components drive the box


# --------------------------------------------------------------------------- helpers
def lmp_binary() -> str:
    return str(Path(_spec.submodule_search_locations[0]) / "lmp")


def run_native(workdir: Path, deck: Path, np_: int) -> None:
    cmd = [lmp_binary(), "-in", str(deck), "-log", "log.lammps", "-screen", "none", "-nocite"]
    if np_ > 1:
        cmd = [find_mpiexec(), "-n", str(np_)] + cmd
    done = subprocess.run(cmd, cwd=workdir, env=bridge_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def thermo(log: Path) -> dict:
    """Columns of the thermo table(s) of a LAMMPS log, as float arrays."""
    lines = log.read_text().splitlines()
    header, rows = None, []
    for line in lines:
        words = line.split()
        if words[:1] == ["Step"]:
            header = words
            continue
        if header and line.startswith("Loop time"):
            header_done = header
            header = None
            continue
        if header and len(words) == len(header):
            try:
                rows.append([float(w) for w in words])
            except ValueError:
                pass
    return {name: np.array(col) for name, col in zip(header_done, np.array(rows).T)}


def read_dump(path: Path, elements):
    import ase.io

    return ase.io.read(path, index=-1, format="lammps-dump-text", specorder=list(elements), order=True)


def argon(triclinic: bool = False):
    """256 fcc argon atoms, rattled; cell 21.0 Å (> 2 × 8.5 Å), optionally sheared."""
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=5.25, cubic=True).repeat((4, 4, 4))
    if triclinic:
        cell = np.array(atoms.cell[:])
        cell[1, 0] += 2.1  # b gets an x component (xy tilt), c gets x and y (xz, yz)
        cell[2, 0] += -1.3
        cell[2, 1] += 1.7
        atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=7)
    return atoms


def write_data(atoms, path: Path, specorder) -> Path:
    import ase.io

    ase.io.write(
        path, atoms, format="lammps-data", atom_style="atomic", specorder=list(specorder), masses=True
    )
    return path


def lj_decks(tmp_path: Path, triclinic: bool, bridged_name: str = "bridge") -> tuple[Path, Path]:
    """Folders with the same argon deck (``in.lj``), native ``lj/cut`` and through the bridge:
    NVE in the cubic box, flexible NPT in the triclinic one."""
    data = write_data(argon(triclinic), tmp_path / "argon.data", ["Ar"])
    native, bridged = tmp_path / "native", tmp_path / bridged_name
    for folder, forces in ((native, NATIVE), (bridged, BRIDGE)):
        folder.mkdir()
        deck = LJ_COMMON.format(data=data, forces=forces, ensemble=NPT_TRI if triclinic else NVE)
        (folder / "in.lj").write_text(deck)
    return native, bridged


def bridge_run(workdir: Path, deck: Path, model, elements, np_=1, timeout=120, **kwargs):
    result = lammps_run.run(
        deck,
        model,
        elements,
        np=np_,
        workdir=workdir,
        echo=False,
        server_args=SERVER_ARGS + list(kwargs.pop("server_args", [])),
        timeout=timeout,
        **kwargs,
    )
    return result


def _orphaned_sockets(before: set) -> set:
    """Bridge socket files made since ``before`` by this process, or by any process that has
    ended (``processes.unique_name`` puts the maker's PID in the name: the runner's own
    subprocesses, ``mlip-lammps-run`` started by a test, included); a live process's socket of a
    concurrent test session is its own business."""
    mine = f"ipi_lammps-{os.getpid()}-"
    left = set()
    for path in set(Path("/tmp").glob("ipi_lammps-*")) - before:
        pid = path.name.split("-")[1]
        if path.name.startswith(mine) or (pid.isdigit() and not Path(f"/proc/{pid}").exists()):
            left.add(path)
    return left


@pytest.fixture(autouse=True)
def no_leftovers():
    """Every test: no socket files of the bridge (ours or those of the processes it started) and no
    MPICH shm files left behind."""
    sockets_before = set(Path("/tmp").glob("ipi_lammps-*"))
    shm_before = shm_files()
    yield
    left = _orphaned_sockets(sockets_before)
    shm_left = leftover_shm_files(shm_before)
    for path in list(left) + list(shm_left):
        Path(path).unlink(missing_ok=True)
    assert not left, f"socket files left behind: {sorted(map(str, left))}"
    assert not shm_left, f"MPICH shm files left behind: {sorted(shm_left)}"


# --------------------------------------------------------------------------- deck parsing
def test_split_deck_finds_the_fix_line():
    parts = split_deck(
        "units metal\nread_data x\nfix   ext all external pf/callback 1 1  # the model\nrun 10\n"
    )
    assert (parts.fix_id, parts.line) == ("ext", 3)
    assert parts.head.endswith("# the model\n") and parts.tail == "run 10\n"
    cont = split_deck("read_data x\nfix ext all external &\n  pf/callback 1 1\nrun 5\n")
    assert cont.tail == "run 5\n" and cont.line == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("units metal\nrun 10\n", "no top-level"),
        ("# fix e all external pf/callback 1 1\n", "no top-level"),
        ("fix e mobile external pf/callback 1 1\n", "group 'mobile'"),
        ("fix e all external pf/callback 10 1\n", "pf/callback 1 1"),
        ("fix a all external pf/callback 1 1\nfix b all external pf/callback 1 1\n", "exactly one"),
    ],
)
def test_split_deck_refuses(text, message):
    with pytest.raises(DeckError, match=message):
        split_deck(text)


# --------------------------------------------------------------------------- physics: LJ vs native
@pytest.mark.parametrize(
    "np_, triclinic",
    [(1, False), pytest.param(2, False, marks=needs_mpi4py), pytest.param(2, True, marks=needs_mpi4py)],
)
def test_lj_matches_native_lammps(tmp_path, lj_model, np_, triclinic):
    """NVE in the cubic box; in the triclinic box NPT with a fully flexible cell, which only
    matches if all six virial components and the cell sent every step are right."""
    native, bridged = lj_decks(tmp_path, triclinic)
    run_native(native, native / "in.lj", np_)
    # the serial run goes over TCP (inet), the MPI runs over unix sockets
    address = f"inet:127.0.0.1:{processes.free_port()}" if np_ == 1 else None
    result = bridge_run(bridged, bridged / "in.lj", lj_model, ["Ar"], np_=np_, address=address)
    assert result.code == 0, (
        result.message + "\n" + result.bridge_output[-3000:] + result.server_output[-2000:]
    )
    ref, got = thermo(native / "log.lammps"), thermo(bridged / "log.lammps")
    assert len(ref["Step"]) == len(got["Step"]) == 11
    if triclinic:
        assert abs(ref["Volume"][-1] / ref["Volume"][0] - 1) > 1e-3  # the barostat did move the box
    for name in ("PotEng", "TotEng", "Press", "Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz", "Volume"):
        # relative to the largest magnitude of the column (components pass through zero)
        scale = np.abs(ref[name]).max()
        assert np.abs(got[name] - ref[name]).max() <= 1e-8 * scale, (name, got[name] - ref[name])
    a, b = read_dump(native / "traj.dump", ["Ar"]), read_dump(bridged / "traj.dump", ["Ar"])
    assert np.abs(a.positions - b.positions).max() < 1e-6
    assert np.abs(a.positions - argon(triclinic).positions).max() > 0.05  # the atoms did move


# --------------------------------------------------------------------------- physics: water
@pytest.fixture(scope="session")
def water_data(tmp_path_factory):
    """128 water molecules (384 atoms) from the project's builder, as a LAMMPS data file."""
    from mlip_server.structures import write_water_data

    return write_water_data(128, tmp_path_factory.mktemp("water") / "water-128.data", seed=3)


def test_water_nve_conserves_energy_and_matches_the_evaluator(tmp_path, toy_model, water_data):
    """The shipped NVE deck, 0.25 fs × 200 steps on 384 atoms (the 1536-atom box takes ~0.1 s
    per force call on this 2-core machine: too slow for the test suite), with the server
    averaging the non-invariant toy model over identity + inversion ('i')."""
    result = bridge_run(
        tmp_path,
        DECKS / "in.water-nve",
        toy_model,
        ["O", "H"],
        server_args=["--average", "i"],
        variables=[("data", water_data), ("dt", 0.25), ("steps", 200), ("thermo", 10), ("dump", 200)],
    )
    assert result.code == 0, result.message + "\n" + result.bridge_output[-3000:]
    t = thermo(tmp_path / "log.lammps")
    assert t["Step"][-1] == 200
    drift = np.abs(t["TotEng"] - t["TotEng"][0]).max()
    heat = np.abs(t["KinEng"] - t["KinEng"][0]).max()
    n = 384
    # measured: max |ΔE| ≈ 7e-4 eV/atom while the toy model heats the box by ~450 eV
    assert drift / n < 2.5e-3, drift / n
    assert drift < 0.01 * heat, (drift, heat)  # forces are the gradient of the energy LAMMPS reports
    from mlip_server.core.evaluator import Structure
    from mlip_server.loading import load_evaluator

    frame = read_dump(tmp_path / "water-nve.lammpstrj", ["O", "H"])
    assert frame.get_chemical_formula() == "H256O128" and frame.pbc.all()
    evaluator = load_evaluator(toy_model)
    averaged = evaluator.compute([Structure.from_ase(frame)], "i")[0].energy
    raw = evaluator.compute([Structure.from_ase(frame)])[0].energy
    assert averaged == pytest.approx(t["PotEng"][-1], rel=1e-10, abs=0)
    # the server's diagnostics reach LAMMPS as f_mlip[1] (raw energy) and f_mlip[2] (averaged − raw)
    assert raw == pytest.approx(t["f_mlip[1]"][-1], rel=1e-10, abs=0)
    assert abs(raw - averaged) > 1e-6  # the toy model is not inversion-invariant (|Δ| ~ 1e-4 eV here)
    assert t["f_mlip[2]"][-1] == pytest.approx(averaged - raw, rel=1e-6, abs=1e-9)


# --------------------------------------------------------------------------- failures
def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _lj_deck(tmp_path, tail: str, steps=100) -> Path:
    data = write_data(argon(), tmp_path / "argon.data", ["Ar"])
    text = LJ_COMMON.format(data=data, forces=BRIDGE, ensemble=NVE).replace("thermo 10", "thermo 1")
    deck = tmp_path / "in.lj"
    deck.write_text(text.replace("run 100", f"run {steps}") + tail)
    return deck


def test_lammps_error_after_connect_ends_the_server(tmp_path, lj_model):
    deck = _lj_deck(tmp_path, "bogus_command 1 2\n", steps=3)
    t0 = time.monotonic()
    result = bridge_run(tmp_path, deck, lj_model, ["Ar"])
    assert time.monotonic() - t0 < 60
    assert result.code == 1 and result.bridge_code == 1 and result.server_code == 1
    assert "Unknown command: bogus_command" in result.message
    bridge_errors = [l for l in result.bridge_output.splitlines() if "error:" in l]
    assert len(bridge_errors) == 1 and "Traceback" not in result.bridge_output, result.bridge_output
    assert "without EXIT" in lammps_run.error_line(result.server_output)


@pytest.mark.parametrize("np_", [pytest.param(2, marks=needs_mpi4py)])  # skipped, not 1 rank, without mpi4py
def test_server_killed_mid_run_halts_lammps(tmp_path, lj_model, np_):
    import signal

    deck = _lj_deck(tmp_path, "", steps=100000)
    job = LammpsRun(deck, lj_model, ["Ar"], np=np_, workdir=tmp_path, echo=False, server_args=SERVER_ARGS)
    try:
        job.start()
        relay = job._relays["lammps.out"]
        _wait_for(
            lambda: sum(l.split()[:1] == ["5"] for l in relay.lines) > 0 or job.bridge.poll() is not None,
            60,
            "5 MD steps",
        )
        assert job.bridge.poll() is None, relay.text
        os.killpg(job.server.pid, signal.SIGKILL)
        t0 = time.monotonic()
        result = job.wait(timeout=60)
    finally:
        job.stop()
    assert time.monotonic() - t0 < 30
    assert result.server_code == -signal.SIGKILL and result.bridge_code == 1
    line = lammps_run.error_line(result.bridge_output)
    assert "force server" in line and "died or hung" in line and "LAMMPS halted" in line, (
        result.bridge_output[-2000:]
    )
    assert "killed by signal 9" in result.message


@pytest.mark.parametrize(
    "elements, edit, message",
    [
        (["O"], None, "LAMMPS atom type 2 has no element"),
        (["O", "H"], ("units           metal", "units           real"), "use 'units metal'"),
    ],
)
def test_bad_mapping_is_refused_before_the_run(tmp_path, toy_model, water_data, elements, edit, message):
    deck = DECKS / "in.water-nve"
    if edit:
        deck = tmp_path / "in.edited"
        deck.write_text((DECKS / "in.water-nve").read_text().replace(*edit))
    result = bridge_run(tmp_path, deck, toy_model, elements, variables=[("data", water_data)])
    assert result.code == 2 and result.server_code is None  # the server was never started
    assert message in result.message
    errors = [l for l in result.bridge_output.splitlines() if "error:" in l]
    assert len(errors) == 1 and "Traceback" not in result.bridge_output
    assert "Step" not in (tmp_path / "log.lammps").read_text()


def test_model_without_an_element_stops_the_waiting_bridge(tmp_path, lj_model, water_data):
    t0 = time.monotonic()
    result = bridge_run(
        tmp_path, DECKS / "in.water-nve", lj_model, ["O", "H"], variables=[("data", water_data)]
    )
    assert time.monotonic() - t0 < 40  # not the bridge's 120 s connect time-out
    assert result.code == 2 and result.server_code == 2
    assert "does not support" in result.message and "[1, 8]" in result.message
    assert "Step" not in (tmp_path / "log.lammps").read_text()


def test_no_server_connecting_is_a_one_line_error(tmp_path, water_data):
    name = processes.unique_name("lammps")
    cmd = [
        sys.executable,
        "-m",
        "mlip_server.lammps.cli",
        "mlip-lammps",
        str(DECKS / "in.water-nve"),
        "--address",
        f"unix:{name}",
        "-e",
        "O",
        "H",
        "--var",
        "data",
        str(water_data),
        "--connect-timeout",
        "1",
    ]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=tmp_path, env=bridge_env(), capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 30
    assert done.returncode == 2
    errors = [l for l in done.stderr.splitlines() if "error:" in l]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"no force server connected to unix:/tmp/ipi_{name} within 1 s: start mlip-server" in errors[0]
    assert not os.path.exists(f"/tmp/ipi_{name}")
    assert (tmp_path / "lammps-init.xyz").exists()


def test_ctrl_c_on_the_launcher_stops_everything(tmp_path, lj_model):
    import signal

    deck = _lj_deck(tmp_path, "", steps=100000)
    cmd = [
        sys.executable,
        "-m",
        "mlip_server.lammps.cli",
        "mlip-lammps-run",
        str(deck),
        "--model",
        lj_model,
        "-e",
        "Ar",
        "--out",
        str(tmp_path / "run"),
        "--threads",
        "1",
    ]
    launcher = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    try:
        for line in launcher.stdout:
            seen.append(line)
            if line.split()[:1] == ["3"]:  # thermo of step 3: the run is going
                break
        # the first Ctrl-C asks for a clean stop (tests/test_lammps_production.py); a second one
        # stops everything at once
        launcher.send_signal(signal.SIGINT)
        time.sleep(0.2)
        launcher.send_signal(signal.SIGINT)
        out = "".join(seen) + launcher.communicate(timeout=30)[0]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, out
    assert "interrupted" in out
    socket_file = re.search(r"listening on unix:(\S+);", out).group(1)
    assert not os.path.exists(socket_file)
    run_dir = str(tmp_path / "run")
    alive = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if run_dir.encode() in cmdline.read_bytes():
                alive.append(cmdline.parent.name)
        except OSError:
            pass
    assert not alive, f"processes of the run still alive: {alive}"
