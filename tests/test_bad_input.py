"""Bad input: each case gives a one-line error naming the problem; nothing hangs."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mlip_server import processes
from mlip_server.core.errors import InputError, ModelError
from mlip_server.core.evaluator import Structure
from mlip_server.ipi.serve import main as server_main
from mlip_server.loading import load_evaluator
from mlip_server.protocol import HEADERS

SERVER = [sys.executable, "-m", "mlip_server.ipi.serve"]


class FakeIPI:
    """A listening unix socket that plays i-PI badly, with mlip-server connected to it."""

    def __init__(self, tmp_path, model, atoms, *server_args):
        self.name = processes.unique_name("mlip-test")
        self.path = processes.unix_socket_path(self.name)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(30)
        structure = tmp_path / "init.xyz"
        atoms.write(structure)
        self.proc = subprocess.Popen(
            SERVER
            + [
                "--model",
                model,
                "--structure",
                str(structure),
                "--address",
                f"unix:{self.name}",
                *server_args,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.conn, _ = self.listener.accept()

    def handshake(self):
        self.conn.sendall(HEADERS["STATUS"])
        assert self.conn.recv(12) == HEADERS["NEEDINIT"]
        self.conn.sendall(HEADERS["INIT"] + np.int32(0).tobytes() + np.int32(0).tobytes())
        self.conn.sendall(HEADERS["STATUS"])
        assert self.conn.recv(12) == HEADERS["READY"]

    def posdata(self, positions_bohr, h=np.eye(3) * 20.0, natoms=None):
        natoms = len(positions_bohr) if natoms is None else natoms
        return (
            HEADERS["POSDATA"]
            + h.T.tobytes()
            + np.linalg.inv(h).T.tobytes()
            + np.int32(natoms).tobytes()
            + np.ascontiguousarray(positions_bohr, dtype=np.float64).tobytes()
        )

    def finish(self, timeout=30):
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            self.conn.close()
            self.listener.close()
            os.unlink(self.path)
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.returncode, err.strip()


@pytest.fixture
def molecule():
    from mlip_server.structures import water_molecule

    return water_molecule(center=(5.0, 5.0, 5.0))


def _error_line(err):
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def test_malformed_header(tmp_path, toy_model, molecule):
    fake = FakeIPI(tmp_path, toy_model, molecule)
    fake.handshake()
    fake.conn.sendall(b"HELLO WORLD!")
    code, err = fake.finish()
    assert code == 1 and "malformed header" in _error_line(err)


@pytest.mark.parametrize("natoms", [-5, 0, 200_000_000])
def test_absurd_natoms(tmp_path, toy_model, molecule, natoms):
    fake = FakeIPI(tmp_path, toy_model, molecule)
    fake.handshake()
    fake.conn.sendall(fake.posdata(np.zeros((0, 3)), natoms=natoms))
    code, err = fake.finish()
    assert code == 1 and "absurd atom count" in _error_line(err)


def test_peer_closes_mid_message(tmp_path, toy_model, molecule):
    fake = FakeIPI(tmp_path, toy_model, molecule)
    fake.handshake()
    fake.conn.sendall(fake.posdata(molecule.positions * 1.8897261)[:40])
    fake.conn.close()
    code, err = fake.finish()
    assert code == 1 and "in the middle of POSDATA" in _error_line(err)


def test_peer_stalls_mid_message(tmp_path, toy_model, molecule):
    fake = FakeIPI(tmp_path, toy_model, molecule, "--timeout", "1")
    fake.handshake()
    fake.conn.sendall(fake.posdata(molecule.positions * 1.8897261)[:40])
    t0 = time.monotonic()
    code, err = fake.finish()
    assert code == 1 and "no data for 1 s" in _error_line(err)
    assert time.monotonic() - t0 < 10


def test_peer_dies_without_exit(tmp_path, toy_model, molecule):
    fake = FakeIPI(tmp_path, toy_model, molecule)
    fake.handshake()
    fake.conn.close()
    code, err = fake.finish()
    assert code == 1 and "without EXIT" in _error_line(err)


@pytest.mark.parametrize("case, message", [("nan", "NaN"), ("overlap", "overlap"), ("count", "sent 2 atoms")])
def test_bad_positions(tmp_path, toy_model, molecule, case, message):
    fake = FakeIPI(tmp_path, toy_model, molecule)
    fake.handshake()
    pos = molecule.positions * 1.8897261
    if case == "nan":
        pos[1, 2] = np.nan
    elif case == "overlap":
        pos[2] = pos[1] + 0.05
    else:
        pos = pos[:2]
    fake.conn.sendall(fake.posdata(pos))
    code, err = fake.finish()
    assert code == 1 and message in _error_line(err)


def test_exit_is_clean(tmp_path, toy_model, molecule):
    fake = FakeIPI(tmp_path, toy_model, molecule)
    fake.handshake()
    fake.conn.sendall(fake.posdata(molecule.positions * 1.8897261) + HEADERS["STATUS"])
    assert fake.conn.recv(12) == HEADERS["HAVEDATA"]
    fake.conn.sendall(HEADERS["GETFORCE"])
    reply = b""
    while len(reply) < 12 + 8 + 4 + 72 + 72 + 4:
        reply += fake.conn.recv(4096)
    assert reply[:12] == HEADERS["FORCEREADY"]
    assert np.frombuffer(reply[20:24], np.int32)[0] == 3
    fake.conn.sendall(HEADERS["EXIT"])
    code, err = fake.finish()
    assert code == 0, err


def test_no_ipi_times_out(tmp_path, toy_model, molecule, capsys):
    molecule.write(tmp_path / "m.xyz")
    t0 = time.monotonic()
    code = server_main(
        [
            "--model",
            toy_model,
            "--structure",
            str(tmp_path / "m.xyz"),
            "--address",
            f"unix:{processes.unique_name('mlip-test')}",
            "--connect-timeout",
            "0.5",
        ]
    )
    assert code == 1 and time.monotonic() - t0 < 5
    assert "no i-PI server listening" in capsys.readouterr().err


def _run_cli(tmp_path, capsys, model, *extra, molecule=None):
    from mlip_server.structures import water_molecule

    (molecule or water_molecule()).write(tmp_path / "m.xyz")
    code = server_main(
        [
            "--model",
            str(model),
            "--structure",
            str(tmp_path / "m.xyz"),
            "--address",
            "unix:never-used",
            "--connect-timeout",
            "0.1",
            *extra,
        ]
    )
    return code, _error_line(capsys.readouterr().err)


def test_missing_and_garbage_model_files(tmp_path, capsys):
    code, line = _run_cli(tmp_path, capsys, tmp_path / "nope.pt")
    assert code == 2 and "not found" in line
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all")
    code, line = _run_cli(tmp_path, capsys, tmp_path / "garbage.pt")
    assert code == 2 and "is not a TorchScript model" in line and "torch.jit.save" in line
    assert all(
        name in line for name in ("metatomic", "mace_create_lammps_model", ".nequip.pt2", "mlip-compile")
    )


class _NoCutoff(torch.nn.Module):
    species: list[int]

    def __init__(self):
        super().__init__()
        self.species = [1, 8]

    def forward(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        return edge_vectors.sum()


class _WrongShape(torch.nn.Module):
    cutoff: float
    species: list[int]

    def __init__(self, nan: bool = False):
        super().__init__()
        self.cutoff, self.species, self.nan = 3.0, [1, 8], nan

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        e = (edge_vectors**2).sum()
        if self.nan:
            return e.repeat(n_structures) * float("nan")
        return e


@pytest.mark.parametrize(
    "module, message",
    [
        (_NoCutoff(), "no attribute 'cutoff'"),
        (_WrongShape(), "must return energies of shape [n_structures]"),
        (_WrongShape(nan=True), "non-finite energies"),
    ],
)
def test_contract_violations(tmp_path, capsys, module, message):
    path = tmp_path / "bad.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    with pytest.raises(ModelError, match="bad.pt"):
        load_evaluator(str(path))
    code, line = _run_cli(tmp_path, capsys, path)
    assert code == 2 and message in line


def test_wrong_signature(tmp_path):
    class TwoArgs(torch.nn.Module):
        cutoff: float
        species: list[int]

        def __init__(self):
            super().__init__()
            self.cutoff, self.species = 3.0, [1]

        def forward(self, edge_vectors: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
            return edge_vectors.sum().unsqueeze(0)

    path = tmp_path / "sig.pt"
    torch.jit.save(torch.jit.script(TwoArgs()), str(path))
    with pytest.raises(ModelError, match="failed a dry run"):
        load_evaluator(str(path))


def test_unknown_element(tmp_path, capsys, toy_model):
    from ase import Atoms

    code, line = _run_cli(
        tmp_path, capsys, toy_model, molecule=Atoms("OHAu", positions=[[0, 0, 0], [1, 0, 0], [0, 2, 0]])
    )
    assert code == 2 and "[79]" in line
    with pytest.raises(InputError, match=r"79 \(Au\) is not supported"):
        load_evaluator(toy_model).compute([Structure(np.eye(3) * 2, [8, 1, 79])])


def test_unknown_average_spec(tmp_path, capsys, toy_model):
    code, line = _run_cli(tmp_path, capsys, toy_model, "--average", "7q")
    assert code == 2 and "unknown averaging spec '7q'" in line and "lebedev:N" in line


def test_model_returning_nan_forces_is_reported(tmp_path):
    class Sqrt(torch.nn.Module):
        cutoff: float
        species: list[int]

        def __init__(self):
            super().__init__()
            self.cutoff, self.species = 3.0, [1]

        def forward(
            self,
            edge_vectors: torch.Tensor,
            edge_index: torch.Tensor,
            numbers: torch.Tensor,
            structure_index: torch.Tensor,
            n_structures: int,
        ) -> torch.Tensor:
            d = (edge_vectors**2).sum(1)
            e = torch.zeros(n_structures, dtype=edge_vectors.dtype)
            return e.index_add(0, structure_index[edge_index[0]], torch.log(d - 1.0))

    ev = load_evaluator(torch.jit.script(Sqrt()))
    with pytest.raises(ModelError, match="non-finite"):
        ev.compute([Structure(np.array([[0.0, 0, 0], [0.5, 0, 0]]), [1, 1])])
