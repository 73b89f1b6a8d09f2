"""mlip-compile: a contract model → an AOTInductor package (``.pt2``), and the compile cache.

How a TorchScript file becomes a package (:func:`compile_module`):

1. the contract checks of the TorchScript adapter (:class:`~mlip_server.formats.contract.ContractModel`:
   cutoff, species, dry run, interaction range, sums of atomic energies), cast to the dtype and
   device asked for;
2. the TorchScript graph is converted to an FX graph of aten operations
   (``torch._export.converter``; its int arithmetic is made symbolic, and an integer read from
   a tensor clamped to ``min=k``, e.g. PET's largest neighbour count, is declared ≥ k);
   an eager ``torch.nn.Module`` (the training checkpoints' route,
   ``python -m mlip_server.training.train --export CKPT OUT.pt2``) skips this step, and so does
   a TorchScript model whose code the converter cannot take but whose eager module can be
   rebuilt from it (:func:`eager_twin`: a function registered under the entry-point group
   :data:`EAGER_TWIN_GROUP`, the n2p2 teacher's by ``mlip_server.training``; checked equal to the
   TorchScript module first);
3. the program "energies and ∂E/∂r_e" is traced with ``make_fx`` (symbolic shapes), which
   unfolds ``torch.autograd.grad`` into plain operations (exporting a module that calls autograd
   fails otherwise, pytorch #125984), exported with dynamic numbers of edges, atoms and
   structures, compiled by AOTInductor and packaged as the model ``conservative`` with the
   metadata (:mod:`mlip_server.formats.compiled`);
4. the package is loaded and checked against the source model on two batches of different
   sizes before it appears under its name.

:func:`cached_model` is ``--compile`` of mlip-server (and of mlip-run, mlip-lammps-run): the
package of a model is compiled on first use into a cache keyed by the model file's SHA-256, the
torch version, the device and the dtype (``$MLIP_COMPILE_CACHE``, default
``~/.cache/mlip-server/compiled``), reused afterwards; when compiling fails the TorchScript
model is served, after one warning line.

The server never imports ``mlip_server.training`` (ARCHITECTURE.md, "The floors"): a training
checkpoint given to mlip-compile is refused with the command that compiles it, and the eager
modules of TorchScript classes are found through entry points that the training code registers.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import operator
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .core.errors import MLIPError, ModelError
from .formats.base import first_line, parse_device, parse_dtype
from .formats.compiled import (
    CONSERVATIVE,
    DIRECT,
    FORMAT_VERSION,
    METADATA_FILE,
    MIN_SIZE,
    CompiledModel,
    counted,
)

__all__ = [
    "compile_module",
    "compile_file",
    "eager_twin",
    "eager_twins",
    "EAGER_TWIN_GROUP",
    "cached_model",
    "cache_dir",
    "file_hash",
    "CompileError",
    "main",
]

log = logging.getLogger("mlip-server")


class CompileError(ModelError):
    """A model that could not be compiled (export, compilation or the check afterwards)."""


def file_hash(path) -> str:
    """SHA-256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where ``--compile`` keeps packages: ``$MLIP_COMPILE_CACHE``, else ``~/.cache/mlip-server/compiled``."""
    root = os.environ.get("MLIP_COMPILE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mlip-server" / "compiled"


# ---------------------------------------------------------------------------------------------
# example batches


def example_batch(
    species, cutoff: float, grid=(2, 2, 3), n_structures: int = 2, dtype=torch.float64, device="cpu"
):
    """The contract's inputs for ``n_structures`` jittered grids of atoms (spacing 0.4 cutoff,
    every ordered pair within the cutoff an edge) and one dropped structure: returns
    ``(vectors, edge_index, numbers, structure_index, n_structures + 1)``."""
    rng = np.random.default_rng(len(grid) * 7 + n_structures)
    spacing = 0.4 * cutoff
    sites = np.stack(np.meshgrid(*[np.arange(k) for k in grid], indexing="ij"), -1).reshape(-1, 3) * spacing
    vectors, centres, neighbours, numbers, struct = [], [], [], [], []
    offset = 0
    for b in range(n_structures):
        x = sites + rng.uniform(-0.05, 0.05, sites.shape) * spacing
        d = x[None, :, :] - x[:, None, :]
        r = np.linalg.norm(d, axis=-1)
        i, j = np.nonzero((r < cutoff) & ~np.eye(len(x), dtype=bool))
        vectors.append(d[i, j])
        centres.append(i + offset)
        neighbours.append(j + offset)
        numbers.append([species[(k + b) % len(species)] for k in range(len(x))])
        struct.append(np.full(len(x), b))
        offset += len(x)
    return (
        torch.tensor(np.concatenate(vectors), dtype=dtype, device=device),
        torch.tensor(np.stack([np.concatenate(centres), np.concatenate(neighbours)]), device=device),
        torch.tensor(np.concatenate(numbers), device=device),
        torch.tensor(np.concatenate(struct), device=device),
        n_structures + 1,
    )


# ---------------------------------------------------------------------------------------------
# TorchScript → FX


_SCALAR_OPS = {
    "mul": operator.mul,
    "add": operator.add,
    "sub": operator.sub,
    "floordiv": operator.floordiv,
    "div": operator.truediv,
    "remainder": operator.mod,
    "neg": operator.neg,
    "gt": operator.gt,
    "lt": operator.lt,
    "ge": operator.ge,
    "le": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
}


def _fx_of_torchscript(module, example):
    """An FX graph of aten operations equivalent to the TorchScript ``forward``, and a callable
    that runs it (an :class:`torch.fx.Interpreter`: the converter's graph does not survive a
    recompile)."""
    from torch._export import converter as conv

    def jit_graph(model, args):  # the converter's own, without input-shape propagation (which
        # bakes the int n_structures of the example into the graph)
        torch._C._jit_pass_onnx_function_substitution(model.forward.graph)
        frozen = torch._C._freeze_module(model._c, preserveParameters=True)
        frozen, params = torch._C._jit_onnx_list_model_parameters(frozen)
        return frozen._get_method("forward").graph, params, None, frozen

    original = conv._create_jit_graph
    conv._create_jit_graph = jit_graph
    try:
        c = conv.TS2EPConverter(module, example)
    finally:
        conv._create_jit_graph = original
    blocks, fqn = conv.get_block_to_lifted_attrs(c.ts_graph)
    gm = conv.TS2FXGraphConverter(
        c.ts_graph,
        c.name_to_param,
        c.name_to_buffer,
        blocks,
        c.name_to_non_tensor_attributes,
        c.name_to_constant,
        fqn,
    ).convert()
    conv.replace_quantized_ops_with_standard_ops(gm)
    # aten::mul.int & co. take plain ints: symbolic sizes need Python's operators
    for node in gm.graph.nodes:
        t = node.target
        if (
            isinstance(t, torch._ops.OpOverload)
            and t.namespace == "aten"
            and t._opname in _SCALAR_OPS
            and t._schema.returns
            and str(t._schema.returns[0].type) in ("int", "float", "bool", "number", "Scalar")
            and all(str(a.type) in ("int", "float", "number", "Scalar", "bool") for a in t._schema.arguments)
        ):
            node.target = _SCALAR_OPS[t._opname]

    class _Run(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.target is torch.ops.aten._local_scalar_dense.default and isinstance(out, torch.SymInt):
                src = node.args[0]
                while isinstance(src, torch.fx.Node) and src.target is torch.ops.aten._to_copy.default:
                    src = src.args[0]
                if isinstance(src, torch.fx.Node) and src.target in (
                    torch.ops.aten.clamp.default,
                    torch.ops.aten.clamp_min.default,
                ):
                    low = src.args[1] if len(src.args) > 1 else src.kwargs.get("min")
                    if isinstance(low, (int, float)):
                        torch.ops.aten.sym_constrain_range_for_size.default(out, min=int(low))
            return out

    def forward(*args):
        return _Run(gm).run(*args)

    return forward


def _program(forward):
    """The traced function: energies [B] and ∂(Σ_b counted_b E_b)/∂r_e [E,3] (B = counted.shape[0];
    the contract's batches count every structure but the last)."""

    def program(vectors, edge_index, numbers, structure_index, counted):
        with torch.enable_grad():
            leaf = vectors.detach().requires_grad_(True)
            energies = forward(leaf, edge_index, numbers, structure_index, counted.shape[0])
            total = (energies * counted.to(energies.dtype)).sum()
            (grad,) = torch.autograd.grad(total, leaf, allow_unused=True)
        if grad is None:  # a model that ignores the edges
            grad = torch.zeros_like(vectors)
        return energies.detach(), grad

    return program


def _direct_program(direct):
    """The traced function of a direct head: energies [B], forces [N,3], virials [B,3,3]
    (zeros for a head without a direct virial); ``direct(v, ei, z, si, B)`` returns the three."""

    def program(vectors, edge_index, numbers, structure_index, counted):
        with torch.no_grad():
            return direct(vectors, edge_index, numbers, structure_index, counted.shape[0])

    return program


class _DirectPass(torch.nn.Module):
    """The model's direct pass as one module returning (energies, forces, virials): its
    ``forward_direct`` when it has one (the fast path), else ``forward`` + ``direct_forces``; zero
    virials without ``direct_virial``. ``hasattr`` on the wrapped model is decided when TorchScript
    compiles this module, so the calls to methods a model lacks are never compiled."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, edge_vectors, edge_index, numbers, structure_index, n_structures: int):
        if hasattr(self.model, "forward_direct"):
            energies, forces = self.model.forward_direct(
                edge_vectors, edge_index, numbers, structure_index, n_structures
            )
        else:
            energies = self.model(edge_vectors, edge_index, numbers, structure_index, n_structures)
            forces = self.model.direct_forces(
                edge_vectors, edge_index, numbers, structure_index, n_structures
            )
        if hasattr(self.model, "direct_virial"):
            virials = self.model.direct_virial(
                edge_vectors, edge_index, numbers, structure_index, n_structures
            )
        else:
            virials = torch.zeros((n_structures, 3, 3), dtype=forces.dtype, device=forces.device)
        return energies, forces, virials


def _direct_module(checked):
    """:class:`_DirectPass` of a checked model with a direct head (scripted for TorchScript)."""
    wrapper = _DirectPass(checked.module)
    return torch.jit.script(wrapper) if isinstance(checked.module, torch.jit.ScriptModule) else wrapper


def _export(forward, example, make=_program):
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    v, ei, z, si, n = example
    args = (v, ei, z, si, counted(n, v.device))
    traced = make_fx(make(forward), tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    e, a, b = Dim("edges", min=MIN_SIZE), Dim("atoms", min=MIN_SIZE), Dim("structures", min=MIN_SIZE)
    shapes = ({0: e}, {1: e}, {0: a}, {0: a}, {0: b})
    return torch.export.export(traced, args, dynamic_shapes=shapes, strict=False)


def _aoti(ep, meta: dict):
    """AOTInductor-compiles one exported program; returns its files."""
    from torch._inductor import aot_compile

    args = tuple(ep.example_inputs[0])
    options = {"aot_inductor.package": True, "aot_inductor.metadata": {"mlip": json.dumps(meta)}}
    return aot_compile(ep.module(), args, options=options)


def _package(programs: dict, out: str, meta: dict):
    """Writes the archive: the compiled programs (model name → AOTInductor files) + metadata."""
    from torch.export.pt2_archive._package import package_pt2

    package_pt2(out, aoti_files=programs, extra_files={METADATA_FILE: json.dumps(meta, indent=1)})


# ---------------------------------------------------------------------------------------------


def compile_module(module, out, device="cpu", dtype=None, source="<in-memory>", source_hash=None) -> dict:
    """Compiles a contract model into the package ``out`` (.pt2); returns its metadata.

    Parameters
    ----------
    module : torch.jit.ScriptModule or torch.nn.Module
        The contract model: TorchScript (converted to FX) or an eager module (traced as it is).
    out : str or Path
        The package to write (written next to it first, checked, then renamed).
    device, dtype : str or torch types
        Where and in which precision the package runs (dtype None: the model's own).
    source, source_hash : str
        The source model's path and SHA-256 (recorded in the metadata).

    Raises
    ------
    CompileError
        Export or compilation failed, or the package disagrees with the source model.
    """
    from .formats.contract import ContractModel

    device, dtype = parse_device(device), parse_dtype(dtype)
    out = Path(out)
    if out.suffix != ".pt2":
        raise CompileError(f"{out}: a package's name must end in .pt2")
    scripted = isinstance(module, torch.jit.ScriptModule)
    if scripted:
        twin = eager_twin(module, source)
        if twin is not None:  # the converter cannot take it: its eager module is traced instead
            module, scripted = twin, False
    if not scripted:  # an eager module: no TorchScript anywhere on this route
        module = copy.deepcopy(module)
        for p in module.parameters():
            p.requires_grad_(False)
    checked = ContractModel.from_module(module, source, device, dtype)  # contract checks, cast
    dtype, module = checked.dtype, checked.module
    cutoff, species = checked.cutoff, checked.species
    # sizes unlike each other and unlike 2 and 3 (make_fx's symbolic shapes unify equal sizes: a
    # batch of 3 structures would be tied to the 3 of the edge vectors and baked in)
    example = example_batch(species, cutoff, n_structures=4, dtype=dtype, device=device)
    meta = {
        "format": FORMAT_VERSION,
        "programs": [CONSERVATIVE],
        "cutoff": cutoff,
        "species": species,
        "interaction_range": checked.interaction_range,
        "declared_range": checked.declared_range,
        "sums_atomic_energies": checked.sums_atomic_energies,
        "dtype": str(dtype).replace("torch.", ""),
        "device": device.type,
        "torch": torch.__version__,
        "source": str(source),
        "source_sha256": source_hash,
        "min_size": MIN_SIZE,
    }
    start = time.perf_counter()
    meta["compile_seconds"] = None
    try:
        forward = _fx_of_torchscript(module, example) if scripted else module
        programs = {CONSERVATIVE: _aoti(_export(forward, example), meta)}
    except MLIPError:
        raise
    except Exception as err:  # noqa: BLE001 - export and Inductor raise many kinds
        raise CompileError(f"model {source} could not be compiled: {first_line(err)[:200]}") from None
    if checked.direct_forces:  # the direct head: a second program (optional: warn when it fails)
        try:
            head = _direct_module(checked)
            direct = _fx_of_torchscript(head, example) if scripted else head
            programs[DIRECT] = _aoti(_export(direct, example, _direct_program), meta)
            meta["programs"].append(DIRECT)
            meta["direct_virial"] = checked.direct_virial
        except Exception as err:  # noqa: BLE001
            log.warning(
                "the direct-force head of %s could not be compiled (%s): the package holds the "
                "conservative program only",
                source,
                first_line(err)[:160],
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.pt2")
        _package(programs, str(tmp), meta)
    except Exception as err:  # noqa: BLE001
        raise CompileError(f"model {source} could not be packaged: {first_line(err)[:200]}") from None
    seconds = time.perf_counter() - start
    try:
        package = CompiledModel.load(str(tmp), device, None)
        _check(package, checked, species, cutoff, dtype, device)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    meta["compile_seconds"] = round(seconds, 1)
    return meta


def _check(package, reference, species, cutoff, dtype, device):
    """The package against the source model on two batches (different sizes; the second with
    atoms in the dropped structure, whose energy is not differentiated)."""
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    for grid, n in (((2, 2, 3), 2), ((3, 3, 3), 3)):
        v, ei, z, si, b = example_batch(species, cutoff, grid, n, dtype, device)
        if n == 3:  # atoms in the dropped (last) structure, as the ghosts of a LAMMPS rank
            si = torch.where(si == b - 2, b - 1, si)
        leaf = v.clone().requires_grad_(True)
        e0 = reference.module(leaf, ei, z, si, b)
        (g0,) = torch.autograd.grad(e0[:-1].sum(), leaf, allow_unused=True)
        g0 = torch.zeros_like(v) if g0 is None else g0
        e1, g1 = package.program(v, ei, z, si, b)
        de = float((e1 - e0.detach()).abs().max() / e0.detach().abs().max().clamp(min=1.0))
        dg = float((g1 - g0).abs().max() / g0.abs().max().clamp(min=1e-12)) if g0.numel() else 0.0
        if not (de <= tol and dg <= tol):
            raise CompileError(
                f"the compiled package disagrees with {reference.path} (energies {de:.2g}, "
                f"gradients {dg:.2g} relative, tolerance {tol:g}): not used"
            )
        if package.direct_forces:
            with torch.no_grad():
                ref = _direct_module(reference)(v, ei, z, si, b)
            got = package.direct_program(v, ei, z, si, b)
            for name, x, y in zip(("energies", "forces", "virials"), got, ref):
                d = float((x - y).abs().max() / y.abs().max().clamp(min=1e-12)) if y.numel() else 0.0
                if not d <= tol:
                    raise CompileError(
                        f"the compiled direct head disagrees with {reference.path} ({name} {d:.2g} "
                        f"relative, tolerance {tol:g}): not used"
                    )


EAGER_TWIN_GROUP = "mlip_server.eager_twins"
"""The entry-point group of eager twins: TorchScript classes (``original_name``) whose code the
TorchScript → FX converter cannot take (loops over lists of floats, ``while`` loops), each
naming ``module:function``, which rebuilds the eager module from the scripted one (traced
instead). ``mlip_server.training`` registers the n2p2 teacher's in ``pyproject.toml``
(``N2P2Model``); the server looks the name up and never imports training by name."""


def eager_twins() -> dict:
    """Registered eager twins: TorchScript class name → its entry point (:data:`EAGER_TWIN_GROUP`)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=EAGER_TWIN_GROUP)}


