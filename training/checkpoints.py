"""Checkpoints of a training run (:mod:`mlip_server.training.train`): atomic saves, RNG states, the model
of a checkpoint and its TorchScript export, and the SIGTERM/SIGINT request that makes the loop
write one and stop.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import torch

from .pet import PET, build, to_torchscript

__all__ = [
    "save_checkpoint",
    "model_from_checkpoint",
    "export",
    "StopRequest",
    "rng_state",
    "set_rng_state",
    "cpu_state",
]


def rng_state() -> dict:
    """The states of torch's, numpy's and Python's random generators (and CUDA's, if present)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    """Restores the generators from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_state(module) -> dict:
    """A detached CPU copy of ``module``'s state dict."""
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


def save_checkpoint(path: Path, state: dict):
    """Saves ``state`` to ``path`` atomically (temporary file + rename): an interruption never
    leaves half a file.

    Parameters
    ----------
    path : Path
        Checkpoint file.
    state : dict
        What :func:`torch.save` writes.
    """
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def model_from_checkpoint(checkpoint, which: str = "best_model") -> PET:
    """The PET of a checkpoint, float32 on CPU.

    Parameters
    ----------
    checkpoint : str, Path or dict
        A checkpoint file or a loaded checkpoint.
    which : str
        ``best_model`` (lowest validation loss) or ``model`` (the latest weights).

    Returns
    -------
    PET
    """
    if not isinstance(checkpoint, dict):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = build(checkpoint["model_config"])
    state = checkpoint.get(which) or checkpoint["model"]
    model.load_state_dict(state)
    return model.float()


def export(checkpoint, path, device="cpu") -> str:
    """Exports the best model of ``checkpoint`` as TorchScript under the model contract, or,
    when ``path`` ends in ``.pt2``, as a compiled AOTInductor package for this machine (float32
    on ``device``; traced from the eager model, no TorchScript involved:
    :func:`mlip_server.compile.compile_module`). This is how a checkpoint is compiled: the
    server's ``mlip-compile`` takes TorchScript files only (it never imports training/).

    The file gets attributes ``cutoff`` (Å) and ``species``; the server loads it once (a
    contract check) before it appears under its name.

    Parameters
    ----------
    checkpoint : str, Path or dict
        A checkpoint file or a loaded checkpoint.
    path : str or Path
        TorchScript file to write (``.pt2``: a compiled package).
    device : str
        Where a package runs (``cpu``, ``cuda``, ``cuda:N``; packages only).

    Returns
    -------
    str
        ``path``.
    """
    from mlip_server.formats import load_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt2":
        from mlip_server.compile import compile_module, file_hash

        source = checkpoint if not isinstance(checkpoint, dict) else "<checkpoint>"
        digest = file_hash(checkpoint) if not isinstance(checkpoint, dict) else None
        compile_module(model_from_checkpoint(checkpoint), path, device, "float32", str(source), digest)
        return str(path)
    scripted = to_torchscript(model_from_checkpoint(checkpoint))
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(scripted, str(tmp))
    load_model(str(tmp))  # contract check (dry run) before the file appears under its name
    os.replace(tmp, path)
    return str(path)


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint after the current batch.
    A second signal interrupts at once."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handler(self, signum, frame):
        if self.signum:  # second signal: give up waiting for the batch
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
