"""NequIP and Allegro models: the AOTInductor packages of ``nequip-compile`` (``.nequip.pt2``).

``nequip-compile CKPT OUT.nequip.pt2 --mode aotinductor --device cpu --target batch`` writes a
``torch.export`` program of the model with its forces and stress inside (autograd unfolded
before export) and, in the package's AOTInductor metadata (``<archive>/data/aotinductor/
<model>/*_metadata.json``), what a third party needs to call it: ``nequip_aoti_inputs`` and
``nequip_aoti_outputs`` (the program's positional inputs and outputs, as nequip's field names),
``r_max`` (Å), ``type_names`` (atom type i of the model is ``type_names[i]``), ``model_dtype``,
``AOTI_DEVICE_KEY`` (the device it was compiled for). Serving it needs torch only
(``torch._inductor.aoti_load_package``), never nequip. nequip's older TorchScript files
(``--mode torchscript``, ``*.nequip.pth``: the whole model with its forces, a dict of fields in
and out, ``r_max``/``type_names``/``model_dtype`` as TorchScript extra files) are served the same
way through ``torch.jit.load``: always many frames per call, cell and shifts given.

What the server gives the program, per copy (graph + rotation R, x' = x Rᵀ, cell' = cell Rᵀ):

* ``pos`` [N,3] Å, ``edge_index`` [2,E] (row 0 the centre i, row 1 the neighbour j: nequip's
  own convention, r_ij = x_j − x_i + S·cell), ``atom_types`` [N] (the index of the atom's
  chemical symbol in ``type_names``);
* with ``cell`` and ``edge_cell_shift`` among the inputs (targets ``batch``, ``ase``,
  ``pair_nequip``): the cell [B,3,3] (a non-periodic structure gets its box, or a unit box when it
  has none: without periodic shifts the energy does not depend on it, and it keeps the stress
  finite, whence the virial) and the integer shifts S [E,3]; without them (target
  ``pair_allegro``, the form of LAMMPS' pair style) every periodic image an edge reaches becomes
  an extra atom (``x_j + S·cell``, one per atom and shift, like LAMMPS' ghosts), whose force is
  added back to atom j;
* with ``batch`` and ``num_atoms`` among the inputs (target ``batch``), all copies of a chunk
  in one call (the program needs at least 2 frames: one small dropped frame pads a single copy);
  otherwise one call per copy. Below the programs' smallest sizes (2 atoms, 2 edges: a lone
  atom) two padding atoms 1.5 r_max apart are added (no force, no virial, energies dropped).

Positions, cells and shifts are float64 whatever the model's ``model_dtype`` (nequip's global
dtype; the program casts to the model's precision inside).

Outputs: the energy (``total_energy``, or the sum of ``atomic_energy`` over the structure's
atoms), ``forces`` (−∂E/∂x, eV/Å) and the virial: nequip's ``virial`` is −∂E/∂ε, the server's W
(eV), its ``stress`` is +∂E/∂ε / V (ASE's sign), so W = −σ V with V = |det cell| of the cell
given. Forces come back as F R, the virial as Rᵀ W R.

The energy of a subset of atoms (the owned atoms of a LAMMPS domain rank) is possible only for
a strictly local model (Allegro): an atom's energy depends only on the edges centred on it, so
giving the program only the counted atoms' edges makes every other atom's energy a constant and
the program's forces and virial those of the counted atoms' energy (what nequip's LAMMPS pair
style for Allegro does). The adapter checks it at load time: on a 3-atom chain each atom's energy
with only its own edges equals its energy in the whole, and on chains of growing length (atoms
0.52 r_max apart, so that each sees only its neighbours) atom 0's energy does not change when a
second neighbour is added; the last chain that changes it gives the number of message-passing
hops (the interaction range, hops × r_max). A NequIP model fails it (its atoms' energies feel
their neighbours' edges), and its domain route is refused in one line.
Per-atom energies and virials (``--per-atom``: ``compute pe/atom``, ``stress/atom``) of a strictly
local model: its ``atomic_energy``, and W_i = −½ Σ_{e ∋ i} g_e ⊗ r_e with g_e = ∂E/∂r_e read off
the program's forces by giving each edge's neighbour an atom of its own (the force on it is −g_e,
since no other edge involves it); refused for message-passing models.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
import zipfile

import numpy as np
import torch

from ..core.errors import ModelError
from ..core.graph import CopyResult
from .base import ModelAdapter, first_line, probe_chain

__all__ = ["NequIPModel", "is_nequip_package", "read_nequip_metadata"]

__FORMAT_NAME__ = "nequip"
__FORMAT_CLASS__ = "NequIPModel"

INPUTS_KEY = "nequip_aoti_inputs"
OUTPUTS_KEY = "nequip_aoti_outputs"
REQUIRED_METADATA = ("r_max", "type_names", INPUTS_KEY, OUTPUTS_KEY)
SUPPORTED_INPUTS = {"pos", "edge_index", "atom_types", "cell", "edge_cell_shift", "batch", "num_atoms"}
COMPILE_HINT = "nequip-compile MODEL OUT.nequip.pt2 --mode aotinductor --device {device} --target batch"
INPUT_DTYPE = torch.float64
"""nequip's global dtype: positions, cells and shifts are float64 whatever the model's precision
(``model_dtype``, which the program casts to inside)."""
MIN_SIZE = 2
"""Smallest number of frames, atoms and edges nequip-compile's programs take (its default bounds)."""


