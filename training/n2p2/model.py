"""The Behler–Parrinello network of an n2p2/RuNNer potential as a TorchScript contract model.

:class:`N2P2Model` takes an :class:`~mlip_server.training.n2p2.format.N2P2Potential` (read by
:func:`~mlip_server.training.n2p2.format.read_n2p2`) and is a ``torch.nn.Module`` under the project's model
contract (ARCHITECTURE.md): ``forward(edge_vectors, edge_index, numbers, structure_index,
n_structures) -> energies``, with attributes ``cutoff`` (Å) and ``species``.

Units: the model takes Å and returns eV; inside, lengths are converted to the files' unit
(``length_unit`` of the potential, default Bohr) and energies from the files' unit (default
Hartree) as in n2p2's prediction.

Implementation. Everything is vectorised: radial terms per edge, angular terms per
triplet (i, j, k) built inside ``forward`` from the edge list (edges sorted by centre,
all pairs j<k inside each centre's block by index arithmetic), with r_jk = r_ik − r_ij
(so |r_jk|² = r_ij² + r_ik² − 2 r_ij·r_ik), which also holds for periodic images. Triplets of
element combinations no function uses, or with r_jk beyond the cutoff, are dropped before any
differentiable work. Forces come from autograd through the edge vectors; all operations are
twice differentiable.

Compiling (``mlip-compile``, issue 28). No Python branch depends on tensor values outside
TorchScript: the numbers of pairs are one ``sum`` (``.item()``, a data-dependent size when
traced), ``repeat_interleave`` is told its output size, an element without atoms adds nothing
instead of being skipped, and outside TorchScript an unsupported atomic number is an assertion
op. The TorchScript → FX converter cannot take the scripted module (loops over lists of
floats, the ``while`` of :func:`_integer_power`), so ``mlip-compile`` rebuilds the eager module
from the TorchScript file (:func:`from_torchscript`) and traces that. The TorchScript exports'
predictions are bitwise those of the code before these changes.
"""

import math
from typing import Dict, List, Tuple

import ase.units
import numpy as np
import torch

from .format import ACTIVATIONS, N2P2Potential, SymmetryFunction, read_n2p2

__all__ = ["N2P2Model", "build_model", "from_torchscript"]


# -- TorchScript building blocks ----------------------------------------------------------
def _activation(x: torch.Tensor, kind: int) -> torch.Tensor:
    if kind == 0:
        return x
    if kind == 1:
        return torch.tanh(x)
    if kind == 2:
        return torch.sigmoid(x)
    if kind == 3:
        return torch.nn.functional.softplus(x)
    if kind == 4:
        return torch.relu(x)
    if kind == 5:
        return torch.exp(-0.5 * x * x)
    if kind == 6:
        return torch.cos(x)
    if kind == 7:
        return 1.0 - torch.sigmoid(x)
    if kind == 8:
        return torch.exp(-x)
    return x * x  # 9: harmonic


def _cutoff_function(d: torch.Tensor, rc: float, alpha: float, kind: int) -> torch.Tensor:
    """n2p2 cutoff functions for d < rc (callers drop d >= rc, where fc = 0)."""
    if kind == 2:
        t = torch.tanh(1.0 - d / rc)
        return t * t * t
    if kind == 3:
        t = torch.tanh(1.0 - d / rc)
        return t * t * t / (math.tanh(1.0) ** 3)
    if kind == 0:
        return torch.ones_like(d)
    rci = alpha * rc
    x = ((d - rci) / (rc - rci)).clamp(min=0.0)
    if kind == 1:
        return 0.5 * (torch.cos(math.pi * x) + 1.0)
    if kind == 4:
        return torch.exp(1.0 - 1.0 / (1.0 - x * x))
    if kind == 5:
        return (2.0 * x - 3.0) * x * x + 1.0
    if kind == 6:
        return ((15.0 - 6.0 * x) * x - 10.0) * x * x * x + 1.0
    if kind == 7:
        return (x * (x * (20.0 * x - 70.0) + 84.0) - 35.0) * x**4 + 1.0
    return (x * (x * ((315.0 - 70.0 * x) * x - 540.0) + 420.0) - 126.0) * x**5 + 1.0


