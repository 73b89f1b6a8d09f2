"""The documentation cannot rot: its code is run or checked against the code it documents.

Every fenced ```bash / ```python block of README.md, docs/**/*.md and the READMEs the site
includes is extracted:

* python blocks are executed, those of one page in order in one namespace, in a temporary folder
  (a page's later block may use what an earlier one wrote); a block preceded by the comment
  ``<!-- docs-test: skip-gpu -->`` (or ``skip-cluster``, or ``skip-download`` for a block that
  fetches a published model, which CI cannot) is only compiled;
* every shell line that runs an ``mlip-*`` command (also under ``mpiexec``/``srun``) is parsed
  by that command's own parser: every flag must exist and every value must be one it accepts;
  every shipped experiment, deck and SLURM template it names must exist (``mlip_server.paths``);
* every ``ipi_inputs/…``, ``lammps_inputs/in.…`` and ``hpc/….slurm`` the text names is shipped;
* ``sbatch`` lines name a shipped template and shipped experiments/decks in their variables,
  ``python -m`` lines an importable module, ``make`` lines a target of the Makefile;
* cheap commands (``mlip-run --list``, ``--copy-template``, ``mlip-lammps-run --list``) are run in
  a temporary folder and must exit 0;
* the README's relative links point at files of the checkout, and its contract model passes
  ``mlip-server --check``.

Shell commands themselves are not run here (the guides' runs are minutes; tests/test_wheel.py runs
the four goals in miniature).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlip_server.core.errors import MLIPError
from mlip_server.paths import list_shipped, shipped

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip-(gpu|cluster|download)\s*-->")
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)

# the console scripts (pyproject.toml [project.scripts]) and their parser-building functions
PARSERS = {
    "mlip-server": ("mlip_server.ipi.serve", "build_parser"),
    "mlip-run": ("mlip_server.ipi.launcher", "build_parser"),
    "mlip-compile": ("mlip_server.compile", "build_parser"),
    "mlip-lammps": ("mlip_server.lammps.cli", "build_bridge_parser"),
    "mlip-lammps-run": ("mlip_server.lammps.cli", "build_run_parser"),
    "mlip-analyse": ("mlip_server.analysis.cli", "build_parser"),
    "mlip-probe": ("mlip_server.analysis.probe.cli", "build_parser"),
    "mlip-teacher": ("mlip_server.training.export_teacher", "build_parser"),
}


def doc_files() -> list[Path]:
    """README.md, the site's pages and the files the site includes."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    files += [ROOT / "hpc/README.md", ROOT / "lammps_inputs/README.md", ROOT / "models/MODEL_CARD.md"]
    files += sorted((ROOT / "ipi_inputs").glob("*/README.md")) + [ROOT / "BENCHMARKS.md"]
    return [f for f in files if "_build" not in f.parts]


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None  # "gpu" / "cluster" / "download": not executed

    def __str__(self):
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced bash/sh/python blocks of a markdown file (``text``: its contents instead)."""
    text = path.read_text() if text is None else text
    found = []
    for m in FENCE.finditer(text):
        lang = {"sh": "bash", "shell": "bash"}.get(m.group(1), m.group(1))
        if lang not in ("bash", "python"):
            continue
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        mark = SKIP_MARK.search(before)
        found.append(Block(path, text[: m.start()].count("\n") + 1, lang, m.group(2), mark and mark.group(1)))
    return found


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, one word list
    per command (``a && b`` and ``a; b`` are two)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and words[-1] == "&":
            words.pop()
        current = []
        for w in words:
            if w in ("&&", ";", "||", "&", "|"):
                commands.append(current)
                current = []
            else:
                current.append(w)
        commands.append(current)
    return [c for c in commands if c]


class ParseFailure(Exception):
    pass


def _raise(self, message):
    raise ParseFailure(f"{self.prog}: {message}")


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` through the real parser of ``command``; a bad flag or value raises ParseFailure."""
    module, func = PARSERS[command]
    parser = getattr(importlib.import_module(module), func)()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "error", _raise)
        mp.setattr(
            argparse.ArgumentParser, "exit", lambda self, status=0, message=None: _raise(self, message)
        )
        return parser.parse_args(argv)


