"""The ``mlip-analyse`` sub-commands, one module each: ``mlip_server.analysis.commands.NAME.NAME`` runs
sub-command NAME (the analysis of ``analysis/NAME.py``, or of :mod:`mlip_server.analysis.dipoles` for
``orientation`` and ``dipole``), then writes its table(s), PNG plot (:mod:`mlip_server.analysis.plots`) and
``summary.json`` section into the output folder. Nothing is written before the analysis has
finished, so a failure leaves the folder as it was.

rdf, msd, orientation, dipole -- ``fn(u, opt)`` on the loaded Universe
symmetry, uncertainty -- ``fn(traj, opt, load)`` on the run's files
all -- :func:`every_analysis`, every one that applies
common -- :class:`Options`, :func:`input_info` (the ``input`` section), what the commands share
uncertainty_outputs -- the tables and summary of ``uncertainty``

The files of a run are found by :func:`mlip_server.analysis.run_folder.find_run_files`. From Python::

    from mlip_server.analysis.commands import Options, every_analysis
    from mlip_server.analysis.readers import load_universe

    load = lambda path, **kw: load_universe(path, timestep_fs=10, **kw)
    every_analysis(load("run/sim.pos_0.extxyz"), "run/sim.pos_0.extxyz", Options(out="out", dt_ps=0.01), load)

(The command functions are not re-exported here: ``mlip_server.analysis.commands.rdf`` is the module.)
"""

from __future__ import annotations

from .all import UNIVERSE_COMMANDS, every_analysis
from .common import TIMESTEP_FIX, Options, input_info

__all__ = ["Options", "every_analysis", "input_info", "UNIVERSE_COMMANDS", "TIMESTEP_FIX"]
