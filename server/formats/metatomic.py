"""Serving metatomic ``AtomisticModel`` files through the same Evaluator.

A metatomic model (https://docs.metatensor.org/metatomic/) is a TorchScript file that
takes ``System`` objects (types, positions Å, cell Å, pbc) carrying the neighbour lists
the model requests, and returns named outputs; we use its ``energy`` output (eV).
Install with ``pip install -e .[metatomic]``.

How it maps onto the Evaluator (the ``ModelAdapter`` interface, ARCHITECTURE.md):

* the Evaluator builds one full vesin list at the largest requested cutoff; every requested
  list (its own cutoff, full or half) is cut out of it, so the pairs are exactly those a
  strict metatomic list holds;
* positions x (Å) and a strain ε are autograd leaves; the model sees x·(1+ε), cell·(1+ε) and
  neighbour vectors x_j − x_i + S·cell built from them, so
  F = −∂E/∂x (eV/Å) and W = −(∂E/∂ε)ᵀ (eV), the same convention as the contract models;
* averaging evaluates copies with rotated positions and cell (x Rᵀ, cell Rᵀ) in one model
  call; each copy's forces and virial are rotated back (F R, Rᵀ W R) before the weighted sum.
"""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import torch

from ..core.errors import ModelError
from ..core.graph import CopyResult
from .base import ModelAdapter, first_line

__all__ = ["MetatomicModel", "is_metatomic_file"]

__FORMAT_NAME__ = "metatomic"
__FORMAT_CLASS__ = "MetatomicModel"

INSTALL_HINT = "pip install -e .[metatomic] (metatomic-torch)"