class _RadialGroup(torch.nn.Module):
    """Type-2 functions of one (centre element, neighbour element, rc): G [N, n]."""

    centre: int
    neighbour: int
    rc: float
    alpha: float
    cutoff_type: int

    def __init__(
        self,
        centre: int,
        neighbour: int,
        rc: float,
        alpha: float,
        cutoff_type: int,
        eta: List[float],
        rs: List[float],
    ):
        super().__init__()
        self.centre, self.neighbour = centre, neighbour
        self.rc, self.alpha, self.cutoff_type = rc, alpha, cutoff_type
        self.register_buffer("eta", torch.tensor(eta, dtype=torch.float64))
        self.register_buffer("rs", torch.tensor(rs, dtype=torch.float64))

    def forward(
        self,
        d: torch.Tensor,
        d_plain: torch.Tensor,
        centre: torch.Tensor,
        centre_elem: torch.Tensor,
        neighbour_elem: torch.Tensor,
        n_atoms: int,
    ) -> torch.Tensor:
        sel = torch.nonzero(
            (centre_elem == self.centre) & (neighbour_elem == self.neighbour) & (d_plain < self.rc)
        ).view(-1)
        dd = d.index_select(0, sel)
        fc = _cutoff_function(dd, self.rc, self.alpha, self.cutoff_type)
        eta, rs = self.eta.to(d.dtype), self.rs.to(d.dtype)
        x = dd.unsqueeze(1) - rs
        values = torch.exp(-eta * x * x) * fc.unsqueeze(1)
        out = torch.zeros((n_atoms, eta.shape[0]), dtype=d.dtype, device=d.device)
        return out.index_add(0, centre.index_select(0, sel), values)


def _integer_power(x: torch.Tensor, n: int) -> torch.Tensor:
    """x**n for an integer n >= 1 by repeated squaring (cheaper than pow, exact grads)."""
    result = torch.ones_like(x)
    first = True
    base = x
    while n > 0:
        if n % 2 == 1:
            result = base if first else result * base
            first = False
        n = n // 2
        if n > 0:
            base = base * base
    return result


def _total(repeats: torch.Tensor) -> int:
    """Σ repeats as an int (0 for none): the number of pairs. One sum, no branch on the number
    of entries (the same integer as the last entry's offset + repeats); traced for export
    (mlip-compile) it is a data-dependent size, declared ≥ 0."""
    if torch.jit.is_scripting():
        total = int(repeats.sum())
    else:  # .item(): an unbacked size when traced (int() of a traced tensor would guard on it)
        total = repeats.sum().item()
        torch.ops.aten.sym_constrain_range_for_size.default(total, min=0)
    return total


