"""Compiled models: AOTInductor packages (``.pt2``) of a contract model (``mlip-compile``).

A package holds, under the model name ``conservative``, one compiled program of the contract's
inputs (:mod:`mlip_server.formats.edges`)::

    conservative(edge_vectors [E,3], edge_index int64 [2,E], numbers int64 [N],
                 structure_index int64 [N], counted int8 [B])
        -> (energies [B] eV, ∂(Σ_b counted_b E_b)/∂r_e [E,3] eV/Å)

(the number of structures B is the length of ``counted``, so that it is a dynamic size of the
program rather than a constant baked into it; ``counted`` is 1 for the energy terms whose
gradient is wanted and 0 for the last, dropped structure of :func:`~mlip_server.formats.edges.pack`,
the ghost atoms of a domain-decomposed LAMMPS rank), with dynamic E ≥ 2, N ≥ 2 and B ≥ 2;
smaller batches are padded with two atoms and two edges in the dropped structure. The forces
are inside the program (autograd unfolded by ``make_fx`` before ``torch.export``), so a call
is one compiled function: no per-operator overhead, no autograd.
Forces and virials are assembled from the edge gradients as for TorchScript
(:func:`~mlip_server.formats.edges.assemble_gradients`).

A model with a direct-force head (the contract's ``direct_forces``, ``forward_direct``,
``direct_virial``) gets a second program, the model ``direct``, with the same inputs::

    direct(...) -> (energies [B] eV, forces [N,3] eV/Å, virials [B,3,3] eV)

(its ``forward_direct`` when it has one, else ``forward`` + ``direct_forces``; zero virials for a
head without ``direct_virial``, which the metadata says), served by ``--forces direct`` and
assembled as for TorchScript (:func:`~mlip_server.formats.edges.assemble_direct`).

The archive's ``extra/mlip.json`` says what the server needs without running anything: cutoff,
species, interaction range (and whether declared), whether the energy sums atomic terms, dtype,
device, the torch version it was compiled with, the programs it holds and the SHA-256 of the
source model. Packages are machine-specific (CPU instruction set, CUDA architecture, torch
version): a package compiled by another torch version is refused with the fix (compile again).
"""

from __future__ import annotations

import json
import os
import zipfile

import torch

from ..core.errors import ModelError
from .base import ModelAdapter, first_line
from .edges import assemble_direct, assemble_gradients, pack

__all__ = [
    "CompiledModel",
    "read_metadata",
    "is_package",
    "METADATA_FILE",
    "CONSERVATIVE",
    "DIRECT",
    "FORMAT_VERSION",
    "pad_inputs",
    "counted",
]

__FORMAT_NAME__ = "compiled"
__FORMAT_CLASS__ = "CompiledModel"

METADATA_FILE = "mlip.json"
"""The archive's extra file with the package's metadata (``<archive>/extra/mlip.json``)."""
CONSERVATIVE = "conservative"
"""The model name of the energies + edge gradients program."""
DIRECT = "direct"
"""The model name of the direct head's program (energies, forces, virials)."""
MIN_SIZE = 2
"""Smallest E, N and B the programs are compiled for (torch.export specialises sizes 0 and 1)."""
FORMAT_VERSION = 2
"""Version of the programs' signature (2: the last input says which energies are
differentiated; packages of version 1 differentiated every structure's energy, the dropped one
included, and are refused: compile again)."""


def counted(n_structures: int, device) -> torch.Tensor:
    """The program's last input for a batch of :func:`~mlip_server.formats.edges.pack`: 1 for the
    counted terms, 0 for the last (dropped) structure."""
    out = torch.ones(n_structures, dtype=torch.int8, device=device)
    out[-1] = 0
    return out


