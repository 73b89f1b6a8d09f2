"""The domain-decomposed force call: every MPI rank evaluates its own subdomain.

Every step each rank sends, on its own connection to a force server, one non-periodic cluster:
its owned atoms followed by the ghost atoms (LAMMPS's periodic images included) within the
model's interaction range R of an owned atom, with their atomic numbers (the bridge ↔ server
extension of :mod:`mlip_server.protocol.messages`). The server returns the energy of the owned atoms'
terms (a model whose energy is a sum of atomic terms, checked at load time), its gradient on
*every* atom of the cluster and its virial. Ghost forces are sent back to the ranks owning those
atoms (:class:`mlip_server.lammps.ghosts.GhostReturn`), so the owned atoms' forces are exact: an atom's
energy feels only atoms within R, so the owned atoms' energy is exact with a shell of R, and every
term that moves an owned atom is some rank's owned term. Energy and virial of the cell are sums
over ranks (W = −Σ_e g_e ⊗ r_e of the owned terms: exact for NPT). LAMMPS keeps ghosts out to
``comm_modify cutoff`` R + skin, so that the shell is complete between re-neighbourings.

We chose this "1 × range + ghost-force return" scheme over "2 × range, forces of every atom's
energy, no return" because it evaluates fewer atoms (for PET's 8 Å range and a 49k-atom
water subdomain ~1.7 instead of ~2.8 evaluated atoms per owned atom) and needs one gradient
instead of two (the owned-only energy for the virial, all atoms' for the forces); the price,
one ``Alltoallv`` of the ghost rows per step, is measured in ``bench/lammps_scaling.py``.

The cell's diagnostics: an averaged server (``--average SPEC``) also returns every rotated copy's
weight, owned-terms energy and forces on the cluster (DOMAINDATA flag bit 2); the copies' forces
travel with the ghost rows (3 columns per copy), so every owned atom ends with its exact per-copy
forces, and the cell's energy spread (from the copies' energies summed over ranks) and RMS force
spread (from the per-atom variances summed over ranks) are the gather route's numbers (``f_ID[3]``,
``f_ID[4]``); the price is K × 3 more columns per ghost row for a K-copy grid. A committee's
largest per-atom force spread (``f_ID[6]``) above ``--uncertainty-threshold`` gathers the whole
cell to rank 0 for the :class:`~mlip_server.uncertainty.UncertaintyLog` (only then).

The range check: a model that passes messages but does not declare ``interaction_range`` (so is
taken as local, R = cutoff) would give wrong forces silently. On the first force call the rank
with the most atoms also evaluates its owned atoms with a shell of 2R, collected from all ranks'
atoms and their periodic images; if the owned atoms' forces differ beyond rounding (relative
1e-8 in float64, 1e-5 in float32) the run stops with a one-line error naming the attribute.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import MLIPError, ProtocolError
from .ghosts import GhostReturn, near_owned
from .mpi import wait_quietly

__all__ = ["DomainForces", "RankTimings", "RangeError", "OK", "FAILED", "INTERRUPTED", "RANGE_TOLERANCE"]

OK, FAILED, INTERRUPTED = 0.0, 1.0, 2.0
RANGE_TOLERANCE = {"float64": 1e-8, "float32": 1e-5}
"""Relative force difference (to the largest owned force) the range check allows, by model dtype."""


class RangeError(MLIPError):
    """The model's energy feels atoms beyond its (declared or assumed) interaction range."""