def _pairs_within(centres: torch.Tensor, n_atoms: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (p, q), p < q, of positions with equal centre, as (repeats of p, q).

    ``centres`` must be sorted. Returns ``repeats`` [m] (entry p is paired with the
    ``repeats[p]`` entries after it in its centre's block) and ``q`` [P]; the first member
    of pair n is ``repeat_interleave(arange(m), repeats)[n]``. Only index arithmetic and
    sequential expansions, no loop over atoms."""
    m = centres.shape[0]
    counts = torch.bincount(centres, minlength=n_atoms)
    end = torch.cumsum(counts, 0).index_select(0, centres)  # one past the block of each entry
    position = torch.arange(m, device=centres.device)
    repeats = end - 1 - position
    offset = torch.cumsum(repeats, 0) - repeats  # first pair of each entry
    total = _total(repeats)
    q = torch.arange(total, device=centres.device) - torch.repeat_interleave(
        offset - position - 1, repeats, output_size=total
    )
    return repeats, q


def _pairs_across(
    centres_a: torch.Tensor, centres_b: torch.Tensor, n_atoms: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (p in a, q in b) with equal centre, as (repeats of p, q); ``centres_b`` sorted."""
    counts_b = torch.bincount(centres_b, minlength=n_atoms)
    start_b = torch.cumsum(counts_b, 0) - counts_b
    repeats = counts_b.index_select(0, centres_a)
    offset = torch.cumsum(repeats, 0) - repeats
    total = _total(repeats)
    q = torch.arange(total, device=centres_a.device) - torch.repeat_interleave(
        offset - start_b.index_select(0, centres_a), repeats, output_size=total
    )
    return repeats, q


class _AngularGroup(torch.nn.Module):
    """Type-3 functions of one (centre element, neighbour pair, rc, rs): G [N, n].

    Works on the triplets of its pair class (edge ids j, k with a common centre). The
    (ζ, λ) and η values of the group's functions are evaluated once per distinct value
    and combined by index. r_jk² = r_ij² + r_ik² − 2 r_ij·r_ik, cos θ = r_ij·r_ik/(r_ij r_ik).
    """

    slot: int
    rc: float
    rs: float
    alpha: float
    cutoff_type: int
    needs_mask: bool
    zl_zeta: List[float]
    zl_lam: List[float]
    eta_list: List[float]
    eta_of_column: List[int]
    zl_of_column: List[int]

    def __init__(
        self,
        slot: int,
        class_rc: float,
        rc: float,
        rs: float,
        alpha: float,
        cutoff_type: int,
        eta: List[float],
        zeta: List[float],
        lam: List[float],
    ):
        super().__init__()
        self.slot = slot
        self.rc, self.rs, self.alpha, self.cutoff_type = rc, rs, alpha, cutoff_type
        self.needs_mask = rc < class_rc
        etas = sorted(set(eta))
        zls = sorted(set(zip(zeta, lam)))
        self.zl_zeta = [float(z) for z, _ in zls]
        self.zl_lam = [float(l) for _, l in zls]
        self.eta_list = [float(e) for e in etas]
        self.eta_of_column = [etas.index(e) for e in eta]
        self.zl_of_column = [zls.index(p) for p in zip(zeta, lam)]

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        z: torch.Tensor,
        d: torch.Tensor,
        t_j: torch.Tensor,
        t_k: torch.Tensor,
        t_centre: torch.Tensor,
        djk_plain: torch.Tensor,
        d_plain: torch.Tensor,
        n_atoms: int,
    ) -> torch.Tensor:
        """``x, y, z, d``: components and length of the edge vectors [E] (file units)."""
        if self.needs_mask:
            sel = torch.nonzero(
                (djk_plain < self.rc)
                & (d_plain.index_select(0, t_j) < self.rc)
                & (d_plain.index_select(0, t_k) < self.rc)
            ).view(-1)
            t_j, t_k, t_centre = (
                t_j.index_select(0, sel),
                t_k.index_select(0, sel),
                t_centre.index_select(0, sel),
            )
        fc_edge = _cutoff_function(d, self.rc, self.alpha, self.cutoff_type)  # valid for d < rc
        # 1-D gathers: their backward scatters into [E] buffers (cheap), unlike row selects
        dij, dik = d.index_select(0, t_j), d.index_select(0, t_k)
        dot = (
            x.index_select(0, t_j) * x.index_select(0, t_k)
            + y.index_select(0, t_j) * y.index_select(0, t_k)
            + z.index_select(0, t_j) * z.index_select(0, t_k)
        )
        d2 = dij * dij + dik * dik
        djk = torch.sqrt((d2 - 2.0 * dot).clamp(min=0.0))
        cos = dot / (dij * dik)
        fc = (
            fc_edge.index_select(0, t_j)
            * fc_edge.index_select(0, t_k)
            * _cutoff_function(djk, self.rc, self.alpha, self.cutoff_type)
        )
        if self.rs == 0.0:
            s = 2.0 * (d2 - dot)
        else:
            s = (dij - self.rs) ** 2 + (dik - self.rs) ** 2 + (djk - self.rs) ** 2
        radial: List[torch.Tensor] = []
        for eta in self.eta_list:
            radial.append(torch.exp(-eta * s) * fc)
        angular: List[torch.Tensor] = []
        for zeta, lam in zip(self.zl_zeta, self.zl_lam):
            if lam == 1.0:
                base = 1.0 + cos
            elif lam == -1.0:
                base = 1.0 - cos
            else:
                base = 1.0 + lam * cos
            if zeta == float(int(zeta)) and zeta <= 64.0 and abs(lam) <= 1.0:
                # base >= 0 up to rounding, and an integer power needs no clamp
                angular.append(_integer_power(base, int(zeta)))
            else:  # n2p2: the term is 0 where 1 + λ cos θ <= 0
                angular.append(torch.pow(base.clamp(min=0.0), zeta))
        columns: List[torch.Tensor] = []
        for e, k in zip(self.eta_of_column, self.zl_of_column):
            out = torch.zeros(n_atoms, dtype=d.dtype, device=d.device).index_add(
                0, t_centre, radial[e] * angular[k]
            )
            norm = 2.0 ** (1.0 - self.zl_zeta[k])
            columns.append(out if norm == 1.0 else out * norm)
        return torch.stack(columns, dim=1)


class _Dense(torch.nn.Module):
    activation: int

    def __init__(self, weight: np.ndarray, bias: np.ndarray, activation: int):
        super().__init__()
        self.activation = activation
        self.register_buffer("weight", torch.tensor(weight, dtype=torch.float64))
        self.register_buffer("bias", torch.tensor(bias, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(self.bias.to(x.dtype), x, self.weight.to(x.dtype))
        return _activation(y, self.activation)


class _ElementNet(torch.nn.Module):
    """Scaling + atomic network of one element; returns atomic energies in eV."""

    element: int
    energy_scale: float
    energy_shift: float

    def __init__(
        self,
        element: int,
        columns: List[int],
        shift: np.ndarray,
        scale: np.ndarray,
        smin: float,
        layers,
        energy_scale: float,
        energy_shift: float,
    ):
        super().__init__()
        self.element = element
        self.energy_scale, self.energy_shift = energy_scale, energy_shift
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.int64))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))
        self.register_buffer("smin", torch.full((len(columns),), float(smin), dtype=torch.float64))
        self.layers = torch.nn.ModuleList([_Dense(w, b, ACTIVATIONS[a]) for w, b, a in layers])

    def raw(self, descriptors: torch.Tensor) -> torch.Tensor:
        """Unscaled symmetry functions of this element's atoms [n, n_sf], network order."""
        return descriptors.index_select(1, self.columns)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        dt = descriptors.dtype
        x = (self.raw(descriptors) - self.shift.to(dt)) * self.scale.to(dt) + self.smin.to(dt)
        for layer in self.layers:
            x = layer(x)
        return x.view(-1) * self.energy_scale + self.energy_shift


