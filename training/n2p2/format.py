"""The n2p2/RuNNer file format of Behler–Parrinello potentials: ``input.nn``, ``scaling.data``,
``weights.ZZZ.data`` (ZZZ = atomic number).

:func:`read_n2p2` reads such a directory into an :class:`N2P2Potential` (plain numpy, the
files' units); :class:`mlip_server.training.n2p2.model.N2P2Model` turns that into a TorchScript module.

What is supported (the rest is refused with :class:`N2P2FormatError`):

* symmetry functions type 2 (radial, ``exp(-η (r - rs)²) fc(r)``) and type 3 (angular,
  ``2^(1-ζ) Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(-η Σ (r - rs)²) fc(r_ij) fc(r_ik) fc(r_jk)``,
  each unordered neighbour pair counted once, as in n2p2's ``SymFncExpAngn``);
* ``cutoff_type`` 0–8 of n2p2 (2 = tanh³(1 − r/rc)) with the optional inner-cutoff ``alpha``;
* scaling: ``scale_symmetry_functions``, ``center_symmetry_functions`` (both: G' = Smin +
  (Smax − Smin)(G − mean)/(max − min)), ``scale_symmetry_functions_sigma``,
  ``scale_min_short``/``scale_max_short`` (defaults 0 and 1, as in n2p2);
* ``global_hidden_layers_short``, ``global_nodes_short``, ``global_activation_short``
  (n2p2 letters l t s p r g c S e h), ``element_nodes_short``;
* n2p2 data-set normalisation (``mean_energy``, ``conv_energy``, ``conv_length``) and
  ``atom_energy`` offsets, applied as in n2p2's prediction:
  E = Σ_i [E_NN,i / conv_energy + mean_energy + atom_energy(Z_i)].

Network input order: within an element, n2p2 sorts the symmetry functions by
(type, rc, η, rs, ζ, λ, neighbour element indices) — not the order of the
``symfunction_short`` lines. Rows of ``scaling.data`` and the network inputs follow that
order. Weights files hold one value per line (extra columns of n2p2's format are ignored),
layer by layer: the weight matrix with input index slow (``w[i * n_out + j]``), then the
layer's biases.

Units. The files' length and energy units are arguments (default Bohr and Hartree, as in
RuNNer and the revPBE0-D3 water potential). Conversions use :mod:`ase.units`
(CODATA 2014: 1 Bohr = 0.52917721067 Å, 1 Hartree = 27.21138602 eV).
"""

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import ase.data
import ase.units
import numpy as np

from mlip_server.core.errors import MLIPError

__all__ = [
    "N2P2FormatError",
    "SymmetryFunction",
    "ElementNetwork",
    "N2P2Potential",
    "read_n2p2",
    "ACTIVATIONS",
    "CUTOFF_TYPES",
]

#: n2p2 activation letters → integer codes used inside the TorchScript module.
ACTIVATIONS = {"l": 0, "t": 1, "s": 2, "p": 3, "r": 4, "g": 5, "c": 6, "S": 7, "e": 8, "h": 9}
#: n2p2 cutoff function types (CutoffFunction::CutoffType).
CUTOFF_TYPES = {
    0: "hard",
    1: "cos",
    2: "tanhu",
    3: "tanh",
    4: "exp",
    5: "poly1",
    6: "poly2",
    7: "poly3",
    8: "poly4",
}
_SUPPORTED_SF = (2, 3)


class N2P2FormatError(MLIPError, ValueError):
    """A file of an n2p2/RuNNer potential is missing, malformed or uses an unsupported
    feature. The message is one line: ``<file>:<line>: <problem>``."""


