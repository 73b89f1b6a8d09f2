"""Rotational averaging specs: which rotations (and weights) an endpoint evaluates.

Specs (as in Langer, Pozdnyakov & Ceriotti 2024, and i-PI's ``<ffrotations>``):

==============  ==============================================================
``none``        the raw model (one evaluation)
``i``           identity and inversion (2)
``L``           Legendre/Euler ZXZ grid of order L: (2L-1)^2 L rotations (L>=2)
``Li``          the same grid plus the inverted rotations -R, same weights
``lebedev:N``   Lebedev grid of order N × N in-plane angles (i-PI's lebedev mode)
``lebedev:Ni``  the same plus inversion
``random``      one fresh uniformly random proper rotation per call (seeded)
``random-i``    the same, inverted with probability 1/2 (i-PI's ``improper``)
==============  ==============================================================

Any spec may be prefixed with ``direct`` (``direct`` alone, ``direct+2i``, ``direct+random``):
the model's direct (non-conservative) forces instead of the gradient of its energy, no backward
pass (models with a direct head only; :mod:`mlip_server.formats.edges`).

The grids come from ``ipi.utils.mathtools`` so that results agree with i-PI's own
engine-side averaging. A rotation R acts on Cartesian vectors as r' = R r.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from ipi.utils import mathtools
from ipi.utils.prng import Random

from .errors import InputError

__all__ = ["Averaging", "RotationSet", "VALID_SPECS", "DIRECT"]

VALID_SPECS = (
    "none, i, L, Li (L = 2, 3, ...), lebedev:N, lebedev:Ni, random, random-i; "
    "each may be prefixed with direct+ (direct forces)"
)
DIRECT = "direct"
"""The spec word (alone or as ``direct+SPEC``) that asks for direct forces."""
_GRID = re.compile(r"^(?:(?P<leb>lebedev:)?(?P<order>\d+))?(?P<inv>i)?$")


@dataclass
class RotationSet:
    """Rotations of one call.

    Attributes
    ----------
    matrices
        [K, 3, 3] rotation matrices (possibly improper, det = -1).
    weights
        [K] quadrature weights summing to 1; a zero weight marks the raw
        (un-rotated) evaluation added only for the diagnostics.
    raw_index
        index of the identity rotation in ``matrices`` (or None).
    """

    matrices: np.ndarray
    weights: np.ndarray
    raw_index: int | None


class Averaging:
    """One averaging spec. ``rotations()`` gives the rotation set of the next call.

    Parameters
    ----------
    spec
        a spec string (see the module docstring).
    seed
        seed of the random rotations (``random``/``random-i``); calls are
        reproducible for a given seed.
    """

    def __init__(self, spec: str = "none", seed: int = 12345):
        self.spec = spec.strip()
        self.direct = self.spec == DIRECT or self.spec.startswith(DIRECT + "+")
        """Whether the endpoint serves direct forces (``direct`` / ``direct+SPEC``)."""
        if self.direct:
            self.spec = self.spec[len(DIRECT) + 1 :]
        self._prng = None
        if self.spec in ("none", "", "0"):
            self.spec, self._fixed = "none", None
        elif self.spec in ("random", "random-i"):
            self._prng = Random(seed=seed)
            self._fixed = None
        else:
            self._fixed = _grid(self.spec)

    @property
    def is_raw(self) -> bool:
        return self.spec == "none"

    @property
    def name(self) -> str:
        """The spec as written, normalised (``none``, ``2i``, ``direct``, ``direct+2i``)."""
        if not self.direct:
            return self.spec
        return DIRECT if self.spec == "none" else f"{DIRECT}+{self.spec}"

    @property
    def n_rotations(self) -> int:
        """Number of rotations with non-zero weight (1 for none/random); a grid without the
        identity costs one more evaluation (the raw model, for the diagnostics)."""
        return 1 if self._fixed is None else int((self._fixed.weights > 0).sum())

    def rotations(self) -> RotationSet:
        if self.spec == "none":
            return RotationSet(np.eye(3)[None], np.ones(1), 0)
        if self._prng is not None:
            rot = mathtools.random_rotation(self._prng, improper=self.spec == "random-i")
            return RotationSet(np.asarray(rot)[None], np.ones(1), None)
        return self._fixed

    def __repr__(self):
        return f"Averaging({self.name!r}, {self.n_rotations} rotations)"


def _grid(spec: str) -> RotationSet:
    match = _GRID.match(spec)
    if match is None or (match["order"] is None and match["leb"]):
        raise InputError(f"unknown averaging spec {spec!r}: valid specs are {VALID_SPECS}")
    inversion = match["inv"] is not None
    order = int(match["order"]) if match["order"] else 1
    if match["leb"]:
        try:
            quad = mathtools.get_rotation_quadrature_lebedev(order)
        except ValueError:
            raise InputError(
                f"no Lebedev grid of order {order} in i-PI: use an odd order such as 3, 5, 7, 9, 11"
            ) from None
    elif order < 1:
        raise InputError(f"unknown averaging spec {spec!r}: valid specs are {VALID_SPECS}")
    else:
        quad = mathtools.get_rotation_quadrature_legendre(order)
    matrices = [np.asarray(r, dtype=np.float64) for r, _, _ in quad]
    weights = [float(w) for _, w, _ in quad]
    if inversion:  # i-PI orders them R, -R, R', -R', ...
        matrices = [m for r in matrices for m in (r, -r)]
        weights = [v for w in weights for v in (w, w)]
    matrices, weights = np.array(matrices), np.array(weights)
    weights = weights / weights.sum()
    raw = [k for k, r in enumerate(matrices) if np.allclose(r, np.eye(3), atol=1e-12)]
    if raw:
        return RotationSet(matrices, weights, raw[0])
    # add the identity with weight 0 so that every averaged call reports the raw model
    return RotationSet(np.concatenate([matrices, np.eye(3)[None]]), np.append(weights, 0.0), len(matrices))
