"""Builds small real NequIP and Allegro models for H and O and compiles them with nequip-compile.

Run in the nequip venv (tests/families/envs.py): ``python build.py OUTDIR``. Writes to OUTDIR:

* ``train.xyz``: the training frames (the first 12 DFT water frames of
  ``../shared/data/dft/water_revpbe0d3_190.xyz`` relative to the checkout; without that file,
  rattled water boxes labelled by ASE's EMT — the model's quality is not the point);
* per model ``NAME/`` (nequip-train's run folder, its ``last.ckpt``) and ``NAME.nequip.pt2``
  (``nequip-compile --mode aotinductor --device cpu``):

  ============  =======  ========  =================  ===============================
  name          model    dtype     --target           what it serves in the tests
  ============  =======  ========  =================  ===============================
  nequip-f64    NequIP   float64   batch              many frames per call (beads, rotations)
  nequip-f32    NequIP   float32   batch              the float32 tolerance
  allegro-f64   Allegro  float64   pair_allegro       one frame per call, periodic images
                                                      as atoms, the LAMMPS domain route
  ============  =======  ========  =================  ===============================

  and ``NAME.nequip.pth`` for nequip-f64 and allegro-f64: the TorchScript file of ``--mode
  torchscript``, which nequip-compile refuses with torch ≥ 2.10 (this venv has torch 2.13) while
  the function it calls, ``save_torchscript_model``, still works: users of older nequip/torch
  have such files;
* ``references.json``: nequip's own ASE calculator (``NequIPCalculator._from_saved_model`` on
  the checkpoint: the eager model, nequip's neighbour list) on the structures of
  :func:`structures` — energy (eV), forces (eV/Å), stress (eV/Å³, ASE's sign, Voigt order);
* ``structures.xyz``: those structures (extended XYZ), in order;
* ``build.json``: seconds per step (training, compiling) and what was built.

Reference mode (the tests, on configurations they make: i-PI beads, LAMMPS steps)::

    python build.py --reference BUILD_DIR NAME IN.xyz OUT.json

writes nequip's own ASE calculator's results (as in ``references.json``) for every frame of the
extended XYZ file ``IN.xyz``, with the checkpoint of model ``NAME`` of ``BUILD_DIR``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2].parent / "shared" / "data"
DFT = SHARED / "dft" / "water_revpbe0d3_190.xyz"
ICE = SHARED / "structures" / "ice" / "ice_ih_disordered_02.xyz"
BIN = Path(sys.executable).parent
R_MAX = 4.5

MODELS = {
    "nequip-f64": ("nequip", "float64", "batch"),
    "nequip-f32": ("nequip", "float32", "batch"),
    "allegro-f64": ("allegro", "float64", "pair_allegro"),
}

NEQUIP_MODEL = """
    _target_: nequip.model.NequIPGNNModel
    seed: 1
    model_dtype: {dtype}
    type_names: [H, O]
    r_max: {r_max}
    l_max: 1
    parity: true
    num_layers: 2
    num_features: 8
    radial_mlp_depth: 1
    radial_mlp_width: 8
    avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
    per_type_energy_shifts: ${{training_data_stats:per_atom_energy_mean}}
    per_type_energy_scales: ${{training_data_stats:forces_rms}}
"""

ALLEGRO_MODEL = """
    _target_: allegro.model.AllegroModel
    seed: 1
    model_dtype: {dtype}
    type_names: [H, O]
    r_max: {r_max}
    l_max: 1
    parity: true
    radial_chemical_embed:
      _target_: allegro.nn.TwoBodyBesselScalarEmbed
      num_bessels: 8
    radial_chemical_embed_dim: 8
    scalar_embed_mlp_hidden_layers_depth: 1
    scalar_embed_mlp_hidden_layers_width: 8
    num_layers: 2
    num_scalar_features: 8
    num_tensor_features: 4
    allegro_mlp_hidden_layers_depth: 1
    allegro_mlp_hidden_layers_width: 8
    readout_mlp_hidden_layers_depth: 1
    readout_mlp_hidden_layers_width: 8
    avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
    per_type_energy_shifts: ${{training_data_stats:per_atom_energy_mean}}
    per_type_energy_scales: ${{training_data_stats:forces_rms}}
