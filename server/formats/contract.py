"""The project's own model contract: a TorchScript module on edge vectors (ARCHITECTURE.md).

A TorchScript module with attributes ``cutoff: float`` (Å) and ``species: List[int]``
(atomic numbers) and

    forward(edge_vectors [E,3] Å, edge_index int64 [2,E], numbers int64 [N],
            structure_index int64 [N], n_structures: int) -> energies [B] eV

All rotated copies of one Evaluator chunk go through one ``forward`` call (copy b is
structure b); with g_e = ∂E/∂r_e from autograd, forces F_i = Σ_{e: i centre} g_e −
Σ_{e: i neighbour} g_e (eV/Å) and the virial W = −Σ_e r_e ⊗ g_e (eV), i-PI's convention.

Direct forces (optional exported methods, same five arguments): ``direct_forces(...)`` →
forces [N,3] eV/Å predicted by a head, no backward pass; ``direct_virial(...)`` → [B,3,3] eV
(i-PI's convention); ``forward_direct(...)`` → (energies [B] eV, forces [N,3] eV/Å) from one pass
of the network (used instead of ``forward`` + ``direct_forces`` when present: the fast path).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import ModelError
from .base import ModelAdapter, first_line
from .edges import assemble_direct, assemble_gradients, pack

__all__ = ["ContractModel", "exported_dtype"]

__FORMAT_NAME__ = "contract"
__FORMAT_CLASS__ = "ContractModel"


class ContractModel(ModelAdapter):
    """A contract-checked TorchScript model (any TorchScript file that is not metatomic).

    Parameters
    ----------
    module : torch.jit.ScriptModule
        The scripted model, already on ``device`` in ``dtype``.
    path : str
        Where it came from.
    cutoff : float
        Its cutoff, Å.
    species : list of int
        Its atomic numbers.
    device : torch.device
    dtype : torch.dtype
    """

    label = "model"
    priority = 0  # the fallback: every other format is asked first

    def __init__(self, module, path, cutoff, species, device, dtype):
        self.module, self.path, self.cutoff, self.species = module, path, cutoff, species
        self.device, self.dtype = device, dtype
        # TorchScript's profiling executor re-specialises for new input shapes (every MD step
        # has a different number of edges), costing seconds per call for no gain on CPU;
        # on CUDA its fusers can pay off
        self._jit_optimize = device.type == "cuda"
        self._fused_direct = False

    @classmethod
    def recognizes(cls, path: str) -> bool:
        return True

    @classmethod
    def load(cls, path, device, dtype) -> "ContractModel":
        try:
            module = torch.jit.load(path, map_location=device)
        except Exception as err:  # torch raises RuntimeError/ValueError with long texts
            raise ModelError(
                f"{path!r} is not a TorchScript model ({first_line(err)[:100]}), nor of any format the "
                "server reads (metatomic .pt of mtt export, MACE's mace_create_lammps_model export, "
                "NequIP's .nequip.pt2/.nequip.pth, mlip-compile's .pt2): export it as one of them, "
                "e.g. torch.jit.save(torch.jit.script(model), path) for the contract"
            ) from None
        return cls.from_module(module, path, device, dtype)

    @classmethod
    def from_module(cls, module, path, device, dtype) -> "ContractModel":
        """Checks the attributes, casts to ``device``/``dtype`` and dry-runs the module."""
        for name in ("cutoff", "species"):
            if not hasattr(module, name):
                raise ModelError(
                    f"model {path!r} has no attribute '{name}': the contract needs "
                    "`cutoff: float` (Å) and `species: List[int]` as TorchScript attributes"
                )
        cutoff = float(module.cutoff)
        species = [int(z) for z in module.species]
        if not cutoff > 0 or not species:
            raise ModelError(f"model {path!r} has cutoff={cutoff} and species={species}: both must be set")
        requested = dtype is not None
        dtype = dtype if requested else exported_dtype(module)
        module = module.to(device=device, dtype=dtype)
        module.eval()
        model = cls(module, path, cutoff, species, device, dtype)
        # every call, the checks included, in the executor mode of serving: TorchScript's profiling
        # executor would otherwise optimise the graph during the checks (its own autodiff formulas),
        # and the served forces would depend on this history by float rounding
        with torch.jit.optimized_execution(model._jit_optimize):
            model._check(path, requested)
        return model

    def _check(self, path, requested):
        """The load-time checks and attributes (dry runs, interaction range, atomic sums, direct heads)."""
        model, module, cutoff, species = self, self.module, self.cutoff, self.species
        device, dtype = self.device, self.dtype
        _dry_run(module, path, cutoff, species, device, dtype)
        model.requested_dtype = requested
        model.declared_range = hasattr(module, "interaction_range")
        model.interaction_range = float(module.interaction_range) if model.declared_range else cutoff
        if not model.interaction_range >= cutoff:
            raise ModelError(
                f"model {path!r} declares interaction_range={model.interaction_range} Å below its "
                f"cutoff {cutoff} Å: it must be at least the cutoff (cutoff × layers for message passing)"
            )
        model.sums_atomic_energies = _sums_atomic_energies(module, cutoff, species, device, dtype)
        model.direct_forces = hasattr(module, "direct_forces")
        model.direct_virial = model.direct_forces and hasattr(module, "direct_virial")
        model._fused_direct = model.direct_forces and hasattr(module, "forward_direct")
        if model.direct_forces:
            _dry_run_direct(model, path, cutoff, species)

    def evaluate(self, copies, direct: bool = False):
        if direct:
            return self._evaluate_direct(copies)
        batch = pack(copies, self.device, self.dtype)
        leaf = batch.edge_vectors
        with torch.jit.optimized_execution(self._jit_optimize):
            energies = self.module(*batch.inputs())[: batch.n_counted]
            grad = None
            if leaf.shape[0] > 0 and batch.n_counted > 0:
                (grad,) = torch.autograd.grad(energies.sum(), leaf, allow_unused=True)
        return assemble_gradients(batch, energies, grad)

    def _evaluate_direct(self, copies):
        """Energies and direct forces (and virials, if the model has them): no autograd graph."""
        if not self.direct_forces:
            raise ModelError(f"model {self.path} has no direct_forces method: serve it without 'direct'")
        batch = pack(copies, self.device, self.dtype, requires_grad=False)
        inputs = batch.inputs()
        with torch.no_grad(), torch.jit.optimized_execution(self._jit_optimize):
            if self._fused_direct:
                energies, forces = self.module.forward_direct(*inputs)
            else:
                energies, forces = self.module(*inputs), self.module.direct_forces(*inputs)
            virials = self.module.direct_virial(*inputs) if self.direct_virial else None
        return assemble_direct(batch, energies, forces, virials)


def exported_dtype(module) -> torch.dtype:
    """The floating dtype of the module's parameters and buffers (float64 when it has none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float64


