"""The floors of the house (ARCHITECTURE.md, "The floors"), checked on the source: every import of
every module under ``server/`` (module level and inside functions, parsed with ``ast``) — the
server never imports training (or analysis, or bench), the core imports no format, and no
modules import each other in a circle — and the two routes that used to cross
floors: a training checkpoint is compiled by training's own command, and the n2p2 teacher's eager
module is found through the entry point that training registers.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from refusals import assert_refused

from mlip_server.paths import checkout_root

ROOT = checkout_root()
SERVER = ROOT / "server"
PACKAGE = "mlip_server"
UPPER_FLOORS = ("mlip_server.training", "mlip_server.analysis", "bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVER).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _server_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SERVER.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names; relative imports resolved; ``from P import
    x`` counts ``P.x`` when it is a module of the server, else ``P``)."""
    modules = _server_modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
    return found


def _graph() -> dict[str, set[str]]:
    """Server module → the server modules its imports execute: the module imported and its parent
    packages, except the importer's own (they run before it) and the top package, whose
    ``__init__`` imports nothing of the server."""
    modules = _server_modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports(name, path):
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                prefix = ".".join(parts[:k])
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def test_the_parser_sees_the_imports():
    """A guard for the checks below: known imports are found, relative ones resolved."""
    graph = _graph()
    assert len(graph) > 40
    assert "mlip_server.core.graph" in graph["mlip_server.core.evaluator"]
    assert "mlip_server.formats.compiled" in graph["mlip_server.compile"]
    assert "mlip_server.formats" in graph["mlip_server.compile"]  # the package runs first


def test_server_never_imports_training_analysis_or_bench():
    offenders = [
        f"{name} imports {target}"
        for name, path in _server_modules().items()
        for target in sorted(_imports(name, path))
        if any(target == floor or target.startswith(floor + ".") for floor in UPPER_FLOORS)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_core_imports_no_format_and_nothing_above_it():
    """``server/core`` evaluates loaded models: it imports no format (nor anything of the server
    outside the core); model files become Evaluators in ``mlip_server.loading``."""
    offenders = [
        f"{name} imports {target}"
        for name, path in _server_modules().items()
        if name.startswith("mlip_server.core")
        for target in sorted(_imports(name, path))
        if target.startswith(PACKAGE + ".") and not target.startswith("mlip_server.core")
    ]
    assert not offenders, "\n".join(offenders)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_in_the_server():
    """No circle among the server's modules, counting imports inside functions too (a lazy import
    hides a circle from Python, not from a reader)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder works
    assert not _cycles(_graph()), _cycles(_graph())


def test_a_training_checkpoint_given_to_mlip_compile_names_the_training_command(tmp_path):
    """One line on stderr, exit 2, and the command of training/ that compiles it."""
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model_config": {"cutoff": 3.0}, "best_model": {}}, checkpoint)
    run = subprocess.run(
        [sys.executable, "-m", "mlip_server.compile", str(checkpoint), "--out", str(tmp_path / "m.pt2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_refused(run, f"python -m mlip_server.training.train --export {checkpoint} OUT.pt2")
    assert not (tmp_path / "m.pt2").exists()


TEACHER_DATA = ROOT.parent / "shared" / "data" / "bpnnp-revpbe0d3"


@pytest.mark.skipif(not TEACHER_DATA.is_dir(), reason="no ../shared/data/bpnnp-revpbe0d3")
def test_the_n2p2_eager_twin_is_registered_by_training():
    """mlip-compile rebuilds the n2p2 teacher's eager module through the entry point that training
    registers (checked equal to the TorchScript module), without naming training anywhere."""
    from mlip_server.compile import EAGER_TWIN_GROUP, eager_twin, eager_twins
    from mlip_server.training.n2p2 import N2P2Model, read_n2p2

    assert eager_twins()["N2P2Model"].value == "mlip_server.training.n2p2.model:from_torchscript"
    scripted = torch.jit.script(N2P2Model(read_n2p2(str(TEACHER_DATA))))
    twin = eager_twin(scripted)
    assert isinstance(twin, N2P2Model) and not isinstance(twin, torch.jit.ScriptModule)
    assert eager_twin(torch.jit.script(torch.nn.Linear(2, 2))) is None  # no twin registered
    assert EAGER_TWIN_GROUP == "mlip_server.eager_twins"
