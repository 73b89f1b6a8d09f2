"""The metatomic wrapper of a contract model (imported only when metatomic-torch is installed).

TorchScript compiles this class, so its annotations must stay real (no ``from __future__``).
"""

from typing import Dict, List, Optional

import metatomic.torch as mta
import torch
from metatensor.torch import Labels, TensorBlock, TensorMap

__all__ = ["ContractAsMetatomic"]


class ContractAsMetatomic(torch.nn.Module):
    """``forward(systems, outputs, selected_atoms)`` around a contract model."""

    def __init__(self, model: torch.jit.ScriptModule):
        super().__init__()
        self.model = model
        self.neighbors = mta.NeighborListOptions(cutoff=float(model.cutoff), full_list=True, strict=True)

    def requested_neighbor_lists(self) -> List[mta.NeighborListOptions]:
        return [self.neighbors]

    def forward(
        self,
        systems: List[mta.System],
        outputs: Dict[str, mta.ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        if "energy" not in outputs:
            return {}
        if outputs["energy"].sample_kind != "system" or selected_atoms is not None:
            raise ValueError("this model gives total energies only (no per-atom energies, no selected atoms)")
        vectors: List[torch.Tensor] = []
        centres: List[torch.Tensor] = []
        neighbours: List[torch.Tensor] = []
        numbers: List[torch.Tensor] = []
        structure: List[torch.Tensor] = []
        offset = 0
        for k, system in enumerate(systems):
            pairs = system.get_neighbor_list(self.neighbors)
            samples = pairs.samples.values.to(torch.int64)
            vectors.append(pairs.values.reshape(-1, 3))
            centres.append(samples[:, 0] + offset)
            neighbours.append(samples[:, 1] + offset)
            numbers.append(system.types.to(torch.int64))
            structure.append(torch.full((len(system),), k, dtype=torch.int64, device=system.device))
            offset += len(system)
        energies = self.model(
            torch.cat(vectors),
            torch.stack([torch.cat(centres), torch.cat(neighbours)]),
            torch.cat(numbers),
            torch.cat(structure),
            len(systems),
        )
        device = energies.device
        empty: List[Labels] = []
        block = TensorBlock(
            values=energies.reshape(-1, 1),
            samples=Labels(
                "system", torch.arange(len(systems), dtype=torch.int32, device=device).reshape(-1, 1)
            ),
            components=empty,
            properties=Labels("energy", torch.zeros((1, 1), dtype=torch.int32, device=device)),
        )
        return {
            "energy": TensorMap(Labels("_", torch.zeros((1, 1), dtype=torch.int32, device=device)), [block])
        }