"""

CONFIG = """
run: [train]
seed: 1
data:
  _target_: nequip.data.datamodule.NequIPDataModule
  seed: 1
  split_dataset:
    dataset:
      _target_: nequip.data.dataset.ASEDataset
      file_path: {train}
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: [H, O]
          chemical_species_to_atom_type_map: {{H: H, O: O}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: {r_max}
    train: 8
    val: 4
  train_dataloader:
    _target_: torch.utils.data.DataLoader
    batch_size: 2
  val_dataloader:
    _target_: torch.utils.data.DataLoader
    batch_size: 4
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: [H, O]
trainer:
  _target_: lightning.Trainer
  max_epochs: 2
  enable_progress_bar: false
  logger: false
  callbacks:
    - _target_: lightning.pytorch.callbacks.ModelCheckpoint
      dirpath: ${{hydra:runtime.output_dir}}
      save_last: true
training_module:
  _target_: nequip.train.EMALightningModule
  loss:
    _target_: nequip.train.EnergyForceLoss
    per_atom_energy: true
    coeffs: {{total_energy: 1.0, forces: 1.0}}
  val_metrics:
    _target_: nequip.train.EnergyForceMetrics
    coeffs: {{total_energy_mae: 1.0, forces_mae: 1.0}}
  optimizer:
    _target_: torch.optim.Adam
    lr: 0.01
  model:{model}
"""


def training_frames(out: Path) -> Path:
    """12 labelled frames: DFT water if shipped, else rattled water boxes labelled by EMT."""
    import ase.io

    path = out / "train.xyz"
    if DFT.is_file():
        frames = ase.io.read(DFT, index=":12")
    else:
        from ase.build import molecule
        from ase.calculators.emt import EMT
        from ase.calculators.singlepoint import SinglePointCalculator

        rng = np.random.default_rng(1)
        frames = []
        for _ in range(12):
            atoms = molecule("H2O")
            box = atoms.copy()
            for k in range(1, 8):
                m = atoms.copy()
                m.translate(3.1 * np.array([k % 2, (k // 2) % 2, k // 4]))
                box += m
            box.set_cell([6.2, 6.2, 6.2])
            box.pbc = True
            box.rattle(0.05, rng=rng)
            box.calc = EMT()
            e, f = box.get_potential_energy(), box.get_forces()
            box.calc = SinglePointCalculator(box, energy=e, forces=f)
            frames.append(box)
    ase.io.write(path, frames)
    return path


def structures():
    """The reference structures: 3 DFT frames (not trained on), a water molecule in a 10 Å box
    without periodicity, the disordered ice cell (each only if its file is shipped)."""
    import ase.io
    from ase.build import molecule

    out = []
    if DFT.is_file():
        for k in (100, 101, 102):
            atoms = ase.io.read(DFT, index=k)
            atoms.info = {"name": f"dft-{k}"}
            out.append(atoms)
    water = molecule("H2O")
    water.set_cell([10.0, 10.0, 10.0])
    water.center()
    water.pbc = False
    water.info = {"name": "molecule"}
    out.append(water)
    if ICE.is_file():
        ice = ase.io.read(ICE)
        ice.arrays = {k: v for k, v in ice.arrays.items() if k in ("numbers", "positions")}
        ice.info = {"name": "ice"}
        out.append(ice)
    for atoms in out:
        atoms.calc = None
    return out


def run(cmd, log: Path):
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{tail}")


def train(name: str, family: str, dtype: str, out: Path, train_xyz: Path) -> Path:
    template = NEQUIP_MODEL if family == "nequip" else ALLEGRO_MODEL
    config = CONFIG.format(train=train_xyz, r_max=R_MAX, model=template.format(dtype=dtype, r_max=R_MAX))
    (out / f"{name}.yaml").write_text(config)
    run_dir = out / name
    run(
        [BIN / "nequip-train", "-cp", str(out), "-cn", name, f"hydra.run.dir={run_dir}"],
        out / f"{name}.train.log",
    )
    return run_dir / "last.ckpt"


def compile_package(name: str, checkpoint: Path, target: str, out: Path) -> Path:
    package = out / f"{name}.nequip.pt2"
    cmd = [BIN / "nequip-compile", checkpoint, package, "--mode", "aotinductor", "--device", "cpu"]
    run([*map(str, cmd), "--target", target], out / f"{name}.compile.log")
    return package


TORCHSCRIPT = ("nequip-f64", "allegro-f64")


def torchscript_file(name: str, checkpoint: Path, out: Path) -> Path:
    """What ``nequip-compile CKPT OUT.nequip.pth --mode torchscript --device cpu`` does, minus its
    refusal of torch >= 2.10: the eager model with nequip's metadata as TorchScript extra files."""
    from nequip.model.inference_models.torchscript import save_torchscript_model
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.model.utils import _EAGER_MODEL_KEY
    from nequip.utils.global_state import get_latest_global_state, set_global_state

    set_global_state(allow_tf32=False)
    model = load_saved_model(str(checkpoint), _EAGER_MODEL_KEY, "sole_model")
    metadata = {**model.metadata, **get_latest_global_state(only_metadata_related=True)}
    metadata = {k: str(int(v)) if isinstance(v, bool) else v for k, v in metadata.items()}
    path = out / f"{name}.nequip.pth"
    save_torchscript_model(model, metadata, str(path), "cpu")
    return path


def references(checkpoint: Path, atoms_list) -> list:
    from nequip.integrations.ase import NequIPCalculator

    calc = NequIPCalculator._from_saved_model(
        str(checkpoint), device="cpu", chemical_species_to_atom_type_map=True
    )
    rows = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = calc
        rows.append(
            {
                "name": atoms.info["name"],
                "energy": float(atoms.get_potential_energy()),
                "forces": atoms.get_forces().tolist(),
                "stress": atoms.get_stress(voigt=True).tolist(),
                "energies": calc.results["energies"].tolist(),
            }
        )
    return rows


def main(out: Path) -> None:
    import ase.io

    out.mkdir(parents=True, exist_ok=True)
    timing, refs = {}, {}
    train_xyz = training_frames(out)
    structs = structures()
    ase.io.write(out / "structures.xyz", structs, format="extxyz")
    for name, (family, dtype, target) in MODELS.items():
        t0 = time.perf_counter()
        ckpt = train(name, family, dtype, out, train_xyz)
        t1 = time.perf_counter()
        compile_package(name, ckpt, target, out)
        if name in TORCHSCRIPT:
            torchscript_file(name, ckpt, out)
        t2 = time.perf_counter()
        refs[name] = references(ckpt, structs)
        timing[name] = {"train_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1)}
        print(f"{name}: trained in {t1 - t0:.0f} s, compiled in {t2 - t1:.0f} s", flush=True)
    (out / "references.json").write_text(json.dumps(refs))
    info = {
        "models": {n: dict(zip(("family", "dtype", "target"), v)) for n, v in MODELS.items()},
        "torchscript": list(TORCHSCRIPT),
        "r_max": R_MAX,
        "timing": timing,
        "dft": DFT.is_file(),
        "ice": ICE.is_file(),
    }
    (out / "build.json").write_text(json.dumps(info, indent=1))


def reference_mode(build: Path, name: str, frames: Path, out: Path) -> None:
    import ase.io

    atoms_list = ase.io.read(frames, index=":")
    for k, atoms in enumerate(atoms_list):
        atoms.info = {"name": f"frame-{k}"}
        atoms.calc = None
    rows = references(build / name / "last.ckpt", atoms_list)
    out.write_text(json.dumps(rows))


if __name__ == "__main__":
    if sys.argv[1] == "--reference":
        reference_mode(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        main(Path(sys.argv[1]).resolve())
