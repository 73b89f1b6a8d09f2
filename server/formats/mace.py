"""MACE models (https://github.com/ACEsuit/mace) as TorchScript files, served with torch only.

Two kinds of file, both written by mace-torch with ``e3nn.util.jit.compile`` (TorchScript):

* the LAMMPS export ``MODEL-lammps.pt`` of ``mace_create_lammps_model MODEL``
  (``mace.cli.create_lammps_model``): a ``LAMMPS_MACE`` wrapper holding the MACE model as its
  submodule ``model``, a ``head`` buffer and a ``local_or_ghost`` mask on its per-node energies;
* a scripted MACE model (``MACE`` / ``ScaleShiftMACE``), e.g. the ``*_compiled.model`` that
  ``mace_run_train`` writes next to its pickled ``.model``.

A pickled ``.model`` (``torch.save`` of the Python module) needs mace-torch to be read: it is
refused with the command that turns it into a LAMMPS export.

How it maps onto the Evaluator (the ``ModelAdapter`` interface, ARCHITECTURE.md): every copy
(bead, rotated copy) of a chunk is one graph of MACE's batched input dictionary, and the MACE
model (the wrapper's ``model`` for a LAMMPS export) is called once per chunk with

* ``positions`` x Rᵀ, ``cell`` (rows) Rᵀ, ``edge_index`` = our full vesin list (row 0 the centre
  i, MACE's sender; row 1 the neighbour j, its receiver), ``unit_shifts`` S and ``shifts`` S·cell
  Rᵀ, so that MACE's edge vectors x_j − x_i + shifts are our r_ij;
* ``node_attrs`` the one-hot of each atom's index in the model's ``atomic_numbers``, ``batch``
  (copy index), ``ptr`` and ``head`` (the wrapper's head; for a multi-head scripted model the head
  named "default", else the last, as MACE's calculator);

and its per-node energies (E0 + interaction terms) are summed per counted energy term of
:func:`~mlip_server.formats.edges.pack` (a whole copy; a LAMMPS rank's owned atoms, the ghosts'
terms dropped, exactly what the wrapper's ``local_or_ghost`` mask does; one term per atom for
per-atom energies). ``shifts`` is an autograd leaf: since MACE's edge vectors are
x_j − x_i + shifts, ∂E/∂shifts = ∂E/∂r_e = g_e, and forces F_i = Σ_{e: i centre} g_e −
Σ_{e: i neighbour} g_e, the virial W = −Σ_e r_e ⊗ g_e = −∂E/∂ε (eV) and per-atom virials follow
as for the contract models (:func:`~mlip_server.formats.edges.assemble_gradients`). This holds
because a MACE energy depends on positions only through edge vectors, which the loader checks
(a translated probe has the same energy).

Interaction range (the domain route's ghost shell): ``r_max × num_interactions``.
"""

from __future__ import annotations

import zipfile

import numpy as np
import torch

from ..core.errors import ModelError
from .base import ModelAdapter, first_line
from .edges import assemble_gradients, pack

__all__ = ["MaceModel", "mace_archive_kind"]

__FORMAT_NAME__ = "mace"
__FORMAT_CLASS__ = "MaceModel"

_LAMMPS_CODE = "/code/__torch__/mace/calculators/lammps_mace"
_MODEL_CODE = "/code/__torch__/mace/modules/models"
"""Where TorchScript keeps the code of MACE's classes (``.py``, or a folder of mangled versions)."""
_ENERGY_MODELS = ("MACE", "ScaleShiftMACE")
_SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F", 11: "Na", 15: "P", 16: "S", 17: "Cl"}
EXPORT_HINT = "mace_create_lammps_model MODEL (mace-torch; writes MODEL-lammps.pt, TorchScript)"


def _symbol(z: int) -> str:
    try:
        from ase.data import chemical_symbols

        return chemical_symbols[z]
    except (ImportError, IndexError):  # pragma: no cover
        return _SYMBOLS.get(z, str(z))


