"""The force route of the bridge (:class:`~mlip_server.lammps.bridge.Bridge`): the ``fix external``
callback LAMMPS calls on every rank, installed with the fix. Gather route: positions gathered
to rank 0 by tag (:func:`~mlip_server.lammps.mpi.gather_rows`), sent to the force server, the
forces scattered back to the ranks that own the atoms, the energy, the virial and the
diagnostics (:data:`DIAGNOSTICS`, the fix's global vector) passed to LAMMPS. Domain route: the
ghost shell set up (``comm_modify cutoff``) and every rank's
:class:`~mlip_server.lammps.domain.DomainForces` called. Also the starting structure written
(the tag order the server's rows follow) and the timings reported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputError, MLIPError, ProtocolError
from .checkpoint import RESTART_PATTERN
from .deck import DeckError, comm_cutoffs, neighbor_skin
from .domain import FAILED, INTERRUPTED, OK, DomainForces
from .mpi import gather_rows, scatter_rows, wait_quietly
from .session import HALT, PROG, STOP, numbers_of_types

__all__ = ["ForceRoute", "Timings", "DIAGNOSTICS"]

# the fix's global vector f_ID[1..7]: the server's diagnostics of a rotationally averaged model,
# of a committee and of direct forces
DIAGNOSTICS = (
    "raw_energy",
    "delta_energy",
    "energy_spread",
    "force_spread_rms",
    "committee_energy_std",
    "committee_force_std_max",
    "direct_net_force",
)


@dataclass
class Timings:
    """Seconds spent by rank 0 in the force callback, by part."""

    calls: int = 0
    callback: float = 0.0  # whole callback (gather + server + scatter + LAMMPS set calls)
    gather: float = 0.0  # MPI gather of tags and positions, reordering, cell
    server: float = 0.0  # POSDATA sent → FORCEREADY header arrived (server's work incl. its I/O)
    transfer: float = 0.0  # sending positions, receiving the forces payload, unit conversion
    scatter: float = 0.0  # result broadcast, reordering and MPI scatter of the forces

    first: dict | None = None  # the totals after the first call (LAMMPS's set-up), to exclude it

    def as_dict(self):
        values = {
            k: getattr(self, k) for k in ("calls", "callback", "gather", "server", "transfer", "scatter")
        }
        return dict(values, first=self.first)

    def count(self) -> None:
        self.calls += 1
        if self.calls == 1:
            self.first = {k: v for k, v in self.as_dict().items() if k != "first"}


class ForceRoute:
    """The force callback and both routes, for the :class:`~mlip_server.lammps.bridge.Bridge` (one
    of its parts: the methods work on the Bridge's ``cfg``, ``comm``, ``lmp``, ``client``,
    ``domain``, ``timings`` and run state)."""

    def install_fix(self) -> None:
        lmp, fix = self.lmp, self.parts.fix_id
        lmp.command(f"fix_modify {fix} energy yes virial yes")
        lmp.fix_external_set_vector_length(fix, len(DIAGNOSTICS))
        lmp.command(f"variable {HALT} internal 0")
        lmp.command(f"fix {HALT} all halt 1 v_{HALT} > 0 error hard message no")
        lmp.command(f"variable {STOP} internal 0")
        lmp.command(f"fix {STOP} all halt 1 v_{STOP} > 0 error continue message no")
        if self.cfg.checkpoint_every:
            lmp.command(f"restart {int(self.cfg.checkpoint_every)} {RESTART_PATTERN}")
        lmp.set_fix_external_callback(fix, self._callback, None)

    def _callback(self, caller, step, nlocal, tag, x, f):
        """Called by fix external on every rank; must never raise (ctypes would swallow it)."""
        try:
            if self.rank == 0 and self.cfg.checkpoint_every:
                self._note_checkpoint(int(step))
            if self.rank == 0 and self.cfg.state:
                self._note_progress(int(step))
            if self.domain is not None:
                self._domain_forces(step, nlocal, f)
            else:
                self._forces(step, nlocal, tag, x, f)
        except BaseException as err:  # noqa: BLE001 - anything here must stop the run, not vanish
            f[:] = 0.0
            if self.failure is None:
                self.failure = (
                    f"internal error in the force callback at step {step}: {type(err).__name__}: {err}"
                )
            self.lmp.set_internal_variable(HALT, 1)

    def _forces(self, step, nlocal, tag, x, f):
        if self.status != OK:  # the run is being halted: nothing more to compute
            f[:] = 0.0
            return
        t0 = time.perf_counter()
        everything, counts = self.gather(tag, x)
        header = self._header
        forces, t2 = None, t0
        if self.rank == 0:  # every exception ends in the header: the other ranks must hear of it
            try:
                t1 = time.perf_counter()
                self.timings.gather += t1 - t0
                if self.interrupts.pending:
                    raise KeyboardInterrupt
                if not self.line_mode and self.stop_requested():
                    raise KeyboardInterrupt  # a deck with loops cannot stop cleanly: stop it
                rows = self.rows(everything[:, 0])
                positions = np.empty((self.natoms, 3))
                positions[rows] = everything[:, 1:4]
                with self.interrupts.raising():
                    waited, moved = self.client.seconds_waiting, self.client.seconds_transfer
                    energy, forces_all, virial, extras = self.retrying(
                        step, lambda: self.client.compute(self.cell(), positions)
                    )
                    self.timings.server += self.client.seconds_waiting - waited
                    self.timings.transfer += self.client.seconds_transfer - moved
                t2 = time.perf_counter()
                forces = forces_all[rows]
                w = 0.5 * (virial + virial.T)  # LAMMPS keeps the symmetric part
                header[:8] = (OK, energy, w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2])
                diagnostics = dict.fromkeys(DIAGNOSTICS, 0.0)
                diagnostics["raw_energy"] = energy
                diagnostics.update({k: float(v) for k, v in extras.items() if k in diagnostics})
                header[8:-1] = [diagnostics[k] for k in DIAGNOSTICS]
                header[-1] = float(self.stop_requested())
            except ProtocolError as err:
                header[0] = FAILED
                self.failure = (
                    f"step {step}: {err}: the force server died or hung (see its output); LAMMPS halted"
                )
            except MLIPError as err:
                header[0], self.failure = FAILED, f"step {step}: {err}"
            except KeyboardInterrupt:
                header[0], self.failure = INTERRUPTED, "interrupted"
            except Exception as err:  # noqa: BLE001
                header[0], self.failure = (
                    FAILED,
                    f"internal error in the force callback: {type(err).__name__}: {err}",
                )
        if self.size > 1:
            wait_quietly(self.comm.Ibcast(header, root=0))
        self.status = float(header[0])
        if self.status != OK:
            f[:] = 0.0
            self.lmp.set_internal_variable(HALT, 1)
            return
        f[:nlocal] = self.scatter(forces, counts, nlocal)
        # every rank passes the totals (LAMMPS divides the virial by the number of ranks
        # before summing it over ranks, and takes the energy as it is)
        self.lmp.fix_external_set_energy_global(self.parts.fix_id, float(header[1]))
        self.lmp.fix_external_set_virial_global(self.parts.fix_id, [float(v) for v in header[2:8]])
        for i, value in enumerate(header[8:-1], 1):
            self.lmp.fix_external_set_vector(self.parts.fix_id, i, float(value))
        if header[-1] > 0:
            self.request_stop()
        if self.rank == 0:
            t3 = time.perf_counter()
            tm = self.timings
            tm.scatter += t3 - t2
            tm.callback += t3 - t0
            tm.count()

    def _domain_forces(self, step, nlocal, f):
        if self.status != OK:
            f[:] = 0.0
            return
        status, message = self.domain.forces(step, nlocal, f)
        if status != OK:
            self.status = status
            if self.rank == 0:
                self.failure = message or "a rank failed (see its output)"
            f[:] = 0.0
            self.lmp.set_internal_variable(HALT, 1)

    def gather(self, tag, x, extra=None):
        """(tags, x[, extra]) of all ranks on rank 0, concatenated in rank order; counts."""
        return gather_rows(self.comm, self._mpi, tag, x, extra)

    def scatter(self, forces_in_gather_order, counts, nlocal) -> np.ndarray:
        """Rank 0's rows (in gather order) back to the ranks that own them."""
        return scatter_rows(self.comm, self._mpi, forces_in_gather_order, counts, nlocal)

    def rows(self, tags: np.ndarray) -> np.ndarray:
        """Row of each atom (by tag) in the server's order; checks that no atom appeared or vanished."""
        tags = tags.astype(np.int64)
        if len(tags) != self.natoms:
            raise InputError(
                f"LAMMPS now has {len(tags)} atoms but the force server was given {self.natoms}: "
                "atoms were lost, created or deleted after the fix external line"
            )
        if tags.min() < 0 or tags.max() >= len(self.row_of_tag):
            raise InputError(
                "an atom tag appeared that was not in the starting structure: do not create atoms "
                "after the fix external line"
            )
        rows = self.row_of_tag[tags]
        if (rows < 0).any():
            raise InputError(
                "an atom tag appeared that was not in the starting structure: do not create atoms "
                "after the fix external line"
            )
        return rows

    def write_structure(self, types: dict) -> None:
        """Gathers the starting configuration; rank 0 writes it (extxyz, tag order) atomically."""
        lmp = self.lmp
        nlocal = int(lmp.extract_global("nlocal"))
        tag = lmp.numpy.extract_atom("id")[:nlocal]
        x = lmp.numpy.extract_atom("x")[:nlocal]
        typ = lmp.numpy.extract_atom("type")[:nlocal]
        everything, _ = self.gather(tag, x, typ)
        if self.rank != 0:
            return
        import ase
        import ase.io

        order = np.argsort(everything[:, 0], kind="stable")
        tags = everything[order, 0].astype(np.int64)
        if len(np.unique(tags)) != len(tags) or tags.min() < 1:
            raise DeckError(
                "atom tags are not unique positive integers: use 'atom_modify id yes' (the default)"
            )
        self.row_of_tag = np.full(int(tags.max()) + 1, -1, dtype=np.int64)
        self.row_of_tag[tags] = np.arange(len(tags))
        symbols = [types[int(t)] for t in everything[order, 4]]
        h = self.cell()
        atoms = ase.Atoms(symbols, positions=everything[order, 1:4], cell=h.T, pbc=self.periodic)
        path = Path(self.cfg.structure)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        ase.io.write(tmp, atoms, format="extxyz", parallel=False)  # ASE would broadcast over MPI
        os.replace(tmp, path)

    def setup_domain(self, types: dict, info: dict) -> None:
        """Ghost shell (comm_modify cutoff = range + skin) and the decomposed force call."""
        ranges = self.comm.allgather(float(info["interaction_range"])) if self.size > 1 else []
        if len(set(ranges)) > 1:
            raise InputError(
                f"the force servers report different interaction ranges {sorted(set(ranges))} Å: "
                "give every server the same model"
            )
        modes = self.comm.allgather(info.get("forces", "conservative")) if self.size > 1 else []
        if len(set(modes)) > 1:
            raise InputError(
                f"the force servers serve different forces ({', '.join(sorted(set(modes)))}): "
                "give every server the same --forces"
            )
        text = self.parts.head + self.parts.tail
        skin = neighbor_skin(text)
        self.comm_cutoff = float(info["interaction_range"]) + skin
        head_lines = self.parts.head.count("\n")
        for line, value in comm_cutoffs(self.parts.tail):
            if not value >= self.comm_cutoff:
                raise DeckError(
                    f"deck line {head_lines + line}: comm_modify cutoff {value:g} is below the model's "
                    f"interaction range + skin ({self.comm_cutoff:g} Å), which the bridge sets: remove it"
                )
        given = [v for _, v in comm_cutoffs(self.parts.head)]
        cutoff = max(given + [self.comm_cutoff])
        self.lmp.command(f"comm_modify cutoff {cutoff!r}")
        uncertainty = None
        if self.cfg.uncertainty_threshold is not None:
            if not info.get("committee_size"):
                raise InputError(
                    f"--uncertainty-threshold needs a committee, but the server serves one model "
                    f"({info.get('path')}): start it with --committee A.pt B.pt [...]"
                )
            uncertainty = self._uncertainty_log()
        self.domain = DomainForces(
            self,
            self.client,
            info,
            numbers_of_types(types),
            per_atom=self.cfg.per_atom,
            range_check=self.cfg.range_check,
            uncertainty=uncertainty,
        )
        if self.rank == 0:
            self.say(
                f"force server connected on every rank: interaction range {info['interaction_range']:g} Å "
                f"({'declared' if info.get('declared_range') else 'not declared: assumed local'}), "
                f"ghost shell (comm_modify cutoff) {cutoff:g} Å, skin {skin:g} Å"
            )
            if self.domain.direct:
                self.say(
                    "direct forces: each rank's owned atoms' forces come from its own cluster (no "
                    "ghost-force return), the cell's net force is removed every step; "
                    + (
                        "virial: the model's direct virial of the owned atoms"
                        if info.get("direct_virial")
                        else "the model has no direct virial: ZERO virial (no pressure: not for NPT)"
                    )
                )

    def _uncertainty_log(self):
        """The UncertaintyLog of the domain route (rank 0 writes the file and the log lines)."""
        import logging

        from ..uncertainty import UncertaintyLog

        if self.rank == 0:
            logger = logging.getLogger("mlip-server")  # the UncertaintyLog's lines, as the bridge's
            if not logger.handlers:
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
                logger.addHandler(handler)
                logger.propagate = False
        return UncertaintyLog(
            self.cfg.uncertainty_threshold, self.cfg.save_uncertain if self.rank == 0 else None
        )

    def report(self) -> None:
        """Rank 0 prints the time spent; with ``timings`` every rank's numbers go to that JSON."""
        if self.domain is not None:
            self._report_domain()
            return
        if self.rank != 0:
            return
        t = self.timings
        if t.calls:
            other = t.callback - t.server
            self.say(
                f"{t.calls} force calls: {t.callback:.2f} s in the callback, of "
                f"which {t.server:.2f} s waiting "
                f"for the server and {other:.3f} s bridge overhead (gather {t.gather:.3f}, sockets "
                f"{t.transfer:.3f}, scatter {t.scatter:.3f})"
            )
        if self.cfg.timings:
            data = dict(t.as_dict(), decomposition="gather", natoms=self.natoms, ranks=self.size)
            Path(self.cfg.timings).write_text(json.dumps(data, indent=2))

    def _report_domain(self) -> None:
        mine = dict(self.domain.timings.as_dict(), rank=self.rank, ghost_rebuilds=self.domain.ghosts.rebuilds)
        ranks = self.comm.gather(mine, root=0) if self.size > 1 else [mine]
        if self.rank != 0:
            return
        if self.domain.uncertainty is not None:
            self.say(self.domain.uncertainty.summary())
        calls = max(r["calls"] for r in ranks)
        if calls:
            evaluated = sum(r["evaluated_sum"] for r in ranks) / max(sum(r["owned_sum"] for r in ranks), 1)
            slowest = max(ranks, key=lambda r: r["callback_s"])
            self.say(
                f"{calls} force calls on {self.size} rank(s): evaluated/owned atoms {evaluated:.3f}; "
                f"slowest rank {slowest['rank']}: {slowest['callback_s']:.2f} s in the callback, of which "
                f"{slowest['server_s']:.2f} s waiting for its server, {slowest['check_s']:.2f} s range "
                f"check and {slowest['bridge_s']:.3f} s bridge overhead"
            )
        if self.cfg.timings:
            data = {
                "decomposition": "domain",
                "natoms": self.natoms,
                "ranks": self.size,
                "interaction_range": self.domain.range,
                "comm_cutoff": self.comm_cutoff,
                "per_atom": self.cfg.per_atom,
                "per_rank": ranks,
            }
            Path(self.cfg.timings).write_text(json.dumps(data, indent=2))