def _placeholder(word: str) -> bool:
    """An upper-case stand-in of the docs (EXPERIMENT, DECK, RUN, ...)."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_.-]*", word))


EXPERIMENTS = {p.split("/")[1] for p in list_shipped("ipi_inputs") if p.endswith("/experiment.json")}
DECKS = {p.split("/in.", 1)[1] for p in list_shipped("lammps_inputs") if "/in." in p}


def _check_shipped(name: str) -> str | None:
    try:
        shipped(name)
    except MLIPError as err:
        return str(err)
    return None


def check_mlip(words: list[str]) -> list[str]:
    """Problems of one ``mlip-*`` command line (an empty list when it is right)."""
    command, argv = words[0], words[1:]
    if command not in PARSERS:
        return [f"{command}: no such command (pyproject.toml [project.scripts])"]
    try:
        args = parse(command, argv)
    except ParseFailure as err:
        return [str(err)]
    problems = []
    name = getattr(args, "experiment", None) if command == "mlip-run" else None
    if name and not _placeholder(name) and name not in EXPERIMENTS:
        problems.append(f"mlip-run {name}: no such shipped experiment ({', '.join(sorted(EXPERIMENTS))})")
    if command == "mlip-run" and args.copy_template and (err := _check_shipped(args.copy_template)):
        problems.append(f"mlip-run --copy-template {args.copy_template}: {err}")
    if command in ("mlip-lammps-run", "mlip-lammps"):
        deck = getattr(args, "deck", None)
        if deck and not _placeholder(deck):
            if "/" in deck or deck.startswith("in."):
                if deck.startswith("lammps_inputs/") and (err := _check_shipped(deck)):
                    problems.append(f"{command} {deck}: {err}")
            elif deck not in DECKS:
                problems.append(f"{command} {deck}: no such shipped deck ({', '.join(sorted(DECKS))})")
    return problems


# commands that take a second or two: they are run (in a temporary folder), not only parsed
CHEAP = {
    "mlip-run": ("mlip_server.ipi.launcher", "main", ("--list", "--copy-template")),
    "mlip-lammps-run": ("mlip_server.lammps.cli", "run_main", ("--list",)),
}


def run_cheap(words: list[str]) -> list[str]:
    """Runs ``words`` when it is a cheap command (``--list``, ``--copy-template``); its problems."""
    command, argv = words[0], words[1:]
    if command not in CHEAP or not any(a in CHEAP[command][2] for a in argv):
        return []
    module, func, _ = CHEAP[command]
    main = getattr(importlib.import_module(module), func)
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        os.chdir(folder)
        try:
            status = main(argv)
        finally:
            os.chdir(here)
    return [] if status in (0, None) else [f"{' '.join(words)}: exit status {status}"]


MAKE_TARGETS = set(re.findall(r"^([\w.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def check_command(words: list[str]) -> list[str]:
    """Problems of one shell command of the docs."""
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if not words:
        return []
    if words[0] in ("mpiexec", "mpirun", "srun", "time"):  # mpiexec -n 2 mlip-lammps ...
        starts = [i for i, w in enumerate(words) if w.startswith("mlip-")]
        words = words[starts[0] :] if starts else words
    if words[0].startswith("mlip-"):
        return check_mlip(words) or run_cheap(words)
    head = words[0]
    problems = []
    if head == "sbatch":
        templates = [w for w in words if w.endswith(".slurm")]
        for t in templates:
            if f"hpc/{Path(t).name}" not in list_shipped("hpc"):
                problems.append(f"sbatch {t}: no such shipped template")
        if env.get("EXPERIMENT") and env["EXPERIMENT"] not in EXPERIMENTS:
            problems.append(f"EXPERIMENT={env['EXPERIMENT']}: no such shipped experiment")
        if env.get("DECK") and not _placeholder(env["DECK"]) and env["DECK"] not in DECKS:
            problems.append(f"DECK={env['DECK']}: no such shipped deck")
    elif head in ("python", "python3") and words[1:2] == ["-m"]:
        if importlib.util.find_spec(words[2]) is None:
            problems.append(f"python -m {words[2]}: no such module")
    elif head == "make":
        for w in words[1:]:
            if not w.startswith("-") and "=" not in w and w not in MAKE_TARGETS:
                problems.append(f"make {w}: no such Makefile target")
    return problems


ALL_BLOCKS = [b for f in doc_files() for b in blocks(f)]
PYTHON_PAGES = sorted({b.path for b in ALL_BLOCKS if b.lang == "python"})


def test_the_docs_have_code():
    """The extraction finds the blocks (a changed fence syntax must not empty this test)."""
    assert len([b for b in ALL_BLOCKS if b.lang == "bash"]) >= 20
    assert len(PYTHON_PAGES) >= 5


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "bash"], ids=str)
def test_shell_commands_match_the_parsers(block):
    problems = [p for words in shell_commands(block.code) for p in check_command(list(words))]
    assert not problems, f"{block}: " + "; ".join(problems)


def run_python(block: Block, folder: Path, namespace: dict, number: int = 0) -> dict:
    """Runs a python block as a module file in ``folder`` (torch.jit.script reads its classes'
    source), starting from ``namespace``; returns the module's namespace."""
    name = f"docs_block_{number}"
    path = folder / f"{name}.py"
    path.write_text(block.code)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update({k: v for k, v in namespace.items() if not k.startswith("__")})
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise AssertionError(f"{block}: the python block fails: {err!r}") from err
    finally:
        del sys.modules[name]
    return module.__dict__


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for n, block in enumerate([b for b in ALL_BLOCKS if b.path == page and b.lang == "python"]):
        compile(block.code, str(block), "exec")
        if block.skip:
            continue  # needs a GPU, a cluster or a download: compiled only
        namespace = run_python(block, tmp_path, namespace, n)


