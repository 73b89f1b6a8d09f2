"""The one small interface every model format implements, and device/dtype parsing.

A format is one module in :mod:`mlip_server.formats` that defines a :class:`ModelAdapter` subclass
and names it in two module constants, as i-PI's ``pes/`` files do::

    __FORMAT_NAME__ = "myformat"
    __FORMAT_CLASS__ = "MyFormatModel"

The registry (:func:`mlip_server.formats.load_model`) finds it; nothing else changes.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..core.errors import ModelError

__all__ = ["ModelAdapter", "parse_dtype", "parse_device"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_dtype(dtype) -> torch.dtype | None:
    """``"float32"``/``"float64"`` (or a torch dtype) → torch dtype; None stays None (the model's own)."""
    if dtype is None or isinstance(dtype, torch.dtype):
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


def first_line(err: BaseException, last: bool = False) -> str:
    """The first (or last) non-empty line of an exception's text, else its type name."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    lines = text.splitlines()
    return lines[-1] if last else lines[0]


def probe_chain(model):
    """The :class:`~mlip_server.core.graph.Graph` of a 3-atom chain, each atom 0.4 × cutoff from
    the next (bent a little: nothing collinear), of the model's species in turn: what formats
    probe a loaded model on (a dry run; whether selected atoms' energies add up to the whole)."""
    import numpy as np

    from ..core.graph import Structure, build_graph

    d = 0.4 * model.cutoff
    x = np.array([[0.0, 0, 0], [d, 0.1 * d, 0], [2 * d, 0, 0.1 * d]])
    z = np.array([model.species[k % len(model.species)] for k in range(3)])
    return build_graph(Structure(x, z), "probe", set(model.species), model.cutoff, 0.0, model.path)


class ModelAdapter:
    """A loaded model of one file format, as the Evaluator sees it.

    Attributes
    ----------
    path : str
        Where it was loaded from (``"<in-memory>"`` for a module).
    cutoff : float
        Neighbour-list cutoff the Evaluator builds graphs with, Å.
    species : list of int
        Atomic numbers it supports.
    device : torch.device
        Where it runs.
    dtype : torch.dtype
        The precision it runs in.
    requested_dtype : bool
        Whether that precision was asked for (False: the model's own, the default).
    interaction_range : float
        How far an atom's energy can feel another atom, Å: the cutoff for a strictly local
        model, cutoff × message-passing layers otherwise (what a domain-decomposed run needs as
        its ghost shell).
    declared_range : bool
        Whether the model declared ``interaction_range`` (False: assumed local, = ``cutoff``).
    sums_atomic_energies : bool
        Whether its energy is a sum of per-atom terms assigned through ``structure_index``
        (checked at load time), so that the energy of a subset of atoms can be asked for.
    per_atom_energies : bool
        Whether it can also give each atom's energy term (``compute pe/atom`` of a decomposed
        LAMMPS run); a metatomic model only with a per-atom ``energy`` output.
    subset_refusal : str or None
        When the energy of a subset of atoms cannot be asked for: the one-line reason, naming the
        fix (None: it can, or the generic reason of ``sums_atomic_energies`` applies).
    direct_forces : bool
        Whether it predicts forces directly (a head, no backward pass): ``evaluate(...,
        direct=True)`` then serves its energy and those forces.
    direct_virial : bool
        Whether its direct outputs include a virial (without one a direct evaluation gives 0).
    """

    label: ClassVar[str] = "model"
    """How logs name the format (``"model"``, ``"metatomic model"``)."""
    priority: ClassVar[int] = 0
    """Formats with a higher priority are asked first whether they recognise a file."""

    path: str
    cutoff: float
    species: list
    device: torch.device
    dtype: torch.dtype
    requested_dtype: bool = False
    interaction_range: float = 0.0
    declared_range: bool = False
    sums_atomic_energies: bool = False
    per_atom_energies: bool = True
    subset_refusal: str | None = None
    direct_forces: bool = False
    direct_virial: bool = False

    def describe(self) -> list[str]:
        """What the server read from the file beyond cutoff, species and dtype (one short line
        each: the family, the file's own metadata, how species map to the model's types), for
        ``mlip-server --check`` and the server's start-up log; none by default."""
        return []

    @classmethod
    def recognizes(cls, path: str) -> bool:
        """Whether the file at ``path`` is of this format (cheap: no loading)."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str, device: torch.device, dtype: torch.dtype | None) -> "ModelAdapter":
        """Loads and checks the file; raises :class:`ModelError` with the fix. ``dtype`` None:
        the model's own precision."""
        raise NotImplementedError

    def evaluate(self, copies, direct: bool = False) -> list:
        """Energy (eV), forces [N,3] (eV/Å) and virial [3,3] (eV) of each copy, in one call
        (a list of :class:`~mlip_server.core.graph.CopyResult`).

        Parameters
        ----------
        copies : list of (Graph, numpy.ndarray)
            A graph of the Evaluator and a rotation R [3,3] (r' = R r) to evaluate it in.
            Results are in the original (un-rotated) frame: forces F R, virial Rᵀ W R.
        direct : bool
            Direct forces (models with ``direct_forces``): the energy from a forward pass and the
            forces (and virial, if any) the model predicts, no backward pass.
        """
        raise NotImplementedError
