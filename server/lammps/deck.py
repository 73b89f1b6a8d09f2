"""LAMMPS decks as the bridge reads them: split after the one ``fix external pf/callback`` line.

The bridge executes the deck's head (up to and including that line) itself, checks the system,
installs its callback, and then runs the tail; see :mod:`mlip_server.lammps.bridge`.

The deck must contain, at top level (not in an ``include``d file or a loop), once::

    fix ID all external pf/callback 1 1

after the system is complete (after ``read_data``/``replicate``). The bridge executes
the deck up to and including that line, checks it (``units metal``, one element per
atom type given by ``-e``, fully periodic or fully non-periodic box), adds
``fix_modify ID energy yes virial yes`` and a ``fix halt`` it uses to stop a run whose
force server died, writes the starting structure (extxyz in atom-tag order: the server
reads the elements from it), waits for the server to connect, and then executes the
rest of the deck. At the end it sends EXIT to the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError

__all__ = [
    "resolve_deck",
    "shipped_decks",
    "DeckError",
    "DeckParts",
    "split_deck",
    "lammps_message",
    "check_elements",
    "neighbor_skin",
    "comm_cutoffs",
    "pressure_fixes",
    "FIX_LINE",
    "commands",
    "command_by_command",
    "refused_for_resume",
]


def shipped_decks() -> list[str]:
    """Names of the shipped decks (``water-nvt`` for ``lammps_inputs/in.water-nvt``)."""
    from ..paths import lammps_inputs_dir

    return sorted(p.name[3:] for p in lammps_inputs_dir().glob("in.*"))


def resolve_deck(name: str) -> Path:
    """The deck file ``name`` names: a file path, or a shipped deck by name (``water-nvt`` or
    ``in.water-nvt``; :func:`shipped_decks`).

    Raises
    ------
    InputError
        When ``name`` is neither a file nor a shipped deck (one line naming the shipped ones).
    """
    path = Path(name)
    if path.is_file():
        return path
    from ..paths import lammps_inputs_dir

    shipped = lammps_inputs_dir() / (path.name if path.name.startswith("in.") else f"in.{path.name}")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise InputError(
        f"deck {name!r} not found: pass a LAMMPS input file or a shipped deck ({', '.join(shipped_decks())})"
    )


DEFAULT_SKIN = 2.0
"""LAMMPS's neighbour skin in ``units metal`` when the deck has no ``neighbor`` command, Å."""

FIX_LINE = re.compile(r"^\s*fix\s+(\S+)\s+(\S+)\s+external\s+pf/callback\s+(\S+)\s+(\S+)\s*$")


class DeckError(InputError):
    """The LAMMPS deck cannot be driven by the bridge (no fix external line, wrong units...)."""


@dataclass
class DeckParts:
    """A deck split after its ``fix ID GROUP external pf/callback NCALL NAPPLY`` line."""

    head: str
    tail: str
    fix_id: str
    group: str
    ncall: str
    napply: str
    line: int  # 1-based line number of the fix line in the deck


def _logical_lines(text: str):
    """(first physical line number, text) of each logical line (``&`` continues a line)."""
    buf, start = [], None
    for n, raw in enumerate(text.splitlines(), 1):
        if start is None:
            start = n
        stripped = raw.rstrip()
        if stripped.endswith("&"):
            buf.append(stripped[:-1])
            continue
        buf.append(raw)
        yield start, n, " ".join(buf)
        buf, start = [], None
    if buf:
        yield start, start + len(buf) - 1, " ".join(buf)


def split_deck(text: str, name: str = "deck") -> DeckParts:
    """Splits ``text`` after its one top-level ``fix ... external pf/callback`` line.

    Raises DeckError when there is none or more than one (the bridge drives one fix).
    """
    lines = text.splitlines(keepends=True)
    found = []
    for first, last, logical in _logical_lines(text):
        code = logical.split("#", 1)[0]
        m = FIX_LINE.match(code)
        if m:
            found.append((first, last, m))
    if not found:
        raise DeckError(
            f"{name} has no top-level 'fix ID all external pf/callback 1 1' line: add one after the "
            "system is built (after read_data/replicate) and before the first run"
        )
    if len(found) > 1:
        raise DeckError(
            f"{name} has {len(found)} 'fix ... external pf/callback' lines (lines "
            f"{', '.join(str(f[0]) for f in found)}): the bridge drives exactly one"
        )
    first, last, m = found[0]
    fix_id, group, ncall, napply = m.groups()
    if group != "all":
        raise DeckError(
            f"{name}:{first}: fix {fix_id} acts on group {group!r}: the model's energy belongs "
            "to all atoms, use 'fix ID all external pf/callback 1 1'"
        )
    if (ncall, napply) != ("1", "1"):
        raise DeckError(
            f"{name}:{first}: fix {fix_id} has 'pf/callback {ncall} {napply}': use 'pf/callback 1 1' "
            "(forces every step; multiple time stepping belongs in i-PI)"
        )
    return DeckParts("".join(lines[:last]), "".join(lines[last:]), fix_id, group, ncall, napply, first)


def _commands(text: str, name: str):
    """(line number, words) of the top-level commands ``name`` in ``text``."""
    for first, _, logical in _logical_lines(text):
        words = logical.split("#", 1)[0].split()
        if words[:1] == [name]:
            yield first, words


def neighbor_skin(text: str) -> float:
    """The skin of the deck's last ``neighbor SKIN STYLE`` command, Å (LAMMPS's metal default
    without one); a skin given through a variable cannot be read and is refused."""
    skin = DEFAULT_SKIN
    for first, words in _commands(text, "neighbor"):
        try:
            skin = float(words[1])
        except (IndexError, ValueError):
            raise DeckError(
                f"line {first}: cannot read the neighbour skin from {' '.join(words)!r}: give it as a "
                "number (the domain decomposition sizes the ghost shell with it)"
            ) from None
    return skin


