"""The metatomic wrapper of a contract model (imported only when metatomic-torch is installed).

TorchScript compiles this class, so its annotations must stay real (no ``from __future__``).

The contract's ``structure_index`` assigns each atom's energy term to a structure, so the wrapper
serves what a domain-decomposed engine asks for: ``selected_atoms`` (only the selected atoms'
terms count; the others go to one extra structure whose energy is dropped) and per-atom energies
(``sample_kind="atom"``: one structure per atom). Variants ``energy/NAME`` (the same energy times
a factor) exist to test engines that meet models with several outputs. A contract model with a
direct-force head also gives metatomic's ``non_conservative_force`` (and, with ``direct_virial``,
``non_conservative_stress``): ``hasattr`` on the wrapped model is decided when TorchScript compiles
the wrapper, so the calls to methods a model lacks are never compiled.
"""

from typing import Dict, List, Optional

import metatomic.torch as mta
import torch
from metatensor.torch import Labels, TensorBlock, TensorMap

__all__ = ["ContractAsMetatomic"]


class ContractAsMetatomic(torch.nn.Module):
    """``forward(systems, outputs, selected_atoms)`` around a contract model.

    Parameters
    ----------
    model : torch.jit.ScriptModule
        The contract model.
    variants : dict of str to float, optional
        Extra outputs ``energy/NAME``: the energy scaled by the factor.
    """

    def __init__(self, model: torch.jit.ScriptModule, variants: Optional[Dict[str, float]] = None):
        super().__init__()
        self.model = model
        self.neighbors = mta.NeighborListOptions(cutoff=float(model.cutoff), full_list=True, strict=True)
        scales: Dict[str, float] = {"energy": 1.0}
        for name, factor in (variants or {}).items():
            scales["energy/" + name] = float(factor)
        self.scales = scales

    def requested_neighbor_lists(self) -> List[mta.NeighborListOptions]:
        return [self.neighbors]

    def forward(
        self,
        systems: List[mta.System],
        outputs: Dict[str, mta.ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        results: Dict[str, TensorMap] = {}
        for name, factor in self.scales.items():
            if name in outputs:
                results[name] = self._energy(
                    systems, outputs[name].sample_kind == "atom", selected_atoms, factor
                )
        if "non_conservative_force" in outputs or "non_conservative_stress" in outputs:
            self._direct(systems, outputs, selected_atoms, results)
        return results

    def _direct(
        self,
        systems: List[mta.System],
        outputs: Dict[str, mta.ModelOutput],
        selected_atoms: Optional[Labels],
        results: Dict[str, TensorMap],
    ):
        """The head's outputs into ``results``, from one set of inputs: ``non_conservative_force``
        (per atom, eV/Å: ``direct_forces`` of the selected atoms, net force left in: engines remove
        it) and ``non_conservative_stress`` (per system, eV/Å³, σ = −W/V from ``direct_virial``;
        zero for a system without a cell). Nothing for a model without a head."""
        if hasattr(self.model, "direct_forces"):
            vectors, edge_index, numbers, structure, n_terms, systems_t, atoms_t, counted = self._inputs(
                systems, False, selected_atoms
            )
            if "non_conservative_force" in outputs:
                forces = self.model.direct_forces(vectors, edge_index, numbers, structure, n_terms + 1)
                results["non_conservative_force"] = _force_map(
                    forces[counted], systems_t[counted], atoms_t[counted]
                )
            if hasattr(self.model, "direct_virial"):
                if "non_conservative_stress" in outputs:
                    virials = self.model.direct_virial(vectors, edge_index, numbers, structure, n_terms + 1)
                    results["non_conservative_stress"] = _stress_map(virials[:n_terms], systems)

    def _inputs(self, systems: List[mta.System], per_atom: bool, selected_atoms: Optional[Labels]):
        """The contract's inputs for ``systems`` (counted terms: all atoms or the selected ones,
        per system or per atom), plus each atom's system and index and the counted atoms."""
        vectors: List[torch.Tensor] = []
        centres: List[torch.Tensor] = []
        neighbours: List[torch.Tensor] = []
        numbers: List[torch.Tensor] = []
        system_of: List[torch.Tensor] = []
        atom_of: List[torch.Tensor] = []
        offset = 0
        device = systems[0].positions.device if len(systems) else torch.device("cpu")
        for k, system in enumerate(systems):
            pairs = system.get_neighbor_list(self.neighbors)
            samples = pairs.samples.values.to(torch.int64)
            vectors.append(pairs.values.reshape(-1, 3))
            centres.append(samples[:, 0] + offset)
            neighbours.append(samples[:, 1] + offset)
            numbers.append(system.types.to(torch.int64))
            system_of.append(torch.full((len(system),), k, dtype=torch.int64, device=device))
            atom_of.append(torch.arange(len(system), dtype=torch.int64, device=device))
            offset += len(system)
        n_atoms = offset
        systems_t = torch.cat(system_of)
        atoms_t = torch.cat(atom_of)
        # the counted terms: every atom, or the selected ones (global atom index of each)
        if selected_atoms is None:
            counted = torch.arange(n_atoms, dtype=torch.int64, device=device)
        else:
            first = torch.zeros(len(systems) + 1, dtype=torch.int64, device=device)
            first[1:] = torch.cumsum(torch.bincount(systems_t, minlength=len(systems)), 0)
            chosen = selected_atoms.values.to(torch.int64)
            counted = first[chosen[:, 0]] + chosen[:, 1]
        n_terms = counted.shape[0] if per_atom else len(systems)
        structure = torch.full((n_atoms,), n_terms, dtype=torch.int64, device=device)
        if per_atom:
            structure[counted] = torch.arange(counted.shape[0], dtype=torch.int64, device=device)
        else:
            structure[counted] = systems_t[counted]
        edge_index = torch.stack([torch.cat(centres), torch.cat(neighbours)])
        return (
            torch.cat(vectors),
            edge_index,
            torch.cat(numbers),
            structure,
            n_terms,
            systems_t,
            atoms_t,
            counted,
        )

    def _energy(
        self, systems: List[mta.System], per_atom: bool, selected_atoms: Optional[Labels], factor: float
    ) -> TensorMap:
        vectors, edge_index, numbers, structure, n_terms, systems_t, atoms_t, counted = self._inputs(
            systems, per_atom, selected_atoms
        )
        device = vectors.device
        energies = self.model(vectors, edge_index, numbers, structure, n_terms + 1)[:n_terms]
        if per_atom:
            labels = Labels(
                ["system", "atom"], torch.stack([systems_t[counted], atoms_t[counted]], dim=1).to(torch.int32)
            )
        else:
            labels = Labels(
                "system", torch.arange(len(systems), dtype=torch.int32, device=device).reshape(-1, 1)
            )
        empty: List[Labels] = []
        block = TensorBlock(
            values=factor * energies.reshape(-1, 1),
            samples=labels,
            components=empty,
            properties=Labels("energy", torch.zeros((1, 1), dtype=torch.int32, device=device)),
        )
        return TensorMap(Labels("_", torch.zeros((1, 1), dtype=torch.int32, device=device)), [block])


def _force_map(forces: torch.Tensor, systems_t: torch.Tensor, atoms_t: torch.Tensor) -> TensorMap:
    """``non_conservative_force``: forces [n, 3] (eV/Å) of the atoms (system, atom)."""
    device = forces.device
    labels = Labels(["system", "atom"], torch.stack([systems_t, atoms_t], dim=1).to(torch.int32))
    xyz = Labels("xyz", torch.arange(3, dtype=torch.int32, device=device).reshape(-1, 1))
    block = TensorBlock(
        values=forces.reshape(-1, 3, 1),
        samples=labels,
        components=[xyz],
        properties=Labels("non_conservative_force", torch.zeros((1, 1), dtype=torch.int32, device=device)),
    )
    return TensorMap(Labels("_", torch.zeros((1, 1), dtype=torch.int32, device=device)), [block])


def _stress_map(virials: torch.Tensor, systems: List[mta.System]) -> TensorMap:
    """``non_conservative_stress``: σ = −W/V (eV/Å³) of each system's virial W [3, 3] (eV); zero
    for a system without a cell."""
    device = virials.device
    stresses: List[torch.Tensor] = []
    for k, system in enumerate(systems):
        volume = torch.abs(torch.det(system.cell))
        if bool(volume > 0):
            stresses.append(-virials[k] / volume)
        else:
            stresses.append(torch.zeros_like(virials[k]))
    xyz = Labels("xyz", torch.arange(3, dtype=torch.int32, device=device).reshape(-1, 1))
    xyz_2 = Labels("xyz_2", torch.arange(3, dtype=torch.int32, device=device).reshape(-1, 1))
    samples = Labels("system", torch.arange(len(systems), dtype=torch.int32, device=device).reshape(-1, 1))
    block = TensorBlock(
        values=torch.stack(stresses).reshape(-1, 3, 3, 1),
        samples=samples,
        components=[xyz, xyz_2],
        properties=Labels("non_conservative_stress", torch.zeros((1, 1), dtype=torch.int32, device=device)),
    )
    return TensorMap(Labels("_", torch.zeros((1, 1), dtype=torch.int32, device=device)), [block])