def _sums_atomic_energies(module, cutoff, species, device, dtype) -> bool:
    """Whether the energy of a 3-atom chain equals the sum of its atoms' energies when each atom
    is put in a structure of its own (same edges): true for every model whose energy is a sum of
    per-atom terms assigned through ``structure_index`` of each atom (the owned-atoms energy of
    domain decomposition relies on it)."""
    d = 0.4 * cutoff
    x = torch.tensor([[0.0, 0, 0], [d, 0.1 * d, 0], [2 * d, 0, 0.1 * d]], dtype=dtype, device=device)
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    edge_index = torch.tensor(pairs, dtype=torch.int64, device=device).T.contiguous()
    vectors = x[edge_index[1]] - x[edge_index[0]]
    numbers = torch.tensor([species[k % len(species)] for k in range(3)], dtype=torch.int64, device=device)
    try:
        with torch.no_grad():
            together = module(
                vectors, edge_index, numbers, torch.zeros(3, dtype=torch.int64, device=device), 1
            )
            apart = module(vectors, edge_index, numbers, torch.arange(3, device=device), 3)
    except Exception:  # noqa: BLE001 - a model that cannot do it simply does not qualify
        return False
    total, parts = float(together.sum()), float(apart.sum())
    tolerance = (1e-5 if dtype == torch.float32 else 1e-10) * max(1.0, abs(total))
    return bool(apart.shape == (3,) and abs(total - parts) <= tolerance)


