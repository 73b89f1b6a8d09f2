"""Ghost atoms of a domain-decomposed run: which ones the model needs, and returning what was
computed on them (forces, per-atom virials) to the ranks that own them.

``fix external`` hands the bridge forces of *owned* atoms only and LAMMPS's own reverse
communication runs before fixes, so the bridge returns ghost contributions itself, by atom
tag, with mpi4py: at every re-neighbouring (the owned or ghost tags changed) a directory
(tag t is registered on rank t mod P) tells each rank who owns its ghosts; then every step is
one ``Alltoallv`` of the ghost rows to their owners, which add them to their atoms.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GhostReturn", "near_owned"]


def near_owned(owned_positions: np.ndarray, ghost_positions: np.ndarray, distance: float) -> np.ndarray:
    """Mask of the ghosts within ``distance`` (Å) of at least one owned atom (a k-d tree query)."""
    if len(ghost_positions) == 0 or len(owned_positions) == 0:
        return np.zeros(len(ghost_positions), dtype=bool)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(owned_positions).query(ghost_positions, k=1, distance_upper_bound=distance)
    return d <= distance


class GhostReturn:
    """Adds rows computed on ghost atoms to the rows of the atoms they are images of.

    Parameters
    ----------
    comm
        mpi4py communicator (or :class:`mlip_server.lammps.mpi.SerialComm` for one process).
    mpi
        mpi4py's ``MPI`` module (None for one process).
    """

    def __init__(self, comm, mpi):
        self.comm, self.mpi = comm, mpi
        self._owned: np.ndarray | None = None
        self._ghosts: np.ndarray | None = None
        self.rebuilds = 0

    def update(self, owned_tags: np.ndarray, ghost_tags: np.ndarray) -> None:
        """Owned and ghost tags of this step (every rank calls it); rebuilds the pattern when
        they changed (collective when it does: LAMMPS re-neighbours on every rank together)."""
        owned_tags = np.asarray(owned_tags, dtype=np.int64)
        ghost_tags = np.asarray(ghost_tags, dtype=np.int64)
        same = (
            self._owned is not None
            and np.array_equal(owned_tags, self._owned)
            and np.array_equal(ghost_tags, self._ghosts)
        )
        if self.comm.size > 1:  # every rank must take part in a rebuild
            same = bool(self.comm.allreduce(int(not same)) == 0)
        if same:
            return
        self._owned, self._ghosts = owned_tags.copy(), ghost_tags.copy()
        self.rebuilds += 1
        order = np.argsort(owned_tags, kind="stable")
        sorted_tags = owned_tags[order]
        if self.comm.size == 1:
            self._local_index = _lookup(sorted_tags, order, ghost_tags, "owned by this rank")
            return
        owners = self._owners(owned_tags, ghost_tags)
        self._send_order = np.argsort(owners, kind="stable")
        self._send_counts = np.bincount(owners, minlength=self.comm.size).astype(np.int64)
        self._recv_counts = self._alltoall_counts(self._send_counts)
        tags_in = self._alltoallv(ghost_tags[self._send_order], self._send_counts, self._recv_counts)
        self._recv_index = _lookup(sorted_tags, order, tags_in, "owned by the rank that was told so")

    def add(self, ghost_rows: np.ndarray, owned_rows: np.ndarray) -> None:
        """Adds ``ghost_rows`` [n_ghost, k] (in the order of :meth:`update`'s ghost tags) to
        ``owned_rows`` [n_owned, k] of the atoms they belong to, on whichever rank owns them."""
        ghost_rows = np.asarray(ghost_rows, dtype=np.float64)
        if self.comm.size == 1:
            np.add.at(owned_rows, self._local_index, ghost_rows)
            return
        k = ghost_rows.shape[1]
        received = self._alltoallv(
            np.ascontiguousarray(ghost_rows[self._send_order]), self._send_counts, self._recv_counts, k
        )
        np.add.at(owned_rows, self._recv_index, received)

    # -- the directory -------------------------------------------------------------------
    def _owners(self, owned_tags, ghost_tags) -> np.ndarray:
        """Rank owning each ghost tag, through the directory (tag t registered on rank t mod P)."""
        size, rank = self.comm.size, self.comm.rank
        # 1. register the owned tags with their directory ranks
        home = owned_tags % size
        order = np.argsort(home, kind="stable")
        counts = np.bincount(home, minlength=size).astype(np.int64)
        got_counts = self._alltoall_counts(counts)
        registered = self._alltoallv(owned_tags[order], counts, got_counts)
        owner_of = np.repeat(np.arange(size), got_counts)
        book = np.argsort(registered, kind="stable")
        book_tags, book_owners = registered[book], owner_of[book]
        # 2. ask the directory about the ghost tags (each distinct tag once)
        wanted, inverse = np.unique(ghost_tags, return_inverse=True)
        home = wanted % size
        order = np.argsort(home, kind="stable")
        counts = np.bincount(home, minlength=size).astype(np.int64)
        got_counts = self._alltoall_counts(counts)
        questions = self._alltoallv(wanted[order], counts, got_counts)
        at = np.searchsorted(book_tags, questions)
        known = (at < len(book_tags)) & (book_tags[np.minimum(at, len(book_tags) - 1)] == questions)
        if not known.all():
            raise RuntimeError(f"rank {rank}: ghost atom tag {int(questions[~known][0])} is owned by no rank")
        answers = self._alltoallv(book_owners[at], got_counts, counts)
        owners = np.empty(len(wanted), dtype=np.int64)
        owners[order] = answers
        return owners[inverse]

    # -- MPI helpers -----------------------------------------------------------------------
    def _alltoall_counts(self, counts: np.ndarray) -> np.ndarray:
        out = np.empty(self.comm.size, dtype=np.int64)
        self.comm.Alltoall(np.ascontiguousarray(counts, dtype=np.int64), out)
        return out

    def _alltoallv(self, data: np.ndarray, send_counts, recv_counts, width: int = 1) -> np.ndarray:
        data = np.ascontiguousarray(data)
        kind = self.mpi.INT64_T if data.dtype == np.int64 else self.mpi.DOUBLE
        shape = (int(recv_counts.sum()),) + ((width,) if data.ndim == 2 else ())
        out = np.empty(shape, dtype=data.dtype)
        sc, rc = send_counts * width, recv_counts * width
        sd = np.concatenate([[0], np.cumsum(sc)[:-1]])
        rd = np.concatenate([[0], np.cumsum(rc)[:-1]])
        self.comm.Alltoallv([data, sc, sd, kind], [out, rc, rd, kind])
        return out


def _lookup(sorted_tags, order, tags, what: str) -> np.ndarray:
    """Local index of each of ``tags`` among the owned atoms (``sorted_tags`` = owned[order])."""
    at = np.searchsorted(sorted_tags, tags)
    ok = (at < len(sorted_tags)) & (sorted_tags[np.minimum(at, len(sorted_tags) - 1)] == tags)
    if not ok.all():
        raise RuntimeError(f"ghost atom tag {int(tags[~ok][0])} is not {what}")
    return order[at]