class N2P2Model(torch.nn.Module):
    """A Behler–Parrinello potential under the model contract (Å in, eV out).

    Build it from :func:`~mlip_server.training.n2p2.format.read_n2p2` and ``torch.jit.script`` it.
    Computations run in the dtype of ``edge_vectors`` (float64 recommended; parameters are
    kept in float64 and cast).

    Parameters
    ----------
    potential : N2P2Potential
        The potential as read from its files.

    Attributes
    ----------
    cutoff : float
        Largest symmetry-function cutoff, Å.
    species : list of int
        Supported atomic numbers.
    """

    cutoff: float
    species: List[int]
    interaction_range: float
    n_elements: int
    inv_length_unit: float
    cutoff_file: float
    max_functions: int
    class_centre: List[int]
    class_a: List[int]
    class_b: List[int]
    class_rc: List[float]
    pair_elements_c: List[int]
    pair_elements_a: List[int]
    pair_rc: List[float]

    def __init__(self, potential: N2P2Potential):
        super().__init__()
        pot = potential
        zs = pot.species
        index_of = {z: i for i, z in enumerate(zs)}
        ne = len(zs)
        self.species = list(zs)
        self.n_elements = ne
        self.inv_length_unit = 1.0 / pot.length_unit
        self.cutoff_file = float(pot.cutoff)
        self.cutoff = float(pot.cutoff * pot.length_unit)
        self.interaction_range = self.cutoff  # strictly local: atomic energies of the neighbourhood
        lookup = torch.full((max(zs) + 1,), -1, dtype=torch.int64)
        for i, z in enumerate(zs):
            lookup[z] = i
        self.register_buffer("z_to_index", lookup)

        # group the functions; each group owns a contiguous block of descriptor columns
        radial: Dict[tuple, List[SymmetryFunction]] = {}
        angular: Dict[tuple, List[SymmetryFunction]] = {}
        for el in pot.elements:
            for sf in el.symfuncs:
                c = index_of[sf.centre]
                nb = tuple(index_of[z] for z in sf.neighbours)
                if sf.kind == 2:
                    radial.setdefault((c, nb[0], sf.rc), []).append(sf)
                else:
                    pair_class = (c * ne + nb[0]) * ne + nb[1]
                    angular.setdefault((pair_class, sf.rc, sf.rs), []).append(sf)
        column: Dict[SymmetryFunction, int] = {}
        offset = 0
        radial_groups, angular_groups = [], []
        for (c, a, rc), sfs in radial.items():
            radial_groups.append(
                _RadialGroup(
                    c, a, rc, pot.cutoff_alpha, pot.cutoff_type, [s.eta for s in sfs], [s.rs for s in sfs]
                )
            )
            for k, s in enumerate(sfs):
                column[s] = offset + k
            offset += len(sfs)
        # angular: one triplet set ("slot") per (centre, neighbour pair) class
        class_keys = sorted({pc for pc, _, _ in angular})
        class_rc = {pc: max(rc for q, rc, _ in angular if q == pc) for pc in class_keys}
        self.class_centre = [pc // (ne * ne) for pc in class_keys]
        self.class_a = [(pc // ne) % ne for pc in class_keys]
        self.class_b = [pc % ne for pc in class_keys]
        self.class_rc = [float(class_rc[pc]) for pc in class_keys]
        # (centre, neighbour) element pairs whose edges enter some angular class
        pair_rc: Dict[Tuple[int, int], float] = {}
        for c, a, b, rc in zip(self.class_centre, self.class_a, self.class_b, self.class_rc):
            for key in ((c, a), (c, b)):
                pair_rc[key] = max(pair_rc.get(key, 0.0), rc)
        self.pair_elements_c = [key[0] for key in sorted(pair_rc)]
        self.pair_elements_a = [key[1] for key in sorted(pair_rc)]
        self.pair_rc = [pair_rc[key] for key in sorted(pair_rc)]
        for (pc, rc, rs), sfs in angular.items():
            slot = class_keys.index(pc)
            angular_groups.append(
                _AngularGroup(
                    slot,
                    class_rc[pc],
                    rc,
                    rs,
                    pot.cutoff_alpha,
                    pot.cutoff_type,
                    [s.eta for s in sfs],
                    [s.zeta for s in sfs],
                    [s.lam for s in sfs],
                )
            )
            for k, s in enumerate(sfs):
                column[s] = offset + k
            offset += len(sfs)
        self.radial = torch.nn.ModuleList(radial_groups)
        self.angular = torch.nn.ModuleList(angular_groups)

        nets = []
        for i, el in enumerate(pot.elements):
            n = len(el.symfuncs)
            if pot.scaling == "none":
                shift, scale = np.zeros(n), np.ones(n)
            elif pot.scaling == "scale":
                shift, scale = el.g_min, (pot.smax - pot.smin) / (el.g_max - el.g_min)
            elif pot.scaling == "center":
                shift, scale = el.g_mean, np.ones(n)
            elif pot.scaling == "scalecenter":
                shift, scale = el.g_mean, (pot.smax - pot.smin) / (el.g_max - el.g_min)
            else:  # scalesigma
                shift, scale = el.g_mean, (pot.smax - pot.smin) / el.g_sigma
            smin = pot.smin if pot.scaling in ("scale", "scalecenter", "scalesigma") else 0.0
            e_scale = pot.energy_unit / pot.conv_energy
            e_shift = pot.energy_unit * (pot.mean_energy + pot.atom_energy.get(el.z, 0.0))
            nets.append(
                _ElementNet(
                    i, [column[s] for s in el.symfuncs], shift, scale, smin, el.layers, e_scale, e_shift
                )
            )
        self.nets = torch.nn.ModuleList(nets)
        self.max_functions = max(len(el.symfuncs) for el in pot.elements)

    # -- helpers ---------------------------------------------------------------
    def _element_index(self, numbers: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # eager and traced for export: an assertion op, no branch
            size = self.z_to_index.shape[0]
            elem = self.z_to_index.index_select(0, numbers.clamp(0, size - 1))
            torch._assert_async(
                ((numbers >= 0) & (numbers < size) & (elem >= 0)).all(),
                "n2p2 model: an atomic number is not supported; species: " + str(self.species),
            )
            return elem
        if numbers.numel() == 0:
            return numbers
        lo, hi = int(numbers.min()), int(numbers.max())
        bad = -1
        if lo < 0 or hi >= self.z_to_index.shape[0]:
            bad = lo if lo < 0 else hi
        else:
            elem = self.z_to_index.index_select(0, numbers)
            unknown = torch.nonzero(elem < 0).view(-1)
            if unknown.numel() == 0:
                return elem
            bad = int(numbers[unknown[0]])
        raise RuntimeError(
            "n2p2 model: atomic number " + str(bad) + " is not supported; species: " + str(self.species)
        )

    def _triplets(
        self,
        centre: torch.Tensor,
        centre_elem: torch.Tensor,
        neighbour_elem: torch.Tensor,
        r_plain: torch.Tensor,
        d_plain: torch.Tensor,
        n_atoms: int,
    ) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Triplets of every angular class (no grad): per class, edge ids j and k with a
        common centre (each unordered pair once), the centre, and |r_jk| (file units);
        only triplets with r_ij, r_ik, r_jk below the class cutoff. ``centre`` is sorted;
        ``r_plain`` is [3, E] (rows x, y, z)."""
        lists: List[torch.Tensor] = []
        for c, a, rc in zip(self.pair_elements_c, self.pair_elements_a, self.pair_rc):
            lists.append(torch.nonzero((centre_elem == c) & (neighbour_elem == a) & (d_plain < rc)).view(-1))
        out: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for c, a, b, rc in zip(self.class_centre, self.class_a, self.class_b, self.class_rc):
            edges_a = lists[self._pair_slot(c, a)]
            edges_a = edges_a.index_select(0, torch.nonzero(d_plain.index_select(0, edges_a) < rc).view(-1))
            centres_a = centre.index_select(0, edges_a)
            if a == b:
                edges_b = edges_a
                repeats, q = _pairs_within(centres_a, n_atoms)
            else:
                edges_b = lists[self._pair_slot(c, b)]
                edges_b = edges_b.index_select(
                    0, torch.nonzero(d_plain.index_select(0, edges_b) < rc).view(-1)
                )
                repeats, q = _pairs_across(centres_a, centre.index_select(0, edges_b), n_atoms)
            # |r_jk|² for all candidate pairs: j side by sequential expansion, k side by gather
            ra, rb = r_plain.index_select(1, edges_a), r_plain.index_select(1, edges_b)  # [3, m]
            n_pairs = q.shape[0]
            diff = rb.index_select(1, q) - torch.repeat_interleave(
                ra, repeats, dim=1, output_size=n_pairs
            )  # [3, P]
            djk2 = diff[0] * diff[0] + diff[1] * diff[1] + diff[2] * diff[2]
            keep = torch.nonzero(djk2 < rc * rc).view(-1)
            first = torch.repeat_interleave(
                torch.arange(edges_a.shape[0], device=centre.device), repeats, output_size=n_pairs
            )
            t_j = edges_a.index_select(0, first.index_select(0, keep))
            t_k = edges_b.index_select(0, q.index_select(0, keep))
            out.append((t_j, t_k, centre.index_select(0, t_j), torch.sqrt(djk2.index_select(0, keep))))
        return out

    def _pair_slot(self, c: int, a: int) -> int:
        for k in range(len(self.pair_elements_c)):
            if self.pair_elements_c[k] == c and self.pair_elements_a[k] == a:
                return k
        return -1

    def _descriptors(
        self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, elem: torch.Tensor, n_atoms: int
    ) -> torch.Tensor:
        """Unscaled symmetry functions of all groups, [N, n_columns], file units."""
        with torch.no_grad():
            d_all = torch.linalg.vector_norm(edge_vectors, dim=1) * self.inv_length_unit
            inside = torch.nonzero(d_all < self.cutoff_file).view(-1)
            # sort by centre so that every element-filtered subset is grouped by centre
            order = torch.argsort(edge_index[0].index_select(0, inside), stable=True)
            inside = inside.index_select(0, order)
        r = edge_vectors.index_select(0, inside) * self.inv_length_unit
        d_plain = d_all.index_select(0, inside)
        centre = edge_index[0].index_select(0, inside)
        centre_elem = elem.index_select(0, centre)
        neighbour_elem = elem.index_select(0, edge_index[1].index_select(0, inside))
        d = torch.linalg.vector_norm(r, dim=1)
        blocks: List[torch.Tensor] = []
        for rgroup in self.radial:
            blocks.append(rgroup(d, d_plain, centre, centre_elem, neighbour_elem, n_atoms))
        if len(self.angular) > 0:
            with torch.no_grad():
                triplets = self._triplets(
                    centre, centre_elem, neighbour_elem, r.detach().t().contiguous(), d_plain, n_atoms
                )
            x, y, z = r[:, 0].contiguous(), r[:, 1].contiguous(), r[:, 2].contiguous()
            for agroup in self.angular:
                t_j, t_k, t_centre, t_djk = triplets[agroup.slot]
                blocks.append(agroup(x, y, z, d, t_j, t_k, t_centre, t_djk, d_plain, n_atoms))
        return torch.cat(blocks, dim=1)

    # -- public ----------------------------------------------------------------
    @torch.jit.export
    def symmetry_functions(
        self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, numbers: torch.Tensor
    ) -> torch.Tensor:
        """Unscaled symmetry functions [N, max_functions] (file units, e.g. Bohr-based),
        per atom in its element's network-input order, zero-padded."""
        elem = self._element_index(numbers)
        n_atoms = numbers.shape[0]
        desc = self._descriptors(edge_vectors, edge_index, elem, n_atoms)
        out = torch.zeros((n_atoms, self.max_functions), dtype=desc.dtype, device=desc.device)
        for net in self.nets:
            atoms = torch.nonzero(elem == net.element).view(-1)
            raw = net.raw(desc.index_select(0, atoms))
            out[atoms, : raw.shape[1]] = raw
        return out

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        """Total energies [n_structures] in eV; edge_vectors [E, 3] in Å."""
        elem = self._element_index(numbers)
        n_atoms = numbers.shape[0]
        desc = self._descriptors(edge_vectors, edge_index, elem, n_atoms)
        energies = torch.zeros(n_structures, dtype=edge_vectors.dtype, device=edge_vectors.device)
        for net in self.nets:  # an element without atoms adds nothing (no branch on the data)
            atoms = torch.nonzero(elem == net.element).view(-1)
            energies = energies.index_add(
                0, structure_index.index_select(0, atoms), net(desc.index_select(0, atoms))
            )
        return energies


def _eager_copy(module) -> torch.nn.Module:
    """The eager module of a scripted one of this file's classes: the classes' annotated
    attributes, buffers and submodules copied (TorchScript keeps them all), no ``__init__``."""
    name = module.original_name
    if name == "ModuleList":
        children = sorted(module.named_children(), key=lambda item: int(item[0]))
        return torch.nn.ModuleList([_eager_copy(child) for _, child in children])
    classes = {c.__name__: c for c in (N2P2Model, _RadialGroup, _AngularGroup, _Dense, _ElementNet)}
    if name not in classes:
        raise ValueError(f"not an n2p2 model: a scripted {name!r} in it")
    cls = classes[name]
    out = cls.__new__(cls)
    torch.nn.Module.__init__(out)
    for attribute in cls.__annotations__:
        setattr(out, attribute, getattr(module, attribute))
    for key, buffer in module.named_buffers(recurse=False):
        out.register_buffer(key, buffer.detach().clone())
    for key, parameter in module.named_parameters(recurse=False):
        out.register_parameter(key, torch.nn.Parameter(parameter.detach().clone(), requires_grad=False))
    for key, child in module.named_children():
        setattr(out, key, _eager_copy(child))
    out.train(module.training)
    return out


def from_torchscript(module) -> "N2P2Model":
    """The eager :class:`N2P2Model` of a scripted one (e.g. ``torch.jit.load`` of the teacher),
    for ``mlip-compile``: TorchScript's loops over lists of floats and the ``while`` of
    :func:`_integer_power` defeat the TorchScript → FX converter, an eager module traces as
    plain Python (branches on the functions' kinds resolved, loops unrolled). Same parameters,
    same operations; raises ``ValueError`` for a module that is not an n2p2 model."""
    if getattr(module, "original_name", None) != "N2P2Model":
        raise ValueError("not an n2p2 model (TorchScript class N2P2Model)")
    return _eager_copy(module)


def build_model(
    directory: str, length_unit: float = ase.units.Bohr, energy_unit: float = ase.units.Hartree
) -> N2P2Model:
    """``N2P2Model(read_n2p2(directory, ...))`` (float64, not yet scripted).

    Parameters
    ----------
    directory : str or path
        Folder with ``input.nn``, ``scaling.data`` and ``weights.ZZZ.data``.
    length_unit : float
        Å per length unit of the files (default: Bohr).
    energy_unit : float
        eV per energy unit of the files (default: Hartree).

    Returns
    -------
    N2P2Model
    """
    return N2P2Model(read_n2p2(directory, length_unit, energy_unit))