def eager_twin(module, source="<in-memory>"):
    """The eager module of a scripted one whose class has a registered twin
    (:data:`EAGER_TWIN_GROUP`), checked to give the same energies and edge gradients as the
    TorchScript module (≤ 1e-12 relative, float64, two batches); ``None`` for other modules.
    Raises :class:`CompileError` when they disagree."""
    entry = eager_twins().get(getattr(module, "original_name", None))
    if entry is None:
        return None
    twin = entry.load()(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    species, cutoff = [int(z) for z in module.species], float(module.cutoff)
    for grid, n in (((2, 2, 3), 2), ((3, 3, 3), 3)):
        v, ei, z, si, b = example_batch(species, cutoff, grid, n, torch.float64, "cpu")
        results = []
        for m in (module, twin):
            leaf = v.clone().requires_grad_(True)
            e = m(leaf, ei, z, si, b)
            (g,) = torch.autograd.grad(e.sum(), leaf)
            results.append((e.detach(), g))
        (e0, g0), (e1, g1) = results
        de = float((e1 - e0).abs().max() / e0.abs().max().clamp(min=1.0))
        dg = float((g1 - g0).abs().max() / g0.abs().max().clamp(min=1e-12))
        if not (de <= 1e-12 and dg <= 1e-12):
            raise CompileError(
                f"the eager module rebuilt from {source} disagrees with it (energies {de:.2g}, "
                f"gradients {dg:.2g} relative): not compiled"
            )
    return twin


TRAINING_EXPORT = "python -m mlip_server.training.train --export"
"""The command that compiles a training checkpoint (training/ may import the server, never the
other way)."""


def _load_source(path: str):
    """A TorchScript file; a training checkpoint is refused with the command that compiles it."""
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - not TorchScript: maybe a checkpoint
        reason = first_line(err)[:120]
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001
        checkpoint = None
    if isinstance(checkpoint, dict) and "model_config" in checkpoint:
        raise ModelError(
            f"{path!r} is a training checkpoint: compile it with `{TRAINING_EXPORT} {path} OUT.pt2`"
        )
    raise ModelError(f"{path!r} is not a TorchScript contract model ({reason})")


def compile_file(path, out, device="cpu", dtype=None) -> dict:
    """:func:`compile_module` of a TorchScript model file (a training checkpoint: :data:`TRAINING_EXPORT`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"model file {path!r} not found")
    return compile_module(_load_source(path), out, device, dtype, source=path, source_hash=file_hash(path))


def cache_key(path, device, dtype) -> str:
    """``<sha256[:16]>-torch<version>-<device>-<dtype>``: what a cached package is valid for."""
    version = torch.__version__.replace("+", "_")
    return f"{file_hash(path)[:16]}-torch{version}-{torch.device(device).type}-{dtype}"


def cached_model(path, device="cpu", dtype=None, warn=None):
    """``--compile``: the package of the model file ``path`` from the cache, compiled there on
    first use; the model as it is (any format) when it is a package already, not a TorchScript
    contract model, or when compiling fails (after one warning line through ``warn``, default
    ``logging.warning``). Returns a :class:`~mlip_server.formats.base.ModelAdapter`."""
    from .formats import format_of, load_model
    from .formats.contract import ContractModel, exported_dtype

    warn = warn or log.warning
    path = os.fspath(path)
    if not os.path.isfile(path):
        return load_model(path, device, dtype)
    kind = format_of(path)
    if kind is not ContractModel:  # a package already, metatomic, MACE, NequIP...
        if kind not in (None, CompiledModel):
            log.info(
                "--compile: %s is a %s, served as it is (mlip-compile compiles contract models)",
                path,
                kind.label,
            )
        return load_model(path, device, dtype)
    device_t, dtype_t = parse_device(device), parse_dtype(dtype)
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception:  # noqa: BLE001 - not TorchScript: the registry says what it is
        return load_model(path, device, dtype)
    name = str(dtype_t or exported_dtype(module)).replace("torch.", "")
    target = cache_dir() / f"{cache_key(path, device_t, name)}.pt2"
    if target.is_file():
        try:
            model = CompiledModel.load(str(target), device_t, dtype_t)
            log.info("compiled package from the cache: %s", target)
            return model
        except ModelError as err:
            warn(f"cached package {target} unusable ({err}); compiling again")
    log.info("compiling %s for %s %s into %s (a minute or more)", path, device_t.type, name, target)
    start = time.perf_counter()
    try:
        compile_module(module, target, device_t, name, source=path, source_hash=file_hash(path))
        model = CompiledModel.load(str(target), device_t, dtype_t)
    except Exception as err:  # noqa: BLE001 - any failure falls back
        warn(f"compiling {path} failed ({first_line(err)[:160]}): serving the TorchScript model")
        return load_model(path, device, dtype)
    log.info("compiled %s in %.0f s", path, time.perf_counter() - start)
    return model


def build_parser() -> argparse.ArgumentParser:
    from .cli_help import HelpFormatter

    p = argparse.ArgumentParser(
        prog="mlip-compile",
        formatter_class=HelpFormatter,
        description="Compile a contract model (a TorchScript file) into an "
        "AOTInductor package (.pt2) for this machine: energies and edge gradients in one compiled "
        "program (forces and virials are assembled by the server as for TorchScript).",
    )
    p.add_argument(
        "model",
        help=f"TorchScript contract model (a checkpoint.pt of training/ compiles with `{TRAINING_EXPORT} "
        "CKPT OUT.pt2`)",
    )
    p.add_argument("--out", required=True, help="package to write (FILE.pt2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (packages run only there)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"], help="default: the model's own")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        meta = compile_file(args.model, args.out, args.device, args.dtype)
    except MLIPError as err:
        print(f"mlip-compile: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {meta['dtype']} on {meta['device']}, cutoff {meta['cutoff']} Å, species "
        f"{meta['species']}, compiled in {time.perf_counter() - start:.0f} s (torch {meta['torch']})"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