# -- plain description of a potential ------------------------------------------------
@dataclass(frozen=True)
class SymmetryFunction:
    """One ``symfunction_short`` line, parameters in the file's length unit.

    ``neighbours`` holds atomic numbers (one for type 2, two sorted ones for type 3).
    ``eta`` is in 1/length², ``rs`` and ``rc`` in length; ``zeta``, ``lam`` only for type 3.
    ``line`` is the 1-based line number in input.nn.
    """

    centre: int
    kind: int
    neighbours: Tuple[int, ...]
    eta: float
    rs: float
    rc: float
    zeta: float = 0.0
    lam: float = 0.0
    line: int = 0

    def sort_key(self, index_of: Dict[int, int]):
        """n2p2's order within an element: type, rc, η, rs, ζ, λ, neighbour indices."""
        return (
            self.kind,
            self.rc,
            self.eta,
            self.rs,
            self.zeta,
            self.lam,
            tuple(index_of[z] for z in self.neighbours),
        )


@dataclass
class ElementNetwork:
    """The atomic network of one element.

    ``symfuncs`` are in network-input order; ``g_min``, ``g_max``, ``g_mean``, ``g_sigma``
    are the scaling statistics (``g_sigma`` is None when scaling.data has no sigma
    column); ``layers`` is a list of (weights [n_in, n_out], biases [n_out], activation).
    """

    z: int
    symfuncs: List[SymmetryFunction]
    g_min: np.ndarray = None
    g_max: np.ndarray = None
    g_mean: np.ndarray = None
    g_sigma: Optional[np.ndarray] = None
    layers: List[Tuple[np.ndarray, np.ndarray, str]] = field(default_factory=list)

    @property
    def symbol(self) -> str:
        return ase.data.chemical_symbols[self.z]


@dataclass
class N2P2Potential:
    """Everything needed for prediction, in the files' units (see module docstring)."""

    directory: str
    elements: List[ElementNetwork]  # sorted by atomic number (n2p2's element index)
    cutoff_type: int
    cutoff_alpha: float
    scaling: str  # none | scale | center | scalecenter | scalesigma
    smin: float
    smax: float
    mean_energy: float = 0.0
    conv_energy: float = 1.0
    conv_length: float = 1.0
    atom_energy: Dict[int, float] = field(default_factory=dict)
    length_unit: float = ase.units.Bohr  # Å per file length unit
    energy_unit: float = ase.units.Hartree  # eV per file energy unit

    @property
    def species(self) -> List[int]:
        return [e.z for e in self.elements]

    @property
    def cutoff(self) -> float:
        """Largest symmetry-function cutoff, in the file's length unit."""
        return max(sf.rc for e in self.elements for sf in e.symfuncs)


# -- readers ---------------------------------------------------------------------------
def _strip(line: str) -> str:
    for mark in ("#", "!"):
        k = line.find(mark)
        if k >= 0:
            line = line[:k]
    return line.strip()


def _float(token: str, where: str, what: str) -> float:
    try:
        value = float(token.replace("D", "E").replace("d", "e"))
    except ValueError:
        raise N2P2FormatError(f"{where}: cannot read {what} from {token!r}: expected a number") from None
    if not math.isfinite(value):
        raise N2P2FormatError(f"{where}: {what} is {token!r}: expected a finite number")
    return value