def is_metatomic_file(path: str) -> bool:
    """True when ``path`` is a TorchScript archive written by ``AtomisticModel.save``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/extra/metatomic-version") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _import():
    try:
        import metatensor.torch as mts
        import metatomic.torch as mta
    except ImportError:
        raise ModelError(
            f"this is a metatomic model but metatomic-torch is not installed: {INSTALL_HINT}"
        ) from None
    return mta, mts


class MetatomicModel(ModelAdapter):
    """A loaded metatomic model.

    Attributes
    ----------
    module : AtomisticModel
        The metatomic model.
    cutoff : float
        The largest requested neighbour-list cutoff, Å.
    species : list of int
        ``capabilities().atomic_types``.
    dtype : torch.dtype
        The model's own dtype (metatomic models run in the dtype they declare).
    requests : list
        The requested ``NeighborListOptions``.
    """

    label = "metatomic model"
    priority = 10

    @classmethod
    def recognizes(cls, path: str) -> bool:
        return is_metatomic_file(path)

    @classmethod
    def load(cls, path, device, dtype) -> "MetatomicModel":
        model = cls(path, device)  # runs in its declared dtype, whatever was asked
        if dtype is not None and dtype != model.dtype:
            logging.getLogger("mlip-server").warning(
                "%s: the metatomic model declares %s and runs in it, not in the requested %s",
                path,
                str(model.dtype)[6:],
                str(dtype)[6:],
            )
        return model

    def __init__(self, path: str, device: torch.device):
        mta, mts = _import()
        self._mta, self._mts = mta, mts
        self.path = path
        try:
            module = mta.load_atomistic_model(path)
        except Exception as err:
            raise ModelError(
                f"{path!r}: metatomic could not load it ({first_line(err)[:160]}): "
                "check that it was exported with a compatible metatomic-torch"
            ) from None
        capabilities = module.capabilities()
        if "energy" not in capabilities.outputs:
            raise ModelError(
                f"{path!r}: this metatomic model has no 'energy' output "
                f"(outputs: {', '.join(capabilities.outputs.keys())}): it cannot give forces"
            )
        if device.type not in capabilities.supported_devices:
            raise ModelError(
                f"{path!r}: the metatomic model supports devices "
                f"{list(capabilities.supported_devices)}, not {device.type}: change --device"
            )
        self.dtype = getattr(torch, capabilities.dtype)
        self.module = module.to(device=device)
        self.device = device
        self.species = [int(z) for z in capabilities.atomic_types]
        self.requests = list(module.requested_neighbor_lists())
        self.cutoff = max([float(r.cutoff) for r in self.requests] or [float(capabilities.interaction_range)])
        # metatomic declares the range itself and selects atoms' energies with selected_atoms
        self.interaction_range = max(float(capabilities.interaction_range), self.cutoff)
        self.declared_range, self.sums_atomic_energies = True, True
        if not self.cutoff > 0 or not np.isfinite(self.cutoff):
            raise ModelError(
                f"{path!r}: the metatomic model requests no finite neighbour-list cutoff "
                f"({self.cutoff}): long-range-only models are not supported"
            )
        self.options = mta.ModelEvaluationOptions(
            length_unit="angstrom", outputs={"energy": mta.ModelOutput(unit="eV", sample_kind="system")}
        )
        xyz = torch.tensor([[0], [1], [2]], dtype=torch.int32, device=device)
        self._xyz = mts.Labels("xyz", xyz)
        self._distance = mts.Labels("distance", torch.zeros((1, 1), dtype=torch.int32, device=device))

    def evaluate(self, copies, direct: bool = False):
        """Energies (eV), forces [N,3] (eV/Å) and virials [3,3] (eV) of ``copies`` (see
        :meth:`ModelAdapter.evaluate`), from one call of the model on one ``System`` per copy."""
        if direct:
            raise ModelError(f"{self.path}: no direct forces (non_conservative_force) served yet")
        dev, dt = self.device, self.dtype
        if any(g.groups is not None for g, _ in copies):
            raise ModelError(
                f"{self.path}: energies of a subset of atoms (LAMMPS domain decomposition, per-atom "
                "energies) are not supported for metatomic models yet: use --decomposition gather"
            )
        systems, leaves, strains = [], [], []
        for g, rot in copies:
            leaf = torch.tensor(g.positions @ rot.T, dtype=dt, device=dev, requires_grad=True)
            strain = torch.eye(3, dtype=dt, device=dev, requires_grad=True)
            cell = torch.tensor((g.cell * g.pbc[:, None]) @ rot.T, dtype=dt, device=dev)
            positions, cell = leaf @ strain, cell @ strain
            system = self._mta.System(
                torch.tensor(g.numbers, dtype=torch.int32, device=dev),
                positions,
                cell,
                torch.tensor(g.pbc, dtype=torch.bool, device=dev),
            )
            for request in self.requests:
                system.add_neighbor_list(request, self._neighbors(g, positions, cell, request))
            systems.append(system)
            leaves.append(leaf)
            strains.append(strain)
        outputs = self.module(systems, self.options, check_consistency=False)
        energies = outputs["energy"].block().values.reshape(-1)
        grads = torch.autograd.grad(energies.sum(), leaves + strains, allow_unused=True)
        results = []
        for k, (g, rot) in enumerate(copies):
            g_x, g_eps = grads[k], grads[len(copies) + k]
            forces = -g_x if g_x is not None else torch.zeros_like(leaves[k])
            virial = -g_eps.T if g_eps is not None else torch.zeros((3, 3), dtype=dt, device=dev)
            forces = forces.detach().to("cpu", torch.float64).numpy()
            virial = virial.detach().to("cpu", torch.float64).numpy()
            results.append(CopyResult(float(energies[k].detach()), forces @ rot, rot.T @ virial @ rot))
        return results

    def _neighbors(self, g, positions, cell, request):
        """The requested list cut from the Evaluator's full list, vectors differentiable in x and ε."""
        cutoff = float(request.cutoff)
        keep = g.lengths2 < cutoff * cutoff
        i, j = g.edge_index[0], g.edge_index[1]
        if not request.full_list:  # one of (i, j, S) and (j, i, -S)
            s = g.shifts
            first_nonzero = np.where(s[:, 0] != 0, s[:, 0], np.where(s[:, 1] != 0, s[:, 1], s[:, 2]))
            keep &= (i < j) | ((i == j) & (first_nonzero > 0))
        i, j, shifts = i[keep], j[keep], g.shifts[keep]
        dev = positions.device
        i_t = torch.from_numpy(i).to(dev)
        j_t = torch.from_numpy(j).to(dev)
        shifts_t = torch.from_numpy(shifts).to(device=dev, dtype=positions.dtype)
        vectors = positions[j_t] - positions[i_t] + shifts_t @ cell
        samples = np.column_stack([i, j, shifts]).astype(np.int32)
        block = self._mts.TensorBlock(
            values=vectors.reshape(-1, 3, 1),
            samples=self._mts.Labels(
                ["first_atom", "second_atom", "cell_shift_a", "cell_shift_b", "cell_shift_c"],
                torch.from_numpy(samples).to(dev).reshape(-1, 5),
            ),
            components=[self._xyz],
            properties=self._distance,
        )
        return block