def is_package(path: str) -> bool:
    """Whether ``path`` is a zip archive with this project's package metadata."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{METADATA_FILE}") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_metadata(path: str) -> dict:
    """The package's ``mlip.json`` (raises :class:`ModelError` without one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            if not names:
                raise ModelError(
                    f"{path!r} is a .pt2 archive without {METADATA_FILE}: not an mlip-compile package "
                    "(compile the TorchScript model with mlip-compile MODEL --out FILE.pt2)"
                )
            return json.loads(archive.read(names[0]))
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ModelError(f"{path!r} is not a readable .pt2 package ({first_line(err)[:120]})") from None


def pad_inputs(
    vectors, edge_index, numbers, structure_index, n_structures: int, species0: int, cutoff: float
):
    """The program's inputs for a batch whose last structure is the dropped one (the contract's
    batches, :func:`~mlip_server.formats.edges.pack`), padded when E, N or B is below
    :data:`MIN_SIZE`: two extra atoms of ``species0`` with an edge each way (0.5 cutoff), in
    structure ``n_structures − 1`` (the dropped one) or a new last structure (then the original
    single structure is not counted either). Returns ``(inputs tuple, number of real edges)``."""
    n_edges, n_atoms = int(vectors.shape[0]), int(numbers.shape[0])
    if n_edges >= MIN_SIZE and n_atoms >= MIN_SIZE and n_structures >= MIN_SIZE:
        return (vectors, edge_index, numbers, structure_index, counted(n_structures, vectors.device)), n_edges
    b = max(n_structures, MIN_SIZE)
    r = 0.5 * cutoff
    extra_v = torch.tensor([[r, 0.0, 0.0], [-r, 0.0, 0.0]], dtype=vectors.dtype, device=vectors.device)
    extra_e = torch.tensor([[n_atoms, n_atoms + 1], [n_atoms + 1, n_atoms]], device=edge_index.device)
    vectors = torch.cat([vectors.detach(), extra_v])
    edge_index = torch.cat([edge_index, extra_e], dim=1)
    numbers = torch.cat([numbers, torch.full((2,), species0, dtype=numbers.dtype, device=numbers.device)])
    structure_index = torch.cat(
        [structure_index, torch.full((2,), b - 1, dtype=structure_index.dtype, device=structure_index.device)]
    )
    mask = counted(b, vectors.device)
    mask[n_structures - 1 :] = 0  # n_structures = 1: the one structure is the dropped one
    return (vectors, edge_index, numbers, structure_index, mask), n_edges