def comm_cutoffs(text: str) -> list[tuple[int, float]]:
    """(line, value) of every ``comm_modify ... cutoff VALUE`` in the deck (Å)."""
    found = []
    for first, words in _commands(text, "comm_modify"):
        for k, word in enumerate(words[:-1]):
            if word == "cutoff":
                try:
                    found.append((first, float(words[k + 1])))
                except ValueError:
                    found.append((first, float("nan")))
    return found


BAROSTATS = ("npt", "nph", "press/berendsen", "press/langevin", "box/relax", "rigid/npt", "rigid/nph")
"""Fix styles whose dynamics needs the pressure (the virial)."""


def pressure_fixes(text: str) -> list[tuple[int, str]]:
    """(line, style) of the deck's fixes that need the pressure (:data:`BAROSTATS`)."""
    return [
        (first, words[3])
        for first, words in _commands(text, "fix")
        if len(words) > 3 and words[3] in BAROSTATS
    ]


def lammps_message(err: BaseException) -> str:
    """First line of a LAMMPS exception, without 'ERROR:' and the source location."""
    text = str(err.message if hasattr(err, "message") else err).strip().strip("'\"")
    first = text.replace("\\n", "\n").splitlines()[0] if text else type(err).__name__
    first = re.sub(r"^ERROR(\s+on proc \d+)?:\s*", "", first)
    first = re.sub(r"\s*\(src/[^)]*\)\s*$", "", first)
    last = re.search(r"Last input line:\s*(.*)", text.replace("\\n", "\n"))
    return first + (f" (input line: {last.group(1).strip()})" if last else "")


def check_elements(elements: list, ntypes: int, masses) -> list[str]:
    """Checks that ``elements`` (``-e``) names one element per LAMMPS atom type.

    Parameters
    ----------
    elements : list of str
        Element symbols of types 1, 2, ...
    ntypes : int
        Atom types the deck defines.
    masses : array or None
        LAMMPS per-type masses (index 1..ntypes), g/mol.

    Returns
    -------
    list of str
        Warnings (a mass far from the element's: maybe the wrong order of ``-e``).

    Raises
    ------
    InputError
        An unknown symbol, or not exactly one element per type.
    """
    from ase.data import atomic_masses, atomic_numbers

    bad = [e for e in elements if e not in atomic_numbers]
    if bad:
        raise InputError(f"-e lists {bad[0]!r}, which is not an element symbol: use e.g. -e O H")
    if len(elements) < ntypes:
        missing = ", ".join(str(t) for t in range(len(elements) + 1, ntypes + 1))
        raise InputError(
            f"LAMMPS atom type {missing} has no element: the deck defines {ntypes} atom types, "
            f"pass one element per type with -e (now -e {' '.join(elements)})"
        )
    if len(elements) > ntypes:
        raise InputError(
            f"-e lists {len(elements)} elements but the deck defines {ntypes} atom types: "
            "pass exactly one element per type, in type order"
        )
    warnings = []
    if masses is not None:
        for t, sym in enumerate(elements, 1):
            m, ref = float(masses[t]), atomic_masses[atomic_numbers[sym]]
            if m > 0 and not 0.6 < m / ref < 1.7:
                warnings.append(
                    f"atom type {t} has mass {m:g} but -e maps it to {sym} ({ref:.3f}): check the "
                    "order of -e (fine for isotopes)"
                )
    return warnings


# --------------------------------------------------------------------------- checkpoints and resume
LOOP_COMMANDS = ("jump", "label", "next", "include", "if", "python", "loop")
"""Commands that make a deck's flow depend on LAMMPS: the bridge then cannot execute it command by
command, so checkpoints and resume are refused (the deck still runs, as one file)."""
STATE_COMMANDS = (
    "velocity",
    "displace_atoms",
    "set",
    "create_atoms",
    "delete_atoms",
    "change_box",
    "replicate",
    "read_dump",
    "create_box",
)
"""Commands that change the atoms: on resume the restart file holds their result, so they are
skipped up to the resumed run (as are the output commands :data:`OUTPUT_COMMANDS`)."""
OUTPUT_COMMANDS = ("write_data", "write_restart", "write_dump", "write_coeff")
REFUSED_FOR_RESUME = ("minimize", "reset_timestep", "rerun", "read_restart")
RESUMABLE_DUMPS = ("atom", "custom", "xyz", "local")


def commands(text: str) -> list[tuple[int, str]]:
    """(first line number, logical line) of every non-blank command of ``text`` (comments kept)."""
    out = []
    for first, _, logical in _logical_lines(text):
        if logical.split("#", 1)[0].strip():
            out.append((first, logical))
    return out


def command_by_command(text: str) -> str | None:
    """None when the bridge can execute ``text`` command by command; otherwise why not."""
    if '"""' in text:
        return "it has a triple-quoted string"
    for first, logical in commands(text):
        word = logical.split()[0]
        if word in LOOP_COMMANDS:
            return f"line {first} uses '{word}'"
    return None


def refused_for_resume(text: str) -> str | None:
    """None when a deck's runs can be checkpointed and resumed; otherwise why not (one line)."""
    why = command_by_command(text)
    if why:
        return why
    for first, logical in commands(text):
        words = logical.split("#", 1)[0].split()
        if words[0] in REFUSED_FOR_RESUME:
            return f"line {first} uses '{words[0]}' (the step count of the pieces would not add up)"
        if words[0] == "run" and "every" in words:
            return f"line {first} uses 'run ... every'"
        if words[0] == "read_data" and sum(1 for _, c in commands(text) if c.split()[0] == "read_data") > 1:
            return "it reads several data files"
    return None