@dataclass
class RankTimings:
    """One rank's force calls: atoms and seconds (s)."""

    calls: int = 0
    owned: int = 0  # atoms owned at the last call
    ghost: int = 0  # ghost atoms sent to the server at the last call
    ghost_lammps: int = 0  # ghost atoms LAMMPS kept at the last call (out to R + skin)
    evaluated_sum: int = 0  # atoms sent, summed over calls
    owned_sum: int = 0
    callback: float = 0.0  # the whole force call
    server: float = 0.0  # cluster sent → forces header arrived (the server's work, its batching)
    transfer: float = 0.0  # sockets: sending the cluster, receiving the forces
    check: float = 0.0  # the first call's range check
    first: dict = field(default_factory=dict)  # totals after the first call (excluded from rates)

    def as_dict(self) -> dict:
        keys = ("calls", "owned", "ghost", "ghost_lammps", "evaluated_sum", "owned_sum")
        out = {k: getattr(self, k) for k in keys}
        out.update({f"{k}_s": getattr(self, k) for k in ("callback", "server", "transfer", "check")})
        out["bridge_s"] = self.callback - self.server - self.check
        out["first"] = self.first
        return out


class DomainForces:
    """The force call of one rank in a domain-decomposed run.

    Parameters
    ----------
    bridge : mlip_server.lammps.bridge.Bridge
        The bridge (its LAMMPS instance, communicator, fix ID, cell).
    client : mlip_server.protocol.HostConnection
        This rank's connection to its force server (domain extension).
    info : dict
        The server's model attributes (``interaction_range`` Å, ``dtype``, ...).
    numbers_of_type : numpy.ndarray
        Atomic number of each LAMMPS atom type (index = type).
    per_atom : bool
        Also set per-atom energies and virials (``compute pe/atom``, ``stress/atom``).
    range_check : bool
        Run the range check on the first call.
    """

    def __init__(
        self, bridge, client, info, numbers_of_type, per_atom=False, range_check=True, uncertainty=None
    ):
        self.bridge, self.client, self.info = bridge, client, info
        self.uncertainty = uncertainty  # an UncertaintyLog (rank 0 writes; a committee only)
        self.comm, self.mpi = bridge.comm, bridge._mpi
        self.rank, self.size = self.comm.rank, self.comm.size
        self.range = float(info["interaction_range"])
        self.n_members = int(info.get("committee_size", 0))  # a committee's spreads need every member
        self.direct = info.get("forces") == "direct"  # owned forces come from the cluster: no return
        self.numbers_of_type = np.asarray(numbers_of_type, dtype=np.int64)
        self.per_atom, self.range_check = per_atom, range_check
        self.ghosts = GhostReturn(self.comm, self.mpi)
        self.timings = RankTimings()
        self.checked = not range_check
        self._step = 0
        self.n_rotations: int | None = None  # rotated copies per evaluation, agreed at the first call

    # -- one force call ----------------------------------------------------------------------
    def forces(self, step, nlocal, f) -> tuple[float, str | None]:
        """Computes and sets this step's forces, energy and virial (every rank together).

        Returns the status agreed by all ranks (OK, FAILED or INTERRUPTED) and, on rank 0, the
        first failing rank's message. Collective calls happen in the same order on every rank
        whatever fails locally, so a failure can never leave a rank waiting."""
        t0 = time.perf_counter()
        self._step = step
        lmp, tm = self.bridge.lmp, self.timings
        nghost = int(lmp.extract_global("nghost"))
        n = nlocal + nghost
        x = np.array(lmp.numpy.extract_atom("x")[:n], dtype=np.float64)
        tags = np.array(lmp.numpy.extract_atom("id")[:n], dtype=np.int64)
        numbers = self.numbers_of_type[np.asarray(lmp.numpy.extract_atom("type")[:n])]
        status, message = OK, None
        self.ghosts.update(tags[:nlocal], tags[nlocal:])  # collective at re-neighbouring
        thick = None if self.checked else self._thick_cluster(nlocal, x, tags, numbers)  # collective
        energy, virial = 0.0, np.zeros((3, 3))
        # columns: forces, [per-atom virial (6)], [each committee member's forces (3 M)]
        base = 9 if self.per_atom else 3
        m = self.n_members
        ghost_rows = np.zeros((nghost, base + 3 * m))
        owned_rows = np.zeros((nlocal, ghost_rows.shape[1]))
        member_energies = np.zeros(m)
        atom_energies = np.zeros(nlocal)
        extras = {}
        near = np.zeros(nghost, dtype=bool)
        try:
            if self.rank == 0 and self.bridge.interrupts.pending:
                raise KeyboardInterrupt
            if self.rank == 0 and not self.bridge.line_mode and self.bridge.stop_requested():
                raise KeyboardInterrupt  # a deck with loops cannot stop cleanly: stop it
            near = near_owned(x[:nlocal], x[nlocal:], self.range)
            cluster = np.concatenate([np.arange(nlocal), nlocal + np.flatnonzero(near)])
            tm.owned, tm.ghost, tm.ghost_lammps = nlocal, int(near.sum()), nghost
            tm.evaluated_sum += len(cluster)
            tm.owned_sum += nlocal
            if len(cluster):
                energy, forces, virial, e_atom, w_atom, extras = self._compute(
                    numbers[cluster], x[cluster], nlocal
                )
                owned_rows[:, :3] = forces[:nlocal]
                ghost_rows[near, :3] = forces[nlocal:]
                if self.per_atom:
                    atom_energies[:] = e_atom
                    w = w_atom.reshape(-1, 9)
                    owned_rows[:, 3:9] = _six(w[:nlocal])
                    ghost_rows[near, 3:9] = _six(w[nlocal:])
                if m:
                    member_energies[:] = extras["committee_energies"]
                    rows = extras["committee_forces"].transpose(1, 0, 2).reshape(len(cluster), 3 * m)
                    owned_rows[:, base:] = rows[:nlocal]
                    ghost_rows[near, base:] = rows[nlocal:]
                if thick is not None:
                    t_check = time.perf_counter()
                    self._check_range(thick, forces[:nlocal])
                    tm.check += time.perf_counter() - t_check
        except KeyboardInterrupt:
            status, message = INTERRUPTED, "interrupted"
        except ProtocolError as err:
            status = FAILED
            message = f"step {step}, rank {self.rank}: {err}: the force server died or hung (see its output)"
        except MLIPError as err:
            status, message = FAILED, f"step {step}, rank {self.rank}: {err}"
        except Exception as err:  # noqa: BLE001 - must reach the other ranks
            status = FAILED
            message = f"step {step}, rank {self.rank}: internal error: {type(err).__name__}: {err}"
        self.checked = True
        if self.size > 1:  # a rank waiting for a restarted server: the others wait without spinning
            wait_quietly(self.comm.Ibarrier())
        # the rotated copies of an averaged model (their forces travel with the ghost rows)
        weights = extras.get("rotation_weights")
        if self.n_rotations is None:  # collective, once
            k = 0 if weights is None else len(weights)
            self.n_rotations = int(self.comm.allreduce(k, op=self.mpi.MAX)) if self.size > 1 else k
        k = self.n_rotations
        rot_energies, rot_weights = np.zeros(k), np.zeros(k)
        width = owned_rows.shape[1]
        if k:
            owned_rows = np.hstack([owned_rows, np.zeros((nlocal, 3 * k))])
            ghost_rows = np.hstack([ghost_rows, np.zeros((nghost, 3 * k))])
            if weights is not None and len(weights) != k and status == OK:
                status = FAILED
                message = (
                    f"step {step}, rank {self.rank}: its server averages over {len(weights)} rotations, "
                    f"the others over {k}: give every server the same --average"
                )
            elif weights is not None and status == OK:
                rot_weights[:], rot_energies[:] = weights, extras["rotation_energies"]
                rows = extras["rotation_forces"].transpose(1, 0, 2).reshape(-1, 3 * k)
                owned_rows[:, width:] = rows[:nlocal]
                ghost_rows[near, width:] = rows[nlocal:]
        # direct forces: the owned rows are complete, the ghost rows are not returned (every rank
        # serves the same forces: checked at set-up)
        net_force = 0.0
        if self.direct:
            net_force = self._remove_net_force(owned_rows, base)  # collective
        else:
            self.ghosts.add(ghost_rows, owned_rows)  # collective
        rot_var = 0.0
        if k and nlocal:
            rot_forces = owned_rows[:, width:].reshape(nlocal, k, 3)
            mean = np.einsum("k,ika->ia", rot_weights, rot_forces)
            rot_var = float(np.einsum("k,ika->", rot_weights, (rot_forces - mean[:, None, :]) ** 2))
        local = np.array(
            [
                float(status == FAILED),
                float(status == INTERRUPTED),
                energy,
                *_six(virial.reshape(1, 9))[0],  # symmetric part, LAMMPS's order
                float(extras.get("raw_energy", energy)),
                float(extras.get("delta_energy", 0.0)),
                *member_energies,
                *rot_energies,
                rot_var,
                float(nlocal),
                float(self.rank == 0 and status == OK and self.bridge.stop_requested()),
            ]
        )
        member_std = 0.0
        if m and nlocal:
            member_forces = owned_rows[:, base : base + 3 * m].reshape(nlocal, m, 3)
            dev = member_forces - member_forces.mean(axis=1, keepdims=True)
            member_std = float(np.sqrt(np.einsum("ima,ima->i", dev, dev) / (m - 1)).max())
        spreads = np.array(
            [
                float(extras.get("energy_spread", 0.0)),
                float(extras.get("force_spread_rms", 0.0)),
                member_std,
                *rot_weights,
            ]
        )
        total, largest = self._reduce(local, spreads)  # collective
        if total[0] or total[1]:
            status = FAILED if total[0] else INTERRUPTED
            messages = self.comm.gather(message, root=0) if self.size > 1 else [message]
            first = next((m for m in (messages or []) if m), None)
            return status, first
        f[:nlocal] = owned_rows[:, :3]
        fix = self.bridge.parts.fix_id
        # every rank passes the totals (LAMMPS divides the global virial by the number of ranks)
        lmp.fix_external_set_energy_global(fix, float(total[2]))
        lmp.fix_external_set_virial_global(fix, [float(v) for v in total[3:9]])
        if self.per_atom and nlocal:
            lmp.numpy.fix_external_set_energy_peratom(fix, atom_energies)
            lmp.numpy.fix_external_set_virial_peratom(fix, np.ascontiguousarray(owned_rows[:, 3:9]))
        energy_std = float(np.std(total[11 : 11 + m], ddof=1)) if m else 0.0
        energy_spread, force_spread = largest[0], largest[1]  # raw: zeros
        if k:  # the cell's spreads over the rotations (exact: every rank's copies summed)
            w, e_k = largest[3 : 3 + k], total[11 + m : 11 + m + k]
            energy_spread = float(np.sqrt(max(w @ (e_k - w @ e_k) ** 2, 0.0)))
            var, n_cell = total[11 + m + k], total[12 + m + k]
            force_spread = float(np.sqrt(var / (3 * n_cell))) if n_cell else 0.0
        diagnostics = (total[9], total[10], energy_spread, force_spread, energy_std, largest[2], net_force)
        for i, value in enumerate(diagnostics, 1):
            lmp.fix_external_set_vector(fix, i, float(value))
        if total[-1] > 0:
            self.bridge.request_stop()
        if m and self.uncertainty is not None and largest[2] > self.uncertainty.threshold:
            self._save_uncertain(step, nlocal, x, tags, numbers, owned_rows, base, total)
        tm.callback += time.perf_counter() - t0
        tm.calls += 1
        if tm.calls == 1:
            tm.first = {k: v for k, v in tm.as_dict().items() if k != "first"}
        return OK, None

    def _remove_net_force(self, owned_rows, base) -> float:
        """Direct forces: the cell's net force (and each committee member's own), summed over the
        ranks, removed from every atom, as the gather route's server does per structure. Returns
        its size |Σ_i F_i| (eV/Å; the gather route's ``direct_net_force``, ``f_ID[7]``)."""
        m, nlocal = self.n_members, len(owned_rows)
        local = np.concatenate(
            [
                owned_rows[:, :3].sum(axis=0),
                owned_rows[:, base : base + 3 * m].reshape(nlocal, m, 3).sum(axis=0).ravel(),
                [float(nlocal)],
            ]
        )
        total = np.empty_like(local)
        if self.size > 1:
            wait_quietly(self.comm.Iallreduce(local, total, op=self.mpi.SUM))
        else:
            total = local
        if not total[-1]:
            return 0.0
        owned_rows[:, :3] -= total[:3] / total[-1]
        if m:
            owned_rows[:, base : base + 3 * m] -= (total[3 : 3 + 3 * m] / total[-1])[None, :]
        return float(np.linalg.norm(total[:3]))

    def _save_uncertain(self, step, nlocal, x, tags, numbers, owned_rows, base, total):
        """The whole cell, gathered to rank 0 (collective: every rank saw the same largest
        spread), checked and saved by the :class:`~mlip_server.uncertainty.UncertaintyLog`."""
        from ..core.graph import CommitteeResult, Result, Structure

        m = self.n_members
        mine = np.column_stack(
            [
                tags[:nlocal],
                x[:nlocal],
                numbers[:nlocal],
                owned_rows[:, :3],
                owned_rows[:, base : base + 3 * m],
            ]
        )
        rows = self.comm.gather(mine, root=0) if self.size > 1 else [mine]
        if self.rank != 0:
            return
        rows = np.concatenate(rows)
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        n = len(rows)
        cell = self.bridge.cell().T if self.bridge.periodic else np.zeros((3, 3))
        structure = Structure(
            rows[:, 1:4], rows[:, 4].astype(np.int64), cell, np.full(3, self.bridge.periodic)
        )
        member_forces = rows[:, 8:].reshape(n, m, 3).transpose(1, 0, 2)
        members = np.asarray(total[11 : 11 + m])
        committee = CommitteeResult(members, member_forces, np.zeros((m, 3, 3)))
        extras = {"committee_energy_std": float(np.std(members, ddof=1))}
        result = Result(float(total[2]), rows[:, 5:8], np.zeros((3, 3)), extras, committee=committee)
        self.uncertainty.check(structure, result, f"LAMMPS step {step}")

    def _compute(self, numbers, positions, owned, timed=True):
        """The server's answer for one cluster; its time counts as the server's (``timed``)."""
        waited, moved = self.client.seconds_waiting, self.client.seconds_transfer

        def call():
            with self.bridge.interrupts.raising() if self.rank == 0 else contextlib.nullcontext():
                return self.client.compute_domain(
                    numbers, positions, owned, self.per_atom, members=self.n_members > 0, rotations=True
                )

        result = self.bridge.retrying(self._step, call)
        if timed:
            self.timings.server += self.client.seconds_waiting - waited
            self.timings.transfer += self.client.seconds_transfer - moved
        return result

    def _reduce(self, local, spreads):
        if self.size == 1:
            return local, spreads
        total, largest = np.empty_like(local), np.empty_like(spreads)
        wait_quietly(self.comm.Iallreduce(local, total, op=self.mpi.SUM))
        wait_quietly(self.comm.Iallreduce(spreads, largest, op=self.mpi.MAX))
        return total, largest

    # -- the range check -----------------------------------------------------------------------
    def _thick_cluster(self, nlocal, x, tags, numbers):
        """On the checking rank (the one with most owned atoms): its owned atoms followed by every
        atom or periodic image within 2R of them, gathered from all ranks; None elsewhere."""
        counts = self.comm.allgather(nlocal) if self.size > 1 else [nlocal]
        checker = int(np.argmax(counts))
        if counts[checker] == 0:
            return None
        depth = 2.0 * self.range
        box = None
        if self.rank == checker:
            box = np.stack([x[:nlocal].min(axis=0) - depth, x[:nlocal].max(axis=0) + depth])
        if self.size > 1:
            box = self.comm.bcast(box, root=checker)
        cell = self.bridge.cell().T if self.bridge.periodic else None
        rows = _images_in_box(x[:nlocal], tags[:nlocal], numbers[:nlocal], cell, box)
        if self.size > 1:
            gathered = self.comm.gather(rows, root=checker)
            if self.rank != checker:
                return None
            rows = np.concatenate(gathered)
        own = set(tags[:nlocal].tolist())
        # drop the checker's own atoms at their own positions (they come first, as owned)
        mine = np.array([int(t) in own for t in rows[:, 0]]) & (rows[:, 5] == 0)
        rows = rows[~mine]
        keep = near_owned(x[:nlocal], rows[:, 1:4], depth)
        rows = rows[keep]
        positions = np.concatenate([x[:nlocal], rows[:, 1:4]])
        z = np.concatenate([numbers[:nlocal], rows[:, 4].astype(np.int64)])
        return z, positions, nlocal

    def _check_range(self, thick, thin_forces) -> None:
        numbers, positions, owned = thick
        _, forces, *_ = self._compute(numbers, positions, owned, timed=False)
        scale = np.abs(forces[:owned]).max()
        if scale == 0:
            return
        diff = np.abs(forces[:owned] - thin_forces).max() / scale
        tol = RANGE_TOLERANCE.get(self.info.get("dtype"), 1e-5)
        if diff <= tol:
            return
        name = self.info.get("path", "the model")
        r = self.range
        if self.info.get("declared_range"):
            why = f"declares interaction_range = {r:g} Å, but"
            fix = "declare the range it really has (cutoff × message-passing layers)"
        else:
            why = f"declares no interaction_range (taken as local, = its cutoff {r:g} Å), but"
            fix = "export it with the attribute interaction_range = cutoff × message-passing layers"
        raise RangeError(
            f"model {name} {why} the owned atoms' forces change by {diff:.2g} (relative, allowed "
            f"{tol:g}) when the ghost shell grows from {r:g} to {2 * r:g} Å: {fix}, or use "
            "--decomposition gather"
        )


