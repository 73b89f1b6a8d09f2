"""Behler–Parrinello neural-network potentials in n2p2/RuNNer format as contract models.

* :mod:`mlip_server.training.n2p2.format`: the files (``input.nn``, ``scaling.data``, ``weights.ZZZ.data``)
  → :class:`N2P2Potential` (:func:`read_n2p2`, errors as :class:`N2P2FormatError`);
* :mod:`mlip_server.training.n2p2.model`: :class:`N2P2Model`, the TorchScript-able module under the model
  contract (Å in, eV out).

    from mlip_server.training.n2p2 import N2P2Model, read_n2p2
    model = torch.jit.script(N2P2Model(read_n2p2("../shared/data/bpnnp-revpbe0d3")))
"""

from .format import (
    ACTIVATIONS,
    CUTOFF_TYPES,
    ElementNetwork,
    N2P2FormatError,
    N2P2Potential,
    SymmetryFunction,
    read_n2p2,
)
from .model import N2P2Model, build_model

__all__ = [
    "N2P2FormatError",
    "SymmetryFunction",
    "ElementNetwork",
    "N2P2Potential",
    "read_n2p2",
    "N2P2Model",
    "build_model",
    "ACTIVATIONS",
    "CUTOFF_TYPES",
]
