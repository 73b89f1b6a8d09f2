"""The bridge's side of checkpoints and clean stops (:class:`~mlip_server.lammps.bridge.Bridge`;
the files and the runner's side: :mod:`mlip_server.lammps.checkpoint`). At each force call
rank 0 names the newest complete restart file in the state file (``checkpoint.json``; the two
newest kept), rewrites ``progress.json`` at most once a second and looks for the stop file; on
``--resume`` every rank reads the state file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .checkpoint import PROGRESS_FILE, RESTART_PATTERN, write_json
from .deck import DeckError

__all__ = ["Checkpoints"]


class Checkpoints:
    """Restart files, progress and the stop file, for the :class:`~mlip_server.lammps.bridge.Bridge`
    (one of its parts: the methods work on the Bridge's ``cfg``, ``comm``, ``lmp`` and run state)."""

    def stop_requested(self) -> bool:
        """Rank 0: whether the stop file exists (the launcher creates it: walltime, SIGTERM...)."""
        return bool(self.cfg.stop_file) and not self.stopping and os.path.exists(self.cfg.stop_file)

    def _note_checkpoint(self, step: int) -> None:
        """Rank 0, at a force call of ``step``: the restart file of the last multiple of N before
        it is complete (LAMMPS wrote it at the end of that step): name it in the state file and
        remove all but the newest two."""
        n = int(self.cfg.checkpoint_every)
        done = ((step - 1) // n) * n
        if done <= max(self.last_checkpoint, self.checkpoint_floor):
            return
        path = Path(RESTART_PATTERN.replace("*", str(done)))
        if not path.exists():
            return
        self.last_checkpoint = done
        self.save_state(path.name, done)
        for old in Path(".").glob(RESTART_PATTERN):
            suffix = old.name.split(".", 1)[1]
            if suffix.isdigit() and int(suffix) < done - n:
                old.unlink(missing_ok=True)

    def _note_progress(self, step: int) -> None:
        """Rank 0, at a force call of ``step``, at most once a second: ``progress.json`` beside the
        state file (the step, the deck's first and final steps, the timestep in fs)."""
        now = time.monotonic()
        if now - self._progress_at < 1.0:
            return
        self._progress_at = now
        dt_fs = 1e3 * float(self.lmp.extract_global("dt"))  # units metal: ps
        write_json(
            Path(self.cfg.state).with_name(PROGRESS_FILE),
            {"step": step, "first_step": self.first_step, "final_step": self.final_step, "dt_fs": dt_fs},
        )

    def save_state(self, restart: str | None, step: int, **extra) -> None:
        if self.rank != 0 or not self.cfg.state:
            return
        data = {
            "restart": restart,
            "step": int(step),
            "first_step": self.first_step,
            "final_step": self.final_step,
            "checkpoint_every": self.cfg.checkpoint_every,
            "dumps": self.dumps,
            "log": self.cfg.log,
            "done": False,
        }
        data.update(extra)
        write_json(Path(self.cfg.state), data)

    def read_resume_state(self) -> dict:
        text = None
        if self.rank == 0:
            text = Path(self.cfg.state).read_text()
        if self.size > 1:
            text = self.comm.bcast(text, root=0)
        state = json.loads(text)
        if not state.get("restart"):
            raise DeckError(f"{self.cfg.state} names no restart file: nothing to resume from")
        return state