def _images_in_box(x, tags, numbers, cell, box) -> np.ndarray:
    """Rows (tag, x, y, z, Z, is-image) of the atoms and their periodic images inside ``box``
    ([2, 3] lower and upper corner, Å); ``cell`` rows are lattice vectors (None: not periodic)."""
    if len(x) == 0:
        return np.zeros((0, 6))
    shifts = [np.zeros(3)]
    if cell is not None:
        inv = np.linalg.inv(cell)
        corners = np.array(
            [[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        )
        fc, fx = corners @ inv, x @ inv
        lo = np.floor(fc.min(axis=0) - fx.max(axis=0)).astype(int)
        hi = np.ceil(fc.max(axis=0) - fx.min(axis=0)).astype(int)
        grid = np.stack(
            np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij"), axis=-1
        ).reshape(-1, 3)
        shifts = list(grid.astype(float))
    out = []
    for s in shifts:
        image = x + (s @ cell if cell is not None else 0.0)
        inside = np.all((image >= box[0]) & (image <= box[1]), axis=1)
        if inside.any():
            flag = np.full(int(inside.sum()), float(np.any(s != 0)))
            out.append(np.column_stack([tags[inside], image[inside], numbers[inside], flag]))
    return np.concatenate(out) if out else np.zeros((0, 6))


def _six(w9: np.ndarray) -> np.ndarray:
    """[n, 9] row-major 3×3 → [n, 6] in LAMMPS's order xx, yy, zz, xy, xz, yz (symmetric part)."""
    w = w9.reshape(-1, 3, 3)
    w = 0.5 * (w + np.transpose(w, (0, 2, 1)))
    return np.stack([w[:, 0, 0], w[:, 1, 1], w[:, 2, 2], w[:, 0, 1], w[:, 0, 2], w[:, 1, 2]], axis=1)
