"""The bridge's connections to its force server(s) (:class:`~mlip_server.lammps.bridge.Bridge`):
rank 0's in the gather route, one per rank in the domain route (the model's attributes asked
for and checked against the atoms and the options), and a lost server waited for on the same
address and the force call repeated (``--reconnect-timeout``), so that LAMMPS never sees the fault.
"""

from __future__ import annotations

import contextlib
import sys
import time

from ..core.errors import InputError, MLIPError, ProtocolError
from ..protocol import HostConnection
from .session import PROG, numbers_of_types

__all__ = ["Host", "NonFiniteForces", "ServerConnection"]


class NonFiniteForces(MLIPError):
    """The server answered, but with a non-finite energy or force (the model failed: no retry)."""


class Host(HostConnection):
    """:class:`HostConnection` that tells a model failure (non-finite answer, the connection
    intact) from a lost server (:class:`ProtocolError`), and can listen again on its address."""

    @staticmethod
    def _require_finite(energy, forces) -> None:
        try:
            HostConnection._require_finite(energy, forces)
        except ProtocolError as err:
            raise NonFiniteForces(str(err)) from None

    def reconnect(self, timeout: float, hint: str) -> None:
        """Closes the broken connection, listens again on the same address and accepts a new server."""
        self.close()
        self.listen()
        self.accept(timeout, hint)


class ServerConnection:
    """The force servers, for the :class:`~mlip_server.lammps.bridge.Bridge` (one of its parts:
    the methods work on the Bridge's ``cfg``, ``client``, ``domain`` and ``interrupts``)."""

    def connect_server(self, types: dict) -> None:
        """Gather route, rank 0: listens on the address and waits for the force server."""
        cfg = self.cfg
        self.client = Host(cfg.address, cfg.timeout, init=b"lammps")
        self.client.listen()
        hint = f"mlip-server --model MODEL.pt --structure {cfg.structure} --address {cfg.address}"
        mapping = ", ".join(f"{t}→{s}" for t, s in types.items())
        self.say(
            f"{self.natoms} atoms (types {mapping}) on {self.size} MPI "
            f"rank(s); wrote {cfg.structure}; "
            f"listening on {cfg.address}; start the force server with:\n    {hint}"
        )
        with self.interrupts.raising():
            self.client.accept(cfg.connect_timeout, hint)
        self.say("force server connected")

    def connect_ranks(self, types: dict) -> dict:
        """Every rank listens on its own address, waits for its server and asks for the model's
        attributes; returns them (raises with the fix on this rank's problem)."""
        cfg = self.cfg
        address = cfg.address.for_rank(self.rank)
        self.client = Host(address, cfg.timeout, init=b"lammps", domain=True)
        self.client.listen()
        addresses = " ".join(f"--address {cfg.address.for_rank(r)}" for r in range(self.size))
        hint = f"mlip-server --model MODEL.pt {addresses} (or several servers sharing the ranks)"
        if self.rank == 0:
            self.say(
                f"{self.natoms} atoms on {self.size} MPI rank(s), domain decomposition; listening on "
                f"{cfg.address.for_rank(0)}{' ...' if self.size > 1 else ''}; start the force server(s):"
                f"\n    {hint}"
            )
        with self.interrupts.raising() if self.rank == 0 else contextlib.nullcontext():
            self.client.accept(cfg.connect_timeout, hint)
        info = self.client.model_info()
        numbers = numbers_of_types(types)
        missing = [types[t] for t in types if numbers[t] not in info.get("species", [])]
        if missing:
            raise InputError(
                f"model {info.get('path')} has no element {missing[0]} (species {info.get('species')}): "
                "fix -e or use a model for these elements"
            )
        if not info.get("sums_atomic_energies"):
            raise InputError(
                info.get("subset_refusal")
                or f"model {info.get('path')}: its energy is not a sum of atomic terms over structure_index, "
                "so a rank's share cannot be asked for: use --decomposition gather"
            )
        if cfg.per_atom and not info.get("per_atom_energies", True):
            raise InputError(
                f"model {info.get('path')} gives no per-atom energies (a metatomic model without a "
                "per-atom 'energy' output): run without --per-atom (compute pe/atom, stress/atom)"
            )
        return info

    def retrying(self, step, call):
        """``call()`` (one force exchange on this rank's connection); when the server is lost
        (closed connection, time-out) and ``reconnect_timeout`` > 0, listens again on the same
        address, waits that long for a new server (the launcher restarts it) and repeats the call,
        so that LAMMPS never sees the fault. Rank-local: only the affected rank reconnects."""
        while True:
            try:
                return call()
            except NonFiniteForces:
                raise
            except ProtocolError as err:
                if self.cfg.reconnect_timeout <= 0:
                    raise
                self.reconnect(step, err)

    def reconnect(self, step, err) -> None:
        cfg, client = self.cfg, self.client
        who = f"rank {self.rank}" if cfg.decomposition == "domain" else "rank 0"
        # the launcher reads these two lines (runner._Relay): keep their wording
        print(
            f"{PROG}: force server lost at step {step} ({who}): {err}; listening again on "
            f"{client.address} for {cfg.reconnect_timeout:g} s",
            file=sys.stderr,
            flush=True,
        )
        t0 = time.monotonic()
        hint = f"mlip-server --model MODEL.pt --address {client.address}"
        with self.interrupts.raising() if self.rank == 0 else contextlib.nullcontext():
            client.reconnect(cfg.reconnect_timeout, hint)
            if cfg.decomposition == "domain":
                info = client.model_info()
                if self.domain is not None and float(info["interaction_range"]) != self.domain.range:
                    raise InputError(
                        f"the new force server's model has interaction range "
                        f"{info['interaction_range']:g} Å, the run started with {self.domain.range:g} Å: "
                        "restart it with the same model"
                    )
        self.reconnects += 1
        print(
            f"{PROG}: force server reconnected at step {step} ({who}) after "
            f"{time.monotonic() - t0:.2f} s; repeating the force call",
            file=sys.stderr,
            flush=True,
        )
