"""Loading a TorchScript model and checking it against the model contract.

The contract (README "Model contract", DESIGN.md §3): a TorchScript module with
attributes ``cutoff: float`` (Å) and ``species: List[int]`` (atomic numbers) and

    forward(edge_vectors [E,3] Å, edge_index int64 [2,E], numbers int64 [N],
            structure_index int64 [N], n_structures: int) -> energies [B] eV

metatomic ``AtomisticModel`` files are recognised and loaded by :mod:`server.metatomic_model`
(they run in the dtype they declare).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

import torch

from .errors import ModelError

if TYPE_CHECKING:
    from .metatomic_model import MetatomicModel

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_dtype(dtype) -> torch.dtype:
    """``"float32"``/``"float64"`` (or a torch dtype) → torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def parse_device(device) -> torch.device:
    """Checks that the device exists (e.g. ``cuda`` on a machine without a GPU)."""
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ModelError(f"unknown device {device!r}: use cpu, cuda or cuda:N ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but torch sees no GPU: use --device cpu")
    return device


@dataclass
class LoadedModel:
    """A contract-checked model: the module plus its cutoff (Å) and species."""

    module: torch.jit.ScriptModule
    cutoff: float
    species: List[int]
    path: str
    device: torch.device
    dtype: torch.dtype
    metatomic: Optional["MetatomicModel"] = None  # set for metatomic AtomisticModel files


def load_model(model, device="cpu", dtype="float64") -> LoadedModel:
    """Loads a TorchScript file (or takes a scripted module) and checks the contract.

    Args:
        model: path to a ``torch.jit.save`` file, or an in-memory ScriptModule.
        device: ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``float32`` or ``float64``; the model's parameters are cast to it.

    Raises:
        ModelError: missing file, not TorchScript, missing attributes, or a dry run
        on a two-atom structure that does not return one finite energy per structure.
    """
    device, dtype = parse_device(device), parse_dtype(dtype)
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelError(f"model file {path!r} not found: pass --model PATH to a TorchScript file")
        from .metatomic_model import MetatomicModel, is_metatomic_file

        if is_metatomic_file(path):
            mt = MetatomicModel(path, device)  # runs in its declared dtype
            return LoadedModel(mt.module, mt.cutoff, mt.species, path, device, mt.dtype, metatomic=mt)
        try:
            module = torch.jit.load(path, map_location=device)
        except Exception as err:  # torch raises RuntimeError/ValueError with long texts
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(
                f"{path!r} is not a TorchScript model ({first[:120]}): export it with "
                "torch.jit.save(torch.jit.script(model), path)"
            ) from None
    elif isinstance(model, torch.jit.ScriptModule):
        path, module = "<in-memory>", model
    else:
        raise ModelError(f"expected a model path or a ScriptModule, got {type(model).__name__}")

    for name in ("cutoff", "species"):
        if not hasattr(module, name):
            raise ModelError(
                f"model {path!r} has no attribute '{name}': the contract needs "
                "`cutoff: float` (Å) and `species: List[int]` as TorchScript attributes"
            )
    cutoff = float(module.cutoff)
    species = [int(z) for z in module.species]
    if not cutoff > 0 or not species:
        raise ModelError(f"model {path!r} has cutoff={cutoff} and species={species}: both must be set")
    module = module.to(device=device, dtype=dtype)
    module.eval()
    _dry_run(module, path, cutoff, species, device, dtype)
    return LoadedModel(module, cutoff, species, path, device, dtype)


def _dry_run(module, path, cutoff, species, device, dtype):
    """Evaluates two 2-atom structures in one batch and checks shapes and gradients."""
    z = species[0]
    r = 0.5 * cutoff
    vectors = torch.tensor(
        [[r, 0, 0], [-r, 0, 0], [0, r, 0], [0, -r, 0]], dtype=dtype, device=device, requires_grad=True
    )
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]], dtype=torch.int64, device=device)
    numbers = torch.full((4,), z, dtype=torch.int64, device=device)
    structure_index = torch.tensor([0, 0, 1, 1], dtype=torch.int64, device=device)
    try:
        energies = module(vectors, edge_index, numbers, structure_index, 2)
    except Exception as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"model {path!r} failed a dry run with the contract's forward(edge_vectors, "
            f"edge_index, numbers, structure_index, n_structures): {first[:160]}"
        ) from None
    if not isinstance(energies, torch.Tensor) or tuple(energies.shape) != (2,):
        shape = tuple(energies.shape) if isinstance(energies, torch.Tensor) else type(energies).__name__
        raise ModelError(
            f"model {path!r} returned {shape} for 2 structures: forward must return energies of shape [n_structures]"
        )
    if not torch.isfinite(energies).all():
        raise ModelError(f"model {path!r} returned non-finite energies in a dry run: check its weights")
    if not energies.requires_grad:
        raise ModelError(
            f"model {path!r} energies do not depend on edge_vectors differentiably: forces need autograd"
        )