def _int(token: str, where: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise N2P2FormatError(f"{where}: cannot read {what} from {token!r}: expected an integer") from None


def _read_lines(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise N2P2FormatError(
            f"{path}: file not found: an n2p2 potential needs input.nn, "
            "scaling.data and weights.ZZZ.data in one directory"
        )
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines()
    except OSError as err:
        raise N2P2FormatError(f"{path}: cannot read ({err.strerror})") from None


def _atomic_number(symbol: str, where: str) -> int:
    z = ase.data.atomic_numbers.get(symbol)
    if z is None or z == 0:
        raise N2P2FormatError(f"{where}: unknown element symbol {symbol!r}")
    return z


_REFUSED = {
    "normalize_nodes": "normalised neurons (normalize_nodes) are not implemented",
    "global_symfunction_short": "RuNNer shorthand symmetry-function keywords are not supported: "
    "list every function with symfunction_short",
    "element_symfunction_short": "RuNNer shorthand symmetry-function keywords are not supported: "
    "list every function with symfunction_short",
    "element_activation_short": "per-element activations are not implemented",
    "element_hidden_layers_short": "per-element numbers of layers are not implemented",
}


def _parse_input(path: str):
    """input.nn → (settings dict keyword → (value tokens, line), symmetry functions,
    element_nodes lines, atom_energy lines)."""
    settings: Dict[str, Tuple[List[str], int]] = {}
    symlines: List[Tuple[List[str], int]] = []
    element_nodes: List[Tuple[List[str], int]] = []
    atom_energy: List[Tuple[List[str], int]] = []
    for n, raw in enumerate(_read_lines(path), start=1):
        line = _strip(raw)
        if not line:
            continue
        key, *values = line.split()
        if key in _REFUSED:
            raise N2P2FormatError(f"{path}:{n}: {_REFUSED[key]}")
        if key == "symfunction_short":
            symlines.append((values, n))
        elif key == "element_nodes_short":
            element_nodes.append((values, n))
        elif key == "atom_energy":
            atom_energy.append((values, n))
        else:
            settings[key] = (values, n)
    return settings, symlines, element_nodes, atom_energy


def _symmetry_function(values: List[str], where: str, elements: Dict[str, int]) -> SymmetryFunction:
    if len(values) < 2:
        raise N2P2FormatError(f"{where}: symfunction_short needs '<element> <type> ...'")

    def element(token):
        if token not in elements:
            raise N2P2FormatError(f"{where}: element {token!r} is not in the 'elements' list")
        return elements[token]

    centre = element(values[0])
    kind = _int(values[1], where, "symmetry function type")
    if kind not in _SUPPORTED_SF:
        raise N2P2FormatError(
            f"{where}: symmetry function type {kind} is not supported "
            f"(supported: {', '.join(map(str, _SUPPORTED_SF))})"
        )
    if kind == 2:  # ec 2 e1 eta rs rc
        if len(values) < 6:
            raise N2P2FormatError(f"{where}: type 2 needs '<ec> 2 <e1> <eta> <rs> <rc>'")
        eta, rs, rc = (_float(values[k], where, name) for k, name in ((3, "eta"), (4, "rs"), (5, "rc")))
        sf = SymmetryFunction(centre, 2, (element(values[2]),), eta, rs, rc, line=0)
    else:  # ec 3 e1 e2 eta lambda zeta rc [rs]
        if len(values) < 8:
            raise N2P2FormatError(
                f"{where}: type 3 needs '<ec> 3 <e1> <e2> <eta> <lambda> <zeta> <rc> [<rs>]'"
            )
        eta, lam, zeta, rc = (
            _float(values[k], where, name) for k, name in ((4, "eta"), (5, "lambda"), (6, "zeta"), (7, "rc"))
        )
        rs = 0.0
        if len(values) > 8:  # optional rs, only if it is a number (RuNNer comments may follow)
            try:
                rs = float(values[8])
            except ValueError:
                rs = 0.0
        if zeta < 1.0:
            raise N2P2FormatError(f"{where}: zeta = {zeta} < 1 gives infinite forces at λcosθ = −1")
        pair = tuple(sorted((element(values[2]), element(values[3]))))
        sf = SymmetryFunction(centre, 3, pair, eta, rs, rc, zeta, lam)
    if not sf.rc > 0 or sf.eta < 0:
        raise N2P2FormatError(f"{where}: need rc > 0 and eta >= 0, got rc={sf.rc}, eta={sf.eta}")
    return sf


def _setting(settings, key, path, default=None):
    if key not in settings:
        if default is not None:
            return default
        raise N2P2FormatError(f"{path}: keyword '{key}' is missing")
    return settings[key]


def _read_scaling(path: str, elements: List[ElementNetwork]) -> None:
    """Fills g_min/g_max/g_mean/g_sigma of each element from scaling.data."""
    rows: List[Tuple[List[str], int]] = []
    lines = _read_lines(path)
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        rows.append((line.split(), n))
    expected = sum(len(e.symfuncs) for e in elements)
    k = 0
    for ie, el in enumerate(elements, start=1):
        stats = np.zeros((len(el.symfuncs), 4))
        has_sigma = True
        for isf in range(1, len(el.symfuncs) + 1):
            if k >= len(rows):
                raise N2P2FormatError(
                    f"{path}:{len(lines)}: file ends after {k} rows; expected {expected} rows "
                    f"({', '.join(f'{len(e.symfuncs)} for {e.symbol}' for e in elements)})"
                )
            tokens, n = rows[k]
            where = f"{path}:{n}"
            if len(tokens) not in (5, 6):
                raise N2P2FormatError(
                    f"{where}: expected 'element function min max mean [sigma]' "
                    f"(5 or 6 columns), found {len(tokens)}"
                )
            got = (_int(tokens[0], where, "element index"), _int(tokens[1], where, "function index"))
            if got != (ie, isf):
                raise N2P2FormatError(
                    f"{where}: expected element {ie} ({el.symbol}) function {isf}, "
                    f"found element {got[0]} function {got[1]}"
                )
            values = [_float(t, where, name) for t, name in zip(tokens[2:], ("min", "max", "mean", "sigma"))]
            if len(values) == 3:
                has_sigma = False
                values.append(0.0)
            stats[isf - 1] = values
            k += 1
        el.g_min, el.g_max, el.g_mean = stats[:, 0], stats[:, 1], stats[:, 2]
        el.g_sigma = stats[:, 3] if has_sigma else None
    for tokens, n in rows[k:]:  # RuNNer's trailing energy range line (2 numbers) is allowed
        if len(tokens) != 2:
            raise N2P2FormatError(f"{path}:{n}: unexpected row after the {expected} symmetry-function rows")


def _read_weights(path: str, el: ElementNetwork, sizes: List[int], activations: List[str]) -> None:
    """Fills el.layers from one weights file (one value per line, first column)."""
    expected = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
    lines = _read_lines(path)
    values = np.empty(expected)
    count = 0
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if count == expected:
            raise N2P2FormatError(
                f"{path}:{n}: more values than the {expected} of a "
                f"{'-'.join(map(str, sizes))} network for {el.symbol}"
            )
        values[count] = _float(line.split()[0], f"{path}:{n}", "weight")
        count += 1
    if count < expected:
        raise N2P2FormatError(
            f"{path}:{len(lines)}: file ends after {count} values; a "
            f"{'-'.join(map(str, sizes))} network for {el.symbol} needs {expected}"
        )
    k = 0
    for i in range(len(sizes) - 1):
        n_in, n_out = sizes[i], sizes[i + 1]
        w = values[k : k + n_in * n_out].reshape(n_in, n_out)
        k += n_in * n_out
        b = values[k : k + n_out]
        k += n_out
        el.layers.append((w.copy(), b.copy(), activations[i]))


def read_n2p2(
    directory: str, length_unit: float = ase.units.Bohr, energy_unit: float = ase.units.Hartree
) -> N2P2Potential:
    """Reads ``input.nn``, ``scaling.data`` and ``weights.ZZZ.data`` from ``directory``.

    Parameters
    ----------
    directory : str or path
        Folder with the three kinds of files.
    length_unit : float
        Å per length unit of the files (default: Bohr, 0.52917721067 Å).
    energy_unit : float
        eV per energy unit of the files (default: Hartree, 27.21138602 eV).

    Returns
    -------
    N2P2Potential
        The potential in the files' units (the units are stored with it).

    Raises
    ------
    N2P2FormatError
        One-line message naming the file and line of the problem.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise N2P2FormatError(
            f"{directory}: not a directory: pass the folder holding input.nn, "
            "scaling.data and weights.ZZZ.data"
        )
    inp = os.path.join(directory, "input.nn")
    settings, symlines, element_nodes, atom_energy_lines = _parse_input(inp)

    values, n = _setting(settings, "elements", inp)
    symbols = {s: _atomic_number(s, f"{inp}:{n}") for s in values}
    if not symbols:
        raise N2P2FormatError(f"{inp}:{n}: 'elements' lists no element")
    if "number_of_elements" in settings:
        v, nn = settings["number_of_elements"]
        if not v or _int(v[0], f"{inp}:{nn}", "number_of_elements") != len(symbols):
            raise N2P2FormatError(
                f"{inp}:{nn}: number_of_elements does not match the {len(symbols)} symbols of 'elements'"
            )
    zs = sorted(symbols.values())
    index_of = {z: i for i, z in enumerate(zs)}

    if "nnp_type" in settings:
        v, nn = settings["nnp_type"]
        if v and v[0] != "1":
            raise N2P2FormatError(
                f"{inp}:{nn}: nnp_type {v[0]} is not supported (only short-range NNPs, type 1)"
            )
    if "committee_mode" in settings:
        v, nn = settings["committee_mode"]
        if v and v[0].lower() != "disabled":
            raise N2P2FormatError(f"{inp}:{nn}: committee_mode {v[0]} is not supported")

    v, nn = _setting(settings, "cutoff_type", inp)
    if not v:
        raise N2P2FormatError(f"{inp}:{nn}: cutoff_type needs a value")
    cutoff_type = _int(v[0], f"{inp}:{nn}", "cutoff_type")
    if cutoff_type not in CUTOFF_TYPES:
        raise N2P2FormatError(f"{inp}:{nn}: unknown cutoff_type {cutoff_type} (n2p2 knows 0-8)")
    cutoff_alpha = _float(v[1], f"{inp}:{nn}", "cutoff alpha") if len(v) > 1 else 0.0
    if not 0.0 <= cutoff_alpha < 1.0:
        raise N2P2FormatError(f"{inp}:{nn}: cutoff alpha must be in [0, 1), got {cutoff_alpha}")

    scale = "scale_symmetry_functions" in settings
    center = "center_symmetry_functions" in settings
    sigma = "scale_symmetry_functions_sigma" in settings
    scaling = (
        "scalecenter"
        if scale and center
        else "scale"
        if scale
        else "center"
        if center
        else "scalesigma"
        if sigma
        else "none"
    )
    smin, smax = 0.0, 1.0
    for key in ("scale_min_short", "scale_max_short"):
        if key in settings:
            v, nn = settings[key]
            value = _float(v[0] if v else "", f"{inp}:{nn}", key)
            smin, smax = (value, smax) if key == "scale_min_short" else (smin, value)

    norm_keys = ("mean_energy", "conv_energy", "conv_length")
    present = [k for k in norm_keys if k in settings]
    norm = {"mean_energy": 0.0, "conv_energy": 1.0, "conv_length": 1.0}
    if present and len(present) != 3:
        raise N2P2FormatError(
            f"{inp}: use all or none of mean_energy, conv_energy, conv_length "
            f"(found only {', '.join(present)})"
        )
    for k in present:
        v, nn = settings[k]
        norm[k] = _float(v[0] if v else "", f"{inp}:{nn}", k)

    atom_energy: Dict[int, float] = {}
    for v, nn in atom_energy_lines:
        where = f"{inp}:{nn}"
        if len(v) < 2 or v[0] not in symbols:
            raise N2P2FormatError(f"{where}: atom_energy needs '<element of elements> <energy>'")
        atom_energy[symbols[v[0]]] = _float(v[1], where, "atom_energy")

    # network topology
    v, nn = _setting(settings, "global_hidden_layers_short", inp)
    n_hidden = _int(v[0] if v else "", f"{inp}:{nn}", "global_hidden_layers_short")
    v, nn = _setting(settings, "global_nodes_short", inp)
    if len(v) < n_hidden:
        raise N2P2FormatError(f"{inp}:{nn}: global_nodes_short needs {n_hidden} numbers, found {len(v)}")
    nodes = [_int(t, f"{inp}:{nn}", "number of nodes") for t in v[:n_hidden]]
    v, nn = _setting(settings, "global_activation_short", inp)
    if len(v) < n_hidden + 1:
        raise N2P2FormatError(
            f"{inp}:{nn}: global_activation_short needs {n_hidden + 1} letters, found {len(v)}"
        )
    acts = v[: n_hidden + 1]
    for a in acts:
        if a not in ACTIVATIONS:
            raise N2P2FormatError(
                f"{inp}:{nn}: unknown activation {a!r} (n2p2 letters: {' '.join(ACTIVATIONS)})"
            )
    per_element_nodes = {z: list(nodes) for z in zs}
    for v, nn in element_nodes:
        where = f"{inp}:{nn}"
        if len(v) < 3 or v[0] not in symbols:
            raise N2P2FormatError(f"{where}: element_nodes_short needs '<element> <layer> <nodes>'")
        layer = _int(v[1], where, "layer")
        if not 1 <= layer <= n_hidden:
            raise N2P2FormatError(f"{where}: layer {layer} is not a hidden layer (1..{n_hidden})")
        per_element_nodes[symbols[v[0]]][layer - 1] = _int(v[2], where, "number of nodes")

    # symmetry functions, sorted as n2p2 does
    per_element: Dict[int, List[SymmetryFunction]] = {z: [] for z in zs}
    for v, nn in symlines:
        sf = _symmetry_function(v, f"{inp}:{nn}", symbols)
        per_element[sf.centre].append(SymmetryFunction(**{**sf.__dict__, "line": nn}))
    elements = []
    for z in zs:
        sfs = sorted(per_element[z], key=lambda s: s.sort_key(index_of))
        if not sfs:
            raise N2P2FormatError(f"{inp}: no symfunction_short for element {ase.data.chemical_symbols[z]}")
        for a, b in zip(sfs, sfs[1:]):
            if a.sort_key(index_of) == b.sort_key(index_of):
                raise N2P2FormatError(f"{inp}:{b.line}: duplicate of the symmetry function on line {a.line}")
        elements.append(ElementNetwork(z, sfs))

    scaling_file = os.path.join(directory, "scaling.data")
    if scaling == "none" and not os.path.isfile(scaling_file):
        for el in elements:  # statistics are not used without scaling
            el.g_min = el.g_max = el.g_mean = np.zeros(len(el.symfuncs))
    else:
        _read_scaling(scaling_file, elements)
    for el in elements:
        if scaling in ("scale", "scalecenter") and np.any(el.g_max <= el.g_min):
            k = int(np.argmax(el.g_max <= el.g_min))
            raise N2P2FormatError(
                f"{os.path.join(directory, 'scaling.data')}: {el.symbol} function {k + 1} "
                "has max <= min: cannot scale"
            )
        if scaling == "scalesigma" and (el.g_sigma is None or np.any(el.g_sigma <= 0)):
            raise N2P2FormatError(
                f"{os.path.join(directory, 'scaling.data')}: scale_symmetry_functions_sigma "
                f"needs a positive sigma column for {el.symbol}"
            )
        sizes = [len(el.symfuncs)] + per_element_nodes[el.z] + [1]
        _read_weights(os.path.join(directory, f"weights.{el.z:03d}.data"), el, sizes, acts)

    return N2P2Potential(
        directory,
        elements,
        cutoff_type,
        cutoff_alpha,
        scaling,
        smin,
        smax,
        norm["mean_energy"],
        norm["conv_energy"],
        norm["conv_length"],
        atom_energy,
        float(length_unit),
        float(energy_unit),
    )
