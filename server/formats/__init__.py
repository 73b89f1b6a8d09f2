"""Model formats behind one interface (:class:`~mlip_server.formats.base.ModelAdapter`).

Each module of this package is one format and registers itself with two module constants,
``__FORMAT_NAME__`` and ``__FORMAT_CLASS__`` (see :mod:`mlip_server.formats.base`); a new format is
one new file. :func:`load_model` asks the formats, highest ``priority`` first, whether they
recognise a file: ``nequip`` (NequIP/Allegro files of ``nequip-compile``: ``.nequip.pt2``,
``.nequip.pth``), ``compiled`` (AOTInductor ``.pt2`` packages of ``mlip-compile``), ``metatomic``
(``AtomisticModel`` archives: metatrain's PET and every other metatomic model), ``mace`` (MACE's
TorchScript files), then ``contract`` (any other TorchScript file: the project's model contract,
ARCHITECTURE.md). Serving a file as its compiled package (``--compile``) is
:func:`mlip_server.loading.load_model`, one floor up (formats import neither the compiler nor the
evaluation core's Evaluator).
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import torch

from ..core.errors import ModelError
from .base import ModelAdapter, parse_device, parse_dtype

__all__ = ["load_model", "format_of", "formats", "ModelAdapter", "parse_device", "parse_dtype"]


def formats() -> dict[str, type[ModelAdapter]]:
    """Format name → adapter class, highest priority first."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        name, cls = getattr(module, "__FORMAT_NAME__", None), getattr(module, "__FORMAT_CLASS__", None)
        if name and cls:
            found[name] = getattr(module, cls)
    return dict(sorted(found.items(), key=lambda item: -item[1].priority))


def load_model(model, device="cpu", dtype=None) -> ModelAdapter:
    """Loads a model file of any registered format (or wraps a scripted contract module).

    Parameters
    ----------
    model : str, os.PathLike, torch.jit.ScriptModule or ModelAdapter
        A model file, an in-memory contract module, or an already loaded model.
    device : str
        ``cpu``, ``cuda``, ``cuda:N``.
    dtype : str, optional
        ``float32`` or ``float64``: contract models are cast to it; None (the default): the
        precision the model was exported in (contract: its parameters' dtype, float64 for a
        model without floating parameters; metatomic: the dtype it declares, always).

    Raises
    ------
    ModelError
        Missing file, unreadable file, or a model that breaks its format's contract.
    """
    if isinstance(model, ModelAdapter):
        return model
    device, dtype = parse_device(device), parse_dtype(dtype)
    if isinstance(model, torch.jit.ScriptModule):
        from .contract import ContractModel

        return ContractModel.from_module(model, "<in-memory>", device, dtype)
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"expected a model path or a ScriptModule, got {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ModelError(f"model file {path!r} not found: pass --model PATH to a TorchScript file")
    kind = format_of(path)
    if kind is None:  # pragma: no cover - the contract format takes every file
        raise ModelError(f"{path!r} is of no known model format ({', '.join(formats())})")
    return kind.load(path, device, dtype)


def format_of(path: str) -> type[ModelAdapter] | None:
    """The format that recognises the file at ``path`` (asked highest priority first, cheaply: no
    loading); the contract format, the fallback, takes every file."""
    return next((cls for cls in formats().values() if cls.recognizes(path)), None)