def mace_archive_kind(path: str) -> str | None:
    """What a file is, from its zip archive's names alone (no loading): ``"lammps"`` (a
    ``LAMMPS_MACE`` export), ``"scripted"`` (a scripted MACE model), ``"pickled"`` (a
    ``torch.save`` of a MACE module: no TorchScript code), or None (not MACE, or a metatomic
    model that wraps one: the metatomic format serves those)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith("/extra/metatomic-version") for n in names):
                return None
            if any(_LAMMPS_CODE in n for n in names):
                return "lammps"
            if any(_MODEL_CODE in n for n in names):
                return "scripted"
            if any("/code/" in n for n in names):
                return None
            pickles = [n for n in names if n.endswith("/data.pkl")]
            if pickles:
                with archive.open(pickles[0]) as f:
                    head = f.read(4 << 20)
                if b"mace.modules.models" in head or b"mace.calculators" in head:
                    return "pickled"
    except (zipfile.BadZipFile, OSError, KeyError):
        return None
    return None


class MaceModel(ModelAdapter):
    """A loaded MACE TorchScript model (a LAMMPS export or a scripted MACE model).

    Attributes
    ----------
    module : torch.jit.ScriptModule
        The file's module (the ``LAMMPS_MACE`` wrapper or the MACE model).
    model : torch.jit.ScriptModule
        The MACE model called (the wrapper's ``model``, or ``module`` itself).
    kind : str
        ``"lammps"`` or ``"scripted"``.
    species : list of int
        The model's ``atomic_numbers``; an atom's one-hot type is its index there.
    r_max : float
        MACE's cutoff, Å (our neighbour-list cutoff).
    num_interactions : int
        Message-passing layers: the interaction range is ``r_max × num_interactions``.
    head : int
        The head evaluated.
    """

    label = "MACE model"
    # after compiled (20) and metatomic (10: a metatomic-wrapped MACE is served as metatomic); before
    # the contract (0), which takes every other TorchScript file
    priority = 5

    @classmethod
    def recognizes(cls, path: str) -> bool:
        return mace_archive_kind(path) is not None

    @classmethod
    def load(cls, path, device, dtype) -> "MaceModel":
        kind = mace_archive_kind(path)
        if kind == "pickled":
            raise ModelError(
                f"{path!r} is a pickled MACE model (torch.save), which only mace-torch can read: "
                f"export it as TorchScript with {EXPORT_HINT}, and serve that file"
            )
        try:
            module = torch.jit.load(path, map_location=device)
        except Exception as err:  # torch raises RuntimeError/ValueError with long texts
            raise ModelError(
                f"{path!r} looks like a MACE TorchScript file but torch {torch.__version__} cannot load "
                f"it ({first_line(err)[:120]}): export it again with {EXPORT_HINT}"
            ) from None
        if dtype is not None:  # cast as mace_create_lammps_model --dtype does (weights rounded once)
            module = module.to(dtype=dtype)
        model = cls(module, path, kind, device)
        model.requested_dtype = dtype is not None
        return model

    def __init__(self, module, path: str, kind: str, device: torch.device):
        self.module, self.path, self.kind, self.device = module, path, kind, device
        name = getattr(module, "original_name", type(module).__name__)
        inner = module
        if kind == "lammps" or name == "LAMMPS_MACE":
            kind = self.kind = "lammps"
            if not hasattr(module, "model"):
                raise ModelError(f"{path!r}: this LAMMPS_MACE export has no 'model': {EXPORT_HINT}")
            inner = module.model
        self.wrapper_class = name if kind == "lammps" else None
        self.model = inner
        for parameter in module.parameters():  # served, never trained (as LAMMPS_MACE does)
            parameter.requires_grad_(False)
        self.model_class = getattr(inner, "original_name", type(inner).__name__)
        missing = [a for a in ("atomic_numbers", "r_max", "num_interactions") if not hasattr(inner, a)]
        if missing:
            raise ModelError(
                f"{path!r}: this MACE file ({self.model_class}) has no {', '.join(missing)}: it is not "
                f"a MACE energy model; export one with {EXPORT_HINT}"
            )
        self.species = [int(z) for z in inner.atomic_numbers.tolist()]
        self.r_max = float(inner.r_max)
        self.num_interactions = int(inner.num_interactions)
        self.cutoff = self.r_max
        self._types = torch.full((max(self.species) + 1,), -1, dtype=torch.int64)
        self._types[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.interaction_range = self.r_max * self.num_interactions
        self.declared_range = True
        self.dtype = _own_dtype(inner)
        self.heads = [str(h) for h in getattr(inner, "heads", ["Default"]) or ["Default"]]
        if kind == "lammps" and hasattr(module, "head"):
            self.head = int(module.head.reshape(-1)[0])
        else:
            default = [k for k, h in enumerate(self.heads) if h.lower() == "default"]
            self.head = default[0] if default else len(self.heads) - 1
        self.e0s = _e0s(inner, self.head, len(self.species))
        self._jit_optimize = device.type == "cuda"  # as for contract models (formats/contract.py)
        # the energy is the sum of MACE's node energies, grouped here by pack()'s structure_index:
        # any subset of atoms (a domain rank's owned atoms, each atom alone) can be counted
        self.sums_atomic_energies = True
        self.per_atom_energies = True
        self.requested_dtype = False
        with torch.jit.optimized_execution(self._jit_optimize):
            self._probe(name)

    def describe(self) -> list[str]:
        source = (
            f"a LAMMPS export ({self.wrapper_class}, as mace_create_lammps_model writes)"
            if self.kind == "lammps"
            else "a scripted MACE model"
        )
        species = " ".join(_symbol(z) for z in self.species)
        types = " ".join(str(k) for k in range(len(self.species)))
        e0s = ", ".join(f"{_symbol(z)} {e:.6g}" for z, e in zip(self.species, self.e0s))
        head = f"head {self.heads[self.head]!r}" + (
            f" ({self.head + 1} of {len(self.heads)})" if len(self.heads) > 1 else ""
        )
        return [
            f"MACE model ({self.model_class}): {self.num_interactions} interactions, r_max "
            f"{self.r_max:g} Å (interaction range {self.interaction_range:g} Å), from {source}",
            f"species {species} → one-hot types {types}; " + (f"E0s (eV) {e0s}; " if e0s else "") + head,
        ]

    # -- evaluation -------------------------------------------------------------------
    def evaluate(self, copies, direct: bool = False):
        """Energies (eV), forces [N,3] (eV/Å) and virials [3,3] (eV) of ``copies`` (see
        :meth:`ModelAdapter.evaluate`) from one call of the MACE model (module docstring)."""
        if direct:
            raise ModelError(f"MACE model {self.path} has no direct forces: serve it without 'direct'")
        batch = pack(copies, self.device, self.dtype, requires_grad=False)
        data, shifts = self._inputs(copies, batch)
        with torch.jit.optimized_execution(self._jit_optimize):
            energies = self._energies(data, batch)
            grad = None
            if shifts.shape[0] > 0 and batch.n_counted > 0 and energies.requires_grad:
                (grad,) = torch.autograd.grad(energies.sum(), shifts, allow_unused=True)
        return assemble_gradients(batch, energies, grad)

    def _energies(self, data, batch):
        """The counted energy terms [n_counted] (eV): node energies summed by ``structure_index``."""
        out = self.model(
            data,
            training=False,
            compute_force=False,
            compute_virials=False,
            compute_stress=False,
            compute_displacement=False,
        )
        node = out["node_energy"]
        if node is None:
            raise ModelError(f"MACE model {self.path} returned no node_energy: it is not an energy model")
        terms = torch.zeros(batch.n_counted + 1, dtype=node.dtype, device=node.device)
        terms = terms.index_add(0, batch.structure_index, node)
        return terms[: batch.n_counted]

    def _inputs(self, copies, batch):
        """MACE's input dictionary for a chunk of copies, and the ``shifts`` leaf [E,3]."""
        dev, dt = self.device, self.dtype
        positions, cells, unit_shifts, shifts, counts = [], [], [], [], []
        for g, rot in copies:
            cell = (g.cell * g.pbc[:, None]) @ rot.T
            positions.append(g.positions @ rot.T)
            cells.append(cell)
            unit_shifts.append(g.shifts.astype(np.float64))
            shifts.append(g.shifts @ cell)
            counts.append(len(g.numbers))
        types = self._types[batch.numbers.to(self._types.device)].to(dev)  # Z → index in atomic_numbers
        node_attrs = torch.nn.functional.one_hot(types, len(self.species)).to(dt)
        counts_t = torch.tensor(counts, dtype=torch.int64, device=dev)
        shift_leaf = torch.from_numpy(np.concatenate(shifts).reshape(-1, 3)).to(device=dev, dtype=dt)
        shift_leaf.requires_grad_(True)
        data = {
            "positions": torch.from_numpy(np.concatenate(positions)).to(device=dev, dtype=dt),
            "cell": torch.from_numpy(np.concatenate(cells)).to(device=dev, dtype=dt),
            "edge_index": batch.edge_index,
            "unit_shifts": torch.from_numpy(np.concatenate(unit_shifts).reshape(-1, 3)).to(dev, dt),
            "shifts": shift_leaf,
            "node_attrs": node_attrs,
            "batch": torch.repeat_interleave(torch.arange(len(copies), device=dev), counts_t),
            "ptr": torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(counts_t, 0)]),
            "head": torch.full((len(copies),), self.head, dtype=torch.int64, device=dev),
        }
        return data, shift_leaf

    def _probe(self, name: str):
        """A dry run on a small periodic structure and its translated copy: finite energies and
        forces, and the same energy after a translation (the energy depends on positions only
        through edge vectors, which the forces and virials from ∂E/∂shifts rely on)."""
        from ..core.graph import Structure, build_graph

        rng = np.random.default_rng(0)
        d = 0.35 * self.r_max
        x = np.array([[0.0, 0, 0], [d, 0.2 * d, 0], [0.1 * d, d, 0.3 * d], [0.9 * d, 0.8 * d, 0.9 * d]])
        x = x + 0.05 * d * rng.standard_normal(x.shape)
        z = np.array([self.species[k % len(self.species)] for k in range(len(x))])
        cell = np.diag([2.2 * d, 2.4 * d, 2.6 * d])
        pbc = np.ones(3, bool)

        def graph(offset):
            s = Structure(x + offset, z, cell, pbc)
            return build_graph(s, "probe", set(self.species), self.cutoff, 0.0, self.path)

        eye = np.eye(3)
        try:
            first, moved = self.evaluate([(graph(0.0), eye), (graph(np.array([0.31, -0.17, 0.23]) * d), eye)])
        except ModelError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure of the model's code is one line
            raise ModelError(
                f"{self.path!r}: the MACE model ({name}) failed a dry run with MACE's inputs "
                f"({first_line(err, last=True)[:160]}): export it with {EXPORT_HINT}"
            ) from None
        if not (np.isfinite(first.energy) and np.isfinite(first.forces).all()):
            raise ModelError(f"{self.path!r}: the MACE model gives non-finite energies in a dry run")
        tolerance = (1e-5 if self.dtype == torch.float32 else 1e-9) * max(1.0, abs(first.energy))
        if abs(first.energy - moved.energy) > tolerance:
            raise ModelError(
                f"{self.path!r}: this MACE model ({self.model_class}) depends on absolute positions, "
                f"not only on interatomic vectors (a translation changes its energy by "
                f"{abs(first.energy - moved.energy):.3g} eV): it is not supported"
            )


def _own_dtype(module) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float64


def _e0s(model, head: int, n: int) -> list:
    """The model's E0s (eV) for its head, one per species (empty if it has none)."""
    try:
        e0 = model.atomic_energies_fn.atomic_energies.detach().to("cpu", torch.float64)
    except Exception:  # noqa: BLE001 - describing only
        return []
    if e0.dim() == 2:
        e0 = e0[head if e0.shape[0] > head else 0]
    return [float(v) for v in e0.reshape(-1)[:n]]
