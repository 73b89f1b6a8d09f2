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
  call; each copy's forces and virial are rotated back (F R, Rᵀ W R) before the weighted sum;
* the interaction range is the declared one, except for metatrain's PET with its feedforward
  featurizer, whose export declares one cutoff less than its energies reach
  (:func:`_metatrain_pet_reach`): the LAMMPS domain route's ghost shell uses the longer one.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
import zipfile

import numpy as np
import torch

from ..core.errors import ModelError
from ..core.graph import CopyResult
from .base import ModelAdapter, first_line, probe_chain

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


def _archive_versions(path: str) -> dict:
    """The metatomic-torch and torch versions a metatomic archive records (``extra/`` files)."""
    found = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                for key, label in (
                    ("/extra/metatomic-version", "metatomic-torch"),
                    ("/extra/torch-version", "torch"),
                ):
                    if name.endswith(key):
                        found[label] = archive.read(name).decode(errors="replace").strip()[:40]
    except (zipfile.BadZipFile, OSError):
        pass
    return found


def _metatrain_pet_reach(module):
    """(range Å, why) of a metatrain PET whose energies reach further than the range its export
    declares, else None.

    metatrain (up to at least 2026.4.1) declares ``num_gnn_layers × cutoff``. With the
    ``feedforward`` featurizer (its default) the edge features are exchanged with their reversed
    edges once more after the last GNN layer, and the readout sums them: an atom's energy then
    depends on atoms up to ``(num_gnn_layers + 1) × cutoff`` away (measured: the owned atoms'
    energy of a 2-layer, 3.5 Å PET changes between ghost shells of 7 and 10.5 Å, not beyond)."""
    inner = getattr(module, "module", None)
    if getattr(inner, "original_name", None) != "PET":
        return None
    try:
        backend = inner.backend
        featurizer = str(backend.featurizer_type)
        layers, cutoff = int(backend.num_gnn_layers), float(backend.cutoff)
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None
    if featurizer != "feedforward":
        return None
    return (layers + 1) * cutoff, (
        f"metatrain's PET with the feedforward featurizer exchanges edge messages once more "
        f"after its {layers} GNN layers, so energies reach ({layers} + 1) × {cutoff:.4g} Å"
    )


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
            with warnings.catch_warnings():
                # metatrain's PET declares non_conservative_forces next to non_conservative_force
                # (metatomic's old and new names): metatomic warns at every load, on stderr, where
                # one-line refusals are read; the new name is the one served
                warnings.filterwarnings("ignore", r"the '\w+' output name is deprecated", UserWarning)
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
        self.declared_range = True
        self.range_note = None
        reach = _metatrain_pet_reach(module)
        if reach is not None and reach[0] > self.interaction_range:
            self.range_note = (
                f"interaction range {reach[0]:.4g} Å, not the declared {self.interaction_range:.4g} Å: "
                f"{reach[1]}"
            )
            self.interaction_range = reach[0]
        if not self.cutoff > 0 or not np.isfinite(self.cutoff):
            raise ModelError(
                f"{path!r}: the metatomic model requests no finite neighbour-list cutoff "
                f"({self.cutoff}): long-range-only models are not supported"
            )
        self.per_atom_energies = capabilities.outputs["energy"].sample_kind == "atom"
        names = list(capabilities.outputs.keys())
        # direct forces: metatomic's non_conservative_force (or the deprecated plural) and stress
        self._nc_force = next(
            (n for n in ("non_conservative_force", "non_conservative_forces") if n in names), None
        )
        self._nc_stress = "non_conservative_stress" if "non_conservative_stress" in names else None
        self.direct_forces = self._nc_force is not None
        self.direct_virial = self.direct_forces and self._nc_stress is not None
        self.options = mta.ModelEvaluationOptions(
            length_unit="angstrom", outputs={"energy": mta.ModelOutput(unit="eV", sample_kind="system")}
        )
        xyz = torch.tensor([[0], [1], [2]], dtype=torch.int32, device=device)
        self._xyz = mts.Labels("xyz", xyz)
        self._distance = mts.Labels("distance", torch.zeros((1, 1), dtype=torch.int32, device=device))
        self.subset_refusal = None
        why = None
        if not np.isfinite(self.interaction_range):
            why = f"it declares an infinite interaction_range ({capabilities.interaction_range})"
        else:
            why = self._probe_subsets()
        self.sums_atomic_energies = why is None
        if why:
            self.subset_refusal = (
                f"metatomic model {path}: the energy of a subset of atoms (LAMMPS domain decomposition, "
                f"per-atom energies) cannot be asked for: {why}: use --decomposition gather"
            )

    def describe(self) -> list[str]:
        """What the file says about itself: the architecture (the wrapped module's class, e.g.
        metatrain's ``PET``) and ``metadata()`` (name, authors, references), the declared
        capabilities (outputs, atomic types, interaction range, requested lists, dtype, devices)
        and the metatomic-torch/torch versions it was exported with."""
        metadata = self.module.metadata()
        capabilities = self.module.capabilities()
        architecture = getattr(self.module.module, "original_name", None) or type(self.module.module).__name__
        who = f"metatomic file of a {architecture} model"
        if metadata.name:
            who += f" {metadata.name!r}"
        if metadata.authors:
            who += f" by {', '.join(metadata.authors)}"
        lines = [who]
        references = [f"{kind}: {', '.join(urls)}" for kind, urls in metadata.references.items() if len(urls)]
        if references:
            lines.append("references: " + "; ".join(references))
        outputs = capabilities.outputs
        energy = outputs["energy"]
        served = [f"energy (per {energy.sample_kind}, {energy.unit or 'no unit'})"]
        served += [name for name in (self._nc_force, self._nc_stress) if name]
        others = [name for name in outputs.keys() if name != "energy" and name not in served]
        lines.append("outputs: " + ", ".join(served) + (f"; also {', '.join(others)}" if others else ""))
        lists = ", ".join(
            f"{float(r.cutoff):.4g} Å {'full' if r.full_list else 'half'}" for r in self.requests
        )
        lines.append(
            f"atomic types {list(self.species)}; "
            f"declared interaction range {float(capabilities.interaction_range):.4g} Å; "
            f"neighbour lists {lists or 'none'}; dtype {capabilities.dtype}; "
            f"devices {', '.join(capabilities.supported_devices)}"
        )
        if self.range_note:
            lines.append(self.range_note)
        if self.direct_forces:
            lines.append(
                f"direct forces from {self._nc_force}"
                + (f" and a virial from {self._nc_stress}" if self._nc_stress else ", no direct virial")
                + " (--forces direct)"
            )
        versions = _archive_versions(self.path)
        if versions:
            lines.append("exported with " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        return lines

    def evaluate(self, copies, direct: bool = False):
        """Energies (eV), forces [N,3] (eV/Å) and virials [3,3] (eV) of ``copies`` (see
        :meth:`ModelAdapter.evaluate`), from one call of the model on one ``System`` per copy.

        Graphs with groups (a LAMMPS rank's cluster, per-atom energies) are evaluated with
        ``selected_atoms`` = their counted atoms (group ≥ 0) and, for ``per_atom`` graphs, the
        ``energy`` output per atom; per-atom virials then come from the neighbour vectors as
        separate autograd leaves (module docstring)."""
        subsets = any(g.groups is not None for g, _ in copies)
        per_atom = any(g.per_atom for g, _ in copies)
        if subsets and self.subset_refusal:
            raise ModelError(self.subset_refusal)
        if per_atom and not self.per_atom_energies:
            raise ModelError(
                f"{self.path}: the metatomic model has no per-atom energy output (its 'energy' is "
                "per system): run without --per-atom (compute pe/atom, stress/atom)"
            )
        if direct:
            return self._evaluate_direct(copies, subsets, per_atom)
        dev, dt = self.device, self.dtype
        systems, leaves, strains, edge_leaves = self._systems(copies, grad=True)
        options = self.options
        if subsets or per_atom:
            options = self._options(copies, per_atom)
        outputs = self._run(systems, options)
        block = outputs["energy"].block()
        values = block.values.reshape(-1)
        energies = self._copy_energies(block, len(copies), per_atom)
        flat_edges = [vectors for edges in edge_leaves for (_, _, vectors) in edges]
        grads = torch.autograd.grad(energies.sum(), leaves + strains + flat_edges, allow_unused=True)
        n = len(copies)
        edge_grads = iter(grads[2 * n :])
        if per_atom:
            sample_np = block.samples.values.to("cpu", torch.int64).numpy()
            values_np = values.detach().to("cpu", torch.float64).numpy()
        results = []
        for k, (g, rot) in enumerate(copies):
            g_x, g_eps = grads[k], grads[n + k]
            g_x = torch.zeros_like(leaves[k]) if g_x is None else g_x
            virial = -g_eps.T if g_eps is not None else torch.zeros((3, 3), dtype=dt, device=dev)
            forces = -g_x
            atom_virials = None
            if g.per_atom:  # the direct terms: -g_i ⊗ x_i (the cell's, if any, is in no atom)
                x = leaves[k].detach()
                atom_virials = -g_x[:, :, None] * x[:, None, :]
            for i_t, j_t, vectors in edge_leaves[k]:
                g_e = next(edge_grads)
                if g_e is None:
                    continue
                forces = forces.index_add(0, i_t, g_e).index_add(0, j_t, -g_e)
                half = -0.5 * g_e[:, :, None] * vectors.detach()[:, None, :]
                virial = virial + 2.0 * half.sum(dim=0)
                atom_virials = atom_virials.index_add(0, i_t, half).index_add(0, j_t, half)
            forces = forces.detach().to("cpu", torch.float64).numpy()
            virial = virial.detach().to("cpu", torch.float64).numpy()
            result = CopyResult(float(energies[k].detach()), forces @ rot, rot.T @ virial @ rot)
            if g.per_atom:
                mine = sample_np[:, 0] == k
                groups = g.groups if g.groups is not None else np.arange(len(g.numbers))
                atom_energies = np.zeros(g.n_groups)
                atom_energies[groups[sample_np[mine, 1]]] = values_np[mine]
                w = atom_virials.detach().to("cpu", torch.float64).numpy()
                result = result._replace(atom_energies=atom_energies, atom_virials=rot.T @ w @ rot)
            results.append(result)
        return results

    def _run(self, systems, options):
        """One call of the model, without TorchScript's optimizing executor (its profiled,
        differentiated graphs): on 2 CPU cores, 192 water atoms, the export of the shipped PET then
        takes 61-74 ms per energy + forces + virial call instead of 75-83 ms (three interleaved
        processes each); metatrain's PET 27-38 ms either way. What metatomic's ``check_consistency``
        would check, the adapter builds itself (the lists, the options), so it is off."""
        with torch.jit.optimized_execution(False):
            return self.module(systems, options, check_consistency=False)

    def _systems(self, copies, grad: bool):
        """One ``System`` per copy (positions x Rᵀ, cell Rᵀ) with the requested lists; with ``grad``
        positions and a strain are autograd leaves (per-atom virials: the vectors too). Returns
        (systems, position leaves, strains, per copy [(i, j, vector leaves)])."""
        dev, dt = self.device, self.dtype
        systems, leaves, strains, edge_leaves = [], [], [], []
        for g, rot in copies:
            leaf = torch.tensor(g.positions @ rot.T, dtype=dt, device=dev, requires_grad=grad)
            cell = torch.tensor((g.cell * g.pbc[:, None]) @ rot.T, dtype=dt, device=dev)
            strain = None
            positions = leaf
            if grad:
                strain = torch.eye(3, dtype=dt, device=dev, requires_grad=True)
                positions, cell = leaf @ strain, cell @ strain
            system = self._mta.System(
                torch.tensor(g.numbers, dtype=torch.int32, device=dev),
                positions,
                cell,
                torch.tensor(g.pbc, dtype=torch.bool, device=dev),
            )
            edges = []
            for request in self.requests:
                block, pairs = self._neighbors(g, positions, cell, request, separate=grad and g.per_atom)
                system.add_neighbor_list(request, block)
                if pairs is not None:
                    edges.append(pairs)
            systems.append(system)
            leaves.append(leaf)
            strains.append(strain)
            edge_leaves.append(edges)
        return systems, leaves, strains, edge_leaves

    @staticmethod
    def _copy_energies(block, n_copies: int, per_atom: bool):
        """Each copy's energy from the ``energy`` block (per atom: summed over the copy's atoms)."""
        values = block.values.reshape(-1)
        if not per_atom:
            return values
        sample = block.samples.values.to(torch.int64)
        energies = torch.zeros(n_copies, dtype=values.dtype, device=values.device)
        return energies.index_add(0, sample[:, 0], values)

    def _evaluate_direct(self, copies, subsets: bool, per_atom: bool):
        """Direct forces: the ``energy`` (forward only) and the ``non_conservative_force`` (and
        ``_stress``, as the virial W = −σV; zero without a cell) outputs, no backward pass. Forces
        come back as predicted (the Evaluator removes the net force); per-atom virials are zero."""
        with torch.no_grad():
            systems, _, _, _ = self._systems(copies, grad=False)
            options = self._options(copies, per_atom, direct=True, select=subsets or per_atom)
            out = self._run(systems, options)
        block = out["energy"].block()
        energies = self._copy_energies(block, len(copies), per_atom).to("cpu", torch.float64).numpy()
        f_block = out[self._nc_force].block()
        f_samples = f_block.samples.values.to("cpu", torch.int64).numpy()
        f_values = f_block.values.reshape(-1, 3).to("cpu", torch.float64).numpy()
        stresses = None
        if self._nc_stress:
            stresses = out[self._nc_stress].block().values.reshape(-1, 3, 3).to("cpu", torch.float64).numpy()
        if per_atom:
            e_samples = block.samples.values.to("cpu", torch.int64).numpy()
            e_values = block.values.reshape(-1).to("cpu", torch.float64).numpy()
        results = []
        for k, (g, rot) in enumerate(copies):
            mine = f_samples[:, 0] == k
            forces = np.zeros((len(g.numbers), 3))
            forces[f_samples[mine, 1]] = f_values[mine]
            virial = np.zeros((3, 3))
            if stresses is not None:
                volume = abs(np.linalg.det(g.cell * g.pbc[:, None]))
                virial = -stresses[k] * volume
            result = CopyResult(float(energies[k]), forces @ rot, rot.T @ virial @ rot)
            if g.per_atom:
                here = e_samples[:, 0] == k
                groups = g.groups if g.groups is not None else np.arange(len(g.numbers))
                atom_energies = np.zeros(g.n_groups)
                atom_energies[groups[e_samples[here, 1]]] = e_values[here]
                result = result._replace(
                    atom_energies=atom_energies, atom_virials=np.zeros((len(g.numbers), 3, 3))
                )
            results.append(result)
        return results

    def _options(self, copies, per_atom: bool, direct: bool = False, select: bool = True):
        """Evaluation options: the ``energy`` (per atom with ``per_atom``), with ``direct`` also the
        non-conservative force (and stress) outputs, and with ``select`` ``selected_atoms`` = each
        copy's counted atoms (group ≥ 0)."""
        kind = "atom" if per_atom else "system"
        outputs = {"energy": self._mta.ModelOutput(unit="eV", sample_kind=kind)}
        if direct:
            outputs[self._nc_force] = self._mta.ModelOutput(unit="eV/Angstrom", sample_kind="atom")
            if self._nc_stress:
                outputs[self._nc_stress] = self._mta.ModelOutput(unit="eV/Angstrom^3", sample_kind="system")
        if not select:
            return self._mta.ModelEvaluationOptions(length_unit="angstrom", outputs=outputs)
        rows = []
        for k, (g, _) in enumerate(copies):
            atoms = np.arange(len(g.numbers)) if g.groups is None else np.flatnonzero(g.groups >= 0)
            rows.append(np.column_stack([np.full(len(atoms), k), atoms]))
        values = torch.from_numpy(np.concatenate(rows).astype(np.int32)).to(self.device).reshape(-1, 2)
        return self._mta.ModelEvaluationOptions(
            length_unit="angstrom",
            outputs=outputs,
            selected_atoms=self._mts.Labels(["system", "atom"], values),
        )

    def _probe_subsets(self) -> str | None:
        """Why the model cannot give the energy of a subset of atoms (None: it can): the energy
        of a 3-atom chain must equal the sum of its atoms' energies, each asked for with
        ``selected_atoms`` (and per atom, when the model has a per-atom energy)."""

        whole = probe_chain(self)
        eye = np.eye(3)
        copies = []
        for k in range(3):
            groups = np.full(3, -1, dtype=np.int64)
            groups[k] = 0
            copies.append((dataclasses.replace(whole, groups=groups), eye))
        try:
            total = self.evaluate([(whole, eye)])[0].energy
            parts = sum(r.energy for r in self.evaluate(copies))
        except Exception as err:  # noqa: BLE001 - a model that cannot do it simply does not qualify
            return f"it fails when asked for selected_atoms ({first_line(err)[:120]})"
        tolerance = (1e-5 if self.dtype == torch.float32 else 1e-10) * max(1.0, abs(total))
        if abs(total - parts) > tolerance:
            return (
                f"its energies of selected_atoms do not add up to the whole (3-atom chain: {total:.6g} "
                f"vs {parts:.6g} eV): it ignores selected_atoms or is not a sum of atomic terms"
            )
        return None

    def _neighbors(self, g, positions, cell, request, separate: bool = False):
        """The requested list cut from the Evaluator's full list, vectors differentiable in x and ε;
        with ``separate`` the vectors are autograd leaves of their own (per-atom virials), returned
        with their pairs as ``(i, j, vectors)`` (else None)."""
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
        pairs = None
        if separate:
            vectors = vectors.detach().requires_grad_(True)
            pairs = (i_t, j_t, vectors)
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
        return block, pairs