class CompiledModel(ModelAdapter):
    """An AOTInductor package written by ``mlip-compile`` (or ``mlip-server --compile``'s cache).

    Parameters
    ----------
    runner : callable
        The loaded ``conservative`` program.
    path : str
    metadata : dict
        The package's ``mlip.json``.
    device : torch.device
    """

    label = "compiled model"
    priority = 20  # before metatomic and the contract (which takes every other file)

    def __init__(self, runner, path, metadata, device, direct_runner=None):
        self.runner, self.path, self.metadata = runner, path, metadata
        self.direct_runner = direct_runner
        self.cutoff = float(metadata["cutoff"])
        self.species = [int(z) for z in metadata["species"]]
        self.device = device
        self.dtype = getattr(torch, metadata["dtype"])
        self.interaction_range = float(metadata["interaction_range"])
        self.declared_range = bool(metadata["declared_range"])
        self.direct_forces = direct_runner is not None
        self.direct_virial = self.direct_forces and bool(metadata.get("direct_virial"))

    @classmethod
    def recognizes(cls, path: str) -> bool:
        return path.endswith(".pt2") or is_package(path)

    @classmethod
    def load(cls, path, device, dtype) -> "CompiledModel":
        meta = read_metadata(path)
        if meta.get("torch") != torch.__version__:
            raise ModelError(
                f"{path!r} was compiled with torch {meta.get('torch')}, this is torch {torch.__version__}: "
                f"packages are machine-specific, compile the source model again (mlip-compile, or "
                f"mlip-server --compile)"
            )
        if torch.device(meta["device"]).type != device.type:
            raise ModelError(
                f"{path!r} was compiled for {meta['device']}, asked to run on {device}: "
                f"mlip-compile MODEL --device {device.type} (or drop --device)"
            )
        if dtype is not None and str(dtype).replace("torch.", "") != meta["dtype"]:
            raise ModelError(
                f"{path!r} was compiled in {meta['dtype']}, asked for {str(dtype).replace('torch.', '')}: "
                f"mlip-compile MODEL --dtype {str(dtype).replace('torch.', '')}"
            )
        if meta.get("format") != FORMAT_VERSION:
            raise ModelError(
                f"{path!r} is a package of format {meta.get('format')}, this server reads format "
                f"{FORMAT_VERSION}: compile the source model again (mlip-compile, or mlip-server --compile)"
            )
        if CONSERVATIVE not in meta.get("programs", []):
            raise ModelError(f"{path!r} has no {CONSERVATIVE!r} program: compile it again with mlip-compile")
        try:
            index = device.index if device.type == "cuda" and device.index is not None else -1
            from torch._inductor.package import load_package

            runner = load_package(path, CONSERVATIVE, device_index=index)
            direct = load_package(path, DIRECT, device_index=index) if DIRECT in meta["programs"] else None
        except Exception as err:  # noqa: BLE001 - the loader's errors are RuntimeErrors with C++ texts
            raise ModelError(
                f"{path!r} could not be loaded ({first_line(err)[:160]}): packages are machine-specific, "
                "compile the source model again on this machine"
            ) from None
        model = cls(runner, path, meta, device, direct)
        model.requested_dtype = dtype is not None
        from .contract import _sums_atomic_energies

        model.sums_atomic_energies = _sums_atomic_energies(
            model.energies, model.cutoff, model.species, device, model.dtype
        )
        return model

    def program(self, vectors, edge_index, numbers, structure_index, n_structures: int):
        """Energies [n_structures] and ∂E/∂r_e [E,3] of the contract's inputs (padded as needed),
        E the sum of the energies of all structures but the last (the dropped one)."""
        inputs, n_edges = pad_inputs(
            vectors.detach(), edge_index, numbers, structure_index, n_structures, self.species[0], self.cutoff
        )
        energies, grad = self.runner(*inputs)
        return energies[:n_structures], grad[:n_edges]

    def energies(self, vectors, edge_index, numbers, structure_index, n_structures: int):
        """The contract's ``forward`` (energies only), for checks."""
        return self.program(vectors, edge_index, numbers, structure_index, n_structures)[0]

    def direct_program(self, vectors, edge_index, numbers, structure_index, n_structures: int):
        """The direct head's energies [n_structures], forces [N,3] and virials [n_structures,3,3]
        (zeros without a direct virial) of the contract's inputs (padded as needed)."""
        inputs, _ = pad_inputs(
            vectors.detach(), edge_index, numbers, structure_index, n_structures, self.species[0], self.cutoff
        )
        energies, forces, virials = self.direct_runner(*inputs)
        return energies[:n_structures], forces[: numbers.shape[0]], virials[:n_structures]

    def evaluate(self, copies, direct: bool = False):
        if direct and not self.direct_forces:
            raise ModelError(
                f"model {self.path} has no direct forces (the package holds no direct program: its "
                "source model has no direct_forces method, or its head did not compile)"
            )
        batch = pack(copies, self.device, self.dtype, requires_grad=False)
        if direct:
            energies, forces, virials = self.direct_program(*batch.inputs())
            return assemble_direct(batch, energies, forces, virials if self.direct_virial else None)
        energies, grad = self.program(*batch.inputs())
        return assemble_gradients(batch, energies, grad)


def describe(path: str) -> str:
    """One line about a package (for logs)."""
    meta = read_metadata(path)
    source = os.path.basename(meta.get("source", "?"))
    return f"{path}: {meta['dtype']} on {meta['device']}, torch {meta['torch']}, from {source}"