def test_readme_contract_model_passes_check(tmp_path, monkeypatch, capsys):
    """The README's first code example scripts and is served: ``mlip-server --check`` says 0."""
    from mlip_server.ipi import serve

    monkeypatch.chdir(tmp_path)
    first = [b for b in blocks(ROOT / "README.md") if b.lang == "python"][0]
    run_python(first, tmp_path, {})
    assert serve.main(["--check", "--model", "pair.pt"]) == 0, capsys.readouterr().err


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    assert any(link.startswith("docs/guides/") for link in links)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    assert len(text.splitlines()) <= 150, "README.md is the front door: at most 150 lines"


SHIPPED_PATH = re.compile(
    r"(?<![\w/])(ipi_inputs/[\w.-]+(?:/[\w.-]+)?|lammps_inputs/in\.[\w.-]+|hpc/[\w-]+\.slurm)"
)


def test_shipped_files_named_in_the_text_exist():
    """Every experiment folder, deck and SLURM template the prose names (``ipi_inputs/water-nvt``,
    ``lammps_inputs/in.water-nvt``, ``hpc/lammps-domain.slurm``) is shipped."""
    missing = set()
    for f in doc_files():
        for m in SHIPPED_PATH.finditer(f.read_text()):
            name = m.group(1).rstrip(".")
            if any(_placeholder(part) for part in name.split("/")) or _check_shipped(name) is None:
                continue
            missing.add(f"{f.relative_to(ROOT)}: {name}")
    assert not missing, sorted(missing)


def test_user_docs_hold_no_internal_history():
    """No issue numbers or references outside the repository in the README, the site's pages and
    the files the site includes (the model card, BENCHMARKS.md, the experiment/deck/HPC READMEs)."""
    bad = re.compile(r"\bissues? \d+\b|shared/DESIGN\.md")
    found = [
        f"{f.relative_to(ROOT)}:{n}"
        for f in doc_files()
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if bad.search(line)
    ]
    assert not found, found


# ----------------------------------------------------------------------- the checks catch breaks
def test_checks_catch_a_renamed_flag_a_wrong_name_and_a_broken_block(tmp_path):
    assert check_command(shlex.split("mlip-run water-nvt --steps 4")) == []
    assert check_command(shlex.split("mlip-run water-nvt --stepz 4"))  # a flag that does not exist
    assert check_command(shlex.split("mlip-run water-nvt --forces sideways"))  # a value it refuses
    assert check_command(shlex.split("mlip-run water-nvtt --steps 4"))  # no such experiment
    assert check_command(shlex.split("mlip-lammps-run water-huge --np 2"))  # no such deck
    assert check_command(shlex.split("mlip-run --copy-template hpc/nope.slurm"))  # no such template
    assert check_command(shlex.split("mlip-analyse rdf sim.xyz --charges O=1"))  # another command's option
    assert check_command(shlex.split("mpiexec -n 2 mlip-lammps water-nvt --decomposition scatter"))
    assert check_command(shlex.split("EXPERIMENT=water-pimmd sbatch --nodes=1 ipi-cpu-server-gpu.slurm"))
    assert check_command(shlex.split("python -m mlip_server.no_such_module"))
    assert check_command(shlex.split("make no-such-target"))
    assert run_cheap(shlex.split("mlip-run --copy-template hpc/lammps-domain.slurm")) == []  # run, exit 0
    assert run_cheap(shlex.split("mlip-run --copy-template hpc/nope.slurm"))  # run, exit 2
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- docs-test: skip-gpu -->\n```python\nx = 1\n```\n\n```python\nraise ValueError\n```\n"
    )
    first, second = blocks(page)
    assert first.skip == "gpu" and second.skip is None and first.line == 4
    with pytest.raises(ValueError):
        exec(compile(second.code, "page", "exec"), {})
    assert ast.parse(first.code)
