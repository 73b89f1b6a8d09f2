"""A committee of models evaluated as one model: the spread of its members is the uncertainty.

``mlip-server --committee a.pt b.pt c.pt`` (and ``load_evaluator([a, b, c])``,
:func:`mlip_server.loading.load_committee`) loads every member (contract or metatomic files, the
same species; cutoffs may differ) into a :class:`Committee`,
which the Evaluator uses like any other model: it builds **one** neighbour list per structure at
the largest member cutoff, and each member is given that list cut to its own cutoff (pairs closer
than the member's cutoff; metatomic members cut their own requests out of it). Each member
evaluates the whole chunk of copies (structures × rotations) in one call of its own, so
batching of beads, ranks and rotations works per member as for a single model; members run one
after the other (different TorchScript modules cannot share a model call).

What is served (``serve``): ``"mean"`` — the committee mean of energy, forces, virial (and
per-atom energies/virials), the default; ``"first"`` — the first member (a "baseline" whose
uncertainty the others estimate). Rotational averaging is linear, so averaging a committee's
mean is the mean of the averaged members: the Evaluator averages each member over the grid and
reports both spreads.

Statistics (:func:`committee_statistics`, units eV and eV/Å), sample standard deviations over
the M members (ddof = 1, i-PI's ``committee_uncertainty`` convention, no α rescaling):

* ``committee_energy_std`` σ_E = sqrt(Σ_m (E_m − Ē)² / (M − 1)), eV;
* per atom σ_i = sqrt(Σ_m |F_i^m − F̄_i|² / (M − 1)), eV/Å (the norm of the per-component
  spread; DeePMD's model deviation uses 1/M), and ``committee_force_std_max`` = max_i σ_i.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelError
from .graph import CommitteeResult, CopyResult, Graph

__all__ = ["Committee", "committee_statistics", "SERVE_CHOICES"]

SERVE_CHOICES = ("mean", "first")


class Committee:
    """Members behind the :class:`~mlip_server.formats.base.ModelAdapter` interface.

    Parameters
    ----------
    members : list of ModelAdapter
        Loaded models (at least two), on one device, supporting the same species.
    serve : str
        ``"mean"`` or ``"first"`` (module docstring).

    Attributes are those of a model adapter: ``cutoff`` (Å) is the largest member cutoff,
    ``interaction_range`` the largest member range (declared only if every member declares
    it), ``sums_atomic_energies`` only if every member's energy is a sum of atomic terms.
    """

    label = "committee"

    def __init__(self, members, serve: str = "mean"):
        if len(members) < 2:
            raise ModelError("a committee needs at least two models: give --committee A.pt B.pt [...]")
        if serve not in SERVE_CHOICES:
            raise ModelError(f"unknown committee serve mode {serve!r}: use one of {', '.join(SERVE_CHOICES)}")
        first = members[0]
        for m in members[1:]:
            if sorted(m.species) != sorted(first.species):
                raise ModelError(
                    f"committee member {m.path} supports species {sorted(m.species)} but {first.path} "
                    f"supports {sorted(first.species)}: every member must support the same elements"
                )
            if m.device != first.device:
                raise ModelError(f"committee members on different devices ({first.device}, {m.device})")
        self.members = list(members)
        self.serve = serve
        self.path = " + ".join(m.path for m in members)
        self.species = sorted(first.species)
        self.cutoff = max(m.cutoff for m in members)
        self.device = first.device
        self.dtype = first.dtype
        self.requested_dtype = all(m.requested_dtype for m in members)
        self.interaction_range = max(m.interaction_range for m in members)
        self.declared_range = all(m.declared_range for m in members)
        self.sums_atomic_energies = all(m.sums_atomic_energies for m in members)
        self.per_atom_energies = all(m.per_atom_energies for m in members)
        self.subset_refusal = next((m.subset_refusal for m in members if m.subset_refusal), None)
        self.direct_forces = all(m.direct_forces for m in members)
        self.direct_virial = all(m.direct_virial for m in members)

    def __len__(self) -> int:
        return len(self.members)

    def describe(self) -> list[str]:
        """One line per member: format, file, cutoff (Å), precision, and what the member's format
        read from its file (:meth:`~mlip_server.formats.base.ModelAdapter.describe`)."""
        return [
            f"member {k}: {m.label} {m.path} (cutoff {m.cutoff:.3g} Å, "
            f"{str(m.dtype).replace('torch.', '')})" + "".join(f"; {line}" for line in m.describe())
            for k, m in enumerate(self.members)
        ]

    def evaluate(self, copies, direct: bool = False) -> list[CopyResult]:
        """Every member on every copy (direct forces of each member with ``direct``); the served
        result of each copy with ``members`` set."""
        per_member = []
        for m in self.members:
            cut = {}  # one cut graph per distinct graph of the chunk (rotated copies share it)
            member_copies = [(cut.setdefault(id(g), within(g, m.cutoff)), rot) for g, rot in copies]
            per_member.append(m.evaluate(member_copies, direct=direct))
        out = []
        for k in range(len(copies)):
            results = [pm[k] for pm in per_member]
            served = results[0] if self.serve == "first" else _mean(results)
            out.append(served._replace(members=results))
        return out


def within(g: Graph, cutoff: float) -> Graph:
    """``g`` with only the edges shorter than ``cutoff`` (Å); ``g`` itself when none is dropped."""
    keep = g.lengths2 < cutoff * cutoff
    if keep.all():
        return g
    return Graph(
        g.numbers,
        g.edge_index[:, keep],
        g.vectors[keep],
        g.lengths2[keep],
        g.shifts[keep],
        g.positions,
        g.cell,
        g.pbc,
        g.groups,
        g.per_atom,
    )


def _mean(results: list[CopyResult]) -> CopyResult:
    def avg(name):
        values = [getattr(r, name) for r in results]
        return None if values[0] is None else np.mean(np.stack(values), axis=0)

    return CopyResult(
        float(np.mean([r.energy for r in results])),
        avg("forces"),
        avg("virial"),
        avg("atom_energies"),
        avg("atom_virials"),
    )


def committee_statistics(c: CommitteeResult) -> dict:
    """``committee_energy_std`` (eV) and ``committee_force_std_max`` (eV/Å) of one structure."""
    std = c.force_std()
    return {
        "committee_energy_std": float(np.std(c.energies, ddof=1)),
        "committee_force_std_max": float(std.max()) if std.size else 0.0,
    }
