"""In-process i-PI PES on the Evaluator: ``<ffdirect>`` and ``i-pi-py_driver -m custom``.

i-PI loads this file by path, so it imports the project with absolute imports (the
project must be installed, e.g. ``pip install -e .``)::

    <ffdirect name='mlip'>
      <pes>custom</pes>
      <pes_path>/path/to/project/server/ipi/pes.py</pes_path>
      <parameters>{model: model.pt, structure: init.xyz, average: none, dtype: float32}</parameters>
    </ffdirect>

    i-pi-py_driver -m custom -P server/ipi/pes.py -u -a NAME -o model=model.pt,structure=init.xyz

Parameters: ``model`` (path), ``structure`` (file giving the elements in i-PI's
order), ``average`` (spec), ``device``, ``dtype``, ``nonperiodic`` (bool); instead of ``model``,
``committee`` (two or more paths separated by ``;`` or spaces: a committee, its members'
results in the extras as :func:`mlip_server.protocol.ipi_extras` sends them) with ``committee_serve``
(``mean`` or ``first``). Batched calls (lists of cells and positions) are evaluated as one batch.
"""

import json
import re

import numpy as np
from ipi.pes.dummy import Dummy_driver

from mlip_server.core.averaging import Averaging
from mlip_server.core.errors import InputError
from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator
from mlip_server.protocol import BOHR_PER_ANGSTROM, cell_to_rows, encode_result, ipi_extras
from mlip_server.structures import read_numbers

__all__ = ["MLIPDriver"]

__DRIVER_NAME__ = "mlip"
__DRIVER_CLASS__ = "MLIPDriver"


def _bool(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


class MLIPDriver(Dummy_driver):
    """i-PI PES: positions (Bohr) and cell (columns, Bohr) in; Hartree units out."""

    def __init__(
        self,
        model=None,
        structure=None,
        average="none",
        device="cpu",
        dtype=None,
        nonperiodic=False,
        committee=None,
        committee_serve="mean",
        *args,
        **kwargs,
    ):
        if (model is None) == (committee is None):
            raise InputError("give the PES either model=PATH or committee='A.pt;B.pt[;...]'")
        if structure is None:
            raise InputError("the PES needs structure=FILE (the elements, in i-PI's atom order)")
        if committee is not None:
            model = [p for p in re.split(r"[;\s]+", str(committee)) if p]
        self.evaluator = load_evaluator(model, device=device, dtype=dtype, committee_serve=committee_serve)
        self.numbers = read_numbers(structure)
        self.averaging = Averaging(average)
        self.nonperiodic = _bool(nonperiodic)
        super().__init__(*args, **kwargs)

    def _structure(self, cell, pos) -> Structure:
        rows = cell_to_rows(cell)
        periodic = not self.nonperiodic and bool(np.abs(rows).sum() > 0)
        positions = np.asarray(pos, dtype=np.float64).reshape(-1, 3) / BOHR_PER_ANGSTROM
        return Structure(positions, self.numbers, rows, np.full(3, periodic))

    def compute(self, cell, pos):
        batched = isinstance(cell, list)
        cells, positions = (cell, pos) if batched else ([cell], [pos])
        results = self.evaluator.compute(
            [self._structure(c, p) for c, p in zip(cells, positions)], self.averaging
        )
        out = []
        for r, p in zip(results, positions):
            energy, forces, virial = encode_result(r.energy, r.forces, r.virial)
            out.append(
                (
                    float(energy),
                    forces.reshape(np.shape(p)),
                    virial.reshape(3, 3),
                    json.dumps(ipi_extras(r)) if r.extras else "",
                )
            )
        return out if batched else out[0]