def _dry_run(module, path, cutoff, species, device, dtype):
    """Evaluates two 2-atom structures in one batch and checks shapes and gradients."""
    z = species[0]
    r = 0.5 * cutoff
    vectors = torch.tensor(
        [[r, 0, 0], [-r, 0, 0], [0, r, 0], [0, -r, 0]], dtype=dtype, device=device, requires_grad=True
    )
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]], dtype=torch.int64, device=device)
    numbers = torch.full((4,), z, dtype=torch.int64, device=device)
    structure_index = torch.tensor([0, 0, 1, 1], dtype=torch.int64, device=device)
    try:
        energies = module(vectors, edge_index, numbers, structure_index, 2)
    except Exception as err:
        raise ModelError(
            f"model {path!r} failed a dry run with the contract's forward(edge_vectors, "
            f"edge_index, numbers, structure_index, n_structures): {first_line(err, last=True)[:160]}"
        ) from None
    if not isinstance(energies, torch.Tensor) or tuple(energies.shape) != (2,):
        shape = tuple(energies.shape) if isinstance(energies, torch.Tensor) else type(energies).__name__
        raise ModelError(
            f"model {path!r} returned {shape} for 2 structures: forward must return "
            "energies of shape [n_structures]"
        )
    if not torch.isfinite(energies).all():
        raise ModelError(f"model {path!r} returned non-finite energies in a dry run: check its weights")
    if not energies.requires_grad:
        raise ModelError(
            f"model {path!r} energies do not depend on edge_vectors differentiably: forces need autograd"
        )


def _dry_run_direct(model, path, cutoff, species):
    """Checks the direct methods' shapes (and that they agree with each other) on two structures."""
    from ..core.graph import Structure, build_graph

    r = 0.45 * cutoff
    positions = np.array([[0.0, 0, 0], [r, 0.2 * r, 0], [0.1 * r, r, 0.3 * r]])
    z = np.array([species[k % len(species)] for k in range(3)])
    g = build_graph(
        Structure(numbers=z, positions=positions, cell=np.zeros((3, 3)), pbc=np.zeros(3, bool)),
        "dry run",
        set(species),
        cutoff,
        0.0,
        path,
    )
    try:
        batch = pack([(g, np.eye(3))] * 2, model.device, model.dtype, requires_grad=False)
        with torch.no_grad():
            forces = model.module.direct_forces(*batch.inputs())
            fused = model.module.forward_direct(*batch.inputs())[1] if model._fused_direct else forces
            virials = model.module.direct_virial(*batch.inputs()) if model.direct_virial else None
    except Exception as err:
        raise ModelError(
            f"model {path!r}: its direct-force methods failed a dry run "
            f"(direct_forces/forward_direct/direct_virial(edge_vectors, edge_index, numbers, "
            f"structure_index, n_structures)): {first_line(err, last=True)[:160]}"
        ) from None
    if tuple(forces.shape) != (6, 3) or not torch.isfinite(forces).all():
        raise ModelError(f"model {path!r}: direct_forces must return finite forces [n_atoms, 3] eV/Å")
    if tuple(fused.shape) != (6, 3) or not torch.allclose(fused, forces):
        raise ModelError(f"model {path!r}: forward_direct's forces differ from direct_forces'")
    if virials is not None and tuple(virials.shape)[1:] != (3, 3):
        raise ModelError(f"model {path!r}: direct_virial must return [n_structures, 3, 3] eV")
