"""Model files → loaded models → an :class:`~mlip_server.core.evaluator.Evaluator`.

The one module that joins the model formats (:mod:`mlip_server.formats`), the compile cache
(:mod:`mlip_server.compile`) and the evaluation core: the core evaluates models that are
already loaded and imports no format (ARCHITECTURE.md, "The floors"). Every front end (the
i-PI server, ``<ffdirect>``, the ASE calculator, ``--check``, the tools of training/ and
analysis/) loads its model here::

    from mlip_server.loading import load_evaluator

    ev = load_evaluator("model.pt", dtype="float64")  # or a list of files: a committee
    result = ev.compute([structure], "2i")[0]

``$MLIP_COMPILE`` (:data:`COMPILE_VARIABLE`; ``--compile`` of mlip-server, mlip-run and
mlip-lammps-run sets it) serves TorchScript contract files as their compiled packages from the
cache (:func:`mlip_server.compile.cached_model`).
"""

from __future__ import annotations

import os
from typing import Optional

from .compile import cached_model
from .core.committee import Committee
from .core.errors import ModelError
from .core.evaluator import Evaluator
from .formats import ModelAdapter
from .formats import load_model as load_format

__all__ = ["load_model", "load_committee", "load_evaluator", "COMPILE_VARIABLE"]

COMPILE_VARIABLE = "MLIP_COMPILE"
"""Set to 1 (``--compile`` of mlip-server, mlip-run, mlip-lammps-run does) to serve contract
TorchScript files as compiled packages from the cache (:func:`mlip_server.compile.cached_model`)."""


def load_model(model, device="cpu", dtype=None, compile=None) -> ModelAdapter:
    """Loads a model file of any registered format (or wraps a scripted contract module), or its
    compiled package from the cache.

    Parameters
    ----------
    model : str, os.PathLike, torch.jit.ScriptModule or ModelAdapter
        A model file, an in-memory contract module, or an already loaded model.
    device : str
        ``cpu``, ``cuda``, ``cuda:N``.
    dtype : str, optional
        ``float32`` or ``float64``: contract models are cast to it; None (the default): the
        precision the model was exported in (:func:`mlip_server.formats.load_model`).
    compile : bool, optional
        Serve a TorchScript contract file as its AOTInductor package, compiled on first use into
        the cache (TorchScript after one warning line when that fails); None: whether
        ``$MLIP_COMPILE`` is set to 1.

    Raises
    ------
    ModelError
        Missing file, unreadable file, or a model that breaks its format's contract.
    """
    if compile is None:
        compile = os.environ.get(COMPILE_VARIABLE, "").strip().lower() in ("1", "true", "yes")
    if compile and isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        return cached_model(os.fspath(model), device, dtype)
    return load_format(model, device, dtype)


def load_committee(models, device="cpu", dtype=None, serve: str = "mean") -> Committee:
    """Loads every member (files of any registered format, or loaded models) into a
    :class:`~mlip_server.core.committee.Committee`, which checks that they fit together."""
    missing = [m for m in models if isinstance(m, (str, os.PathLike)) and not os.path.isfile(m)]
    if missing:
        raise ModelError(f"committee member {os.fspath(missing[0])!r} not found: check the --committee paths")
    return Committee([load_model(m, device, dtype) for m in models], serve=serve)


def load_evaluator(
    model,
    device="cpu",
    dtype=None,
    max_batch_edges: Optional[int] = None,
    min_distance: float = 0.1,
    memory_budget_edges: Optional[int] = None,
    committee_serve: str = "mean",
) -> Evaluator:
    """An :class:`~mlip_server.core.evaluator.Evaluator` of a model file (or a committee of them).

    Parameters
    ----------
    model : str, torch.jit.ScriptModule, ModelAdapter, or a list of them
        A model file, a scripted contract module, or a loaded model; a list (two or more) is a
        committee (:func:`load_committee`).
    device, dtype : str
        Where and in which precision the model runs (:func:`load_model`).
    max_batch_edges, min_distance, memory_budget_edges
        The Evaluator's (:class:`~mlip_server.core.evaluator.Evaluator`).
    committee_serve : str
        ``"mean"`` or ``"first"``: what a committee serves.
    """
    if isinstance(model, (list, tuple)):
        loaded = load_committee(model, device, dtype, serve=committee_serve)
    else:
        loaded = load_model(model, device, dtype)
    return Evaluator(
        loaded,
        max_batch_edges=max_batch_edges,
        min_distance=min_distance,
        memory_budget_edges=memory_budget_edges,
    )