def _metadata_names(archive: zipfile.ZipFile) -> list:
    return [n for n in archive.namelist() if "/aotinductor/" in n and n.endswith("_metadata.json")]


def read_nequip_metadata(path: str) -> dict | None:
    """The package's AOTInductor metadata (one of its ``*_metadata.json``); None without one."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = _metadata_names(archive)
            if not names:
                return None
            return json.loads(archive.read(sorted(names)[0]))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def is_torchscript_file(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive with nequip's extra files (``r_max``,
    ``type_names``): ``nequip-compile --mode torchscript``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n.split("/", 1)[-1] for n in archive.namelist()}
    except (zipfile.BadZipFile, OSError):
        return False
    return {"extra/r_max", "extra/type_names"} <= names


def is_nequip_package(path: str) -> bool:
    """Whether ``path`` is named like a nequip-compile file, is an AOTInductor package whose
    metadata holds nequip's keys, or a TorchScript file with nequip's extra files (cheap: the zip
    directory and one small JSON file)."""
    if path.endswith((".nequip.pt2", ".nequip.pth")):
        return True
    meta = read_nequip_metadata(path)
    if meta:
        return INPUTS_KEY in meta or ("r_max" in meta and "type_names" in meta)
    return is_torchscript_file(path)


def _custom_ops(path: str) -> list:
    """Libraries a package compiled with acceleration modifiers needs imported before loading."""
    try:
        with zipfile.ZipFile(path) as archive:
            if "nequip_custom_ops_libs.txt" in archive.namelist():
                return archive.read("nequip_custom_ops_libs.txt").decode().split()
    except (zipfile.BadZipFile, OSError):
        pass
    return []


def _atomic_numbers(type_names: list, path: str) -> list:
    from ase.data import atomic_numbers

    missing = [t for t in type_names if t not in atomic_numbers or t == "X"]
    if missing:
        raise ModelError(
            f"{path!r}: the model's type name {missing[0]!r} is not a chemical symbol (type names "
            f"{' '.join(type_names)}): this server maps atoms to types by element; train the model "
            "with the elements' symbols as type_names"
        )
    numbers = [atomic_numbers[t] for t in type_names]
    if len(set(numbers)) != len(numbers):
        raise ModelError(
            f"{path!r}: two of the model's types are the same element ({' '.join(type_names)}): "
            "this server maps atoms to types by element and cannot choose between them"
        )
    return numbers


def _full_cell(cell: np.ndarray) -> np.ndarray:
    """``cell`` with its zero rows replaced so that its volume is positive (the rows of a
    non-periodic direction only scale the stress, which the virial takes back)."""
    cell = np.array(cell, dtype=np.float64)
    if abs(np.linalg.det(cell)) > 1e-6:
        return cell
    rows = [r for r in cell if np.linalg.norm(r) > 1e-9]
    basis = list(rows)
    for e in np.eye(3):
        if len(basis) == 3:
            break
        candidate = np.array(basis + [e])
        if np.linalg.matrix_rank(candidate, tol=1e-9) == len(basis) + 1:
            basis.append(e)
    full = np.array(basis)
    return full if abs(np.linalg.det(full)) > 1e-6 else np.eye(3)


class NequIPModel(ModelAdapter):
    """A NequIP/Allegro AOTInductor package of ``nequip-compile``.

    Attributes
    ----------
    runner : AOTICompiledModel or torch.jit.ScriptModule
        The loaded program (a list of input tensors → a list of output tensors), or the
        TorchScript model (a dict of fields → a dict of fields).
    metadata : dict
        The package's AOTInductor metadata (a TorchScript file's extra files, with the fields
        it is given and the ones the server reads).
    torchscript : bool
        Whether it is a TorchScript file (``--mode torchscript``).
    inputs, outputs : list of str
        The program's input and output fields, in order.
    type_names : list of str
        The model's types; ``species[i]`` is the atomic number of ``type_names[i]``.
    batched : bool
        Whether the program takes many frames per call (``batch`` and ``num_atoms`` inputs).
    images : bool
        Whether periodic neighbours are given as atoms (no ``cell``/``edge_cell_shift`` input).
    strictly_local : bool
        Whether an atom's energy depends only on the edges centred on it (checked at load time).
    layers : int or None
        How many neighbour hops an atom's energy feels (probed at load time on chains; None
        without per-atom energies).
    per_atom_energies : bool
        Whether per-atom energies and virials can be given (strictly local models).
    """

    label = "nequip model"
    priority = 25  # before compiled (20), which takes every other .pt2, and the contract (0)

    def __init__(self, runner, path, metadata, device):
        self.runner, self.path, self.metadata, self.device = runner, path, metadata, device
        self.inputs = metadata[INPUTS_KEY].split()
        self.outputs = metadata[OUTPUTS_KEY].split()
        self.type_names = metadata["type_names"].split()
        self.species = _atomic_numbers(self.type_names, path)
        self.cutoff = float(metadata["r_max"])
        self.dtype = getattr(torch, metadata.get("model_dtype", "float64"))
        self.batched = "batch" in self.inputs and "num_atoms" in self.inputs
        self.images = "edge_cell_shift" not in self.inputs
        self.interaction_range = self.cutoff
        self.declared_range = False
        self.strictly_local = False
        self.layers = None
        self.per_atom_energies = False
        self.torchscript = False
        self._type_of = np.full(max(self.species) + 1, -1, dtype=np.int64)
        self._type_of[self.species] = np.arange(len(self.species))
        self._probing = False

    # ------------------------------------------------------------------ loading

    @classmethod
    def recognizes(cls, path: str) -> bool:
        return is_nequip_package(path)

    @classmethod
    def load(cls, path, device, dtype) -> "NequIPModel":
        if path.endswith(".nequip.pth") or (not read_nequip_metadata(path) and is_torchscript_file(path)):
            return cls._load_torchscript(path, device, dtype)
        meta = read_nequip_metadata(path)
        missing = [k for k in REQUIRED_METADATA if not meta or k not in meta]
        if missing:
            raise ModelError(
                f"{path!r} has no nequip metadata ({', '.join(missing)} missing from its AOTInductor "
                "metadata): compile the model again with nequip-compile (nequip >= 0.17): "
                + COMPILE_HINT.format(device=device.type)
            )
        compiled_for = meta.get("AOTI_DEVICE_KEY", "cpu")
        if torch.device(compiled_for).type != device.type:
            raise ModelError(
                f"{path!r} was compiled by nequip-compile for {compiled_for}, asked to run on "
                f"{device}: compile it for this device ({COMPILE_HINT.format(device=device.type)}) "
                f"or serve it with --device {torch.device(compiled_for).type}"
            )
        own = meta.get("model_dtype", "float64")
        if dtype is not None and str(dtype).removeprefix("torch.") != own:
            raise ModelError(
                f"{path!r} is a {own} nequip model, asked for {str(dtype).removeprefix('torch.')}: a "
                f"compiled package runs in its own precision: drop --dtype (or train with model_dtype: "
                f"{str(dtype).removeprefix('torch.')})"
            )
        if meta.get("per_edge_type_cutoff"):
            raise ModelError(
                f"{path!r} uses per-edge-type cutoffs ({meta['per_edge_type_cutoff']}), which this "
                "server's neighbour list does not apply: serve a model trained without per_edge_type_cutoff"
            )
        unknown = sorted(set(meta[INPUTS_KEY].split()) - SUPPORTED_INPUTS)
        needed = {"pos", "edge_index", "atom_types"} - set(meta[INPUTS_KEY].split())
        if unknown or needed:
            raise ModelError(
                f"{path!r} takes inputs {meta[INPUTS_KEY]!r}: this server gives "
                f"{' '.join(sorted(SUPPORTED_INPUTS))}; compile with "
                + COMPILE_HINT.format(device=device.type)
            )
        outputs = meta[OUTPUTS_KEY].split()
        if "forces" not in outputs or not {"total_energy", "atomic_energy"} & set(outputs):
            raise ModelError(
                f"{path!r} outputs {meta[OUTPUTS_KEY]!r}: the server needs forces and total_energy or "
                f"atomic_energy: {COMPILE_HINT.format(device=device.type)}"
            )
        if not {"virial", "stress"} & set(outputs):
            raise ModelError(
                f"{path!r} outputs {meta[OUTPUTS_KEY]!r}, neither virial nor stress: "
                + COMPILE_HINT.format(device=device.type)
            )
        libs = _custom_ops(path)
        if libs:
            raise ModelError(
                f"{path!r} needs the custom-operator libraries {', '.join(libs)} (it was compiled with "
                "acceleration --modifiers): compile it without --modifiers to serve it with torch alone"
            )
        try:
            from torch._inductor import aoti_load_package

            index = device.index if device.type == "cuda" and device.index is not None else -1
            runner = aoti_load_package(path, device_index=index)
        except Exception as err:  # noqa: BLE001 - the loader's errors are RuntimeErrors with C++ texts
            raise ModelError(
                f"{path!r} could not be loaded ({first_line(err)[:160]}): AOTInductor packages are "
                "specific to the machine and torch version: compile the model again here with "
                + COMPILE_HINT.format(device=device.type)
            ) from None
        return cls._checked(runner, path, meta, device, dtype)

    @classmethod
    def _checked(cls, runner, path, meta, device, dtype, torchscript=False) -> "NequIPModel":
        model = cls(runner, path, meta, device)
        model.torchscript = torchscript
        model.requested_dtype = dtype is not None
        if model.images and "atomic_energy" not in model.outputs:
            raise ModelError(
                f"{path!r} takes periodic images as atoms but gives no atomic_energy, so the images' "
                f"energies cannot be left out: {COMPILE_HINT.format(device=device.type)}"
            )
        model._probe()
        return model

    @classmethod
    def _load_torchscript(cls, path, device, dtype) -> "NequIPModel":
        """A TorchScript file of ``nequip-compile --mode torchscript`` (nequip < 0.17 with torch <
        2.10, or nequip's own save function): the whole model with its forces (autograd inside),
        a dict of fields in and out; its metadata are TorchScript extra files."""
        extra = {k: "" for k in ("r_max", "type_names", "model_dtype", "per_edge_type_cutoff", "allow_tf32")}
        try:
            module = torch.jit.load(path, _extra_files=extra, map_location=device)
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeErrors with long texts
            raise ModelError(
                f"{path!r} is not a loadable TorchScript file ({first_line(err)[:120]}): "
                + COMPILE_HINT.format(device=device.type)
            ) from None
        meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items() if v}
        missing = [k for k in ("r_max", "type_names") if k not in meta]
        if missing:
            raise ModelError(
                f"{path!r} has no nequip metadata ({', '.join(missing)} missing from its extra files): "
                + COMPILE_HINT.format(device=device.type)
            )
        own = meta.get("model_dtype", "float64")
        if dtype is not None and str(dtype).removeprefix("torch.") != own:
            raise ModelError(
                f"{path!r} is a {own} nequip model, asked for {str(dtype).removeprefix('torch.')}: a "
                f"compiled model runs in its own precision: drop --dtype"
            )
        if meta.get("per_edge_type_cutoff"):
            raise ModelError(
                f"{path!r} uses per-edge-type cutoffs ({meta['per_edge_type_cutoff']}), which this "
                "server's neighbour list does not apply: serve a model trained without per_edge_type_cutoff"
            )
        meta[INPUTS_KEY] = " ".join(
            ["pos", "edge_index", "atom_types", "cell", "edge_cell_shift", "batch", "num_atoms"]
        )
        meta[OUTPUTS_KEY] = "atomic_energy total_energy forces virial"
        module.eval()
        try:  # what nequip's own loader does (torch deprecates freeze: no warning on stderr)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.freeze(module)
        except Exception:  # noqa: BLE001 - an unfrozen module computes the same
            pass
        return cls._checked(module, path, meta, device, dtype, torchscript=True)

    def _probe(self):
        """Dry run, strict locality (the domain route) and the number of message-passing hops."""

        self._probing = True
        try:
            whole = probe_chain(self)
            eye = np.eye(3)
            try:
                ref = self.evaluate([(whole, eye)])[0]
            except Exception as err:  # noqa: BLE001 - the program's errors are RuntimeErrors with C++ texts
                raise ModelError(
                    f"{self.path!r} failed a dry run on a 3-atom chain ({first_line(err, last=True)[:160]}): "
                    f"compile it again with {COMPILE_HINT.format(device=self.device.type)}"
                ) from None
            if not (np.isfinite(ref.energy) and np.isfinite(ref.forces).all()):
                raise ModelError(f"{self.path!r} gives non-finite energies in a dry run: check the model")
            if "atomic_energy" in self.outputs:
                parts = []
                for k in range(3):
                    groups = np.full(3, -1, dtype=np.int64)
                    groups[k] = 0
                    parts.append((dataclasses.replace(whole, groups=groups), eye))
                energies = [r.energy for r in self.evaluate(parts)]
                own_edges = abs(sum(energies) - ref.energy) <= 3 * self._noise(max(map(abs, energies)))
                self.layers = self._probe_layers()
                self.strictly_local = own_edges and self.layers == 1
            if self.strictly_local:
                self.interaction_range, self.declared_range = self.cutoff, True
            elif self.layers:
                self.interaction_range, self.declared_range = self.layers * self.cutoff, True
        finally:
            self._probing = False
        self.sums_atomic_energies = self.per_atom_energies = self.strictly_local
        if self.strictly_local:
            self.subset_refusal = None
        elif "atomic_energy" not in self.outputs:
            self.subset_refusal = (
                f"nequip model {self.path}: the energy of a rank's owned atoms cannot be asked for: the "
                "package gives no atomic_energy: use --decomposition gather"
            )
        else:
            self.subset_refusal = (
                f"nequip model {self.path}: the energy of a rank's owned atoms cannot be asked for: it "
                f"is a message-passing model ({self.layers or '?'} hops: an atom's energy feels its "
                "neighbours' edges) and the package's forces are those of the whole energy: use "
                "--decomposition gather (the domain route serves strictly local models, e.g. Allegro)"
            )
        if self.images and not self.strictly_local:
            raise ModelError(
                f"{self.path!r} takes periodic images as atoms (no cell input) but is not strictly "
                "local, so images without their own neighbours would give wrong energies: "
                + COMPILE_HINT.format(device=self.device.type)
            )

    def _probe_layers(self, n: int = 8):
        """Hops of message passing: chains of 2 … ``n`` atoms 0.52 r_max apart (each atom sees
        only its neighbours); the largest k such that adding atom k changes atom 0's energy."""
        from ..core.graph import Structure, build_graph

        step = 0.52 * self.cutoff
        copies = []
        for m in range(2, n + 1):
            x = np.column_stack([step * np.arange(m), np.zeros(m), np.zeros(m)])
            z = np.array([self.species[k % len(self.species)] for k in range(m)])
            g = build_graph(Structure(x, z), "probe", set(self.species), self.cutoff, 0.0, self.path)
            g = dataclasses.replace(g, groups=np.arange(m, dtype=np.int64), per_atom=True)
            copies.append((g, np.eye(3)))
        e0 = [r.atom_energies[0] for r in self._evaluate(copies, atom_energies=True)]
        tol = self._noise(e0[0])
        hops = [k for k in range(2, n) if abs(e0[k - 1] - e0[k - 2]) > tol]
        return max(hops) if hops else 1

    def _noise(self, energy: float) -> float:
        """Rounding of an atomic energy of this size in the model's precision (a few ulps): what
        separates two evaluations that differ only in the order of their sums."""
        return 8 * float(torch.finfo(self.dtype).eps) * (1.0 + abs(energy))

    # ------------------------------------------------------------------ evaluation

    def describe(self) -> list[str]:
        meta = self.metadata
        names = " ".join(f"{t}→{z}" for t, z in zip(self.type_names, self.species))
        kind = "TorchScript file" if self.torchscript else "package"
        how = "--mode torchscript" if self.torchscript else "AOTInductor"
        where = (
            "TorchScript (any device)"
            if self.torchscript
            else f"compiled for {meta.get('AOTI_DEVICE_KEY')} ({meta.get('AOTI_CPU_ISA') or '-'} "
            f"{meta.get('AOTI_MACHINE', '')})"
        )
        lines = [
            f"NequIP/Allegro {kind} of nequip-compile ({how}): model_dtype {meta.get('model_dtype')}, "
            f"r_max {self.cutoff:g} Å, types {names} (by chemical symbol)",
            f"{where}; inputs {meta[INPUTS_KEY]}; outputs {meta[OUTPUTS_KEY]}",
            (
                "frames per call: many (a batch program: beads and rotations in one call)"
                if self.batched
                else "frames per call: one (single-frame program: copies evaluated one by one)"
            )
            + ("; periodic images given as atoms" if self.images else ""),
        ]
        if self.strictly_local:
            lines.append(
                "strictly local (probed: each atom's energy is that of its own edges): interaction "
                "range = r_max, LAMMPS domain route by the owned atoms' edges"
            )
        elif self.layers:
            lines.append(
                f"message passing over {self.layers} hops (probed on a chain): interaction range "
                f"{self.interaction_range:g} Å; LAMMPS domain route: no (gather)"
            )
        return lines

    def evaluate(self, copies, direct: bool = False):
        if direct:
            raise ModelError(
                f"nequip model {self.path} has no direct forces (its package gives −∇E): serve it "
                "without 'direct'"
            )
        if not self._probing:
            if not self.per_atom_energies and any(g.per_atom for g, _ in copies):
                raise ModelError(
                    f"nequip model {self.path}: per-atom energies and virials (--per-atom: compute "
                    "pe/atom, stress/atom) need a strictly local model with atomic_energy (Allegro): "
                    "run without --per-atom"
                )
            if self.subset_refusal and any(g.groups is not None for g, _ in copies):
                raise ModelError(self.subset_refusal)
        return self._evaluate(copies, atom_energies=any(g.per_atom for g, _ in copies))

    def _frame(self, g, rot):
        """One copy's program inputs (numpy): positions, edges, types, cell, shifts, the map of
        extra image atoms to their originals and, for per-atom virials, the edges (centres,
        neighbours, vectors r_e in the rotated frame) whose neighbour is image atom n + e."""
        n = len(g.numbers)
        pos = g.positions @ rot.T
        cell = _full_cell(g.cell * g.pbc[:, None] if g.pbc.any() else g.cell) @ rot.T
        edges, shifts = g.edge_index, g.shifts
        if g.groups is not None:  # only the counted atoms' edges (strictly local models)
            keep = g.groups[edges[0]] >= 0
            edges, shifts = edges[:, keep], shifts[keep]
        types = self._type_of[g.numbers]
        origin = np.arange(n)
        if g.per_atom and self.strictly_local:
            # every edge's neighbour an atom of its own: the force on it is −∂E/∂r_e (a strictly
            # local model's atoms feel only their own edges), whence per-atom virials
            i, j = edges
            vectors = pos[j] + shifts @ cell - pos[i]
            pos = np.concatenate([pos, pos[i] + vectors])
            types = np.concatenate([types, types[j]])
            origin = np.concatenate([origin, j])
            edges = np.stack([i, n + np.arange(len(j))])
            shifts = np.zeros((len(j), 3), dtype=np.int64)
            return pos, edges, types, cell, shifts, origin, (i, j, vectors)
        if self.images:
            crossing = np.flatnonzero(np.any(shifts != 0, axis=1))
            if len(crossing):  # one image atom per (atom, shift), as LAMMPS' ghosts
                keys = np.column_stack([edges[1, crossing], shifts[crossing]])
                unique, which = np.unique(keys, axis=0, return_inverse=True)
                j = unique[:, 0]
                extra = pos[j] + unique[:, 1:] @ cell
                edges = edges.copy()
                edges[1, crossing] = n + which.reshape(-1)
                pos = np.concatenate([pos, extra])
                types = np.concatenate([types, types[j]])
                origin = np.concatenate([origin, j])
            shifts = np.zeros((edges.shape[1], 3), dtype=np.int64)
        return pos, edges, types, cell, shifts, origin, None

    def _evaluate(self, copies, atom_energies: bool):
        frames = [self._frame(g, rot) for g, rot in copies]
        empty = [len(f[0]) == 0 for f in frames]
        todo = [k for k, e in enumerate(empty) if not e]
        outs = {}
        if self.batched:
            for k, out in zip(todo, self._call_batched([frames[k] for k in todo])):
                outs[k] = out
        else:
            for k in todo:
                outs[k] = self._call_single(frames[k])
        results = []
        for k, (g, rot) in enumerate(copies):
            n = len(g.numbers)
            if empty[k]:
                result = CopyResult(0.0, np.zeros((0, 3)), np.zeros((3, 3)))
                if g.per_atom:
                    result = result._replace(
                        atom_energies=np.zeros(g.n_groups), atom_virials=np.zeros((0, 3, 3))
                    )
                results.append(result)
                continue
            atomic, total, forces, virial = outs[k]
            origin = frames[k][5]
            f = np.zeros((n, 3))
            np.add.at(f, origin, forces)
            if g.groups is None:
                energy = float(total) if total is not None else float(atomic[:n].sum())
            else:
                counted = g.groups >= 0
                energy = float(atomic[:n][counted].sum())
            result = CopyResult(energy, f @ rot, rot.T @ virial @ rot)
            if atom_energies and g.per_atom:
                groups = g.groups if g.groups is not None else np.arange(n)
                mine = np.zeros(g.n_groups)
                np.add.at(mine, groups[groups >= 0], atomic[:n][groups >= 0])
                w = np.zeros((n, 3, 3))
                if frames[k][6] is not None:  # W_i = −½ Σ_{e ∋ i} g_e ⊗ r_e, g_e = −F(image e)
                    i, j, vectors = frames[k][6]
                    half = 0.5 * forces[n : n + len(i), :, None] * vectors[:, None, :]
                    np.add.at(w, i, half)
                    np.add.at(w, j, half)
                result = result._replace(atom_energies=mine, atom_virials=rot.T @ w @ rot)
            results.append(result)
        return results

    def _run(self, fields: dict) -> dict:
        """The program's outputs (name → tensor) for the input fields."""
        if self.torchscript:
            with torch.enable_grad():  # its forces are autograd inside the module
                out = self.runner(fields)
            return {k: out[k] for k in self.outputs}
        return dict(zip(self.outputs, self.runner([fields[name] for name in self.inputs])))

    def _to(self, array, dtype):
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=self.device, dtype=dtype)

    def _outputs(self, out: dict, volumes) -> tuple:
        as_np = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in out.items()}
        atomic = as_np["atomic_energy"].reshape(-1) if "atomic_energy" in as_np else None
        total = as_np["total_energy"].reshape(-1) if "total_energy" in as_np else None
        if "virial" in as_np:
            virials = as_np["virial"].reshape(-1, 3, 3)
        else:
            virials = -as_np["stress"].reshape(-1, 3, 3) * np.asarray(volumes)[:, None, None]
        return atomic, total, as_np["forces"].reshape(-1, 3), virials

    def _call_single(self, frame):
        pos, edges, types, cell, shifts = frame[:5]
        n = len(pos)
        padded = n < MIN_SIZE or edges.shape[1] < MIN_SIZE
        if padded:  # two atoms far away, 1.5 r_max apart: an edge each way beyond the cutoff
            if "atomic_energy" not in self.outputs:
                raise ModelError(
                    f"nequip model {self.path}: a single-frame package needs at least {MIN_SIZE} atoms "
                    f"and {MIN_SIZE} edges (got {n} atoms, {edges.shape[1]} edges): "
                    + COMPILE_HINT.format(device=self.device.type)
                )
            far = (pos.max(axis=0) if n else np.zeros(3)) + 3 * self.cutoff
            pos = np.concatenate([pos, [far, far + [1.5 * self.cutoff, 0, 0]]])
            edges = np.concatenate([edges, [[n, n + 1], [n + 1, n]]], axis=1)
            types = np.concatenate([types, [0, 0]])
            shifts = np.concatenate([shifts, np.zeros((2, 3), dtype=shifts.dtype)])
        fields = {
            "pos": self._to(pos, INPUT_DTYPE),
            "edge_index": self._to(edges, torch.int64),
            "atom_types": self._to(types, torch.int64),
            "cell": self._to(cell[None], INPUT_DTYPE),
            "edge_cell_shift": self._to(shifts, INPUT_DTYPE),
        }
        raw = self._run(fields)
        atomic, total, forces, virials = self._outputs(raw, [abs(np.linalg.det(cell))])
        if padded:  # beyond the cutoff the pair adds no force and no virial; drop its energies
            return atomic[:n], None, forces[:n], virials[0]
        return atomic, None if total is None else total[0], forces, virials[0]

    def _call_batched(self, frames):
        if not frames:
            return []
        frames = list(frames)
        n_real = len(frames)
        small = sum(len(f[0]) for f in frames) < MIN_SIZE or sum(f[1].shape[1] for f in frames) < MIN_SIZE
        if n_real < MIN_SIZE or small:  # a dropped frame: 2 atoms of the first type, an edge each way
            r = 0.5 * self.cutoff
            frames.append(
                (
                    np.array([[0.0, 0, 0], [r, 0, 0]]),
                    np.array([[0, 1], [1, 0]]),
                    np.zeros(2, dtype=np.int64),
                    np.eye(3) * 3 * self.cutoff,
                    np.zeros((2, 3), dtype=np.int64),
                    np.arange(2),
                )
            )
        sizes = [len(f[0]) for f in frames]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        fields = {
            "pos": self._to(np.concatenate([f[0] for f in frames]), INPUT_DTYPE),
            "edge_index": self._to(
                np.concatenate([f[1] + o for f, o in zip(frames, offsets)], axis=1), torch.int64
            ),
            "atom_types": self._to(np.concatenate([f[2] for f in frames]), torch.int64),
            "cell": self._to(np.stack([f[3] for f in frames]), INPUT_DTYPE),
            "edge_cell_shift": self._to(np.concatenate([f[4] for f in frames]), INPUT_DTYPE),
            "batch": self._to(np.repeat(np.arange(len(frames)), sizes), torch.int64),
            "num_atoms": self._to(np.array(sizes), torch.int64),
        }
        raw = self._run(fields)
        volumes = [abs(np.linalg.det(f[3])) for f in frames]
        atomic, total, forces, virials = self._outputs(raw, volumes)
        outs = []
        for b in range(n_real):
            lo, hi = offsets[b], offsets[b] + sizes[b]
            outs.append(
                (
                    None if atomic is None else atomic[lo:hi],
                    None if total is None else total[b],
                    forces[lo:hi],
                    virials[b],
                )
            )
        return outs
